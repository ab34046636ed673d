//! The multicast first install over real udpcast: `rollout::multicast`
//! (sessions, tar through udp-sender) in a server namespace with a bridge,
//! two receivers (`udp-receiver`) in namespaces of their own on veth ports of
//! that bridge; nothing on a real interface. Both receivers' trees equal the
//! source, the server's bytes on the wire are about one tar, not two, a node
//! that asks after the start gets no session, and the SHA-256 the server
//! reports is the stream's.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rollout::config::MulticastConfig;
use rollout::multicast::{Multicast, Request};
use rollout::wire::multicast::MulticastAnswer;
use sha2::Digest;
use testkit::netns::{in_netns, Netns};
use testkit::prereq;

const WAIT_SECS: u64 = 3;
const PORT_BASE: u16 = 9460;

/// A small image: modes, an owner that is not root, a symlink, a hard link,
/// an empty directory, 4 MiB of incompressible data, and a path the image
/// excludes.
fn source_tree(root: &Path) {
    let w = |p: &str, data: &[u8], mode: u32| {
        let p = root.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    w("etc/hostname", b"golden\n", 0o644);
    w("etc/shadow", b"root:*:19000::::::\n", 0o640);
    w("usr/bin/tool", b"#!/bin/sh\necho hi\n", 0o4755);
    let mut big = vec![0u8; 4 << 20];
    let mut x: u64 = 0x9E3779B97F4A7C15;
    for b in big.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    w("usr/lib/big.bin", &big, 0o644);
    w("home/user/notes", b"mine\n", 0o600);
    std::os::unix::fs::chown(root.join("home/user/notes"), Some(1234), Some(1234)).unwrap();
    std::os::unix::fs::symlink("../usr/bin/tool", root.join("etc/tool-link")).unwrap();
    std::fs::hard_link(root.join("etc/hostname"), root.join("etc/hostname.hard")).unwrap();
    std::fs::create_dir_all(root.join("var/empty")).unwrap();
    w("var/lib/slurm/state", b"node-local\n", 0o600);
}

/// Path → (kind, mode, uid, content or link target) of every entry.
fn listing(root: &Path) -> BTreeMap<String, (char, u32, u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let (kind, data) = if m.file_type().is_symlink() {
                (
                    'l',
                    std::fs::read_link(&p).unwrap().into_os_string().into_vec(),
                )
            } else if m.is_dir() {
                stack.push(p.clone());
                ('d', vec![])
            } else {
                ('f', std::fs::read(&p).unwrap())
            };
            let mode = if kind == 'l' { 0 } else { m.mode() & 0o7777 };
            out.insert(rel, (kind, mode, m.uid(), data));
        }
    }
    out
}

use std::os::unix::ffi::OsStringExt;

