//! Packet in, reply out: the DHCP server's decisions without sockets or clocks.
//! `DhcpCore::handle` is what the socket loop, the unit tests and the fuzz target
//! all drive, so what is tested is what runs.

use super::leases::{Lease, LeaseState, LeaseTable, Range};
use super::pxe::{boot_offer, BootOffer, BootTargets, ClientClass};
use crate::config::DhcpMode;
use dhcproto::v4::{DhcpOption, HType, Message, MessageType, Opcode, OptionCode};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};

pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;
pub const PROXY_PORT: u16 = 4011;
/// How long an unanswered OFFER holds its address.
const OFFER_HOLD_SECS: u64 = 60;

/// Addressing for one subnet: the local one or one behind a relay.
#[derive(Debug, Clone)]
pub struct Subnet {
    pub range: Option<Range>,
    pub netmask: Ipv4Addr,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
}

impl Subnet {
    fn contains(&self, ip: Ipv4Addr) -> bool {
        self.range
            .is_some_and(|r| crate::config::same_subnet(r.first, ip, self.netmask))
    }
}

pub struct CoreConfig {
    pub mode: DhcpMode,
    pub server_ip: Ipv4Addr,
    pub local: Subnet,
    pub relays: Vec<Subnet>,
    pub lease_time: u32,
    pub quarantine_time: u32,
    pub targets: BootTargets,
    /// MAC → hostname of declared nodes (sent as option 12).
    pub hostnames: HashMap<String, String>,
}

/// Which socket a request arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Port 67, broadcast or relayed.
    Server,
    /// Port 4011 (PXE boot server discovery in proxy mode), from this source.
    Proxy(SocketAddrV4),
}

#[derive(Debug)]
pub struct Reply {
    pub msg: Message,
    pub dest: SocketAddrV4,
    /// One readable line for the log: what was answered and which boot file.
    pub summary: String,
}

#[derive(Debug)]
pub enum Outcome {
    Reply(Reply),
    /// Handled without a reply (RELEASE, DECLINE), with a line for the log.
    Done(String),
    /// Not ours or not valid; logged at debug level.
    Ignore(String),
}

pub struct DhcpCore {
    cfg: CoreConfig,
    pub leases: LeaseTable,
}

/// The client's MAC in normal form, or None for non-Ethernet or malformed headers.
pub fn client_mac(msg: &Message) -> Option<String> {
    // hlen comes from the wire; dhcproto slices chaddr by it, so check first.
    if msg.htype() != HType::Eth || msg.hlen() != 6 {
        return None;
    }
    let c: [u8; 6] = msg.chaddr().get(..6)?.try_into().ok()?;
    Some(crate::mac::MacAddr::from(c).to_string())
}

fn requested_ip(msg: &Message) -> Option<Ipv4Addr> {
    match msg.opts().get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
        _ => None,
    }
}

fn server_id(msg: &Message) -> Option<Ipv4Addr> {
    match msg.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    }
}

impl DhcpCore {
    pub fn new(cfg: CoreConfig, leases: LeaseTable) -> DhcpCore {
        DhcpCore { cfg, leases }
    }

    pub fn handle(&mut self, req: &Message, via: Via, now: u64) -> Outcome {
        if req.opcode() != Opcode::BootRequest {
            return Outcome::Ignore("not a BOOTREQUEST".into());
        }
        let Some(mac) = client_mac(req) else {
            return Outcome::Ignore(format!(
                "unsupported hardware type {:?} / length {}",
                req.htype(),
                req.hlen()
            ));
        };
        let Some(kind) = req.opts().msg_type() else {
            return Outcome::Ignore(format!("{mac}: no DHCP message type (plain BOOTP)"));
        };
        let class = ClientClass::of(req);
        match self.cfg.mode {
            DhcpMode::Off => Outcome::Ignore("DHCP is off".into()),
            DhcpMode::Proxy => self.proxy(req, &mac, kind, &class, via),
            DhcpMode::Full => match via {
                Via::Proxy(_) => self.proxy(req, &mac, kind, &class, via),
                Via::Server => self.full(req, &mac, kind, &class, now),
            },
        }
    }

