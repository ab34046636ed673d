//! What the server counts, in one place: `GET /metrics` renders it in the
//! Prometheus text format, and `/healthz` prints the failures the server
//! survived from the same counters (so the two can never disagree).
//!
//! Counters and histograms are updated where things happen (DHCP socket loop,
//! TFTP reader, HTTP middleware, installer events, BMC calls). Gauges that
//! describe state held elsewhere (leases per range, nodes per state, open rsync
//! connections) are read at scrape time through [`Metrics::set_sources`], so
//! they are never stale: an expired lease is free the moment it expires.

pub mod http;
mod scrape;

pub use scrape::{
    count_by_state, established_on_port, LeaseSource, NodeSource, RangeUsage, Sources,
};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Metric, Registry};
use std::sync::Arc;

/// `rollout_dhcp_packets_total{type, outcome}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DhcpLabels {
    /// The request's message type (`discover`, `request`, …; `malformed` when it
    /// did not decode).
    pub r#type: &'static str,
    /// `offer`, `ack`, `nak` (the reply sent), `done` (RELEASE/DECLINE taken),
    /// `ignored` (not ours), `failed` (a warning: lease not written, rate limit,
    /// panic), `dropped` (malformed).
    pub outcome: &'static str,
}

/// `rollout_http_requests_total{method, route, status}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    /// The route template (`/api/v1/nodes/{id}`), never the raw path, so a
    /// scanner cannot grow the label set; `unmatched` for 404s.
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

/// `rollout_bmc_calls_total{driver, operation, outcome}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BmcLabels {
    pub driver: &'static str,
    pub operation: &'static str,
    /// `ok`, or the kind of error (`unreachable`, `bad_credentials`, …).
    pub outcome: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub dhcp_packets: Family<DhcpLabels, Counter>,
    pub tftp_transfers: Family<OutcomeLabels, Counter>,
    pub tftp_bytes: Counter,
    pub http_requests: Family<HttpLabels, Counter>,
    pub installs_started: Counter,
    pub installs_finished: Family<OutcomeLabels, Counter>,
    /// Seconds from the plan to the `installed` report.
    pub install_duration: Histogram,
    /// Bytes per second of a whole copy step.
    pub copy_throughput: Histogram,
    pub bmc_calls: Family<BmcLabels, Counter>,
    /// Leases (bound, released, declined) that could not be written to the
    /// database; no ACK left for those.
    pub dhcp_persist_failures: Counter,
    /// DHCP packets whose handling panicked (dropped, the service went on).
    pub dhcp_panics: Counter,
    /// Requests from new clients refused by the dynamic-allocation rate limit.
    pub dhcp_rate_limited: Counter,
    /// Failed rewrites of rsyncd.conf (the daemon keeps its previous modules).
    pub rsyncd_config_failures: Counter,
    /// Multicast sessions that ended, by outcome (sent, failed).
    pub multicast_sessions: Family<OutcomeLabels, Counter>,
    /// Bytes of image tar handed to udp-sender (once per session, whatever
    /// the number of receivers).
    pub multicast_sent_bytes: Counter,
    /// Whether lease writes reach the store now (`/healthz` says `degraded` if not).
    pub store_health: crate::store::health::StoreHealth,
    /// Whether the node records' store answers (a shared database).
    pub node_store_health: crate::store::health::StoreHealth,
    sources: Arc<Sources>,
}

/// Any metric, so the registrations are one table.
#[derive(Debug)]
struct Boxed(Box<dyn Metric>);

