//! Every DHCP reply a namespace hears, captured by tcpdump and decoded: what
//! the servers actually sent, as a client saw it (a server's log can only say
//! what it meant to send, and says nothing once it is killed).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant, SystemTime};
use testkit::netns::Netns;

/// One reply: when it was captured, who sent it, what it said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub at: SystemTime,
    /// The IP source address: which server sent it.
    pub server: Ipv4Addr,
    /// Option 53 (2 OFFER, 5 ACK, 6 NAK).
    pub kind: u8,
    pub yiaddr: Ipv4Addr,
    /// The client's MAC, as `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
}

pub const ACK: u8 = 5;

/// tcpdump on one interface of a namespace, for replies from port 67.
pub struct Capture {
    child: Child,
    dir: tempfile::TempDir,
}

impl Capture {
    /// Starts tcpdump on `iface` in `ns` and returns once it listens.
    pub fn start(ns: &Netns, iface: &str) -> Capture {
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("tcpdump.log")).unwrap();
        // -B: a 64 MiB kernel buffer, so a burst is not lost while tcpdump
        // writes (a lost ACK could hide a duplicate; stop() checks the count).
        // -Z root: the file is in a root-only temp dir.
        let child = ns
            .command("tcpdump")
            .args(["-i", iface, "-B", "65536", "-s", "400", "-Z", "root", "-w"])
            .arg(dir.path().join("replies.pcap"))
            .arg("udp src port 67")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start tcpdump in {}: {e}", ns.name()));
        let capture = Capture { child, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !capture.log().contains("listening on") {
            assert!(
                Instant::now() < deadline,
                "tcpdump did not start listening on {iface}: {}",
                capture.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        capture
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tcpdump.log")).unwrap_or_default()
    }

    fn file(&self) -> PathBuf {
        self.dir.path().join("replies.pcap")
    }

    /// Stops tcpdump and decodes every DHCP reply it captured. Panics if the
    /// kernel dropped any packet: a check over an incomplete capture proves nothing.
    pub fn stop(mut self) -> Vec<Reply> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
        let log = self.log();
        assert!(
            log.contains("\n0 packets dropped by kernel"),
            "the capture lost packets, so it cannot show every reply: {log}"
        );
        let data = std::fs::read(self.file()).unwrap();
        parse_pcap(&data)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The DHCP replies in a pcap file (Ethernet link type, micro- or nanosecond
/// timestamps); other packets are skipped.
pub fn parse_pcap(data: &[u8]) -> Vec<Reply> {
    let u32_at = |off: usize| u32::from_le_bytes(data[off..off + 4].try_into().unwrap());
    assert!(data.len() >= 24, "not a pcap file ({} bytes)", data.len());
    let nanos_per_tick = match u32_at(0) {
        0xa1b2_c3d4 => 1_000,
        0xa1b2_3c4d => 1,
        magic => panic!("not a little-endian pcap file (magic {magic:#x})"),
    };
    assert_eq!(u32_at(20), 1, "not an Ethernet capture");
    let mut replies = vec![];
    let mut off = 24;
    while off + 16 <= data.len() {
        let (secs, frac, len) = (u32_at(off), u32_at(off + 4), u32_at(off + 8) as usize);
        let frame = &data[off + 16..(off + 16 + len).min(data.len())];
        off += 16 + len;
        let at = SystemTime::UNIX_EPOCH
            + Duration::from_secs(secs.into())
            + Duration::from_nanos(u64::from(frac) * nanos_per_tick);
        if let Some(reply) = decode(frame, at) {
            replies.push(reply);
        }
    }
    replies
}

/// An Ethernet frame carrying IPv4/UDP/DHCP with a message type, else `None`.
fn decode(frame: &[u8], at: SystemTime) -> Option<Reply> {
    let ip = frame.get(14..)?;
    if ip.len() < 20 || ip[0] >> 4 != 4 || ip[9] != 17 {
        return None;
    }
    let server = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let bootp = ip.get(usize::from(ip[0] & 15) * 4 + 8..)?;
    if bootp.len() < 240 || bootp[236..240] != [0x63, 0x82, 0x53, 0x63] {
        return None;
    }
    let (mut i, mut kind) = (240, None);
    while i + 1 < bootp.len() && bootp[i] != 255 {
        if bootp[i] == 0 {
            i += 1;
            continue;
        }
        if bootp[i] == 53 {
            kind = bootp.get(i + 2).copied();
        }
        i += 2 + usize::from(bootp[i + 1]);
    }
    let mac = bootp[28..34]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    Some(Reply {
        at,
        server,
        kind: kind?,
        yiaddr: Ipv4Addr::new(bootp[16], bootp[17], bootp[18], bootp[19]),
        mac,
    })
}
