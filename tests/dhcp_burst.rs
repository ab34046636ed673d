//! A rack powering on: a burst of clients doing DISCOVER/OFFER/REQUEST/ACK at
//! once (raw UDP from python3 in namespaces the test makes), and the server
//! killed with SIGKILL the moment the last ACK arrives. Every ACKed lease must
//! be in the database afterwards: group commit batches the writes, but no ACK
//! leaves before its lease is durable.

mod common;
use common::*;
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

/// Runs `count` clients through DORA out of `iface`, all DISCOVERs first, each
/// REQUEST as soon as its OFFER arrives, then SIGKILLs `pid` right after the
/// last ACK. Prints one "ack IP MAC" line per ACK, then "killed" or "timeout".
const BURST: &str = r#"
import os, signal, socket, struct, sys, time
iface, count, pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.setsockopt(socket.SOL_SOCKET, 25, iface.encode())  # SO_BINDTODEVICE
s.bind(("0.0.0.0", 68))
def mac(i):
    return bytes([0x52, 0x54, 0x00, 0x77, i >> 8, i & 255])
def packet(kind, i, opts=b""):
    head = struct.pack("!BBBBIHHIIII", 1, 1, 6, 0, 0x6B000000 | i, 0, 0x8000, 0, 0, 0, 0)
    return head + mac(i) + bytes(10) + bytes(192) + b"\x63\x82\x53\x63" + bytes([53, 1, kind]) + opts + b"\xff"
def options(data):
    i, out = 240, {}
    while i + 1 < len(data) and data[i] != 255:
        if data[i] == 0:
            i += 1
            continue
        out[data[i]] = data[i + 2: i + 2 + data[i + 1]]
        i += 2 + data[i + 1]
    return out
for i in range(count):
    s.sendto(packet(1, i), ("255.255.255.255", 67))
acked, requested = {}, set()
s.settimeout(0.5)
end = time.time() + 20
while len(acked) < count and time.time() < end:
    try:
        data, _ = s.recvfrom(2048)
    except socket.timeout:
        # Resend what is unanswered (a DHCP client retries too).
        for i in range(count):
            if i not in acked and i not in requested:
                s.sendto(packet(1, i), ("255.255.255.255", 67))
        requested.clear()
        continue
    xid = struct.unpack("!I", data[4:8])[0]
    if data[0] != 2 or xid >> 24 != 0x6B:
        continue
    i, o = xid & 0xFFFFFF, options(data)
    kind = o.get(53, b"\0")[0]
    if kind == 2 and i not in acked:
        requested.add(i)
        s.sendto(packet(3, i, bytes([50, 4]) + data[16:20] + bytes([54, 4]) + o[54]), ("255.255.255.255", 67))
    elif kind == 5 and i not in acked:
        acked[i] = socket.inet_ntoa(data[16:20])
if len(acked) == count:
    os.kill(pid, signal.SIGKILL)
    print("killed")
else:
    print("timeout")
for i, ip in sorted(acked.items()):
    print("ack", ip, ":".join("%02x" % b for b in mac(i)))
"#;

#[test]
fn a_bursts_leases_are_all_in_the_store_after_kill_9_right_after_the_last_ack() {
    if !can_run(&["python3"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut net = Net::new("b");
    let config = write_config(
        dir.path(),
        r#"
[server]
interface = "rbr0"
address = "10.44.0.1"
[dhcp]
mode = "full"
range = ["10.44.0.10", "10.44.0.250"]
lease_time = 600
new_clients_per_minute = 100000
new_clients_burst = 10000
"#,
    );
    let mut srv = Server::start(&net, &config);
    let iface = net.add_client("52:54:00:77:ff:ff");
    let count = 200;
    let out = net
        .in_cli(&["python3", "-c", BURST, &iface])
        .arg(count.to_string())
        .arg(srv.child.id().to_string())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let log = srv.log_text();
    assert!(
        text.starts_with("killed"),
        "not every client got an ACK within 20 s:\n{text}\n{}\n{log}",
        String::from_utf8_lossy(&out.stderr)
    );
    srv.kill9();
    let acked: HashMap<Ipv4Addr, String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("ack "))
        .map(|l| {
            let (ip, mac) = l.split_once(' ').unwrap();
            (ip.parse().unwrap(), mac.to_string())
        })
        .collect();
    let macs: HashSet<&String> = acked.values().collect();
    assert_eq!(acked.len(), count, "one address per client:\n{text}");
    assert_eq!(macs.len(), count, "{text}");
    // Several ACKs shared a transaction (else this is not a burst at all).
    let biggest = log
        .lines()
        .filter_map(|l| l.split("DHCP lease batch: ").nth(1))
        .filter_map(|l| l.split(' ').next()?.parse::<usize>().ok())
        .max();
    assert!(
        biggest.is_some_and(|n| n > 1),
        "no transaction held more than one lease ({biggest:?}):\n{log}"
    );

    let db = dir.path().join("state/rollout.db");
    for (ip, mac) in &acked {
        let lease = rollout::store::sqlite::lease_of(&db, *ip).unwrap();
        let lease =
            lease.unwrap_or_else(|| panic!("{ip} was ACKed to {mac} but is not in the store"));
        assert_eq!(&lease.mac, mac, "{ip}");
        assert_eq!(
            lease.state,
            rollout::dhcp::leases::LeaseState::Bound,
            "{ip}"
        );
    }
}
