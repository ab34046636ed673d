//! Network namespaces driven with iproute2: the one implementation behind the
//! server's netns tests, the installer's DHCP test and vm-harness's lab.
//!
//! Everything a test or lab creates (bridges, veths, taps, DHCP traffic) lives
//! inside namespaces it owns, so the host's own interfaces are never touched and a
//! DHCP server under test cannot answer a real network.

use std::fmt;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::Duration;

/// A failed namespace operation: which namespace, and what went wrong (the
/// command line and its stderr when `ip` failed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetnsError {
    pub ns: String,
    pub message: String,
}

impl fmt::Display for NetnsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "network namespace {}: {}", self.ns, self.message)
    }
}

impl std::error::Error for NetnsError {}

pub type Result<T, E = NetnsError> = std::result::Result<T, E>;

/// A network namespace that is deleted (with every process still in it) on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates namespace `name` with loopback up, first removing a leftover of the
    /// same name from a crashed run.
    pub fn create(name: &str) -> Result<Netns> {
        remove(name)?;
        run(name, Command::new("ip").args(["netns", "add", name]))?;
        let ns = Netns {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <ns> ARGS…` and returns its stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        run(
            &self.name,
            Command::new("ip").arg("-n").arg(&self.name).args(args),
        )
    }

    /// Adds a bridge with `cidr` (e.g. `10.44.0.1/24`) and brings it up. STP stays
    /// off and the forward delay is zero so a fresh port forwards at once: PXE
    /// firmware gives up on DHCP long before a 15 s listening phase ends.
    pub fn add_bridge(&self, bridge: &str, cidr: &str) -> Result<()> {
        self.ip(&[
            "link",
            "add",
            bridge,
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
        ])?;
        self.ip(&["addr", "add", cidr, "dev", bridge])?;
        self.ip(&["link", "set", bridge, "up"])?;
        Ok(())
    }

    /// Creates tap device `tap` inside the namespace and enslaves it to `bridge`.
    pub fn add_tap(&self, tap: &str, bridge: &str) -> Result<()> {
        self.ip(&["tuntap", "add", "dev", tap, "mode", "tap"])?;
        self.ip(&["link", "set", tap, "master", bridge])?;
        self.ip(&["link", "set", tap, "up"])?;
        Ok(())
    }

    /// A veth pair: end `local` here, end `peer` in namespace `other`; both down.
    pub fn add_veth(&self, local: &str, other: &str, peer: &str) -> Result<()> {
        self.ip(&[
            "link", "add", local, "type", "veth", "peer", "name", peer, "netns", other,
        ])?;
        Ok(())
    }

    /// A veth pair plugged into `bridge`: end `port` here, enslaved and up; end
    /// `peer` in namespace `other`, still down for the caller to address.
    pub fn add_bridge_port(&self, bridge: &str, port: &str, other: &str, peer: &str) -> Result<()> {
        self.add_veth(port, other, peer)?;
        self.ip(&["link", "set", port, "master", bridge])?;
        self.ip(&["link", "set", port, "up"])?;
        Ok(())
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `f` on a thread that has joined this namespace, so plain std sockets
    /// see its network and nothing else. Only that thread moves: network
    /// namespaces are per-thread, so the rest of the process keeps the host's
    /// view. A panic in `f` is re-raised here.
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        run_in(&self.name, f)
    }

    /// Pids of every process running inside the namespace.
    pub fn pids(&self) -> Vec<u32> {
        pids_in(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = remove(&self.name) {
            eprintln!("cleanup: {e}");
        }
    }
}

/// [`Netns::run_in`] by namespace name, for tests that hold only the name;
/// failing to join is a test failure.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    run_in(ns, f).unwrap_or_else(|e| panic!("{e}"))
}

fn run_in<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    let err = |message: String| NetnsError {
        ns: ns.to_string(),
        message,
    };
    let path = format!("/run/netns/{ns}");
    let file = File::open(&path).map_err(|e| err(format!("opening {path}: {e}")))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on a valid namespace fd only changes this thread's
            // network namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(err(format!("setns: {}", std::io::Error::last_os_error())));
            }
            Ok(f())
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

fn pids_in(name: &str) -> Vec<u32> {
    run(name, Command::new("ip").args(["netns", "pids", name]))
        .map(|out| {
            out.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a namespace called `name` exists.
pub fn exists(name: &str) -> bool {
    std::path::Path::new("/run/netns").join(name).exists()
}

/// Kills every process inside namespace `name` and deletes it. Deleting a
/// namespace destroys its bridges, veths and taps with it. A missing namespace
/// is fine.
pub fn remove(name: &str) -> Result<()> {
    if !exists(name) {
        return Ok(());
    }
    for _ in 0..20 {
        let pids = pids_in(name);
        if pids.is_empty() {
            break;
        }
        for pid in pids.into_iter().filter(|&p| p > 1) {
            // SAFETY: kill(2) with a pid `ip netns pids` listed; no memory involved.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    run(name, Command::new("ip").args(["netns", "del", name]))?;
    Ok(())
}

/// Runs `cmd` to completion and returns its stdout; a failure to start or a
/// non-zero exit is an error naming the command and carrying its stderr.
fn run(ns: &str, cmd: &mut Command) -> Result<String> {
    let line = format!("{cmd:?}").replace('"', "");
    let err = |message: String| NetnsError {
        ns: ns.to_string(),
        message,
    };
    let out = cmd
        .output()
        .map_err(|e| err(format!("could not start `{line}`: {e}")))?;
    if !out.status.success() {
        return Err(err(format!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removing_a_missing_namespace_is_fine() {
        assert!(!exists("testkit-never-created"));
        assert_eq!(remove("testkit-never-created"), Ok(()));
    }

    #[test]
    fn errors_name_the_namespace_and_the_command() {
        let e = run("x", Command::new("false").arg("--flag")).unwrap_err();
        assert_eq!(e.ns, "x");
        assert!(e.message.starts_with("`false --flag` failed ("), "{e}");
        assert!(e.to_string().starts_with("network namespace x: "), "{e}");
    }

    #[test]
    fn a_namespace_is_joined_by_one_thread_and_removed_on_drop() {
        if !crate::prereq::require_root("network namespaces")
            || !crate::prereq::require_tools(&[("ip", "iproute2")])
        {
            return;
        }
        let name = format!("testkit-{}", std::process::id());
        let ns = Netns::create(&name).unwrap();
        ns.add_bridge("tkbr0", "10.45.0.1/24").unwrap();
        // Inside: the bridge's address is local. Outside: this thread never moved.
        let inside = ns
            .run_in(|| std::net::TcpListener::bind("10.45.0.1:0").is_ok())
            .unwrap();
        assert!(inside);
        assert!(std::net::TcpListener::bind("10.45.0.1:0").is_err());
        drop(ns);
        assert!(!exists(&name));
    }
}
