//! Partitions and formats a sparse file through a loop device with the same
//! library calls the installer makes, then inspects the result with the standard
//! tools (sgdisk, blkid, dumpe2fs). Needs root and losetup: without them it fails
//! under CI and scripts/test.sh, and a plain `cargo test` skips it (`testkit::prereq`).

use std::path::{Path, PathBuf};
use std::process::Command;

use rollout::wire::{Layout, RootFs};
use rollout_installer::layout::{self, DiskGeometry, Firmware, PartType, MIB};
use rollout_installer::{disk, format, partition, swap};
use testkit::prereq;

/// Whether this host can run the test (root, the tools, loop devices); see
/// `testkit::prereq`.
fn can_run() -> bool {
    if !prereq::require_root("loop devices")
        || !prereq::require_tools(&[
            ("losetup", "mount"),
            ("sgdisk", "gdisk"),
            ("blkid", "util-linux"),
            ("dumpe2fs", "e2fsprogs"),
        ])
    {
        return false;
    }
    if !Path::new("/dev/loop-control").exists() {
        prereq::missing("no /dev/loop-control (the loop driver is unavailable here)");
        return false;
    }
    true
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A loop device over a sparse file, detached on drop even if the test fails.
struct Loop {
    dev: PathBuf,
    /// The file behind the device, to compare its bytes.
    img: PathBuf,
    _dir: tempfile::TempDir,
}

impl Loop {
    fn new(size: u64, sector: u64) -> Loop {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        std::fs::File::create(&img).unwrap().set_len(size).unwrap();
        let sector = sector.to_string();
        let dev = run(
            "losetup",
            &[
                "--find",
                "--show",
                "--partscan",
                "--sector-size",
                &sector,
                img.to_str().unwrap(),
            ],
        );
        Loop {
            dev: PathBuf::from(dev.trim()),
            img,
            _dir: dir,
        }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

fn blkid(dev: &Path) -> String {
    run("blkid", &["-p", "-o", "export", dev.to_str().unwrap()])
}

fn install_like(firmware: Firmware, sector: u64) {
    if !can_run() {
        return;
    }
    let disk = Loop::new(3 * 1024 * MIB, sector);
    let lay = Layout::default().with_sizes(Some(0), Some(256));
    let geometry = DiskGeometry {
        bytes: 3 * 1024 * MIB,
        sector,
    };
    let plan = layout::plan(&lay, firmware, &[geometry]).unwrap();
    let planned = &plan.disks[0];
    let parts = partition::write_table(&disk.dev, planned).unwrap();
    let index_of = |t: PartType| planned.parts.iter().position(|p| p.part_type == t).unwrap();
    let dev_of = |t: PartType| parts[index_of(t)].clone();
    let root_number = planned.parts[index_of(PartType::LinuxFs)].number;

    // The partition table, as sgdisk sees it.
    let table = run("sgdisk", &["-p", disk.dev.to_str().unwrap()]);
    println!("{table}");
    assert!(
        table.contains(&format!("Sector size (logical/physical): {sector}/"))
            || table.contains(&format!("Sector size (logical): {sector}")),
        "{table}"
    );
    let (boot_code, boot_name) = match firmware {
        Firmware::Bios => ("EF02", "BIOS boot partition"),
        Firmware::Uefi => ("EF00", "EFI system partition"),
    };
    assert!(
        table.contains(boot_code) && table.contains(boot_name),
        "{table}"
    );
    assert!(table.contains("8300") && table.contains("8200"), "{table}");
    let verify = run("sgdisk", &["-v", disk.dev.to_str().unwrap()]);
    assert!(verify.contains("No problems found"), "{verify}");
    let attrs = run(
        "sgdisk",
        &[
            "-A",
            &format!("{root_number}:show"),
            disk.dev.to_str().unwrap(),
        ],
    );
    assert_eq!(
        attrs.contains("legacy BIOS bootable"),
        firmware == Firmware::Bios,
        "root attributes: {attrs}"
    );
    // 1 MiB alignment of every partition.
    for p in &planned.parts {
        assert_eq!(p.first_lba * sector % MIB, 0);
    }

    // Root: ext3 with a journal, without extents, labelled.
    let root = dev_of(PartType::LinuxFs);
    format::mke2fs(RootFs::Ext3, "it-root", &root).unwrap();
    let uuid = format::uuid_string(format::read_ext_uuid(&root).unwrap());
    let id = blkid(&root);
    assert!(id.contains("TYPE=ext3"), "{id}");
    assert!(id.contains("LABEL=it-root"), "{id}");
    assert!(
        id.contains(&format!("\nUUID={uuid}\n")) || id.starts_with(&format!("UUID={uuid}\n")),
        "blkid {id} vs superblock {uuid}"
    );
    let sb = run("dumpe2fs", &["-h", root.to_str().unwrap()]);
    let features = sb
        .lines()
        .find(|l| l.starts_with("Filesystem features:"))
        .unwrap();
    assert!(features.contains("has_journal"), "{features}");
    assert!(!features.contains("extent"), "{features}");
    assert!(sb.contains("Filesystem volume name:   it-root"), "{sb}");

    // Swap: our own header, recognised by blkid with our UUID.
    let sw = dev_of(PartType::Swap);
    let swap_part = &planned.parts[index_of(PartType::Swap)];
    let suuid = *uuid::Uuid::new_v4().as_bytes();
    swap::write(&sw, swap_part.lba_count * sector, suuid, "rollout-swap").unwrap();
    let id = blkid(&sw);
    assert!(id.contains("TYPE=swap"), "{id}");
    assert!(
        id.contains(&format!("UUID={}", format::uuid_string(suuid))),
        "{id}"
    );
    assert!(id.contains("LABEL=rollout-swap"), "{id}");
    let page = std::fs::read(&sw)
        .map(|b| b[..4096].to_vec())
        .unwrap_or_default();
    assert_eq!(&page[4086..], b"SWAPSPACE2");

    if firmware == Firmware::Uefi {
        let esp = dev_of(PartType::Esp);
        format::mkfs_fat("ESP", &esp).unwrap();
        let id = blkid(&esp);
        assert!(id.contains("TYPE=vfat") && id.contains("LABEL=ESP"), "{id}");
    }

    // The failure path: wiping leaves no partition table behind.
    partition::wipe(&disk.dev).unwrap();
    let out = Command::new("sgdisk")
        .arg("-p")
        .arg(&disk.dev)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!text.contains("8300"), "table survived the wipe: {text}");
}

#[test]
fn bios_layout_on_512_byte_sectors() {
    install_like(Firmware::Bios, 512);
}

#[test]
fn uefi_layout_on_4k_sectors() {
    install_like(Firmware::Uefi, 4096);
}

/// The loop device's facts as the installer reads them from sysfs.
fn disk_info(l: &Loop) -> disk::DiskInfo {
    let name = l.dev.file_name().unwrap().to_str().unwrap();
    disk::info(Path::new("/sys/block"), name).unwrap()
}

/// A disk that holds data is refused for a node nobody declared, with nothing
/// written (every byte of the backing file compared), and installed for a
/// declared one; a disk the failure path wiped counts as blank again.
fn stranger_vs_declared(prepare: &[(&str, &[&str])], found: &str) {
    if !can_run() {
        return;
    }
    let l = Loop::new(640 * MIB, 512);
    for (cmd, args) in prepare {
        let mut a: Vec<&str> = args.to_vec();
        a.push(l.dev.to_str().unwrap());
        run(cmd, &a);
    }
    run("sync", &[]);
    let sum = || run("sha256sum", &[l.img.to_str().unwrap()]);
    let before = sum();
    let d = disk_info(&l);
    let e = disk::guard(&d, false, "52:54:00:aa:00:09")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(found) && e.contains("never declared or approved"),
        "{e}"
    );
    assert!(
        e.contains("rollout discovered approve 52:54:00:aa:00:09"),
        "{e}"
    );
    assert_eq!(sum(), before, "the refused disk was written to");

    // Declared: the same disk is taken, and the install's table replaces it.
    let was = disk::guard(&d, true, "52:54:00:aa:00:09").unwrap();
    assert_eq!(was.map(|c| c.to_string()).as_deref(), Some(found));
    let lay = Layout::default().with_sizes(Some(0), Some(16));
    let geometry = DiskGeometry {
        bytes: d.size_bytes,
        sector: 512,
    };
    let plan = layout::plan(&lay, Firmware::Bios, &[geometry]).unwrap();
    partition::write_table(&l.dev, &plan.disks[0]).unwrap();
    let table = run("sgdisk", &["-p", l.dev.to_str().unwrap()]);
    assert!(table.contains("EF02") && table.contains("8200"), "{table}");

    // A failed install's wipe (first and last MiB) leaves a blank disk, so the
    // retry of an install is not refused by its own leftovers.
    partition::wipe(&l.dev).unwrap();
    assert_eq!(disk::guard(&d, false, "m").unwrap(), None);
}

#[test]
fn a_partitioned_disk_is_refused_for_a_stranger_and_installed_for_a_declared_node() {
    stranger_vs_declared(
        &[(
            "sgdisk",
            &["-n", "1:0:+10M", "-n", "2:0:+10M", "-n", "3:0:+10M"],
        )],
        "GPT with 3 partitions",
    );
}

#[test]
fn an_ext4_disk_is_refused_for_a_stranger_and_installed_for_a_declared_node() {
    stranger_vs_declared(&[("mkfs.ext4", &["-q", "-F"])], "ext4 filesystem");
}
/// A plan for `mac`/`hostname`, as the server hands it out.
fn plan_for(mac: &str, hostname: &str) -> rollout::wire::InstallPlan {
    serde_json::from_value(serde_json::json!({
        "install_id": "i-2", "token": "t", "mac": mac, "hostname": hostname,
        "server_url": "http://10.44.0.1:8080", "network": {"mode": "dhcp"},
        "image": {"name": "default", "serial": 2, "rsync_url": "rsync://10.44.0.1/default-2/"},
        "disk": {"path": null}, "layout": serde_json::to_value(Layout::default()).unwrap(),
        "bootloader": "auto", "excludes": [], "files": [], "ssh_authorized_keys": [],
        "kernel_cmdline": "", "on_failure": {"reboot_after_secs": 60}
    }))
    .unwrap()
}

/// The ★ of a reinstall: the disk holds this node's previous install (a GPT
/// `root` partition with ext3, as the installer made it, on 4 KiB sectors),
/// and the installer reads its SSH host keys and machine-id before anything is
/// written; another node's install, a blank disk or an unreadable root give
/// fresh keys, saying why.
#[test]
fn a_reinstall_reads_this_nodes_identity_from_the_old_root() {
    use rollout_installer::{identity, paths, render};
    if !can_run() || !prereq::require_tools(&[("ssh-keygen", "openssh-client")]) {
        return;
    }
    let sector = 4096;
    let disk = Loop::new(4 * 1024 * MIB, sector);
    let me = plan_for("52:54:00:aa:00:07", "rack1-node7");
    let geometry = DiskGeometry {
        bytes: 4 * 1024 * MIB,
        sector,
    };
    let plan = layout::plan(&me.layout, Firmware::Uefi, &[geometry]).unwrap();
    let planned = &plan.disks[0];
    let parts = partition::write_table(&disk.dev, planned).unwrap();
    let root = parts[planned
        .parts
        .iter()
        .position(|p| p.name == layout::GPT_ROOT_NAME)
        .unwrap()]
    .clone();
    format::mke2fs(RootFs::Ext3, "rollout-root", &root).unwrap();

    // The previous install, written through a normal mount.
    let mnt = tempfile::tempdir().unwrap();
    let m = mnt.path();
    run("mount", &[root.to_str().unwrap(), m.to_str().unwrap()]);
    std::fs::create_dir_all(m.join("etc/rollout")).unwrap();
    std::fs::create_dir_all(m.join("etc/ssh")).unwrap();
    std::fs::write(m.join("etc/rollout/node.toml"), render::node_toml(&me)).unwrap();
    std::fs::write(
        m.join("etc/machine-id"),
        "00112233445566778899aabbccddeeff\n",
    )
    .unwrap();
    let key = m.join("etc/ssh/ssh_host_ed25519_key");
    run(
        "ssh-keygen",
        &["-q", "-t", "ed25519", "-N", "", "-f", key.to_str().unwrap()],
    );
    let private = std::fs::read(&key).unwrap();
    let public = std::fs::read(key.with_extension("pub")).unwrap();
    run("umount", &[m.to_str().unwrap()]);

    let (kept, note) = identity::read_previous(&disk.dev, &me);
    let kept = kept.unwrap_or_else(|| panic!("identity not kept: {note}"));
    assert!(
        note.contains("keeping rack1-node7's SSH host keys (ssh_host_ed25519_key.pub)"),
        "{note}"
    );
    assert_eq!(
        kept.machine_id.as_deref(),
        Some("00112233445566778899aabbccddeeff")
    );
    let file = |n: &str| {
        kept.host_keys
            .iter()
            .find(|k| k.name == n)
            .unwrap()
            .contents
            .clone()
    };
    assert_eq!(file("ssh_host_ed25519_key"), private);
    assert_eq!(file("ssh_host_ed25519_key.pub"), public);
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts.contains(paths::OLD_ROOT),
        "old root left mounted: {mounts}"
    );

    // The same disk is another node's previous install for a different MAC.
    let other = plan_for("52:54:00:aa:00:08", "rack1-node8");
    let (none, note) = identity::read_previous(&disk.dev, &other);
    assert!(none.is_none());
    assert!(
        note.contains("fresh SSH host keys")
            && note.contains("belongs to another node (rack1-node7"),
        "{note}"
    );

    // An unreadable root: its superblock is gone.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&root)
        .and_then(|mut f| {
            use std::io::Write;
            f.write_all(&vec![0u8; 64 * 1024])?;
            f.sync_all()
        })
        .unwrap();
    let (none, note) = identity::read_previous(&disk.dev, &me);
    assert!(none.is_none() && note.contains("unreadable"), "{note}");

    // A blank disk.
    partition::wipe(&disk.dev).unwrap();
    let (none, note) = identity::read_previous(&disk.dev, &me);
    assert!(
        none.is_none() && note.contains("no previous install found"),
        "{note}"
    );
}
