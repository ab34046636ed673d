//! `rollout serve` with its leases in a shared PostgreSQL (`[store] url`),
//! answering real DHCP clients (busybox udhcpc) in namespaces the test makes:
//! PostgreSQL stopped while serving (no address ACKed, a warning naming the
//! database; served again once it is back, nothing lost), a node with a
//! reserved address booting through that outage (`/healthz` degraded
//! meanwhile), and two servers on one L2 sharing the database (no address
//! granted twice).

mod common;
use common::shared_store::{backend, config_with, second_namespace, SECOND_SERVER_IP};
use common::*;
use std::net::Ipv4Addr;
use std::path::Path;
use testkit::postgres::TempPostgres;

fn config(dir: &Path, address: &str, url: &str) -> std::path::PathBuf {
    config_with(dir, address, url, "")
}

#[test]
fn postgres_stopped_while_serving_acks_nothing_until_it_returns() {
    if !can_run(&["busybox", "curl"]) || !TempPostgres::available() {
        return;
    }
    let pg = TempPostgres::start();
    let dir = tempfile::tempdir().unwrap();
    let mut net = Net::new("ps");
    let mut srv = Server::start(&net, &config(dir.path(), SERVER_IP, &pg.url()));
    let db = backend(&pg);

    let a = net.add_client("52:54:00:00:20:01");
    let a_ip = udhcpc_try(&net, &a, &[]).expect("a lease while PostgreSQL is up");
    assert_eq!(
        db.lease_of(a_ip).unwrap().map(|l| l.mac),
        Some("52:54:00:00:20:01".into())
    );

    pg.stop();
    let b = net.add_client("52:54:00:00:20:02");
    assert_eq!(
        udhcpc_try(&net, &b, &[]),
        None,
        "ACKed with the database down"
    );
    let log = srv.log_text();
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("cannot persist the lease")
            && l.contains("lease database postgres://postgres@/postgres")),
        "no warning naming the database:\n{log}"
    );

    // Counted where monitoring looks.
    let health = healthz(&net);
    assert!(
        health.starts_with("degraded\n") && health.contains("dhcp_persist_failures"),
        "{health}"
    );

    pg.resume();
    let b_ip = udhcpc_try(&net, &b, &[]).expect("a lease once PostgreSQL is back");
    assert_ne!(a_ip, b_ip);
    assert_eq!(
        db.lease_of(a_ip).unwrap().map(|l| l.mac),
        Some("52:54:00:00:20:01".into())
    );
    assert_eq!(
        db.lease_of(b_ip).unwrap().map(|l| l.mac),
        Some("52:54:00:00:20:02".into())
    );
    // A server on PostgreSQL stops as cleanly as one on SQLite.
    assert!(srv.stop().success(), "{}", srv.log_text());
    assert!(!srv.log_text().contains("panicked"), "{}", srv.log_text());
}

