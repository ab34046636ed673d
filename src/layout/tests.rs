use super::*;
use crate::wire::layout::{Lvm, Mount, Partition, Raid, Volume};

const GIB: u64 = 1024 * MIB;

fn fs(mount: &str, fs: Fs) -> Content {
    Content::Filesystem(Filesystem {
        mount: mount.into(),
        fs,
        label: None,
        options: None,
    })
}

fn part(size: Size, content: Content) -> Partition {
    Partition { size, content }
}

fn simple(root: u64, swap: u64) -> Layout {
    Layout::default().with_sizes(Some(root), Some(swap))
}

fn disk(bytes: u64, sector: u64) -> DiskGeometry {
    DiskGeometry { bytes, sector }
}

fn part_of(p: &Plan, disk: usize, number: u32) -> &PlannedPart {
    p.disks[disk]
        .parts
        .iter()
        .find(|q| q.number == number)
        .unwrap()
}

#[test]
fn bios_default_layout_on_512_byte_sectors() {
    let p = plan(&Layout::default(), Firmware::Bios, &[disk(8 * GIB, 512)]).unwrap();
    let d = &p.disks[0];
    assert_eq!(d.parts.len(), 3);
    let boot = &d.parts[0];
    assert_eq!(
        (boot.number, boot.first_lba, boot.lba_count),
        (1, 2048, 2048)
    );
    assert_eq!(boot.part_type, PartType::BiosBoot);
    let root = &d.parts[1];
    assert_eq!(
        (root.number, root.first_lba, root.lba_count),
        (2, 4096, 1024 * 2048)
    );
    assert_eq!(
        root.name, "root",
        "a reinstall finds its previous root by name"
    );
    assert_eq!(root.attributes, ATTR_LEGACY_BIOS_BOOTABLE);
    let swap = &d.parts[2];
    assert_eq!(swap.first_lba, 4096 + 1024 * 2048);
    assert_eq!((swap.part_type, swap.attributes), (PartType::Swap, 0));
    assert_eq!(p.targets.len(), 2);
    assert_eq!(
        p.targets[0].source,
        Source::Partition { disk: 0, number: 2 }
    );
    assert_eq!(p.targets[0].mib, 1024);
    assert_eq!(p.targets[1].content, Content::Swap);
    assert_eq!(
        p.describe(&Layout::default(), &["/dev/vda".into()]),
        vec!["disk /dev/vda 8192 MiB: 1 MiB bios_boot + 1024 MiB / ext3 + 2048 MiB swap"]
    );
}

#[test]
fn uefi_on_4k_sectors_is_mib_aligned() {
    let p = plan(&simple(1024, 512), Firmware::Uefi, &[disk(4 * GIB, 4096)]).unwrap();
    let d = &p.disks[0];
    assert_eq!(
        (d.parts[0].first_lba, d.parts[0].lba_count),
        (256, ESP_MIB * 256)
    );
    assert_eq!(d.parts[0].part_type, PartType::Esp);
    // FAT32 with one 4096-byte sector a cluster: 65,525 clusters at least,
    // plus 32 reserved sectors and two FATs of 64 sectors each.
    assert!(d.parts[0].lba_count >= 65_525 + 32 + 2 * 64);
    for q in &d.parts {
        assert_eq!(q.first_lba % 256, 0, "{q:?} not aligned");
        assert_eq!(q.lba_count % 256, 0);
        assert_eq!(q.attributes, 0, "no legacy-bootable bit on UEFI");
    }
    assert_eq!(d.total_lba, 4 * GIB / 4096);
}

#[test]
fn rest_takes_what_is_left_before_the_backup_gpt() {
    let disk_bytes = 4 * GIB + 12345; // not a MiB multiple
    for sector in [512, 4096] {
        let p = plan(
            &simple(0, 1024),
            Firmware::Bios,
            &[disk(disk_bytes, sector)],
        )
        .unwrap();
        let d = &p.disks[0];
        let root = part_of(&p, 0, 3);
        assert_eq!(root.name, "root", "root 0: after swap, as before layouts");
        let end = root.first_lba + root.lba_count;
        let backup = 1 + 16384 / sector;
        assert!(end <= d.total_lba - backup, "{end} overlaps the backup GPT");
        assert_eq!(root.lba_count * sector / MIB, 4096 - 1 - 1 - 1024 - 1);
        assert_eq!(p.root().unwrap().mib, 3069);
    }
}

