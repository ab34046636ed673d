//! Copying the golden image with rsync, parsing `--info=progress2` output.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::paths;
use rollout::wire::RsyncCredential;

/// `rsync://user@host…` for a module URL, so the daemon asks for that user's
/// password; the password itself goes in `RSYNC_PASSWORD`, out of `ps`.
pub fn with_user(url: &str, user: &str) -> String {
    match url.strip_prefix("rsync://") {
        Some(rest) if !user.is_empty() => {
            let rest = rest.split_once('@').map_or(rest, |(_, r)| r);
            format!("rsync://{user}@{rest}")
        }
        _ => url.to_string(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub bytes: u64,
    pub percent: u8,
}

impl Progress {
    /// progress2 shows no total; estimate it from bytes and percent.
    pub fn estimated_total(&self) -> u64 {
        if self.percent == 0 {
            return self.bytes;
        }
        (self.bytes as u128 * 100 / self.percent as u128) as u64
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RsyncError {
    #[error("rsync could not be started ({0}); looked for {places}: the initramfs must contain {path}, an installed node needs rsync in one of those places", places = CANDIDATES.join(", "), path = paths::RSYNC)]
    Spawn(#[source] std::io::Error),
    #[error("writing rsync's list of files to {path}: {source}")]
    FileList {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("rsync from {url} failed {attempts} times; last exit {status}: {stderr}")]
    Failed {
        url: String,
        attempts: u32,
        status: String,
        stderr: String,
    },
}

/// Parses one progress2 line such as
/// `  1,234,567  45%   12.34MB/s    0:00:10 (xfr#12, ir-chk=100/200)`.
pub fn parse_progress2(line: &str) -> Option<Progress> {
    let mut it = line.split_whitespace();
    let bytes_tok = it.next()?;
    let pct_tok = it.next()?.strip_suffix('%')?;
    if bytes_tok.is_empty()
        || !bytes_tok
            .chars()
            .all(|c| c.is_ascii_digit() || c == ',' || c == '.')
    {
        return None;
    }
    let bytes: u64 = bytes_tok.replace([',', '.'], "").parse().ok()?;
    let percent: u8 = pct_tok.parse().ok()?;
    (percent <= 100).then_some(Progress { bytes, percent })
}

pub fn args(url: &str, dest: &str, excludes: &[String]) -> Vec<String> {
    let mut a: Vec<String> = [
        "-aHAXS",
        "--numeric-ids",
        "--devices",
        "--specials",
        "--info=progress2",
        // A full file list up front makes progress2's percentage meaningful.
        "--no-inc-recursive",
        "--partial",
        "--timeout=120",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for e in excludes {
        a.push(format!("--exclude={e}"));
    }
    // Trailing slashes: copy the module's contents into dest, not a subdirectory.
    a.push(if url.ends_with('/') {
        url.to_string()
    } else {
        format!("{url}/")
    });
    a.push(if dest.ends_with('/') {
        dest.to_string()
    } else {
        format!("{dest}/")
    });
    a
}

/// Copies just `files` (paths from the image root, as `/var/log/lastlog`) from
/// `url` into `dest`, with the base flags' `--sparse`, so their holes stay
/// holes. A copy of the whole tree after it that says `--no-sparse` finds them
/// up to date (same size and mtime) and leaves them as they are. The list goes
/// to rsync NUL-separated, so a name is taken literally: no wildcards, no
/// trouble with newlines.
#[allow(clippy::too_many_arguments)]
pub fn copy_listed(
    url: &str,
    auth: Option<&RsyncCredential>,
    dest: &str,
    excludes: &[String],
    extra: &[&str],
    files: &[String],
    attempts: u32,
    on_retry: impl FnMut(u32, &str),
) -> Result<Outcome, RsyncError> {
    let list = std::env::temp_dir().join(format!("rollout-rsync-list.{}", std::process::id()));
    let mut body = Vec::new();
    for f in files {
        body.extend_from_slice(f.trim_start_matches('/').as_bytes());
        body.push(0);
    }
    std::fs::write(&list, body).map_err(|source| RsyncError::FileList {
        path: list.display().to_string(),
        source,
    })?;
    let files_from = format!("--files-from={}", list.display());
    let mut flags = extra.to_vec();
    flags.extend([files_from.as_str(), "--from0"]);
    let done = copy_with(
        url,
        auth,
        dest,
        excludes,
        &flags,
        attempts,
        Duration::from_secs(2),
        |_| {},
        on_retry,
    );
    let _ = std::fs::remove_file(&list);
    done
}

/// Where rsync may be: the initramfs has it at [`paths::RSYNC`]; an installed
/// node whose `/usr` is an NFS mount may keep its own copy on the local root
/// (the lab's tiny image does), in `/bin`.
const CANDIDATES: [&str; 3] = [paths::RSYNC, "/bin/rsync", "/usr/local/bin/rsync"];

/// The first rsync of [`CANDIDATES`] that exists (the initramfs's path when
/// none does, so the spawn error names it).
fn program() -> &'static str {
    CANDIDATES
        .into_iter()
        .find(|p| std::path::Path::new(p).is_file())
        .unwrap_or(paths::RSYNC)
}

/// The transfer checksums of the installer's rsync (`rsync --version`);
/// empty when it cannot say.
pub fn local_checksums() -> Vec<String> {
    Command::new(program())
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map(|o| rollout::rsync_caps::checksum_list(&String::from_utf8_lossy(&o.stdout)))
        .unwrap_or_default()
}

/// rsync exit codes that mean the copy is complete: 0, and 24 ("some files
/// vanished"), which a live image tree can produce harmlessly.
pub fn exit_ok(code: Option<i32>) -> bool {
    matches!(code, Some(0) | Some(24))
}

/// Splits a stream on `\r` and `\n` (progress2 rewrites its line with `\r`).
#[derive(Default)]
pub struct LineSplitter {
    buf: Vec<u8>,
}

impl LineSplitter {
    pub fn push(&mut self, data: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        for &b in data {
            if b == b'\r' || b == b'\n' {
                if !self.buf.is_empty() {
                    out.push(String::from_utf8_lossy(&self.buf).into_owned());
                    self.buf.clear();
                }
            } else {
                self.buf.push(b);
            }
        }
        out
    }
}

/// Runs rsync until it succeeds or `attempts` are used; rsync itself skips what
/// an earlier attempt already copied (and `--partial` keeps half-sent files).
/// `on_progress` is called at most every `every`.
#[allow(clippy::too_many_arguments)]
pub fn copy(
    url: &str,
    auth: Option<&RsyncCredential>,
    dest: &str,
    excludes: &[String],
    attempts: u32,
    every: Duration,
    on_progress: impl FnMut(Progress),
    on_retry: impl FnMut(u32, &str),
) -> Result<Progress, RsyncError> {
    copy_with(
        url,
        auth,
        dest,
        excludes,
        &[],
        attempts,
        every,
        on_progress,
        on_retry,
    )
    .map(|o| o.progress)
}

/// What a successful [`copy_with`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Complete (percent 100) once rsync succeeded.
    pub progress: Progress,
    /// Every stdout line that is not a progress line, from all attempts in order
    /// (itemized changes and `--stats` output when those flags are given).
    pub lines: Vec<String>,
}

/// [`copy`] with extra rsync flags (placed before the excludes) and the other
/// output lines kept, so callers can add `--delete`, `-i` or `--stats`. With
/// `auth`, rsync logs in as its user with its password from the environment.
#[allow(clippy::too_many_arguments)]
pub fn copy_with(
    url: &str,
    auth: Option<&RsyncCredential>,
    dest: &str,
    excludes: &[String],
    extra: &[&str],
    attempts: u32,
    every: Duration,
    mut on_progress: impl FnMut(Progress),
    mut on_retry: impl FnMut(u32, &str),
) -> Result<Outcome, RsyncError> {
    let source = auth.map_or_else(|| url.to_string(), |a| with_user(url, &a.user));
    let mut argv = args(&source, dest, excludes);
    let at = argv.len() - 2 - excludes.len();
    argv.splice(at..at, extra.iter().map(|s| s.to_string()));
    let mut lines = Vec::new();
    let mut last = Progress {
        bytes: 0,
        percent: 0,
    };
    let mut status = String::new();
    let mut stderr_text = String::new();
    for attempt in 1..=attempts {
        let mut cmd = Command::new(program());
        cmd.env_remove("RSYNC_PASSWORD");
        if let Some(a) = auth {
            cmd.env("RSYNC_PASSWORD", &a.password);
        }
        let mut child = cmd
            .args(&argv)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(RsyncError::Spawn)?;
        let mut err_pipe = child.stderr.take().expect("stderr is piped");
        let err_thread = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err_pipe.read_to_string(&mut s);
            s
        });
        let mut out = child.stdout.take().expect("stdout is piped");
        let mut split = LineSplitter::default();
        let mut last_report: Option<Instant> = None;
        let mut chunk = [0u8; 4096];
        loop {
            let n = match out.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            for line in split.push(&chunk[..n]) {
                if let Some(p) = parse_progress2(&line) {
                    last = p;
                    if !matches!(last_report, Some(t) if t.elapsed() < every) {
                        last_report = Some(Instant::now());
                        on_progress(p);
                    }
                } else {
                    lines.push(line);
                }
            }
        }
        let exit = child.wait().map_err(RsyncError::Spawn)?;
        stderr_text = err_thread.join().unwrap_or_default();
        if exit_ok(exit.code()) {
            // progress2's last line can say 99% for a finished copy.
            return Ok(Outcome {
                progress: Progress {
                    percent: 100,
                    ..last
                },
                lines,
            });
        }
        status = exit.to_string();
        // A refused login stays refused: no point waiting to try again.
        let refused = stderr_text.contains("@ERROR: auth failed");
        let tail: Vec<&str> = stderr_text.lines().rev().take(5).collect();
        stderr_text = tail.into_iter().rev().collect::<Vec<_>>().join(" | ");
        if refused {
            return Err(RsyncError::Failed {
                url: url.to_string(),
                attempts: attempt,
                status,
                stderr: format!("{stderr_text} (the server refused the rsync credential; a node needs the one its install wrote, a reinstall issues a new one)"),
            });
        }
        if attempt < attempts {
            on_retry(attempt, &format!("{status}: {stderr_text}"));
            std::thread::sleep(Duration::from_secs(5 * 2u64.pow(attempt - 1).min(8)));
        }
    }
    Err(RsyncError::Failed {
        url: url.to_string(),
        attempts,
        status,
        stderr: stderr_text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_progress2_lines() {
        assert_eq!(
            parse_progress2(
                "    123,456,789  45%   12.34MB/s    0:00:10 (xfr#123, ir-chk=1000/2000)"
            ),
            Some(Progress {
                bytes: 123_456_789,
                percent: 45
            })
        );
        assert_eq!(
            parse_progress2("              0   0%    0.00kB/s    0:00:00"),
            Some(Progress {
                bytes: 0,
                percent: 0
            })
        );
        assert_eq!(
            parse_progress2("  1,073,741,824 100%   50.00MB/s    0:00:20 (xfr#9, to-chk=0/9)"),
            Some(Progress {
                bytes: 1 << 30,
                percent: 100
            })
        );
        assert_eq!(parse_progress2("sending incremental file list"), None);
        assert_eq!(parse_progress2("etc/hostname"), None);
        assert_eq!(parse_progress2("rsync error: some files 12% x"), None);
        assert_eq!(parse_progress2(""), None);
    }

    #[test]
    fn estimated_total_from_percent() {
        let p = Progress {
            bytes: 250,
            percent: 25,
        };
        assert_eq!(p.estimated_total(), 1000);
        assert_eq!(
            Progress {
                bytes: 7,
                percent: 0
            }
            .estimated_total(),
            7
        );
    }

    #[test]
    fn splitter_handles_carriage_returns_across_chunks() {
        let mut s = LineSplitter::default();
        assert_eq!(
            s.push(b"  1,000  10%  1MB/s 0:00:01\r  2,0"),
            ["  1,000  10%  1MB/s 0:00:01"]
        );
        assert_eq!(s.push(b"00  20%\r\n"), ["  2,000  20%"]);
    }

    #[test]
    fn argv_has_flags_excludes_and_slashes() {
        let a = args(
            "rsync://10.44.0.1/img-3",
            "/target",
            &["/etc/ssh/ssh_host_*".into(), "/proc/*".into()],
        );
        assert_eq!(
            &a[..5],
            [
                "-aHAXS",
                "--numeric-ids",
                "--devices",
                "--specials",
                "--info=progress2"
            ]
        );
        assert!(a.contains(&"--partial".to_string()));
        assert!(a.contains(&"--exclude=/etc/ssh/ssh_host_*".to_string()));
        assert_eq!(&a[a.len() - 2..], ["rsync://10.44.0.1/img-3/", "/target/"]);
        assert!(exit_ok(Some(24)) && exit_ok(Some(0)) && !exit_ok(Some(23)) && !exit_ok(None));
    }

    #[test]
    fn the_user_goes_into_the_url() {
        assert_eq!(
            with_user("rsync://10.44.0.1:873/web-3/", "install-5254"),
            "rsync://install-5254@10.44.0.1:873/web-3/"
        );
        assert_eq!(
            with_user("rsync://old@h/m/", "node-1"),
            "rsync://node-1@h/m/"
        );
        assert_eq!(with_user("rsync://h/m/", ""), "rsync://h/m/");
        assert_eq!(with_user("/local/dir/", "u"), "/local/dir/");
    }
}
