//! Following nodes from power-on to phone-home and timing each stage. It reads
//! two sources on every poll: the server's record (`GET /api/v1/nodes`: state,
//! installer stage, bytes, booted_at) and the node's serial console (what the
//! server cannot see: firmware reaching iPXE's script, the installer's kernel
//! starting). Times are taken on the harness's clock at the poll that first
//! saw a milestone, so their resolution is the poll interval.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::console::{self, Pattern};
use crate::demo::{fetch_nodes, NodeProgress, NodeRecord, NodeState};
use crate::error::{Error, Result};
use crate::initrd::STARTING;
use crate::lab::Lab;
use crate::qemu::Firmware;

/// Milestones in the order a node passes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Milestone {
    /// iPXE asked for its script: firmware, DHCP and the first stage are done.
    Script,
    /// The installer kernel ran /init: kernel + initramfs were downloaded.
    Installer,
    /// The installer began partitioning (after modules, DHCP, plan, disk choice).
    Partition,
    Copy,
    Configure,
    /// The server marked the install finished.
    Installed,
    /// The installed OS phoned home.
    Booted,
}

/// The stages reported by the benchmark, as (label, from, to).
pub const STAGES: &[(&str, Option<Milestone>, Milestone)] = &[
    ("firmware+DHCP", None, Milestone::Script),
    (
        "kernel+initramfs",
        Some(Milestone::Script),
        Milestone::Installer,
    ),
    (
        "installer setup",
        Some(Milestone::Installer),
        Milestone::Partition,
    ),
    (
        "partition+format",
        Some(Milestone::Partition),
        Milestone::Copy,
    ),
    ("copy", Some(Milestone::Copy), Milestone::Configure),
    (
        "configure+bootloader",
        Some(Milestone::Configure),
        Milestone::Installed,
    ),
    (
        "reboot to phone-home",
        Some(Milestone::Installed),
        Milestone::Booted,
    ),
];

#[derive(Debug, Clone)]
pub struct NodeTimes {
    pub name: String,
    pub mac: String,
    pub firmware: Firmware,
    pub started: Instant,
    pub at: BTreeMap<Milestone, Duration>,
    /// Largest copy byte count the server reported.
    pub bytes: u64,
    /// The server's record at the last poll; `None` until it has one.
    pub last: Option<NodeRecord>,
    console_from: u64,
}

impl NodeTimes {
    /// Duration of stage `(from, to)`, when both ends were seen.
    pub fn stage(&self, from: Option<Milestone>, to: Milestone) -> Option<Duration> {
        let end = *self.at.get(&to)?;
        let start = match from {
            None => Duration::ZERO,
            Some(m) => *self.at.get(&m)?,
        };
        end.checked_sub(start)
    }

    /// Power-on to the end of the install.
    pub fn install_time(&self) -> Option<Duration> {
        self.at.get(&Milestone::Installed).copied()
    }

    /// End of the install to the phone-home from the installed OS.
    pub fn boot_time(&self) -> Option<Duration> {
        self.stage(Some(Milestone::Installed), Milestone::Booted)
    }
}

/// Follows every node of a lab (started just before [`Tracker::new`]).
#[derive(Debug)]
pub struct Tracker {
    pub server: SocketAddr,
    pub nodes: Vec<NodeTimes>,
    started: Instant,
}

fn stage_milestone(stage: &str) -> Option<Milestone> {
    match stage {
        "choose_disk" | "partition" | "format" | "mount" => Some(Milestone::Partition),
        "copy" => Some(Milestone::Copy),
        "configure" | "bootloader" | "finish" => Some(Milestone::Configure),
        _ => None,
    }
}

impl Tracker {
    /// Starts the clocks now; `console_marks` are the console lengths at power-on
    /// (so a node's earlier boots are not read as this one).
    pub fn new(lab: &Lab, server: SocketAddr) -> Tracker {
        let now = Instant::now();
        Tracker {
            server,
            started: now,
            nodes: lab
                .nodes()
                .iter()
                .map(|n| NodeTimes {
                    name: n.name().into(),
                    mac: n.mac().into(),
                    firmware: n.firmware(),
                    started: now,
                    at: BTreeMap::new(),
                    bytes: 0,
                    last: None,
                    console_from: n.console_mark(),
                })
                .collect(),
        }
    }