#[test]
fn rest_in_the_middle_leaves_the_later_partitions_their_size() {
    let l = Layout {
        partitions: vec![
            part(Size::Mib(1024), fs("/", Fs::Ext4)),
            part(Size::Rest, fs("/scratch", Fs::Xfs)),
            part(Size::Mib(2048), Content::Swap),
        ],
        ..Layout::default()
    };
    let p = plan(&l, Firmware::Uefi, &[disk(10 * GIB, 512)]).unwrap();
    let scratch = part_of(&p, 0, 3);
    let swap = part_of(&p, 0, 4);
    assert_eq!(scratch.first_lba + scratch.lba_count, swap.first_lba);
    assert_eq!(
        scratch.lba_count * 512 / MIB,
        10240 - 1 - ESP_MIB - 1024 - 2048 - 1
    );
    assert_eq!(scratch.name, "/scratch");
    // Mount order: parents first, swap last.
    let order: Vec<Option<&str>> = p.targets.iter().map(|t| t.content.mount()).collect();
    assert_eq!(order, vec![Some("/"), Some("/scratch"), None]);
}

#[test]
fn exactly_required_size_fits_one_sector_less_does_not() {
    for (fw, sector) in [(Firmware::Bios, 512), (Firmware::Uefi, 4096)] {
        let lay = simple(1024, 2048);
        let need = required_mib(&lay, fw) * MIB;
        assert!(
            plan(&lay, fw, &[disk(need, sector)]).is_ok(),
            "{fw:?} {sector}"
        );
        let err = plan(&lay, fw, &[disk(need - sector, sector)]).unwrap_err();
        assert!(matches!(err, LayoutError::TooSmall { .. }), "{err}");
    }
}

#[test]
fn too_small_error_states_both_sizes_and_the_layout() {
    let err = plan(&simple(1024, 2048), Firmware::Bios, &[disk(3 * GIB, 512)]).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("layout \"default\""), "{msg}");
    assert!(
        msg.contains("disk 1 is 3072 MiB (3221225472 bytes)"),
        "{msg}"
    );
    assert!(msg.contains("needs 3075 MiB"), "{msg}");
    assert!(
        msg.contains("1 MiB bios_boot + 1024 MiB / ext3 + 2048 MiB swap"),
        "{msg}"
    );
    let err = plan(&simple(0, 0), Firmware::Uefi, &[disk(600 * MIB, 512)]).unwrap_err();
    assert!(
        err.to_string().contains("rest (at least 512 MiB) / ext3"),
        "{err}"
    );
    assert!(plan(&simple(1, 1), Firmware::Bios, &[disk(10, 512)]).is_err());
}

#[test]
fn odd_sector_sizes_are_refused() {
    assert_eq!(
        plan(&simple(1, 1), Firmware::Bios, &[disk(GIB, 520)]),
        Err(LayoutError::SectorSize(520))
    );
}

fn raid_layout() -> Layout {
    Layout {
        name: "mirror".into(),
        disks: vec![DiskRule::First, DiskRule::First],
        raid: Some(Raid { level: 1 }),
        partitions: vec![
            part(Size::Mib(1024), fs("/", Fs::Ext3)),
            part(Size::Mib(512), Content::Swap),
            part(Size::Rest, fs("/data", Fs::Ext4)),
        ],
        ..Layout::default()
    }
}