    fn subnet_for(&self, req: &Message) -> Option<&Subnet> {
        let giaddr = req.giaddr();
        // A relay on the provisioning segment itself serves the local pool.
        if giaddr.is_unspecified() || self.cfg.local.contains(giaddr) {
            return Some(&self.cfg.local);
        }
        self.cfg.relays.iter().find(|s| s.contains(giaddr))
    }

    fn full(
        &mut self,
        req: &Message,
        mac: &str,
        kind: MessageType,
        class: &ClientClass,
        now: u64,
    ) -> Outcome {
        let Some(subnet) = self.subnet_for(req).cloned() else {
            return Outcome::Ignore(format!(
                "{mac}: relayed from {} but no [[dhcp.relay]] covers that subnet",
                req.giaddr()
            ));
        };
        let lease_secs = u64::from(self.cfg.lease_time);
        match kind {
            MessageType::Discover => {
                if let Some(r) = self
                    .leases
                    .reservation(mac)
                    .filter(|r| !subnet.contains(*r))
                {
                    return Outcome::Ignore(format!(
                        "{mac}: reserved {r} is not on the subnet this DISCOVER came from (giaddr {}): unanswered; move the reservation or the node",
                        req.giaddr()
                    ));
                }
                let Some(ip) =
                    self.leases
                        .choose(mac, subnet.range.as_ref(), requested_ip(req), now)
                else {
                    return Outcome::Ignore(format!("{mac}: no free address in the pool: DISCOVER unanswered; widen dhcp.range or shorten lease_time"));
                };
                let offered = Lease {
                    ip,
                    mac: mac.into(),
                    expires: now + OFFER_HOLD_SECS,
                    state: LeaseState::Offered,
                };
                if let Err(e) = self.leases.record(offered) {
                    return Outcome::Ignore(format!("{mac}: cannot record offer: {e}"));
                }
                Outcome::Reply(self.reply(req, MessageType::Offer, ip, &subnet, class, mac))
            }
            MessageType::Request => self.request(req, mac, class, &subnet, now, lease_secs),
            MessageType::Decline => {
                let Some(ip) = requested_ip(req) else {
                    return Outcome::Ignore(format!("{mac}: DECLINE without an address"));
                };
                match self.leases.get(ip) {
                    Some(l) if l.mac == mac => {}
                    _ => {
                        return Outcome::Ignore(format!(
                            "{mac}: DECLINE of {ip}, which is not its lease"
                        ))
                    }
                }
                let quarantine = Lease {
                    ip,
                    mac: String::new(),
                    expires: now + u64::from(self.cfg.quarantine_time),
                    state: LeaseState::Declined,
                };
                match self.leases.record(quarantine) {
                    Ok(()) => Outcome::Done(format!(
                        "{mac}: DECLINE {ip}: address in use by another host, quarantined for {} s",
                        self.cfg.quarantine_time
                    )),
                    Err(e) => Outcome::Ignore(format!("{mac}: cannot record DECLINE: {e}")),
                }
            }
            MessageType::Release => {
                let ip = req.ciaddr();
                match self.leases.get(ip) {
                    Some(l) if l.mac == mac && l.state == LeaseState::Bound => {}
                    _ => {
                        return Outcome::Ignore(format!(
                            "{mac}: RELEASE of {ip}, which is not its lease"
                        ))
                    }
                }
                let released = Lease {
                    ip,
                    mac: mac.into(),
                    expires: now,
                    state: LeaseState::Released,
                };
                match self.leases.record(released) {
                    Ok(()) => Outcome::Done(format!("{mac}: RELEASE {ip}")),
                    Err(e) => Outcome::Ignore(format!("{mac}: cannot record RELEASE: {e}")),
                }
            }
            MessageType::Inform => {
                let mut r = self.reply(
                    req,
                    MessageType::Ack,
                    Ipv4Addr::UNSPECIFIED,
                    &subnet,
                    class,
                    mac,
                );
                // INFORM: configuration only, no lease; answer the address it already has.
                for code in [
                    OptionCode::AddressLeaseTime,
                    OptionCode::Renewal,
                    OptionCode::Rebinding,
                ] {
                    r.msg.opts_mut().remove(code);
                }
                if !req.ciaddr().is_unspecified() && req.giaddr().is_unspecified() {
                    r.dest = SocketAddrV4::new(req.ciaddr(), CLIENT_PORT);
                }
                r.summary = format!("INFORM from {} → ACK (options only)", req.ciaddr());
                Outcome::Reply(r)
            }
            other => Outcome::Ignore(format!("{mac}: {other:?} is not a client message")),
        }
    }

