//! Group commit of lease writes: one writer thread turns the lease changes of
//! every packet handled while the previous transaction was syncing into ONE
//! transaction of the lease store (one fsync), and only then runs each packet's
//! continuation (sending its ACK). A lease is on disk before its ACK leaves, as
//! with a write per packet, but a burst of N requests costs a few fsyncs, not N.
//!
//! One exception: the lease of a node's reserved address (`[[node]] ip`) is
//! queued *after* its ACK ([`GroupCommit::submit_after_ack`]). The address is
//! the node's by configuration on every server sharing the store, so no other
//! client can be granted it whether the record exists or not: the record is
//! bookkeeping, not the arbiter. Such a node therefore boots while the database
//! is unreachable, and its record is written as soon as the database is back
//! (kept in memory until then; a restart in between loses it, and the node's
//! next renewal writes it again).

use super::leases::Lease;
use crate::store::health::StoreHealth;
use crate::store::{Refusal, StoreError};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::Duration;

/// What runs once a packet's leases are durable (`Ok`) or could not be written (`Err`).
pub type Continuation = Box<dyn FnOnce(Result<(), &StoreError>) + Send>;

/// Where batches are written: one transaction per call.
pub trait BatchStore: Send {
    /// Writes `leases` in one transaction. A shared store may refuse some
    /// (another server's client holds the address): those are not written and
    /// are returned; the rest are durable when this returns `Ok`.
    fn save_batch(&mut self, leases: &[&Lease]) -> Result<Vec<Refusal>, StoreError>;
}

enum Job {
    Write {
        leases: Vec<Lease>,
        then: Continuation,
    },
    /// Leases whose reply already left (reserved addresses): written with the
    /// next batch, and kept for the one after while the store fails.
    AfterAck(Vec<Lease>),
    /// Answered once every job queued before it has been written (or failed).
    Barrier(SyncSender<()>),
}

/// Jobs waiting for the writer. When full, [`GroupCommit::submit`] waits: the
/// packet handler slows down and the socket loop's own queue sheds DISCOVERs.
const QUEUE: usize = 8192;
/// The most packets one transaction carries (bounds a batch's latency).
const MAX_BATCH: usize = 4096;
/// How often leases written after their ACK are tried again while the store
/// fails and no other write comes along.
const RETRY_EVERY: Duration = Duration::from_secs(2);

/// A handle on the writer thread; clones share it.
#[derive(Clone)]
pub struct GroupCommit {
    jobs: SyncSender<Job>,
    failed: Arc<AtomicBool>,
}

impl GroupCommit {
    /// Starts the writer thread on `store`. It lives as long as a handle does;
    /// each batch's result goes to `health` (for `/healthz`).
    pub fn start(store: Box<dyn BatchStore>, health: StoreHealth) -> std::io::Result<GroupCommit> {
        let (jobs, rx) = mpsc::sync_channel(QUEUE);
        let failed = Arc::new(AtomicBool::new(false));
        let flag = failed.clone();
        std::thread::Builder::new()
            .name("dhcp-commit".into())
            .spawn(move || writer(store, rx, flag, health))?;
        Ok(GroupCommit { jobs, failed })
    }

    /// Queues `leases` whose reply was already sent (reserved addresses, see
    /// the module comment): written with the next batch, retried until written.
    pub fn submit_after_ack(&self, leases: Vec<Lease>) {
        if self.jobs.send(Job::AfterAck(leases)).is_err() {
            tracing::warn!("{}: a reserved lease record is not written", writer_gone());
        }
    }

    /// Queues `leases` for the next transaction; `then` runs after it.
    pub fn submit(&self, leases: Vec<Lease>, then: Continuation) {
        if let Err(mpsc::SendError(Job::Write { then, .. })) =
            self.jobs.send(Job::Write { leases, then })
        {
            then(Err(&writer_gone()));
        }
    }

    /// Waits until everything submitted before this call is written or failed.
    pub fn flush(&self) {
        let (tx, rx) = mpsc::sync_channel(1);
        if self.jobs.send(Job::Barrier(tx)).is_ok() {
            let _ = rx.recv();
        }
    }

