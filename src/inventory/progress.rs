//! ETAs people can plan by: the copy rate of a running install as a moving
//! average of its progress reports, and the time left at that rate. Pure: the
//! inventory feeds it the installer's reports (its own clock, `elapsed_ms`, so
//! network delays do not skew the rate) and stores the answer on the record.

use std::collections::VecDeque;

/// The moving window: long enough to smooth rsync's bursts (a large file, then
/// many small ones), short enough to follow a real change of pace.
pub const WINDOW_MS: u64 = 30_000;
/// No estimate before this many reports …
pub const MIN_SAMPLES: usize = 3;
/// … spanning at least this long: two reports a moment apart say nothing.
pub const MIN_SPAN_MS: u64 = 3_000;

/// One install's copy, as reported: `(elapsed_ms, done_bytes)`, oldest first.
#[derive(Debug, Clone, Default)]
pub struct CopyRate {
    window: VecDeque<(u64, u64)>,
    /// The first report of this copy, for the whole copy's average.
    first: Option<(u64, u64)>,
    last: Option<(u64, u64)>,
}

impl CopyRate {
    /// Adds a report. One going backwards in time or bytes (a resumed rsync
    /// that recounts, an installer that restarted) starts the estimate over.
    pub fn add(&mut self, elapsed_ms: u64, done_bytes: u64) {
        if let Some((t, b)) = self.last {
            if elapsed_ms < t || done_bytes < b {
                *self = CopyRate::default();
            } else if elapsed_ms == t {
                // Same instant: keep the newer byte count only.
                self.window.pop_back();
            }
        }
        self.first.get_or_insert((elapsed_ms, done_bytes));
        self.last = Some((elapsed_ms, done_bytes));
        self.window.push_back((elapsed_ms, done_bytes));
        // Drop reports older than the window, but keep the last one before
        // it: after a pause in the reports the rate still spans the pause
        // (the copy's real pace) instead of the few reports since.
        while self.window.len() > MIN_SAMPLES
            && self
                .window
                .get(1)
                .is_some_and(|(t, _)| elapsed_ms - t >= WINDOW_MS)
        {
            self.window.pop_front();
        }
    }

    /// Bytes per second over the window: the least-squares slope of bytes over
    /// time, so one late or early report moves it little (the slope between
    /// the two ends would swing with each). None before [`MIN_SAMPLES`]
    /// reports spanning [`MIN_SPAN_MS`].
    pub fn rate(&self) -> Option<f64> {
        let n = self.window.len();
        let (t0, _) = *self.window.front()?;
        let (t1, _) = *self.window.back()?;
        if n < MIN_SAMPLES || t1 - t0 < MIN_SPAN_MS {
            return None;
        }
        let nf = n as f64;
        let (mut st, mut sb) = (0.0, 0.0);
        for &(t, b) in &self.window {
            st += (t - t0) as f64 / 1000.0;
            sb += b as f64;
        }
        let (mt, mb) = (st / nf, sb / nf);
        let (mut cov, mut var) = (0.0, 0.0);
        for &(t, b) in &self.window {
            let dt = (t - t0) as f64 / 1000.0 - mt;
            cov += dt * (b as f64 - mb);
            var += dt * dt;
        }
        (var > 0.0).then(|| (cov / var).max(0.0))
    }

