//! A lean DHCP load generator for `scripts/bench-dhcp.sh`'s overload rows:
//! full DISCOVER → OFFER → REQUEST → ACK exchanges at a fixed offered rate,
//! as a relay sends them (unicast, giaddr set, replies to giaddr:67).
//!
//! Why not perfdhcp alone: on one CPU of its own, perfdhcp sent 33,000
//! DISCOVERs/s when asked for 40,000 here, below twice rollout's ceiling, so
//! "twice a server's ceiling" would measure the generator. This one builds each packet by patching a template (no encoder
//! on the hot path) and keeps one table of exchanges in flight, so it sends
//! what it is asked to and the server, not the load, is what saturates.
//! perfdhcp still measures the ceilings; this one only adds the overload.
//!
//!   dhcp_load --server 10.44.0.1 --local 10.44.0.2 --rate 40000 --seconds 4 --clients 20000
//!
//! Prints `sent N`, `offers N`, `requests N`, `acks N`, `rate X` (ACKs per
//! second of the offered window; replies up to --wait-ms later still count).

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

const MAGIC: [u8; 4] = [99, 130, 83, 99];
const DISCOVER: u8 = 1;
const OFFER: u8 = 2;
const REQUEST: u8 = 3;
const ACK: u8 = 5;

struct Args {
    server: Ipv4Addr,
    local: Ipv4Addr,
    rate: u64,
    seconds: f64,
    clients: u32,
    wait: Duration,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        server: Ipv4Addr::new(10, 44, 0, 1),
        local: Ipv4Addr::new(10, 44, 0, 2),
        rate: 1000,
        seconds: 4.0,
        clients: 20_000,
        wait: Duration::from_millis(100),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().ok_or(format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {v}: {e}");
        match flag.as_str() {
            "--server" => a.server = v.parse().map_err(|e| bad(&e))?,
            "--local" => a.local = v.parse().map_err(|e| bad(&e))?,
            "--rate" => a.rate = v.parse().map_err(|e| bad(&e))?,
            "--seconds" => a.seconds = v.parse().map_err(|e| bad(&e))?,
            "--clients" => a.clients = v.parse().map_err(|e| bad(&e))?,
            "--wait-ms" => a.wait = Duration::from_millis(v.parse().map_err(|e| bad(&e))?),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if a.rate == 0 || a.clients == 0 || a.seconds <= 0.0 {
        return Err("--rate, --clients and --seconds must be above 0".into());
    }
    Ok(a)
}

/// A BOOTREQUEST from a relay at `giaddr` with the options given (type first).
fn template(giaddr: Ipv4Addr, options: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 240];
    p[0] = 1; // BOOTREQUEST
    p[1] = 1; // Ethernet
    p[2] = 6;
    p[3] = 1; // one relay hop
    p[24..28].copy_from_slice(&giaddr.octets());
    p[236..240].copy_from_slice(&MAGIC);
    p.extend_from_slice(options);
    p.push(255);
    p.resize(300, 0);
    p
}

/// Client `n`'s MAC: locally administered, the index in the last four bytes.
fn set_client(p: &mut [u8], xid: u32, client: u32) {
    p[4..8].copy_from_slice(&xid.to_be_bytes());
    p[28..30].copy_from_slice(&[0x02, 0x4c]);
    p[30..34].copy_from_slice(&client.to_be_bytes());
}

/// (message type, xid, yiaddr, server identifier) of a BOOTREPLY.
fn parse_reply(p: &[u8]) -> Option<(u8, u32, [u8; 4], [u8; 4])> {
    if p.len() < 240 || p[0] != 2 || p[236..240] != MAGIC {
        return None;
    }
    let xid = u32::from_be_bytes(p[4..8].try_into().ok()?);
    let yiaddr: [u8; 4] = p[16..20].try_into().ok()?;
    let (mut kind, mut sid, mut i) = (None, None, 240);
    while i < p.len() && p[i] != 255 {
        if p[i] == 0 {
            i += 1;
            continue;
        }
        let len = *p.get(i + 1)? as usize;
        let body = p.get(i + 2..i + 2 + len)?;
        match p[i] {
            53 if len == 1 => kind = Some(body[0]),
            54 if len == 4 => sid = body.try_into().ok(),
            _ => {}
        }
        i += 2 + len;
    }
    Some((kind?, xid, yiaddr, sid?))
}

#[derive(Default)]
struct Counts {
    sent: u64,
    offers: u64,
    requests: u64,
    acks: u64,
}

fn main() {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("dhcp_load: {e}");
            std::process::exit(2);
        }
    };
    let sock = UdpSocket::bind(SocketAddrV4::new(a.local, 67)).unwrap_or_else(|e| {
        eprintln!("dhcp_load: cannot bind {}:67: {e}", a.local);
        std::process::exit(1);
    });
    sock.set_nonblocking(true).expect("nonblocking socket");
    let to = SocketAddrV4::new(a.server, 67);
    let mut discover = template(a.local, &[53, 1, DISCOVER, 55, 3, 1, 3, 6]);
    let mut request = template(
        a.local,
        &[53, 1, REQUEST, 50, 4, 0, 0, 0, 0, 54, 4, 0, 0, 0, 0],
    );
    // Where the requested address and the server identifier go in `request`.
    let (req_ip, req_sid) = (240 + 3 + 2, 240 + 3 + 6 + 2);
    // Exchanges in flight: xid → client index and whether the REQUEST went.
    let mut pending: HashMap<u32, (u32, bool)> = HashMap::new();
    let mut c = Counts::default();
    let mut buf = [0u8; 1500];
    let window = Duration::from_secs_f64(a.seconds);
    let start = Instant::now();
    let mut next_xid: u32 = 1;
    loop {
        let now = start.elapsed();
        if now >= window + a.wait {
            break;
        }
        if now < window {
            // Catch up to the offered rate; at most a burst of 64 before the replies get a turn.
            let due = (now.as_secs_f64() * a.rate as f64) as u64;
            let mut burst = 0;
            while c.sent < due && burst < 64 {
                let client = (c.sent % u64::from(a.clients)) as u32;
                set_client(&mut discover, next_xid, client);
                match sock.send_to(&discover, to) {
                    Ok(_) => {
                        pending.insert(next_xid, (client, false));
                        next_xid = next_xid.wrapping_add(1).max(1);
                        c.sent += 1;
                        burst += 1;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => panic!("dhcp_load: sending to {to}: {e}"),
                }
            }
        }
        let mut got = 0;
        while got < 128 {
            let n = match sock.recv_from(&mut buf) {
                Ok((n, _)) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("dhcp_load: receiving: {e}"),
            };
            got += 1;
            let Some((kind, xid, yiaddr, sid)) = parse_reply(&buf[..n]) else {
                continue;
            };
            match (kind, pending.get_mut(&xid)) {
                (OFFER, Some((client, requested @ false))) => {
                    *requested = true;
                    c.offers += 1;
                    set_client(&mut request, xid, *client);
                    request[req_ip..req_ip + 4].copy_from_slice(&yiaddr);
                    request[req_sid..req_sid + 4].copy_from_slice(&sid);
                    if sock.send_to(&request, to).is_ok() {
                        c.requests += 1;
                    }
                }
                (ACK, Some((_, true))) => {
                    pending.remove(&xid);
                    c.acks += 1;
                }
                _ => {}
            }
        }
        if got == 0 && (now >= window || c.sent >= (now.as_secs_f64() * a.rate as f64) as u64) {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
    println!("offered {} /s for {} s", a.rate, a.seconds);
    println!("sent {}", c.sent);
    println!("offers {}", c.offers);
    println!("requests {}", c.requests);
    println!("acks {}", c.acks);
    println!("rate {:.1}", c.acks as f64 / a.seconds);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_carries_the_offer_it_accepts() {
        let mut r = template(
            Ipv4Addr::new(10, 44, 0, 2),
            &[53, 1, REQUEST, 50, 4, 0, 0, 0, 0, 54, 4, 0, 0, 0, 0],
        );
        set_client(&mut r, 7, 0x01020304);
        r[245..249].copy_from_slice(&[10, 44, 1, 9]);
        r[251..255].copy_from_slice(&[10, 44, 0, 1]);
        let m = rollout::dhcp::decode::decode(&r).expect("a valid DHCP message");
        assert_eq!(m.xid(), 7);
        assert_eq!(&m.chaddr()[..6], &[0x02, 0x4c, 1, 2, 3, 4]);
        assert_eq!(m.giaddr(), Ipv4Addr::new(10, 44, 0, 2));
        let o = m.opts();
        assert!(matches!(
            o.get(dhcproto::v4::OptionCode::RequestedIpAddress),
            Some(dhcproto::v4::DhcpOption::RequestedIpAddress(ip)) if *ip == Ipv4Addr::new(10, 44, 1, 9)
        ));
        assert!(matches!(
            o.get(dhcproto::v4::OptionCode::ServerIdentifier),
            Some(dhcproto::v4::DhcpOption::ServerIdentifier(ip)) if *ip == Ipv4Addr::new(10, 44, 0, 1)
        ));
    }

    #[test]
    fn replies_are_read_for_type_xid_address_and_server() {
        let mut p = template(Ipv4Addr::UNSPECIFIED, &[53, 1, OFFER, 54, 4, 10, 44, 0, 1]);
        p[0] = 2;
        p[4..8].copy_from_slice(&9u32.to_be_bytes());
        p[16..20].copy_from_slice(&[10, 44, 1, 2]);
        assert_eq!(
            parse_reply(&p),
            Some((OFFER, 9, [10, 44, 1, 2], [10, 44, 0, 1]))
        );
        p[0] = 1;
        assert_eq!(parse_reply(&p), None, "a request is not a reply");
    }
}
