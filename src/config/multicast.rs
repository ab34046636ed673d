//! `[install] multicast`: the opt-in first install by one udpcast stream per
//! serial (the `multicast` module). Off unless written.

use serde::{Deserialize, Serialize};

use super::{invalid, ConfigError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MulticastConfig {
    /// Offer the stream in plans; `false` (the default): rsync alone.
    #[serde(default)]
    pub enabled: bool,
    /// Seconds the server collects receivers after the first one asked.
    #[serde(default = "default_wait")]
    pub wait_secs: u64,
    /// Receivers in one session; the stream starts at once when this many joined.
    #[serde(default = "default_max_receivers")]
    pub max_receivers: u32,
    /// udp-sender's `--max-bitrate` in Mbit/s; 0: udpcast's own pacing.
    #[serde(default)]
    pub rate_mbps: u32,
    /// The first UDP port (even); session k uses `port_base + 2k` and the next.
    #[serde(default = "default_port_base")]
    pub port_base: u16,
}

fn default_wait() -> u64 {
    10
}
fn default_max_receivers() -> u32 {
    64
}
fn default_port_base() -> u16 {
    9000
}

impl Default for MulticastConfig {
    fn default() -> Self {
        MulticastConfig {
            enabled: false,
            wait_secs: default_wait(),
            max_receivers: default_max_receivers(),
            rate_mbps: 0,
            port_base: default_port_base(),
        }
    }
}

impl MulticastConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=600).contains(&self.wait_secs) {
            return Err(invalid(
                "install.multicast.wait_secs",
                format!("{} seconds", self.wait_secs),
                "use 1 to 600 seconds (how long the first node waits for others)",
            ));
        }
        if !(1..=1024).contains(&self.max_receivers) {
            return Err(invalid(
                "install.multicast.max_receivers",
                format!("{} receivers", self.max_receivers),
                "use 1 to 1024",
            ));
        }
        if !self.port_base.is_multiple_of(2) || self.port_base < 1024 || self.port_base > 65000 {
            return Err(invalid(
                "install.multicast.port_base",
                format!("port {}", self.port_base),
                "use an even port from 1024 to 65000 (udpcast uses it and the next one)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::BASE;
    use super::super::Config;

    #[test]
    fn off_unless_written_and_the_inline_table_reads() {
        let c = Config::parse(BASE).unwrap();
        assert!(!c.install.multicast.enabled);
        let c = Config::parse(&format!(
            "{BASE}[install]\nmulticast = {{ enabled = true, wait_secs = 5, rate_mbps = 800 }}\n"
        ))
        .unwrap();
        let m = c.install.multicast;
        assert!(m.enabled);
        assert_eq!((m.wait_secs, m.rate_mbps, m.max_receivers), (5, 800, 64));
    }

    #[test]
    fn bad_values_name_the_key() {
        for (text, key) in [
            ("wait_secs = 0", "install.multicast.wait_secs"),
            ("max_receivers = 0", "install.multicast.max_receivers"),
            ("port_base = 9001", "install.multicast.port_base"),
        ] {
            let e = Config::parse(&format!(
                "{BASE}[install]\nmulticast = {{ enabled = true, {text} }}\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
        let e = Config::parse(&format!(
            "{BASE}[install]\nmulticast = {{ enable = true }}\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("enable"), "{e}");
    }
}
