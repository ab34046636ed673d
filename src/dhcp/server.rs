//! The DHCP socket loop: bound to the provisioning interface only (SO_BINDTODEVICE),
//! one tracing span per transaction, and replies finished before shutdown.

use super::core::{DhcpCore, Outcome, Reply, Via};
use crate::metrics::Metrics;
use dhcproto::v4::{Message, MessageType};
use dhcproto::Encodable;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

#[derive(Debug, thiserror::Error)]
pub enum DhcpServerError {
    #[error("cannot open the DHCP socket on {interface} port {port}: {source}; is another DHCP server (dnsmasq, isc-dhcp-server, kea) running, and are you root?")]
    Bind {
        interface: String,
        port: u16,
        source: io::Error,
    },
}

/// A UDP socket on 0.0.0.0:`port` that only sees traffic of `interface`.
pub fn bind_on_interface(interface: &str, port: u16) -> Result<UdpSocket, DhcpServerError> {
    let err = |source| DhcpServerError::Bind {
        interface: interface.to_string(),
        port,
        source,
    };
    let sock = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .map_err(err)?;
    sock.set_reuse_address(true).map_err(err)?;
    sock.set_broadcast(true).map_err(err)?;
    sock.bind_device(Some(interface.as_bytes())).map_err(err)?;
    sock.set_nonblocking(true).map_err(err)?;
    sock.bind(&SocketAddr::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).into())
        .map_err(err)?;
    UdpSocket::from_std(sock.into()).map_err(err)
}

/// The core, even when a panic poisoned its lock: [`handle_packet`] repairs
/// what a panic may have left half done, so the state is worth serving from.
fn lock(core: &Mutex<DhcpCore>) -> MutexGuard<'_, DhcpCore> {
    core.lock().unwrap_or_else(|poisoned| {
        core.clear_poison();
        poisoned.into_inner()
    })
}

/// One decoded packet through the core. A panic in the handling costs this
/// packet only: it is counted and logged at warn, the lease table is read back
/// from the database (the panic may have left it half updated), and the next
/// packet is served as if nothing happened. A poisoned lock used to make every
/// later packet an "ignored" debug line: DHCP silently dead.
pub fn handle_packet(core: &Mutex<DhcpCore>, msg: &Message, via: Via, now: u64) -> Outcome {
    let handled = std::panic::catch_unwind(AssertUnwindSafe(|| lock(core).handle(msg, via, now)));
    handled.unwrap_or_else(|_| {
        let mut c = lock(core);
        let total = Metrics::bump(&c.metrics().dhcp_panics);
        // The reload reads the store that may just have panicked: guarded too.
        let reloaded = std::panic::catch_unwind(AssertUnwindSafe(|| c.recover()));
        let state = match reloaded {
            Ok(Ok(())) => "leases reloaded from the database".to_string(),
            Ok(Err(e)) => format!("leases could not be reloaded ({e}); serving from memory"),
            Err(_) => "reloading the leases panicked too; serving from memory".to_string(),
        };
        Outcome::Warn(format!(
            "handling this packet panicked: dropped ({total} so far), {state}; please report it with this log"
        ))
    })
}

/// Encodes and sends `reply`, logging what went where.
async fn send(socket: &UdpSocket, reply: Reply, kind: Option<MessageType>) {
    let mut out = Vec::with_capacity(576);
    if let Err(e) = reply.msg.encode(&mut dhcproto::Encoder::new(&mut out)) {
        warn!(error = %e, "cannot encode reply");
        return;
    }
    match socket.send_to(&out, reply.dest).await {
        Ok(_) => info!(
            "{:?} → {} (to {})",
            kind.unwrap_or(MessageType::Unknown(0)),
            reply.summary,
            reply.dest
        ),
        Err(e) => warn!(dest = %reply.dest, error = %e, "cannot send reply"),
    }
}

/// How many addresses one DISCOVER may find in use before it goes unanswered.
const PROBE_TRIES: usize = 3;

