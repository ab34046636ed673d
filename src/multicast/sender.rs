//! One session's stream: GNU tar of the serial's tree, through this process
//! (which counts and hashes every byte) into udpcast's `udp-sender` on the
//! provisioning interface. Blocking; `super::Multicast` runs it on a thread.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use crate::config::MulticastConfig;

pub const UDP_SENDER: &str = "udp-sender";

/// What one stream needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendSpec {
    /// The serial's tree (the rsync module's directory).
    pub root: PathBuf,
    /// The image's rsync excludes (anchored, `/x/` for a directory).
    pub excludes: Vec<String>,
    pub interface: String,
    pub port: u16,
    pub cfg: MulticastConfig,
}

/// What was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub bytes: u64,
    pub sha256: String,
    /// udp-sender's last statistics line (`bytes= … re-xmits=…`).
    pub stats: String,
}

/// tar's arguments: numeric owners, name order, the excludes anchored at the
/// root as rsync reads them (`*` does not cross `/`).
pub fn tar_args(spec: &SendSpec) -> Vec<String> {
    image_tar_args(&spec.root, &spec.excludes)
}

/// GNU tar's arguments for a serial's tree at `root` with the image's rsync
/// `excludes`: the one stream format both first-install prefills (this
/// module's multicast and `GET …/image.tar`) unpack.
pub fn image_tar_args(root: &std::path::Path, excludes: &[String]) -> Vec<String> {
    let mut a: Vec<String> = [
        "--create",
        "--file=-",
        "--format=gnu",
        "--numeric-owner",
        "--sort=name",
        "--anchored",
        "--no-wildcards-match-slash",
    ]
    .map(String::from)
    .into();
    for e in excludes {
        let Some(path) = e.strip_prefix('/') else {
            continue;
        };
        let path = path.trim_end_matches('/');
        if !path.is_empty() {
            a.push(format!("--exclude=./{path}"));
        }
    }
    a.push(format!("--directory={}", root.display()));
    a.push(".".into());
    a
}

/// udp-sender's arguments: no keyboard, start when `max_receivers` connected
/// or `wait_secs` (+ a margin) after the first did, give up if none came.
pub fn sender_args(spec: &SendSpec) -> Vec<String> {
    use super::session::{RECEIVER_SLACK_SECS, SENDER_MARGIN_SECS};
    let c = &spec.cfg;
    let mut a = vec![
        "--interface".to_string(),
        spec.interface.clone(),
        "--portbase".into(),
        spec.port.to_string(),
        "--nokbd".into(),
        "--mcast-rdv-address".into(),
        crate::wire::multicast::RDV_ADDRESS.into(),
        "--min-receivers".into(),
        c.max_receivers.to_string(),
        "--max-wait".into(),
        (c.wait_secs + SENDER_MARGIN_SECS).to_string(),
        "--start-timeout".into(),
        (c.wait_secs + SENDER_MARGIN_SECS + RECEIVER_SLACK_SECS).to_string(),
        // A receiver that stops answering is dropped after this many
        // REQACKs instead of holding up the others (its install falls back to rsync).
        "--retries-until-drop".into(),
        "30".into(),
    ];
    if c.rate_mbps > 0 {
        a.push("--max-bitrate".into());
        a.push(format!("{}m", c.rate_mbps));
    }
    a
}

