use super::*;
use clap::Parser;

#[test]
fn globs_on_hostnames() {
    assert!(glob("web*", "web1"));
    assert!(glob("web*", "web"));
    assert!(!glob("web*", "db1"));
    assert!(glob("node?", "node7"));
    assert!(!glob("node?", "node17"));
    assert!(glob("db[12]", "db2"));
    assert!(!glob("db[12]", "db3"));
    assert!(glob("r[0-9]n*", "r4n12"));
    assert!(glob("r[!0]*", "r1"));
    assert!(!glob("r[!0]*", "r0"));
    assert!(glob("*.lab", "a.lab"));
    assert!(glob("x[", "x["), "unclosed bracket is literal");
    assert!(glob("exact", "exact") && !glob("exact", "exact1"));
}

#[test]
fn target_patterns_are_comma_separated() {
    let t = Target {
        nodes: Some("web*, db1".into()),
        all: false,
    };
    assert!(matches(&t, "web3") && matches(&t, "db1"));
    assert!(!matches(&t, "db2"));
    let all = Target {
        nodes: None,
        all: true,
    };
    assert!(matches(&all, "anything"));
}

fn node(hostname: &str, state: &str, keys: bool) -> FleetNode {
    FleetNode {
        mac: "52:54:00:aa:00:01".into(),
        hostname: hostname.into(),
        ip: Some("10.44.0.11".into()),
        state: Some(state.into()),
        serial: None,
        host_keys: if keys {
            vec![
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJeUcRgfF2JHTkbvqH7RMf6SDu4vRPuuW38K2lsZz5Ju"
                    .into(),
            ]
        } else {
            vec![]
        },
    }
}

#[test]
fn only_nodes_with_known_host_keys_are_contacted() {
    let fleet = vec![
        node("web2", "installed", true),
        node("web1", "installed", true),
        node("node-0a0b0c", "discovered", false),
        node("web3", "pending", false),
        node("web4", "failed", true),
        node("old", "installed", false),
    ];
    let hosts = |s: &Selection| {
        s.contact
            .iter()
            .map(|n| n.hostname.clone())
            .collect::<Vec<_>>()
    };
    let all = Target {
        nodes: None,
        all: true,
    };
    let s = select(&fleet, &all);
    assert_eq!(
        hosts(&s),
        ["web1", "web2"],
        "--all: installed nodes with keys only"
    );
    assert_eq!(
        s.not_installed, 3,
        "discovered, pending and failed are left out"
    );
    assert_eq!(s.refused.len(), 1);
    assert_eq!(s.refused[0].0, "old");
    assert!(
        s.refused[0].1.contains("rollout node reinstall old"),
        "{:?}",
        s.refused
    );

    // Named: any node with keys (a failed reinstall still runs its old OS);
    // a named one without keys is refused, saying why.
    let named = |p: &str| {
        select(
            &fleet,
            &Target {
                nodes: Some(p.into()),
                all: false,
            },
        )
    };
    let s = named("web*,node-*");
    assert_eq!(hosts(&s), ["web1", "web2", "web4"]);
    let refused: Vec<&str> = s.refused.iter().map(|(h, _)| h.as_str()).collect();
    assert_eq!(refused, ["node-0a0b0c", "web3"]);
    assert!(
        s.refused[0].1.contains("never installed"),
        "{:?}",
        s.refused
    );
    assert!(s.refused[1].1.contains("pending"), "{:?}", s.refused);

    let mut sum = Summary::default();
    sum.add(&ssh::Outcome::Refused("x".into()));
    sum.add(&exited(0, "", ""));
    assert_eq!(sum.to_string(), "1 ok, 0 failed, 0 unreachable, 1 refused");
    assert_ne!(sum.exit_code(), 0, "a refused node fails the run");
    assert_eq!(
        exec_line(
            &NodeResult {
                hostname: "web3".into(),
                outcome: ssh::Outcome::Refused("not contacted: why".into()),
            },
            4
        ),
        "web3  REFUSED: not contacted: why"
    );
}

#[derive(clap::Parser)]
struct TestCli {
    #[command(subcommand)]
    cmd: TestCmd,
}

#[derive(clap::Subcommand)]
enum TestCmd {
    Exec(ExecArgs),
    Sync(SyncArgs),
}

#[test]
fn clap_types_parse_the_documented_forms() {
    let c = TestCli::try_parse_from([
        "rollout",
        "exec",
        "--nodes",
        "web*",
        "--parallel",
        "3",
        "--timeout",
        "9",
        "--",
        "sh",
        "-c",
        "echo hi",
    ])
    .unwrap();
    let TestCmd::Exec(a) = c.cmd else { panic!() };
    assert_eq!(a.target.nodes.as_deref(), Some("web*"));
    assert_eq!((a.parallel, a.timeout), (3, 9));
    assert_eq!(a.command, ["sh", "-c", "echo hi"]);
    let c = TestCli::try_parse_from(["rollout", "sync", "--all"]).unwrap();
    let TestCmd::Sync(s) = c.cmd else { panic!() };
    assert!(s.target.all && s.parallel == 4);
    assert!(
        TestCli::try_parse_from(["rollout", "exec", "--", "true"]).is_err(),
        "a target is required"
    );
    assert!(
        TestCli::try_parse_from(["rollout", "exec", "--all", "--nodes", "a", "--", "x"]).is_err()
    );
    assert!(
        TestCli::try_parse_from(["rollout", "exec", "--all"]).is_err(),
        "a command is required"
    );
}

