//! DhcpCore decisions, packet in → reply out, with no sockets.

use super::core::*;
use super::leases::{Lease, LeaseStore, LeaseTable, MemoryLeaseStore, Range};
use super::limits::RateLimit;
use super::pxe::BootTargets;
use crate::config::DhcpMode;
use dhcproto::v4::{Architecture, DhcpOption, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 44, 0, 1);
const KNOWN: [u8; 6] = [0x52, 0x54, 0, 0, 0, 1];

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn core(mode: DhcpMode) -> DhcpCore {
    core_with(mode, Box::new(MemoryLeaseStore::default()), |_| {})
}

/// `core(mode)` over `store`, its config changed by `tweak`.
fn core_with(
    mode: DhcpMode,
    store: Box<dyn LeaseStore>,
    tweak: impl FnOnce(&mut CoreConfig),
) -> DhcpCore {
    let mut reservations = HashMap::new();
    reservations.insert("52:54:00:00:00:01".to_string(), ip("10.44.0.11"));
    // A node declared on the relayed subnet.
    reservations.insert("52:54:00:00:02:09".to_string(), ip("10.45.0.20"));
    let mut hostnames = HashMap::new();
    hostnames.insert("52:54:00:00:00:01".to_string(), "node1".to_string());
    let leases = LeaseTable::load(store, reservations).unwrap();
    let mut cfg = CoreConfig {
        mode,
        server_ip: SERVER,
        local: Subnet {
            range: Some(Range {
                first: ip("10.44.0.100"),
                last: ip("10.44.0.199"),
            }),
            netmask: ip("255.255.255.0"),
            router: Some(SERVER),
            dns: vec![SERVER],
        },
        relays: vec![Subnet {
            range: Some(Range {
                first: ip("10.45.0.50"),
                last: ip("10.45.0.60"),
            }),
            netmask: ip("255.255.255.0"),
            router: None,
            dns: vec![],
        }],
        lease_time: 3600,
        quarantine_time: 600,
        targets: BootTargets::new("http://10.44.0.1"),
        hostnames,
    };
    tweak(&mut cfg);
    DhcpCore::new(cfg, leases)
}

fn mac(n: u8) -> [u8; 6] {
    [0x52, 0x54, 0, 0, 1, n]
}

fn msg(chaddr: [u8; 6], kind: MessageType) -> Message {
    let mut m = Message::new_with_id(
        0x1234,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &chaddr,
    );
    m.set_opcode(Opcode::BootRequest);
    m.opts_mut().insert(DhcpOption::MessageType(kind));
    m
}

fn pxe(mut m: Message, arch: u16) -> Message {
    m.opts_mut().insert(DhcpOption::ClassIdentifier(
        b"PXEClient:Arch:00000:UNDI:002001".to_vec(),
    ));
    m.opts_mut()
        .insert(DhcpOption::ClientSystemArchitecture(Architecture::from(
            arch,
        )));
    m
}

fn reply(o: Outcome) -> Reply {
    match o {
        Outcome::Reply(r) => r,
        other => panic!("expected a reply, got {other:?}"),
    }
}

fn kind(r: &Reply) -> MessageType {
    r.msg.opts().msg_type().unwrap()
}

fn bootfile(r: &Reply) -> Option<String> {
    match r.msg.opts().get(OptionCode::BootfileName) {
        Some(DhcpOption::BootfileName(b)) => Some(String::from_utf8(b.clone()).unwrap()),
        _ => None,
    }
}

/// DISCOVER → OFFER → REQUEST → ACK, the way a client does it.
fn lease(c: &mut DhcpCore, chaddr: [u8; 6], now: u64) -> Ipv4Addr {
    let offer = reply(c.handle(&msg(chaddr, MessageType::Discover), Via::Server, now));
    assert_eq!(kind(&offer), MessageType::Offer);
    let mut req = msg(chaddr, MessageType::Request);
    req.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
    req.opts_mut()
        .insert(DhcpOption::RequestedIpAddress(offer.msg.yiaddr()));
    let ack = reply(c.handle(&req, Via::Server, now));
    assert_eq!(kind(&ack), MessageType::Ack);
    assert_eq!(ack.msg.yiaddr(), offer.msg.yiaddr());
    ack.msg.yiaddr()
}

