//! An HA pair: two `rollout serve` on one L2 sharing one PostgreSQL, both
//! answering hundreds of perfdhcp clients at once, one of them killed -9 in the
//! middle. Every reply is captured on the clients' side, so the checks are on
//! what was actually sent: no address ACKed to two MACs, every ACK is what the
//! database holds, and after the kill the survivor alone keeps granting leases,
//! to the dead server's clients too.

mod common;
use common::dhcp_capture::{Capture, Reply, ACK};
use common::shared_store::{backend, second_namespace, SECOND_SERVER_IP};
use common::*;
use rollout::dhcp::leases::{Lease, LeaseState};
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};
use testkit::postgres::TempPostgres;

/// Distinct client MACs perfdhcp cycles through.
const CLIENTS: u32 = 800;
/// DORA exchanges a second: well under what a debug build on a busy 2-core
/// machine sustains, so lost packets are the kill's doing, not overload's.
const RATE: u32 = 200;
/// How long perfdhcp runs, and when in that time one server is killed.
const RUN: Duration = Duration::from_secs(12);
const KILL_AFTER: Duration = Duration::from_secs(5);
/// A reply is timestamped when the capture sees it, a little after the server
/// sent it; one the killed server sent just before dying may be stamped
/// after the kill, never this long after it.
const IN_FLIGHT: Duration = Duration::from_millis(100);
/// perfdhcp's address: it acts as a relay (giaddr), so replies come here.
const GENERATOR_IP: &str = "10.44.0.9";

/// Both servers alike: one range of 2048 addresses (each client may end up
/// with one from each server: its exchanges are independent DORAs, and a
/// server that never saw its lease offers it a new one), long leases.
fn config(dir: &Path, address: &str, url: &str) -> PathBuf {
    write_config(
        dir,
        &format!(
            r#"
[server]
interface = "rbr0"
address = "{address}"
[dhcp]
mode = "full"
range = ["10.44.1.0", "10.44.8.255"]
lease_time = 600
# perfdhcp's made-up MACs are what the new-client limit is for; this test is
# about the lease path, so lift it.
new_clients_per_minute = 10000000
new_clients_burst = 1000000
[store]
url = "{url}"
"#
        ),
    )
}

/// How many ACKs a server's log says it sent so far.
fn acks_logged(server: &Server) -> usize {
    server.log_text().matches("Request → ACK").count()
}

