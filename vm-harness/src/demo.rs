//! Following installs through the server's record of each node
//! (`GET /api/v1/nodes`) until every lab node is installed and has booted
//! its new OS, or one fails.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::lab::Lab;
use crate::server::http_get;

/// The fields of the server's node record the demo reads. Unknown fields are
/// ignored and missing ones default, so server-side additions don't break it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(default)]
pub struct NodeStatus {
    pub mac: String,
    pub hostname: String,
    pub state: String,
    pub stage: Option<String>,
    pub done_bytes: u64,
    pub total_bytes: u64,
    pub last_error: Option<String>,
    pub serial: Option<u64>,
    pub firmware: Option<String>,
    /// Set when the installed OS phoned home.
    pub booted_at: Option<u64>,
    pub ip: Option<String>,
    pub installs: u64,
    pub install_started: Option<u64>,
    pub installed_at: Option<u64>,
    pub boot_id: Option<String>,
    pub console_tail: Vec<String>,
}

impl NodeStatus {
    /// Installed and running the installed OS (it phoned home).
    pub fn is_done(&self) -> bool {
        self.state == "installed" && self.booted_at.is_some()
    }

    pub fn is_failed(&self) -> bool {
        self.state == "failed"
    }

    /// One human line, e.g. `node1 52:54:00:00:00:01 installing copy 40% (80/200 MiB)`.
    pub fn line(&self) -> String {
        let mut s = format!("{} {} {}", self.hostname, self.mac, self.state);
        if let Some(stage) = &self.stage {
            s.push(' ');
            s.push_str(stage);
        }
        if self.total_bytes > 0 && self.state == "installing" {
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
pub fn fetch_nodes(lab: &Lab, server: SocketAddr) -> Result<Vec<NodeStatus>> {
    get_json(lab, server, "/api/v1/nodes")
}

/// `GET /api/v1/nodes/{id}` (a MAC or a hostname) from inside the lab.
pub fn fetch_node(lab: &Lab, server: SocketAddr, id: &str) -> Result<NodeStatus> {
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
    let (status, body) = http_get(lab.netns(), server, path)?;
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
) -> Result<Vec<NodeStatus>> {
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
        let by_mac: HashMap<&str, &NodeStatus> =
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
        for node in lab.nodes_mut() {
            if !node.is_running() {
                return Err(Error::Exited {
                    what: format!("node {}", node.name()),
                    status: "powered off".into(),
                    waiting_for: "its install finished".into(),
                    log: node.console_log(),
                });
            }
        }
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

    #[test]
    fn server_records_parse_leniently() {
        let body = r#"[{"mac":"52:54:00:00:00:01","hostname":"node1","ip":"10.44.0.11",
            "image":"default","source":"config","state":"installing","stage":"copy",
            "done_bytes":83886080,"total_bytes":209715200,"console_tail":[],"installs":1,
            "booted_at":null,"updated":1}]"#;
        let nodes: Vec<NodeStatus> = serde_json::from_str(body).unwrap();
        assert_eq!(nodes[0].state, "installing");
        assert_eq!(
            nodes[0].line(),
            "node1 52:54:00:00:00:01 installing copy 40% (80/200 MiB)"
        );
        assert!(!nodes[0].is_done());
    }

    #[test]
    fn done_needs_installed_and_booted() {
        let mut n = NodeStatus {
            state: "installed".into(),
            ..NodeStatus::default()
        };
        assert!(!n.is_done(), "installed but not yet booted into the new OS");
        n.booted_at = Some(1);
        assert!(n.is_done());
        n.state = "failed".into();
        assert!(n.is_failed() && !n.is_done());
    }
}
