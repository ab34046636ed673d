//! Bounds on what the node store keeps, so a stranger on the provisioning network
//! (or a chatty installer) cannot grow the SQLite file without limit: history is a
//! ring per node, repeated rows merge, free text is truncated, and strangers become
//! discovered records only at a bounded rate and up to a total. Pure functions and
//! a small limiter, tested without a database.

use serde_json::Value;

/// History rows kept per node (the newest). An install writes about 25 rows (each
/// step's start and end, plan and result) and a boot one (repeats merge), so 500
/// rows hold the last dozen or more installs and every boot between them: plenty
/// to diagnose a node, and at under 2 KiB a row (messages and console tails are
/// capped below) at most ~1 MiB per node.
pub const HISTORY_KEEP: usize = 500;
/// Bytes kept of an event's message, an error or a hostname/boot id a node reports.
pub const MAX_TEXT: usize = 1024;
/// Lines kept of a failed install's console tail (the newest), each capped at
/// [`MAX_CONSOLE_LINE`] bytes: the installer sends about 30.
pub const MAX_CONSOLE_LINES: usize = 60;
pub const MAX_CONSOLE_LINE: usize = 256;
/// Discovered (undeclared) records kept in all; beyond that strangers are refused
/// until an operator approves, ignores or removes some.
pub const MAX_DISCOVERED: usize = 1024;
/// New discovered records accepted per minute: a rack powering on is a few dozen
/// machines; a random-MAC flood is thousands.
pub const DISCOVERED_PER_MINUTE: usize = 60;

/// Appended to text cut by [`truncate`].
pub const TRUNCATED: &str = "…[truncated]";

/// `s` cut to at most `max` bytes (on a character boundary) with [`TRUNCATED`] appended.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub(TRUNCATED.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{TRUNCATED}", &s[..end])
}

/// The newest [`MAX_CONSOLE_LINES`] lines, each truncated; a marker line says how
/// many older lines were dropped.
pub fn cap_console(lines: &[String]) -> Vec<String> {
    let keep = MAX_CONSOLE_LINES - 1;
    let mut out = Vec::with_capacity(lines.len().min(MAX_CONSOLE_LINES));
    let skip = if lines.len() > MAX_CONSOLE_LINES {
        out.push(format!("…[{} earlier lines truncated]", lines.len() - keep));
        lines.len() - keep
    } else {
        0
    };
    out.extend(lines[skip..].iter().map(|l| truncate(l, MAX_CONSOLE_LINE)));
    out
}

/// When `new` repeats `last` (the node's newest history row) apart from the repeat
/// bookkeeping, the merged row to store in place of `last`: `count` incremented
/// and `last_at` set to `at`. `None` when they differ (a new row is due).
pub fn merge_repeat(last: &Value, new: &Value, at: u64) -> Option<Value> {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            o.remove("count");
            o.remove("last_at");
        }
        v
    };
    if !new.is_object() || strip(last) != strip(new) {
        return None;
    }
    let count = last.get("count").and_then(Value::as_u64).unwrap_or(1);
    let mut merged = last.clone();
    merged["count"] = Value::from(count + 1);
    merged["last_at"] = Value::from(at);
    Some(merged)
}

/// Why a stranger was not recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscoveryRefusal {
    /// [`MAX_DISCOVERED`] records exist already.
    Full { total: usize },
    /// More than [`DISCOVERED_PER_MINUTE`] new ones in the last minute.
    TooFast,
}

impl std::fmt::Display for DiscoveryRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DiscoveryRefusal::Full { total } => write!(
                f,
                "{total} undeclared machines are already listed (the limit is {MAX_DISCOVERED}); approve, ignore or remove some (`rollout node discovered`)"
            ),
            DiscoveryRefusal::TooFast => write!(
                f,
                "more than {DISCOVERED_PER_MINUTE} undeclared machines appeared in the last minute; refusing new ones for now (a random-MAC flood?)"
            ),
        }
    }
}

