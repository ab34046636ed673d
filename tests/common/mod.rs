//! Test hosts in network namespaces this test creates (never the host's network):
//! a server namespace with a bridge, and a client namespace whose veths plug into it.
#![allow(dead_code)]

pub mod backends;
pub mod bmc;
pub mod dhcp_capture;
pub mod image_tree;
pub mod loopback;
pub mod netns;
pub mod shared_store;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};
use testkit::netns::Netns;

pub const SERVER_IP: &str = "10.44.0.1";

pub fn is_root() -> bool {
    testkit::prereq::is_root()
}

/// Whether a test that needs root (network namespaces) and `tools` may run here.
/// When not, the test fails under CI and scripts/test.sh and a plain `cargo test`
/// skips it, naming what is missing and its Debian package (`testkit::prereq`).
pub fn can_run(tools: &[&str]) -> bool {
    testkit::prereq::require_root("network namespaces")
        && testkit::prereq::require_known_tools(tools)
}

pub fn which(tool: &str) -> Option<PathBuf> {
    testkit::prereq::which(tool)
}

pub fn run(args: &[&str]) -> Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    out
}

pub fn must(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Two namespaces joined by a bridge in the server one. Deleted on drop.
pub struct Net {
    pub srv: Netns,
    pub cli: Netns,
    /// The subnet's prefix length: every address the test adds is on it.
    pub prefix: u8,
    clients: usize,
}

impl Net {
    /// A /24 (10.44.0.0/24): room for the small ranges most tests use.
    pub fn new(tag: &str) -> Net {
        Net::with_prefix(tag, 24)
    }

    /// [`Net::new`] on 10.44.0.0/`prefix` (a /16 for ranges of thousands).
    pub fn with_prefix(tag: &str, prefix: u8) -> Net {
        let id = format!("{}{}", tag, std::process::id() % 100000);
        let created = |ns: String| Netns::create(&ns).unwrap_or_else(|e| panic!("{e}"));
        let net = Net {
            srv: created(format!("rt-{id}-s")),
            cli: created(format!("rt-{id}-c")),
            prefix,
            clients: 0,
        };
        net.srv
            .add_bridge("rbr0", &format!("{SERVER_IP}/{prefix}"))
            .unwrap_or_else(|e| panic!("{e}"));
        net
    }

    /// Adds a client interface `c{n}` with `mac` in the client namespace.
    pub fn add_client(&mut self, mac: &str) -> String {
        let n = self.clients;
        self.clients += 1;
        let (c, p) = (format!("c{n}"), format!("p{n}"));
        self.srv
            .add_bridge_port("rbr0", &p, self.cli.name(), &c)
            .and_then(|()| self.cli.ip(&["link", "set", &c, "address", mac]))
            .and_then(|_| self.cli.ip(&["link", "set", &c, "up"]))
            .unwrap_or_else(|e| panic!("{e}"));
        c
    }

    /// A client with a static address in the subnet (for TFTP/HTTP tests).
    pub fn add_static_client(&mut self, addr: &str) -> String {
        let c = self.add_client("52:54:00:ee:00:01");
        self.cli
            .ip(&["addr", "add", &format!("{addr}/{}", self.prefix), "dev", &c])
            .unwrap_or_else(|e| panic!("{e}"));
        c
    }

    pub fn in_cli(&self, args: &[&str]) -> Command {
        let mut cmd = self.cli.command(args[0]);
        cmd.args(&args[1..]);
        cmd
    }
}

/// `rollout serve` running in the server namespace; killed on drop.
pub struct Server {
    pub child: Child,
    pub log: PathBuf,
    pub config: PathBuf,
    ns: String,
    /// Where its HTTP side answers (`/healthz` is polled there at start).
    address: String,
}

pub fn write_config(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("rollout.toml");
    let mut f = std::fs::File::create(&path).unwrap();
    writeln!(f, "state_dir = {:?}", dir.join("state")).unwrap();
    f.write_all(body.as_bytes()).unwrap();
    path
}

impl Server {
    pub fn start(net: &Net, config: &Path) -> Server {
        Server::start_with(net, config, &[])
    }

    /// [`Server::start`] with more arguments for `rollout serve` (`--log-format json`).
    pub fn start_with(net: &Net, config: &Path, extra: &[&str]) -> Server {
        Server::start_in(net.srv.name(), SERVER_IP, config, extra)
    }

    /// `rollout serve` in namespace `ns`, healthy once `address` answers
    /// `/healthz` (a second server on another namespace of the same L2).
    pub fn start_in(ns: &str, address: &str, config: &Path, extra: &[&str]) -> Server {
        let log = config.with_file_name(format!(
            "server-{}.log",
            Instant::now().elapsed().as_nanos()
        ));
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                env!("CARGO_BIN_EXE_rollout"),
                "serve",
                "--config",
            ])
            .arg(config)
            .args(extra)
            .env("ROLLOUT_LOG", "debug,tower_http=info")
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .unwrap();
        let s = Server {
            child,
            log,
            config: config.to_owned(),
            ns: ns.to_string(),
            address: address.to_string(),
        };
        s.wait_healthy();
        s
    }

    fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let ok = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &self.ns,
                    "curl",
                    "-sf",
                    "--max-time",
                    "1",
                    &format!("http://{}/healthz", self.address),
                ])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if ok {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("server did not become healthy; log:\n{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill9(&mut self) {
        testkit::process::kill_tree(&mut self.child);
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        self.child.wait().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let text = self.log_text();
            let tail: Vec<&str> = text
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            eprintln!(
                "--- server log tail ({}) ---\n{}",
                self.log.display(),
                tail.join("\n")
            );
        }
        testkit::process::kill_tree(&mut self.child);
    }
}

