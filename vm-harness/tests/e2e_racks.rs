//! Two racks, one PostgreSQL (README "Several racks"): rack 1 is the lab's
//! bridge with the primary server, rack 2 a subnet behind a router whose own
//! `rollout serve` answers DHCP, TFTP, HTTP and rsync for it, mirroring the
//! primary's images. Each rack's node installs the tiny image from its own
//! rack's server, boots from disk and phones home; the primary's API shows
//! rack 2's install as it happens; PostgreSQL stops for 10 s under that
//! install's copy (it completes, or a step that needed the database fails
//! cleanly and the node installs again: the record and history must end true
//! either way);
//! a reinstall asked of the primary is relayed to rack 2's server and done.
//!
//! Needs root, QEMU, PostgreSQL 15 and the tools of scripts/setup.sh (under CI
//! and scripts/test.sh a missing one fails the test).

mod e2e_support;

use std::cell::RefCell;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use e2e_support::{check_disk, fixture, installed_address, E2eLab};
use testkit::postgres::TempPostgres;
use vm_harness::config::{RolloutConfig, StoreConfig, SERVER_ADDR};
use vm_harness::demo::{fetch_history, NodeProgress, NodeRecord, NodeState};
use vm_harness::e2e::ImageKind;
use vm_harness::hosts::SUBNET_BRIDGE;
use vm_harness::Firmware;

const GIB: u64 = 1 << 30;
const INSTALL: Duration = Duration::from_secs(420);

/// The router's leg on rack 1: where rack 2's server reaches the primary from.
const ROUTER_UPLINK: Ipv4Addr = Ipv4Addr::new(10, 44, 0, 254);
/// Rack 2's server: the router itself, on its rack-2 bridge.
const RACK2_SERVER: Ipv4Addr = Ipv4Addr::new(10, 45, 0, 1);
const RACK2_NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 45, 0, 12);
const RACK1_NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 44, 0, 11);
const MIRROR_PASSWORD: &str = "e2e-racks-mirror-0123456789";
/// How long PostgreSQL stays away in the middle of rack 2's install.
const DB_OUTAGE: Duration = Duration::from_secs(10);

/// `[store]` and `[images]` of both racks' servers: one database (its unix
/// socket is a file, reachable from every namespace), one mirror password.
fn share(cfg: &mut RolloutConfig, db_url: &str, password_file: &Path) {
    cfg.store = Some(StoreConfig {
        url: db_url.into(),
        password_file: None,
    });
    cfg.mirroring.mirror_password_file = Some(password_file.into());
}