/// udp-sender's final statistics line, from its progress output (`\r`-separated).
pub fn last_stats(output: &str) -> String {
    output
        .split(['\r', '\n'])
        .rfind(|l| l.contains("bytes=") || l.contains("re-xmits"))
        .unwrap_or("")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs the stream to its end.
pub fn stream(spec: &SendSpec) -> Result<Sent, String> {
    let mut sender = Command::new(UDP_SENDER)
        .args(sender_args(spec))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{UDP_SENDER}: {e} (apt-get install udpcast)"))?;
    let mut tar = match Command::new("tar")
        .args(tar_args(spec))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(t) => t,
        Err(e) => {
            let _ = sender.kill();
            let _ = sender.wait();
            return Err(format!("tar: {e}"));
        }
    };
    let out = drain(sender.stdout.take());
    let err = drain(sender.stderr.take());
    let tar_err = drain(tar.stderr.take());
    let mut input = sender.stdin.take().expect("piped");
    let mut from = tar.stdout.take().expect("piped");
    let mut hash = Sha256::new();
    let mut bytes = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    let pumped: Result<(), String> = loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => break Err(format!("reading tar: {e}")),
        };
        if let Err(e) = input.write_all(&buf[..n]) {
            break Err(format!(
                "{UDP_SENDER} stopped reading after {bytes} bytes ({e}): no receiver connected in time, or all were dropped"
            ));
        }
        hash.update(&buf[..n]);
        bytes += n as u64;
    };
    drop(input);
    drop(from);
    if pumped.is_err() {
        let _ = tar.kill();
    }
    let tar_status = tar.wait().map_err(|e| format!("tar: {e}"))?;
    let sender_status = sender.wait().map_err(|e| format!("{UDP_SENDER}: {e}"))?;
    let output = format!("{}{}", join(out), join(err));
    let stats = last_stats(&output);
    pumped?;
    if !tar_status.success() {
        return Err(format!(
            "tar of {} failed ({tar_status}): {}",
            spec.root.display(),
            join(tar_err).trim()
        ));
    }
    if !sender_status.success() || !output.contains("Transfer complete") {
        return Err(format!(
            "{UDP_SENDER} ended without completing the transfer ({sender_status}): {}",
            tail(&output)
        ));
    }
    Ok(Sent {
        bytes,
        sha256: crate::wire::multicast::hex(&hash.finalize()),
        stats,
    })
}

fn drain<R: Read + Send + 'static>(r: Option<R>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut s);
        }
        String::from_utf8_lossy(&s).into_owned()
    })
}

fn join(h: std::thread::JoinHandle<String>) -> String {
    h.join().unwrap_or_default()
}

fn tail(output: &str) -> String {
    let lines: Vec<&str> = output
        .split(['\r', '\n'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines[lines.len().saturating_sub(3)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> SendSpec {
        SendSpec {
            root: "/var/lib/rollout/images/default/serials/3/root".into(),
            excludes: vec!["/var/lib/slurm/".into(), "/etc/*.key".into(), "bad".into()],
            interface: "eno2".into(),
            port: 9002,
            cfg: MulticastConfig {
                enabled: true,
                wait_secs: 10,
                max_receivers: 64,
                rate_mbps: 500,
                port_base: 9000,
            },
        }
    }

    #[test]
    fn tar_excludes_are_the_images_anchored_at_its_root() {
        let a = tar_args(&spec());
        assert!(
            a.contains(&"--exclude=./var/lib/slurm".to_string()),
            "{a:?}"
        );
        assert!(a.contains(&"--exclude=./etc/*.key".to_string()), "{a:?}");
        assert!(!a.iter().any(|x| x.contains("bad")), "{a:?}");
        // Options that change how --exclude matches must come before it.
        let anchored = a.iter().position(|x| x == "--anchored").unwrap();
        let first = a.iter().position(|x| x.starts_with("--exclude")).unwrap();
        assert!(anchored < first);
        assert_eq!(a.last().unwrap(), ".");
    }

    #[test]
    fn sender_waits_a_little_longer_than_the_window() {
        let a = sender_args(&spec()).join(" ");
        assert!(
            a.contains("--interface eno2 --portbase 9002 --nokbd"),
            "{a}"
        );
        assert!(a.contains("--min-receivers 64"), "{a}");
        assert!(a.contains("--max-wait 13"), "{a}");
        assert!(a.contains("--max-bitrate 500m"), "{a}");
    }

    #[test]
    fn the_last_statistics_line() {
        let out = "Udp-sender 20120424\nbytes=  1 000  re-xmits=0000000 (  0.0%)\rbytes=  3 000 000  re-xmits=0000038 (  1.8%) slice=0091 -   0\n\nTransfer complete.\n";
        assert_eq!(
            last_stats(out),
            "bytes= 3 000 000 re-xmits=0000038 ( 1.8%) slice=0091 - 0"
        );
    }
}
