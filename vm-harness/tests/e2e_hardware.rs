//! Real server hardware, not only virtio: nodes built from other device models
//! install, boot from disk and phone home, each reporting the hardware QEMU
//! gave it. node1: an Intel e1000e NIC and an NVMe disk. node2: two
//! VMware vmxnet3 NICs, booting from the second (the first has no boot ROM and
//! sits first on the PCI bus), and a SATA disk on AHCI. node3: its installer
//! and its installed OS on VLAN 100 of the lab bridge (reached through a
//! router with a DHCP relay on that VLAN), a virtio-scsi disk.

mod e2e_support;

use std::net::Ipv4Addr;
use std::time::Duration;

use e2e_support::{fixture, E2eLab};
use vm_harness::demo::NodeProgress;
use vm_harness::devices::{DiskBus, Hardware, NicModel};
use vm_harness::e2e::ImageKind;
use vm_harness::hosts::relay_args_on;
use vm_harness::Firmware;

const GIB: u64 = 1 << 30;
/// Three Debian installs at once under TCG.
const INSTALL: Duration = Duration::from_secs(900);
const VLAN: u16 = 100;
const VLAN_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 44, 100, 1);
const VLAN_RANGE: (Ipv4Addr, Ipv4Addr) = (
    Ipv4Addr::new(10, 44, 100, 100),
    Ipv4Addr::new(10, 44, 100, 199),
);

#[test]
fn server_nics_and_disks_and_a_vlan_install_and_report_their_hardware() {
    let Some((_serial, a)) = fixture() else {
        return;
    };
    let mut t = E2eLab::build(a, "e2e-hw", ImageKind::Debian, 8 * GIB, |lab| {
        // All BIOS: OVMF would try PXE and HTTP boot on the spare NIC first
        // (minutes of timeouts under TCG), as a real UEFI server does until
        // its boot order is set; SeaBIOS boots only NICs with a boot ROM.
        lab.add_node(Firmware::Bios)?;
        lab.add_node(Firmware::Bios)?;
        lab.add_node(Firmware::Bios)?;
        lab.set_hardware(
            "node1",
            Hardware {
                nic: NicModel::E1000e,
                disk: DiskBus::Nvme,
                ..Hardware::default()
            },
        )?;
        lab.set_hardware(
            "node2",
            Hardware {
                nic: NicModel::Vmxnet3,
                disk: DiskBus::Sata,
                spare_nic_first: true,
                ..Hardware::default()
            },
        )?;
        lab.set_hardware(
            "node3",
            Hardware {
                disk: DiskBus::VirtioScsi,
                ..Hardware::default()
            },
        )?;
        let log = lab.dir().join("relay.log");
        let (router, tap) =
            lab.add_vlan_router("vlanrtr", Ipv4Addr::new(10, 44, 0, 3), VLAN, VLAN_GATEWAY)?;
        router.spawn(
            "dhcp relay on VLAN 100",
            "dnsmasq",
            &relay_args_on(&tap, VLAN_GATEWAY, vm_harness::config::SERVER_ADDR),
            &log,
        )?;
        let mut cfg = lab.config().with_relay(VLAN_RANGE.0, VLAN_RANGE.1);
        // Untagged at PXE time (a pool address of the lab subnet), on the
        // VLAN's relayed range from the installer on.
        cfg.nodes[2].ip = None;
        cfg.nodes[2].vlan = Some(VLAN);
        Ok(cfg)
    });
    t.lab.start_all().unwrap();
    let records: Vec<_> = ["node1", "node2", "node3"]
        .iter()
        .map(|n| t.wait_booted(n, INSTALL))
        .collect();
    for r in &records {
        assert_eq!(r.installs, 1, "{}", r.line());
    }

    // What each installer reported, as an operator reads it.
    let hw = |i: usize| records[i].hardware.clone().expect("a hardware report");
    let (h1, h2, h3) = (hw(0), hw(1), hw(2));
    let nic_driver = |h: &rollout::wire::Hardware, mac: &str| {
        h.nics
            .iter()
            .find(|n| n.mac.eq_ignore_ascii_case(mac))
            .map(|n| n.driver.clone())
            .unwrap_or_else(|| panic!("no NIC {mac} in {:?}", h.nics))
    };
    let macs: Vec<String> = t.lab.nodes().iter().map(|n| n.mac().to_string()).collect();
    assert_eq!(nic_driver(&h1, &macs[0]), "e1000e");
    assert!(
        h1.disks
            .iter()
            .any(|d| d.name.starts_with("nvme") && d.serial == "rollout-node1"),
        "node1's NVMe disk: {:?}",
        h1.disks
    );
    assert_eq!(nic_driver(&h2, &macs[1]), "vmxnet3");
    let spare = t.lab.nodes()[1].spare_mac();
    assert_eq!(
        nic_driver(&h2, &spare),
        "vmxnet3",
        "the spare NIC is listed too"
    );
    assert!(
        h2.disks
            .iter()
            .any(|d| d.name.starts_with("sd") && d.serial == "rollout-node2"),
        "node2's SATA disk: {:?}",
        h2.disks
    );
    assert_eq!(h2.firmware, "bios");
    assert!(
        h3.disks
            .iter()
            .any(|d| d.name.starts_with("sd") && d.serial == "rollout-node3"),
        "node3's virtio-scsi disk: {:?}",
        h3.disks
    );
    assert_eq!(h1.system.vendor, "QEMU");

    // node3 lives on the VLAN: its installed OS runs on a VLAN device with an
    // address of the relayed range, reached through the router.
    // (`rollout exec` shows a line per node: keep the answer short.)
    let out = t.cli(
        a,
        &[
            "exec",
            "--nodes",
            "node3",
            "--",
            "tail -n +3 /proc/net/vlan/config | tr -s ' '; ip -o -4 addr | awk '{print $4}'",
        ],
    );
    assert!(
        out.contains("| 100 |"),
        "no VLAN 100 device on node3: {out}"
    );
    let on_vlan = out
        .split(|c: char| c.is_whitespace() || "|\\,".contains(c))
        .filter_map(|w| w.split('/').next()?.parse::<Ipv4Addr>().ok())
        .any(|ip| (VLAN_RANGE.0..=VLAN_RANGE.1).contains(&ip));
    assert!(
        on_vlan,
        "node3 has no address of VLAN {VLAN}'s range {VLAN_RANGE:?}:\n{out}"
    );

    // The lab's NVMe timeout, a module parameter on the kernel command line,
    // reached the installer (which loads its modules itself) and the installed OS.
    let installer = vm_harness::console::read_from(&t.lab.nodes()[0].console_log(), 0);
    assert!(
        installer.contains(
            "load_modules: nvme_core io_timeout=600 (parameters from the kernel command line)"
        ),
        "node1's installer did not load nvme_core with the command line's io_timeout:\n{}",
        installer
            .lines()
            .filter(|l| l.contains("load_modules"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let out = t.cli(
        a,
        &[
            "exec",
            "--nodes",
            "node1",
            "--",
            "cat /sys/module/nvme_core/parameters/io_timeout",
        ],
    );
    assert!(
        out.lines()
            .any(|l| l.contains("exit=0") && l.split_whitespace().last() == Some("600")),
        "node1's installed OS has another NVMe timeout: {out}"
    );

    // The hardware filter of `rollout node list`.
    let list = t.cli(a, &["node", "list", "--where", "vendor=QEMU"]);
    for n in ["node1", "node2", "node3"] {
        assert!(list.contains(n), "{list}");
    }
    assert!(
        t.lab.host_mut("vlanrtr").unwrap().all_running(),
        "the VLAN's relay died"
    );
}
