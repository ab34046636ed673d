//! `vm-harness bench --multicast`: what one multicast stream saves. A
//! reference round installs one node by rsync alone (multicast off); the
//! multicast round installs N nodes at once with `[install] multicast` on.
//! For each round it counts what the server put on the lab bridge (the
//! bridge's tx bytes: the server's own traffic, not what the bridge forwards
//! between nodes) minus the boot files every node fetches, and udp-sender's
//! bytes from the server log; both against the image's bytes. Then every
//! node's root filesystem, read from the host, is compared with the
//! reference install's: the same image paths, kinds, modes and owners, and
//! the same contents wherever the reference holds the image's own file.

use std::collections::BTreeMap;
use std::fs;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rollout::config::MulticastConfig;

use crate::bench::BenchOptions;
use crate::config::BRIDGE;
use crate::disk::DiskImage;
use crate::e2e::Artifacts;
use crate::error::{Error, Result};
use crate::lab::{Lab, LabOptions};
use crate::progress::Tracker;

/// One path of a tree: kind (`f`, `d`, `l`, `o`ther), mode, owner, and a
/// digest of the contents (files) or the link target (symlinks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: char,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub digest: u64,
}

pub type Listing = BTreeMap<String, Entry>;

/// Every path under `root`, relative (`etc/hostname`).
pub fn listing(root: &Path) -> Result<Listing> {
    let mut out = Listing::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let rd = fs::read_dir(&dir).map_err(|source| Error::Spawn {
            cmd: format!("reading {}", dir.display()),
            source,
        })?;
        for e in rd.flatten() {
            let p = e.path();
            let Ok(m) = fs::symlink_metadata(&p) else {
                continue;
            };
            let t = m.file_type();
            let mut h = std::collections::hash_map::DefaultHasher::new();
            let kind = if t.is_symlink() {
                fs::read_link(&p).ok().hash(&mut h);
                'l'
            } else if t.is_dir() {
                stack.push(p.clone());
                'd'
            } else if t.is_file() {
                fs::read(&p).ok().hash(&mut h);
                'f'
            } else {
                'o'
            };
            let rel = p.strip_prefix(root).unwrap_or(&p).display().to_string();
            out.insert(
                rel,
                Entry {
                    kind,
                    mode: if kind == 'l' { 0 } else { m.mode() & 0o7777 },
                    uid: m.uid(),
                    gid: m.gid(),
                    digest: if kind == 'd' { 0 } else { h.finish() },
                },
            );
        }
    }
    Ok(out)
}

/// How `got` (a multicast install) differs from `reference` (a unicast
/// one) on the image's paths: a path missing or of another kind, mode or
/// owner; other contents where the reference holds the image's file (files
/// the installer writes per node, such as the hostname, may differ).
pub fn differences(image: &Listing, reference: &Listing, got: &Listing) -> Vec<String> {
    let mut out = Vec::new();
    for (path, img) in image {
        let (Some(r), g) = (reference.get(path), got.get(path)) else {
            continue; // not installed by rsync either (an exclude)
        };
        let Some(g) = g else {
            out.push(format!("{path}: missing"));
            continue;
        };
        if (r.kind, r.mode, r.uid, r.gid) != (g.kind, g.mode, g.uid, g.gid) {
            out.push(format!(
                "{path}: {}{:o} {}:{} where the unicast install has {}{:o} {}:{}",
                g.kind, g.mode, g.uid, g.gid, r.kind, r.mode, r.uid, r.gid
            ));
        } else if r.digest == img.digest && g.digest != r.digest {
            out.push(format!("{path}: other contents than the image's"));
        }
    }
    out
}

/// The bridge's tx bytes in the lab's namespace: what the server sent.
fn server_tx(lab: &Lab) -> Result<u64> {
    let out = lab
        .netns()
        .ip(&["-s", "-j", "link", "show", BRIDGE])
        .map_err(|e| Error::Command {
            cmd: "ip -s -j link show".into(),
            status: "failed".into(),
            stderr: e.to_string(),
        })?;
    parse_tx(&out).ok_or_else(|| Error::Command {
        cmd: "ip -s -j link show".into(),
        status: "ok".into(),
        stderr: format!("no tx bytes in {out}"),
    })
}

pub fn parse_tx(ip_json: &str) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(ip_json).ok()?;
    v.get(0)?.get("stats64")?.get("tx")?.get("bytes")?.as_u64()
}

/// From the server log: udp-sender's bytes per session ("multicast: stream
/// sent … bytes=N"), and how many receivers joined.
pub fn parse_log(log: &str) -> (Vec<u64>, usize) {
    let sent = log
        .lines()
        .filter(|l| l.contains("multicast: stream sent"))
        .filter_map(|l| {
            let v = l
                .split_whitespace()
                .find_map(|w| w.strip_prefix("bytes="))?;
            v.trim_matches('"').parse().ok()
        })
        .collect();
    let joined = log
        .lines()
        .filter(|l| l.contains("multicast: receiver joined"))
        .count();
    (sent, joined)
}

