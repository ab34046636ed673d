//! Copy admission: how many installers run their rsync copy at once.
//!
//! When a rack powers on, every installer reaches its copy within seconds of
//! the others. Instead of letting them all hit the rsync daemon (whose
//! `max connections` refuses the excess, and an installer that is refused
//! often enough fails), each one asks the server for a copy slot first
//! (`POST /api/v1/installs/{id}/slot`). Up to `max` installs hold a slot; the
//! others are told their place in a FIFO queue and when to ask again.
//!
//! A slot is a lease: the holder's events renew it, its end (copy done,
//! installed, failed) releases it, and a holder that goes silent loses it
//! after `lease_secs`, so a node that dies holding one never blocks the queue.
//! A waiter that stops asking is forgotten after `forget_secs` the same way.
//! Everything here is a plain function of the calls and the clock: no I/O.

use std::collections::VecDeque;

/// What the server answers a slot request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Copy now; events renew the slot for `lease_secs` each.
    Granted { lease_secs: u64 },
    /// `position` (1 is next) of `queued` waiting; ask again in `retry_secs`.
    Wait {
        position: u32,
        queued: u32,
        retry_secs: u64,
    },
}

#[derive(Debug, Clone)]
pub struct Admission {
    max: usize,
    lease_secs: u64,
    forget_secs: u64,
    /// Install id and when its slot expires.
    holders: Vec<(String, u64)>,
    /// Install id and when it last asked, first come first.
    waiting: VecDeque<(String, u64)>,
}

/// How long a slot lasts without an event: longer than the installer's
/// longest silence while copying (rsync's 120 s I/O timeout, its retry pauses).
pub const LEASE_SECS: u64 = 180;
/// A waiter asks every few seconds ([`retry_secs`]); one silent this long is gone.
pub const FORGET_SECS: u64 = 30;

/// How soon a waiter at `index` (0: first in the queue) should ask again when
/// `max` slots turn over: the head of the queue often, the tail less often, so
/// a queue of hundreds costs the server a few requests a second.
pub fn retry_secs(index: usize, max: usize) -> u64 {
    (1 + index / max.max(1)).min(5) as u64
}

impl Admission {
    pub fn new(max: usize) -> Admission {
        Admission::with_times(max, LEASE_SECS, FORGET_SECS)
    }

