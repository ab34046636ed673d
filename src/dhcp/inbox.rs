//! The bounded queue between the socket loop and the packet handler. The socket
//! loop never waits on it: when the handler (or the lease writer behind it)
//! falls behind, packets are dropped here, DISCOVERs first. A REQUEST finishes
//! a client that already holds an offer, so keeping REQUESTs while shedding
//! DISCOVERs keeps completed leases per second at the ceiling under overload
//! instead of spending it on offers nobody gets to accept. For the same reason
//! the handler takes REQUESTs (and everything else that is not a DISCOVER)
//! before DISCOVERs: an offer already made is finished before a new one starts,
//! and a REQUEST never waits behind a backlog of DISCOVERs.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex};

/// Packets waiting for the handler at most.
pub const CAPACITY: usize = 4096;

/// Whether a packet is admitted to a queue holding `len` of `cap`: DISCOVERs
/// (`droppable`) only while a quarter of the queue is still free, so there is
/// always room for the REQUESTs that complete leases.
pub fn admits(len: usize, cap: usize, droppable: bool) -> bool {
    if droppable {
        len < cap - cap / 4
    } else {
        len < cap
    }
}

struct Queues<T> {
    /// Packets that finish or change what a client holds (REQUEST, RELEASE, …).
    first: VecDeque<T>,
    /// DISCOVERs: taken only when `first` is empty.
    then: VecDeque<T>,
    closed: bool,
}

impl<T> Queues<T> {
    fn len(&self) -> usize {
        self.first.len() + self.then.len()
    }
}

pub struct Inbox<T> {
    state: Mutex<Queues<T>>,
    ready: Condvar,
    cap: usize,
}

impl<T> Inbox<T> {
    pub fn new(cap: usize) -> Inbox<T> {
        Inbox {
            state: Mutex::new(Queues {
                first: VecDeque::new(),
                then: VecDeque::new(),
                closed: false,
            }),
            ready: Condvar::new(),
            cap,
        }
    }

    /// Queues `item`, or gives it back when the queue has no room for its kind.
    pub fn push(&self, item: T, droppable: bool) -> Result<(), T> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if !admits(s.len(), self.cap, droppable) {
            return Err(item);
        }
        if droppable {
            s.then.push_back(item);
        } else {
            s.first.push_back(item);
        }
        drop(s);
        self.ready.notify_one();
        Ok(())
    }

    /// Whether a packet of this kind would be queued now; lets the socket loop
    /// shed a DISCOVER before paying for its decode.
    pub fn would_admit(&self, droppable: bool) -> bool {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        admits(s.len(), self.cap, droppable)
    }

    /// The oldest packet that is not a DISCOVER, else the oldest DISCOVER;
    /// waits for one. None once closed and drained.
    pub fn pop(&self) -> Option<T> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(item) = s.first.pop_front().or_else(|| s.then.pop_front()) {
                return Some(item);
            }
            if s.closed {
                return None;
            }
            s = self.ready.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// No more packets: [`Inbox::pop`] returns what is queued, then None.
    pub fn close(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
        self.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovers_are_shed_before_requests() {
        assert!(admits(0, 8, true));
        assert!(admits(5, 8, true));
        assert!(!admits(6, 8, true), "the last quarter is kept for REQUESTs");
        assert!(admits(7, 8, false));
        assert!(!admits(8, 8, false));

        let inbox = Inbox::new(8);
        for n in 0..6 {
            inbox.push(n, true).unwrap();
        }
        assert_eq!(inbox.push(100, true), Err(100), "a DISCOVER is dropped");
        inbox.push(6, false).unwrap();
        inbox.push(7, false).unwrap();
        assert_eq!(inbox.push(101, false), Err(101), "full");
        inbox.close();
        let drained: Vec<i32> = std::iter::from_fn(|| inbox.pop()).collect();
        assert_eq!(
            drained,
            vec![6, 7, 0, 1, 2, 3, 4, 5],
            "REQUESTs first, each kind in order, then None"
        );
    }

    #[test]
    fn a_request_is_handled_before_a_backlog_of_discovers() {
        let inbox = Inbox::new(16);
        for n in 0..10 {
            inbox.push(("discover", n), true).unwrap();
        }
        inbox.push(("request", 0), false).unwrap();
        assert_eq!(inbox.pop(), Some(("request", 0)));
        assert_eq!(inbox.pop(), Some(("discover", 0)));
        assert!(inbox.would_admit(false) && inbox.would_admit(true));
    }

    #[test]
    fn pop_waits_for_a_push_from_another_thread() {
        let inbox = std::sync::Arc::new(Inbox::new(4));
        let i = inbox.clone();
        let t = std::thread::spawn(move || i.pop());
        std::thread::sleep(std::time::Duration::from_millis(20));
        inbox.push(42, false).unwrap();
        assert_eq!(t.join().unwrap(), Some(42));
    }
}
