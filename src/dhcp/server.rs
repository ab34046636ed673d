//! The DHCP socket loop: bound to the provisioning interface only (SO_BINDTODEVICE),
//! one tracing span per transaction, and replies finished before shutdown.

use super::core::{DhcpCore, Outcome, Reply, Via};
use super::inbox::{self, Inbox};
use crate::metrics::Metrics;
use dhcproto::v4::{Message, MessageType};
use dhcproto::Encodable;
use std::io;
use std::net::UdpSocket as StdUdpSocket;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsFd;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument, Span};

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
    // Room for a burst (a rack powering on) while the handler catches up. As
    // root (serve binds port 67) SO_RCVBUFFORCE passes net.core.rmem_max, which
    // is 208 KiB on a stock kernel; otherwise the kernel caps the plain request.
    if !force_recv_buffer(&sock, 4 << 20) {
        let _ = sock.set_recv_buffer_size(4 << 20);
    }
    sock.bind(&SocketAddr::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).into())
        .map_err(err)?;
    UdpSocket::from_std(sock.into()).map_err(err)
}

/// SO_RCVBUFFORCE: true if the kernel took it (CAP_NET_ADMIN).
fn force_recv_buffer(sock: &socket2::Socket, bytes: i32) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: setsockopt on a socket we own, with a pointer to an int and its size.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&bytes as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    r == 0
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
    handle_locked(&mut lock(core), msg, via, now)
}

