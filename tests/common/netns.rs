//! Running test code inside a namespace the test made (`testkit::netns`), plus a
//! socket bound to one of its interfaces (socket2 is the server's dependency, so
//! it stays out of testkit).

#[allow(unused_imports)] // not every test binary enters a namespace
pub use testkit::netns::in_netns;

use std::net::UdpSocket;
use std::time::Duration;

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
