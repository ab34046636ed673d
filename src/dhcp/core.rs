//! Packet in, reply out: the DHCP server's decisions without sockets or clocks.
//! `DhcpCore::handle` is what the socket loop, the unit tests and the fuzz target
//! all drive, so what is tested is what runs.

use super::leases::{Lease, LeaseState, LeaseTable, Range};
use super::limits::{RateLimit, TokenBucket};
use super::pxe::{boot_offer, BootOffer, BootTargets, ClientClass};
use crate::config::DhcpMode;
use crate::metrics::Metrics;
use dhcproto::v4::{DhcpOption, HType, Message, MessageType, Opcode, OptionCode};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;
pub const PROXY_PORT: u16 = 4011;
/// How long an unanswered OFFER holds its address.
const OFFER_HOLD_SECS: u64 = 60;
/// Seconds between two warnings about the rate limit: a flood must be seen in
/// the log, not fill it.
const LIMIT_WARN_EVERY_SECS: u64 = 10;

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
    /// An OFFER of an address this client never had: with `ping_before_offer`,
    /// the server checks nobody answers on it before sending.
    pub probe: Option<Ipv4Addr>,
}

#[derive(Debug)]
pub enum Outcome {
    Reply(Reply),
    /// Handled without a reply (RELEASE, DECLINE), with a line for the log.
    Done(String),
    /// Not ours or not valid; logged at debug level.
    Ignore(String),
    /// Unanswered because something failed that the operator must see (a lease
    /// that could not be persisted, the rate limit reached); logged at warn.
    Warn(String),
}

pub struct DhcpCore {
    cfg: CoreConfig,
    pub leases: LeaseTable,
    /// Allocations to clients with no reservation and no lease.
    new_clients: TokenBucket,
    metrics: Arc<Metrics>,
    last_limit_warn: Option<u64>,
    /// `[dhcp] ping_before_offer`: the interface to probe on.
    probe_interface: Option<String>,
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
    /// The core with the default new-client rate limit and metrics of its own.
    /// The server's, router and DNS addresses of every subnet are never leased.
    pub fn new(cfg: CoreConfig, mut leases: LeaseTable) -> DhcpCore {
        let subnets = std::iter::once(&cfg.local).chain(&cfg.relays);
        let infrastructure: Vec<Ipv4Addr> = subnets
            .flat_map(|s| s.router.into_iter().chain(s.dns.iter().copied()))
            .chain([cfg.server_ip])
            .collect();
        leases.exclude(infrastructure);
        DhcpCore {
            cfg,
            leases,
            new_clients: TokenBucket::new(RateLimit::default(), 0),
            metrics: Arc::default(),
            last_limit_warn: None,
            probe_interface: None,
        }
    }

    /// What the server knows of a declared node, kept current while it runs:
    /// its reserved address and the hostname sent as option 12 (`None` for a
    /// node removed or without them).
    pub fn set_node(&mut self, mac: &str, ip: Option<Ipv4Addr>, hostname: Option<String>) {
        self.leases.set_reservation(mac, ip);
        match hostname {
            Some(name) => self.cfg.hostnames.insert(mac.to_string(), name),
            None => self.cfg.hostnames.remove(mac),
        };
    }

    /// Fresh dynamic OFFERs are to be pinged on `interface` first.
    pub fn with_probe(mut self, interface: &str) -> DhcpCore {
        self.probe_interface = Some(interface.to_string());
        self
    }

    pub fn probe_interface(&self) -> Option<&str> {
        self.probe_interface.as_deref()
    }

    /// Something answered a ping on `ip`, offered a moment ago: the address is
    /// quarantined like a DECLINEd one, so the next DISCOVER gets another.
    pub fn address_in_use(&mut self, ip: Ipv4Addr, now: u64) -> Outcome {
        match self.quarantine(ip, now) {
            Ok(()) => Outcome::Warn(format!(
                "{ip} answers ping but has no lease from us (a static address inside dhcp.range?): quarantined for {} s, offering another",
                self.cfg.quarantine_time
            )),
            Err(e) => self.not_persisted(format!("quarantine of {ip}"), e),
        }
    }

    /// Keeps `ip` out of the pool for `quarantine_time`: another host uses it.
    fn quarantine(&mut self, ip: Ipv4Addr, now: u64) -> Result<(), crate::db::StoreError> {
        self.leases.record(Lease {
            ip,
            mac: String::new(),
            expires: now + u64::from(self.cfg.quarantine_time),
            state: LeaseState::Declined,
        })
    }

    pub fn with_rate_limit(mut self, limit: RateLimit) -> DhcpCore {
        self.new_clients = TokenBucket::new(limit, 0);
        self
    }

