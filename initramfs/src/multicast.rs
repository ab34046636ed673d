//! The multicast first install, the installer's side (`[install] multicast`
//! on the server, `crate::wire::multicast`): before the rsync copy, join the
//! serial's session, receive its tar stream with udpcast's `udp-receiver`,
//! unpack it onto the new root (`crate::unpack`) while hashing it, then ask the server what it
//! sent. A stream that hashes otherwise (lost data, a forged sender on the
//! LAN) is removed again. Whatever happens, the rsync copy runs next and
//! fixes the rest: a failure here costs a bigger rsync, never the install.

use std::io::{self, Read};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rollout::wire::multicast::MulticastAnswer;
use rollout::wire::{paths as wire_paths, InstallPlan};
use sha2::{Digest, Sha256};

use crate::http_client;
use crate::paths::UDP_RECEIVER;

/// Seconds without a packet after the stream started before the receiver gives up.
const RECEIVE_TIMEOUT_SECS: u64 = 30;
/// How long the installer asks for the outcome of a stream it received.
const OUTCOME_WAIT: Duration = Duration::from_secs(90);

pub fn multicast_url(server: &str, install_id: &str) -> String {
    format!(
        "{}{}/{install_id}/multicast",
        server.trim_end_matches('/'),
        wire_paths::INSTALLS
    )
}

/// What the multicast step came to: one line for the console and the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prefill {
    /// The plan offers none.
    NotOffered,
    /// Nothing was written (no session, the server said why, or no answer).
    Skipped(String),
    /// `bytes` of the stream unpacked and checked against the server's hash.
    Received { bytes: u64, secs: u64 },
    /// Something went wrong after data arrived; what did was removed.
    Discarded(String),
}

impl Prefill {
    pub fn line(&self) -> String {
        match self {
            Prefill::NotOffered => "multicast: not offered by the server".into(),
            Prefill::Skipped(why) => format!("multicast: skipped ({why}); rsync copies everything"),
            Prefill::Received { bytes, secs } => format!(
                "multicast: received and checked {} MiB in {secs} s; rsync copies the rest",
                bytes >> 20
            ),
            Prefill::Discarded(why) => {
                format!("multicast: stream discarded ({why}); rsync copies everything")
            }
        }
    }

    /// Worth a warning on the console (the install goes on either way).
    pub fn is_warning(&self) -> bool {
        matches!(self, Prefill::Discarded(_))
            || matches!(self, Prefill::Skipped(why) if !why.starts_with("no session"))
    }
}

/// The interface the kernel routes `dest` through, from `/proc/net/route`
/// (longest prefix wins): the one udp-receiver must listen on.
pub fn route_interface(proc_net_route: &str, dest: Ipv4Addr) -> Option<String> {
    let d = u32::from(dest);
    proc_net_route
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let net = u32::from_str_radix(f.get(1)?, 16).ok()?.swap_bytes();
            let mask = u32::from_str_radix(f.get(7)?, 16).ok()?.swap_bytes();
            (d & mask == net).then(|| (mask.count_ones(), f[0].to_string()))
        })
        .max_by_key(|(bits, _)| *bits)
        .map(|(_, iface)| iface)
}

/// The host of `http://HOST[:PORT]/…` as an IPv4 address.
pub fn server_ip(server_url: &str) -> Option<Ipv4Addr> {
    let rest = server_url.split("://").nth(1)?;
    let host = rest.split(['/', ':']).next()?;
    host.parse().ok()
}

pub fn receiver_args(iface: &str, port: u16, start_secs: u64) -> Vec<String> {
    vec![
        "--interface".into(),
        iface.into(),
        "--portbase".into(),
        port.to_string(),
        "--nokbd".into(),
        "--mcast-rdv-address".into(),
        rollout::wire::multicast::RDV_ADDRESS.into(),
        "--start-timeout".into(),
        start_secs.to_string(),
        "--receive-timeout".into(),
        RECEIVE_TIMEOUT_SECS.to_string(),
    ]
}