    /// Whether a batch failed or had a lease refused since the last call: the
    /// in-memory table then holds leases the database does not (or lacks one
    /// another server wrote), and must be read back.
    pub fn take_failed(&self) -> bool {
        self.failed.swap(false, Ordering::AcqRel)
    }

    /// Raises the flag [`GroupCommit::take_failed`] reads again (the table
    /// could not be read back; the next packet tries again).
    pub fn mark_failed(&self) {
        self.failed.store(true, Ordering::Release);
    }
}

fn writer_gone() -> StoreError {
    StoreError::WriterGone
}

fn writer(
    mut store: Box<dyn BatchStore>,
    rx: Receiver<Job>,
    failed: Arc<AtomicBool>,
    health: StoreHealth,
) {
    // Leases written after their ACK that no transaction has carried yet.
    let mut queued: Vec<Lease> = vec![];
    loop {
        let first = if queued.is_empty() {
            rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
        } else {
            rx.recv_timeout(RETRY_EVERY)
        };
        let closing = matches!(first, Err(RecvTimeoutError::Disconnected));
        if closing && queued.is_empty() {
            return;
        }
        let mut jobs: Vec<Job> = first.into_iter().collect();
        // Everything that queued up while the last fsync ran goes in this one.
        while !closing && jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let mut fresh = 0;
        for job in &mut jobs {
            if let Job::AfterAck(leases) = job {
                fresh += leases.len();
                queued.append(leases);
            }
        }
        queued = latest_per_address(std::mem::take(&mut queued));
        // The queued ones first: a newer write of the same address wins.
        let leases: Vec<&Lease> = queued
            .iter()
            .chain(jobs.iter().flat_map(|j| match j {
                Job::Write { leases, .. } => leases.as_slice(),
                _ => &[],
            }))
            .collect();
        let written = if leases.is_empty() {
            Ok(vec![])
        } else {
            store.save_batch(&leases)
        };
        if !leases.is_empty() {
            let result = written.as_ref().map(|_| ()).map_err(|e| e.to_string());
            health.record(result, crate::clock::now_unix());
        }
        match &written {
            Ok(refused) => tracing::debug!(
                "DHCP lease batch: {} leases of {} packets in one transaction, {} refused",
                leases.len(),
                jobs.len(),
                refused.len()
            ),
            // Each packet's continuation logs the failure (at warn, with its cause).
            Err(e) => tracing::debug!(
                "DHCP lease batch of {} leases not written: {e}",
                leases.len()
            ),
        }
        if !written.as_ref().is_ok_and(|r| r.is_empty()) {
            failed.store(true, Ordering::Release);
        }
        match &written {
            Ok(refused) => {
                for r in refused.iter().filter(|r| queued.iter().any(|l| l.ip == r.ip)) {
                    tracing::warn!("the lease record of reserved address {}: {}; check that every server sharing the store declares the same [[node]] ip", r.ip, r.error());
                }
                queued.clear();
            }
            // Said once per newly queued lease, not at every retry.
            Err(e) if fresh > 0 => tracing::warn!(
                "cannot write the lease record of {fresh} reserved address(es) ({e}); acknowledged anyway (reserved by config), the record is written once the lease database is back ({} queued)",
                queued.len()
            ),
            Err(_) => {}
        }
        for job in jobs {
            match job {
                Job::Write { leases, then } => match &written {
                    Err(e) => then(Err(e)),
                    // A packet with a refused lease is not acknowledged; the others are.
                    Ok(refused) => {
                        match refused.iter().find(|r| leases.iter().any(|l| l.ip == r.ip)) {
                            Some(r) => then(Err(&r.error())),
                            None => then(Ok(())),
                        }
                    }
                },
                Job::AfterAck(_) => {}
                Job::Barrier(done) => {
                    let _ = done.send(());
                }
            }
        }
        if closing {
            return;
        }
    }
}