#[test]
fn bios_pxe_discover_gets_an_address_and_undionly_over_tftp() {
    let mut c = core(DhcpMode::Full);
    let r = reply(c.handle(
        &pxe(msg(mac(1), MessageType::Discover), 0),
        Via::Server,
        100,
    ));
    assert_eq!(kind(&r), MessageType::Offer);
    assert_eq!(r.msg.yiaddr(), ip("10.44.0.100"));
    assert_eq!(r.msg.siaddr(), SERVER);
    assert_eq!(bootfile(&r).as_deref(), Some("undionly.kpxe"));
    assert_eq!(r.msg.fname_str().unwrap().unwrap(), "undionly.kpxe");
    assert_eq!(r.dest, SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT));
    assert!(
        r.summary.contains("arch=bios") && r.summary.contains("tftp undionly.kpxe"),
        "{}",
        r.summary
    );
}

#[test]
fn ipxe_client_gets_the_script_url_not_another_loader() {
    let mut c = core(DhcpMode::Full);
    let mut m = pxe(msg(mac(1), MessageType::Discover), 7);
    m.opts_mut().insert(DhcpOption::UserClass(b"iPXE".to_vec()));
    let r = reply(c.handle(&m, Via::Server, 100));
    assert_eq!(bootfile(&r).as_deref(), Some("http://10.44.0.1/boot.ipxe"));
}

#[test]
fn known_mac_gets_its_reservation_and_hostname() {
    let mut c = core(DhcpMode::Full);
    let r = reply(c.handle(&pxe(msg(KNOWN, MessageType::Discover), 7), Via::Server, 100));
    assert_eq!(r.msg.yiaddr(), ip("10.44.0.11"));
    assert_eq!(
        r.msg.opts().get(OptionCode::Hostname),
        Some(&DhcpOption::Hostname("node1".into()))
    );
    assert_eq!(bootfile(&r).as_deref(), Some("snponly.efi"));
    assert_eq!(lease(&mut c, KNOWN, 100), ip("10.44.0.11"));
}

#[test]
fn fifty_clients_get_fifty_distinct_addresses_and_keep_them() {
    let mut c = core(DhcpMode::Full);
    let addrs: Vec<_> = (0..50).map(|i| lease(&mut c, mac(i), 100)).collect();
    let unique: std::collections::HashSet<_> = addrs.iter().collect();
    assert_eq!(unique.len(), 50);
    assert!(
        !addrs.contains(&ip("10.44.0.11")),
        "reservation handed to a stranger"
    );
    for (i, a) in addrs.iter().enumerate() {
        assert_eq!(
            lease(&mut c, mac(i as u8), 200),
            *a,
            "client {i} renewed to another address"
        );
    }
}

#[test]
fn request_for_another_server_withdraws_our_offer() {
    let mut c = core(DhcpMode::Full);
    let offer = reply(c.handle(&msg(mac(1), MessageType::Discover), Via::Server, 100));
    let mut req = msg(mac(1), MessageType::Request);
    req.opts_mut()
        .insert(DhcpOption::ServerIdentifier(ip("10.44.0.254")));
    req.opts_mut()
        .insert(DhcpOption::RequestedIpAddress(ip("10.44.0.230")));
    assert!(matches!(
        c.handle(&req, Via::Server, 100),
        Outcome::Ignore(_)
    ));
    let next = reply(c.handle(&msg(mac(2), MessageType::Discover), Via::Server, 100));
    assert_eq!(
        next.msg.yiaddr(),
        offer.msg.yiaddr(),
        "withdrawn offer is free again"
    );
}

#[test]
fn init_reboot_for_someone_elses_address_is_naked() {
    let mut c = core(DhcpMode::Full);
    let a = lease(&mut c, mac(1), 100);
    let mut req = msg(mac(2), MessageType::Request);
    req.opts_mut().insert(DhcpOption::RequestedIpAddress(a));
    let r = reply(c.handle(&req, Via::Server, 100));
    assert_eq!(kind(&r), MessageType::Nak);
    assert_eq!(r.dest.ip(), &Ipv4Addr::BROADCAST);
    // Outside every subnet we serve: silence, not a NAK.
    let mut req = msg(mac(2), MessageType::Request);
    req.opts_mut()
        .insert(DhcpOption::RequestedIpAddress(ip("192.0.2.7")));
    assert!(matches!(
        c.handle(&req, Via::Server, 100),
        Outcome::Ignore(_)
    ));
}

