//! Node records, their history and the operators' credentials against both
//! backends (the same bodies on SQLite and on a real PostgreSQL server the test
//! starts), then what only a shared database must do: two servers' inventories
//! changing one record at once lose nothing, a hostname or address declared on
//! one server is refused on the other, and each server sees the other's
//! changes live, also after PostgreSQL restarted.

mod common;

use common::backends::{conformance, Fixture};
use rollout::inventory::{Inventory, NodeChange, NodeRecord, NodeState, Policy, Source};
use rollout::operators::{token_hash, OperatorError, Role};
use serde_json::json;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const MAC1: &str = "52:54:00:00:40:01";
const MAC2: &str = "52:54:00:00:40:02";

fn record(mac: &str, hostname: &str) -> NodeRecord {
    NodeRecord::new(mac, hostname, "default", Source::Api, NodeState::Pending)
}

fn inventory(f: &Fixture) -> Inventory {
    Inventory::new(f.backend.node_store().unwrap(), Policy::default())
}

conformance!(
    records_round_trip,
    history_merges_repeats_and_keeps_the_newest,
    operators_round_trip,
    records_survive_a_database_restart,
);

fn records_round_trip(f: &Fixture) {
    let s = f.backend.node_store().unwrap();
    assert!(s.get(MAC1).unwrap().is_none());
    let mut b = record(MAC1, "b-node");
    b.install_id = Some("i-1".into());
    b.ip = Some("10.9.0.7".into());
    s.save(&b, Some(&json!({"kind": "declared"}))).unwrap();
    s.save(&record(MAC2, "a-node"), None).unwrap();
    assert_eq!(s.get(MAC1).unwrap(), Some(b.clone()));
    assert_eq!(
        s.by_install("i-1").unwrap().map(|r| r.mac),
        Some(MAC1.into())
    );
    assert!(s.by_install("i-2").unwrap().is_none());
    let names: Vec<String> = s.list().unwrap().into_iter().map(|r| r.hostname).collect();
    assert_eq!(names, ["a-node", "b-node"], "sorted by hostname");
    // A new install replaces the install id the record is found by.
    b.install_id = Some("i-2".into());
    s.save(&b, None).unwrap();
    assert!(s.by_install("i-1").unwrap().is_none());
    assert_eq!(
        s.by_install("i-2").unwrap().map(|r| r.mac),
        Some(MAC1.into())
    );
    assert!(s.delete(MAC1).unwrap());
    assert!(!s.delete(MAC1).unwrap(), "a second delete finds nothing");
    assert!(s.get(MAC1).unwrap().is_none());
    assert!(
        s.history(MAC1).unwrap().is_empty(),
        "history goes with the node"
    );
    assert_eq!(s.list().unwrap().len(), 1);
}

fn history_merges_repeats_and_keeps_the_newest(f: &Fixture) {
    let s = f.backend.node_store().unwrap();
    let mut rec = record(MAC1, "n1");
    let boot = json!({"kind": "pxe_boot", "firmware": "efi"});
    for at in [10, 11, 12] {
        rec.updated = at;
        s.save(&rec, Some(&boot)).unwrap();
    }
    let h = s.history(MAC1).unwrap();
    assert_eq!(h.len(), 1, "three identical boots are one row: {h:?}");
    assert_eq!(h[0].event["count"], 3);
    assert_eq!(h[0].event["last_at"], 12);
    // The ring: only the newest rows stay (HISTORY_KEEP = 500).
    for n in 0..505u64 {
        rec.updated = 100 + n;
        s.save(&rec, Some(&json!({"kind": "note", "n": n})))
            .unwrap();
    }
    let h = s.history(MAC1).unwrap();
    assert_eq!(h.len(), 500);
    assert_eq!(h[0].event["n"], 5, "the oldest rows went first");
    assert_eq!(h[499].event["n"], 504);
    assert_eq!(h[499].at, 604);
}

fn operators_round_trip(f: &Fixture) {
    let ops = f.backend.operators().unwrap();
    let token = ops.add("alice", Role::Maintain, 100).unwrap();
    let found = ops.by_hash(&token_hash(&token)).unwrap().unwrap();
    assert_eq!(
        (found.name.as_str(), found.role, found.created),
        ("alice", Role::Maintain, 100)
    );
    assert!(matches!(
        ops.add("alice", Role::Admin, 101),
        Err(OperatorError::Exists(_))
    ));
    assert!(matches!(
        ops.add("admin", Role::Admin, 101),
        Err(OperatorError::BadName(_))
    ));
    ops.add("bob", Role::Read, 102).unwrap();
    let names: Vec<String> = ops.list().unwrap().into_iter().map(|o| o.name).collect();
    assert_eq!(names, ["alice", "bob"]);
    ops.revoke("alice").unwrap();
    assert!(
        ops.by_hash(&token_hash(&token)).unwrap().is_none(),
        "revoked at once"
    );
    assert!(matches!(
        ops.revoke("alice"),
        Err(OperatorError::Unknown(_))
    ));
    // Another opener (another server, or the next start) sees the same table.
    let again = f.backend.operators().unwrap();
    assert_eq!(again.list().unwrap().len(), 1);
}

fn records_survive_a_database_restart(f: &Fixture) {
    let inv = inventory(f);
    inv.declare(record(MAC1, "n1")).unwrap();
    f.restart();
    // The inventory opened before the restart carries on: at most its first
    // call fails, on the connection the restart closed.
    let after = (0..2)
        .find_map(|_| inv.get(MAC1).ok())
        .expect("reads again");
    assert_eq!(after.map(|r| r.hostname), Some("n1".into()));
    let fresh = inventory(f);
    assert_eq!(fresh.history(MAC1).unwrap().len(), 1);
}