/// `leases` with only the last of each address, in the order of those last ones.
fn latest_per_address(leases: Vec<Lease>) -> Vec<Lease> {
    let mut last: std::collections::HashMap<Ipv4Addr, usize> = Default::default();
    for (i, l) in leases.iter().enumerate() {
        last.insert(l.ip, i);
    }
    leases
        .into_iter()
        .enumerate()
        .filter(|(i, l)| last[&l.ip] == *i)
        .map(|(_, l)| l)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dhcp::leases::LeaseState;
    use std::sync::Mutex;

    /// Records each batch's size; fails batches while `fail` is set.
    struct Recording {
        batches: Arc<Mutex<Vec<usize>>>,
        fail: Arc<AtomicBool>,
    }
    impl BatchStore for Recording {
        fn save_batch(&mut self, leases: &[&Lease]) -> Result<Vec<Refusal>, StoreError> {
            // Slow like an fsync, so later submissions pile up behind it.
            std::thread::sleep(std::time::Duration::from_millis(20));
            if self.fail.load(Ordering::Acquire) {
                return Err(StoreError::Corrupt {
                    what: "test",
                    value: "disk full".into(),
                });
            }
            self.batches.lock().unwrap().push(leases.len());
            Ok(vec![])
        }
    }

    fn lease(n: u8) -> Lease {
        Lease {
            ip: std::net::Ipv4Addr::new(10, 0, 0, n),
            mac: format!("52:54:00:00:00:{n:02x}"),
            expires: 100,
            state: LeaseState::Bound,
        }
    }

    #[test]
    fn writes_queued_during_a_commit_share_the_next_transaction_and_continue_after_it() {
        let batches = Arc::new(Mutex::new(vec![]));
        let fail = Arc::new(AtomicBool::new(false));
        let gc = GroupCommit::start(
            Box::new(Recording {
                batches: batches.clone(),
                fail: fail.clone(),
            }),
            StoreHealth::default(),
        )
        .unwrap();
        let done = Arc::new(Mutex::new(vec![]));
        for n in 0..50u8 {
            let (done, batches) = (done.clone(), batches.clone());
            gc.submit(
                vec![lease(n)],
                Box::new(move |r| {
                    // The continuation runs only once its own lease was written.
                    let written: usize = batches.lock().unwrap().iter().sum();
                    assert!(r.is_ok() && written > usize::from(n), "{n}: {written}");
                    done.lock().unwrap().push(n);
                }),
            );
        }
        gc.flush();
        assert_eq!(*done.lock().unwrap(), (0..50).collect::<Vec<u8>>());
        let b = batches.lock().unwrap().clone();
        assert_eq!(b.iter().sum::<usize>(), 50);
        assert!(b.len() < 10, "50 writes in {} transactions: {b:?}", b.len());
        assert!(!gc.take_failed());

        // A failing batch: its continuations see the error and the flag is raised once.
        fail.store(true, Ordering::Release);
        let seen = Arc::new(Mutex::new(None));
        let s = seen.clone();
        gc.submit(
            vec![lease(60)],
            Box::new(move |r| *s.lock().unwrap() = Some(r.is_err())),
        );
        gc.flush();
        assert_eq!(*seen.lock().unwrap(), Some(true));
        assert!(gc.take_failed());
        assert!(!gc.take_failed());
    }
}

#[cfg(test)]
mod refusal_tests {
    use super::*;
    use crate::dhcp::leases::LeaseState;
    use std::net::Ipv4Addr;
    use std::sync::Mutex;

    /// A shared store where another server holds 10.0.0.1.
    struct Shared;
    impl BatchStore for Shared {
        fn save_batch(&mut self, leases: &[&Lease]) -> Result<Vec<Refusal>, StoreError> {
            Ok(leases
                .iter()
                .filter(|l| l.ip == Ipv4Addr::new(10, 0, 0, 1))
                .map(|l| Refusal {
                    ip: l.ip,
                    holder: "52:54:00:00:00:99".into(),
                })
                .collect())
        }
    }

