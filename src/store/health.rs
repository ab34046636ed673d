//! Whether lease writes currently reach the store, for `/healthz`: the DHCP
//! writer records each batch's result here, the HTTP side reads it. While the
//! store refuses writes the server is *degraded*, not down: reserved nodes
//! still boot, HTTP and TFTP still serve, only new allocations wait.

use std::sync::{Arc, Mutex};

/// Since when, and why, lease writes fail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outage {
    /// The latest write error (the database's own message).
    pub error: String,
    /// Unix seconds of the first failed write of this outage.
    pub since: u64,
}

/// Shared between the lease writer and `/healthz`; clones share one state.
#[derive(Clone, Debug, Default)]
pub struct StoreHealth(Arc<Mutex<Option<Outage>>>);

impl StoreHealth {
    /// Records a batch's result: a failure starts an outage (or updates its
    /// error, keeping when it began); a success ends it.
    pub fn record(&self, result: Result<(), String>, now: u64) {
        let mut state = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *state = next(state.take(), result, now);
    }

    /// The current outage, if writes fail.
    pub fn outage(&self) -> Option<Outage> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// `/healthz`'s first line(s): `ok`, or `degraded` and a line naming the
    /// cause, so a monitor matching the body sees it and a person knows what
    /// to fix.
    pub fn status(&self, now: u64) -> String {
        status_text(self.outage().as_ref(), now)
    }

    /// The line `/healthz` adds for the node records' store while it fails
    /// (see [`healthz_head`]).
    pub fn node_store_line(&self, now: u64) -> Option<String> {
        let o = self.outage()?;
        Some(format!(
            "node_store_unreachable since {} ({} s): {}; installed nodes boot from their disks, installs and changes wait until it is back\n",
            crate::clock::rfc3339(o.since),
            now.saturating_sub(o.since),
            o.error.replace('\n', " ")
        ))
    }
}

/// `/healthz`'s head from the lease store's health and the node store's:
/// `ok`, or `degraded` followed by a line per store that fails.
pub fn healthz_head(leases: &StoreHealth, nodes: &StoreHealth, now: u64) -> String {
    let lease_text = leases.status(now);
    match nodes.node_store_line(now) {
        None => lease_text,
        Some(line) => match lease_text.strip_prefix("degraded\n") {
            Some(lease_line) => format!("degraded\n{lease_line}{line}"),
            None => format!("degraded\n{line}"),
        },
    }
}

/// The state after a batch: pure, so its rules are tested without a database.
fn next(prev: Option<Outage>, result: Result<(), String>, now: u64) -> Option<Outage> {
    match (prev, result) {
        (_, Ok(())) => None,
        (Some(o), Err(error)) => Some(Outage {
            error,
            since: o.since,
        }),
        (None, Err(error)) => Some(Outage { error, since: now }),
    }
}

fn status_text(outage: Option<&Outage>, now: u64) -> String {
    match outage {
        None => "ok\n".into(),
        Some(o) => format!(
            "degraded\nlease_store_unwritable since {} ({} s): {}; reserved nodes are still answered, new addresses wait until lease writes succeed again\n",
            crate::clock::rfc3339(o.since),
            now.saturating_sub(o.since),
            o.error.replace('\n', " ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_keeps_its_start_takes_the_latest_error_and_ends_on_success() {
        let h = StoreHealth::default();
        assert_eq!(h.status(5), "ok\n");
        h.record(Err("connection refused".into()), 100);
        h.record(Err("timed out".into()), 160);
        assert_eq!(
            h.outage(),
            Some(Outage {
                error: "timed out".into(),
                since: 100
            })
        );
        let s = h.status(190);
        assert!(s.starts_with("degraded\n"), "{s}");
        assert!(
            s.contains("since 1970-01-01T00:01:40Z (90 s): timed out;"),
            "{s}"
        );
        h.record(Ok(()), 200);
        assert_eq!(h.status(201), "ok\n");
        // A new outage starts afresh.
        h.record(Err("gone".into()), 300);
        assert_eq!(h.outage().unwrap().since, 300);
    }

    #[test]
    fn healthz_names_each_store_that_fails() {
        let (leases, nodes) = (StoreHealth::default(), StoreHealth::default());
        assert_eq!(healthz_head(&leases, &nodes, 10), "ok\n");
        nodes.record(Err("connection refused".into()), 100);
        let s = healthz_head(&leases, &nodes, 110);
        assert!(
            s.starts_with("degraded\nnode_store_unreachable since "),
            "{s}"
        );
        assert!(
            s.contains("(10 s): connection refused; installed nodes boot"),
            "{s}"
        );
        leases.record(Err("connection refused".into()), 105);
        let s = healthz_head(&leases, &nodes, 110);
        assert_eq!(s.matches("degraded").count(), 1, "{s}");
        assert!(
            s.contains("lease_store_unwritable") && s.contains("node_store_unreachable"),
            "{s}"
        );
        nodes.record(Ok(()), 120);
        assert!(!healthz_head(&leases, &nodes, 121).contains("node_store"));
    }
}
