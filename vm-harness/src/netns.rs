//! A network namespace owned by the lab, driven with iproute2.
//!
//! Everything the lab creates (bridge, taps, addresses, DHCP traffic) lives inside
//! the namespace, so nothing on the host's own interfaces is touched and a DHCP
//! server under test cannot answer a real network.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;

use crate::error::{Error, IoContext, Result};
use crate::proc::{kill_pid, run};

/// Prefix of every namespace the harness creates; `down` only touches these.
pub const NS_PREFIX: &str = "rollout-lab-";

/// The namespace name for a lab called `lab`.
pub fn ns_name(lab: &str) -> Result<String> {
    let ok = !lab.is_empty()
        && lab.len() <= 24
        && lab
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok {
        return Err(Error::BadName(lab.to_string()));
    }
    Ok(format!("{NS_PREFIX}{lab}"))
}

/// A network namespace that is deleted (with every process still in it) on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates namespace `name` with loopback up, first removing a leftover of the
    /// same name from a crashed run.
    pub fn create(name: &str) -> Result<Netns> {
        remove_namespace(name)?;
        run(Command::new("ip").args(["netns", "add", name]))?;
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
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// Adds a bridge with `cidr` (e.g. `10.44.0.1/24`) and brings it up. STP stays
    /// off and the forward delay is zero so a fresh tap forwards at once: PXE
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

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `f` on a thread that has joined this namespace, so plain std sockets
    /// reach the lab's addresses. Only the thread moves: network namespaces are
    /// per-thread, so the rest of the process keeps the host's view.
    pub fn run_in<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path).ctx("opening the namespace", &path)?;
        let ns = self.name.clone();
        std::thread::spawn(move || {
            // SAFETY: setns on a valid fd only changes this thread's namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(Error::Netns {
                    ns,
                    message: format!("setns: {}", std::io::Error::last_os_error()),
                });
            }
            Ok(f())
        })
        .join()
        .map_err(|_| Error::Netns {
            ns: self.name.clone(),
            message: "the worker thread panicked".into(),
        })?
    }

    /// Pids of every process running inside the namespace.
    pub fn pids(&self) -> Vec<u32> {
        pids_in(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = remove_namespace(&self.name) {
            eprintln!("vm-harness: cleanup of {}: {e}", self.name);
        }
    }
}

fn pids_in(name: &str) -> Vec<u32> {
    run(Command::new("ip").args(["netns", "pids", name]))
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
/// namespace destroys its bridge and taps with it. A missing namespace is fine.
pub fn remove_namespace(name: &str) -> Result<()> {
    if !exists(name) {
        return Ok(());
    }
    for _ in 0..20 {
        let pids = pids_in(name);
        if pids.is_empty() {
            break;
        }
        pids.into_iter().for_each(kill_pid);
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    run(Command::new("ip").args(["netns", "del", name]))?;
    Ok(())
}

/// Names of every lab namespace on the machine (for `vm-harness down --all`).
pub fn list_lab_namespaces() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(NS_PREFIX))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_names_are_checked() {
        assert_eq!(ns_name("pxe-1").unwrap(), "rollout-lab-pxe-1");
        for bad in ["", "Pxe", "a b", "x/../y", &"a".repeat(25)] {
            assert!(ns_name(bad).is_err(), "{bad:?} accepted");
        }
    }
}