    pub fn with_times(max: usize, lease_secs: u64, forget_secs: u64) -> Admission {
        Admission {
            max: max.max(1),
            lease_secs,
            forget_secs,
            holders: Vec::new(),
            waiting: VecDeque::new(),
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Slots held now (after expiry at `now`).
    pub fn active(&mut self, now: u64) -> usize {
        self.expire(now);
        self.holders.len()
    }

    /// Installs waiting now (after expiry at `now`).
    pub fn queued(&mut self, now: u64) -> usize {
        self.expire(now);
        self.waiting.len()
    }

    fn expire(&mut self, now: u64) {
        self.holders.retain(|(_, until)| *until > now);
        let forget = self.forget_secs;
        self.waiting
            .retain(|(_, asked)| now.saturating_sub(*asked) < forget);
    }

    /// `id` asks for a slot at `now`. A holder keeps (and renews) its slot; a
    /// waiter keeps its place; a newcomer joins the end. The first waiters get
    /// the free slots, in order: nobody overtakes someone who asked earlier.
    pub fn ask(&mut self, id: &str, now: u64) -> Answer {
        self.expire(now);
        let lease_secs = self.lease_secs;
        if let Some(h) = self.holders.iter_mut().find(|(h, _)| h == id) {
            h.1 = now + lease_secs;
            return Answer::Granted { lease_secs };
        }
        let index = match self.waiting.iter().position(|(w, _)| w == id) {
            Some(i) => {
                self.waiting[i].1 = now;
                i
            }
            None => {
                self.waiting.push_back((id.to_string(), now));
                self.waiting.len() - 1
            }
        };
        let free = self.max.saturating_sub(self.holders.len());
        if index < free {
            self.waiting.remove(index);
            self.holders.push((id.to_string(), now + lease_secs));
            return Answer::Granted { lease_secs };
        }
        Answer::Wait {
            position: (index + 1) as u32,
            queued: self.waiting.len() as u32,
            retry_secs: retry_secs(index, self.max),
        }
    }

    /// An event from `id`: its slot, if it holds one, lasts another lease.
    /// Returns whether it holds one.
    pub fn renew(&mut self, id: &str, now: u64) -> bool {
        self.expire(now);
        let lease_secs = self.lease_secs;
        match self.holders.iter_mut().find(|(h, _)| h == id) {
            Some(h) => {
                h.1 = now + lease_secs;
                true
            }
            None => false,
        }
    }

    /// Whether `id` has a place in the queue (it asked before and waits).
    pub fn is_waiting(&self, id: &str) -> bool {
        self.waiting.iter().any(|(w, _)| w == id)
    }

    /// `id`'s copy ended (or its install did): its slot or its place is free.
    pub fn release(&mut self, id: &str) {
        self.holders.retain(|(h, _)| h != id);
        self.waiting.retain(|(w, _)| w != id);
    }
}

/// The default `[install] max_copies` for a server with `cpus` and
/// `mem_mib` of memory: eight copies per CPU, at most one per 128 MiB (each
/// rsync sender holds the whole file list and its buffers), between 4 and 64
/// (beyond that the wire, not admission, is the limit, and a shorter queue
/// finishes the first nodes sooner). A single copy is a pipeline of waits
/// (sender reads, the wire, the receiver's writes and its acks), so it takes
/// many at once to keep the CPUs busy: `scripts/bench-scale.sh 50` on 2 CPUs
/// moved 552–608 MB/s with 16 slots, 531 with 12, 605 with 24, 543 with 32,
/// and 429–477 with 8.
pub fn default_max_copies(cpus: usize, mem_mib: u64) -> u32 {
    let by_cpu = cpus.max(1) as u64 * 8;
    let by_mem = mem_mib / 128;
    by_cpu.min(by_mem).clamp(4, 64) as u32
}

/// `rsyncd.conf`'s `max connections` for `max_copies` admitted copies: room
/// above them for the installed nodes' `rollout-sync` runs, which ask for no
/// slot, so an admitted copy never meets the daemon's limit.
pub fn rsync_max_connections(max_copies: u32) -> u32 {
    max_copies + 32
}

/// The copy slots in force: `[install] max_copies` when written, else
/// [`default_max_copies`] for this machine.
pub fn max_copies(configured: Option<u32>) -> u32 {
    configured.unwrap_or_else(|| {
        let (cpus, mem_mib) = machine();
        default_max_copies(cpus, mem_mib)
    })
}

/// This machine's CPU count and memory in MiB (for [`default_max_copies`]).
pub fn machine() -> (usize, u64) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .unwrap_or(1 << 20);
    (cpus, mem_kib / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait(a: Answer) -> (u32, u32) {
        match a {
            Answer::Wait {
                position, queued, ..
            } => (position, queued),
            Answer::Granted { .. } => panic!("granted, expected a wait"),
        }
    }

    fn granted(a: Answer) -> bool {
        matches!(a, Answer::Granted { .. })
    }

    #[test]
    fn the_first_max_get_slots_the_rest_queue_in_order() {
        let mut q = Admission::new(2);
        assert!(granted(q.ask("a", 0)));
        assert!(granted(q.ask("b", 0)));
        assert_eq!(wait(q.ask("c", 0)), (1, 1));
        assert_eq!(wait(q.ask("d", 0)), (2, 2));
        assert_eq!(wait(q.ask("e", 1)), (3, 3));
        assert_eq!((q.active(1), q.queued(1)), (2, 3));
    }

    #[test]
    fn a_released_slot_goes_to_the_head_of_the_queue_not_to_a_later_asker() {
        let mut q = Admission::new(2);
        q.ask("a", 0);
        q.ask("b", 0);
        q.ask("c", 0);
        q.ask("d", 0);
        q.release("a");
        // d asks first but c is ahead of it: d waits, now first behind c.
        assert_eq!(wait(q.ask("d", 1)), (2, 2));
        assert!(granted(q.ask("c", 1)));
        assert_eq!(wait(q.ask("d", 2)), (1, 1));
        q.release("b");
        assert!(granted(q.ask("d", 3)));
        assert_eq!((q.active(3), q.queued(3)), (2, 0));
    }

    #[test]
    fn asking_twice_keeps_the_place_and_a_holder_keeps_its_slot() {
        let mut q = Admission::new(1);
        assert!(granted(q.ask("a", 0)));
        assert!(granted(q.ask("a", 1)));
        assert_eq!(q.active(1), 1);
        assert_eq!(wait(q.ask("b", 1)), (1, 1));
        assert_eq!(wait(q.ask("c", 1)), (2, 2));
        assert_eq!(wait(q.ask("b", 2)), (1, 2));
        assert_eq!(wait(q.ask("c", 2)), (2, 2));
        assert_eq!(q.queued(2), 2);
    }

    #[test]
    fn a_silent_holder_loses_its_slot_and_events_renew_it() {
        let mut q = Admission::with_times(1, 10, 30);
        q.ask("a", 0);
        assert_eq!(wait(q.ask("b", 5)), (1, 1));
        assert!(q.renew("a", 8));
        // Renewed at 8: still held at 17.
        assert_eq!(wait(q.ask("b", 17)), (1, 1));
        // Silent since 8: gone at 18, b gets the slot.
        assert!(granted(q.ask("b", 18)));
        assert!(!q.renew("a", 18));
        assert_eq!(q.active(18), 1);
    }

    #[test]
    fn a_waiter_that_stops_asking_is_forgotten() {
        let mut q = Admission::with_times(1, 100, 30);
        q.ask("a", 0);
        q.ask("dead", 0);
        assert_eq!(wait(q.ask("b", 1)), (2, 2));
        assert_eq!(wait(q.ask("b", 29)), (2, 2));
        assert_eq!(wait(q.ask("b", 31)), (1, 1));
        q.release("a");
        assert!(granted(q.ask("b", 32)));
    }

    #[test]
    fn release_of_a_waiter_or_a_stranger_is_harmless() {
        let mut q = Admission::new(1);
        q.ask("a", 0);
        q.ask("b", 0);
        q.release("b");
        q.release("nobody");
        assert_eq!((q.active(0), q.queued(0)), (1, 0));
        assert!(!q.renew("b", 0));
    }

    #[test]
    fn retry_grows_with_the_distance_to_the_front() {
        assert_eq!(retry_secs(0, 8), 1);
        assert_eq!(retry_secs(7, 8), 1);
        assert_eq!(retry_secs(8, 8), 2);
        assert_eq!(retry_secs(1000, 8), 5);
        assert_eq!(retry_secs(3, 0), 4);
    }

    #[test]
    fn default_slots_follow_cpus_and_memory() {
        assert_eq!(default_max_copies(2, 24 * 1024), 16);
        assert_eq!(default_max_copies(1, 512), 4);
        assert_eq!(default_max_copies(32, 256 * 1024), 64);
        assert_eq!(default_max_copies(16, 2048), 16);
        assert_eq!(default_max_copies(0, 0), 4);
        assert_eq!(rsync_max_connections(8), 40);
        assert_eq!(max_copies(Some(2)), 2);
        let (cpus, mem) = machine();
        assert!(cpus >= 1 && mem > 0);
        assert_eq!(max_copies(None), default_max_copies(cpus, mem));
    }
}