/// Compares what arrived with what the server says it sent.
pub fn check(answer: &MulticastAnswer, got_bytes: u64, got_sha: &str) -> Result<(), String> {
    match answer {
        MulticastAnswer::Sent { bytes, sha256 } if *bytes == got_bytes && sha256 == got_sha => {
            Ok(())
        }
        MulticastAnswer::Sent { bytes, .. } if *bytes != got_bytes => Err(format!(
            "received {got_bytes} bytes, the server sent {bytes}"
        )),
        MulticastAnswer::Sent { .. } => {
            Err("the stream's SHA-256 differs from the server's: not the server's data".into())
        }
        MulticastAnswer::Failed { reason } => Err(format!("the server's sender failed: {reason}")),
        other => Err(format!("no outcome from the server ({other:?})")),
    }
}

/// Reads through, counting and hashing, calling `tick(bytes)` as it goes.
struct Hashing<R, F> {
    inner: R,
    hash: Sha256,
    bytes: u64,
    tick: F,
}

impl<R: Read, F: FnMut(u64)> Read for Hashing<R, F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        (self.tick)(self.bytes);
        Ok(n)
    }
}

/// Unpacks a tar stream under `root` (ownership, modes, mtimes, symlinks,
/// hard links; device nodes and FIFOs are left to rsync), reading it to its
/// end. Returns the bytes read and their SHA-256 (hex).
pub fn unpack(
    stream: impl Read,
    root: &Path,
    network_paths: &[String],
    tick: impl FnMut(u64),
) -> Result<(u64, String), String> {
    let mut reader = Hashing {
        inner: stream,
        hash: Sha256::new(),
        bytes: 0,
        tick,
    };
    crate::unpack::unpack_tar(&mut reader, root, network_paths)?;
    // The archive ends before the stream (tar pads to its record size):
    // the hash covers every byte the server sent.
    io::copy(&mut reader, &mut io::sink()).map_err(|e| format!("reading the stream: {e}"))?;
    Ok((
        reader.bytes,
        rollout::wire::multicast::hex(&reader.hash.finalize()),
    ))
}

/// One `POST …/multicast` with the install token.
pub fn ask(plan: &InstallPlan) -> Result<MulticastAnswer, String> {
    let url = multicast_url(&plan.server_url, &plan.install_id);
    let r = http_client::post_json(&url, Some(&plan.token), b"", Duration::from_secs(10))
        .map_err(|e| format!("POST {url}: {e}"))?;
    if r.status != 200 {
        return Err(format!(
            "POST {url} answered {}: {}",
            r.status,
            r.text().trim()
        ));
    }
    serde_json::from_slice(&r.body).map_err(|e| format!("POST {url}: unreadable answer ({e})"))
}

/// The whole multicast part of the copy step, onto the mounted `root`.
/// `show` gets console lines (progress every 10 s).
pub fn prefill(plan: &InstallPlan, root: &Path, show: &mut dyn FnMut(&str)) -> Prefill {
    if plan.multicast.is_none() {
        return Prefill::NotOffered;
    }
    let (port, start_secs) = match ask(plan) {
        Ok(MulticastAnswer::Joined {
            port,
            starts_within_secs,
        }) => (port, starts_within_secs),
        Ok(MulticastAnswer::NoSession { reason }) => {
            return Prefill::Skipped(format!("no session: {reason}"))
        }
        Ok(other) => return Prefill::Skipped(format!("unexpected answer {other:?}")),
        Err(e) => return Prefill::Skipped(e),
    };
    let Some(iface) = server_ip(&plan.server_url)
        .and_then(|ip| route_interface(&std::fs::read_to_string("/proc/net/route").ok()?, ip))
    else {
        return Prefill::Skipped(format!("no route to {} found", plan.server_url));
    };
    show(&format!(
        "multicast: joined on port {port} ({iface}), the stream starts within {start_secs} s"
    ));
    let started = Instant::now();
    let network_paths = plan.layout.network_paths();
    let got = receive(&iface, port, start_secs, root, &network_paths, show);
    let secs = started.elapsed().as_secs();
    let outcome = got.and_then(|(bytes, sha)| {
        let answer = outcome(plan)?;
        check(&answer, bytes, &sha).map(|()| bytes)
    });
    match outcome {
        Ok(bytes) => Prefill::Received { bytes, secs },
        Err(why) => match crate::unpack::clear(root) {
            Ok(()) => Prefill::Discarded(why),
            Err(e) => Prefill::Discarded(format!("{why}; clearing the new root failed too: {e}")),
        },
    }
}

