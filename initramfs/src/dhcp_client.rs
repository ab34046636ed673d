//! A small DHCPv4 client: DISCOVER → OFFER → REQUEST → ACK on one interface.
//! Message building and reply handling are pure; `obtain` does the socket work.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::FromRawFd;
use std::time::{Duration, Instant};

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Encodable};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub addr: Ipv4Addr,
    pub netmask: Ipv4Addr,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub server_id: Ipv4Addr,
    pub lease_secs: Option<u32>,
}

impl Lease {
    pub fn prefix_len(&self) -> u32 {
        u32::from(self.netmask).count_ones()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Offer(Lease),
    Ack(Lease),
    Nak(String),
}

#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error("DHCP socket on {iface}: {source}")]
    Socket {
        iface: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no DHCP lease on {iface} after {secs} s ({detail}); is the rollout server's DHCP (or another DHCP server) reachable on this network?")]
    Timeout {
        iface: String,
        secs: u64,
        detail: String,
    },
    #[error("encoding a DHCP message: {0}")]
    Encode(String),
}

fn base(xid: u32, mac: [u8; 6], kind: MessageType) -> Message {
    let mut m = Message::new_with_id(
        xid,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &mac,
    );
    m.set_opcode(Opcode::BootRequest);
    // We have no address yet, so a unicast reply to yiaddr would be dropped by our
    // own IP stack: ask the server to broadcast.
    m.set_flags(Flags::default().set_broadcast());
    let opts = m.opts_mut();
    opts.insert(DhcpOption::MessageType(kind));
    let mut cid = vec![1u8];
    cid.extend_from_slice(&mac);
    opts.insert(DhcpOption::ClientIdentifier(cid));
    opts.insert(DhcpOption::ParameterRequestList(vec![
        OptionCode::SubnetMask,
        OptionCode::Router,
        OptionCode::DomainNameServer,
        OptionCode::AddressLeaseTime,
        OptionCode::ServerIdentifier,
    ]));
    opts.insert(DhcpOption::ClassIdentifier(b"rollout-installer".to_vec()));
    m
}

pub fn discover(xid: u32, mac: [u8; 6]) -> Result<Vec<u8>, DhcpError> {
    base(xid, mac, MessageType::Discover)
        .to_vec()
        .map_err(|e| DhcpError::Encode(e.to_string()))
}

/// REQUEST for an offered lease (SELECTING state: server id + requested address).
pub fn request(xid: u32, mac: [u8; 6], offer: &Lease) -> Result<Vec<u8>, DhcpError> {
    let mut m = base(xid, mac, MessageType::Request);
    m.opts_mut()
        .insert(DhcpOption::RequestedIpAddress(offer.addr));
    m.opts_mut()
        .insert(DhcpOption::ServerIdentifier(offer.server_id));
    m.to_vec().map_err(|e| DhcpError::Encode(e.to_string()))
}

/// Classful default when a server sends no subnet mask.
fn default_mask(a: Ipv4Addr) -> Ipv4Addr {
    match a.octets()[0] {
        0..=127 => Ipv4Addr::new(255, 0, 0, 0),
        128..=191 => Ipv4Addr::new(255, 255, 0, 0),
        _ => Ipv4Addr::new(255, 255, 255, 0),
    }
}

/// Interprets a datagram from port 67. `None` for anything not addressed to this
/// transaction and MAC (other clients' replies are broadcast too).
pub fn parse_reply(data: &[u8], xid: u32, mac: [u8; 6], from: Ipv4Addr) -> Option<Reply> {
    let m = Message::from_bytes(data).ok()?;
    if m.opcode() != Opcode::BootReply || m.xid() != xid || m.chaddr().get(..6)? != mac {
        return None;
    }
    let opts = m.opts();
    let kind = opts.msg_type()?;
    if kind == MessageType::Nak {
        let why = match opts.get(OptionCode::Message) {
            Some(DhcpOption::Message(s)) => s.clone(),
            _ => "no reason given".into(),
        };
        return Some(Reply::Nak(why));
    }
    let addr = m.yiaddr();
    if addr.is_unspecified() {
        return None;
    }
    let netmask = match opts.get(OptionCode::SubnetMask) {
        Some(DhcpOption::SubnetMask(m)) => *m,
        _ => default_mask(addr),
    };
    let router = match opts.get(OptionCode::Router) {
        Some(DhcpOption::Router(r)) => r.first().copied(),
        _ => None,
    };
    let dns = match opts.get(OptionCode::DomainNameServer) {
        Some(DhcpOption::DomainNameServer(d)) => d.clone(),
        _ => Vec::new(),
    };
    let server_id = match opts.get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(s)) => *s,
        _ if !m.siaddr().is_unspecified() => m.siaddr(),
        _ => from,
    };
    let lease_secs = match opts.get(OptionCode::AddressLeaseTime) {
        Some(DhcpOption::AddressLeaseTime(t)) => Some(*t),
        _ => None,
    };
    let lease = Lease {
        addr,
        netmask,
        router,
        dns,
        server_id,
        lease_secs,
    };
    match kind {
        MessageType::Offer => Some(Reply::Offer(lease)),
        MessageType::Ack => Some(Reply::Ack(lease)),
        _ => None,
    }
}

