//! Running test code inside a namespace the test made: a thread joins it with
//! setns(2), so the sockets it opens see that namespace's network and nothing else.

use std::net::UdpSocket;
use std::time::Duration;

/// Runs `f` on a new thread that has joined network namespace `ns`.
/// setns changes only the calling thread, so the test's own threads stay put.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let fd = std::fs::File::open(format!("/run/netns/{ns}"))
                .unwrap_or_else(|e| panic!("namespace {ns}: {e}"));
            nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("setns into {ns}: {e}"));
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

/// A UDP socket on `0.0.0.0:port` that sends and hears on `iface` only (so a
/// broadcast leaves by that interface), with a receive timeout.
pub fn udp_on(iface: &str, port: u16, timeout: Duration) -> UdpSocket {
    let sock = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .unwrap();
    sock.set_reuse_address(true).unwrap();
    sock.set_broadcast(true).unwrap();
    sock.bind_device(Some(iface.as_bytes())).unwrap();
    let addr = std::net::SocketAddr::from(([0, 0, 0, 0], port));
    sock.bind(&addr.into())
        .unwrap_or_else(|e| panic!("bind UDP {port} on {iface}: {e}"));
    let sock: UdpSocket = sock.into();
    sock.set_read_timeout(Some(timeout)).unwrap();
    sock
}
