//! `rollout serve` with its leases in a shared PostgreSQL (`[store] url`),
//! answering real DHCP clients (busybox udhcpc) in namespaces the test makes:
//! PostgreSQL stopped while serving (no address ACKed, a warning naming the
//! database; served again once it is back, nothing lost), and two servers on
//! one L2 sharing the database (no address granted twice).

mod common;
use common::*;
use rollout::config::{PgTarget, StoreConfig};
use rollout::store::Backend;
use std::net::Ipv4Addr;
use std::path::Path;
use testkit::netns::Netns;
use testkit::postgres::TempPostgres;

fn config(dir: &Path, address: &str, url: &str) -> std::path::PathBuf {
    write_config(
        dir,
        &format!(
            r#"
[server]
interface = "rbr0"
address = "{address}"
[dhcp]
mode = "full"
range = ["10.44.0.100", "10.44.0.105"]
router = "10.44.0.1"
lease_time = 600
[store]
url = "{url}"
"#
        ),
    )
}

fn backend(pg: &TempPostgres) -> Backend {
    let target = PgTarget::try_from(&StoreConfig {
        url: pg.url(),
        password_file: None,
    })
    .unwrap();
    Backend::new(Path::new("/nonexistent"), Some(&target))
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
    let health = net
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
    let health = String::from_utf8_lossy(&health.stdout);
    assert!(health.contains("dhcp_persist_failures"), "{health}");

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

/// A namespace of its own for a second server, plugged into the first's
/// bridge as 10.44.0.2.
fn second_namespace(net: &Net) -> Netns {
    let ns = Netns::create(&format!("rt-sh{}-2", std::process::id() % 100000)).unwrap();
    net.srv
        .add_bridge_port("rbr0", "s2", ns.name(), "rbr0")
        .unwrap();
    ns.ip(&["addr", "add", "10.44.0.2/24", "dev", "rbr0"])
        .unwrap();
    ns.ip(&["link", "set", "rbr0", "up"]).unwrap();
    ns
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
        "10.44.0.2",
        &config(dir2.path(), "10.44.0.2", &pg.url()),
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
    // Both answered (udhcpc takes whichever OFFER comes first), so the two
    // memories really competed for the range.
    for (name, log) in [("first", first.log_text()), ("second", second.log_text())] {
        assert!(
            log.contains("Request → ACK"),
            "the {name} server ACKed nothing: {acked:?}"
        );
    }
}
