//! Failures the server survives but must not hide: each one is logged at warn
//! where it happens and counted here, and `/healthz` prints the counts that are
//! not zero (plain atomics; a metrics exporter can read the same fields later).

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Counters {
    /// Leases (bound, released, declined) that could not be written to the
    /// database; no ACK left for those.
    pub dhcp_persist_failures: AtomicU64,
    /// DHCP packets whose handling panicked (dropped, the service went on).
    pub dhcp_panics: AtomicU64,
    /// Requests from new clients refused by the dynamic-allocation rate limit.
    pub dhcp_rate_limited: AtomicU64,
    /// Failed rewrites of rsyncd.conf (the daemon keeps its previous modules).
    pub rsyncd_config_failures: AtomicU64,
}

impl Counters {
    /// Adds one to `c` and returns the new total (for the log line).
    pub fn bump(c: &AtomicU64) -> u64 {
        c.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// `name value` lines for the counters that are not zero (nothing at all
    /// on a server that has had no trouble, so `/healthz` stays a plain `ok`).
    pub fn render(&self) -> String {
        [
            ("dhcp_persist_failures", &self.dhcp_persist_failures),
            ("dhcp_panics", &self.dhcp_panics),
            ("dhcp_rate_limited", &self.dhcp_rate_limited),
            ("rsyncd_config_failures", &self.rsyncd_config_failures),
        ]
        .iter()
        .map(|(name, c)| (name, c.load(Ordering::Relaxed)))
        .filter(|(_, n)| *n > 0)
        .map(|(name, n)| format!("{name} {n}\n"))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_that_are_not_zero_render_as_name_value_lines() {
        let c = Counters::default();
        assert_eq!(c.render(), "", "a trouble-free server adds nothing");
        assert_eq!(Counters::bump(&c.dhcp_panics), 1);
        assert_eq!(Counters::bump(&c.dhcp_panics), 2);
        Counters::bump(&c.rsyncd_config_failures);
        assert_eq!(c.render(), "dhcp_panics 2\nrsyncd_config_failures 1\n");
    }
}
