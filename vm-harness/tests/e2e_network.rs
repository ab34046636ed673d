//! End-to-end installs on the networks rollout claims besides its own flat
//! subnet: proxyDHCP beside a site DHCP server that knows nothing of PXE, and a
//! subnet behind a router running a real DHCP relay. Each node installs the
//! tiny image, boots from its disk and phones home; the tests then check where
//! its address came from.
//!
//! Needs root, QEMU, dnsmasq and the tools of scripts/setup.sh (under CI and
//! scripts/test.sh a missing one fails the test).

mod e2e_support;

use std::net::Ipv4Addr;
use std::time::Duration;

use e2e_support::{check_disk, fixture, installed_address, E2eLab};
use vm_harness::demo::NodeProgress;
use vm_harness::e2e::ImageKind;
use vm_harness::hosts::{relay_args, site_dhcp_args};
use vm_harness::Firmware;

const GIB: u64 = 1 << 30;
const INSTALL: Duration = Duration::from_secs(420);

const SITE_DHCP: Ipv4Addr = Ipv4Addr::new(10, 44, 0, 2);
const SITE_RANGE: (Ipv4Addr, Ipv4Addr) =
    (Ipv4Addr::new(10, 44, 0, 150), Ipv4Addr::new(10, 44, 0, 199));

const ROUTER_UPLINK: Ipv4Addr = Ipv4Addr::new(10, 44, 0, 254);
const RELAY_GIADDR: Ipv4Addr = Ipv4Addr::new(10, 45, 0, 1);
const RELAY_RANGE: (Ipv4Addr, Ipv4Addr) =
    (Ipv4Addr::new(10, 45, 0, 50), Ipv4Addr::new(10, 45, 0, 99));
const RELAY_RESERVED: Ipv4Addr = Ipv4Addr::new(10, 45, 0, 20);

fn in_range(ip: Ipv4Addr, (first, last): (Ipv4Addr, Ipv4Addr)) -> bool {
    (u32::from(first)..=u32::from(last)).contains(&u32::from(ip))
}

/// A site DHCP server (dnsmasq, no PXE options) hands out the addresses;
/// rollout in `mode = "proxy"` adds only the boot information. A BIOS and a UEFI
/// node install and phone home, with addresses from the site server's range.
#[test]
fn proxy_dhcp_beside_a_site_dhcp_server_installs_bios_and_uefi_nodes() {
    let Some((_serial, a)) = fixture() else {
        return;
    };
    let fws = [Firmware::Bios, Firmware::Uefi];
    let mut t = E2eLab::build(a, "e2e-proxy", ImageKind::Tiny, 8 * GIB, |lab| {
        for fw in fws {
            lab.add_node(fw)?;
        }
        let leases = lab.dir().join("site-dhcp.leases");
        let log = lab.dir().join("site-dhcp.log");
        let site = lab.add_host("site", SITE_DHCP)?;
        site.spawn(
            "site dnsmasq",
            "dnsmasq",
            &site_dhcp_args(SITE_RANGE, vm_harness::config::SERVER_ADDR, &leases),
            &log,
        )?;
        // Declared nodes, but no addresses: the site server owns addressing.
        let mut cfg = lab.config().proxy();
        cfg.nodes.iter_mut().for_each(|n| n.ip = None);
        Ok(cfg)
    });
    t.lab.start_all().unwrap();
    for (i, fw) in fws.iter().enumerate() {
        let name = format!("node{}", i + 1);
        let rec = t.wait_booted(&name, INSTALL);
        assert_eq!(rec.installs, 1, "{}", rec.line());
        let ip = installed_address(&mut t.lab.nodes_mut()[i], &name);
        assert!(
            in_range(ip, SITE_RANGE),
            "{name} ({fw}) runs on {ip}, not an address of the site server's range {SITE_RANGE:?}"
        );
    }
    let leases = std::fs::read_to_string(t.lab.dir().join("site-dhcp.leases")).unwrap();
    for node in t.lab.nodes() {
        assert!(
            leases.contains(node.mac()),
            "the site server never leased {}:\n{leases}",
            node.mac()
        );
    }
    assert!(
        t.lab.host_mut("site").unwrap().all_running(),
        "site dnsmasq died"
    );
    for (i, node) in t.lab.nodes_mut().iter_mut().enumerate() {
        node.power_off().unwrap();
        check_disk(&node.disk_path(), &format!("node{}", i + 1), fws[i]);
    }
}

/// A node on its own subnet behind a router: a real DHCP relay (dnsmasq
/// `--dhcp-relay`) forwards its requests to rollout with giaddr set. One node
/// gets an address from the `[[dhcp.relay]]` range, one its reservation in
/// that subnet; both copy the image across the router (rsync allows relayed
/// subnets), boot from disk and phone home across it.
#[test]
fn relayed_subnet_installs_through_a_dhcp_relay_and_a_router() {
    let Some((_serial, a)) = fixture() else {
        return;
    };
    let mut t = E2eLab::build(a, "e2e-relay", ImageKind::Tiny, 8 * GIB, |lab| {
        let log = lab.dir().join("relay.log");
        let router = lab.add_router("router", ROUTER_UPLINK, RELAY_GIADDR)?;
        router.spawn(
            "dhcp relay",
            "dnsmasq",
            &relay_args(RELAY_GIADDR, vm_harness::config::SERVER_ADDR),
            &log,
        )?;
        lab.add_node_behind("router", Firmware::Bios)?;
        lab.add_node_behind("router", Firmware::Bios)?;
        let mut cfg = lab.config().with_relay(RELAY_RANGE.0, RELAY_RANGE.1);
        cfg.nodes[0].ip = None;
        cfg.nodes[1].ip = Some(RELAY_RESERVED);
        Ok(cfg)
    });
    t.lab.start_all().unwrap();
    for i in 1..=2 {
        let rec = t.wait_booted(&format!("node{i}"), INSTALL);
        assert_eq!(rec.installs, 1, "{}", rec.line());
    }
    let dynamic = installed_address(&mut t.lab.nodes_mut()[0], "node1");
    assert!(
        in_range(dynamic, RELAY_RANGE),
        "node1 runs on {dynamic}, not an address of the relayed range {RELAY_RANGE:?}"
    );
    let reserved = installed_address(&mut t.lab.nodes_mut()[1], "node2");
    assert_eq!(
        reserved, RELAY_RESERVED,
        "node2 did not get its reservation"
    );
    assert!(
        t.lab.host_mut("router").unwrap().all_running(),
        "the relay died"
    );
    for (i, node) in t.lab.nodes_mut().iter_mut().enumerate() {
        node.power_off().unwrap();
        check_disk(&node.disk_path(), &format!("node{}", i + 1), Firmware::Bios);
    }
}