fn shared() -> Option<Fixture> {
    Fixture::postgres()
}

/// Both servers start installs of one node at once (a node restarting its
/// installer, each report reaching another server): each is a
/// read-modify-write of the record's install count, so without one writer at a
/// time across servers some would be lost.
#[test]
fn two_servers_changing_one_node_at_once_lose_nothing() {
    let Some(f) = shared() else { return };
    let (a, b) = (inventory(&f), inventory(&f));
    a.declare(record(MAC1, "n1")).unwrap();
    let start = Barrier::new(2);
    std::thread::scope(|s| {
        for inv in [&a, &b] {
            let start = &start;
            s.spawn(move || {
                start.wait();
                for _ in 0..100 {
                    inv.begin_install(MAC1, 1).unwrap();
                }
            });
        }
    });
    let rec = b.get(MAC1).unwrap().unwrap();
    assert_eq!(rec.installs, 200, "every install of both servers counted");
    let started = a
        .history(MAC1)
        .unwrap()
        .iter()
        .filter(|h| h.event["kind"] == "install_started")
        .count();
    assert_eq!(started, 200);
}

/// The same address (or hostname) declared for two nodes on two servers at
/// the same moment: one wins, the other is told who holds it.
#[test]
fn an_address_or_hostname_declared_on_one_server_is_refused_on_the_other() {
    let Some(f) = shared() else { return };
    let (a, b) = (inventory(&f), inventory(&f));
    for round in 0..10u8 {
        let ip = format!("10.9.1.{round}");
        let start = Barrier::new(2);
        let results: Vec<_> = std::thread::scope(|s| {
            [(&a, "a"), (&b, "b")]
                .map(|(inv, side)| {
                    let (start, ip) = (&start, ip.clone());
                    s.spawn(move || {
                        let mac = format!(
                            "52:54:00:00:4{}:{round:02x}",
                            if side == "a" { 1 } else { 2 }
                        );
                        let mut rec = record(&mac, &format!("{side}{round}"));
                        rec.ip = Some(ip);
                        start.wait();
                        inv.declare(rec)
                    })
                })
                .map(|h| h.join().unwrap())
                .into_iter()
                .collect()
        });
        let won = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(won, 1, "round {round}: {results:?}");
        let refusal = results
            .iter()
            .find_map(|r| r.as_ref().err())
            .unwrap()
            .to_string();
        assert!(
            refusal.contains(&format!("address {ip} is already reserved")),
            "{refusal}"
        );
    }
    a.declare(record(MAC1, "same-name")).unwrap();
    let e = b
        .declare(record(MAC2, "same-name"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("hostname same-name is already used by 52:54:00:00:40:01"),
        "{e}"
    );
}

/// Waits up to `within` for a change of `mac` that `pick` accepts.
fn wait_for(
    rx: &mut tokio::sync::broadcast::Receiver<NodeChange>,
    within: Duration,
    pick: impl Fn(&NodeChange) -> bool,
) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < within {
        match rx.try_recv() {
            Ok(c) if pick(&c) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::TryRecvError::Empty) => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("feed: {e}"),
        }
    }
    None
}

fn saved(mac: &str, state: NodeState) -> impl Fn(&NodeChange) -> bool + '_ {
    move |c| matches!(c, NodeChange::Saved(r) if r.mac == mac && r.state == state)
}

#[test]
fn each_server_sees_the_others_changes_live() {
    let Some(f) = shared() else { return };
    let a = inventory(&f);
    let b = Arc::new(inventory(&f));
    let mut feed = b.subscribe();
    b.follow_other_servers().unwrap();
    a.declare(record(MAC1, "n1")).unwrap();
    let took = wait_for(
        &mut feed,
        Duration::from_secs(1),
        saved(MAC1, NodeState::Pending),
    );
    assert!(
        took.is_some(),
        "a node declared on A shows on B within a second"
    );
    eprintln!("A's declaration reached B's feed in {took:?}");
    a.begin_install(MAC1, 1).unwrap();
    assert!(wait_for(
        &mut feed,
        Duration::from_secs(1),
        saved(MAC1, NodeState::Installing)
    )
    .is_some());
    a.remove(MAC1).unwrap();
    assert!(wait_for(&mut feed, Duration::from_secs(1), |c| {
        matches!(c, NodeChange::Removed { mac } if mac == MAC1)
    })
    .is_some());

    // B's own change is on its feed once, not echoed back by the database.
    b.declare(record(MAC2, "n2")).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let mut own = 0;
    while let Ok(c) = feed.try_recv() {
        own += usize::from(matches!(&c, NodeChange::Saved(r) if r.mac == MAC2));
    }
    assert_eq!(own, 1);

    // A record too large for a notification's payload is read back instead.
    let mut big = record(MAC2, "n2");
    big.console_tail = vec!["x".repeat(1000); 10];
    f.backend.node_store().unwrap().save(&big, None).unwrap();
    assert!(
        wait_for(&mut feed, Duration::from_secs(1), |c| {
            matches!(c, NodeChange::Saved(r) if r.mac == MAC2 && r.console_tail.len() == 10)
        })
        .is_some(),
        "a 10 kB record reaches B too"
    );

    // PostgreSQL restarts: B listens again and A's next change still arrives.
    f.restart();
    let mut rec = record(MAC1, "n1-again");
    rec.ip = Some("10.9.2.1".into());
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.declare(rec.clone()).is_err() {
        assert!(
            Instant::now() < deadline,
            "A writes again after the restart"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        wait_for(
            &mut feed,
            Duration::from_secs(10),
            saved(MAC1, NodeState::Pending)
        )
        .is_some(),
        "B follows A again after PostgreSQL restarted"
    );
}
