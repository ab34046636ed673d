//! Reservations are the node records' addresses, kept current while the DHCP
//! server runs: a node declared, changed or removed through another server
//! sharing the database (its API does what `Inventory::declare` does here) is
//! answered accordingly by this server's DHCP, without a restart. Real busybox
//! udhcpc clients in namespaces the test makes.

mod common;
use common::shared_store::{backend, config_with};
use common::*;
use rollout::inventory::{Inventory, NodeRecord, NodeState, Policy, Source};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};
use testkit::postgres::TempPostgres;

const MAC: &str = "52:54:00:00:50:01";

/// The other server's inventory: the same database, a store of its own.
fn other_server(pg: &TempPostgres) -> Inventory {
    Inventory::new(backend(pg).node_store().unwrap(), Policy::default())
}

fn declared(ip: &str) -> NodeRecord {
    let mut rec = NodeRecord::new(
        MAC,
        "rack2-node7",
        "default",
        Source::Api,
        NodeState::Pending,
    );
    rec.ip = Some(ip.into());
    rec
}

/// What udhcpc is handed once the server's view has caught up (a change
/// reaches it within a second; a client asking earlier is answered as before).
fn answered(
    net: &Net,
    iface: &str,
    want: impl Fn(&std::collections::HashMap<String, String>) -> bool,
) -> std::collections::HashMap<String, String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = udhcpc(net, iface, &[]);
        if want(&got) || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_node_declared_on_another_server_is_reserved_here_at_once() {
    if !can_run(&["busybox", "curl"]) || !TempPostgres::available() {
        return;
    }
    let pg = TempPostgres::start();
    let dir = tempfile::tempdir().unwrap();
    let mut net = Net::new("gr");
    let cfg = config_with(dir.path(), SERVER_IP, &pg.url(), "");
    let _srv = Server::start(&net, &cfg);
    let other = other_server(&pg);
    let client = net.add_client(MAC);
    let in_range = |m: &std::collections::HashMap<String, String>| {
        m.get("ip")
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
            .is_some_and(|ip| (100..=105).contains(&ip.octets()[3]))
    };
    assert!(
        in_range(&udhcpc(&net, &client, &[])),
        "a stranger gets a range address"
    );

    other.declare(declared("10.44.0.50")).unwrap();
    let got = answered(&net, &client, |m| {
        m.get("ip").map(String::as_str) == Some("10.44.0.50")
    });
    assert_eq!(
        got.get("ip").map(String::as_str),
        Some("10.44.0.50"),
        "{got:?}"
    );
    assert_eq!(
        got.get("hostname").map(String::as_str),
        Some("rack2-node7"),
        "{got:?}"
    );

    other.declare(declared("10.44.0.51")).unwrap();
    let got = answered(&net, &client, |m| {
        m.get("ip").map(String::as_str) == Some("10.44.0.51")
    });
    assert_eq!(
        got.get("ip").map(String::as_str),
        Some("10.44.0.51"),
        "a changed reservation: {got:?}"
    );

    other.remove(MAC).unwrap();
    let got = answered(&net, &client, in_range);
    assert!(
        in_range(&got),
        "a removed node is a stranger again: {got:?}"
    );
}