/// [`handle_packet`] with the lock already held (the caller takes the staged
/// lease writes under the same lock).
fn handle_locked(c: &mut DhcpCore, msg: &Message, via: Via, now: u64) -> Outcome {
    // The guard lives outside the unwind, so a panic here does not poison the lock.
    let handled = std::panic::catch_unwind(AssertUnwindSafe(|| c.handle(msg, via, now)));
    handled.unwrap_or_else(|_| {
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

/// Encodes and sends `reply`, logging what went where. Called from the
/// handler and lease-writer threads directly (no hop through the async
/// runtime per reply); the socket is non-blocking, so a full send buffer is
/// waited out briefly.
fn send(socket: &StdUdpSocket, reply: Reply, kind: Option<MessageType>) {
    let mut out = Vec::with_capacity(576);
    if let Err(e) = reply.msg.encode(&mut dhcproto::Encoder::new(&mut out)) {
        warn!(error = %e, "cannot encode reply");
        return;
    }
    let mut tries = 0;
    let sent = loop {
        match socket.send_to(&out, reply.dest) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && tries < SEND_TRIES => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            other => break other,
        }
    };
    match sent {
        Ok(_) => info!(
            "{:?} → {} (to {})",
            kind.unwrap_or(MessageType::Unknown(0)),
            reply.summary,
            reply.dest
        ),
        Err(e) => warn!(dest = %reply.dest, error = %e, "cannot send reply"),
    }
}

/// Waits of 200 µs for room in the socket's send buffer before a reply is given up.
const SEND_TRIES: u32 = 50;

/// How many addresses one DISCOVER may find in use before it goes unanswered.
const PROBE_TRIES: usize = 3;

/// `ping_before_offer`: pings the offered address and sends the OFFER if nobody
/// answers; an address that answers is quarantined and the DISCOVER handled
/// again for another. Runs as its own task, so other clients are not held up.
async fn probe_then_offer(
    core: Arc<Mutex<DhcpCore>>,
    socket: Arc<StdUdpSocket>,
    interface: String,
    msg: Message,
    via: Via,
    mut reply: Reply,
) {
    let kind = msg.opts().msg_type();
    for _ in 0..PROBE_TRIES {
        let Some(ip) = reply.probe else {
            return send(&socket, reply, kind);
        };
        let iface = interface.clone();
        let answered = tokio::task::spawn_blocking(move || {
            super::probe::in_use(&iface, ip, super::probe::PROBE_WAIT)
        })
        .await;
        match answered {
            Ok(Ok(false)) => return send(&socket, reply, kind),
            Ok(Ok(true)) => {}
            Ok(Err(e)) => {
                warn!(%ip, error = %e, "cannot ping before offering; offering anyway");
                return send(&socket, reply, kind);
            }
            Err(e) => {
                warn!(%ip, error = %e, "the ping probe failed; offering anyway");
                return send(&socket, reply, kind);
            }
        }
        let now = crate::clock::now_unix();
        let next = tokio::task::block_in_place(|| {
            let mut c = lock(&core);
            if let Outcome::Warn(line) = c.address_in_use(ip, now) {
                warn!("{line}");
            }
            let next = handle_locked(&mut c, &msg, via, now);
            // The quarantine is a lease write; the next OFFER does not wait for it
            // (offers are never persisted), but it must reach the database.
            let writes = c.leases.take_pending();
            if let Some(w) = c.leases.writer().filter(|_| !writes.is_empty()) {
                let metrics = c.metrics().clone();
                w.submit(
                    writes,
                    Box::new(move |r| {
                        if let Err(e) = r {
                            let total = Metrics::bump(&metrics.dhcp_persist_failures);
                            warn!(%ip, "cannot persist the quarantine of an address in use ({e}); {total} lease writes failed so far: {}", persist_hint(e));
                        }
                    }),
                );
            }
            next
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

/// A decoded packet waiting for the handler.
struct Packet {
    msg: Message,
    via: Via,
    span: Span,
}

/// Seconds between two warnings about packets shed under overload.
const OVERLOAD_WARN_EVERY_SECS: u64 = 10;

/// Serves one socket until `cancel` fires. Three stages, so storage never
/// blocks the socket: this task receives and decodes into a bounded
/// [`Inbox`] (shedding DISCOVERs first when it is full, counted as
/// `outcome="overloaded"` in /metrics); a handler thread runs each packet
/// through the core; lease writes go to the group-commit writer, which sends
/// each ACK once its batch is durable. Everything received before `cancel`
/// is still answered.
pub async fn run(
    socket: UdpSocket,
    core: Arc<Mutex<DhcpCore>>,
    proxy_port: bool,
    cancel: CancellationToken,
) -> io::Result<()> {
    let metrics = lock(&core).metrics().clone();
    let socket = Arc::new(socket);
    let inbox = Arc::new(Inbox::new(inbox::CAPACITY));
    // The same socket for sending from the handler and writer threads.
    let tx = Arc::new(StdUdpSocket::from(socket.as_fd().try_clone_to_owned()?));
    let handler = {
        let (core, inbox) = (core.clone(), inbox.clone());
        let rt = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || handle_loop(&core, &inbox, &tx, &rt))
    };
    // Closed however this future ends: when serve gives up during startup (a
    // port taken) it drops this future without cancelling, and a handler
    // thread still waiting on the inbox would keep the runtime from exiting.
    let closer = CloseOnDrop(&inbox);
    let received = receive_loop(&socket, &inbox, &metrics, proxy_port, &cancel).await;
    drop(closer);
    let _ = handler.await;
    // ACKs still waiting for their batch: out before we return.
    let writer = lock(&core).leases.writer().cloned();
    if let Some(w) = writer {
        let _ = tokio::task::spawn_blocking(move || w.flush()).await;
    }
    received
}

struct CloseOnDrop<'a, T>(&'a Inbox<T>);

impl<T> Drop for CloseOnDrop<'_, T> {
    fn drop(&mut self) {
        self.0.close();
    }
}

async fn receive_loop(
    socket: &UdpSocket,
    inbox: &Inbox<Packet>,
    metrics: &Metrics,
    proxy_port: bool,
    cancel: &CancellationToken,
) -> io::Result<()> {
    let mut buf = vec![0u8; 2048];
    let mut last_warn: Option<u64> = None;
    loop {
        let (len, src) = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            r = socket.recv_from(&mut buf) => r?,
        };
        let src = match src {
            SocketAddr::V4(s) => s,
            SocketAddr::V6(_) => continue,
        };
        // Overloaded: a DISCOVER is shed on its type byte alone, so the CPU the
        // decode would take goes to the REQUESTs that complete leases.
        let discover =
            super::decode::message_type_hint(&buf[..len]) == Some(MessageType::Discover.into());
        if discover && !inbox.would_admit(true) {
            overloaded(metrics, Some(MessageType::Discover), &mut last_warn);
            continue;
        }
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
        let via = if proxy_port {
            Via::Proxy(src)
        } else {
            Via::Server
        };
        let kind = msg.opts().msg_type();
        let droppable = kind == Some(MessageType::Discover);
        if inbox.push(Packet { msg, via, span }, droppable).is_err() {
            overloaded(metrics, kind, &mut last_warn);
        }
    }
}

/// Counts a packet dropped for overload, with a warning now and then.
fn overloaded(metrics: &Metrics, kind: Option<MessageType>, last_warn: &mut Option<u64>) {
    metrics.dhcp(type_label(kind), "overloaded");
    let now = crate::clock::now_unix();
    if last_warn.is_none_or(|t| now >= t + OVERLOAD_WARN_EVERY_SECS) {
        *last_warn = Some(now);
        warn!("DHCP overloaded: {} packets queued, dropping DISCOVERs first (counted in rollout_dhcp_packets_total{{outcome=\"overloaded\"}}); clients retry", inbox::CAPACITY);
    }
}

/// The handler thread: each packet through the core, its lease writes (if
/// any) handed to the group-commit writer together with its reply.
fn handle_loop(
    core: &Arc<Mutex<DhcpCore>>,
    inbox: &Inbox<Packet>,
    tx: &Arc<StdUdpSocket>,
    rt: &tokio::runtime::Handle,
) {
    let (metrics, probe_on, writer) = {
        let c = lock(core);
        let probe = c.probe_interface().map(String::from);
        (c.metrics().clone(), probe, c.leases.writer().cloned())
    };
    while let Some(Packet { msg, via, span }) = inbox.pop() {
        let _entered = span.enter();
        let kind = msg.opts().msg_type();
        let mut c = lock(core);
        if writer.as_ref().is_some_and(|w| w.take_failed()) {
            // A batch that failed left leases in memory the database lacks.
            if let Err(e) = c.recover() {
                warn!(
                    "cannot read the leases back after a failed write ({e}); serving from memory"
                );
                // Tried again with the next packet: a database that went away
                // is read back as soon as it returns.
                if let Some(w) = writer.as_ref() {
                    w.mark_failed();
                }
            }
        }
        let outcome = handle_locked(&mut c, &msg, via, crate::clock::now_unix());
        let writes = c.leases.take_pending();
        if let Some(w) = writer.as_ref().filter(|_| !writes.is_empty()) {
            // Submitted under the lock: batches keep the order decisions were made in.
            if matches!(outcome, Outcome::Reply(_)) && c.leases.reserved_only(&writes) {
                // A node's reserved address: answered now, written when the
                // store can be (a database outage does not stop it booting).
                w.submit_after_ack(writes);
            } else {
                w.submit(writes, after_commit(outcome, kind, &metrics, tx, &span));
                continue;
            }
        }
        drop(c);
        metrics.dhcp(type_label(kind), outcome_label(&outcome));
        match (outcome, &probe_on) {
            (Outcome::Reply(reply), Some(iface)) if reply.probe.is_some() => {
                let task =
                    probe_then_offer(core.clone(), tx.clone(), iface.clone(), msg, via, reply);
                rt.spawn(task.instrument(span.clone()));
            }
            (Outcome::Reply(reply), _) => send(tx, reply, kind),
            (other, _) => log_outcome(other),
        }
    }
}

/// What happens once a packet's lease writes are durable: its reply goes out
/// (or its RELEASE/DECLINE is logged); if they failed, nothing is acknowledged.
fn after_commit(
    outcome: Outcome,
    kind: Option<MessageType>,
    metrics: &Arc<Metrics>,
    tx: &Arc<StdUdpSocket>,
    span: &Span,
) -> super::commit::Continuation {
    let (metrics, tx, span) = (metrics.clone(), tx.clone(), span.clone());
    Box::new(move |written| {
        let _entered = span.enter();
        match written {
            Ok(()) => {
                metrics.dhcp(type_label(kind), outcome_label(&outcome));
                match outcome {
                    Outcome::Reply(reply) => send(&tx, reply, kind),
                    other => log_outcome(other),
                }
            }
            Err(e @ crate::store::StoreError::Taken { .. }) => {
                // Another server won the address: routine with a shared store.
                metrics.dhcp(type_label(kind), "failed");
                tracing::info!("{e}");
            }
            Err(e) => {
                metrics.dhcp(type_label(kind), "failed");
                let total = Metrics::bump(&metrics.dhcp_persist_failures);
                warn!("cannot persist the lease ({e}); not acknowledged ({total} such failures so far): {}", persist_hint(e));
            }
        }
    })
}

/// What to check when a lease write failed: the database's own message says
/// it for PostgreSQL; SQLite's errors do not name the file.
fn persist_hint(e: &crate::store::StoreError) -> &'static str {
    use crate::store::StoreError;
    match e {
        StoreError::Postgres { .. }
        | StoreError::Connect { .. }
        | StoreError::PasswordFile { .. } => {
            "clients retry and are answered once the lease database is back"
        }
        _ => "check the disk holding state_dir/rollout.db",
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

    /// A stock kernel caps SO_RCVBUF at 208 KiB; root gets the whole 4 MiB.
    #[test]
    fn the_receive_buffer_is_forced_past_rmem_max() {
        if !testkit::prereq::require_root("SO_RCVBUFFORCE") {
            return;
        }
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        assert!(force_recv_buffer(&sock, 4 << 20));
        // The kernel doubles what it is given (bookkeeping overhead).
        assert!(sock.recv_buffer_size().unwrap() >= 4 << 20);
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
