//! The mirror's decisions, as plain functions of what the primary lists and what
//! is on disk here: which serials to copy and in which order, which to publish,
//! which to delete, how long to wait after a failure, and what rsync's progress
//! output says.

use std::time::Duration;

/// One image as the primary lists it: its complete serials and the published one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Primary {
    pub serials: Vec<u64>,
    pub published: Option<u64>,
}

/// The same image here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Local {
    /// Complete serials (with meta.json).
    pub serials: Vec<u64>,
    pub published: Option<u64>,
    /// Staging copies (`mirror-staging/N`), complete or not.
    pub staging: Vec<u64>,
    /// Serials nodes here are installing right now.
    pub in_use: Vec<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actions {
    /// To copy, in this order.
    pub fetch: Vec<u64>,
    /// To publish (the primary's published serial, once it is complete here).
    pub publish: Option<u64>,
    /// Complete serials the primary pruned, to delete here.
    pub delete: Vec<u64>,
    /// Staging copies of serials the primary no longer has.
    pub discard: Vec<u64>,
}

/// What to do for one image. The primary's published serial is copied first, so
/// this rack's nodes get what the primary hands out as soon as possible; the rest
/// oldest first. A serial is never deleted while it is published (here or on the
/// primary) or a node here installs it; mirrors follow the primary's prunes, so
/// `rollout image prune` runs on the primary only.
pub fn plan(primary: &Primary, local: &Local) -> Actions {
    let mut fetch: Vec<u64> = primary
        .serials
        .iter()
        .copied()
        .filter(|s| !local.serials.contains(s))
        .collect();
    fetch.sort_unstable();
    if let Some(p) = primary.published {
        if let Some(i) = fetch.iter().position(|s| *s == p) {
            fetch.remove(i);
            fetch.insert(0, p);
        }
    }
    let publish = primary
        .published
        .filter(|p| local.serials.contains(p) && local.published != Some(*p));
    let delete = local
        .serials
        .iter()
        .copied()
        .filter(|s| {
            !primary.serials.contains(s)
                && local.published != Some(*s)
                && publish != Some(*s)
                && !local.in_use.contains(s)
        })
        .collect();
    let discard = local
        .staging
        .iter()
        .copied()
        .filter(|s| !primary.serials.contains(s) || local.serials.contains(s))
        .collect();
    Actions {
        fetch,
        publish,
        delete,
        discard,
    }
}

/// The wait after the `failures`-th failure in a row: 5 s doubling up to the poll
/// interval (never more, so a primary back up is noticed as fast as a new serial),
/// and at least 1 s.
pub fn backoff(failures: u32, interval: Duration) -> Duration {
    let base = Duration::from_secs(5);
    let grown = base.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    grown.min(interval).max(Duration::from_secs(1))
}

/// One `--info=progress2` update: bytes so far and percent of the whole copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub bytes: u64,
    pub percent: u8,
}

/// Reads `   1,234,567  45%   10.00MB/s    0:00:01 (xfr#1, to-chk=0/3)`.
pub fn parse_progress(line: &str) -> Option<Progress> {
    let mut words = line.split_whitespace();
    let bytes = words.next()?.replace(',', "").parse().ok()?;
    let percent = words.next()?.strip_suffix('%')?.parse().ok()?;
    Some(Progress { bytes, percent })
}

/// `--stats`: bytes that crossed the network (literal) and bytes rsync found
/// already here, in a partial file or an older serial (matched).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub literal: u64,
    pub matched: u64,
    pub total_size: u64,
}

pub fn parse_stats(output: &str) -> Stats {
    let number = |label: &str| {
        output
            .lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.replace(',', "").parse().ok())
            .unwrap_or(0)
    };
    Stats {
        literal: number("Literal data:"),
        matched: number("Matched data:"),
        total_size: number("Total file size:"),
    }
}

/// Whether a progress update is worth a log line: every 10 % step, so a large
/// copy says where it is without flooding the journal.
pub fn log_step(last_logged: Option<u8>, now: u8) -> bool {
    match last_logged {
        None => true,
        Some(l) => now / 10 > l / 10,
    }
}

/// Whether a copy still moves: some counter of its I/O (bytes read, output
/// written) must grow within `timeout`.
#[derive(Debug, Clone)]
pub struct Liveness {
    timeout: Duration,
    last_change: std::time::Instant,
    last_value: Option<u64>,
}

impl Liveness {
    pub fn new(now: std::time::Instant, timeout: Duration) -> Self {
        Liveness {
            timeout,
            last_change: now,
            last_value: None,
        }
    }