impl EncodeMetric for Boxed {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }
    fn metric_type(&self) -> MetricType {
        self.0.metric_type()
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("rollout");
        let m = Metrics {
            dhcp_packets: Family::default(),
            tftp_transfers: Family::default(),
            tftp_bytes: Counter::default(),
            http_requests: Family::default(),
            installs_started: Counter::default(),
            installs_finished: Family::default(),
            // 30 s … ~4.3 h: a tiny image in a lab to a big one over a slow link.
            install_duration: Histogram::new(exponential_buckets(30.0, 2.0, 10)),
            // 1 MiB/s … 1 GiB/s.
            copy_throughput: Histogram::new(exponential_buckets(1048576.0, 2.0, 11)),
            bmc_calls: Family::default(),
            dhcp_persist_failures: Counter::default(),
            dhcp_panics: Counter::default(),
            dhcp_rate_limited: Counter::default(),
            rsyncd_config_failures: Counter::default(),
            multicast_sessions: Family::default(),
            multicast_sent_bytes: Counter::default(),
            store_health: Default::default(),
            node_store_health: Default::default(),
            sources: Arc::default(),
            registry: Registry::default(),
        };
        // One table: name, help, metric (counters get `_total` appended by the encoder).
        let table: [(&str, &str, Box<dyn Metric>); 15] = [
            (
                "dhcp_packets",
                "DHCP requests handled, by message type and outcome",
                Box::new(m.dhcp_packets.clone()),
            ),
            (
                "tftp_transfers",
                "TFTP read requests, by outcome (complete, incomplete, refused, not_found)",
                Box::new(m.tftp_transfers.clone()),
            ),
            (
                "tftp_sent_bytes",
                "Bytes sent by TFTP transfers",
                Box::new(m.tftp_bytes.clone()),
            ),
            (
                "http_requests",
                "HTTP requests, by method, route template and status",
                Box::new(m.http_requests.clone()),
            ),
            (
                "installs_started",
                "Install plans handed out (each starts an install)",
                Box::new(m.installs_started.clone()),
            ),
            (
                "installs_finished",
                "Installs that reported their end, by outcome (installed, failed)",
                Box::new(m.installs_finished.clone()),
            ),
            (
                "install_duration_seconds",
                "Seconds from the plan to the installed report, of successful installs",
                Box::new(m.install_duration.clone()),
            ),
            (
                "copy_throughput_bytes_per_second",
                "Average rate of each install's image copy",
                Box::new(m.copy_throughput.clone()),
            ),
            (
                "bmc_calls",
                "Calls to nodes' BMCs, by driver, operation and outcome",
                Box::new(m.bmc_calls.clone()),
            ),
            (
                "dhcp_persist_failures",
                "Leases that could not be written to the database (no ACK sent)",
                Box::new(m.dhcp_persist_failures.clone()),
            ),
            (
                "dhcp_panics",
                "DHCP packets whose handling panicked (dropped)",
                Box::new(m.dhcp_panics.clone()),
            ),
            (
                "dhcp_rate_limited",
                "Requests of new clients refused by the allocation rate limit",
                Box::new(m.dhcp_rate_limited.clone()),
            ),
            (
                "rsyncd_config_failures",
                "Failed rewrites of rsyncd.conf",
                Box::new(m.rsyncd_config_failures.clone()),
            ),
            (
                "multicast_sessions",
                "Multicast first-install sessions that ended, by outcome (sent, failed)",
                Box::new(m.multicast_sessions.clone()),
            ),
            (
                "multicast_sent_bytes",
                "Bytes of image tar streamed by udp-sender (once per session)",
                Box::new(m.multicast_sent_bytes.clone()),
            ),
        ];
        let r = &mut registry;
        for (name, help, metric) in table {
            r.register(name, help, Boxed(metric));
        }
        r.register_collector(Box::new(scrape::Scraped(m.sources.clone())));
        Metrics { registry, ..m }
    }

    /// Adds one to `c` and returns the new total (for the log line).
    pub fn bump(c: &Counter) -> u64 {
        c.inc() + 1
    }

    /// Where the scrape-time gauges read from; set once by `serve`, when the
    /// lease table and the inventory exist. A later call is ignored.
    pub fn set_sources(&self, leases: LeaseSource, nodes: NodeSource, rsync_port: Option<u16>) {
        self.sources.set(leases, nodes, rsync_port);
    }

    pub fn dhcp(&self, kind: &'static str, outcome: &'static str) {
        self.dhcp_packets
            .get_or_create(&DhcpLabels {
                r#type: kind,
                outcome,
            })
            .inc();
    }

    pub fn tftp(&self, outcome: &'static str) {
        self.tftp_transfers
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    pub fn install_finished(&self, outcome: &'static str) {
        self.installs_finished
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    pub fn count_multicast(&self, outcome: &'static str) {
        self.multicast_sessions
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    pub fn bmc(&self, driver: &'static str, operation: &'static str, outcome: &'static str) {
        self.bmc_calls
            .get_or_create(&BmcLabels {
                driver,
                operation,
                outcome,
            })
            .inc();
    }

    /// The Prometheus text exposition (format 0.0.4 / OpenMetrics text).
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// `name value` lines for the survived failures that are not zero (nothing
    /// at all on a server that has had no trouble, so `/healthz` stays `ok`).
    pub fn healthz(&self) -> String {
        [
            ("dhcp_persist_failures", &self.dhcp_persist_failures),
            ("dhcp_panics", &self.dhcp_panics),
            ("dhcp_rate_limited", &self.dhcp_rate_limited),
            ("rsyncd_config_failures", &self.rsyncd_config_failures),
        ]
        .iter()
        .map(|(name, c)| (name, c.get()))
        .filter(|(_, n)| *n > 0)
        .map(|(name, n)| format!("{name} {n}\n"))
        .collect()
    }
}

#[cfg(test)]
mod tests;
