//! Node layouts (`[[layout]]`), one lab of tiny-image nodes installing at once,
//! each proving a layout on the firmware that is hardest for it:
//!
//! - node1 (BIOS): RAID1 over two disks (`/` ext4, swap, `/scratch` xfs on
//!   mirrors), `/usr` over NFS from the lab's NFS server and tmpfs on `/tmp`,
//!   `/var/tmp`, `/var/lock`: the classic practice's node. Then each disk is
//!   pulled in turn, and the node still boots from the other.
//! - node2 (UEFI): an LVM root (`vg0`: root, swap, `/var/log` xfs) on a disk
//!   with 4096-byte logical sectors.
//! - node3 (UEFI): RAID1, booting from the second disk's ESP once the first
//!   is pulled.
//! - node4 (BIOS): an LVM root beside a plain `/boot` partition (extlinux
//!   cannot read LVM).
//!
//! What each node mounted comes from the tiny image's boot lines
//! (`rollout-tiny: mount …`, `rollout-tiny: md …`); what its local root holds is
//! read from the host, off the disk.

mod e2e_support;

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use e2e_support::{fixture, E2eLab};
use rollout::config::LayoutConfig;
use vm_harness::demo::NodeProgress;
use vm_harness::devices::Hardware;
use vm_harness::disk::DiskImage;
use vm_harness::e2e::ImageKind;
use vm_harness::nfs::NfsExport;
use vm_harness::{Firmware, Node, Pattern};

const GIB: u64 = 1 << 30;
/// Four tiny installs at once under TCG, storage tools fetched by each.
const INSTALL: Duration = Duration::from_secs(900);
const BOOT: Duration = Duration::from_secs(300);
const SYNC_INTERVAL: u64 = 60;
/// The lab's NFS server (in `MIRRORED_WITH_NFS_USR` too).
const NFS_ADDR: Ipv4Addr = Ipv4Addr::new(10, 44, 0, 5);
/// In the tiny image's /usr (scripts/make-tiny-image.sh): seen on a node only
/// through its NFS mount, never on its local root.
const USR_MARKER: &str = "share/rollout-tiny/usr-marker";

/// The practice's node: mirrored local disks, a small root, `/usr` from NFS,
/// scratch paths on tmpfs. Written as an operator writes `[[layout]]`.
const MIRRORED_WITH_NFS_USR: &str = r#"
name = "mirrored"
disks = ["first", "first"]
raid = { level = 1 }
partitions = [
  { mount = "/",        size = "1GiB",   fs = "ext4" },
  { swap = true,        size = "256MiB" },
  { mount = "/scratch", size = "rest",   fs = "xfs" },
]
mounts = [
  { mount = "/usr", source = "10.44.0.5:/export/usr", type = "nfs", options = "ro,nolock" },
  { mount = "/tmp", type = "tmpfs" }, { mount = "/var/tmp", type = "tmpfs" }, { mount = "/var/lock", type = "tmpfs" },
]
"#;

const MIRROR: &str = r#"
name = "mirror"
disks = ["first", "first"]
raid = { level = 1 }
partitions = [
  { mount = "/", size = "1GiB",   fs = "ext4" },
  { swap = true, size = "256MiB" },
]
"#;

/// An LVM root; `/boot` is only there for BIOS (`BOOT_PARTITION`).
const LVM: &str = r#"
name = "lvm"
partitions = [
  BOOT_PARTITION
  { lvm = true, size = "rest" },
]
lvm = { vg = "vg0", volumes = [
  { name = "root", mount = "/",        size = "1GiB",   fs = "ext4" },
  { name = "swap", swap = true,        size = "256MiB" },
  { name = "log",  mount = "/var/log", size = "rest",   fs = "xfs" },
] }
"#;

fn layout(toml_text: &str) -> LayoutConfig {
    toml::from_str(toml_text).unwrap_or_else(|e| {
        panic!(
            "{e}
{toml_text}"
        )
    })
}

fn lvm_layout(bios: bool) -> LayoutConfig {
    let mut l = match bios {
        true => layout(&LVM.replace(
            "BOOT_PARTITION",
            r#"{ mount = "/boot", size = "512MiB", fs = "ext4" },"#,
        )),
        false => layout(&LVM.replace("BOOT_PARTITION", "")),
    };
    if bios {
        l.name = "lvm-bios".into();
    }
    l
}

/// The `rollout-tiny: …` lines `node` printed at its last boot (after `mark`).
fn boot_lines(node: &Node, mark: u64) -> Vec<String> {
    vm_harness::console::read_from(&node.console_log(), mark)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("rollout-tiny: ").map(str::to_string))
        .collect()
}

/// `mount <point> <type> <source>` from the boot lines.
fn mounted(lines: &[String], point: &str) -> Option<(String, String)> {
    lines.iter().find_map(|l| {
        let mut w = l.strip_prefix("mount ")?.split_whitespace();
        (w.next()? == point).then(|| (w.next().unwrap_or("").into(), w.next().unwrap_or("").into()))
    })
}