    /// Bytes per second from the first report to the last (the whole copy's
    /// throughput, once it is done).
    pub fn average(&self) -> Option<f64> {
        let ((t0, b0), (t1, b1)) = (self.first?, self.last?);
        (t1 > t0).then(|| (b1 - b0) as f64 * 1000.0 / (t1 - t0) as f64)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eta {
    /// Not enough reports yet, or nothing is moving.
    Unknown,
    /// Seconds left at the current rate.
    Remaining(u64),
    Finished,
}

/// Time left to copy `total - done` bytes at `rate` bytes/s.
pub fn eta(rate: Option<f64>, done: u64, total: u64) -> Eta {
    if total > 0 && done >= total {
        return Eta::Finished;
    }
    match rate {
        Some(r) if r >= 1.0 && total > 0 => {
            Eta::Remaining(((total - done) as f64 / r).ceil() as u64)
        }
        _ => Eta::Unknown,
    }
}

/// `1h02m`, `4m05s`, `12s`: for tables and the dashboard.
pub fn human_duration(secs: u64) -> String {
    match secs {
        s if s >= 3600 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1_000_000;

    #[test]
    fn no_estimate_before_enough_reports() {
        let mut r = CopyRate::default();
        assert_eq!(r.rate(), None);
        r.add(10_000, 0);
        r.add(11_000, 10 * MB);
        assert_eq!(r.rate(), None, "two reports");
        assert_eq!(eta(r.rate(), 10 * MB, 100 * MB), Eta::Unknown);
        r.add(11_500, 15 * MB);
        assert_eq!(r.rate(), None, "three reports in 1.5 s");
        r.add(13_000, 30 * MB);
        let rate = r.rate().expect("four reports over 3 s");
        assert!((rate - 10.0 * MB as f64).abs() < 0.01 * MB as f64, "{rate}");
        assert_eq!(eta(r.rate(), 30 * MB, 100 * MB), Eta::Remaining(7));
    }

    #[test]
    fn stable_under_jitter() {
        // 10 MB/s on average, reports arriving up to 400 ms early or late with
        // bursts of 2 MB and 18 MB: the ETA stays within 15% of the truth and
        // moves smoothly from one report to the next.
        let total = 600 * MB;
        let mut r = CopyRate::default();
        let mut previous: Option<u64> = None;
        for i in 0..50u64 {
            let jitter_ms = [0, 400, 150, 300, 50][(i % 5) as usize];
            let t = 1000 * i + jitter_ms;
            let done = if i % 2 == 0 {
                10 * MB * i
            } else {
                10 * MB * i - 8 * MB
            };
            r.add(t, done);
            let Eta::Remaining(left) = eta(r.rate(), done, total) else {
                assert!(i < 3, "no estimate at report {i}");
                continue;
            };
            let truth = (total - done) as f64 / (10 * MB) as f64;
            // The first few reports give a rough figure; ten seconds in, a
            // close and steady one.
            let tolerance = if i < 10 { 0.5 } else { 0.1 };
            assert!(
                (left as f64 - truth).abs() <= tolerance * truth + 2.0,
                "report {i}: ETA {left}s, truth {truth:.0}s"
            );
            if let (Some(p), true) = (previous, i >= 10) {
                assert!(
                    left.abs_diff(p) <= 4,
                    "report {i}: ETA jumped from {p}s to {left}s"
                );
            }
            previous = Some(left);
        }
    }

    #[test]
    fn follows_a_change_of_pace_within_the_window() {
        let mut r = CopyRate::default();
        for i in 0..=40u64 {
            r.add(1000 * i, 20 * MB * i);
        }
        let (t, b) = (40_000, 800 * MB);
        for i in 1..=40u64 {
            r.add(t + 1000 * i, b + 5 * MB * i);
        }
        let rate = r.rate().unwrap();
        assert!((rate - 5.0 * MB as f64).abs() < 0.1 * MB as f64, "{rate}");
        // The whole copy: 1000 MB in 80 s.
        let avg = r.average().unwrap();
        assert!((avg - 12.5 * MB as f64).abs() < 0.01 * MB as f64, "{avg}");
    }

    #[test]
    fn a_pause_between_reports_is_part_of_the_rate() {
        // Five reports a second apart, then three after a 44 s gap, all at
        // 10 MB/s overall: the estimate spans the gap.
        let mut r = CopyRate::default();
        for i in 1..=5u64 {
            r.add(1000 * i, 10 * MB * (i - 1));
        }
        for s in [49u64, 50, 51] {
            r.add(1000 * s, 10 * MB * (s - 1));
        }
        let rate = r.rate().expect("an estimate after the gap");
        assert!((rate - 10.0 * MB as f64).abs() < 1.0, "{rate}");
        assert_eq!(eta(Some(rate), 500 * MB, 1000 * MB), Eta::Remaining(50));
    }

    #[test]
    fn finished_and_stalled_and_restarted() {
        assert_eq!(eta(Some(5.0), 100, 100), Eta::Finished);
        assert_eq!(eta(None, 100, 100), Eta::Finished);
        assert_eq!(eta(Some(0.0), 10, 100), Eta::Unknown, "a stalled copy");
        assert_eq!(eta(Some(5.0), 0, 0), Eta::Unknown, "no total yet");
        let mut r = CopyRate::default();
        for i in 0..5 {
            r.add(1000 * i, MB * i);
        }
        assert!(r.rate().is_some());
        r.add(500, 0);
        assert_eq!(
            r.rate(),
            None,
            "a copy that starts over starts the estimate over"
        );
    }

    #[test]
    fn durations_read_like_a_clock() {
        assert_eq!(human_duration(12), "12s");
        assert_eq!(human_duration(245), "4m05s");
        assert_eq!(human_duration(3720), "1h02m");
    }
}
