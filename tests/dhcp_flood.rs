//! A stranger on the provisioning LAN floods DHCP with made-up MACs (raw UDP
//! from python3, inside namespaces the test makes): the pool hands out no more
//! than the new-client rate limit allows, while the declared node and a client
//! that already held a lease keep their addresses, and the router and DNS
//! addresses inside the range are never given to anyone.

mod common;
use common::*;

/// Sends `count` DISCOVERs and INIT-REBOOT REQUESTs (alternating) with random
/// MACs out of `iface`, then listens 3 s for replies to them and prints the
/// addresses offered and acknowledged, space-separated, one line each.
const FLOOD: &str = r#"
import os, random, socket, struct, sys, time
iface, count = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.setsockopt(socket.SOL_SOCKET, 25, iface.encode())  # SO_BINDTODEVICE
s.bind(("0.0.0.0", 68))
def packet(kind, xid, mac, requested):
    head = struct.pack("!BBBBIHHIIII", 1, 1, 6, 0, xid, 0, 0x8000, 0, 0, 0, 0)
    opts = bytes([53, 1, kind])
    if requested:
        opts += bytes([50, 4]) + socket.inet_aton(requested)
    return head + mac + bytes(10) + bytes(192) + b"\x63\x82\x53\x63" + opts + b"\xff"
ours = set()
for i in range(count):
    xid = 0x7F000000 | i
    ours.add(xid)
    mac = b"\x02" + os.urandom(5)
    if i % 2 == 0:
        s.sendto(packet(1, xid, mac, None), ("255.255.255.255", 67))
    else:
        ip = "10.44.0.%d" % random.randint(100, 199)
        s.sendto(packet(3, xid, mac, ip), ("255.255.255.255", 67))
    time.sleep(0.0005)  # fast, but within what one socket buffer holds
s.settimeout(0.3)
got = {2: set(), 5: set()}
end = time.time() + 3
while time.time() < end:
    try:
        data, _ = s.recvfrom(2048)
    except socket.timeout:
        continue
    if len(data) < 241 or data[0] != 2 or struct.unpack("!I", data[4:8])[0] not in ours:
        continue
    i, kind = 240, None
    while i + 1 < len(data) and data[i] != 255:
        if data[i] == 0:
            i += 1
            continue
        if data[i] == 53:
            kind = data[i + 2]
        i += 2 + data[i + 1]
    if kind in got:
        got[kind].add(socket.inet_ntoa(data[16:20]))
print("offered", *sorted(got[2]))
print("acked", *sorted(got[5]))
"#;

const BURST: usize = 5;

#[test]
fn a_random_mac_flood_cannot_drain_the_pool_or_take_declared_addresses() {
    if !can_run(&["busybox", "python3", "curl"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut net = Net::new("x");
    // Router and DNS inside the range on purpose: they must never be leased.
    let config = write_config(
        dir.path(),
        &format!(
            r#"
[server]
interface = "rbr0"
address = "10.44.0.1"
[dhcp]
mode = "full"
range = ["10.44.0.100", "10.44.0.199"]
router = "10.44.0.100"
dns = ["10.44.0.101"]
lease_time = 600
new_clients_burst = {BURST}
new_clients_per_minute = 6
[[node]]
mac = "52:54:00:aa:00:01"
hostname = "rack1-node1"
ip = "10.44.0.11"
"#
        ),
    );
    let srv = Server::start(&net, &config);
    let declared = net.add_client("52:54:00:aa:00:01");
    let earlier = net.add_client("52:54:00:bb:00:01");
    let attacker = net.add_client("02:00:00:00:00:01");

    // A client that leased before the flood: the lowest address that is
    // neither the router (.100) nor the DNS server (.101).
    let before = udhcpc(&net, &earlier, &[])["ip"].clone();
    assert_eq!(before, "10.44.0.102");

    let out = net
        .in_cli(&["python3", "-c", FLOOD, &attacker, "1000"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = |tag: &str| -> Vec<String> {
        text.lines()
            .find_map(|l| l.strip_prefix(tag))
            .unwrap_or_default()
            .split_whitespace()
            .map(String::from)
            .collect()
    };
    let (offered, acked) = (line("offered"), line("acked"));
    eprintln!("flood: {text}");
    let mut handed: Vec<&String> = offered.iter().chain(&acked).collect();
    handed.sort();
    handed.dedup();
    // The earlier client spent one token; one more may refill during the flood.
    assert!(
        !handed.is_empty() && handed.len() <= BURST,
        "{} addresses went to 500 made-up MACs (limit {BURST}): {text}",
        handed.len()
    );
    for infra in ["10.44.0.100", "10.44.0.101", "10.44.0.1"] {
        assert!(
            !handed.iter().any(|a| *a == infra),
            "{infra} handed out: {text}"
        );
    }
    assert!(!handed.iter().any(|a| **a == before), "{text}");

    // The declared node and the earlier client still get their own addresses.
    let node = udhcpc(&net, &declared, &[]);
    assert_eq!(node["ip"], "10.44.0.11");
    assert_eq!(node["router"], "10.44.0.100");
    assert_eq!(udhcpc(&net, &earlier, &[])["ip"], before);

    // The refusals were loud: a warning in the log and a count on /healthz.
    let health = net
        .srv
        .command("curl")
        .args(["-sf", "http://10.44.0.1/healthz"])
        .output()
        .unwrap();
    let health = String::from_utf8_lossy(&health.stdout).into_owned();
    let limited: u64 = health
        .lines()
        .find_map(|l| l.strip_prefix("dhcp_rate_limited "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no dhcp_rate_limited on /healthz: {health}"));
    assert!(limited >= 400, "only {limited} refusals counted: {health}");
    let log = srv.log_text();
    assert!(
        log.contains("new clients are coming faster than dhcp.new_clients_per_minute"),
        "no warning in the server log"
    );
}

/// `ping_before_offer`: a host that holds an address of the range without a
/// lease (a static one) answers the probe, and the client is offered the next
/// address; without the probe, the same client is offered the taken one.
#[test]
fn ping_before_offer_skips_an_address_a_static_host_holds() {
    if !can_run(&["busybox"]) {
        return;
    }
    let offered = |probe: bool| {
        let dir = tempfile::tempdir().unwrap();
        let mut net = Net::new(if probe { "q" } else { "o" });
        let config = write_config(
            dir.path(),
            &format!(
                "[server]\ninterface = \"rbr0\"\naddress = \"10.44.0.1\"\n[dhcp]\nmode = \"full\"\nrange = [\"10.44.0.100\", \"10.44.0.110\"]\nping_before_offer = {probe}\n"
            ),
        );
        let srv = Server::start(&net, &config);
        // A machine configured by hand with the range's first address.
        net.add_static_client("10.44.0.100");
        let client = net.add_client("52:54:00:cc:00:01");
        let ip = udhcpc(&net, &client, &[])["ip"].clone();
        (ip, srv.log_text())
    };
    let (ip, log) = offered(true);
    assert_eq!(ip, "10.44.0.101", "{log}");
    assert!(
        log.contains("10.44.0.100 answers ping but has no lease from us"),
        "{log}"
    );
    // The control: the same network without the probe hands out the taken address.
    let (ip, _) = offered(false);
    assert_eq!(ip, "10.44.0.100");
}