    fn request(
        &mut self,
        req: &Message,
        mac: &str,
        class: &ClientClass,
        subnet: &Subnet,
        now: u64,
        lease_secs: u64,
    ) -> Outcome {
        let selecting = server_id(req);
        if let Some(id) = selecting {
            if id != self.cfg.server_ip {
                // The client took another server's offer: free ours.
                self.leases.withdraw_offer(mac);
                return Outcome::Ignore(format!("{mac}: REQUEST for server {id}, not us"));
            }
        }
        // SELECTING and INIT-REBOOT name the address in option 50; RENEWING and
        // REBINDING put it in ciaddr.
        let wanted =
            requested_ip(req).or_else(|| Some(req.ciaddr()).filter(|ip| !ip.is_unspecified()));
        let Some(wanted) = wanted else {
            return Outcome::Reply(self.nak(req, mac, "REQUEST names no address"));
        };
        let in_range = subnet.range.is_some_and(|r| r.contains(wanted));
        let ok = self
            .leases
            .reservation(mac)
            .map_or(in_range, |r| r == wanted && subnet.contains(r))
            && self.leases.available_to(wanted, mac, now);
        if !ok {
            if selecting.is_none() && !subnet.contains(wanted) {
                // INIT-REBOOT for a network we do not serve: stay silent (RFC 2131 4.3.2),
                // the client may be on another segment we just hear.
                return Outcome::Ignore(format!(
                    "{mac}: REQUEST for {wanted}, outside our subnets"
                ));
            }
            return Outcome::Reply(self.nak(
                req,
                mac,
                &format!("{wanted} is not available to this client"),
            ));
        }
        let bound = Lease {
            ip: wanted,
            mac: mac.into(),
            expires: now + lease_secs,
            state: LeaseState::Bound,
        };
        // Persist before answering: an ACK the server forgets could be handed out twice.
        if let Err(e) = self.leases.record(bound) {
            return Outcome::Ignore(format!(
                "{mac}: cannot persist lease for {wanted}: {e}; not acknowledging"
            ));
        }
        Outcome::Reply(self.reply(req, MessageType::Ack, wanted, subnet, class, mac))
    }

    fn proxy(
        &mut self,
        req: &Message,
        mac: &str,
        kind: MessageType,
        class: &ClientClass,
        via: Via,
    ) -> Outcome {
        if !class.pxe && !class.ipxe {
            return Outcome::Ignore(format!("{mac}: proxy mode answers PXE clients only"));
        }
        let answer = match (kind, via) {
            (MessageType::Discover, Via::Server) => MessageType::Offer,
            (MessageType::Request, Via::Proxy(_)) => MessageType::Ack,
            (MessageType::Request, Via::Server) => {
                return Outcome::Ignore(format!(
                    "{mac}: REQUEST on port 67 is for the LAN's DHCP server"
                ))
            }
            (other, _) => return Outcome::Ignore(format!("{mac}: proxy mode ignores {other:?}")),
        };
        let subnet = self.cfg.local.clone();
        let mut r = self.reply(req, answer, Ipv4Addr::UNSPECIFIED, &subnet, class, mac);
        // Proxy replies carry boot information only; the LAN's server owns addressing.
        for code in [
            OptionCode::AddressLeaseTime,
            OptionCode::Renewal,
            OptionCode::Rebinding,
            OptionCode::SubnetMask,
            OptionCode::Router,
            OptionCode::DomainNameServer,
            OptionCode::Hostname,
        ] {
            r.msg.opts_mut().remove(code);
        }
        if let Via::Proxy(src) = via {
            r.dest = src;
        }
        r.summary = format!("proxy {}", r.summary);
        Outcome::Reply(r)
    }

