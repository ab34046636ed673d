//! Gauges read at scrape time from the state that owns them: the lease table
//! (per range), the inventory (nodes per state) and the kernel's socket table
//! (rsync connections). Nothing to keep in sync, nothing stale.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::OnceLock;

/// One DHCP range's addresses at the time of a scrape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeUsage {
    /// `FIRST-LAST`, as configured.
    pub range: String,
    /// Bound leases that have not expired.
    pub active: u64,
    /// Addresses a new client could be offered now (not held, not reserved for
    /// a node, not the server's, a router's or a DNS server's).
    pub free: u64,
}

pub type LeaseSource = Box<dyn Fn() -> Vec<RangeUsage> + Send + Sync>;
/// `(state, count)` for every node state, zeros included (a state that empties
/// must read 0, not vanish).
pub type NodeSource = Box<dyn Fn() -> Vec<(&'static str, u64)> + Send + Sync>;

#[derive(Default)]
pub struct Sources {
    leases: OnceLock<LeaseSource>,
    nodes: OnceLock<NodeSource>,
    rsync_port: OnceLock<u16>,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sources")
    }
}

impl Sources {
    pub(super) fn set(&self, leases: LeaseSource, nodes: NodeSource, rsync_port: Option<u16>) {
        let _ = self.leases.set(leases);
        let _ = self.nodes.set(nodes);
        if let Some(p) = rsync_port {
            let _ = self.rsync_port.set(p);
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LeaseLabels {
    range: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

fn emit<S, M>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    family: &Family<S, M>,
) -> Result<(), std::fmt::Error>
where
    Family<S, M>: EncodeMetric,
{
    family.encode(encoder.encode_descriptor(name, help, None, family.metric_type())?)
}

/// The registered collector: a handle on the sources `serve` sets later.
#[derive(Debug)]
pub(super) struct Scraped(pub(super) std::sync::Arc<Sources>);

impl Collector for Scraped {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let this = &self.0;
        if let Some(leases) = this.leases.get() {
            let family = Family::<LeaseLabels, Gauge>::default();
            for r in leases() {
                for (state, n) in [("active", r.active), ("free", r.free)] {
                    let labels = LeaseLabels {
                        range: r.range.clone(),
                        state,
                    };
                    family.get_or_create(&labels).set(n as i64);
                }
            }
            emit(
                &mut encoder,
                "dhcp_leases",
                "Addresses of each DHCP range: active (bound) and free",
                &family,
            )?;
        }
        if let Some(nodes) = this.nodes.get() {
            let family = Family::<StateLabels, Gauge>::default();
            for (state, n) in nodes() {
                family.get_or_create(&StateLabels { state }).set(n as i64);
            }
            emit(
                &mut encoder,
                "nodes",
                "Nodes by install state (discovered, pending, installing, installed, failed, …)",
                &family,
            )?;
        }
        if let Some(port) = this.rsync_port.get() {
            let gauge = Gauge::<i64>::default();
            let n = established_on_port(*port).unwrap_or(0);
            gauge.set(n as i64);
            gauge.encode(encoder.encode_descriptor(
                "rsync_connections",
                "Open connections to the rsync daemon (installs and syncs copying now)",
                None,
                gauge.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

/// `(state, count)` for every state, zeros included.
pub fn count_by_state(
    states: impl IntoIterator<Item = crate::inventory::NodeState>,
) -> Vec<(&'static str, u64)> {
    use crate::inventory::NodeState;
    let mut counts = [0u64; NodeState::ALL.len()];
    for s in states {
        if let Some(i) = NodeState::ALL.iter().position(|a| *a == s) {
            counts[i] += 1;
        }
    }
    NodeState::ALL
        .iter()
        .zip(counts)
        .map(|(s, n)| (s.as_str(), n))
        .collect()
}

/// Established TCP connections whose local port is `port`, from the kernel's
/// tables of this network namespace (`/proc/net/tcp` and `tcp6`).
pub fn established_on_port(port: u16) -> std::io::Result<u64> {
    let mut n = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        match std::fs::read_to_string(table) {
            Ok(text) => n += count_established(&text, port),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Rows of a `/proc/net/tcp` table in state 01 (ESTABLISHED) with local port `port`.
pub(super) fn count_established(table: &str, port: u16) -> u64 {
    let want = format!("{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let mut cols = line.split_whitespace();
            let local = cols.nth(1).unwrap_or_default();
            let state = cols.nth(1).unwrap_or_default();
            state == "01" && local.rsplit(':').next() == Some(want.as_str())
        })
        .count() as u64
}