    /// Counts failures into `metrics` (the server's, shown on /healthz).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> DhcpCore {
        self.metrics = metrics;
        self
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Active and free addresses of the local range and each relayed one.
    pub fn lease_usage(&self, now: u64) -> Vec<crate::metrics::RangeUsage> {
        std::iter::once(&self.cfg.local)
            .chain(&self.cfg.relays)
            .filter_map(|s| s.range)
            .map(|r| {
                let (active, free) = self.leases.usage(&r, now);
                crate::metrics::RangeUsage {
                    range: format!("{}-{}", r.first, r.last),
                    active,
                    free,
                }
            })
            .collect()
    }

    /// Whether `mac` is new to the pool: no reservation and no lease of any kind.
    fn is_new_client(&self, mac: &str) -> bool {
        self.leases.reservation(mac).is_none() && self.leases.by_mac(mac).is_none()
    }

    /// A new client refused by the rate limit: counted, and warned about once
    /// every [`LIMIT_WARN_EVERY_SECS`].
    fn rate_limited(&mut self, mac: &str, what: &str, now: u64) -> Outcome {
        let total = Metrics::bump(&self.metrics.dhcp_rate_limited);
        let line = format!("{mac}: {what} unanswered: new clients are coming faster than dhcp.new_clients_per_minute allows ({total} refused so far; declared nodes and existing leases are not limited). A flood of made-up MACs, or real machines? Then raise new_clients_per_minute / new_clients_burst");
        if self
            .last_limit_warn
            .is_none_or(|t| now >= t + LIMIT_WARN_EVERY_SECS)
        {
            self.last_limit_warn = Some(now);
            Outcome::Warn(line)
        } else {
            Outcome::Ignore(line)
        }
    }

    /// A lease the store refused: counted, warned, and not acknowledged.
    fn not_persisted(&self, what: String, e: crate::db::StoreError) -> Outcome {
        let total = Metrics::bump(&self.metrics.dhcp_persist_failures);
        Outcome::Warn(format!(
            "{what}: cannot persist the lease ({e}); not acknowledged ({total} such failures so far): check the disk holding state_dir/rollout.db"
        ))
    }

    /// After a panic in [`DhcpCore::handle`]: the lease table may be half
    /// updated, so it is read back from the store.
    pub fn recover(&mut self) -> Result<(), crate::db::StoreError> {
        self.leases.reload()
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
                if self.is_new_client(mac) && !self.new_clients.take(now) {
                    return self.rate_limited(mac, "DISCOVER", now);
                }
                let Some(ip) =
                    self.leases
                        .choose(mac, subnet.range.as_ref(), requested_ip(req), now)
                else {
                    return Outcome::Ignore(format!("{mac}: no free address in the pool: DISCOVER unanswered; widen dhcp.range or shorten lease_time"));
                };
                // New to this client (not its reservation, not its lease or offer):
                // worth a ping first when probing is on.
                let fresh = self.leases.reservation(mac).is_none()
                    && self.leases.by_mac(mac).map(|l| l.ip) != Some(ip);
                let offered = Lease {
                    ip,
                    mac: mac.into(),
                    expires: now + OFFER_HOLD_SECS,
                    state: LeaseState::Offered,
                };
                if let Err(e) = self.leases.record(offered) {
                    return Outcome::Ignore(format!("{mac}: cannot record offer: {e}"));
                }
                let mut r = self.reply(req, MessageType::Offer, ip, &subnet, class, mac);
                r.probe = fresh.then_some(ip);
                Outcome::Reply(r)
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
                match self.quarantine(ip, now) {
                    Ok(()) => Outcome::Done(format!(
                        "{mac}: DECLINE {ip}: address in use by another host, quarantined for {} s",
                        self.cfg.quarantine_time
                    )),
                    Err(e) => self.not_persisted(format!("{mac}: DECLINE of {ip}"), e),
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
                    Err(e) => self.not_persisted(format!("{mac}: RELEASE of {ip}"), e),
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
        // A REQUEST with no OFFER before it (INIT-REBOOT) from a MAC never seen
        // would bind, and fsync, an address per packet: it takes a token too.
        if self.is_new_client(mac) && !self.new_clients.take(now) {
            return self.rate_limited(mac, "REQUEST", now);
        }
        let bound = Lease {
            ip: wanted,
            mac: mac.into(),
            expires: now + lease_secs,
            state: LeaseState::Bound,
        };
        // Persist before answering: an ACK the server forgets could be handed out twice.
        if let Err(e) = self.leases.record(bound) {
            return self.not_persisted(format!("{mac}: REQUEST for {wanted}"), e);
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
            probe: None,
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
            probe: None,
        }
    }
}
