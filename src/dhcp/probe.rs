//! `[dhcp] ping_before_offer`: an ICMP echo to a dynamic address before it is
//! offered, as dnsmasq does. A machine that answers holds the address without a
//! lease from us (configured by hand, or leased by a server we replaced): the
//! address is quarantined like a DECLINEd one and the client is offered another.
//!
//! Raw ICMP socket (the server runs as root), bound to the provisioning
//! interface, blocking with a deadline: callers run it off the async workers.

use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

/// How long a probe waits for an echo reply: long enough for a host on the
/// same segment, short enough that the client's DISCOVER is still waiting.
pub const PROBE_WAIT: Duration = Duration::from_millis(500);

/// The RFC 1071 checksum of `data`.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An ICMP echo request with identifier `id` and sequence `seq`.
pub fn echo_request(id: u16, seq: u16) -> Vec<u8> {
    let mut p = vec![8, 0, 0, 0];
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(b"rollout-probe");
    let c = checksum(&p);
    p[2..4].copy_from_slice(&c.to_be_bytes());
    p
}

/// Whether `packet` (an IPv4 datagram as a raw socket delivers it) is the echo
/// reply from `from` to our request `id`.
pub fn is_echo_reply(packet: &[u8], from: Ipv4Addr, id: u16) -> bool {
    let Some(&vihl) = packet.first() else {
        return false;
    };
    let ihl = usize::from(vihl & 0x0f) * 4;
    let (Some(src), Some(icmp)) = (packet.get(12..16), packet.get(ihl..)) else {
        return false;
    };
    src == from.octets() && icmp.len() >= 8 && icmp[0] == 0 && icmp[4..6] == id.to_be_bytes()
}

/// Whether something on `interface` answers an echo to `ip` within `wait`.
pub fn in_use(interface: &str, ip: Ipv4Addr, wait: Duration) -> io::Result<bool> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?;
    sock.bind_device(Some(interface.as_bytes()))?;
    let id = (std::process::id() as u16) ^ (u32::from(ip) as u16);
    sock.send_to(&echo_request(id, 1), &SocketAddrV4::new(ip, 0).into())?;
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 1500];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        sock.set_read_timeout(Some(left))?;
        let n = match (&sock).read(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(false)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if is_echo_reply(&buf[..n], ip, id) {
            return Ok(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_requests_carry_a_valid_checksum() {
        let p = echo_request(0x1234, 1);
        assert_eq!((p[0], p[1]), (8, 0));
        assert_eq!(checksum(&p), 0, "a packet with its checksum sums to zero");
        assert_eq!(&p[4..6], &[0x12, 0x34]);
    }

    #[test]
    fn only_the_reply_from_the_probed_address_to_our_id_counts() {
        let from = Ipv4Addr::new(10, 44, 0, 100);
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0];
        ip.extend_from_slice(&from.octets());
        ip.extend_from_slice(&[10, 44, 0, 1]);
        let mut reply = ip.clone();
        reply.extend_from_slice(&[0, 0, 0, 0, 0x12, 0x34, 0, 1]);
        assert!(is_echo_reply(&reply, from, 0x1234));
        assert!(!is_echo_reply(&reply, from, 0x9999), "another prober's id");
        assert!(!is_echo_reply(&reply, Ipv4Addr::new(10, 44, 0, 7), 0x1234));
        let mut request = ip;
        request.extend_from_slice(&[8, 0, 0, 0, 0x12, 0x34, 0, 1]);
        assert!(!is_echo_reply(&request, from, 0x1234), "our own request");
        assert!(!is_echo_reply(&[0x45], from, 1));
    }
}