fn socket(iface: &str) -> std::io::Result<UdpSocket> {
    // SAFETY: plain socket(2) call; the fd is owned by the UdpSocket below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid socket we own.
    let sock = unsafe { UdpSocket::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    let set = |opt, val: *const libc::c_void, len| {
        // SAFETY: val points to len valid bytes for the duration of the call.
        if unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, opt, val, len) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    let int_len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    set(libc::SO_REUSEADDR, &one as *const _ as *const _, int_len)?;
    set(libc::SO_BROADCAST, &one as *const _ as *const _, int_len)?;
    // Bound to the boot NIC so DISCOVERs leave (and replies arrive) only there.
    set(
        libc::SO_BINDTODEVICE,
        iface.as_ptr() as *const _,
        iface.len() as libc::socklen_t,
    )?;
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 68u16.to_be(),
        sin_addr: libc::in_addr { s_addr: 0 },
        sin_zero: [0; 8],
    };
    // SAFETY: sa is a valid sockaddr_in of the size passed.
    let rc = unsafe {
        libc::bind(
            fd,
            &sa as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(sock)
}

fn random_xid() -> u32 {
    let b = *uuid::Uuid::new_v4().as_bytes();
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Waits up to `wait` for a reply to `xid` that `want` accepts.
fn await_reply(
    sock: &UdpSocket,
    xid: u32,
    mac: [u8; 6],
    wait: Duration,
    want: impl Fn(&Reply) -> bool,
) -> std::io::Result<Option<Reply>> {
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 1500];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        sock.set_read_timeout(Some(left))?;
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                let from = match from.ip() {
                    std::net::IpAddr::V4(a) => a,
                    _ => continue,
                };
                if let Some(r) = parse_reply(&buf[..n], xid, mac, from) {
                    if want(&r) {
                        return Ok(Some(r));
                    }
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None)
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Runs DISCOVER/OFFER/REQUEST/ACK on `iface` until a lease or `total` elapses.
pub fn obtain(iface: &str, mac: [u8; 6], total: Duration) -> Result<Lease, DhcpError> {
    let sock_err = |source| DhcpError::Socket {
        iface: iface.to_string(),
        source,
    };
    let sock = socket(iface).map_err(sock_err)?;
    let bcast = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
    let start = Instant::now();
    let mut wait = Duration::from_secs(2);
    let mut detail = String::from("no OFFER received");
    while start.elapsed() < total {
        let xid = random_xid();
        sock.send_to(&discover(xid, mac)?, bcast)
            .map_err(sock_err)?;
        let offer = await_reply(&sock, xid, mac, wait, |r| matches!(r, Reply::Offer(_)))
            .map_err(sock_err)?;
        wait = (wait * 2).min(Duration::from_secs(8));
        let Some(Reply::Offer(offer)) = offer else {
            continue;
        };
        for _ in 0..3 {
            sock.send_to(&request(xid, mac, &offer)?, bcast)
                .map_err(sock_err)?;
            match await_reply(&sock, xid, mac, Duration::from_secs(3), |r| {
                !matches!(r, Reply::Offer(_))
            })
            .map_err(sock_err)?
            {
                Some(Reply::Ack(lease)) => return Ok(lease),
                Some(Reply::Nak(why)) => {
                    detail = format!(
                        "server {} refused the REQUEST (NAK: {why})",
                        offer.server_id
                    );
                    break;
                }
                _ => {
                    detail = format!(
                        "OFFER of {} from {} but no ACK",
                        offer.addr, offer.server_id
                    )
                }
            }
        }
    }
    Err(DhcpError::Timeout {
        iface: iface.to_string(),
        secs: total.as_secs(),
        detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 1];

    fn server_reply(req: &[u8], kind: MessageType, yiaddr: Ipv4Addr, with_opts: bool) -> Vec<u8> {
        let req = Message::from_bytes(req).unwrap();
        let mut m = Message::new_with_id(
            req.xid(),
            Ipv4Addr::UNSPECIFIED,
            yiaddr,
            Ipv4Addr::new(10, 44, 0, 1),
            Ipv4Addr::UNSPECIFIED,
            req.chaddr(),
        );
        m.set_opcode(Opcode::BootReply);
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        if with_opts {
            let o = m.opts_mut();
            o.insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)));
            o.insert(DhcpOption::Router(vec![Ipv4Addr::new(10, 44, 0, 1)]));
            o.insert(DhcpOption::DomainNameServer(vec![Ipv4Addr::new(
                10, 44, 0, 53,
            )]));
            o.insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 44, 0, 2)));
            o.insert(DhcpOption::AddressLeaseTime(3600));
        }
        m.to_vec().unwrap()
    }

    #[test]
    fn discover_is_a_broadcast_request_with_our_mac() {
        let m = Message::from_bytes(&discover(42, MAC).unwrap()).unwrap();
        assert_eq!(m.opcode(), Opcode::BootRequest);
        assert_eq!(m.xid(), 42);
        assert_eq!(m.chaddr(), &MAC);
        assert!(m.flags().broadcast());
        assert_eq!(m.opts().msg_type(), Some(MessageType::Discover));
    }

    #[test]
    fn offer_then_request_then_ack() {
        let d = discover(7, MAC).unwrap();
        let offer = server_reply(&d, MessageType::Offer, Ipv4Addr::new(10, 44, 0, 150), true);
        let Some(Reply::Offer(lease)) = parse_reply(&offer, 7, MAC, Ipv4Addr::new(10, 44, 0, 1))
        else {
            panic!("offer not recognised");
        };
        assert_eq!(lease.addr, Ipv4Addr::new(10, 44, 0, 150));
        assert_eq!(lease.prefix_len(), 24);
        assert_eq!(lease.router, Some(Ipv4Addr::new(10, 44, 0, 1)));
        assert_eq!(lease.dns, vec![Ipv4Addr::new(10, 44, 0, 53)]);
        assert_eq!(lease.server_id, Ipv4Addr::new(10, 44, 0, 2));
        assert_eq!(lease.lease_secs, Some(3600));

        let r = Message::from_bytes(&request(7, MAC, &lease).unwrap()).unwrap();
        assert_eq!(r.opts().msg_type(), Some(MessageType::Request));
        assert_eq!(
            r.opts().get(OptionCode::RequestedIpAddress),
            Some(&DhcpOption::RequestedIpAddress(lease.addr))
        );
        assert_eq!(
            r.opts().get(OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 44, 0, 2)))
        );
        let ack = server_reply(&d, MessageType::Ack, lease.addr, true);
        assert!(matches!(
            parse_reply(&ack, 7, MAC, Ipv4Addr::BROADCAST),
            Some(Reply::Ack(_))
        ));
    }

    #[test]
    fn foreign_replies_are_ignored() {
        let d = discover(7, MAC).unwrap();
        let offer = server_reply(&d, MessageType::Offer, Ipv4Addr::new(10, 44, 0, 150), true);
        assert_eq!(
            parse_reply(&offer, 8, MAC, Ipv4Addr::BROADCAST),
            None,
            "other xid"
        );
        let other = [0x52, 0x54, 0, 0, 0, 2];
        assert_eq!(
            parse_reply(&offer, 7, other, Ipv4Addr::BROADCAST),
            None,
            "other mac"
        );
        assert_eq!(
            parse_reply(&d, 7, MAC, Ipv4Addr::BROADCAST),
            None,
            "our own request"
        );
        assert_eq!(parse_reply(b"garbage", 7, MAC, Ipv4Addr::BROADCAST), None);
    }

    #[test]
    fn sparse_replies_get_defaults_and_naks_are_reported() {
        let d = discover(9, MAC).unwrap();
        let offer = server_reply(&d, MessageType::Offer, Ipv4Addr::new(10, 44, 0, 5), false);
        let Some(Reply::Offer(l)) = parse_reply(&offer, 9, MAC, Ipv4Addr::new(10, 44, 0, 1)) else {
            panic!()
        };
        assert_eq!(l.netmask, Ipv4Addr::new(255, 0, 0, 0));
        assert_eq!(l.router, None);
        assert_eq!(
            l.server_id,
            Ipv4Addr::new(10, 44, 0, 1),
            "falls back to siaddr"
        );
        let nak = server_reply(&d, MessageType::Nak, Ipv4Addr::UNSPECIFIED, false);
        assert!(matches!(
            parse_reply(&nak, 9, MAC, Ipv4Addr::BROADCAST),
            Some(Reply::Nak(_))
        ));
    }
}