fn exited(code: i32, stdout: &str, stderr: &str) -> ssh::Outcome {
    ssh::Outcome::Exited {
        code,
        stdout: stdout.into(),
        stderr: stderr.into(),
    }
}

#[test]
fn one_line_per_node_and_the_summary() {
    let rs = [
        NodeResult {
            hostname: "alpha".into(),
            outcome: exited(0, "line one\n\nline two\nline three\nline four\n", ""),
        },
        NodeResult {
            hostname: "b".into(),
            outcome: exited(2, "", "ls: cannot access 'x'\n"),
        },
        NodeResult {
            hostname: "gamma".into(),
            outcome: ssh::Outcome::Unreachable(
                "connect to host 10.44.0.9 port 22: No route to host".into(),
            ),
        },
        NodeResult {
            hostname: "delta".into(),
            outcome: ssh::Outcome::TimedOut {
                secs: 5,
                stdout: "started\n".into(),
            },
        },
    ];
    let lines: Vec<String> = rs.iter().map(|r| exec_line(r, 5)).collect();
    assert_eq!(lines[0], "alpha  exit=0  line one | line two | line three");
    assert_eq!(lines[1], "b      exit=2  ls: cannot access 'x'");
    assert_eq!(
        lines[2],
        "gamma  UNREACHABLE: connect to host 10.44.0.9 port 22: No route to host"
    );
    assert_eq!(lines[3], "delta  TIMEOUT after 5 s  started");
    let mut s = Summary::default();
    for r in &rs {
        s.add(&r.outcome);
    }
    assert_eq!(s.to_string(), "1 ok, 2 failed, 1 unreachable");
    assert_eq!(s.exit_code(), 1);
    let mut only_ok = Summary::default();
    only_ok.add(&rs[0].outcome);
    assert_eq!(
        (only_ok.to_string().as_str(), only_ok.exit_code()),
        ("1 ok, 0 failed, 0 unreachable", 0)
    );
    let long = "x".repeat(300);
    assert_eq!(first_lines(&long, 3).chars().count(), 200);
}

#[test]
fn sync_output_gives_the_serial() {
    let up = parse_sync_output("up to date (serial 4)\n").unwrap();
    assert_eq!(
        (up.serial, up.reboot, up.line.as_str()),
        (4, false, "up to date")
    );
    let out = "rollout-sync: syncing rsync://10.44.0.1:873/web-5/ onto /\nupdated 4 → 5, 1234 bytes transferred, reboot needed: yes\n";
    let s = parse_sync_output(out).unwrap();
    assert_eq!((s.serial, s.reboot), (5, true));
    assert_eq!(
        sync_line(
            &NodeResult {
                hostname: "n1".into(),
                outcome: exited(0, out, "")
            },
            2
        ),
        "n1  exit=0  serial 5 (updated 4 → 5, 1234 bytes transferred, reboot needed: yes)"
    );
    let none =
        parse_sync_output("updated none → 1, 5 bytes transferred, reboot needed: no").unwrap();
    assert_eq!((none.serial, none.reboot), (1, false));
    assert_eq!(parse_sync_output("garbage"), None);
    assert_eq!(
        sync_line(
            &NodeResult {
                hostname: "n2".into(),
                outcome: exited(1, "", "rollout-sync: sync failed: boom\n")
            },
            2
        ),
        "n2  exit=1  rollout-sync: sync failed: boom"
    );
}

#[test]
fn leases_give_addresses_to_nodes_without_ip() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("rollout.db");
    let leases = crate::store::Backend::new(dir.path(), None);
    let node = FleetNode {
        mac: "52:54:00:AA:00:02".into(),
        hostname: "beta".into(),
        ip: None,
        state: None,
        serial: None,
        host_keys: vec![],
    };
    assert!(address(&node, &leases).unwrap_err().contains("no address"));
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(
        "CREATE TABLE leases (ip TEXT PRIMARY KEY, mac TEXT NOT NULL, expires INTEGER NOT NULL, state TEXT NOT NULL);
         INSERT INTO leases VALUES ('10.44.0.150', '52:54:00:aa:00:02', 100, 'bound');
         INSERT INTO leases VALUES ('10.44.0.151', '52:54:00:aa:00:02', 200, 'bound');
         INSERT INTO leases VALUES ('10.44.0.152', '52:54:00:aa:00:02', 300, 'released');",
    )
    .unwrap();
    drop(conn);
    assert_eq!(
        address(&node, &leases).unwrap(),
        "10.44.0.151",
        "newest bound lease"
    );
    let fixed = FleetNode {
        ip: Some("10.44.0.11".into()),
        ..node
    };
    assert_eq!(address(&fixed, &leases).unwrap(), "10.44.0.11");
}

#[test]
fn parallel_runs_every_item_with_bounded_workers() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (r, p) = (running.clone(), peak.clone());
    let mut got = Vec::new();
    run_parallel(
        (0..10).collect(),
        3,
        move |i: u32| {
            let now = r.fetch_add(1, Ordering::SeqCst) + 1;
            p.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(20));
            r.fetch_sub(1, Ordering::SeqCst);
            i * 2
        },
        |v| got.push(v),
    );
    got.sort_unstable();
    assert_eq!(got, (0..10).map(|i| i * 2).collect::<Vec<_>>());
    assert!(peak.load(Ordering::SeqCst) <= 3);
    assert!(peak.load(Ordering::SeqCst) >= 2, "ran serially");
}
