//! The installer's DHCP client and ioctl network setup against a real dnsmasq,
//! entirely inside two network namespaces this test creates (10.44.77.0/24) and
//! removes. Needs root, `ip` and `dnsmasq`: without them it fails under CI and
//! scripts/test.sh, and a plain `cargo test` skips it (see `testkit::prereq`).

use std::process::{Child, Stdio};
use std::time::Duration;

use rollout_installer::{dhcp_client, net};
use testkit::netns::{Netns, NetnsError};
use testkit::prereq;

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x44, 0x77, 0x01];

/// Whether this host can run the test (root, `ip`, `dnsmasq`); see `testkit::prereq`.
fn can_run() -> bool {
    prereq::require_root("network namespaces")
        && prereq::require_tools(&[("ip", "iproute2"), ("dnsmasq", "dnsmasq-base")])
}

/// Both namespaces (deleted with everything in them when `Netns` drops) and
/// dnsmasq, which runs in the server one.
struct Lab {
    dnsmasq: Child,
    _srv: Netns,
    cli: Netns,
    _dir: tempfile::TempDir,
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.dnsmasq.kill();
        let _ = self.dnsmasq.wait();
    }
}

fn lab() -> Lab {
    let id = std::process::id();
    let fail = |e: NetnsError| -> Netns { panic!("{e}") };
    let srv = Netns::create(&format!("rinst-s{id}")).unwrap_or_else(fail);
    let cli = Netns::create(&format!("rinst-c{id}")).unwrap_or_else(fail);
    srv.add_veth("vs", cli.name(), "vc")
        .and_then(|()| cli.ip(&["link", "set", "vc", "address", "52:54:00:44:77:01"]))
        .and_then(|_| srv.ip(&["addr", "add", "10.44.77.1/24", "dev", "vs"]))
        .and_then(|_| srv.ip(&["link", "set", "vs", "up"]))
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let leases = dir.path().join("leases");
    let dnsmasq = srv
        .command("dnsmasq")
        .args([
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
    std::thread::sleep(Duration::from_millis(500));
    Lab {
        dnsmasq,
        _srv: srv,
        cli,
        _dir: dir,
    }
}

#[test]
fn lease_from_dnsmasq_configures_the_interface() {
    if !can_run() {
        return;
    }
    let lab = lab();
    // setns affects only the calling thread, so the client runs in its own thread.
    let lease = lab.cli.run_in(|| {
        net::set_up("lo").unwrap();
        net::set_up("vc").unwrap();
        let lease = dhcp_client::obtain("vc", MAC, Duration::from_secs(30)).unwrap();
        net::configure("vc", lease.addr, lease.netmask, lease.router).unwrap();
        lease
    });
    let lease = lease.unwrap_or_else(|e| panic!("{e}"));
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
    let addrs = lab.cli.ip(&["-4", "addr", "show", "dev", "vc"]).unwrap();
    assert!(
        addrs.contains("inet 10.44.77.42/24 brd 10.44.77.255"),
        "{addrs}"
    );
    let routes = lab.cli.ip(&["-4", "route"]).unwrap();
    assert!(routes.contains("default via 10.44.77.1 dev vc"), "{routes}");
}
