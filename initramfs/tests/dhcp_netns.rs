//! The installer's DHCP client and ioctl network setup against a real dnsmasq,
//! entirely inside two network namespaces this test creates (10.44.77.0/24) and
//! removes. Needs root, `ip` and `dnsmasq`: without them it fails under CI and
//! scripts/test.sh, and a plain `cargo test` skips it (see `testkit::prereq`).

use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rollout_installer::{dhcp, net};
use testkit::prereq;

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x44, 0x77, 0x01];

/// Whether this host can run the test (root, `ip`, `dnsmasq`); see `testkit::prereq`.
fn can_run() -> bool {
    prereq::require_root("network namespaces")
        && prereq::require_tools(&[("ip", "iproute2"), ("dnsmasq", "dnsmasq-base")])
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ip_out(args: &[&str]) -> String {
    String::from_utf8_lossy(&Command::new("ip").args(args).output().unwrap().stdout).into_owned()
}

/// Both namespaces and dnsmasq, torn down on drop.
struct Lab {
    srv: String,
    cli: String,
    dnsmasq: Option<Child>,
    _dir: tempfile::TempDir,
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut c) = self.dnsmasq.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.srv])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.cli])
            .status();
    }
}

fn lab() -> Lab {
    let id = std::process::id();
    let (srv, cli) = (format!("rinst-s{id}"), format!("rinst-c{id}"));
    let dir = tempfile::tempdir().unwrap();
    let mut lab = Lab {
        srv: srv.clone(),
        cli: cli.clone(),
        dnsmasq: None,
        _dir: dir,
    };
    ip(&["netns", "add", &srv]);
    ip(&["netns", "add", &cli]);
    ip(&[
        "-n", &srv, "link", "add", "vs", "type", "veth", "peer", "name", "vc", "netns", &cli,
    ]);
    ip(&[
        "-n",
        &cli,
        "link",
        "set",
        "vc",
        "address",
        "52:54:00:44:77:01",
    ]);
    ip(&["-n", &srv, "addr", "add", "10.44.77.1/24", "dev", "vs"]);
    ip(&["-n", &srv, "link", "set", "vs", "up"]);
    ip(&["-n", &srv, "link", "set", "lo", "up"]);
    let leases = lab._dir.path().join("leases");
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &srv,
            "dnsmasq",
            "--no-daemon",
            "--port=0",
            "--interface=vs",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
        ])
        .arg("--dhcp-range=10.44.77.100,10.44.77.150,255.255.255.0,1h")
        .arg("--dhcp-option=3,10.44.77.1")
        .arg("--dhcp-option=6,10.44.77.53")
        .arg(format!("--dhcp-leasefile={}", leases.display()))
        .arg("--dhcp-host=52:54:00:44:77:01,10.44.77.42")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    lab.dnsmasq = Some(child);
    std::thread::sleep(Duration::from_millis(500));
    lab
}

#[test]
fn lease_from_dnsmasq_configures_the_interface() {
    if !can_run() {
        return;
    }
    let lab = lab();
    let cli = lab.cli.clone();
    // setns affects only the calling thread, so the client runs in its own thread.
    let lease = std::thread::spawn(move || {
        let ns = std::fs::File::open(format!("/run/netns/{cli}")).unwrap();
        // SAFETY: setns on a namespace fd; changes only this thread's network namespace.
        assert_eq!(
            unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        net::set_up("lo").unwrap();
        net::set_up("vc").unwrap();
        let lease = dhcp::obtain("vc", MAC, Duration::from_secs(30)).unwrap();
        net::configure("vc", lease.addr, lease.netmask, lease.router).unwrap();
        lease
    })
    .join()
    .unwrap();
    assert_eq!(
        lease.addr.to_string(),
        "10.44.77.42",
        "dnsmasq's reservation"
    );
    assert_eq!(lease.prefix_len(), 24);
    assert_eq!(
        lease.router.map(|r| r.to_string()).as_deref(),
        Some("10.44.77.1")
    );
    assert_eq!(
        lease.dns.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
        ["10.44.77.53"]
    );
    assert_eq!(lease.server_id.to_string(), "10.44.77.1");
    let addrs = ip_out(&["-n", &lab.cli, "-4", "addr", "show", "dev", "vc"]);
    assert!(
        addrs.contains("inet 10.44.77.42/24 brd 10.44.77.255"),
        "{addrs}"
    );
    let routes = ip_out(&["-n", &lab.cli, "-4", "route"]);
    assert!(routes.contains("default via 10.44.77.1 dev vc"), "{routes}");
}