    /// Records the counter's value now; true once it stood still for `timeout`.
    pub fn stalled(&mut self, now: std::time::Instant, value: u64) -> bool {
        if self.last_value != Some(value) {
            self.last_value = Some(value);
            self.last_change = now;
        }
        now.duration_since(self.last_change) >= self.timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(serials: &[u64], published: Option<u64>) -> Local {
        Local {
            serials: serials.to_vec(),
            published,
            ..Default::default()
        }
    }

    #[test]
    fn a_fresh_mirror_copies_everything_published_first() {
        let p = Primary {
            serials: vec![1, 2, 3],
            published: Some(2),
        };
        let a = plan(&p, &Local::default());
        assert_eq!(a.fetch, [2, 1, 3]);
        assert_eq!(a.publish, None, "nothing is complete here yet");
        assert!(a.delete.is_empty() && a.discard.is_empty());
        // Once serial 2 is here it is published; the others follow.
        let a = plan(&p, &local(&[2], None));
        assert_eq!((a.fetch, a.publish), (vec![1, 3], Some(2)));
        let a = plan(&p, &local(&[1, 2, 3], Some(2)));
        assert_eq!(a, Actions::default(), "in step: nothing to do");
    }

    #[test]
    fn a_rollback_on_the_primary_is_followed() {
        let p = Primary {
            serials: vec![1, 2],
            published: Some(1),
        };
        assert_eq!(plan(&p, &local(&[1, 2], Some(2))).publish, Some(1));
    }

    #[test]
    fn prunes_are_followed_but_never_the_published_or_an_installing_serial() {
        let p = Primary {
            serials: vec![4],
            published: Some(4),
        };
        let mut l = local(&[1, 2, 3, 4], Some(3));
        l.in_use = vec![2];
        let a = plan(&p, &l);
        assert_eq!(a.publish, Some(4));
        assert_eq!(
            a.delete,
            [1],
            "3 is published until 4 is, 2 is being installed"
        );
        // The primary still publishing an old serial keeps it too.
        let p = Primary {
            serials: vec![5],
            published: Some(2),
        };
        assert!(plan(&p, &local(&[2], Some(2))).delete.is_empty());
    }

    #[test]
    fn staging_copies_of_vanished_or_finished_serials_are_discarded() {
        let p = Primary {
            serials: vec![3, 4],
            published: Some(4),
        };
        let mut l = local(&[3], Some(3));
        l.staging = vec![2, 3, 4];
        let a = plan(&p, &l);
        assert_eq!(a.discard, [2, 3], "2 was pruned, 3 is complete; 4 resumes");
        assert_eq!(a.fetch, [4]);
    }

    #[test]
    fn backoff_grows_to_the_interval() {
        let i = Duration::from_secs(30);
        let waits: Vec<u64> = (1..=6).map(|f| backoff(f, i).as_secs()).collect();
        assert_eq!(waits, [5, 10, 20, 30, 30, 30]);
        assert_eq!(
            backoff(1, Duration::from_millis(10)),
            Duration::from_secs(1)
        );
        assert_eq!(backoff(u32::MAX, i), i);
    }

    #[test]
    fn a_copy_stalls_when_its_counter_stands_still_for_the_timeout() {
        let t0 = std::time::Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        let mut l = Liveness::new(t0, Duration::from_secs(10));
        assert!(!l.stalled(s(0), 5));
        assert!(!l.stalled(s(9), 5));
        assert!(!l.stalled(s(15), 6), "it moved");
        assert!(!l.stalled(s(24), 6));
        assert!(l.stalled(s(25), 6));
    }

    #[test]
    fn progress_and_stats() {
        assert_eq!(
            parse_progress("     32,768   0%    0.00kB/s    0:00:00 (xfr#1, to-chk=2/3)"),
            Some(Progress {
                bytes: 32768,
                percent: 0
            })
        );
        assert_eq!(
            parse_progress(" 67,108,864 100%  512.00MB/s    0:00:00 (xfr#3, to-chk=0/5)"),
            Some(Progress {
                bytes: 67108864,
                percent: 100
            })
        );
        assert_eq!(parse_progress("receiving incremental file list"), None);
        assert_eq!(parse_progress(""), None);
        let stats = "Number of files: 5\nTotal file size: 67,108,900 bytes\nLiteral data: 1,000 bytes\nMatched data: 67,107,900 bytes\n";
        assert_eq!(
            parse_stats(stats),
            Stats {
                literal: 1000,
                matched: 67107900,
                total_size: 67108900
            }
        );
        assert_eq!(parse_stats("nothing"), Stats::default());
        assert!(log_step(None, 0));
        assert!(!log_step(Some(3), 9));
        assert!(log_step(Some(9), 10));
        assert!(log_step(Some(90), 100));
    }
}