#[test]
fn renewing_unicasts_to_ciaddr_and_extends() {
    let mut c = core(DhcpMode::Full);
    let a = lease(&mut c, mac(1), 100);
    let mut req = msg(mac(1), MessageType::Request);
    req.set_ciaddr(a);
    let r = reply(c.handle(&req, Via::Server, 2000));
    assert_eq!(kind(&r), MessageType::Ack);
    assert_eq!(r.dest, SocketAddrV4::new(a, CLIENT_PORT));
    assert_eq!(c.leases.get(a).unwrap().expires, 2000 + 3600);
}

#[test]
fn release_frees_and_decline_quarantines() {
    let mut c = core(DhcpMode::Full);
    let a = lease(&mut c, mac(1), 100);
    let mut rel = msg(mac(1), MessageType::Release);
    rel.set_ciaddr(a);
    assert!(matches!(c.handle(&rel, Via::Server, 150), Outcome::Done(_)));
    let b = lease(&mut c, mac(2), 200);
    assert_eq!(
        b,
        ip("10.44.0.101"),
        "released address stays preferred for its old owner"
    );
    assert_eq!(lease(&mut c, mac(1), 200), a, "old owner gets it back");

    let mut dec = msg(mac(2), MessageType::Decline);
    dec.opts_mut().insert(DhcpOption::RequestedIpAddress(b));
    assert!(matches!(c.handle(&dec, Via::Server, 300), Outcome::Done(_)));
    let next = reply(c.handle(&msg(mac(2), MessageType::Discover), Via::Server, 301));
    assert_ne!(
        next.msg.yiaddr(),
        b,
        "declined address offered again during quarantine"
    );
    // Someone else cannot decline an address that is not theirs.
    let mut dec = msg(mac(9), MessageType::Decline);
    dec.opts_mut().insert(DhcpOption::RequestedIpAddress(a));
    assert!(matches!(
        c.handle(&dec, Via::Server, 302),
        Outcome::Ignore(_)
    ));
}

#[test]
fn inform_gets_options_without_a_lease() {
    let mut c = core(DhcpMode::Full);
    let mut m = msg(mac(3), MessageType::Inform);
    m.set_ciaddr(ip("10.44.0.150"));
    let r = reply(c.handle(&m, Via::Server, 100));
    assert_eq!(kind(&r), MessageType::Ack);
    assert!(r.msg.yiaddr().is_unspecified());
    assert!(r.msg.opts().get(OptionCode::AddressLeaseTime).is_none());
    assert_eq!(r.dest, SocketAddrV4::new(ip("10.44.0.150"), CLIENT_PORT));
}

#[test]
fn proxy_mode_gives_boot_info_but_no_address_and_only_to_pxe_clients() {
    let mut c = core(DhcpMode::Proxy);
    assert!(matches!(
        c.handle(&msg(mac(1), MessageType::Discover), Via::Server, 100),
        Outcome::Ignore(_)
    ));
    let r = reply(c.handle(
        &pxe(msg(mac(1), MessageType::Discover), 0),
        Via::Server,
        100,
    ));
    assert_eq!(kind(&r), MessageType::Offer);
    assert!(r.msg.yiaddr().is_unspecified());
    assert!(r.msg.opts().get(OptionCode::SubnetMask).is_none());
    assert!(r.msg.opts().get(OptionCode::AddressLeaseTime).is_none());
    assert_eq!(bootfile(&r).as_deref(), Some("undionly.kpxe"));
    assert_eq!(
        r.msg.opts().get(OptionCode::ClassIdentifier),
        Some(&DhcpOption::ClassIdentifier(b"PXEClient".to_vec()))
    );
    // Port 4011: REQUEST → ACK unicast back to the client's source.
    let src = SocketAddrV4::new(ip("192.168.7.20"), 68);
    let r = reply(c.handle(
        &pxe(msg(mac(1), MessageType::Request), 7),
        Via::Proxy(src),
        100,
    ));
    assert_eq!(kind(&r), MessageType::Ack);
    assert_eq!(r.dest, src);
    assert_eq!(bootfile(&r).as_deref(), Some("snponly.efi"));
    assert!(
        c.leases.leases().next().is_none(),
        "proxy mode must not lease"
    );
}