fn write_password(path: &Path) {
    std::fs::write(path, format!("{MIRROR_PASSWORD}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Waits until rack 2's server has copied and published serial 1 of the image
/// and its rsync daemon exports it: before that its node would find nothing
/// to install.
fn wait_mirrored(state: &Path, log: &Path) {
    let start = Instant::now();
    let rsyncd = state.join("rsyncd.conf");
    while !(state.join("images/default/published").exists()
        && std::fs::read_to_string(&rsyncd).is_ok_and(|c| c.contains("[default-1]")))
    {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "rack 2's server did not mirror serial 1 within 120 s; its log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "rack 2 mirrored serial 1 after {} s",
        start.elapsed().as_secs()
    );
}

/// Lines of a server's `log` where its rsync daemon let `client` into a module.
fn rsync_sessions_of(log: &str, client: Ipv4Addr) -> Vec<&str> {
    let from = format!("({client})");
    log.lines()
        .filter(|l| l.contains("allowed access on module") && l.contains(&from))
        .collect()
}

/// Asserts that the installer of lab node `i` says it copied from `server`'s rsync daemon.
fn assert_copied_from(t: &E2eLab, i: usize, server: Ipv4Addr) {
    let node = &t.lab.nodes()[i];
    let console = std::fs::read_to_string(node.console_log()).unwrap_or_default();
    let from = format!(" from rsync://{server}:873/default-1/");
    assert!(
        console
            .lines()
            .any(|l| l.contains("rollout: copy: ") && l.contains(&from)),
        "{}'s installer did not copy from {server}",
        node.name()
    );
}

#[test]
fn two_racks_on_one_database_install_each_from_its_own_server() {
    let Some((_serial, a)) = fixture() else {
        return;
    };
    if !TempPostgres::available() {
        return;
    }
    let pg = TempPostgres::start();
    let db_url = pg.url();
    let mut t = E2eLab::build(a, "e2e-racks", ImageKind::Tiny, 8 * GIB, |lab| {
        lab.add_node(Firmware::Bios)?;
        lab.add_router("rack2", ROUTER_UPLINK, RACK2_SERVER)?;
        lab.add_node_behind("rack2", Firmware::Bios)?;
        let password = lab.dir().join("mirror.password");
        write_password(&password);
        // The primary declares rack 1's node only: rack 2's is its own server's.
        let mut primary = lab.config();
        primary.nodes.retain(|n| n.hostname == "node1");
        share(&mut primary, &db_url, &password);
        primary.mirroring.mirror_hosts = vec![format!("{ROUTER_UPLINK}/32")];
        Ok(primary)
    });

    let rack2_state = t.lab.dir().join("rack2-state");
    let mut rack2 = t
        .lab
        .config()
        .on_subnet(&rack2_state, SUBNET_BRIDGE, RACK2_SERVER);
    rack2.nodes.retain(|n| n.hostname == "node2");
    rack2.nodes[0].ip = Some(RACK2_NODE_IP);
    share(&mut rack2, &db_url, &t.lab.dir().join("mirror.password"));
    rack2.mirroring.mirror_from = Some(format!("rsync://{SERVER_ADDR}:873/"));
    rack2.mirroring.mirror_interval = 5;
    a.serve_on_host(&mut t.lab, "rack2", rack2)
        .expect("starting rack 2's server");
    let rack2_log = t.lab.dir().join("rack2-server.log");
    wait_mirrored(&rack2_state, &rack2_log);

    // Rack 2's node first, alone: the outage below falls on its install only,
    // so what it does to an install is seen on one node.
    t.lab.node_mut("node2").unwrap().start().unwrap();

    // Rack 2's install, watched through the primary's API: the record is the
    // shared one, written by rack 2's server.
    let seen: RefCell<Vec<NodeState>> = RefCell::new(Vec::new());
    let note = |r: &NodeRecord| {
        let mut s = seen.borrow_mut();
        if s.last() != Some(&r.state) {
            s.push(r.state);
        }
    };
    // Stopped in the copy (or, if the poll missed it on a fast run, a step
    // after it): the installer's reports then meet a server without its database.
    let copying = t.wait_record("node2", "its copy", INSTALL, |r| {
        note(r);
        r.state == NodeState::Installing
            && matches!(
                r.stage.as_deref(),
                Some("copy" | "configure" | "bootloader")
            )
    });
    eprintln!(
        "[{:>4}s] stopping PostgreSQL: {}",
        t.started.elapsed().as_secs(),
        copying.line()
    );
    pg.stop();
    std::thread::sleep(DB_OUTAGE);
    pg.resume();
    eprintln!("[{:>4}s] PostgreSQL is back", t.started.elapsed().as_secs());
    t.lab.node_mut("node1").unwrap().start().unwrap();
    let first = t.wait_record("node2", "the end of its install", INSTALL, |r| {
        note(r);
        r.is_done() || r.is_failed()
    });
    // Any of these is allowed across the outage as long as the record ends
    // true: the install completed (the installer tries its Installed report
    // again until the database is back); or a step that needed the server's
    // database failed and the node, rebooted, was installed again (seen: rack
    // 2's rsync daemon could not learn the install's credential while the
    // records could not be read, so the copy was refused); or it failed. The
    // reinstall below must succeed in every case.
    let lost = if first.is_failed() {
        1
    } else {
        assert!(
            first.installs <= 2,
            "the outage cost more than one install: {}",
            first.line()
        );
        first.installs as usize - 1
    };
    let outcome = match (first.is_failed(), lost) {
        (true, _) => "FAILED",
        (false, 0) => "completed",
        _ => "did not end installed; the server installed it again by itself",
    };
    eprintln!(
        "node2's install across the outage: {outcome}: {}",
        first.line()
    );
    if lost > 0 {
        // What the installer said about it, for whoever reads the log.
        let console = std::fs::read_to_string(t.lab.nodes()[1].console_log()).unwrap_or_default();
        let said = console
            .lines()
            .filter(|l| l.contains("rollout: ") && !l.contains("progress report not delivered"))
            .filter(|l| {
                let l = l.to_lowercase();
                ["finish", "fail", "error", "did not"]
                    .iter()
                    .any(|w| l.contains(w))
            });
        for l in said.take(12) {
            eprintln!("  node2: {l}");
        }
    }
    assert_copied_from(&t, 1, RACK2_SERVER);
    let node1 = t.wait_booted("node1", INSTALL);

    // A reinstall asked of the primary: rack 2's server owns node2's power
    // (its [[node]] has the BMC), so the request is relayed to it, and node2
    // installs again from its own rack.
    t.cli(a, &["node", "reinstall", "--now", "node2"]);
    let node2 = t.wait_record("node2", "its reinstall and phone-home", INSTALL, |r| {
        note(r);
        // booted_at is the last phone-home's until the new OS phones home.
        let booted_since = r.booted_at.zip(r.installed_at).is_some_and(|(b, i)| b >= i);
        r.is_done() && r.installs > first.installs && booted_since
    });
    let seen = seen.into_inner();
    eprintln!("node2's states on the primary's API: {seen:?}");
    let installing = seen.iter().position(|s| *s == NodeState::Installing);
    let installed = seen.iter().rposition(|s| *s == NodeState::Installed);
    assert!(
        matches!((installing, installed), (Some(i), Some(j)) if i < j),
        "the primary never showed node2 go from installing to installed: {seen:?}"
    );

    // Each node runs on its own rack's address and copied from its own rack's server.
    assert_eq!(node1.installs, 1, "{}", node1.line());
    let ip1 = installed_address(&mut t.lab.nodes_mut()[0], "node1");
    let ip2 = installed_address(&mut t.lab.nodes_mut()[1], "node2");
    assert_eq!((ip1, ip2), (RACK1_NODE_IP, RACK2_NODE_IP));
    let rack2_text = std::fs::read_to_string(&rack2_log).unwrap_or_default();
    let primary_text = t.server_log();
    assert!(
        rsync_sessions_of(&rack2_text, RACK2_NODE_IP).len() >= 2,
        "rack 2's rsync daemon did not serve node2's two installs"
    );
    assert_eq!(
        rsync_sessions_of(&primary_text, RACK2_NODE_IP),
        Vec::<&str>::new(),
        "node2 copied across the router from the primary"
    );
    assert!(!rsync_sessions_of(&primary_text, RACK1_NODE_IP).is_empty());
    assert_copied_from(&t, 0, SERVER_ADDR);
    assert_copied_from(&t, 1, RACK2_SERVER);

    // The record and its history came through the outage whole: both installs
    // (started, and installed unless the first failed) and the relayed power.
    assert_eq!(node2.state, NodeState::Installed, "{}", node2.line());
    assert_eq!(node2.ip.as_deref(), Some("10.45.0.12"));
    let history = fetch_history(&t.lab, t.server, "node2").expect("node2's history");
    let kinds: Vec<String> = history
        .iter()
        .map(|h| match h.event["step"].as_str() {
            Some(step) => format!("{}:{step}", h.kind()),
            None => h.kind().to_string(),
        })
        .collect();
    eprintln!("node2's history: {kinds:?}");
    let count = |kind: &str| history.iter().filter(|h| h.kind() == kind).count();
    // `installs` counts installs started; each is in the history, and each
    // but the one the outage cost (if it cost one) ended installed and booted.
    let installs = node2.installs as usize;
    if !first.is_failed() {
        assert_eq!(node2.installs, first.installs + 1, "{}", node2.line());
    }
    assert_eq!(count("install_started"), installs, "{kinds:?}");
    assert_eq!(count("installed"), installs - lost, "{kinds:?}");
    assert!(count("booted") >= installs - lost, "{kinds:?}");
    assert!(
        count("power") >= 1,
        "no power row for the relayed reinstall: {kinds:?}"
    );
    assert!(
        t.lab.host_mut("rack2").unwrap().all_running(),
        "rack 2's server died"
    );
    for (i, node) in t.lab.nodes_mut().iter_mut().enumerate() {
        node.power_off().unwrap();
        check_disk(&node.disk_path(), &format!("node{}", i + 1), Firmware::Bios);
    }
}
