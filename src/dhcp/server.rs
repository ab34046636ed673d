//! The DHCP socket loop: bound to the provisioning interface only (SO_BINDTODEVICE),
//! one tracing span per transaction, and replies finished before shutdown.

use super::core::{DhcpCore, Outcome, Via};
use dhcproto::Encodable;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
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

/// Serves one socket until `cancel` fires. The in-flight request is always finished:
/// cancellation is only observed while waiting for the next packet.
pub async fn run(
    socket: UdpSocket,
    core: Arc<Mutex<DhcpCore>>,
    proxy_port: bool,
    cancel: CancellationToken,
) -> io::Result<()> {
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
                debug!(%src, len, error = %e, "dropping malformed DHCP packet");
                continue;
            }
            Err(_) => {
                warn!(%src, len, "dropping a DHCP packet that crashed the decoder");
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
                core.lock()
                    .map(|mut c| c.handle(&msg, via, crate::clock::now_unix()))
                    .unwrap_or_else(|_| {
                        Outcome::Ignore("DHCP state poisoned by an earlier panic".into())
                    })
            });
            match outcome {
                Outcome::Reply(reply) => {
                    let mut out = Vec::with_capacity(576);
                    if let Err(e) = reply.msg.encode(&mut dhcproto::Encoder::new(&mut out)) {
                        warn!(error = %e, "cannot encode reply");
                        return;
                    }
                    match socket.send_to(&out, reply.dest).await {
                        Ok(_) => info!(
                            "{:?} → {} (to {})",
                            kind.unwrap_or(dhcproto::v4::MessageType::Unknown(0)),
                            reply.summary,
                            reply.dest
                        ),
                        Err(e) => warn!(dest = %reply.dest, error = %e, "cannot send reply"),
                    }
                }
                Outcome::Done(line) => info!("{line}"),
                Outcome::Ignore(why) => debug!("ignored: {why}"),
            }
        }
        .instrument(span)
        .await;
    }
}
