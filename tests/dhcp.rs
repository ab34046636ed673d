//! DHCP against real clients (busybox udhcpc, ISC dhclient) in namespaces the test makes.

mod common;
use common::*;
use dhcproto::v4::{Architecture, DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use std::collections::HashSet;
use std::net::Ipv4Addr;

const PXE_BIOS: &[&str] = &["-V", "PXEClient:Arch:00000:UNDI:002001", "-x", "0x5d:0000"];
const PXE_UEFI: &[&str] = &["-V", "PXEClient:Arch:00007:UNDI:003016", "-x", "0x5d:0007"];

fn full_config(dir: &std::path::Path) -> std::path::PathBuf {
    write_config(
        dir,
        r#"
[server]
interface = "rbr0"
address = "10.44.0.1"
[dhcp]
mode = "full"
range = ["10.44.0.100", "10.44.0.199"]
router = "10.44.0.1"
dns = ["10.44.0.1"]
lease_time = 600
[[node]]
mac = "52:54:00:aa:00:01"
hostname = "rack1-node1"
ip = "10.44.0.11"
"#,
    )
}

fn in_range(ip: &str) -> bool {
    let last: u8 = ip.rsplit('.').next().unwrap().parse().unwrap();
    ip.starts_with("10.44.0.") && (100..=199).contains(&last)
}

#[test]
fn real_clients_get_addresses_boot_files_and_reservations() {
    if !can_run(&["busybox", "curl", "dhclient"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut net = Net::new("d");
    let _srv = Server::start(&net, &full_config(dir.path()));

    let bios = net.add_client("52:54:00:00:10:01");
    let got = udhcpc(&net, &bios, PXE_BIOS);
    assert!(in_range(&got["ip"]), "{got:?}");
    assert_eq!(got["boot_file"], "undionly.kpxe");
    assert_eq!(got["siaddr"], SERVER_IP);
    assert_eq!(got["router"], SERVER_IP);

    let uefi = net.add_client("52:54:00:00:10:02");
    let got2 = udhcpc(&net, &uefi, PXE_UEFI);
    assert_eq!(got2["boot_file"], "snponly.efi");
    assert_ne!(got2["ip"], got["ip"]);

    let ipxe = net.add_client("52:54:00:00:10:03");
    let got3 = udhcpc(
        &net,
        &ipxe,
        &[
            "-V",
            "PXEClient:Arch:00000:UNDI:002001",
            "-x",
            "0x4d:69505845",
        ],
    );
    assert_eq!(
        got3["boot_file"], "http://10.44.0.1/boot.ipxe",
        "iPXE must get the script, not a loader"
    );

    let reserved = net.add_client("52:54:00:aa:00:01");
    let got4 = udhcpc(&net, &reserved, PXE_BIOS);
    assert_eq!(got4["ip"], "10.44.0.11");
    assert_eq!(got4["hostname"], "rack1-node1");

    // ISC dhclient, the other common client, on a plain (non-PXE) request.
    let plain = net.add_client("52:54:00:00:10:04");
    let lease_file = dir.path().join("dhclient.leases");
    let out = net
        .in_cli(&["dhclient", "-1", "-v", "-sf", "/bin/true", "-lf"])
        .arg(&lease_file)
        .arg(&plain)
        .output()
        .unwrap();
    let leases = std::fs::read_to_string(&lease_file).unwrap_or_default();
    assert!(
        out.status.success(),
        "dhclient failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fixed = leases
        .lines()
        .find(|l| l.contains("fixed-address"))
        .expect("dhclient recorded a lease");
    let ip = fixed
        .trim()
        .trim_start_matches("fixed-address ")
        .trim_end_matches(';');
    assert!(in_range(ip), "{ip}");
    assert!(
        !leases.contains("filename"),
        "plain DHCP clients get no boot file: {leases}"
    );
    let _ = net
        .in_cli(&["dhclient", "-x", "-lf"])
        .arg(&lease_file)
        .arg(&plain)
        .output();
}

#[test]
fn fifty_clients_at_once_get_fifty_distinct_addresses() {
    if !can_run(&["busybox"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut net = Net::new("f");
    let _srv = Server::start(&net, &full_config(dir.path()));
    let ifaces: Vec<String> = (0..50)
        .map(|i| net.add_client(&format!("52:54:00:00:20:{i:02x}")))
        .collect();
    let net = &net;
    let addrs: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = ifaces
            .iter()
            .map(|i| s.spawn(move || udhcpc(net, i, &[])["ip"].clone()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let unique: HashSet<&String> = addrs.iter().collect();
    assert_eq!(
        unique.len(),
        50,
        "duplicate addresses handed out: {addrs:?}"
    );
    assert!(addrs.iter().all(|a| in_range(a)), "{addrs:?}");
}

#[test]
fn leases_survive_restart_and_kill_9() {
    if !can_run(&["busybox"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut net = Net::new("k");
    let config = full_config(dir.path());
    let mut srv = Server::start(&net, &config);
    let a = net.add_client("52:54:00:00:30:01");
    let first = udhcpc(&net, &a, &[])["ip"].clone();

    // Graceful restart: SIGTERM exits cleanly and the lease is remembered.
    assert!(
        srv.stop().success(),
        "server did not exit cleanly on SIGTERM:\n{}",
        srv.log_text()
    );
    assert!(srv.log_text().contains("all services stopped"));
    let mut srv = Server::start(&net, &config);
    let b = net.add_client("52:54:00:00:30:02");
    let second = udhcpc(&net, &b, &[])["ip"].clone();
    assert_ne!(second, first, "restart forgot {first} is leased");

    // Crash: kill -9 right after the ACK. Both leases must still be held.
    srv.kill9();
    let _srv = Server::start(&net, &config);
    let c = net.add_client("52:54:00:00:30:03");
    let third = udhcpc(&net, &c, &[])["ip"].clone();
    assert!(
        third != first && third != second,
        "after kill -9 {third} was handed out again"
    );
    assert_eq!(
        udhcpc(&net, &a, &[])["ip"],
        first,
        "a returning client keeps its address"
    );
}

#[test]
fn proxy_mode_gives_boot_information_and_no_address() {
    if !can_run(&["busybox"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut net = Net::new("p");
    let config = write_config(
        dir.path(),
        "[server]\ninterface = \"rbr0\"\naddress = \"10.44.0.1\"\n[dhcp]\nmode = \"proxy\"\n",
    );
    let srv = Server::start(&net, &config);
    // The address a PXE client has from the LAN's own DHCP server by the time it
    // asks the proxy on port 4011.
    let c = net.add_static_client(PXE_CLIENT_IP);
    let mac = [0x52, 0x54, 0x00, 0xee, 0x00, 0x01];
    for (arch, vendor, loader) in [
        (0u16, "PXEClient:Arch:00000:UNDI:002001", "undionly.kpxe"),
        (7, "PXEClient:Arch:00007:UNDI:003016", "snponly.efi"),
    ] {
        let what = format!("arch {arch}");
        let (offer, ack, ack_from) = common::netns::in_netns(net.cli.name(), || {
            let sock = common::netns::udp_on(&c, 68, std::time::Duration::from_secs(3));
            // 1. DHCPDISCOVER, broadcast to port 67: the proxy offers boot information.
            let xid = 0x5000_0000 | u32::from(arch);
            let discover = pxe_message(MessageType::Discover, xid, mac, arch, vendor, None);
            sock.send_to(&encode(&discover), ("255.255.255.255", 67))
                .unwrap();
            let (offer, _) = receive(&sock, xid).expect("no proxy OFFER on port 68");
            // 2. DHCPREQUEST to the proxy's port 4011, with the address it now has.
            let xid = xid + 1;
            let ciaddr: Ipv4Addr = PXE_CLIENT_IP.parse().unwrap();
            let request = pxe_message(MessageType::Request, xid, mac, arch, vendor, Some(ciaddr));
            sock.send_to(&encode(&request), (SERVER_IP, 4011)).unwrap();
            let (ack, from) = receive(&sock, xid).expect("no answer from port 4011");
            (offer, ack, from)
        });
        let server: Ipv4Addr = SERVER_IP.parse().unwrap();
        for (msg, kind) in [(&offer, MessageType::Offer), (&ack, MessageType::Ack)] {
            let what = format!("{what} {kind:?}");
            assert_eq!(msg.opcode(), Opcode::BootReply, "{what}");
            assert_eq!(msg.opts().msg_type(), Some(kind), "{what}");
            assert_eq!(msg.chaddr(), &mac, "{what}");
            assert_eq!(
                msg.yiaddr(),
                Ipv4Addr::UNSPECIFIED,
                "{what}: a proxy never assigns an address"
            );
            assert_eq!(msg.siaddr(), server, "{what}: next-server");
            // The header's 128-byte file field, up to its NUL.
            let file = msg.fname().unwrap_or_default();
            let file = file.split(|&b| b == 0).next().unwrap_or_default();
            assert_eq!(file, loader.as_bytes(), "{what}: file field");
            assert_eq!(
                msg.opts().get(OptionCode::BootfileName),
                Some(&DhcpOption::BootfileName(loader.as_bytes().to_vec())),
                "{what}: option 67"
            );
            assert_eq!(
                msg.opts().get(OptionCode::ClassIdentifier),
                Some(&DhcpOption::ClassIdentifier(b"PXEClient".to_vec())),
                "{what}: option 60"
            );
            assert_eq!(
                msg.opts().get(OptionCode::ServerIdentifier),
                Some(&DhcpOption::ServerIdentifier(server)),
                "{what}"
            );
            for code in [
                OptionCode::AddressLeaseTime,
                OptionCode::SubnetMask,
                OptionCode::Router,
                OptionCode::DomainNameServer,
            ] {
                assert!(
                    msg.opts().get(code).is_none(),
                    "{what}: addressing option {code:?} is the LAN server's job"
                );
            }
        }
        assert_eq!(
            ack_from,
            std::net::SocketAddr::from((server, 4011)),
            "{what}: the ACK comes from the proxy port"
        );
    }

    // A real DHCP client, for which the proxy must not hand out a lease either
    // (there is no other DHCP server here, so udhcpc gets nothing).
    assert_eq!(
        udhcpc_try(&net, &c, PXE_BIOS),
        None,
        "udhcpc got a lease from a proxy-mode server"
    );
    let log = srv.log_text();
    assert!(log.contains("proxyDHCP listening on port 4011"), "{log}");
}

const PXE_CLIENT_IP: &str = "10.44.0.60";

/// What PXE firmware sends: option 60 with its architecture, 93, 94, 97, the
/// MAC in chaddr and, on the port-4011 REQUEST, its address in ciaddr.
fn pxe_message(
    kind: MessageType,
    xid: u32,
    mac: [u8; 6],
    arch: u16,
    vendor: &str,
    ciaddr: Option<Ipv4Addr>,
) -> Message {
    let zero = Ipv4Addr::UNSPECIFIED;
    let mut m = Message::new_with_id(xid, ciaddr.unwrap_or(zero), zero, zero, zero, &mac);
    m.set_opcode(Opcode::BootRequest);
    if ciaddr.is_none() {
        m.set_flags(Flags::default().set_broadcast());
    }
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(kind));
    o.insert(DhcpOption::MaxMessageSize(1260));
    o.insert(DhcpOption::ParameterRequestList(vec![
        OptionCode::SubnetMask,
        OptionCode::Router,
        OptionCode::DomainNameServer,
        OptionCode::VendorExtensions,
        OptionCode::ClassIdentifier,
        OptionCode::TFTPServerName,
        OptionCode::BootfileName,
    ]));
    o.insert(DhcpOption::ClientSystemArchitecture(Architecture(arch)));
    o.insert(DhcpOption::ClientNetworkInterface(1, 2, 1));
    let mut guid = vec![0u8];
    guid.extend_from_slice(&[0x11; 16]);
    o.insert(DhcpOption::ClientMachineIdentifier(guid));
    o.insert(DhcpOption::ClassIdentifier(vendor.as_bytes().to_vec()));
    m
}

fn encode(m: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    m.encode(&mut Encoder::new(&mut out)).unwrap();
    out
}

/// The next reply with transaction `xid`, or None once the socket times out.
fn receive(sock: &std::net::UdpSocket, xid: u32) -> Option<(Message, std::net::SocketAddr)> {
    let mut buf = [0u8; 1500];
    loop {
        let (n, from) = sock.recv_from(&mut buf).ok()?;
        if let Ok(m) = Message::decode(&mut Decoder::new(&buf[..n])) {
            if m.xid() == xid && m.opcode() == Opcode::BootReply {
                return Some((m, from));
            }
        }
    }
}

/// The `Error: ...` line of a command's stderr (the rest is its log).
fn error_line(stderr: &str) -> String {
    stderr
        .lines()
        .find(|l| l.starts_with("Error: "))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn refuses_to_start_on_a_missing_interface_or_a_range_outside_its_subnet() {
    if !can_run(&[]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let net = Net::new("r");
    let rollout = |command: &str, body: &str| {
        let config = write_config(dir.path(), body);
        let out = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                net.srv.name(),
                env!("CARGO_BIN_EXE_rollout"),
                command,
                "--config",
            ])
            .arg(&config)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // What serve refuses, check-config refuses with the same message (it used to
    // call these files valid: the interface checks ran only in serve).
    let run = |body: &str| {
        let (ok, err) = rollout("serve", body);
        let (checked, check_err) = rollout("check-config", body);
        if !ok {
            assert!(!checked, "check-config accepts what serve refuses: {err}");
            assert_eq!(error_line(&check_err), error_line(&err));
            assert!(!error_line(&err).is_empty(), "{err}");
        }
        (ok, err)
    };
    let (ok, err) = run("[server]\ninterface = \"nosuch0\"\naddress = \"10.44.0.1\"\n[dhcp]\nmode = \"full\"\nrange = [\"10.44.0.100\", \"10.44.0.110\"]\n");
    assert!(
        !ok && err.contains("interface nosuch0 does not exist"),
        "{err}"
    );
    let (ok, err) = run("[server]\ninterface = \"rbr0\"\naddress = \"10.44.0.1\"\n[dhcp]\nmode = \"full\"\nrange = [\"10.9.0.100\", \"10.9.0.110\"]\n");
    assert!(
        !ok && err.contains("outside rbr0's subnet 10.44.0.0/24"),
        "{err}"
    );
    let (ok, err) = run("[server]\naddress = \"10.44.0.1\"\n[dhcp]\nmode = \"full\"\nrange = [\"10.44.0.100\", \"10.44.0.110\"]\n");
    assert!(!ok && err.contains("server.interface"), "{err}");
    let missing = dir.path().join("no-ipxe-here");
    let (ok, err) = run(&format!(
        "[server]\ninterface = \"rbr0\"\naddress = \"10.44.0.1\"\ntftp_root = {missing:?}\n"
    ));
    assert!(!ok && err.contains("no-ipxe-here"), "{err}");
    // A port already taken (another web server on 80) is a clear startup error.
    let mut holder = net_listener(net.srv.name(), 80);
    let (ok, err) = rollout("serve", "[server]\ninterface = \"rbr0\"\naddress = \"10.44.0.1\"\n[dhcp]\nmode = \"full\"\nrange = [\"10.44.0.100\", \"10.44.0.110\"]\n");
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(
        !ok && err.contains("cannot listen on 10.44.0.1:80") && err.contains("http_port"),
        "{err}"
    );
}

/// A process holding TCP `port` on the server address inside namespace `ns`.
fn net_listener(ns: &str, port: u16) -> std::process::Child {
    use std::io::BufRead;
    // Holds the port until killed, and says when it is bound: a fixed sleep
    // raced with a slow start, and a holder that timed out let the server
    // start for real, so the test waited on it forever.
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "python3", "-c"])
        .arg(format!("import socket, time\ns = socket.socket()\ns.bind(('{SERVER_IP}', {port}))\ns.listen()\nprint('bound', flush=True)\ntime.sleep(3600)"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(
        line.trim(),
        "bound",
        "the port holder could not bind {port}"
    );
    child
}