/// Runs udp-receiver into [`unpack`].
fn receive(
    iface: &str,
    port: u16,
    start_secs: u64,
    root: &Path,
    network_paths: &[String],
    show: &mut dyn FnMut(&str),
) -> Result<(u64, String), String> {
    let mut child: Child = Command::new(UDP_RECEIVER)
        .args(receiver_args(iface, port, start_secs))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{UDP_RECEIVER}: {e}"))?;
    let err = child.stderr.take().map(|mut e| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = e.read_to_string(&mut s);
            s
        })
    });
    let out = child.stdout.take().expect("piped");
    let mut last = Instant::now();
    let began = Instant::now();
    let unpacked = unpack(out, root, network_paths, |bytes| {
        if last.elapsed() >= Duration::from_secs(10) {
            let rate = bytes as f64 / began.elapsed().as_secs_f64().max(0.001) / 1048576.0;
            show(&format!(
                "multicast: {} MiB received ({rate:.1} MiB/s)",
                bytes >> 20
            ));
            last = Instant::now();
        }
    });
    if unpacked.is_err() {
        let _ = child.kill();
    }
    let status = child.wait().map_err(|e| format!("{UDP_RECEIVER}: {e}"))?;
    let stderr = err.and_then(|h| h.join().ok()).unwrap_or_default();
    let (bytes, sha) = unpacked?;
    if !status.success() || bytes == 0 {
        let tail: Vec<&str> = stderr
            .split(['\r', '\n'])
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        return Err(format!(
            "{UDP_RECEIVER} ended with {status} after {bytes} bytes: {}",
            tail[tail.len().saturating_sub(2)..].join(" | ")
        ));
    }
    Ok((bytes, sha))
}