    /// Restarts node `name`'s clock (it was just powered on again).
    pub fn restart_node(&mut self, lab: &Lab, name: &str) {
        if let (Some(t), Some(n)) = (
            self.nodes.iter_mut().find(|t| t.name == name),
            lab.nodes().iter().find(|n| n.name() == name),
        ) {
            t.started = Instant::now();
            t.at.clear();
            t.bytes = 0;
            t.console_from = n.console_mark();
        }
    }

    /// One look at the server and the consoles. Returns a progress line for
    /// every node whose line changed.
    pub fn poll(&mut self, lab: &Lab) -> Vec<String> {
        let records = fetch_nodes(lab, self.server).unwrap_or_default();
        let script = Pattern::substring("boot.ipxe");
        let installer = Pattern::substring(STARTING);
        let mut lines = Vec::new();
        for t in &mut self.nodes {
            let el = t.started.elapsed();
            if let Some(n) = lab.nodes().iter().find(|n| n.mac() == t.mac) {
                let text = console::read_from(&n.console_log(), t.console_from);
                if script.find_end(&text).is_some() {
                    t.at.entry(Milestone::Script).or_insert(el);
                }
                if installer.find_end(&text).is_some() {
                    t.at.entry(Milestone::Installer).or_insert(el);
                }
            }
            let Some(rec) = records.iter().find(|r| r.mac == t.mac) else {
                continue;
            };
            // A record from before this power-on (e.g. a reinstall) is ignored
            // until the node is seen installing.
            if rec.state == NodeState::Installing {
                if let Some(m) = rec.stage.as_deref().and_then(stage_milestone) {
                    // Fast stages can pass between two polls: later ones imply earlier.
                    for earlier in [Milestone::Partition, Milestone::Copy, Milestone::Configure] {
                        if earlier <= m {
                            t.at.entry(earlier).or_insert(el);
                        }
                    }
                }
                if rec.stage.as_deref() == Some("copy") {
                    t.bytes = t.bytes.max(rec.done_bytes);
                }
            }
            let installing_seen = t.at.contains_key(&Milestone::Partition)
                || t.at.contains_key(&Milestone::Installer);
            if installing_seen && rec.state == NodeState::Installed {
                for m in [Milestone::Partition, Milestone::Copy, Milestone::Configure] {
                    t.at.entry(m).or_insert(el);
                }
                t.at.entry(Milestone::Installed).or_insert(el);
                t.bytes = t.bytes.max(rec.total_bytes);
                if rec
                    .booted_at
                    .is_some_and(|b| rec.installed_at.is_none_or(|i| b >= i))
                {
                    t.at.entry(Milestone::Booted).or_insert(el);
                }
            }
            let line = progress_line(t, rec);
            let changed = match &t.last {
                Some(l) => line != progress_line(t, l),
                None => true,
            };
            if changed {
                lines.push(format!(
                    "[{:>5.0}s] {line}",
                    self.started.elapsed().as_secs_f64()
                ));
            }
            t.last = Some(rec.clone());
        }
        lines
    }

    pub fn all_booted(&self) -> bool {
        self.nodes
            .iter()
            .all(|t| t.at.contains_key(&Milestone::Booted))
    }