#[test]
fn ha_pair_under_load_loses_one_server_and_never_grants_an_address_twice() {
    if !can_run(&["perfdhcp", "tcpdump", "curl"]) || !TempPostgres::available() {
        return;
    }
    let started = Instant::now();
    let pg = TempPostgres::start();
    let (dir1, dir2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut net = Net::with_prefix("ha", 16);
    let ns2 = second_namespace(&net);
    let mut servers = [
        Server::start(&net, &config(dir1.path(), SERVER_IP, &pg.url())),
        Server::start_in(
            ns2.name(),
            SECOND_SERVER_IP,
            &config(dir2.path(), SECOND_SERVER_IP, &pg.url()),
            &[],
        ),
    ];
    let addresses: [Ipv4Addr; 2] = [
        SERVER_IP.parse().unwrap(),
        SECOND_SERVER_IP.parse().unwrap(),
    ];
    let iface = net.add_static_client(GENERATOR_IP);
    let capture = Capture::start(&net.cli, &iface);

    // No server argument: perfdhcp broadcasts, so both servers hear every
    // DISCOVER and REQUEST, as an HA pair's clients do; it takes the first
    // OFFER and names that server in its REQUEST. -W: replies still on their
    // way when the run ends are waited for, not counted as lost.
    let perfdhcp = net
        .in_cli(&["perfdhcp", "-4", "-l", &iface])
        .args(["-r", &RATE.to_string(), "-R", &CLIENTS.to_string()])
        .args(["-p", &RUN.as_secs().to_string(), "-W", "100000"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start perfdhcp");
    std::thread::sleep(KILL_AFTER);
    // The busier server dies, so the survivor has the most clients to take over.
    let victim = usize::from(acks_logged(&servers[1]) > acks_logged(&servers[0]));
    let survivor = 1 - victim;
    servers[victim].kill9();
    let killed_at = SystemTime::now();
    let out = perfdhcp.wait_with_output().unwrap();
    let report =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(report.contains("Rate:"), "perfdhcp did not run: {report}");
    let replies = capture.stop();
    let acks: Vec<&Reply> = replies.iter().filter(|r| r.kind == ACK).collect();
    let (dead, alive) = (addresses[victim], addresses[survivor]);
    let summary = format!(
        "{} ACKs, {} from {dead} (killed {:?} into the run); perfdhcp:\n{report}",
        acks.len(),
        acks.iter().filter(|a| a.server == dead).count(),
        KILL_AFTER,
    );

    // perfdhcp sends no RELEASE and leases last 600 s, far beyond the run:
    // nothing can legitimately pass an address from one MAC to another here,
    // so an address in two MACs' ACKs is a double grant.
    let mut owner: HashMap<Ipv4Addr, &str> = HashMap::new();
    for a in &acks {
        if let Some(other) = owner.insert(a.yiaddr, &a.mac) {
            assert_eq!(
                other, a.mac,
                "{} ACKed to both {other} and {} ({summary})",
                a.yiaddr, a.mac
            );
        }
    }
    // For the same reason the database must still name the MAC of every ACK,
    // bound: an ACK is sent only once its lease is committed, by either server.
    let db: HashMap<Ipv4Addr, Lease> = backend(&pg)
        .lease_store()
        .unwrap()
        .load_all()
        .unwrap()
        .into_iter()
        .map(|l| (l.ip, l))
        .collect();
    for a in &acks {
        let held = db.get(&a.yiaddr);
        assert!(
            held.is_some_and(|l| l.mac == a.mac && l.state == LeaseState::Bound),
            "{} ACKed to {} by {}, but the database holds {held:?} ({summary})",
            a.yiaddr,
            a.mac,
            a.server
        );
    }

    let after_kill = |a: &&&Reply| a.at > killed_at + IN_FLIGHT;
    let late_dead = acks.iter().filter(after_kill).filter(|a| a.server == dead);
    assert_eq!(late_dead.count(), 0, "ACKs from a killed server: {summary}");
    let dead_before: HashSet<&str> = acks
        .iter()
        .filter(|a| a.server == dead && a.at <= killed_at)
        .map(|a| a.mac.as_str())
        .collect();
    assert!(
        !dead_before.is_empty(),
        "the killed server had ACKed nothing: {summary}"
    );
    let alive_after: Vec<&&Reply> = acks
        .iter()
        .filter(after_kill)
        .filter(|a| a.server == alive)
        .collect();
    assert!(
        !alive_after.is_empty(),
        "nothing ACKed after the kill: {summary}"
    );
    // Still granting at the end of the run, not just for a moment after the kill.
    let last = alive_after.iter().map(|a| a.at).max().unwrap();
    assert!(
        last > killed_at + (RUN - KILL_AFTER) / 2,
        "the survivor stopped granting: last ACK {:?} after the kill ({summary})",
        last.duration_since(killed_at).unwrap_or_default()
    );
    // The dead server's clients were served by the survivor afterwards.
    let taken_over = alive_after
        .iter()
        .filter(|a| dead_before.contains(a.mac.as_str()))
        .count();
    assert!(
        taken_over > 0,
        "no client of the killed server was served again: {summary}"
    );

    // The survivor is still healthy and stops as cleanly as ever.
    let survivor_server = &mut servers[survivor];
    assert!(
        survivor_server.stop().success(),
        "{}",
        survivor_server.log_text()
    );
    assert!(!survivor_server.log_text().contains("panicked"));
    eprintln!(
        "{} ACKs in all, {} distinct addresses; {dead} killed after ACKing {} clients; \
         {alive} then ACKed {} times, {taken_over} of them to those clients; {:?} in all",
        acks.len(),
        owner.len(),
        dead_before.len(),
        alive_after.len(),
        started.elapsed()
    );
    eprintln!("{summary}");
}