    fn reply(
        &self,
        req: &Message,
        kind: MessageType,
        yiaddr: Ipv4Addr,
        subnet: &Subnet,
        class: &ClientClass,
        mac: &str,
    ) -> Reply {
        let mut msg = Message::new_with_id(
            req.xid(),
            Ipv4Addr::UNSPECIFIED,
            yiaddr,
            self.cfg.server_ip,
            req.giaddr(),
            req.chaddr(),
        );
        msg.set_opcode(Opcode::BootReply)
            .set_htype(req.htype())
            .set_flags(req.flags());
        let opts = msg.opts_mut();
        opts.insert(DhcpOption::MessageType(kind));
        opts.insert(DhcpOption::ServerIdentifier(self.cfg.server_ip));
        opts.insert(DhcpOption::AddressLeaseTime(self.cfg.lease_time));
        opts.insert(DhcpOption::Renewal(self.cfg.lease_time / 2));
        opts.insert(DhcpOption::Rebinding(self.cfg.lease_time / 8 * 7));
        opts.insert(DhcpOption::SubnetMask(subnet.netmask));
        let router = subnet
            .router
            .or_else(|| Some(req.giaddr()).filter(|g| !g.is_unspecified()));
        if let Some(router) = router {
            opts.insert(DhcpOption::Router(vec![router]));
        }
        if !subnet.dns.is_empty() {
            opts.insert(DhcpOption::DomainNameServer(subnet.dns.clone()));
        }
        if let Some(name) = self.cfg.hostnames.get(mac) {
            opts.insert(DhcpOption::Hostname(name.clone()));
        }
        let boot = boot_offer(class, &self.cfg.targets);
        match &boot {
            BootOffer::None { .. } => {}
            BootOffer::Tftp { file } | BootOffer::Http { url: file } => {
                // The header's file field holds 128 bytes; option 67 carries longer URLs.
                if file.len() < 128 {
                    msg.set_fname_str(file);
                }
                let opts = msg.opts_mut();
                opts.insert(DhcpOption::BootfileName(file.clone().into_bytes()));
                opts.insert(DhcpOption::TFTPServerName(
                    self.cfg.server_ip.to_string().into_bytes(),
                ));
            }
        }
        if class.pxe || class.ipxe {
            let opts = msg.opts_mut();
            let vendor: &[u8] = if class.http_client {
                b"HTTPClient"
            } else {
                b"PXEClient"
            };
            opts.insert(DhcpOption::ClassIdentifier(vendor.to_vec()));
            // PXE_DISCOVERY_CONTROL = 8: boot the file named in this offer directly,
            // without a boot server discovery round.
            opts.insert(DhcpOption::VendorExtensions(vec![6, 1, 8, 255]));
        }
        let dest = if !req.giaddr().is_unspecified() {
            SocketAddrV4::new(req.giaddr(), SERVER_PORT)
        } else if !req.ciaddr().is_unspecified() && kind != MessageType::Nak {
            SocketAddrV4::new(req.ciaddr(), CLIENT_PORT)
        } else {
            SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT)
        };
        let what = if yiaddr.is_unspecified() {
            format!("{kind:?}").to_uppercase()
        } else {
            format!("{} {yiaddr}", format!("{kind:?}").to_uppercase())
        };
        Reply {
            summary: format!("{what} arch={} → {}", class.arch_name(), boot.describe()),
            msg,
            dest,
        }
    }

    fn nak(&self, req: &Message, mac: &str, why: &str) -> Reply {
        let mut msg = Message::new_with_id(
            req.xid(),
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            req.giaddr(),
            req.chaddr(),
        );
        msg.set_opcode(Opcode::BootReply).set_flags(req.flags());
        msg.opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Nak));
        msg.opts_mut()
            .insert(DhcpOption::ServerIdentifier(self.cfg.server_ip));
        msg.opts_mut().insert(DhcpOption::Message(why.to_string()));
        let dest = if req.giaddr().is_unspecified() {
            SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT)
        } else {
            SocketAddrV4::new(req.giaddr(), SERVER_PORT)
        };
        Reply {
            msg,
            dest,
            summary: format!("NAK to {mac}: {why}"),
        }
    }
}
