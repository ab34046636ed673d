//! The lab as a tool for other projects' CI: `vm-harness up` brings a lab up
//! in the background and returns once every node has installed and phoned
//! home, printing each node's name, address and SSH command line (`--json`
//! for scripts); `ssh NODE -- CMD`, `status` and `down` act on it later from
//! other processes.
//!
//! The lab lives in a keeper process (`vm-harness keep`, started detached by
//! `up`): it owns the namespace, the server and the VMs, and writes what the
//! other commands need into `/run/vm-harness/NAME/lab.json`. `down` sends it
//! SIGTERM; its destructors tear the lab down as a demo's do.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::SERVER_ADDR;
use crate::error::{IoContext, Result};
use crate::lab::{run_dir, Lab};

/// Where the keeper is in bringing the lab up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Starting,
    Ready,
    Failed,
}

/// One node as a CI script uses it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabNode {
    pub name: String,
    pub mac: String,
    pub firmware: String,
    pub address: String,
    /// A shell command line that logs into the node as root (run it as root on
    /// this machine; the node is inside the lab's namespace).
    pub ssh: String,
}

/// `lab.json`: what `up` prints and `ssh`/`status`/`down` read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabState {
    pub name: String,
    pub phase: Phase,
    pub netns: String,
    pub dir: PathBuf,
    pub server: SocketAddr,
    pub keeper_pid: u32,
    pub nodes: Vec<LabNode>,
    pub error: Option<String>,
}

impl LabState {
    pub fn path(name: &str) -> PathBuf {
        run_dir(name).join("lab.json")
    }

    /// The keeper's log (outside the lab dir, which the lab recreates).
    pub fn log_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("vm-harness-{name}.log"))
    }

    pub fn starting(lab: &Lab, server: SocketAddr) -> LabState {
        LabState {
            name: lab.name().into(),
            phase: Phase::Starting,
            netns: lab.netns().name().into(),
            dir: lab.dir().to_path_buf(),
            server,
            keeper_pid: std::process::id(),
            nodes: Vec::new(),
            error: None,
        }
    }

    pub fn read(name: &str) -> Option<LabState> {
        let text = fs::read_to_string(Self::path(name)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Written whole and renamed, so a reader never sees half a file.
    pub fn write(&self) -> Result<()> {
        let path = Self::path(&self.name);
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).expect("plain data");
        fs::write(&tmp, text).ctx("writing the lab state", &tmp)?;
        fs::rename(&tmp, &path).ctx("publishing the lab state", &path)
    }

    pub fn node(&self, name: &str) -> Option<&LabNode> {
        self.nodes
            .iter()
            .find(|n| n.name == name || n.mac == name || n.address == name)
    }

    /// Whether the keeper still runs.
    pub fn keeper_alive(&self) -> bool {
        Path::new(&format!("/proc/{}", self.keeper_pid)).exists()
    }

    /// The human form of `up`'s answer.
    pub fn table(&self) -> String {
        let mut s = format!(
            "lab {} ({}): rollout serve at {} in namespace {}\n",
            self.name,
            match self.phase {
                Phase::Starting => "starting",
                Phase::Ready => "ready",
                Phase::Failed => "failed",
            },
            self.server,
            self.netns
        );
        for n in &self.nodes {
            s.push_str(&format!(
                "  {:<8} {:<5} {:<17} {:<12} {}\n",
                n.name, n.firmware, n.mac, n.address, n.ssh
            ));
        }
        if let Some(e) = &self.error {
            s.push_str(&format!("error: {e}\n"));
        }
        s
    }
}

/// The argv that logs into `address` as root from the host: the server's own
/// key and known_hosts (filled from what each installer reported), run inside
/// the lab namespace. `remote` is the command, or empty for a login shell.
pub fn ssh_argv(
    netns: &str,
    state_dir: &Path,
    hostname: &str,
    address: &str,
    remote: &str,
) -> Vec<String> {
    let settings = rollout::fleet::ssh::SshSettings::for_state_dir(state_dir);
    let mut argv: Vec<String> = ["ip", "netns", "exec", netns, "ssh"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut args = rollout::fleet::ssh::ssh_args(&settings, hostname, address, remote);
    if remote.is_empty() {
        // A login wants a terminal: no `-n`, no `-- REMOTE`.
        while args.last().is_some_and(|a| a.is_empty() || a == "--") {
            args.pop();
        }
        args.retain(|a| a != "-n");
    }
    argv.extend(args);
    argv
}

/// [`ssh_argv`] as one shell line (for people and `sh -c`).
pub fn ssh_line(netns: &str, state_dir: &Path, hostname: &str, address: &str) -> String {
    ssh_argv(netns, state_dir, hostname, address, "")
        .iter()
        .map(|a| rollout::fleet::ssh::shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The node list of a lab whose nodes all phoned home.
pub fn lab_nodes(lab: &Lab, records: &[crate::demo::NodeRecord]) -> Vec<LabNode> {
    lab.nodes()
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let rec = records.iter().find(|r| r.mac == n.mac());
            let address = rec
                .and_then(|r| r.ip.clone())
                .or_else(|| crate::config::node_ip(i + 1).map(|a| a.to_string()))
                .unwrap_or_default();
            LabNode {
                name: n.name().into(),
                mac: n.mac().into(),
                firmware: n.firmware().to_string(),
                ssh: ssh_line(lab.netns().name(), &lab.state_dir(), n.name(), &address),
                address,
            }
        })
        .collect()
}

/// The server's address in every lab.
pub fn server_addr(http_port: u16) -> SocketAddr {
    SocketAddr::from((SERVER_ADDR, http_port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> LabState {
        LabState {
            name: "ci".into(),
            phase: Phase::Ready,
            netns: "rollout-lab-ci".into(),
            dir: "/tmp/vm-harness-ci".into(),
            server: server_addr(80),
            keeper_pid: 1,
            nodes: vec![LabNode {
                name: "node1".into(),
                mac: "52:54:00:00:00:01".into(),
                firmware: "bios".into(),
                address: "10.44.0.11".into(),
                ssh: "ip netns exec rollout-lab-ci ssh …".into(),
            }],
            error: None,
        }
    }

    #[test]
    fn state_round_trips_and_finds_nodes_by_name_mac_or_address() {
        let s = state();
        let back: LabState = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        assert!(s.node("node1").is_some());
        assert!(s.node("52:54:00:00:00:01").is_some());
        assert!(s.node("10.44.0.11").is_some());
        assert!(s.node("node2").is_none());
        assert!(s
            .table()
            .contains("node1    bios  52:54:00:00:00:01 10.44.0.11"));
    }

    #[test]
    fn ssh_runs_in_the_lab_namespace_with_the_servers_key_and_known_hosts() {
        let a = ssh_argv(
            "rollout-lab-ci",
            Path::new("/lab/state"),
            "node1",
            "10.44.0.11",
            "uname -a",
        );
        assert_eq!(&a[..5], ["ip", "netns", "exec", "rollout-lab-ci", "ssh"]);
        let line = a.join(" ");
        assert!(line.contains("-i /lab/state/ssh/id_ed25519"), "{line}");
        assert!(
            line.contains("UserKnownHostsFile=/lab/state/ssh/known_hosts"),
            "{line}"
        );
        assert!(line.ends_with("root@10.44.0.11 -- uname -a"), "{line}");
        let login = ssh_line(
            "rollout-lab-ci",
            Path::new("/lab/state"),
            "node1",
            "10.44.0.11",
        );
        assert!(login.ends_with("root@10.44.0.11"), "{login}");
    }
}