fn tx_bytes(ns: &Netns, dev: &str) -> u64 {
    let out = ns.ip(&["-s", "-j", "link", "show", dev]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v[0]["stats64"]["tx"]["bytes"].as_u64().unwrap()
}

#[test]
fn two_receivers_get_one_stream_and_identical_trees() {
    if !prereq::require_root("network namespaces")
        || !prereq::require_tools(&[
            ("udp-sender", "udpcast"),
            ("udp-receiver", "udpcast"),
            ("tar", "tar"),
        ])
    {
        return;
    }
    let tag = std::process::id() % 100000;
    let server = Netns::create(&format!("rmc{tag}-s")).unwrap();
    server.add_bridge("mcbr0", "10.46.0.1/24").unwrap();
    let mut receivers = vec![];
    for i in 1..=2 {
        let ns = Netns::create(&format!("rmc{tag}-r{i}")).unwrap();
        server
            .add_bridge_port("mcbr0", &format!("mcp{i}"), ns.name(), "eth0")
            .unwrap();
        ns.ip(&["addr", "add", &format!("10.46.0.1{i}/24"), "dev", "eth0"])
            .unwrap();
        ns.ip(&["link", "set", "eth0", "up"]).unwrap();
        receivers.push(ns);
    }

    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("root");
    source_tree(&src);
    let metrics = Arc::new(rollout::metrics::Metrics::new());
    let cfg = MulticastConfig {
        enabled: true,
        wait_secs: WAIT_SECS,
        max_receivers: 8,
        rate_mbps: 0,
        port_base: PORT_BASE,
    };
    let mc = Arc::new(Multicast::new(cfg, Some("mcbr0".into()), metrics.clone()));
    let ask = |id: &str| {
        let mc = mc.clone();
        let src = src.clone();
        // The sender thread the first request spawns joins the server's namespace with it.
        in_netns(server.name(), move || {
            mc.ask(Request {
                install_id: id,
                hostname: id,
                image: "default",
                serial: 3,
                root: src,
                excludes: vec!["/var/lib/slurm/".into()],
            })
        })
    };
    let tx_before = tx_bytes(&server, "mcbr0");

    let mut children = vec![];
    for (i, ns) in receivers.iter().enumerate() {
        let id = format!("i{}", i + 1);
        let MulticastAnswer::Joined {
            port,
            starts_within_secs,
        } = ask(&id)
        else {
            panic!("{id} did not join");
        };
        assert_eq!(port, PORT_BASE, "one session for the serial");
        let out = work.path().join(format!("r{}.tar", i + 1));
        let child = ns
            .command("udp-receiver")
            .args([
                "--interface",
                "eth0",
                "--portbase",
                &port.to_string(),
                "--nokbd",
            ])
            .args(["--mcast-rdv-address", rollout::wire::multicast::RDV_ADDRESS])
            .args(["--start-timeout", &starts_within_secs.to_string()])
            .args(["--receive-timeout", "20", "--file"])
            .arg(&out)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        children.push((child, out));
    }

    // After the window: a late node is told to use rsync.
    std::thread::sleep(Duration::from_secs(WAIT_SECS + 1));
    match ask("late") {
        MulticastAnswer::NoSession { reason } => {
            assert!(reason.contains("started"), "{reason}")
        }
        other => panic!("a late joiner got {other:?}"),
    }

    let mut trees = vec![];
    for (child, out) in children {
        let o = child.wait_with_output().unwrap();
        assert!(
            o.status.success(),
            "udp-receiver: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let dir = out.with_extension("d");
        std::fs::create_dir(&dir).unwrap();
        let x = std::process::Command::new("tar")
            .args([
                "--extract",
                "--same-permissions",
                "--numeric-owner",
                "--file",
            ])
            .arg(&out)
            .arg("--directory")
            .arg(&dir)
            .output()
            .unwrap();
        assert!(x.status.success(), "{}", String::from_utf8_lossy(&x.stderr));
        trees.push((std::fs::read(&out).unwrap(), dir));
    }

    let deadline = Instant::now() + Duration::from_secs(60);
    let (bytes, sha256) = loop {
        match ask("i1") {
            MulticastAnswer::Sent { bytes, sha256 } => break (bytes, sha256),
            MulticastAnswer::Streaming { .. } if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(300))
            }
            other => panic!("the session ended as {other:?}"),
        }
    };
    let tx = tx_bytes(&server, "mcbr0") - tx_before;

    let mut expected = listing(&src);
    expected.retain(|p, _| !p.starts_with("var/lib/slurm"));
    assert!(
        expected.contains_key("var/lib"),
        "the excluded directory's parent stays"
    );
    for (tar, dir) in &trees {
        assert_eq!(
            tar.len() as u64,
            bytes,
            "each receiver got the whole stream"
        );
        assert_eq!(
            rollout::wire::multicast::hex(&sha2::Sha256::digest(tar)),
            sha256,
            "the server's hash is the stream's"
        );
        let got = listing(dir);
        let names = |m: &BTreeMap<String, _>| m.keys().cloned().collect::<Vec<_>>();
        assert_eq!(names(&got), names(&expected), "file lists");
        assert_eq!(got, expected, "kinds, modes, owners, contents");
        let ino = |p: &str| std::fs::metadata(dir.join(p)).unwrap().ino();
        assert_eq!(
            ino("etc/hostname"),
            ino("etc/hostname.hard"),
            "hard link kept"
        );
    }
    // One stream for two receivers: the bridge carried about one tar's bytes
    // (packet headers, control traffic and retransmissions on top), not two.
    assert!(
        tx < bytes * 3 / 2 && tx >= bytes,
        "the server sent {tx} bytes on the bridge for a {bytes}-byte tar"
    );
    let text = metrics.render();
    assert!(
        text.contains(&format!("rollout_multicast_sent_bytes_total {bytes}")),
        "{text}"
    );
    assert!(
        text.contains("rollout_multicast_sessions_total{outcome=\"sent\"} 1"),
        "{text}"
    );
    eprintln!(
        "tar {bytes} bytes, bridge tx {tx} bytes ({:.2}×) for 2 receivers",
        tx as f64 / bytes as f64
    );
}