#[test]
fn relayed_requests_use_the_relay_subnet_and_go_back_via_the_relay() {
    let mut c = core(DhcpMode::Full);
    let mut m = msg(mac(1), MessageType::Discover);
    m.set_giaddr(ip("10.45.0.1"));
    let r = reply(c.handle(&m, Via::Server, 100));
    assert_eq!(r.msg.yiaddr(), ip("10.45.0.50"));
    assert_eq!(r.dest, SocketAddrV4::new(ip("10.45.0.1"), SERVER_PORT));
    assert_eq!(
        r.msg.opts().get(OptionCode::Router),
        Some(&DhcpOption::Router(vec![ip("10.45.0.1")]))
    );
    let mut m = msg(mac(2), MessageType::Discover);
    m.set_giaddr(ip("10.99.0.1"));
    assert!(matches!(c.handle(&m, Via::Server, 100), Outcome::Ignore(_)));
}

#[test]
fn a_reservation_on_a_relayed_subnet_is_offered_there_and_only_there() {
    let mut c = core(DhcpMode::Full);
    let relayed_node = [0x52, 0x54, 0, 0, 2, 9];
    let mut m = msg(relayed_node, MessageType::Discover);
    m.set_giaddr(ip("10.45.0.1"));
    let r = reply(c.handle(&m, Via::Server, 100));
    assert_eq!(r.msg.yiaddr(), ip("10.45.0.20"));
    let mut req = msg(relayed_node, MessageType::Request);
    req.set_giaddr(ip("10.45.0.1"));
    req.opts_mut()
        .insert(DhcpOption::RequestedIpAddress(ip("10.45.0.20")));
    let r = reply(c.handle(&req, Via::Server, 101));
    assert_eq!(kind(&r), MessageType::Ack);
    assert_eq!(r.msg.yiaddr(), ip("10.45.0.20"));
    // The same machine booting on the server's own segment gets nothing: its
    // reserved address would not work there.
    match c.handle(&msg(relayed_node, MessageType::Discover), Via::Server, 102) {
        Outcome::Ignore(why) => assert!(why.contains("reserved 10.45.0.20"), "{why}"),
        _ => panic!("offered a relayed reservation on the local segment"),
    }
}

#[test]
fn pool_exhaustion_leaves_discover_unanswered_until_leases_expire() {
    // Exhaustion, not the rate limit, is under test here.
    let mut c = core(DhcpMode::Full).with_rate_limit(RateLimit {
        per_minute: 0,
        burst: 1000,
    });
    for i in 0..100 {
        lease(&mut c, mac(i), 100);
    }
    assert!(matches!(
        c.handle(&msg(mac(200), MessageType::Discover), Via::Server, 100),
        Outcome::Ignore(_)
    ));
    let r = reply(c.handle(
        &msg(mac(200), MessageType::Discover),
        Via::Server,
        100 + 3601,
    ));
    assert_eq!(kind(&r), MessageType::Offer);
}

#[test]
fn hostile_headers_are_ignored_not_panicked_on() {
    let mut c = core(DhcpMode::Full);
    let good = pxe(msg(mac(1), MessageType::Discover), 0);
    let mut bytes = vec![];
    good.encode(&mut Encoder::new(&mut bytes)).unwrap();
    bytes[2] = 200; // hlen far beyond the 16-byte chaddr field
    if let Ok(m) = Message::decode(&mut Decoder::new(&bytes)) {
        assert!(matches!(c.handle(&m, Via::Server, 100), Outcome::Ignore(_)));
    }
    let mut reply_op = good.clone();
    reply_op.set_opcode(Opcode::BootReply);
    assert!(matches!(
        c.handle(&reply_op, Via::Server, 100),
        Outcome::Ignore(_)
    ));
    let mut bootp = good;
    bootp.opts_mut().remove(OptionCode::MessageType);
    assert!(matches!(
        c.handle(&bootp, Via::Server, 100),
        Outcome::Ignore(_)
    ));
    for len in 0..bytes.len() {
        if let Ok(m) = Message::decode(&mut Decoder::new(&bytes[..len])) {
            let _ = c.handle(&m, Via::Server, 100);
        }
    }
}

fn request_for(chaddr: [u8; 6], addr: Ipv4Addr) -> Message {
    let mut req = msg(chaddr, MessageType::Request);
    req.opts_mut().insert(DhcpOption::RequestedIpAddress(addr));
    req
}