/// Asks until the server says what the session sent.
fn outcome(plan: &InstallPlan) -> Result<MulticastAnswer, String> {
    let deadline = Instant::now() + OUTCOME_WAIT;
    loop {
        match ask(plan)? {
            MulticastAnswer::Streaming { retry_secs } if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_secs(retry_secs.clamp(1, 10)))
            }
            a => return Ok(a),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unpack::{clear, under_network_mount};

    const ROUTES: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
eth0\t00000000\t01002C0A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
eth0.100\t00002C0A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";

    #[test]
    fn the_interface_towards_the_server() {
        assert_eq!(
            route_interface(ROUTES, "10.44.0.1".parse().unwrap()).as_deref(),
            Some("eth0.100")
        );
        assert_eq!(
            route_interface(ROUTES, "192.168.1.1".parse().unwrap()).as_deref(),
            Some("eth0"),
            "the default route"
        );
        assert_eq!(
            route_interface("Iface\n", "10.0.0.1".parse().unwrap()),
            None
        );
        assert_eq!(
            server_ip("http://10.44.0.1:8080"),
            Some("10.44.0.1".parse().unwrap())
        );
        assert_eq!(
            server_ip("http://10.44.0.1/x"),
            Some("10.44.0.1".parse().unwrap())
        );
        assert_eq!(server_ip("http://server.lan"), None);
    }

    #[test]
    fn only_the_servers_bytes_and_hash_pass() {
        let sent = MulticastAnswer::Sent {
            bytes: 10,
            sha256: "aa".into(),
        };
        assert!(check(&sent, 10, "aa").is_ok());
        assert!(check(&sent, 9, "aa")
            .unwrap_err()
            .contains("received 9 bytes"));
        assert!(check(&sent, 10, "bb").unwrap_err().contains("SHA-256"));
        let failed = MulticastAnswer::Failed {
            reason: "no receiver".into(),
        };
        assert!(check(&failed, 10, "aa")
            .unwrap_err()
            .contains("no receiver"));
    }

    /// A tar made by GNU tar as the server makes it: the tree comes back with
    /// its modes, symlinks and hard links, and the hash covers the padding.
    #[test]
    fn a_gnu_tar_stream_unpacks_with_modes_links_and_its_hash() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let src = tempfile::tempdir().unwrap();
        let s = src.path();
        std::fs::create_dir_all(s.join("etc/ssh")).unwrap();
        std::fs::write(s.join("etc/hostname"), "golden\n").unwrap();
        std::fs::write(s.join("etc/ssh/secret"), "x").unwrap();
        std::fs::set_permissions(
            s.join("etc/ssh/secret"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        std::os::unix::fs::symlink("hostname", s.join("etc/link")).unwrap();
        std::fs::hard_link(s.join("etc/hostname"), s.join("etc/hard")).unwrap();
        let tar = Command::new("tar")
            .args([
                "--create",
                "--file=-",
                "--format=gnu",
                "--numeric-owner",
                "--sort=name",
            ])
            .arg(format!("--directory={}", s.display()))
            .arg(".")
            .output()
            .unwrap();
        assert!(tar.status.success());
        let dst = tempfile::tempdir().unwrap();
        let mut ticks = 0;
        let (bytes, sha) = unpack(&tar.stdout[..], dst.path(), &[], |_| ticks += 1).unwrap();
        assert_eq!(bytes, tar.stdout.len() as u64);
        assert_eq!(
            sha,
            rollout::wire::multicast::hex(&Sha256::digest(&tar.stdout))
        );
        assert!(ticks > 0);
        let d = dst.path();
        assert_eq!(
            std::fs::read_to_string(d.join("etc/hostname")).unwrap(),
            "golden\n"
        );
        assert_eq!(
            std::fs::metadata(d.join("etc/ssh/secret")).unwrap().mode() & 0o7777,
            0o600
        );
        assert_eq!(
            std::fs::read_link(d.join("etc/link")).unwrap(),
            Path::new("hostname")
        );
        assert_eq!(
            std::fs::metadata(d.join("etc/hard")).unwrap().ino(),
            std::fs::metadata(d.join("etc/hostname")).unwrap().ino()
        );
        // And a check that fails removes it all, lost+found aside.
        std::fs::create_dir(d.join("lost+found")).unwrap();
        clear(d).unwrap();
        let left: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["lost+found"]);
    }

    /// A node with `/usr` over NFS gets the same stream as every other node
    /// but keeps none of `/usr`'s files: the hash still covers all of it.
    #[test]
    fn files_under_a_network_mount_are_not_unpacked() {
        assert!(under_network_mount("./usr/bin/ls", &["/usr".into()]));
        assert!(under_network_mount("usr/share/x", &["/usr/".into()]));
        assert!(!under_network_mount("./usr/", &["/usr".into()]));
        assert!(!under_network_mount("./usrlocal/x", &["/usr".into()]));
        assert!(!under_network_mount("./etc/hostname", &["/usr".into()]));
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(src.path().join("usr/bin")).unwrap();
        std::fs::create_dir_all(src.path().join("etc")).unwrap();
        std::fs::write(src.path().join("usr/bin/tool"), "x").unwrap();
        std::fs::write(src.path().join("etc/hostname"), "golden\n").unwrap();
        let tar = Command::new("tar")
            .args(["--create", "--file=-", "--format=gnu"])
            .arg(format!("--directory={}", src.path().display()))
            .arg(".")
            .output()
            .unwrap();
        let dst = tempfile::tempdir().unwrap();
        let (bytes, _) = unpack(&tar.stdout[..], dst.path(), &["/usr".into()], |_| {}).unwrap();
        assert_eq!(bytes, tar.stdout.len() as u64);
        assert!(dst.path().join("etc/hostname").is_file());
        assert!(dst.path().join("usr").is_dir(), "the mount point is made");
        assert!(!dst.path().join("usr/bin").exists());
    }

    #[test]
    fn a_truncated_stream_is_an_error() {
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("big"), vec![7u8; 100_000]).unwrap();
        let tar = Command::new("tar")
            .args(["--create", "--file=-", "--format=gnu"])
            .arg(format!("--directory={}", src.path().display()))
            .arg(".")
            .output()
            .unwrap();
        let dst = tempfile::tempdir().unwrap();
        let e = unpack(&tar.stdout[..50_000], dst.path(), &[], |_| {}).unwrap_err();
        assert!(e.contains("tar"), "{e}");
    }
}
