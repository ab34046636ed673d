//! Following installs through the server's record of each node
//! (`GET /api/v1/nodes`) until every lab node is installed and has booted
//! its new OS, or one fails.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub use rollout::inventory::{NodeRecord, NodeState};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::lab::Lab;
use crate::server::{admin_token, http_get_as};

/// What the lab asks of the server's node record ([`NodeRecord`], the type
/// `GET /api/v1/nodes` serialises, so a changed field fails to build here).
pub trait NodeProgress {
    /// Installed and running the installed OS (it phoned home).
    fn is_done(&self) -> bool;
    fn is_failed(&self) -> bool;
    /// One human line, e.g. `node1 52:54:00:00:00:01 installing copy 40% (80/200 MiB)`.
    fn line(&self) -> String;
}

impl NodeProgress for NodeRecord {
    fn is_done(&self) -> bool {
        self.state == NodeState::Installed && self.booted_at.is_some()
    }

    fn is_failed(&self) -> bool {
        self.state == NodeState::Failed
    }

    fn line(&self) -> String {
        let mut s = format!("{} {} {}", self.hostname, self.mac, self.state.as_str());
        if let Some(stage) = &self.stage {
            s.push(' ');
            s.push_str(stage);
        }
        if self.total_bytes > 0 && self.state == NodeState::Installing {
            s.push_str(&format!(
                " {}% ({}/{} MiB)",
                self.done_bytes * 100 / self.total_bytes,
                self.done_bytes >> 20,
                self.total_bytes >> 20
            ));
        }
        if let Some(serial) = self.serial {
            s.push_str(&format!(" serial {serial}"));
        }
        if self.is_done() {
            s.push_str(" (booted)");
        }
        if let Some(e) = &self.last_error {
            s.push_str(&format!(" error: {e}"));
        }
        s
    }
}

/// `GET /api/v1/nodes` from inside the lab.
pub fn fetch_nodes(lab: &Lab, server: SocketAddr) -> Result<Vec<NodeRecord>> {
    get_json(lab, server, "/api/v1/nodes")
}

/// `GET /api/v1/nodes/{id}` (a MAC or a hostname) from inside the lab.
pub fn fetch_node(lab: &Lab, server: SocketAddr, id: &str) -> Result<NodeRecord> {
    get_json(lab, server, &format!("/api/v1/nodes/{id}"))
}

/// One line of `GET /api/v1/nodes/{id}/history`: `at` in Unix seconds.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct HistoryEntry {
    pub at: u64,
    pub event: serde_json::Value,
}

impl HistoryEntry {
    pub fn kind(&self) -> &str {
        self.event["kind"].as_str().unwrap_or("")
    }
}

pub fn fetch_history(lab: &Lab, server: SocketAddr, id: &str) -> Result<Vec<HistoryEntry>> {
    get_json(lab, server, &format!("/api/v1/nodes/{id}/history"))
}

fn get_json<T: serde::de::DeserializeOwned>(
    lab: &Lab,
    server: SocketAddr,
    path: &str,
) -> Result<T> {
    let token = admin_token(&lab.state_dir())?;
    let (status, body) = http_get_as(lab.netns(), server, path, Some(&token))?;
    let url = format!("http://{server}{path}");
    if status != 200 {
        return Err(Error::Http {
            url,
            message: format!("status {status}: {}", body.trim()),
        });
    }
    serde_json::from_str(&body).map_err(|e| Error::Http {
        url,
        message: format!("unexpected answer: {e}"),
    })
}

/// Polls the server until every node of `lab` is done, printing each change
/// through `report`. Fails on a failed install, a node that powered off, the
/// timeout, or `stop()` turning true; the error says which node and why.
pub fn follow(
    lab: &mut Lab,
    server: SocketAddr,
    timeout: Duration,
    stop: impl Fn() -> bool,
    mut report: impl FnMut(&str),
) -> Result<Vec<NodeRecord>> {
    let start = Instant::now();
    let macs: Vec<String> = lab.nodes().iter().map(|n| n.mac().to_string()).collect();
    let mut last: HashMap<String, String> = HashMap::new();
    loop {
        let nodes = match fetch_nodes(lab, server) {
            Ok(n) => n,
            Err(e) => {
                report(&format!("server: {e}"));
                Vec::new()
            }
        };
        let by_mac: HashMap<&str, &NodeRecord> =
            nodes.iter().map(|n| (n.mac.as_str(), n)).collect();
        for n in &nodes {
            let line = n.line();
            if last.get(&n.mac) != Some(&line) {
                report(&format!("[{:>5}s] {line}", start.elapsed().as_secs()));
                last.insert(n.mac.clone(), line);
            }
            if n.is_failed() {
                return Err(Error::InstallFailed {
                    node: n.hostname.clone(),
                    detail: n.line(),
                });
            }
        }
        if macs
            .iter()
            .all(|m| by_mac.get(m.as_str()).is_some_and(|n| n.is_done()))
        {
            return Ok(nodes);
        }
        lab.ensure_running("its install finished")?;
        if stop() {
            return Err(Error::Interrupted);
        }
        if start.elapsed() >= timeout {
            return Err(Error::Timeout {
                what: "every node to install and boot".into(),
                after: timeout,
            });
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record as the server's API sends it (`NodeRecord::public`, serialised).
    fn record() -> NodeRecord {
        let mut n = NodeRecord::new(
            "52:54:00:00:00:01",
            "node1",
            "default",
            rollout::inventory::Source::Config,
            NodeState::Installing,
        );
        n.stage = Some("copy".into());
        n.done_bytes = 80 << 20;
        n.total_bytes = 200 << 20;
        n.token = Some("secret".into());
        let json = serde_json::to_string(&vec![n.public()]).unwrap();
        let mut back: Vec<NodeRecord> = serde_json::from_str(&json).unwrap();
        back.remove(0)
    }

    #[test]
    fn server_records_read_back_and_print() {
        let n = record();
        assert_eq!(n.state, NodeState::Installing);
        assert_eq!(n.token, None, "the API never sends the install token");
        assert_eq!(
            n.line(),
            "node1 52:54:00:00:00:01 installing copy 40% (80/200 MiB)"
        );
        assert!(!n.is_done());
    }

    #[test]
    fn done_needs_installed_and_booted() {
        let mut n = record();
        n.state = NodeState::Installed;
        assert!(!n.is_done(), "installed but not yet booted into the new OS");
        n.booted_at = Some(1);
        assert!(n.is_done());
        n.state = NodeState::Failed;
        assert!(n.is_failed() && !n.is_done());
    }
}