#[test]
fn raid1_mirrors_every_partition_sized_by_the_smaller_disk() {
    let l = raid_layout();
    let disks = [disk(8 * GIB, 512), disk(6 * GIB, 4096)];
    let p = plan(&l, Firmware::Bios, &disks).unwrap();
    assert_eq!(p.arrays.len(), 3);
    for (d, dp) in p.disks.iter().enumerate() {
        assert_eq!(dp.parts[0].part_type, PartType::BiosBoot, "disk {d}");
        for q in &dp.parts[1..] {
            assert_eq!(q.part_type, PartType::Raid);
        }
        // Both members of / are legacy-bootable: either disk boots alone.
        assert_eq!(dp.parts[1].attributes, ATTR_LEGACY_BIOS_BOOTABLE);
        assert_eq!(dp.parts[2].attributes, 0);
    }
    // Same MiB on both disks whatever their sector size; the rest from the 6 GiB one.
    for n in 2..=4 {
        let (a, b) = (part_of(&p, 0, n), part_of(&p, 1, n));
        assert_eq!(a.first_lba * 512, b.first_lba * 4096);
        assert_eq!(a.lba_count * 512, b.lba_count * 4096);
    }
    let data = &p.arrays[2];
    assert_eq!(data.members, vec![(0, 4), (1, 4)]);
    assert_eq!(data.member_mib, 6144 - 1 - 1 - 1024 - 512 - 1);
    assert_eq!(data.mib, data.member_mib - MD_OVERHEAD_MIB);
    let root = p.root().unwrap();
    assert_eq!(root.source, Source::Array(0));
    assert_eq!(root.mib, 1024 - MD_OVERHEAD_MIB);
    assert_eq!(p.device(root.source, |_, _| unreachable!()), "/dev/md/root");
    assert_eq!(p.arrays[2].name, "data");
    let lines = p.describe(&l, &["/dev/vda".into(), "/dev/vdb".into()]);
    assert_eq!(lines.len(), 2 + 3);
    assert!(
        lines[1]
            .starts_with("disk /dev/vdb 6144 MiB: 1 MiB bios_boot + 1024 MiB raid member of root"),
        "{lines:?}"
    );
    assert_eq!(lines[2], "raid1 /dev/md/root 1023 MiB: / ext3");
}

#[test]
fn raid1_too_small_names_the_smaller_disk() {
    let l = raid_layout();
    let err = plan(&l, Firmware::Bios, &[disk(8 * GIB, 512), disk(GIB, 512)]).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("disk 2 is 1024 MiB"), "{msg}");
    assert!(msg.contains("needs 1555 MiB"), "{msg}");
    assert!(matches!(
        plan(&l, Firmware::Bios, &[disk(8 * GIB, 512)]),
        Err(LayoutError::DiskCount {
            want: 2,
            got: 1,
            ..
        })
    ));
}

fn lvm_layout(firmware_boot: bool) -> Layout {
    let mut l = Layout {
        name: "lvm".into(),
        partitions: vec![part(Size::Rest, Content::LvmPv)],
        ..Layout::default()
    };
    if firmware_boot {
        l.partitions
            .insert(0, part(Size::Mib(512), fs("/boot", Fs::Ext3)));
    }
    l.lvm = Some(Lvm {
        vg: "vg0".into(),
        volumes: vec![
            Volume {
                name: "root".into(),
                size: Size::Mib(1023),
                content: fs("/", Fs::Ext4),
            },
            Volume {
                name: "swap".into(),
                size: Size::Mib(256),
                content: Content::Swap,
            },
            Volume {
                name: "var-log".into(),
                size: Size::Rest,
                content: fs("/var/log", Fs::Xfs),
            },
        ],
    });
    l
}