/// One quick busybox udhcpc try on `iface` (2 DISCOVERs, 1 s apart, `extra`
/// options): the address it was ACKed, if any.
pub fn udhcpc_try(net: &Net, iface: &str, extra: &[&str]) -> Option<std::net::Ipv4Addr> {
    let out = net
        .in_cli(&[
            "busybox",
            "udhcpc",
            "-i",
            iface,
            "-n",
            "-q",
            "-f",
            "-t",
            "2",
            "-T",
            "1",
            "-A",
            "1",
            "-s",
            "/bin/true",
        ])
        .args(extra)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    // busybox: "udhcpc: lease of 10.44.0.100 obtained from 10.44.0.1, lease time 600"
    let leased = text
        .lines()
        .find_map(|l| l.split("lease of ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .map(|ip| ip.parse().unwrap());
    assert_eq!(leased.is_some(), out.status.success(), "{text}");
    leased
}

/// Runs busybox udhcpc once on `iface` and returns what the server handed out:
/// the variables udhcpc passes to its script (ip, boot_file, siaddr, hostname, …).
pub fn udhcpc(net: &Net, iface: &str, extra: &[&str]) -> std::collections::HashMap<String, String> {
    let script = std::env::temp_dir().join("rollout-udhcpc-script.sh");
    if !script.exists() {
        std::fs::write(&script, "#!/bin/sh\n[ \"$1\" = bound ] && env | grep -E '^(ip|subnet|router|dns|boot_file|siaddr|hostname|serverid|lease|opt60)=' > \"$RESULT\"\nexit 0\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let result = std::env::temp_dir().join(format!(
        "udhcpc-{}-{iface}-{}",
        net.cli.name(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&result);
    let mut cmd = net.in_cli(&[
        "busybox", "udhcpc", "-i", iface, "-n", "-q", "-f", "-t", "5", "-T", "2", "-A", "1", "-s",
    ]);
    cmd.arg(&script).env("RESULT", &result);
    cmd.args(extra);
    let out = cmd.output().unwrap();
    let text = std::fs::read_to_string(&result).unwrap_or_default();
    let _ = std::fs::remove_file(&result);
    assert!(
        !text.is_empty(),
        "udhcpc on {iface} got no lease: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