#[test]
fn a_random_mac_flood_is_rate_limited_while_known_clients_keep_their_addresses() {
    let mut c = core(DhcpMode::Full).with_rate_limit(RateLimit {
        per_minute: 60,
        burst: 3,
    });
    // A client leased before the flood.
    let before = lease(&mut c, mac(200), 100);
    // 100 DISCOVERs from made-up MACs in the same second: the rest of the burst
    // is offered.
    let flood: Vec<Outcome> = (0..100u8)
        .map(|i| {
            c.handle(
                &msg([0x02, 0xff, 0, 0, 0, i], MessageType::Discover),
                Via::Server,
                100,
            )
        })
        .collect();
    let offers = flood
        .iter()
        .filter(|o| matches!(o, Outcome::Reply(_)))
        .count();
    // The client leased before used one token.
    assert_eq!(offers, 2, "burst 3, one spent on the earlier client");
    let warned = flood
        .iter()
        .filter(|o| matches!(o, Outcome::Warn(_)))
        .count();
    assert_eq!(
        warned, 1,
        "one warning per flood second, not one per packet"
    );
    let counted = c.metrics().dhcp_rate_limited.get();
    assert_eq!(counted, 98);
    // INIT-REBOOT REQUESTs from new MACs bind nothing either.
    let o = c.handle(
        &request_for([0x02, 0xfe, 0, 0, 0, 1], ip("10.44.0.150")),
        Via::Server,
        100,
    );
    assert!(matches!(o, Outcome::Ignore(_)), "{o:?}");
    assert!(c.leases.get(ip("10.44.0.150")).is_none());
    // The declared node and the earlier client are not limited.
    assert_eq!(lease(&mut c, KNOWN, 100), ip("10.44.0.11"));
    assert_eq!(lease(&mut c, mac(200), 100), before);
    // A second later, one more new client.
    assert!(matches!(
        c.handle(&msg(mac(201), MessageType::Discover), Via::Server, 101),
        Outcome::Reply(_)
    ));
}

#[test]
fn router_dns_and_server_addresses_are_never_offered() {
    let mut c = core_with(
        DhcpMode::Full,
        Box::new(MemoryLeaseStore::default()),
        |cfg| {
            cfg.local.router = Some(ip("10.44.0.100"));
            cfg.local.dns = vec![ip("10.44.0.101"), ip("10.44.0.102")];
            cfg.server_ip = ip("10.44.0.103");
        },
    );
    let got = reply(c.handle(&msg(mac(1), MessageType::Discover), Via::Server, 100));
    assert_eq!(got.msg.yiaddr(), ip("10.44.0.104"));
    for taken in ["10.44.0.100", "10.44.0.101", "10.44.0.102", "10.44.0.103"] {
        let mut d = msg(mac(2), MessageType::Discover);
        d.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(ip(taken)));
        let r = reply(c.handle(&d, Via::Server, 100));
        assert_ne!(r.msg.yiaddr(), ip(taken));
        let r = reply(c.handle(&request_for(mac(3), ip(taken)), Via::Server, 100));
        assert_eq!(kind(&r), MessageType::Nak, "{taken} granted");
    }
}

/// A database that refuses every write (a full or read-only disk).
struct BrokenDisk;
impl LeaseStore for BrokenDisk {
    fn save(&mut self, _: &Lease) -> Result<(), crate::db::StoreError> {
        Err(crate::db::StoreError::Corrupt {
            what: "leases",
            value: "disk full".into(),
        })
    }
    fn load_all(&mut self) -> Result<Vec<Lease>, crate::db::StoreError> {
        Ok(vec![])
    }
}

#[test]
fn a_lease_that_cannot_be_persisted_is_not_acknowledged_and_is_counted() {
    let mut c = core_with(DhcpMode::Full, Box::new(BrokenDisk), |_| {});
    let offer = reply(c.handle(&msg(mac(1), MessageType::Discover), Via::Server, 100));
    let o = c.handle(&request_for(mac(1), offer.msg.yiaddr()), Via::Server, 100);
    match o {
        Outcome::Warn(line) => assert!(
            line.contains("cannot persist")
                && line.contains("not acknowledged")
                && line.contains("disk full"),
            "{line}"
        ),
        other => panic!("expected a warning and no ACK, got {other:?}"),
    }
    let failures = &c.metrics().dhcp_persist_failures;
    assert_eq!(failures.get(), 1);
}
