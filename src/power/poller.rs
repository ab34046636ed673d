//! The background poll of every BMC's power state (`[power] poll_interval`,
//! default 300 s; 0 turns it off). A change, and a BMC that stops or starts
//! answering, is a row in the node's history (`kind: power_state`); the same
//! answer again is not, so a rack of quiet nodes adds nothing.

use super::{PowerError, PowerState, Target};
use crate::config::{BmcConfig, BmcDriver, PowerConfig};
use crate::inventory::Inventory;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Every BMC call of the server (API and poller) holds one of these: at most
/// `power.concurrency` at once, fixed at the first call.
pub fn permits(concurrency: usize) -> Arc<Semaphore> {
    static PERMITS: OnceLock<Arc<Semaphore>> = OnceLock::new();
    PERMITS
        .get_or_init(|| Arc::new(Semaphore::new(concurrency)))
        .clone()
}

/// One poll's answer, as far as the history cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Polled {
    State(PowerState),
    /// The BMC did not answer or refused; the message is the error's.
    Failed(String),
}

/// The history row for `now`, when it differs from the previous answer (a
/// failure counts as the same as a failure, whatever its text).
pub fn change(previous: Option<&Polled>, now: &Polled) -> Option<Value> {
    let same = match (previous, now) {
        (Some(Polled::State(a)), Polled::State(b)) => a == b,
        (Some(Polled::Failed(_)), Polled::Failed(_)) => true,
        _ => false,
    };
    if same {
        return None;
    }
    Some(match now {
        Polled::State(s) => json!({"kind": "power_state", "state": s.as_str()}),
        Polled::Failed(e) => json!({"kind": "power_state", "state": "unreachable", "error": e}),
    })
}

/// A node the poller asks about: hostname, MAC, BMC.
pub type PolledNode = (String, String, BmcConfig);

/// Polls until `cancel`. Wake-on-LAN nodes are left out: nothing to ask.
pub async fn run(
    nodes: Vec<PolledNode>,
    settings: PowerConfig,
    interface: Option<String>,
    inventory: Arc<Inventory>,
    metrics: Arc<crate::metrics::Metrics>,
    cancel: CancellationToken,
) {
    let nodes: Vec<PolledNode> = nodes
        .into_iter()
        .filter(|(_, _, b)| b.driver != BmcDriver::Wol)
        .collect();
    if settings.poll_interval == 0 || nodes.is_empty() {
        // Nothing to poll, but `serve` takes a service that ends on its own
        // for a failure: wait for the shutdown like the others.
        cancel.cancelled().await;
        return;
    }
    let permits = permits(settings.concurrency);
    let timeout = Duration::from_secs(settings.timeout);
    let mut last: HashMap<String, Polled> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(settings.poll_interval));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let mut polls = tokio::task::JoinSet::new();
        for (hostname, mac, bmc) in nodes.iter().cloned() {
            let permits = permits.clone();
            let interface = interface.clone();
            let metrics = metrics.clone();
            polls.spawn(async move {
                let _permit = permits.acquire_owned().await.ok();
                let answer = tokio::task::spawn_blocking(move || {
                    let target = Target {
                        node: &hostname,
                        mac: &mac,
                        bmc: &bmc,
                        interface: interface.as_deref(),
                        timeout,
                    };
                    let r: Result<PowerState, PowerError> =
                        super::metered::metered(&target, metrics).and_then(|d| d.status());
                    (mac, r)
                })
                .await;
                answer.ok()
            });
        }
        while let Some(done) = polls.join_next().await {
            let Ok(Some((mac, result))) = done else {
                continue;
            };
            let now = match result {
                Ok(s) => Polled::State(s),
                Err(e) => Polled::Failed(e.to_string()),
            };
            if let Some(event) = change(last.get(&mac), &now) {
                let inv = inventory.clone();
                let m = mac.clone();
                let noted = tokio::task::spawn_blocking(move || inv.note(&m, event)).await;
                if let Ok(Err(e)) = noted {
                    tracing::warn!(%mac, "recording a power state: {e}");
                }
            }
            last.insert(mac, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_changes_are_recorded() {
        let on = Polled::State(PowerState::On);
        let off = Polled::State(PowerState::Off);
        let down = Polled::Failed("rack1-node1: the BMC at … does not answer".into());
        assert_eq!(change(None, &on).unwrap()["state"], "on");
        assert!(change(Some(&on), &on).is_none());
        assert_eq!(change(Some(&on), &off).unwrap()["state"], "off");
        let row = change(Some(&off), &down).unwrap();
        assert_eq!(row["state"], "unreachable");
        assert!(row["error"].as_str().unwrap().contains("does not answer"));
        assert!(change(Some(&down), &Polled::Failed("other text".into())).is_none());
        assert_eq!(change(Some(&down), &on).unwrap()["state"], "on");
    }
}