/// One round's numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireRound {
    pub nodes: usize,
    /// Everything the server sent on the bridge during the round.
    pub tx: u64,
    /// Kernel + initramfs, times the nodes (fetched over HTTP by each).
    pub boot: u64,
    /// udp-sender's bytes, from the log.
    pub multicast: u64,
    pub joined: usize,
}

pub struct MulticastReport {
    pub image_bytes: u64,
    pub unicast: WireRound,
    pub multicast: WireRound,
    /// Per multicast node: its differences from the unicast install.
    pub disks: Vec<(String, Vec<String>)>,
}

/// One round's result: its bytes, each node's root, the image's listing and bytes.
struct Installed {
    wire: WireRound,
    disks: Vec<(String, Listing)>,
    image: Listing,
    image_bytes: u64,
}

fn install_round(
    a: &Artifacts,
    o: &BenchOptions,
    nodes: usize,
    multicast: Option<MulticastConfig>,
    stop: &dyn Fn() -> bool,
) -> Result<Installed> {
    let mut lab = Lab::create_with(LabOptions {
        name: "bench".into(),
        nodes,
        firmware: o.firmware,
        keep_dir: o.keep_dir.as_ref().map(|d| {
            d.join(match multicast {
                Some(_) => format!("multicast{nodes}"),
                None => format!("unicast{nodes}"),
            })
        }),
        ..LabOptions::default()
    })?;
    let mut cfg = lab.config();
    if let Some(m) = multicast {
        cfg.install.multicast = m;
    }
    let server = a.serve_with(&mut lab, o.image, cfg)?;
    let before = server_tx(&lab)?;
    lab.start_all()?;
    let mut t = Tracker::new(&lab, server);
    if let Err(e) = t.run(&mut lab, o.timeout, stop, |l| eprintln!("{l}")) {
        eprintln!("{}", lab.diagnostics(30));
        return Err(e);
    }
    let tx = server_tx(&lab)? - before;
    let boot_dir = lab.state_dir().join("boot");
    let boot: u64 = ["vmlinuz", "initramfs.img"]
        .iter()
        .filter_map(|f| fs::metadata(boot_dir.join(f)).ok())
        .map(|m| m.len())
        .sum();
    let log = lab
        .server()
        .map(|s| fs::read_to_string(s.log_path()).unwrap_or_default())
        .unwrap_or_default();
    let (sent, joined) = parse_log(&log);
    let image_root = fs::canonicalize(lab.state_dir().join("images/default/published"))
        .map_err(|source| Error::Spawn {
            cmd: "finding the published image".into(),
            source,
        })?
        .join("root");
    let image = listing(&image_root)?;
    // Apparent size, as the bench's other rounds count the image.
    let image_bytes =
        crate::proc::run(std::process::Command::new("du").arg("-sb").arg(&image_root))
            .ok()
            .and_then(|o| o.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
    let mut disks = Vec::new();
    for node in lab.nodes_mut() {
        node.power_off()?;
    }
    for node in lab.nodes() {
        let mut d = DiskImage::open(&node.disk_path())?;
        let root: PathBuf = d.mount(2)?;
        disks.push((node.name().to_string(), listing(&root)?));
    }
    Ok(Installed {
        wire: WireRound {
            nodes,
            tx,
            boot: boot * nodes as u64,
            multicast: sent.iter().sum(),
            joined,
        },
        disks,
        image,
        image_bytes,
    })
}

/// The reference round, then the multicast round of `nodes` nodes.
pub fn run_multicast_bench(
    a: &Artifacts,
    o: &BenchOptions,
    nodes: usize,
    stop: &dyn Fn() -> bool,
) -> Result<MulticastReport> {
    eprintln!("== bench --multicast: 1 node by rsync alone (the reference)");
    let Installed {
        wire: unicast,
        disks: mut reference,
        image,
        image_bytes,
    } = install_round(a, o, 1, None, stop)?;
    let reference = reference.pop().map(|(_, l)| l).unwrap_or_default();
    eprintln!("== bench --multicast: {nodes} nodes at once, multicast on");
    let cfg = MulticastConfig {
        enabled: true,
        // TCG nodes reach the copy step tens of seconds apart.
        wait_secs: 90,
        max_receivers: nodes as u32,
        ..MulticastConfig::default()
    };
    let Installed {
        wire: multicast,
        disks,
        ..
    } = install_round(a, o, nodes, Some(cfg), stop)?;
    let disks = disks
        .into_iter()
        .map(|(name, got)| (name, differences(&image, &reference, &got)))
        .collect();
    Ok(MulticastReport {
        image_bytes,
        unicast,
        multicast,
        disks,
    })
}

fn mib(b: u64) -> f64 {
    b as f64 / 1048576.0
}

pub fn render(r: &MulticastReport) -> String {
    let mut out = String::new();
    let img = r.image_bytes.max(1) as f64;
    out.push_str(&format!(
        "\nmulticast first install, image {:.1} MiB\n{:<28} {:>12} {:>12} {:>14} {:>10}\n",
        mib(r.image_bytes),
        "round",
        "udp-sender",
        "rest (MiB)",
        "total/image",
        "joined"
    ));
    for (label, w) in [
        (format!("{} node by rsync", r.unicast.nodes), &r.unicast),
        (
            format!("{} nodes, multicast", r.multicast.nodes),
            &r.multicast,
        ),
    ] {
        // The server's bytes other than the boot files: the rsync daemon,
        // udp-sender, and the API (small).
        let copy = w.tx.saturating_sub(w.boot);
        out.push_str(&format!(
            "{:<28} {:>12.1} {:>12.1} {:>13.2}x {:>10}\n",
            label,
            mib(w.multicast),
            mib(copy.saturating_sub(w.multicast)),
            copy as f64 / img,
            w.joined
        ));
    }
    out.push_str(
        "(total: what the server sent on the lab bridge minus each node's kernel and initramfs;\n\
         rest: that minus udp-sender's bytes: rsync's, its file lists and the API)\n",
    );
    for (node, diffs) in &r.disks {
        if diffs.is_empty() {
            out.push_str(&format!("{node}: disk equals the unicast install\n"));
        } else {
            out.push_str(&format!(
                "{node}: {} differences from the unicast install, first: {}\n",
                diffs.len(),
                diffs[..diffs.len().min(5)].join("; ")
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(kind: char, mode: u32, digest: u64) -> Entry {
        Entry {
            kind,
            mode,
            uid: 0,
            gid: 0,
            digest,
        }
    }

    #[test]
    fn differences_on_image_paths_only_and_node_files_may_differ() {
        let image: Listing = [
            ("etc".to_string(), e('d', 0o755, 0)),
            ("etc/hostname".to_string(), e('f', 0o644, 1)),
            ("usr/bin/tool".to_string(), e('f', 0o755, 2)),
            ("usr/lib/lib.so".to_string(), e('f', 0o644, 3)),
            ("var/lib/slurm".to_string(), e('d', 0o755, 0)),
        ]
        .into();
        let mut reference = image.clone();
        reference.insert("etc/hostname".into(), e('f', 0o644, 10)); // the node's own
        reference.remove("var/lib/slurm"); // excluded
        reference.insert("var/log/boot".into(), e('f', 0o644, 11)); // runtime
        let mut got = reference.clone();
        got.insert("etc/hostname".into(), e('f', 0o644, 20));
        got.remove("var/log/boot");
        assert_eq!(differences(&image, &reference, &got), Vec::<String>::new());
        got.insert("usr/bin/tool".into(), e('f', 0o644, 2));
        got.insert("usr/lib/lib.so".into(), e('f', 0o644, 99));
        got.remove("etc");
        let d = differences(&image, &reference, &got);
        assert_eq!(d.len(), 3, "{d:?}");
        assert!(d[0].starts_with("etc: missing"), "{d:?}");
        assert!(d[1].contains("usr/bin/tool: f644"), "{d:?}");
        assert!(d[2].contains("usr/lib/lib.so: other contents"), "{d:?}");
    }

    #[test]
    fn the_servers_log_and_ip_counters() {
        let log = "2026-12-02T17:00:00Z  INFO rollout::multicast: multicast: receiver joined hostname=\"node1\" port=9000\n\
                   2026-12-02T17:00:01Z  INFO rollout::multicast: multicast: receiver joined hostname=\"node2\" port=9000\n\
                   2026-12-02T17:00:40Z  INFO rollout::multicast: multicast: stream sent image=default serial=1 bytes=5242880 receivers=2\n";
        assert_eq!(parse_log(log), (vec![5242880], 2));
        let ip = r#"[{"ifname":"rbr0","stats64":{"rx":{"bytes":5},"tx":{"bytes":123456}}}]"#;
        assert_eq!(parse_tx(ip), Some(123456));
        assert_eq!(parse_tx("[]"), None);
    }

    #[test]
    fn render_shows_both_rounds_as_ratios_and_each_disk() {
        let r = MulticastReport {
            image_bytes: 100 << 20,
            unicast: WireRound {
                nodes: 1,
                tx: 140 << 20,
                boot: 30 << 20,
                multicast: 0,
                joined: 0,
            },
            multicast: WireRound {
                nodes: 3,
                tx: 215 << 20,
                boot: 90 << 20,
                multicast: 101 << 20,
                joined: 3,
            },
            disks: vec![
                ("node1".into(), vec![]),
                ("node2".into(), vec!["etc/x: missing".into()]),
            ],
        };
        let out = render(&r);
        assert!(out.contains("1.10x"), "{out}");
        assert!(out.contains("1.25x"), "{out}");
        assert!(
            out.contains("node1: disk equals the unicast install"),
            "{out}"
        );
        assert!(out.contains("node2: 1 differences"), "{out}");
    }
}
