//! Group commit of lease writes: one writer thread turns the lease changes of
//! every packet handled while the previous transaction was syncing into ONE
//! transaction of the lease store (one fsync), and only then runs each packet's
//! continuation (sending its ACK). A lease is on disk before its ACK leaves, as
//! with a write per packet, but a burst of N requests costs a few fsyncs, not N.

use super::leases::Lease;
use crate::store::{Refusal, StoreError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;

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
    /// Answered once every job queued before it has been written (or failed).
    Barrier(SyncSender<()>),
}

/// Jobs waiting for the writer. When full, [`GroupCommit::submit`] waits: the
/// packet handler slows down and the socket loop's own queue sheds DISCOVERs.
const QUEUE: usize = 8192;
/// The most packets one transaction carries (bounds a batch's latency).
const MAX_BATCH: usize = 4096;

/// A handle on the writer thread; clones share it.
#[derive(Clone)]
pub struct GroupCommit {
    jobs: SyncSender<Job>,
    failed: Arc<AtomicBool>,
}

impl GroupCommit {
    /// Starts the writer thread on `store`. It lives as long as a handle does.
    pub fn start(store: Box<dyn BatchStore>) -> std::io::Result<GroupCommit> {
        let (jobs, rx) = mpsc::sync_channel(QUEUE);
        let failed = Arc::new(AtomicBool::new(false));
        let flag = failed.clone();
        std::thread::Builder::new()
            .name("dhcp-commit".into())
            .spawn(move || writer(store, rx, flag))?;
        Ok(GroupCommit { jobs, failed })
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

fn writer(mut store: Box<dyn BatchStore>, rx: Receiver<Job>, failed: Arc<AtomicBool>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        // Everything that queued up while the last fsync ran goes in this one.
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let leases: Vec<&Lease> = jobs
            .iter()
            .flat_map(|j| match j {
                Job::Write { leases, .. } => leases.as_slice(),
                Job::Barrier(_) => &[],
            })
            .collect();
        let written = if leases.is_empty() {
            Ok(vec![])
        } else {
            store.save_batch(&leases)
        };
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
                Job::Barrier(done) => {
                    let _ = done.send(());
                }
            }
        }
    }
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
        let gc = GroupCommit::start(Box::new(Recording {
            batches: batches.clone(),
            fail: fail.clone(),
        }))
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
        let gc = GroupCommit::start(Box::new(Shared)).unwrap();
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