    /// Polls until every node is booted from its disk, a node fails or powers
    /// off, `stop()` turns true or `timeout` passes.
    pub fn run(
        &mut self,
        lab: &mut Lab,
        timeout: Duration,
        stop: impl Fn() -> bool,
        mut report: impl FnMut(&str),
    ) -> Result<()> {
        loop {
            for l in self.poll(lab) {
                report(&l);
            }
            if self.all_booted() {
                return Ok(());
            }
            let failed = self.nodes.iter().find_map(|t| {
                let last = t.last.as_ref().filter(|l| l.is_failed())?;
                Some((t, last))
            });
            if let Some((t, last)) = failed {
                return Err(Error::InstallFailed {
                    node: t.name.clone(),
                    detail: last.line(),
                });
            }
            lab.ensure_running("it booted its installed OS")?;
            if stop() {
                return Err(Error::Interrupted);
            }
            if self.started.elapsed() >= timeout {
                return Err(Error::Timeout {
                    what: "every node to install and phone home from its disk".into(),
                    after: timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// `node1 bios  installing copy 40% (80/200 MiB)  12s`-style line, without the clock.
fn progress_line(t: &NodeTimes, rec: &NodeRecord) -> String {
    let mut s = format!("{:<6} {:<4} ", t.name, t.firmware.as_str());
    let phase = if t.at.contains_key(&Milestone::Booted) {
        "booted from disk, phoned home".to_string()
    } else if t.at.contains_key(&Milestone::Installed) {
        "installed, rebooting into it".to_string()
    } else if rec.state == NodeState::Installing {
        let mut p = format!("installing {}", rec.stage.as_deref().unwrap_or("…"));
        if rec.total_bytes > 0 && rec.stage.as_deref() == Some("copy") {
            p.push_str(&format!(
                " {}% ({}/{} MiB)",
                rec.done_bytes * 100 / rec.total_bytes,
                rec.done_bytes >> 20,
                rec.total_bytes >> 20
            ));
        }
        p
    } else if rec.state == NodeState::Failed {
        format!(
            "FAILED at {}: {}",
            rec.stage.as_deref().unwrap_or("?"),
            rec.last_error.as_deref().unwrap_or("")
        )
    } else if t.at.contains_key(&Milestone::Installer) {
        "installer kernel running".into()
    } else if t.at.contains_key(&Milestone::Script) {
        "iPXE: loading kernel + initramfs".into()
    } else {
        "firmware, DHCP".into()
    };
    s.push_str(&phase);
    s
}

/// Whole seconds with one decimal, or `-` for a stage that was not seen.
pub fn secs(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.1}", d.as_secs_f64()))
        .unwrap_or_else(|| "-".into())
}

/// The demo's final table: node, firmware, image serial, install time,
/// boot-from-disk time.
pub fn summary_table(nodes: &[NodeTimes]) -> String {
    let mut out = format!(
        "{:<8} {:<8} {:>6} {:>14} {:>20}\n",
        "node", "firmware", "serial", "install (s)", "boot-from-disk (s)"
    );
    for t in nodes {
        out.push_str(&format!(
            "{:<8} {:<8} {:>6} {:>14} {:>20}\n",
            t.name,
            t.firmware.as_str(),
            t.last
                .as_ref()
                .and_then(|l| l.serial)
                .map(|s| s.to_string())
                .unwrap_or("-".into()),
            secs(t.install_time()),
            secs(t.boot_time()),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn times() -> NodeTimes {
        NodeTimes {
            name: "node1".into(),
            mac: "52:54:00:00:00:01".into(),
            firmware: Firmware::Bios,
            started: Instant::now(),
            at: BTreeMap::new(),
            bytes: 0,
            last: None,
            console_from: 0,
        }
    }

    #[test]
    fn stages_need_both_ends() {
        let mut t = times();
        t.at.insert(Milestone::Script, Duration::from_secs(10));
        t.at.insert(Milestone::Installer, Duration::from_secs(25));
        assert_eq!(
            t.stage(None, Milestone::Script),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            t.stage(Some(Milestone::Script), Milestone::Installer),
            Some(Duration::from_secs(15))
        );
        assert_eq!(t.stage(Some(Milestone::Copy), Milestone::Configure), None);
        assert_eq!(t.install_time(), None);
        t.at.insert(Milestone::Installed, Duration::from_secs(60));
        t.at.insert(Milestone::Booted, Duration::from_secs(80));
        assert_eq!(t.boot_time(), Some(Duration::from_secs(20)));
        let table = summary_table(&[t]);
        assert!(table.contains("node1"), "{table}");
        assert!(table.contains("60.0") && table.contains("20.0"), "{table}");
    }

    #[test]
    fn installer_stages_map_to_milestones() {
        assert_eq!(stage_milestone("format"), Some(Milestone::Partition));
        assert_eq!(stage_milestone("copy"), Some(Milestone::Copy));
        assert_eq!(stage_milestone("bootloader"), Some(Milestone::Configure));
        assert_eq!(stage_milestone("dhcp"), None);
    }
}
