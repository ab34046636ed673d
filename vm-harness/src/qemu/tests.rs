//! Tests of the QEMU command lines a node gets.

use super::*;

#[test]
fn http_only_nodes_carry_no_ipxe_rom_and_no_pxe() {
    let mut n = node(Firmware::Uefi);
    n.set_net_boot(NetBoot::HttpOnly);
    let args = n.qemu_args().join(" ");
    assert!(args.contains("disable-legacy=on,romfile= "), "{args}");
    assert!(args.contains("name=opt/org.tianocore/IPv4PXESupport,string=n"));
    assert!(args.contains("name=opt/org.tianocore/IPv6PXESupport,string=n"));
    n.set_net_boot(NetBoot::FirmwarePxe);
    let args = n.qemu_args().join(" ");
    assert!(
        args.contains("romfile= ") && !args.contains("PXESupport"),
        "{args}"
    );
}

fn node(fw: Firmware) -> Node {
    Node {
        spec: NodeSpec {
            name: "node1".into(),
            mac: mac_for(1),
            firmware: fw,
            memory_mib: 1024,
            disk_bytes: 8 << 30,
            accel: Accel::Tcg,
            boot: NetBoot::IpxeRom,
            hardware: Hardware::default(),
        },
        netns: "rollout-lab-t".into(),
        tap: "tap1".into(),
        dir: "/lab/node1".into(),
        run_dir: "/run/vm-harness/t".into(),
        proc: None,
        extra_args: Vec::new(),
        bmc: None,
        bmc_vm_port: None,
        pulled_disks: Default::default(),
    }
}

#[test]
fn a_pulled_disk_leaves_the_command_line_and_the_other_boots_next() {
    let mut n = node(Firmware::Bios);
    n.spec.hardware.disks = 2;
    let args = n.qemu_args().join(" ");
    assert!(args.contains("file=/lab/node1/disk.qcow2,if=none,id=d0"));
    assert!(args.contains("file=/lab/node1/disk2.qcow2,if=none,id=d1"));
    assert!(args.contains("drive=d1,serial=rollout-node1-2,bootindex=3"));
    n.pull_disk(0);
    let args = n.qemu_args().join(" ");
    assert!(!args.contains("disk.qcow2"), "{args}");
    assert!(args.contains("drive=d1,serial=rollout-node1-2,bootindex=3"));
    n.plug_disk(0);
    assert!(n.qemu_args().join(" ").contains("id=d0"));
}

#[test]
fn bios_node_boots_network_first_without_no_reboot() {
    let args = node(Firmware::Bios).qemu_args().join(" ");
    assert!(
        args.contains("-accel tcg -machine pc,graphics=off "),
        "{args}"
    );
    assert!(args.contains("-netdev tap,id=n0,ifname=tap1,script=no,downscript=no"));
    assert!(args.contains(
        "virtio-net-pci,netdev=n0,mac=52:54:00:00:00:01,disable-legacy=on,romfile=/usr/lib/ipxe/qemu/efi-virtio.rom,bootindex=1"
    ));
    assert!(args.contains("virtio-blk-pci,drive=d0,serial=rollout-node1,bootindex=2"));
    assert!(args.contains("file=/lab/node1/disk.qcow2,if=none"));
    assert!(args.contains("path=/lab/node1/console.log,append=on"));
    assert!(!args.contains("-no-reboot"));
    assert!(!args.contains("pflash"));
}

#[test]
fn uefi_node_uses_q35_and_its_own_vars() {
    let args = node(Firmware::Uefi).qemu_args().join(" ");
    assert!(args.contains("-machine q35"));
    assert!(args.contains(&format!("unit=0,readonly=on,file={OVMF_CODE}")));
    assert!(args.contains("unit=1,file=/lab/node1/OVMF_VARS.fd"));
    assert!(!args.contains("bootindex"), "OVMF would reorder BootOrder");
}

#[test]
fn tcg_probe_boots_the_probe_kernel() {
    if !crate::proc::have_program(QEMU) || crate::initrd::host_kernel().is_err() {
        testkit::prereq::missing(format!(
            "needs {QEMU} (Debian package qemu-system-x86) and a /boot/vmlinuz-* (linux-image-amd64)"
        ));
        return;
    }
    // TCG takes ~7 s here; the point is that the probe sees the line.
    assert!(probe(Accel::Tcg, Duration::from_secs(60)));
}

#[test]
fn macs_and_sizes() {
    assert_eq!(mac_for(1), "52:54:00:00:00:01");
    assert_eq!(mac_for(300), "52:54:00:00:01:2c");
    assert_eq!(parse_size("8G"), Some(8 << 30));
    assert_eq!(parse_size("512m"), Some(512 << 20));
    assert_eq!(parse_size("4096"), Some(4096));
    assert_eq!(parse_size("x"), None);
}