    #[test]
    fn only_the_packet_whose_lease_was_refused_goes_unacknowledged() {
        let gc = GroupCommit::start(Box::new(Shared), StoreHealth::default()).unwrap();
        let results = Arc::new(Mutex::new(vec![]));
        for n in [1u8, 2] {
            let results = results.clone();
            let lease = Lease {
                ip: Ipv4Addr::new(10, 0, 0, n),
                mac: format!("52:54:00:00:00:0{n}"),
                expires: 100,
                state: LeaseState::Bound,
            };
            gc.submit(
                vec![lease],
                Box::new(move |r| {
                    results
                        .lock()
                        .unwrap()
                        .push((n, r.map_err(|e| e.to_string())))
                }),
            );
        }
        gc.flush();
        let results = results.lock().unwrap().clone();
        assert_eq!(results.len(), 2);
        assert_eq!(
            results[0],
            (
                1,
                Err("address 10.0.0.1 is held in the shared lease database by 52:54:00:00:00:99; not granted (the client is offered another address when it asks again)".into())
            )
        );
        assert_eq!(results[1], (2, Ok(())));
        assert!(
            gc.take_failed(),
            "the table must be read back to learn the holder"
        );
    }
}

#[cfg(test)]
mod after_ack_tests {
    use super::*;
    use crate::dhcp::leases::LeaseState;
    use std::sync::Mutex;

    /// Records what it wrote; fails while `down` is set.
    struct Flaky {
        written: Arc<Mutex<Vec<(u8, u64)>>>,
        down: Arc<AtomicBool>,
    }
    impl BatchStore for Flaky {
        fn save_batch(&mut self, leases: &[&Lease]) -> Result<Vec<Refusal>, StoreError> {
            if self.down.load(Ordering::Acquire) {
                return Err(StoreError::WriterGone);
            }
            let mut w = self.written.lock().unwrap();
            w.extend(leases.iter().map(|l| (l.ip.octets()[3], l.expires)));
            Ok(vec![])
        }
    }

    fn lease(n: u8, expires: u64) -> Lease {
        Lease {
            ip: Ipv4Addr::new(10, 0, 0, n),
            mac: format!("52:54:00:00:00:{n:02x}"),
            expires,
            state: LeaseState::Bound,
        }
    }

    #[test]
    fn leases_written_after_their_ack_wait_out_an_outage_and_are_not_lost() {
        let written = Arc::new(Mutex::new(vec![]));
        let down = Arc::new(AtomicBool::new(true));
        let health = StoreHealth::default();
        let gc = GroupCommit::start(
            Box::new(Flaky {
                written: written.clone(),
                down: down.clone(),
            }),
            health.clone(),
        )
        .unwrap();
        gc.submit_after_ack(vec![lease(1, 100)]);
        gc.flush();
        // Renewed during the outage: only the newest record is kept.
        gc.submit_after_ack(vec![lease(1, 200)]);
        gc.flush();
        assert!(written.lock().unwrap().is_empty());
        assert!(health.outage().is_some(), "the outage is visible");

        // The next ordinary write carries the queued one along.
        down.store(false, Ordering::Release);
        let acked = Arc::new(AtomicBool::new(false));
        let a = acked.clone();
        gc.submit(
            vec![lease(2, 300)],
            Box::new(move |r| a.store(r.is_ok(), Ordering::Release)),
        );
        gc.flush();
        assert!(acked.load(Ordering::Acquire));
        assert_eq!(*written.lock().unwrap(), vec![(1, 200), (2, 300)]);
        assert_eq!(health.outage(), None, "writes succeed again");

        // With no other write coming, the writer tries again by itself.
        down.store(true, Ordering::Release);
        gc.submit_after_ack(vec![lease(3, 400)]);
        gc.flush();
        down.store(false, Ordering::Release);
        std::thread::sleep(RETRY_EVERY + Duration::from_millis(800));
        assert_eq!(written.lock().unwrap().last(), Some(&(3, 400)));
        assert_eq!(health.outage(), None);
    }
}