#[test]
fn lvm_counts_pv_metadata_and_whole_extents() {
    let l = lvm_layout(true);
    let p = plan(&l, Firmware::Bios, &[disk(4 * GIB, 512)]).unwrap();
    let pv_mib = 4096 - 1 - 1 - 512 - 1;
    let lvm = p.lvm.as_ref().unwrap();
    assert_eq!(lvm.pvs, vec![Source::Partition { disk: 0, number: 3 }]);
    assert_eq!(part_of(&p, 0, 3).part_type, PartType::Lvm);
    assert_eq!(lvm.extents, (pv_mib - PV_METADATA_MIB) / EXTENT_MIB);
    // 1023 MiB rounds up to 256 extents; the rest gets every extent left.
    assert_eq!(lvm.volumes[0].extents, 256);
    assert_eq!(lvm.volumes[1].extents, 64);
    assert_eq!(lvm.volumes[2].extents, lvm.extents - 256 - 64);
    let root = p.root().unwrap();
    assert_eq!(root.source, Source::Volume(0));
    assert_eq!(
        p.device(root.source, |_, _| unreachable!()),
        "/dev/mapper/vg0-root"
    );
    assert_eq!(
        p.device(Source::Volume(2), |_, _| unreachable!()),
        "/dev/mapper/vg0-var--log"
    );
    // The /boot partition holds extlinux: it is the legacy-bootable one.
    assert_eq!(part_of(&p, 0, 2).attributes, ATTR_LEGACY_BIOS_BOOTABLE);
    let order: Vec<Option<&str>> = p.targets.iter().map(|t| t.content.mount()).collect();
    assert_eq!(
        order,
        vec![Some("/"), Some("/boot"), Some("/var/log"), None]
    );
}

#[test]
fn lvm_over_raid1_takes_md_overhead_then_pv_metadata() {
    let mut l = lvm_layout(true);
    l.disks = vec![DiskRule::First, DiskRule::First];
    l.raid = Some(Raid { level: 1 });
    let p = plan(
        &l,
        Firmware::Uefi,
        &[disk(4 * GIB, 512), disk(4 * GIB, 512)],
    )
    .unwrap();
    let pv = &p.arrays[1];
    assert_eq!(pv.member_mib, 4096 - 1 - ESP_MIB - 512 - 1);
    let lvm = p.lvm.as_ref().unwrap();
    assert_eq!(lvm.pvs, vec![Source::Array(1)]);
    assert_eq!(
        lvm.extents,
        (pv.member_mib - MD_OVERHEAD_MIB - PV_METADATA_MIB) / EXTENT_MIB
    );
    // UEFI: an ESP on each disk.
    assert!(p
        .disks
        .iter()
        .all(|d| d.parts[0].part_type == PartType::Esp));
}

#[test]
fn a_volume_group_too_small_for_its_volumes_says_both_sizes() {
    let mut l = lvm_layout(true);
    // A rest PV is sized for its volumes by the disk check; a fixed one is not.
    l.partitions[1].size = Size::Mib(985);
    let err = plan(&l, Firmware::Bios, &[disk(4 * GIB, 512)]).unwrap_err();
    let msg = err.to_string();
    // 985 MiB of PV: 1 MiB of metadata, then 246 extents = 984 MiB.
    assert!(msg.contains("volume group vg0 has 984 MiB"), "{msg}");
    assert!(msg.contains("need 1280 MiB"), "{msg}");
}

#[test]
fn lvm_or_xfs_holding_boot_is_refused_on_bios_only() {
    let l = lvm_layout(false);
    let err = check(&l, Some(Firmware::Bios)).unwrap_err().to_string();
    assert!(
        err.contains("/ is on LVM") && err.contains("/boot"),
        "{err}"
    );
    assert!(check(&l, Some(Firmware::Uefi)).is_ok());
    assert!(
        check(&l, None).is_ok(),
        "config load does not know the firmware"
    );
    assert!(plan(&l, Firmware::Uefi, &[disk(4 * GIB, 512)]).is_ok());
    let mut x = Layout::default();
    x.partitions[0].content = fs("/", Fs::Xfs);
    let err = check(&x, Some(Firmware::Bios)).unwrap_err().to_string();
    assert!(err.contains("xfs"), "{err}");
    assert!(check(&x, Some(Firmware::Uefi)).is_ok());
}

fn refused(l: &Layout) -> String {
    check(l, None).unwrap_err().to_string()
}

