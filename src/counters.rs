//! Failures the server survives but must not hide: each one is logged at warn
//! where it happens and counted here, and `/healthz` prints the counts (plain
//! atomics; a metrics exporter can read the same fields later).

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

    /// `name value` lines, one per counter.
    pub fn render(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "dhcp_persist_failures {}\ndhcp_panics {}\ndhcp_rate_limited {}\nrsyncd_config_failures {}\n",
            get(&self.dhcp_persist_failures),
            get(&self.dhcp_panics),
            get(&self.dhcp_rate_limited),
            get(&self.rsyncd_config_failures),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_render_as_name_value_lines() {
        let c = Counters::default();
        assert_eq!(Counters::bump(&c.dhcp_panics), 1);
        assert_eq!(Counters::bump(&c.dhcp_panics), 2);
        let text = c.render();
        assert!(text.contains("dhcp_panics 2\n"), "{text}");
        assert!(text.contains("dhcp_persist_failures 0\n"), "{text}");
    }
}
