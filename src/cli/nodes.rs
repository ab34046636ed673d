//! `rollout node …`, `rollout discovered …` and `rollout watch`: readable tables,
//! or `--json` for scripts, all from the running server's API.

use crate::api_client::Client;
use crate::inventory::hwquery::{self, Filter};
use crate::inventory::{NodeRecord, NodeState};
use serde_json::json;

#[derive(clap::Subcommand)]
pub enum NodeCmd {
    /// Every node with its state and progress.
    List {
        #[arg(long)]
        json: bool,
        /// Only nodes for which EXPR holds: KEY OP VALUE conditions joined by
        /// commas, OP one of = != < <= > >= ~ (contains), e.g.
        /// 'memory_mib>=4096,disk_gib>=100,vendor=QEMU'. Keys: memory_mib,
        /// memory_gib, cpus, disk_gib (largest disk), disks, nics, nic_speed,
        /// cpu, vendor, product, serial, firmware, disk_model, nic_driver,
        /// hostname, state, image, mac. Repeat to add conditions.
        #[arg(long = "where", value_name = "EXPR")]
        filter: Vec<String>,
    },
    /// One node (by hostname or MAC) with its history.
    Show {
        node: String,
        #[arg(long)]
        json: bool,
    },
    /// Declare a node (or change one declared through the API).
    Add {
        #[arg(long)]
        mac: String,
        #[arg(long)]
        hostname: String,
        #[arg(long)]
        ip: Option<String>,
        #[arg(long)]
        image: Option<String>,
        #[arg(long)]
        disk: Option<String>,
        #[arg(long)]
        root_mib: Option<u64>,
        #[arg(long)]
        swap_mib: Option<u64>,
    },
    /// Forget a node declared through the API.
    Remove { node: String },
    /// Install the node again on its next boot; --now also sets its next boot
    /// to PXE and power-cycles it (or powers it on) through its BMC.
    Reinstall {
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        nodes: Vec<String>,
        /// Every declared or approved node.
        #[arg(long)]
        all: bool,
        #[arg(long)]
        now: bool,
    },
    /// A node's power through its BMC: status, on, off or cycle.
    Power(super::power::PowerArgs),
}

#[derive(clap::Subcommand)]
pub enum DiscoveredCmd {
    /// Machines that PXE-booted undeclared, with their state (the man page's summary).
    List {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Install this machine on its next boot.
    Approve { mac: String },
    /// Leave this machine alone: it boots its own disk.
    Ignore { mac: String },
}

/// `[#######.............]  35%`
pub fn progress_bar(n: &NodeRecord, width: usize) -> String {
    let pct = crate::http::percent(n) as usize;
    let filled = pct * width / 100;
    format!(
        "[{}{}] {pct:>3}%",
        "#".repeat(filled),
        ".".repeat(width - filled)
    )
}

fn ago(t: Option<u64>, now: u64) -> String {
    match t {
        None => "-".into(),
        Some(t) => {
            let s = now.saturating_sub(t);
            if s < 120 {
                format!("{s}s ago")
            } else if s < 7200 {
                format!("{}m ago", s / 60)
            } else {
                format!("{}h ago", s / 3600)
            }
        }
    }
}

/// The node table, aligned for a terminal.
pub fn render_table(nodes: &[NodeRecord], now: u64) -> String {
    let mut rows = vec![vec![
        "HOSTNAME".to_string(),
        "MAC".into(),
        "ADDRESS".into(),
        "IMAGE".into(),
        "STATE".into(),
        "STAGE".into(),
        "PROGRESS".into(),
        "ELAPSED".into(),
        "ETA".into(),
        "LAST ERROR".into(),
    ]];
    for n in nodes {
        let elapsed = match (n.state, n.install_started) {
            (NodeState::Installing, Some(t)) => format!("{}s", now.saturating_sub(t)),
            (NodeState::Installed, Some(t)) => {
                format!("{}s", n.installed_at.unwrap_or(t).saturating_sub(t))
            }
            _ => "-".into(),
        };
        rows.push(vec![
            n.hostname.clone(),
            n.mac.clone(),
            n.ip.clone().unwrap_or_else(|| "-".into()),
            match n.serial {
                Some(s) => format!("{}#{s}", n.image),
                None => n.image.clone(),
            },
            n.state.as_str().into(),
            n.stage_text(),
            if n.state == NodeState::Installing || n.state == NodeState::Installed {
                progress_bar(n, 20)
            } else {
                "-".into()
            },
            elapsed,
            eta_cell(n),
            n.trouble(),
        ]);
    }
    align(rows)
}

/// The ETA column: time left in a running copy, `-` otherwise.
pub fn eta_cell(n: &NodeRecord) -> String {
    match (n.state, n.eta_secs) {
        (NodeState::Installing, Some(s)) => crate::inventory::progress::human_duration(s),
        _ => "-".into(),
    }
}

/// Rows as columns padded to their widest cell (two spaces apart).
pub fn align(rows: Vec<Vec<String>>) -> String {
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub(super) fn enc(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == ':' {
                c.to_string()
            } else {
                format!("%{:02X}", c as u32)
            }
        })
        .collect()
}