/// Admits new discovered records: a sliding one-minute window plus the total cap.
/// Counts refusals so the caller can warn once per window instead of per request.
#[derive(Debug, Default)]
pub struct DiscoveryLimiter {
    recent: std::collections::VecDeque<u64>,
    /// Refusals since the last warning, and when that warning was.
    refused: u64,
    warned_at: Option<u64>,
}

/// What the caller should log about a refusal.
#[derive(Debug, PartialEq, Eq)]
pub struct RefusalReport {
    pub reason: DiscoveryRefusal,
    /// Refusals this report covers; `None` when it is not time to warn yet.
    pub warn: Option<u64>,
}

impl DiscoveryLimiter {
    /// Admits one new record at `now` (seconds); `total` counts the discovered
    /// records that exist, and is only called when the rate allows one more (so
    /// a flood costs no database scan per request).
    pub fn admit(&mut self, now: u64, total: impl FnOnce() -> usize) -> Result<(), RefusalReport> {
        while self
            .recent
            .front()
            .is_some_and(|&t| now.saturating_sub(t) >= 60)
        {
            self.recent.pop_front();
        }
        let reason = if self.recent.len() >= DISCOVERED_PER_MINUTE {
            DiscoveryRefusal::TooFast
        } else {
            match total() {
                total if total >= MAX_DISCOVERED => DiscoveryRefusal::Full { total },
                _ => {
                    self.recent.push_back(now);
                    return Ok(());
                }
            }
        };
        self.refused += 1;
        let due = !matches!(self.warned_at, Some(t) if now.saturating_sub(t) < 60);
        let warn = due.then(|| {
            self.warned_at = Some(now);
            std::mem::take(&mut self.refused)
        });
        Err(RefusalReport { reason, warn })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn truncation_marks_the_cut_and_respects_characters() {
        assert_eq!(truncate("short", 10), "short");
        let long = "é".repeat(100);
        let t = truncate(&long, 50);
        assert!(t.len() <= 50 && t.ends_with(TRUNCATED), "{t}");
        let lines: Vec<String> = (0..100)
            .map(|i| format!("{i} {}", "x".repeat(400)))
            .collect();
        let c = cap_console(&lines);
        assert_eq!(c.len(), MAX_CONSOLE_LINES);
        assert!(c[0].contains("41 earlier lines truncated"), "{}", c[0]);
        assert!(c[1].starts_with("41 ") && c[1].len() <= MAX_CONSOLE_LINE);
        assert!(c.last().unwrap().starts_with("99 "));
        assert_eq!(cap_console(&["a".into()]), vec!["a".to_string()]);
    }

    #[test]
    fn only_identical_rows_merge() {
        let boot = json!({"kind": "pxe_boot", "firmware": "efi"});
        let merged = merge_repeat(&boot, &boot, 70).unwrap();
        assert_eq!(merged["count"], 2);
        assert_eq!(merged["last_at"], 70);
        let again = merge_repeat(&merged, &boot, 90).unwrap();
        assert_eq!(
            (again["count"].as_u64(), again["last_at"].as_u64()),
            (Some(3), Some(90))
        );
        let other = json!({"kind": "pxe_boot", "firmware": "pcbios"});
        assert_eq!(merge_repeat(&merged, &other, 99), None);
    }

    #[test]
    fn strangers_are_admitted_at_a_bounded_rate_and_up_to_a_total() {
        let mut l = DiscoveryLimiter::default();
        for _ in 0..DISCOVERED_PER_MINUTE {
            l.admit(1000, || 0).unwrap();
        }
        let r = l
            .admit(1010, || unreachable!("no count while too fast"))
            .unwrap_err();
        assert_eq!((r.reason, r.warn), (DiscoveryRefusal::TooFast, Some(1)));
        // Within the same minute: refused, counted, not warned again.
        assert_eq!(l.admit(1020, || 0).unwrap_err().warn, None);
        // A minute after the burst the window is free again.
        l.admit(1060, || 0).unwrap();
        let r = l.admit(1071, || MAX_DISCOVERED).unwrap_err();
        assert_eq!(
            (r.reason, r.warn),
            (
                DiscoveryRefusal::Full {
                    total: MAX_DISCOVERED
                },
                Some(2)
            )
        );
    }
}
