//! The lab's plumbing without a boot server: namespace, bridge, taps, leftover
//! cleanup, and a node's power controls over QMP. Needs root and QEMU; otherwise
//! fails under CI and scripts/test.sh (a plain `cargo test` skips, saying why).

use std::process::Command;
use std::time::Duration;

use testkit::prereq;
use vm_harness::{netns, Firmware, Lab, LabOptions, Pattern};

fn can_run() -> bool {
    prereq::require_root("network namespace, tap devices")
        && prereq::require_known_tools(&["qemu-system-x86_64", "qemu-img", "ip"])
}

fn host_links() -> String {
    let out = Command::new("ip").args(["-o", "link"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn lab_network_lives_only_in_its_namespace_and_leftovers_are_cleaned() {
    if !can_run() {
        return;
    }
    let before = host_links();
    let lab = Lab::create_with(LabOptions {
        name: "t-net".into(),
        nodes: 2,
        ..LabOptions::default()
    })
    .unwrap();
    let ns = lab.netns();
    assert_eq!(ns.name(), "rollout-lab-t-net");
    let addrs = ns.ip(&["-o", "addr", "show", "dev", "rbr0"]).unwrap();
    assert!(addrs.contains("10.44.0.1/24"), "{addrs}");
    for tap in ["tap1", "tap2"] {
        let link = ns.ip(&["-o", "link", "show", tap]).unwrap();
        assert!(
            link.contains("master rbr0"),
            "{tap} not on the bridge: {link}"
        );
    }
    let lo = ns.ip(&["-o", "link", "show", "lo"]).unwrap();
    assert!(lo.contains("UP"), "{lo}");
    assert_eq!(host_links(), before, "the host's interfaces changed");
    assert!(lab.nodes()[0].disk_path().is_file());

    // A crashed run leaves its namespace behind; the next one must still start.
    std::mem::forget(lab);
    assert!(netns::exists("rollout-lab-t-net"));
    let lab = Lab::create("t-net").expect("recreating over a leftover");
    drop(lab);
    assert!(
        !netns::exists("rollout-lab-t-net"),
        "drop left the namespace"
    );
    assert_eq!(host_links(), before);
}

#[test]
fn node_powers_off_over_qmp_and_restarts_with_the_console_appended() {
    if !can_run() {
        return;
    }
    let mut lab = Lab::create("t-qmp").unwrap();
    lab.add_node(Firmware::Bios).unwrap();
    let node = &mut lab.nodes_mut()[0];
    node.start().unwrap();
    // No server: iPXE comes up and keeps asking for DHCP.
    let ipxe = Pattern::regex(r"iPXE .*Open Source Network Boot Firmware").unwrap();
    node.wait_for_console(&ipxe, Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}\n{}", node.console_tail(20).join("\n")));
    assert!(node.is_running());
    node.power_off().unwrap();
    assert!(!node.is_running());
    // QMP `quit` ends QEMU quietly; the kill fallback makes it log the signal.
    let qlog = std::fs::read_to_string(node.qemu_log()).unwrap_or_default();
    assert!(
        !qlog.contains("terminating on signal"),
        "QMP quit failed: {qlog}"
    );

    let mark = node.console_mark();
    assert!(mark > 0);
    node.restart().unwrap();
    let took = node
        .wait_for_console_after(mark, &ipxe, Duration::from_secs(120))
        .unwrap();
    eprintln!("second boot reached iPXE in {:.1} s", took.as_secs_f64());
    assert!(node.console_mark() > mark);
    node.reset().expect("QMP system_reset");
}

/// Two user-space VLAN ports on the lab bridge carry VLAN 100 between two
/// hosts: pings cross the bridge tagged, and the lab reaches the VLAN through
/// its router.
#[test]
fn user_space_vlan_ports_carry_a_vlan_across_the_lab_bridge() {
    if !can_run() {
        return;
    }
    let mut lab = Lab::create_with(LabOptions {
        name: "t-vlan".into(),
        nodes: 0,
        ..LabOptions::default()
    })
    .unwrap();
    let gateway = std::net::Ipv4Addr::new(10, 44, 100, 1);
    let (_, tap) = lab
        .add_vlan_router(
            "router",
            std::net::Ipv4Addr::new(10, 44, 0, 2),
            100,
            gateway,
        )
        .unwrap();
    assert_eq!(tap, "vlan100");
    // A second host joins VLAN 100 the same way, with its own VLAN address.
    let host = lab
        .add_host("client", std::net::Ipv4Addr::new(10, 44, 0, 3))
        .unwrap();
    host.join_vlan(100, std::net::Ipv4Addr::new(10, 44, 100, 50))
        .unwrap();
    let client = host.netns().name().to_string();
    let ping = |ns: &str, to: &str| {
        Command::new("ip")
            .args([
                "netns", "exec", ns, "busybox", "ping", "-c", "2", "-W", "2", to,
            ])
            .output()
            .unwrap()
    };
    let out = ping(&client, "10.44.100.1");
    assert!(
        out.status.success(),
        "no answer across VLAN 100: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The lab reaches the VLAN through the router's route.
    let out = ping(lab.netns().name(), "10.44.100.50");
    assert!(
        out.status.success(),
        "the lab does not reach VLAN 100 through its router: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// The lab's NFS server (nfs-ganesha, userspace) exports a host directory that
/// a real NFS client on the lab bridge reads, and goes with the lab.
#[test]
fn an_nfs_server_on_the_lab_bridge_serves_a_host_directory() {
    if !can_run() || !prereq::require_known_tools(&["ganesha.nfsd", "rpcbind", "nfs-cat"]) {
        return;
    }
    let mut lab = Lab::create("t-nfs").unwrap();
    let export = lab.dir().join("usr");
    std::fs::create_dir_all(export.join("share")).unwrap();
    std::fs::write(export.join("share/marker"), "served over NFS\n").unwrap();
    lab.add_nfs_server(
        "nfs1",
        std::net::Ipv4Addr::new(10, 44, 0, 5),
        &[vm_harness::nfs::NfsExport {
            dir: export,
            pseudo: "/export/usr".into(),
        }],
    )
    .unwrap();
    // libnfs's client speaks NFSv3 with MOUNT through rpcbind, as the
    // installed node's initramfs (klibc nfsmount) does.
    let out = Command::new("ip")
        .args(["netns", "exec", lab.netns().name(), "nfs-cat"])
        .arg("nfs://10.44.0.5/export/usr/share/marker")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "served over NFS\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ns = lab.host("nfs1").unwrap().netns().name().to_string();
    let ganesha_runs = || {
        Command::new("pgrep")
            .args(["-f", "ganesha.nfsd -F -f .*t-nfs"])
            .status()
            .unwrap()
            .success()
    };
    assert!(ganesha_runs());
    drop(lab);
    assert!(
        !netns::exists(&ns),
        "the NFS server's namespace outlived the lab"
    );
    assert!(!ganesha_runs(), "ganesha outlived the lab");
    // rpcbind is killed with the group but not waited for: give init a moment
    // to reap it.
    let rpcbind_gone = (0..20).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        !Command::new("pgrep")
            .args(["-x", "rpcbind"])
            .status()
            .unwrap()
            .success()
    });
    assert!(rpcbind_gone, "rpcbind outlived the lab");
}