/// `ping_before_offer`: pings the offered address and sends the OFFER if nobody
/// answers; an address that answers is quarantined and the DISCOVER handled
/// again for another. Runs as its own task, so other clients are not held up.
async fn probe_then_offer(
    core: Arc<Mutex<DhcpCore>>,
    socket: Arc<UdpSocket>,
    interface: String,
    msg: Message,
    via: Via,
    mut reply: Reply,
) {
    let kind = msg.opts().msg_type();
    for _ in 0..PROBE_TRIES {
        let Some(ip) = reply.probe else {
            return send(&socket, reply, kind).await;
        };
        let iface = interface.clone();
        let answered = tokio::task::spawn_blocking(move || {
            super::probe::in_use(&iface, ip, super::probe::PROBE_WAIT)
        })
        .await;
        match answered {
            Ok(Ok(false)) => return send(&socket, reply, kind).await,
            Ok(Ok(true)) => {}
            Ok(Err(e)) => {
                warn!(%ip, error = %e, "cannot ping before offering; offering anyway");
                return send(&socket, reply, kind).await;
            }
            Err(e) => {
                warn!(%ip, error = %e, "the ping probe failed; offering anyway");
                return send(&socket, reply, kind).await;
            }
        }
        let now = crate::clock::now_unix();
        let next = tokio::task::block_in_place(|| {
            if let Outcome::Warn(line) = lock(&core).address_in_use(ip, now) {
                warn!("{line}");
            }
            handle_packet(&core, &msg, via, now)
        });
        match next {
            Outcome::Reply(r) => reply = r,
            other => return log_outcome(other),
        }
    }
    warn!("{PROBE_TRIES} offered addresses answered ping: DISCOVER unanswered; are static hosts inside dhcp.range?");
}

fn log_outcome(outcome: Outcome) {
    match outcome {
        Outcome::Reply(_) => {}
        Outcome::Done(line) => info!("{line}"),
        Outcome::Warn(line) => warn!("{line}"),
        Outcome::Ignore(why) => debug!("ignored: {why}"),
    }
}

/// The `type` label of a request: its DHCP message type, lower case.
pub fn type_label(kind: Option<MessageType>) -> &'static str {
    match kind {
        Some(MessageType::Discover) => "discover",
        Some(MessageType::Request) => "request",
        Some(MessageType::Decline) => "decline",
        Some(MessageType::Release) => "release",
        Some(MessageType::Inform) => "inform",
        None => "none",
        Some(_) => "other",
    }
}

/// The `outcome` label: the reply's type, or what happened without one.
pub fn outcome_label(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Reply(r) => match r.msg.opts().msg_type() {
            Some(MessageType::Offer) => "offer",
            Some(MessageType::Ack) => "ack",
            Some(MessageType::Nak) => "nak",
            _ => "reply",
        },
        Outcome::Done(_) => "done",
        Outcome::Ignore(_) => "ignored",
        Outcome::Warn(_) => "failed",
    }
}

