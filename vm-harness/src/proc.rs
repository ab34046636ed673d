//! Child processes that die with the lab.
//!
//! Every child is the leader of its own process group so that one `killpg` also
//! reaches whatever it forked (QEMU helpers, a server's workers), and so that a
//! Ctrl-C aimed at the harness's terminal group does not hit them half-way
//! through our own orderly teardown.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::error::{Error, IoContext, Result};

/// How long a group gets between SIGTERM and SIGKILL on teardown.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3);

/// A spawned child running as leader of its own process group; the group is
/// killed when this value is dropped.
#[derive(Debug)]
pub struct ProcessGroup {
    child: Child,
    label: String,
    pid_file: Option<PathBuf>,
    status: Option<ExitStatus>,
}

impl ProcessGroup {
    /// Spawns `cmd` in a new process group. `label` names it in errors and logs.
    pub fn spawn(label: &str, cmd: &mut Command) -> Result<Self> {
        cmd.process_group(0).stdin(Stdio::null());
        let child = cmd.spawn().map_err(|source| Error::Spawn {
            cmd: command_line(cmd),
            source,
        })?;
        Ok(ProcessGroup {
            child,
            label: label.to_string(),
            pid_file: None,
            status: None,
        })
    }

    /// Records the pid in `path` so that `vm-harness down` (or the next run) can
    /// find the process if this harness dies without running its destructors.
    pub fn write_pid_file(&mut self, path: &Path) -> Result<()> {
        fs::write(path, format!("{}\n", self.pid())).ctx("writing pid file", path)?;
        self.pid_file = Some(path.to_path_buf());
        Ok(())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The underlying child, e.g. to take a piped stdout.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// The exit status if the process has ended, without blocking.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    pub fn is_running(&mut self) -> bool {
        self.try_wait().is_none()
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM to the whole group, SIGKILL after `grace`, then reaps the leader.
    pub fn kill(&mut self, grace: Duration) {
        let pgid = self.pid() as libc::pid_t;
        if self.is_running() {
            signal_group(pgid, libc::SIGTERM);
            if self.wait_timeout(grace).is_none() {
                signal_group(pgid, libc::SIGKILL);
                self.status = self.child.wait().ok();
            }
        }
        // The leader may be gone while members of its group live on.
        signal_group(pgid, libc::SIGKILL);
        if let Some(p) = self.pid_file.take() {
            let _ = fs::remove_file(p);
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill(DEFAULT_GRACE);
    }
}

fn signal_group(pgid: libc::pid_t, sig: libc::c_int) {
    if pgid > 1 {
        // SAFETY: killpg has no memory-safety preconditions; a stale pgid only
        // yields ESRCH, which we ignore.
        unsafe {
            libc::killpg(pgid, sig);
        }
    }
}

/// Kills the process recorded in a pid file left by a crashed run, but only if
/// its command line still contains one of `expect` (pids get reused), then
/// removes the file.
pub fn kill_stale_pid_file(path: &Path, expect: &[&str]) {
    let Ok(text) = fs::read_to_string(path) else {
        return;
    };
    if let Ok(pid) = text.trim().parse::<libc::pid_t>() {
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if pid > 1 && expect.iter().any(|e| cmdline.contains(e)) {
            signal_group(pid, libc::SIGKILL);
            // SAFETY: as above; the group may not exist, the process may.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
    let _ = fs::remove_file(path);
}

/// Kills a single pid (used for processes found in a namespace, not ours).
pub fn kill_pid(pid: u32) {
    if pid > 1 {
        // SAFETY: see signal_group.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGKILL);
        }
    }
}

/// Runs `cmd` to completion and returns its stdout; a non-zero exit is an error
/// carrying stderr.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::Spawn {
            cmd: command_line(cmd),
            source,
        })?;
    if !out.status.success() {
        return Err(Error::Command {
            cmd: command_line(cmd),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `cmd` as a shell-like string, for messages.
pub fn command_line(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Whether `program` resolves to an executable on PATH (or is an existing path).
pub fn have_program(program: &str) -> bool {
    if program.contains('/') {
        return Path::new(program).is_file();
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidf = dir.path().join("grandchild.pid");
        // The shell forks a grandchild into the same group and records its pid.
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("sleep 300 & echo $! > {}; wait", pidf.display()));
        let pg = ProcessGroup::spawn("sh", &mut cmd).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !pidf.exists() && Instant::now() < deadline {
            sleep(Duration::from_millis(20));
        }
        let grandchild: i32 = fs::read_to_string(&pidf).unwrap().trim().parse().unwrap();
        drop(pg);
        sleep(Duration::from_millis(200));
        let state = fs::read_to_string(format!("/proc/{grandchild}/stat")).unwrap_or_default();
        // Gone, or a zombie waiting for init to reap it.
        assert!(
            state.is_empty() || state.contains(") Z"),
            "grandchild survived: {state}"
        );
    }

    #[test]
    fn run_reports_stderr_of_failures() {
        let err = run(Command::new("sh").args(["-c", "echo nope >&2; exit 3"])).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("nope") && msg.contains('3'), "{msg}");
    }

    #[test]
    fn stale_pid_file_for_another_program_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let cmdline = format!("/proc/{}/cmdline", child.id());
        let deadline = Instant::now() + Duration::from_secs(5);
        while !fs::read(&cmdline).unwrap_or_default().starts_with(b"sleep") {
            assert!(Instant::now() < deadline, "sleep never exec'd");
            sleep(Duration::from_millis(10));
        }
        let pidf = dir.path().join("x.pid");
        fs::write(&pidf, child.id().to_string()).unwrap();
        kill_stale_pid_file(&pidf, &["qemu-system", "dnsmasq"]);
        assert!(
            child.try_wait().unwrap().is_none(),
            "unrelated process was killed"
        );
        assert!(!pidf.exists());
        fs::write(&pidf, child.id().to_string()).unwrap();
        kill_stale_pid_file(&pidf, &["sleep"]);
        let st = child.wait().unwrap();
        assert!(st.code().is_none(), "expected death by signal, got {st}");
    }
}