pub fn run_node(cmd: NodeCmd, c: &Client) -> anyhow::Result<()> {
    let now = crate::clock::now_unix();
    match cmd {
        NodeCmd::List { json, filter } => {
            // A wrong expression is refused before the server is asked.
            let filter = filter
                .iter()
                .try_fold(Filter::default(), |f, e| Filter::parse(e).map(|g| f.and(g)))?;
            let mut nodes: Vec<NodeRecord> = c.get("/api/v1/nodes")?;
            nodes.retain(|n| filter.matches(n));
            if json {
                return print_json(&nodes);
            }
            print!("{}", render_table(&nodes, now));
        }
        NodeCmd::Show { node, json } => {
            let n: NodeRecord = c.get(&format!("/api/v1/nodes/{}", enc(&node)))?;
            let history: Vec<serde_json::Value> =
                c.get(&format!("/api/v1/nodes/{}/history", enc(&node)))?;
            if json {
                return print_json(&json!({ "node": n, "history": history }));
            }
            print!("{}", render_table(std::slice::from_ref(&n), now));
            println!(
                "\ninstalls: {}   last seen: {}   booted: {}",
                n.installs,
                ago(n.last_seen, now),
                ago(n.booted_at, now)
            );
            println!(
                "\nSSH host keys (reported by its installer; `rollout exec` trusts only these):"
            );
            if n.host_key_fingerprints.is_empty() {
                println!("  none recorded: `rollout exec` and `rollout sync` will not contact it");
            }
            for f in &n.host_key_fingerprints {
                println!("  {f}");
            }
            match &n.hardware {
                None => println!(
                    "\nhardware: no report yet (the installer sends one with its plan request)"
                ),
                Some(hw) => {
                    println!(
                        "\nhardware (reported {}):",
                        n.hardware_at.map(crate::clock::rfc3339).unwrap_or_default()
                    );
                    for (k, v) in hwquery::lines(hw) {
                        println!("  {k:<12} {v}");
                    }
                }
            }
            if !n.console_tail.is_empty() {
                println!("\nlast console lines:");
                for l in &n.console_tail {
                    println!("  {l}");
                }
            }
            println!("\nhistory:");
            for h in history {
                let at = h["at"].as_u64().unwrap_or(0);
                println!("  {}  {}", crate::clock::rfc3339(at), h["event"]);
            }
        }
        NodeCmd::Add {
            mac,
            hostname,
            ip,
            image,
            disk,
            root_mib,
            swap_mib,
        } => {
            let body = json!({"mac": mac, "hostname": hostname, "ip": ip, "image": image, "disk": disk, "root_mib": root_mib, "swap_mib": swap_mib});
            let n: NodeRecord = c.post("/api/v1/nodes", Some(body))?;
            println!("{} ({}) declared: {}", n.hostname, n.mac, n.state.as_str());
        }
        NodeCmd::Remove { node } => {
            c.delete(&format!("/api/v1/nodes/{}", enc(&node)))?;
            println!("{node} removed");
        }
        NodeCmd::Reinstall { nodes, all, now } => {
            let nodes = if all {
                // Declared or approved nodes: machines nobody approved stay
                // out (`rollout discovered approve` is for them).
                let list: Vec<NodeRecord> = c.get("/api/v1/nodes")?;
                list.into_iter()
                    .filter(|n| !matches!(n.state, NodeState::Discovered | NodeState::Ignored))
                    .map(|n| n.hostname)
                    .collect()
            } else {
                nodes
            };
            if now {
                return super::power::reinstall_now(&nodes, c);
            }
            for node in nodes {
                let n: NodeRecord =
                    c.post(&format!("/api/v1/nodes/{}/reinstall", enc(&node)), None)?;
                println!("{} ({}) will reinstall on its next boot", n.hostname, n.mac);
            }
        }
        NodeCmd::Power(args) => super::power::run(args, c)?,
    }
    Ok(())
}

