//! Running one command on one node with the system `ssh` client and the
//! server's key, with a hard deadline, checking the node's host key against
//! the one its installer reported ([`known_hosts`]): never learned on contact.

pub mod known_hosts;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How to reach nodes: the server's key and its own known_hosts file.
#[derive(Debug, Clone)]
pub struct SshSettings {
    pub ssh: PathBuf,
    pub key: PathBuf,
    pub known_hosts: PathBuf,
    pub user: String,
    pub connect_timeout_secs: u64,
}

impl SshSettings {
    /// The key `rollout serve` generates under `{state_dir}/ssh/`.
    pub fn for_state_dir(state_dir: &Path) -> SshSettings {
        SshSettings {
            ssh: PathBuf::from("ssh"),
            key: state_dir.join("ssh/id_ed25519"),
            known_hosts: state_dir.join("ssh/known_hosts"),
            user: "root".into(),
            connect_timeout_secs: 5,
        }
    }
}

/// `'…'` quoting for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The remote command line: a single argument is a shell snippet as typed
/// (`rollout exec -- 'uptime; df -h'`); several are quoted one by one so
/// `rollout exec -- sh -c 'echo a b'` runs exactly that argv.
pub fn remote_command(argv: &[String]) -> String {
    match argv {
        [one] => one.clone(),
        many => many
            .iter()
            .map(|a| shell_quote(a))
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// ssh's argv for `remote` on the node `hostname` at `host` (its address). The
/// host key is looked up under the hostname (`HostKeyAlias`), so whatever
/// answers at the address must hold the key that node's installer reported;
/// nothing is ever added to known_hosts on contact.
pub fn ssh_args(s: &SshSettings, hostname: &str, host: &str, remote: &str) -> Vec<String> {
    let mut a: Vec<String> = vec!["-n".into(), "-i".into(), s.key.display().to_string()];
    for o in [
        "BatchMode=yes".to_string(),
        "StrictHostKeyChecking=yes".to_string(),
        format!("UserKnownHostsFile={}", s.known_hosts.display()),
        "GlobalKnownHostsFile=/dev/null".to_string(),
        format!("HostKeyAlias={hostname}"),
        format!("ConnectTimeout={}", s.connect_timeout_secs),
        // Only the node's own errors on stderr, not "Warning: Permanently added".
        "LogLevel=ERROR".to_string(),
    ] {
        a.push("-o".into());
        a.push(o);
    }
    a.push(format!("{}@{host}", s.user));
    a.push("--".into());
    a.push(remote.to_string());
    a
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The command ran; its exit code (ssh's 255 is taken as "unreachable").
    Exited {
        code: i32,
        stdout: String,
        stderr: String,
    },
    Unreachable(String),
    /// Not contacted, or the connection was dropped before any command: the node
    /// has no known host key, or what answered has another one.
    Refused(String),
    TimedOut {
        secs: u64,
        stdout: String,
    },
}

/// ssh exits 255 for its own failures (connect, auth, host key).
pub const SSH_ERROR: i32 = 255;

/// The line of ssh's stderr that says why it could not connect.
pub fn unreachable_reason(stderr: &str) -> String {
    stderr
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .map(|l| l.trim_start_matches("ssh: ").to_string())
        .unwrap_or_else(|| "ssh failed without a message".into())
}

fn reader(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Whether ssh refused the server's host key (it then sent nothing).
pub fn host_key_refused(stderr: &str) -> bool {
    stderr.contains("Host key verification failed")
        || stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
}

/// What to tell the operator when `hostname`'s SSH server at `host` did not
/// present the recorded key.
pub fn mismatch_reason(hostname: &str, host: &str, known_hosts: &Path) -> String {
    format!(
        "host key mismatch: the SSH server at {host} does not hold the host key {hostname}'s installer reported ({}); nothing was run. Another machine may answer at that address; if {hostname} was reinstalled without keeping its identity, its new keys are recorded when that install reports `installed`",
        known_hosts.display()
    )
}

/// Runs `remote` on `hostname` at `host`, killing ssh after `timeout`.
pub fn run(
    s: &SshSettings,
    hostname: &str,
    host: &str,
    remote: &str,
    timeout: Duration,
) -> Outcome {
    let mut child = match Command::new(&s.ssh)
        .args(ssh_args(s, hostname, host, remote))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            return Outcome::Unreachable(format!(
                "cannot start {}: {e} (apt-get install openssh-client)",
                s.ssh.display()
            ))
        }
    };
    let out = reader(child.stdout.take().expect("piped"));
    let err = reader(child.stderr.take().expect("piped"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Outcome::Unreachable(format!("waiting for ssh: {e}")),
        }
    };
    let (stdout, stderr) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    match status.map(|st| st.code()) {
        None => Outcome::TimedOut {
            secs: timeout.as_secs(),
            stdout,
        },
        Some(Some(SSH_ERROR)) if stderr.contains("host key is known for") => {
            Outcome::Refused(format!(
                "{} has no entry for {hostname}, so nothing was run: the server writes it when {hostname}'s install reports its host keys; reinstall it (`rollout node reinstall {hostname}`)",
                s.known_hosts.display()
            ))
        }
        Some(Some(SSH_ERROR)) if host_key_refused(&stderr) => {
            Outcome::Refused(mismatch_reason(hostname, host, &s.known_hosts))
        }
        Some(Some(SSH_ERROR)) => Outcome::Unreachable(unreachable_reason(&stderr)),
        Some(Some(code)) => Outcome::Exited {
            code,
            stdout,
            stderr,
        },
        Some(None) => Outcome::Unreachable("ssh was killed by a signal".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_and_remote_command() {
        assert_eq!(shell_quote("abc-1"), "abc-1");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(remote_command(&v(&["uptime; df -h"])), "uptime; df -h");
        assert_eq!(
            remote_command(&v(&["sh", "-c", "echo a b"])),
            "sh -c 'echo a b'"
        );
    }

    #[test]
    fn ssh_argv_carries_the_required_options() {
        let s = SshSettings::for_state_dir(Path::new("/var/lib/rollout"));
        let a = ssh_args(&s, "node1", "10.44.0.11", "uptime");
        let joined = a.join(" ");
        assert!(!joined.contains("accept-new"), "{joined}");
        for want in [
            "-i /var/lib/rollout/ssh/id_ed25519",
            "-o BatchMode=yes",
            "-o StrictHostKeyChecking=yes",
            "-o UserKnownHostsFile=/var/lib/rollout/ssh/known_hosts",
            "-o GlobalKnownHostsFile=/dev/null",
            "-o HostKeyAlias=node1",
            "-o ConnectTimeout=5",
        ] {
            assert!(joined.contains(want), "{want} missing: {joined}");
        }
        assert_eq!(&a[a.len() - 3..], ["root@10.44.0.11", "--", "uptime"]);
    }

    #[test]
    fn reason_is_the_last_stderr_line() {
        assert_eq!(
            unreachable_reason(
                "Warning: x\nssh: connect to host 10.44.0.9 port 22: No route to host\n"
            ),
            "connect to host 10.44.0.9 port 22: No route to host"
        );
        assert_eq!(unreachable_reason(""), "ssh failed without a message");
        assert!(host_key_refused(
            "@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\nHost key verification failed.\n"
        ));
        assert!(!host_key_refused(
            "connect to host x port 22: Connection refused"
        ));
    }
}