/// `/healthz` as a monitor sees it: the body of a 200 (`curl -f`).
fn healthz(net: &Net) -> String {
    let out = net
        .srv
        .command("curl")
        .args([
            "-sf",
            "--max-time",
            "5",
            &format!("http://{SERVER_IP}/healthz"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "/healthz is not a 200: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const RESERVED_MAC: &str = "52:54:00:00:40:01";
const RESERVED_IP: Ipv4Addr = Ipv4Addr::new(10, 44, 0, 50);

/// A `[[node]]` with a fixed address is the operator's declaration, not an
/// allocation: it boots while PostgreSQL is down, its lease is written once
/// the database is back; new clients wait; /healthz says degraded meanwhile.
#[test]
fn a_reserved_node_boots_while_postgres_is_down_and_its_lease_is_written_after() {
    if !can_run(&["busybox", "curl"]) || !TempPostgres::available() {
        return;
    }
    let pg = TempPostgres::start();
    let dir = tempfile::tempdir().unwrap();
    let mut net = Net::new("pr");
    let node = format!(
        "[[node]]\nmac = \"{RESERVED_MAC}\"\nhostname = \"rack1-node50\"\nip = \"{RESERVED_IP}\"\n"
    );
    let _srv = Server::start(&net, &config_with(dir.path(), SERVER_IP, &pg.url(), &node));
    let db = backend(&pg);
    assert!(healthz(&net).starts_with("ok\n"));

    pg.stop();
    let reserved = net.add_client(RESERVED_MAC);
    assert_eq!(
        udhcpc_try(&net, &reserved, &[]),
        Some(RESERVED_IP),
        "the reserved node is not answered with the database down"
    );
    let unknown = net.add_client("52:54:00:00:40:02");
    assert_eq!(
        udhcpc_try(&net, &unknown, &[]),
        None,
        "a range address ACKed with the database down"
    );
    let health = healthz(&net);
    assert!(health.starts_with("degraded\n"), "{health}");
    assert!(
        health.contains("lease_store_unwritable since ")
            && health.contains("lease database postgres://"),
        "the cause is not named: {health}"
    );

    pg.resume();
    let ip = udhcpc_try(&net, &unknown, &[]).expect("a lease once PostgreSQL is back");
    assert_ne!(ip, RESERVED_IP);
    let health = healthz(&net);
    assert!(health.starts_with("ok\n"), "{health}");
    // Queued while the database was down, written with the next batch.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let lease = db.lease_of(RESERVED_IP).unwrap();
        if lease.as_ref().map(|l| l.mac.as_str()) == Some(RESERVED_MAC) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the reserved node's lease never reached the database: {lease:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(
        db.lease_of(ip).unwrap().map(|l| l.mac),
        Some("52:54:00:00:40:02".into())
    );
}

/// Two servers answer every client on one L2, each with its own memory of the
/// pool; 8 clients ask for 6 addresses at once. Whatever server a client took,
/// no address is ACKed to two clients, and every ACK is what the database holds.
#[test]
fn two_servers_on_one_l2_never_ack_one_address_twice() {
    if !can_run(&["busybox", "curl"]) || !TempPostgres::available() {
        return;
    }
    let pg = TempPostgres::start();
    let dir = tempfile::tempdir().unwrap();
    let dir2 = tempfile::tempdir().unwrap();
    let mut net = Net::new("sh");
    let first = Server::start(&net, &config(dir.path(), SERVER_IP, &pg.url()));
    let ns2 = second_namespace(&net);
    let second = Server::start_in(
        ns2.name(),
        SECOND_SERVER_IP,
        &config(dir2.path(), SECOND_SERVER_IP, &pg.url()),
        &[],
    );
    let clients: Vec<(String, String)> = (0..8)
        .map(|n| {
            let mac = format!("52:54:00:00:30:{n:02x}");
            (net.add_client(&mac), mac)
        })
        .collect();
    let acked: Vec<(String, Option<Ipv4Addr>)> = std::thread::scope(|s| {
        let runs: Vec<_> = clients
            .iter()
            .map(|(iface, mac)| {
                let net = &net;
                s.spawn(move || {
                    (
                        mac.clone(),
                        (0..3).find_map(|_| udhcpc_try(net, iface, &[])),
                    )
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let db = backend(&pg);
    let mut seen = std::collections::HashMap::new();
    for (mac, ip) in &acked {
        let Some(ip) = ip else { continue };
        if let Some(other) = seen.insert(*ip, mac.clone()) {
            panic!("{ip} ACKed to both {other} and {mac}: {acked:?}");
        }
        assert_eq!(
            db.lease_of(*ip).unwrap().map(|l| l.mac),
            Some(mac.clone()),
            "{acked:?}"
        );
    }
    assert_eq!(seen.len(), 6, "the whole range is granted: {acked:?}");
    // Whether both ACKed depends on which OFFER each udhcpc takes first; on a
    // loaded machine one server can win every race (seen once in a full run),
    // so this is reported, not asserted: the assertions above hold either way.
    for (name, log) in [("first", first.log_text()), ("second", second.log_text())] {
        if !log.contains("Request → ACK") {
            eprintln!("note: the {name} server ACKed nothing this run: {acked:?}");
        }
    }
}