pub fn run_discovered(cmd: DiscoveredCmd, c: &Client) -> anyhow::Result<()> {
    match cmd {
        DiscoveredCmd::List { json } => {
            let nodes: Vec<NodeRecord> = c.get("/api/v1/discovered")?;
            if json {
                return print_json(&nodes);
            }
            print!("{}", render_table(&nodes, crate::clock::now_unix()));
        }
        DiscoveredCmd::Approve { mac } => {
            let n: NodeRecord =
                c.post(&format!("/api/v1/discovered/{}/approve", enc(&mac)), None)?;
            println!(
                "{} ({}) approved: installs on its next boot",
                n.hostname, n.mac
            );
        }
        DiscoveredCmd::Ignore { mac } => {
            let n: NodeRecord =
                c.post(&format!("/api/v1/discovered/{}/ignore", enc(&mac)), None)?;
            println!("{} ({}) ignored", n.hostname, n.mac);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::Source;

    #[test]
    fn table_shows_state_stage_and_progress() {
        let mut a = NodeRecord::new(
            "52:54:00:00:00:01",
            "node1",
            "default",
            Source::Config,
            NodeState::Installing,
        );
        a.stage = Some("copy".into());
        a.done_bytes = 50;
        a.total_bytes = 200;
        a.install_started = Some(1000);
        a.serial = Some(3);
        let mut b = NodeRecord::new(
            "52:54:00:00:00:02",
            "node2",
            "default",
            Source::Discovered,
            NodeState::Failed,
        );
        b.last_error = Some("disk too small".into());
        let mut c = NodeRecord::new(
            "52:54:00:00:00:03",
            "node3",
            "default",
            Source::Config,
            NodeState::Pending,
        );
        c.stuck_before_network = Some(
            "installer booted 3× since 10:02 UTC, never reached the server: check its NIC driver"
                .into(),
        );
        let t = render_table(&[a, b, c], 1030);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("HOSTNAME"));
        assert!(
            lines[1].contains("default#3")
                && lines[1].contains("copy")
                && lines[1].contains("[#####...............]  25%")
                && lines[1].contains("30s"),
            "{t}"
        );
        assert!(
            lines[2].contains("failed") && lines[2].ends_with("disk too small"),
            "{t}"
        );
        assert!(
            lines[3].contains("pending")
                && lines[3].ends_with("installer booted 3× since 10:02 UTC, never reached the server: check its NIC driver"),
            "{t}"
        );
        // Columns line up: the state column starts at the same place in every row.
        let col = lines[0].find("STATE").unwrap();
        assert_eq!(&lines[1][col..col + 10], "installing");
        assert_eq!(&lines[2][col..col + 6], "failed");
    }
}