#[test]
fn mistakes_that_need_no_disk_are_refused() {
    let base = Layout::default();
    let mut l = base.clone();
    l.partitions.push(part(Size::Rest, fs("/a", Fs::Ext4)));
    l.partitions.push(part(Size::Rest, fs("/b", Fs::Ext4)));
    assert!(refused(&l).contains("2 partitions have size \"rest\""));

    let mut l = base.clone();
    l.partitions.push(part(Size::Mib(100), fs("/", Fs::Ext4)));
    assert!(
        refused(&l).contains("/ is mounted twice"),
        "{}",
        refused(&l)
    );

    let mut l = base.clone();
    l.mounts.push(Mount {
        mount: "/".into(),
        kind: MountKind::Nfs {
            source: "nfs1:/export/root".into(),
        },
        options: None,
    });
    assert!(
        refused(&l).contains("/ cannot be an nfs mount"),
        "{}",
        refused(&l)
    );

    let mut l = base.clone();
    l.partitions
        .push(part(Size::Mib(100), fs("/usr/local", Fs::Ext4)));
    l.mounts.push(Mount {
        mount: "/usr".into(),
        kind: MountKind::Nfs {
            source: "nfs1:/export/usr".into(),
        },
        options: Some("ro,nolock".into()),
    });
    assert!(refused(&l).contains("/usr/local would be hidden under an nfs mount on /usr"));

    let mut l = base.clone();
    l.mounts.push(Mount {
        mount: "/tmp".into(),
        kind: MountKind::Tmpfs,
        options: None,
    });
    l.mounts.push(Mount {
        mount: "/tmp".into(),
        kind: MountKind::Tmpfs,
        options: None,
    });
    assert!(refused(&l).contains("/tmp is mounted twice"));

    let mut l = base.clone();
    l.partitions[0].content = fs("/srv", Fs::Ext4);
    assert!(refused(&l).contains("no filesystem is mounted on /"));

    for bad in ["relative", "/trailing/", "/a/../b", "/with space"] {
        let mut l = base.clone();
        l.partitions.push(part(Size::Mib(100), fs(bad, Fs::Ext4)));
        assert!(refused(&l).contains("mount point"), "{bad}");
    }

    let mut l = base.clone();
    l.partitions.push(part(Size::Mib(200), fs("/x", Fs::Xfs)));
    assert!(refused(&l).contains("at least 300 MiB"));

    let mut l = base.clone();
    l.raid = Some(Raid { level: 5 });
    assert!(refused(&l).contains("raid level 5"));
    l.raid = Some(Raid { level: 1 });
    assert!(refused(&l).contains("give two disk rules, not 1"));

    let mut l = base.clone();
    l.partitions.push(part(Size::Rest, Content::LvmPv));
    assert!(refused(&l).contains("no lvm = "));

    let mut l = lvm_layout(true);
    l.lvm.as_mut().unwrap().volumes[1].name = "root".into();
    assert!(refused(&l).contains("volume root of vg0 is named twice"));
    let mut l = lvm_layout(true);
    l.lvm.as_mut().unwrap().vg = "-vg".into();
    assert!(refused(&l).contains("volume group name \"-vg\""));

    let mut l = base.clone();
    l.disks = vec![DiskRule::MinSize(2048)];
    assert!(refused(&l).contains("size>=2048MiB allows disks smaller than the 3075 MiB"));
    l.disks = vec![DiskRule::MinSize(4096)];
    assert!(check(&l, None).is_ok());
}

#[test]
fn network_paths_and_mount_nesting() {
    let mut l = Layout::default();
    l.mounts.push(Mount {
        mount: "/usr".into(),
        kind: MountKind::Nfs {
            source: "nfs1:/export/usr".into(),
        },
        options: None,
    });
    assert!(under_network_mount(&l, "/usr"));
    assert!(under_network_mount(&l, "/usr/lib/x"));
    assert!(!under_network_mount(&l, "/usrx"));
    assert!(!under_network_mount(&l, "/"));
    assert!(is_at_or_under("/anything", "/"));
    assert_eq!(mapper_path("my-vg", "lv"), "/dev/mapper/my--vg-lv");
}
