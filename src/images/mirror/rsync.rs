//! The rsync client runs of a mirror: the index (every image's metadata, small)
//! and one serial (its tree, large, with progress), and what their failures mean.

use super::plan::{self, Progress, Stats};
use super::MirrorError;
use crate::config::MirrorUrl;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

/// How to reach the primary.
#[derive(Debug, Clone)]
pub struct Client {
    pub url: MirrorUrl,
    pub password_file: PathBuf,
    pub rsync: PathBuf,
    /// KiB/s, 0: no limit.
    pub bwlimit: u64,
    /// rsync's `--timeout`: a network gone mid-copy ends the copy after this long
    /// without data (the staging copy stays for the next try).
    pub io_timeout: Duration,
}

/// Only what the index needs: each image's `published` link and each serial's
/// meta.json (a serial without one is incomplete on the primary too).
const INDEX_FILTER: &[&str] = &[
    "--include=/*/",
    "--include=/*/published",
    "--include=/*/serials/",
    "--include=/*/serials/*/",
    "--include=/*/serials/*/meta.json",
    "--exclude=*",
];

impl Client {
    fn command(&self) -> Result<tokio::process::Command, MirrorError> {
        let password = crate::config::read_mirror_password(&self.password_file)
            .map_err(MirrorError::Password)?;
        let mut cmd = tokio::process::Command::new(&self.rsync);
        cmd.env("RSYNC_PASSWORD", password)
            .arg(format!("--timeout={}", self.io_timeout.as_secs().max(1)))
            .arg("--contimeout=10")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe and touches only the child.
        unsafe {
            cmd.pre_exec(|| {
                // A server killed outright (SIGKILL, OOM) must not leave its rsync
                // writing into the staging copy while the restarted server starts
                // another: SIGTERM it with us, which also keeps its partial file.
                // (Tied to the spawning thread: a runtime worker, which lives as
                // long as the server; never spawned from the blocking pool.)
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(cmd)
    }

    /// Copies the primary's index into `dest` (an image store's `images/`), deleting
    /// what the primary no longer has.
    pub async fn index(&self, dest: &Path, cancel: &CancellationToken) -> Result<(), MirrorError> {
        std::fs::create_dir_all(dest).map_err(|e| MirrorError::io(dest, e))?;
        let mut cmd = self.command()?;
        cmd.args(["-rlt", "--delete"])
            .args(INDEX_FILTER)
            .arg(self.url.module_url(""))
            .arg(dest);
        self.run(cmd, cancel, &mut |_| {}).await.map(|_| ())
    }

    /// Copies `{image}/serials/{serial}/` into `staging`, resuming whatever is
    /// there (`--partial` kept the file it was writing when it was stopped) and
    /// using `basis` (an older serial here) for files that did not change.
    pub async fn serial(
        &self,
        image: &str,
        serial: u64,
        staging: &Path,
        basis: Option<&Path>,
        cancel: &CancellationToken,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<Stats, MirrorError> {
        let mut cmd = self.command()?;
        // The installer's flags (hard links, ACLs, xattrs, sparse files): a copy
        // here is what a node would have got from the primary.
        cmd.args([
            "-aHAXS",
            "--numeric-ids",
            "--delete",
            // Compare contents, not size and mtime: a file changed in `enter`
            // within the same second at the same size would otherwise be taken
            // from the older serial (`--copy-dest`) unchanged. The primary reads
            // the serial once per mirror for it; a wrong serial is worse.
            "--checksum",
            "--partial",
            "--no-inc-recursive",
            "--info=progress2",
            // Progress as it happens, not in 4 KiB blocks of a buffered pipe.
            "--outbuf=N",
            "--stats",
        ]);
        if self.bwlimit > 0 {
            cmd.arg(format!("--bwlimit={}", self.bwlimit));
        }
        if let Some(b) = basis {
            // Unchanged files are copied locally, changed ones delta-transferred
            // against the older version: a new serial costs its changes, not its size.
            cmd.arg(format!("--copy-dest={}", b.display()));
        }
        cmd.arg(self.url.module_url(&format!("{image}/serials/{serial}/")))
            .arg(staging);
        let out = self.run(cmd, cancel, progress).await?;
        Ok(plan::parse_stats(&out))
    }

    /// Runs rsync to the end (or kills it when cancelled), feeding progress lines
    /// to `progress`; returns its stdout.
    async fn run(
        &self,
        mut cmd: tokio::process::Command,
        cancel: &CancellationToken,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<String, MirrorError> {
        let mut child = cmd.spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                MirrorError::ToolMissing
            } else {
                MirrorError::Rsync {
                    url: self.url.to_string(),
                    code: None,
                    detail: e.to_string(),
                }
            }
        })?;
        let mut stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let err_reader = tokio::spawn(async move {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s).await;
            s
        });
        let mut out = Vec::new();
        let mut line = Vec::new();
        let mut buf = [0u8; 8192];
        let mut liveness = plan::Liveness::new(std::time::Instant::now(), self.io_timeout);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut output = 0u64;
        loop {
            let n = tokio::select! {
                _ = cancel.cancelled() => {
                    stop(&mut child).await;
                    return Err(MirrorError::Cancelled);
                }
                _ = tick.tick() => {
                    let read = child.id().map(tree_rchar).unwrap_or(0);
                    if liveness.stalled(std::time::Instant::now(), read + output) {
                        stop(&mut child).await;
                        return Err(MirrorError::Unreachable {
                            url: self.url.to_string(),
                            port: self.url.port,
                            detail: format!(
                                "no data from it for {} s (network gone?); what was copied is kept",
                                self.io_timeout.as_secs()
                            ),
                        });
                    }
                    continue;
                }
                n = stdout.read(&mut buf) => n.unwrap_or(0),
            };
            output += n as u64;
            if n == 0 {
                break;
            }
            for &b in &buf[..n] {
                // progress2 rewrites its line with \r; the stats end with \n.
                if b == b'\r' || b == b'\n' {
                    if let Some(p) = plan::parse_progress(&String::from_utf8_lossy(&line)) {
                        progress(p);
                    }
                    out.extend_from_slice(&line);
                    out.push(b'\n');
                    line.clear();
                } else {
                    line.push(b);
                }
            }
        }
        out.extend_from_slice(&line);
        let status = tokio::select! {
            _ = cancel.cancelled() => {
                stop(&mut child).await;
                return Err(MirrorError::Cancelled);
            }
            s = child.wait() => s.map_err(|e| MirrorError::Rsync {
                url: self.url.to_string(),
                code: None,
                detail: e.to_string(),
            })?,
        };
        let err = err_reader.await.unwrap_or_default();
        if status.success() {
            return Ok(String::from_utf8_lossy(&out).into_owned());
        }
        Err(classify(&self.url, status.code(), &err))
    }
}

/// Bytes rsync and the processes it forked (the receiver) have read so far:
/// the network and the local basis files. rsync's own `--timeout` misses a
/// primary that went silent while the receiving side's keep-alives still fit
/// into the socket buffer; this counter stops growing then.
fn tree_rchar(pid: u32) -> u64 {
    let own = std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("rchar:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0);
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    own + children
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .map(tree_rchar)
        .sum::<u64>()
}

/// SIGTERM first: rsync then keeps the file it was writing (`--partial`), which
/// SIGKILL would lose; SIGKILL only if it does not exit within 5 s.
async fn stop(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::SIGTERM,
        );
    }
    if tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

/// rsync's exit code and message turned into what the operator has to do.
pub fn classify(url: &MirrorUrl, code: Option<i32>, stderr: &str) -> MirrorError {
    let url_s = url.to_string();
    let detail = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .find(|l| l.starts_with("@ERROR") || l.starts_with("rsync:"))
        .or_else(|| stderr.lines().map(str::trim).find(|l| !l.is_empty()))
        .unwrap_or("no message")
        .to_string();
    if stderr.contains("auth failed") {
        return MirrorError::AuthFailed { url: url_s };
    }
    if stderr.contains("Unknown module") {
        return MirrorError::NotExported { url: url_s };
    }
    if stderr.contains("access denied") {
        return MirrorError::HostDenied { url: url_s };
    }
    match code {
        // Socket I/O, connection timeout, timeout in data send/receive.
        Some(10 | 30 | 35) => MirrorError::Unreachable {
            url: url_s,
            port: url.port,
            detail,
        },
        // Files vanished during the copy: the primary deleted them (a prune).
        Some(23 | 24) => MirrorError::Vanished { url: url_s, detail },
        _ => MirrorError::Rsync {
            url: url_s,
            code,
            detail,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_say_what_to_fix() {
        let url = MirrorUrl::try_from("rsync://p:8873/").unwrap();
        let e = classify(&url, Some(5), "@ERROR: auth failed on module _mirror\nrsync error: error starting client-server protocol (code 5)").to_string();
        assert!(
            e.contains("refused the mirror password") && e.contains("mirror_password_file"),
            "{e}"
        );
        let e = classify(&url, Some(5), "@ERROR: Unknown module '_mirror'").to_string();
        assert!(e.contains("set [images] mirror_password_file on it"), "{e}");
        let e = classify(
            &url,
            Some(5),
            "@ERROR: access denied to _mirror from x (10.9.0.1)",
        )
        .to_string();
        assert!(e.contains("mirror_hosts"), "{e}");
        let e = classify(
            &url,
            Some(10),
            "rsync: [Receiver] failed to connect to p (10.0.0.1): Connection refused (111)\nrsync error: error in socket IO (code 10)",
        );
        assert!(matches!(e, MirrorError::Unreachable { .. }), "{e}");
        let e = e.to_string();
        assert!(
            e.contains("Connection refused") && e.contains("port 8873"),
            "{e}"
        );
        assert!(matches!(
            classify(&url, Some(24), "file has vanished: \"/x\""),
            MirrorError::Vanished { .. }
        ));
        let e = classify(&url, Some(2), "").to_string();
        assert!(e.contains("exit code 2"), "{e}");
    }
}