/// Power-cycles `name` and waits for its tiny OS's boot line; returns the
/// console mark the boot started at.
fn reboot_from_disk(t: &mut E2eLab, name: &str) -> u64 {
    let node = t.lab.node_mut(name).unwrap();
    node.power_off().unwrap();
    let mark = node.console_mark();
    node.start().unwrap();
    let want = format!("rollout-tiny: {name} booted from disk");
    if let Err(e) = node.wait_for_console_after(mark, &Pattern::substring(want), BOOT) {
        panic!(
            "{name} did not boot from its remaining disk: {e}\n{}",
            node.console_tail(60).join("\n")
        );
    }
    // The mdstat and mount lines follow the boot line.
    std::thread::sleep(Duration::from_secs(2));
    mark
}

#[test]
fn raid1_lvm_nfs_usr_tmpfs_and_4k_sectors_install_and_boot() {
    let Some((_serial, a)) = fixture() else {
        return;
    };
    let export = tempfile_dir("e2e-layout-usr");
    let mut t = E2eLab::build(a, "e2e-layout", ImageKind::Tiny, 4 * GIB, |lab| {
        lab.add_node(Firmware::Bios)?;
        lab.add_node(Firmware::Uefi)?;
        lab.add_node(Firmware::Uefi)?;
        lab.add_node(Firmware::Bios)?;
        let two = Hardware {
            disks: 2,
            ..Hardware::default()
        };
        lab.set_hardware("node1", two)?;
        lab.set_hardware(
            "node2",
            Hardware {
                sector_size: 4096,
                ..Hardware::default()
            },
        )?;
        lab.set_hardware("node3", two)?;
        // The image's /usr, as the site's NFS server would export it.
        copy_tree(&a.tiny_dir.join("usr"), &export);
        lab.add_nfs_server(
            "nfs1",
            NFS_ADDR,
            &[NfsExport {
                dir: export.clone(),
                pseudo: "/export/usr".into(),
            }],
        )?;
        let mut cfg = lab.config();
        // The nodes' own pull of new serials (busybox: an inittab loop).
        cfg.install.sync_interval = SYNC_INTERVAL;
        let layouts = [
            layout(MIRRORED_WITH_NFS_USR),
            lvm_layout(false),
            layout(MIRROR),
            lvm_layout(true),
        ];
        for (i, l) in layouts.into_iter().enumerate() {
            cfg.nodes[i].layout = Some(l.name.clone());
            cfg.layouts.push(l);
        }
        Ok(cfg)
    });
    t.lab.start_all().unwrap();
    let names = ["node1", "node2", "node3", "node4"];
    let marks: Vec<u64> = names
        .iter()
        .map(|n| t.lab.node_mut(n).unwrap().console_mark())
        .collect();
    let mut serial = 0;
    for n in names {
        let r = t.wait_booted(n, INSTALL);
        assert_eq!(r.installs, 1, "{}", r.line());
        serial = r.serial.expect("an installed serial");
    }
    for n in names {
        t.lab
            .node_mut(n)
            .unwrap()
            .wait_for_console(
                &Pattern::substring(format!("rollout-tiny: {n} booted from disk")),
                BOOT,
            )
            .unwrap();
    }
    std::thread::sleep(Duration::from_secs(2));
    let lines: Vec<Vec<String>> = names
        .iter()
        .zip(&marks)
        .map(|(n, m)| boot_lines(t.lab.node_mut(n).unwrap(), *m))
        .collect();

    // node1: / on a mirror, /scratch xfs on a mirror, /usr from NFS, tmpfs.
    let l1 = &lines[0];
    let (root_type, root_src) = mounted(l1, "/").expect("node1 printed its / mount");
    assert!(
        root_src.starts_with("/dev/md"),
        "node1's / is on {root_src}: {l1:?}"
    );
    assert_eq!(root_type, "ext4", "{l1:?}");
    let (scratch_type, scratch_src) = mounted(l1, "/scratch").expect("node1 mounted /scratch");
    assert_eq!(scratch_type, "xfs", "{l1:?}");
    assert!(scratch_src.starts_with("/dev/md"), "{l1:?}");
    let (usr_type, usr_src) = mounted(l1, "/usr").expect("node1 mounted /usr");
    assert!(
        usr_type.starts_with("nfs"),
        "node1's /usr is {usr_type}: {l1:?}"
    );
    assert_eq!(usr_src, format!("{NFS_ADDR}:/export/usr"), "{l1:?}");
    for p in ["/tmp", "/var/tmp", "/var/lock"] {
        assert_eq!(
            mounted(l1, p).map(|m| m.0).as_deref(),
            Some("tmpfs"),
            "node1's {p}: {l1:?}"
        );
    }
    assert!(
        l1.iter().any(|l| l == "usr-marker present"),
        "node1 does not see the image's /usr over NFS: {l1:?}"
    );
    assert!(
        l1.iter()
            .any(|l| l.starts_with("md ") && l.contains("[2/2]")),
        "node1's mirrors are not whole: {l1:?}"
    );

    // node2: LVM root on a 4Kn disk, under UEFI.
    let l2 = &lines[1];
    let (_, root2) = mounted(l2, "/").expect("node2 printed its / mount");
    assert!(
        is_lv(&root2, "vg0", "root"),
        "node2's / is on {root2}: {l2:?}"
    );
    assert_eq!(mounted(l2, "/var/log").map(|m| m.0).as_deref(), Some("xfs"));
    // node4: LVM root under BIOS, /boot beside it.
    let l4 = &lines[3];
    let (_, root4) = mounted(l4, "/").expect("node4 printed its / mount");
    assert!(
        is_lv(&root4, "vg0", "root"),
        "node4's / is on {root4}: {l4:?}"
    );
    assert!(mounted(l4, "/boot").is_some(), "{l4:?}");
    // node3: / mirrored under UEFI.
    let (_, root3) = mounted(&lines[2], "/").expect("node3 printed its / mount");
    assert!(root3.starts_with("/dev/md"), "{:?}", lines[2]);

    assert!(
        l2.iter().any(|l| l == "sectors vda 4096"),
        "node2's disk does not have 4096-byte sectors: {l2:?}"
    );

    // A new serial changes a file in /etc and one in /usr: node1's own sync
    // takes the first and leaves /usr (NFS, read-only) alone.
    t.host_cli(
        a,
        &[
            "image",
            "enter",
            "default",
            "--",
            "sh",
            "-c",
            &format!("echo v2 > /etc/rollout-release; echo v2 > /usr/{USR_MARKER}"),
        ],
    );
    let to = serial + 1;
    let wait = Duration::from_secs(3 * SYNC_INTERVAL + 120);
    t.wait_record("node1", &format!("its sync to serial {to}"), wait, |r| {
        r.serial == Some(to)
    });

    // From the host: node1's local root holds no /usr files (neither the copy
    // nor the sync put any there), only the mount point.
    t.lab.node_mut("node1").unwrap().power_off().unwrap();
    // RAID1 metadata 1.0 sits at the end of each member: the member reads as
    // the ext4 root itself.
    let mut disk1 = DiskImage::open(&t.lab.nodes()[0].disk_path()).unwrap();
    let root = disk1.mount(2).expect("mounting node1's root mirror member");
    assert!(root.join("usr").is_dir(), "the /usr mount point is missing");
    assert!(
        !root.join("usr").join(USR_MARKER).exists(),
        "the image's /usr was copied onto node1's local root"
    );
    assert!(root.join("scratch").is_dir() && root.join("var/lock").is_dir());
    assert_eq!(
        std::fs::read_to_string(root.join("etc/rollout-release")).unwrap_or_default(),
        "v2\n",
        "node1's sync did not bring serial {to}'s /etc"
    );
    let usr: Vec<_> = std::fs::read_dir(root.join("usr")).unwrap().collect();
    assert!(usr.is_empty(), "node1's local /usr is not empty: {usr:?}");
    let fstab = std::fs::read_to_string(root.join("etc/fstab")).unwrap();
    for want in [
        format!("{NFS_ADDR}:/export/usr /usr nfs ro,nolock"),
        "tmpfs /tmp tmpfs".to_string(),
        "tmpfs /var/lock tmpfs".to_string(),
    ] {
        // Fields, not spacing: the installer separates them with tabs.
        let want: Vec<&str> = want.split_whitespace().collect();
        assert!(
            fstab
                .lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>().starts_with(&want)),
            "no {want:?} in node1's fstab:\n{fstab}"
        );
    }
    drop(disk1);

    // A mirror loses a disk: node1 boots from either one alone, node3 (UEFI)
    // from its second disk's ESP.
    t.lab.node_mut("node1").unwrap().pull_disk(0);
    let mark = reboot_from_disk(&mut t, "node1");
    let l = boot_lines(t.lab.node_mut("node1").unwrap(), mark);
    assert!(
        l.iter()
            .any(|l| l.starts_with("md ") && l.contains("[2/1]")),
        "node1 booted without its first disk, but not on a degraded mirror: {l:?}"
    );
    let node1 = t.lab.node_mut("node1").unwrap();
    node1.plug_disk(0);
    node1.pull_disk(1);
    reboot_from_disk(&mut t, "node1");
    t.lab.node_mut("node3").unwrap().pull_disk(0);
    let mark = reboot_from_disk(&mut t, "node3");
    let l = boot_lines(t.lab.node_mut("node3").unwrap(), mark);
    let (_, src) = mounted(&l, "/").expect("node3 printed its / mount");
    assert!(
        src.starts_with("/dev/md"),
        "node3 without its first disk: {l:?}"
    );
    let _ = std::fs::remove_dir_all(&export);
}

/// `/dev/mapper/VG-LV` or `/dev/VG/LV`.
fn is_lv(dev: &str, vg: &str, lv: &str) -> bool {
    dev == format!("/dev/mapper/{vg}-{lv}") || dev == format!("/dev/{vg}/{lv}")
}

fn tempfile_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// `cp -a SRC/. DEST` (DEST created).
fn copy_tree(src: &Path, dest: &Path) {
    std::fs::create_dir_all(dest).unwrap();
    let ok = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", src.display()))
        .arg(dest)
        .status()
        .unwrap()
        .success();
    assert!(ok, "copying {} to {}", src.display(), dest.display());
}