/// Serves one socket until `cancel` fires. The in-flight request is always finished:
/// cancellation is only observed while waiting for the next packet.
pub async fn run(
    socket: UdpSocket,
    core: Arc<Mutex<DhcpCore>>,
    proxy_port: bool,
    cancel: CancellationToken,
) -> io::Result<()> {
    let (metrics, probe_on) = {
        let c = lock(&core);
        (c.metrics().clone(), c.probe_interface().map(String::from))
    };
    let socket = Arc::new(socket);
    let mut buf = vec![0u8; 2048];
    loop {
        let (len, src) = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            r = socket.recv_from(&mut buf) => r?,
        };
        let src = match src {
            SocketAddr::V4(s) => s,
            SocketAddr::V6(_) => continue,
        };
        // The decoder is third-party code fed by the network: a panic in it must
        // cost one packet, not the DHCP service.
        let decoded = std::panic::catch_unwind(|| super::decode::decode(&buf[..len]));
        let msg = match decoded {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => {
                metrics.dhcp("malformed", "dropped");
                debug!(%src, len, error = %e, "dropping malformed DHCP packet");
                continue;
            }
            Err(_) => {
                metrics.dhcp("malformed", "dropped");
                let total = Metrics::bump(&metrics.dhcp_panics);
                warn!(%src, len, total, "dropping a DHCP packet that crashed the decoder");
                continue;
            }
        };
        let mac = super::core::client_mac(&msg).unwrap_or_else(|| "?".into());
        let span = info_span!("dhcp", xid = format_args!("{:#010x}", msg.xid()), mac = %mac);
        async {
            let via = if proxy_port {
                Via::Proxy(src)
            } else {
                Via::Server
            };
            let kind = msg.opts().msg_type();
            // The lease write fsyncs; keep it off the async workers' hot path.
            let outcome = tokio::task::block_in_place(|| {
                handle_packet(&core, &msg, via, crate::clock::now_unix())
            });
            metrics.dhcp(type_label(kind), outcome_label(&outcome));
            match (outcome, &probe_on) {
                (Outcome::Reply(reply), Some(iface)) if reply.probe.is_some() => {
                    let task = probe_then_offer(
                        core.clone(),
                        socket.clone(),
                        iface.clone(),
                        msg.clone(),
                        via,
                        reply,
                    );
                    tokio::spawn(task.in_current_span());
                }
                (Outcome::Reply(reply), _) => send(&socket, reply, kind).await,
                (other, _) => log_outcome(other),
            }
        }
        .instrument(span)
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DhcpMode;
    use crate::dhcp::leases::{Lease, LeaseStore, LeaseTable, Range};
    use crate::dhcp::pxe::BootTargets;
    use crate::dhcp::{CoreConfig, Subnet};
    use dhcproto::v4::{DhcpOption, MessageType, Opcode};

    /// A store whose disk "breaks" with a panic on the first write.
    struct PanickingStore;
    impl LeaseStore for PanickingStore {
        fn save(&mut self, _: &Lease) -> Result<(), crate::db::StoreError> {
            panic!("a bug in the lease store");
        }
        fn load_all(&mut self) -> Result<Vec<Lease>, crate::db::StoreError> {
            Ok(vec![])
        }
    }

    fn core() -> Mutex<DhcpCore> {
        let leases = LeaseTable::load(Box::new(PanickingStore), Default::default()).unwrap();
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        Mutex::new(DhcpCore::new(
            CoreConfig {
                mode: DhcpMode::Full,
                server_ip: ip("10.44.0.1"),
                local: Subnet {
                    range: Some(Range {
                        first: ip("10.44.0.100"),
                        last: ip("10.44.0.110"),
                    }),
                    netmask: ip("255.255.255.0"),
                    router: None,
                    dns: vec![],
                },
                relays: vec![],
                lease_time: 3600,
                quarantine_time: 600,
                targets: BootTargets::new("http://10.44.0.1"),
                hostnames: Default::default(),
            },
            leases,
        ))
    }

    fn packet(kind: MessageType, last: u8) -> Message {
        let mut m = Message::new_with_id(
            7,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &[0x52, 0x54, 0, 0, 9, last],
        );
        m.set_opcode(Opcode::BootRequest);
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        m
    }

    fn offered(o: Outcome) -> Option<Ipv4Addr> {
        match o {
            Outcome::Reply(r) if r.msg.opts().msg_type() == Some(MessageType::Offer) => {
                Some(r.msg.yiaddr())
            }
            _ => None,
        }
    }

    #[test]
    fn a_panicking_packet_costs_that_packet_and_the_next_is_answered() {
        let core = core();
        let now = 1_000;
        assert!(offered(handle_packet(
            &core,
            &packet(MessageType::Discover, 1),
            Via::Server,
            now
        ))
        .is_some());
        // The REQUEST's lease write panics inside the handler.
        let mut req = packet(MessageType::Request, 1);
        req.opts_mut().insert(DhcpOption::RequestedIpAddress(
            "10.44.0.100".parse().unwrap(),
        ));
        let o = handle_packet(&core, &req, Via::Server, now);
        assert!(
            matches!(&o, Outcome::Warn(l) if l.contains("panicked") && l.contains("1 so far")),
            "{o:?}"
        );
        assert!(!core.is_poisoned(), "the lock is usable again");
        let c = lock(&core).metrics().clone();
        assert_eq!(c.dhcp_panics.get(), 1);
        // The next client is served, and the half-done offer was dropped on reload.
        let next = handle_packet(&core, &packet(MessageType::Discover, 2), Via::Server, now);
        assert_eq!(offered(next), Some("10.44.0.100".parse().unwrap()));
    }

    #[test]
    fn a_lock_poisoned_elsewhere_does_not_silence_dhcp() {
        let core = core();
        std::thread::scope(|s| {
            let _ = s
                .spawn(|| {
                    let _held = core.lock().unwrap();
                    panic!("poisoning the lock");
                })
                .join();
        });
        assert!(core.is_poisoned());
        let o = handle_packet(&core, &packet(MessageType::Discover, 3), Via::Server, 1_000);
        assert!(offered(o).is_some());
        assert!(!core.is_poisoned());
    }
}
