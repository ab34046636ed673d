//! Layout arithmetic: a node's declarative [`Layout`] over its chosen disks →
//! every GPT partition (first LBA, count, attributes), the md arrays, the LVM
//! volume group and its volumes, and for every filesystem and swap area its
//! source and mount point. Pure, shared by the server (config validation, with
//! no disk) and the installer (with the real disks, before writing anything).
//!
//! The rules: partitions start and end on MiB boundaries (1 MiB in front for the
//! protective MBR and primary GPT, the backup GPT in the last MiB); the firmware's
//! boot partition comes first (BIOS: 1 MiB BIOS-boot; UEFI: 260 MiB ESP), on every
//! disk; with RAID1 every data partition is made on each disk at the same place,
//! sized by the smaller disk, and mirrored with md metadata 1.0 (superblock at the
//! end, so a member starts with the filesystem, as extlinux needs), whose overhead
//! is [`MD_OVERHEAD_MIB`]; LVM puts [`PV_METADATA_MIB`] of metadata in front of
//! each physical volume and hands out [`EXTENT_MIB`] extents.

use crate::wire::layout::{Content, DiskRule, Filesystem, Fs, Layout, MountKind, Size, MIB};
use crate::wire::Firmware;

mod check;
#[cfg(test)]
mod tests;

pub use check::{check, LayoutError};

/// The BIOS boot partition (extlinux does not use it, but firmware and tools
/// expect a GPT BIOS disk to have one).
pub const BIOS_BOOT_MIB: u64 = 1;
/// The EFI system partition. FAT32 needs at least 65,525 clusters, and on a
/// disk with 4096-byte sectors (one sector a cluster) 256 MiB is short of
/// that: mkfs.fat makes it anyway and UEFI firmware, which types a FAT by its
/// cluster count, reads it as FAT16 and finds no loader (seen in the lab with
/// OVMF). 260 MiB is enough on every sector size (Windows uses it on 4Kn).
pub const ESP_MIB: u64 = 260;
/// Room md metadata 1.0 takes at the end of each member: mdadm needs 8 KiB for
/// the superblock plus its bad-block log (up to a few hundred KiB); the plan
/// counts a whole MiB so an array is never smaller than planned.
pub const MD_OVERHEAD_MIB: u64 = 1;
/// LVM's default metadata area: the first extent starts 1 MiB into a PV.
pub const PV_METADATA_MIB: u64 = 1;
/// LVM's default extent size.
pub const EXTENT_MIB: u64 = 4;
/// The smallest `rest` accepted for the root filesystem.
pub const MIN_REST_ROOT_MIB: u64 = 512;
/// mkfs.xfs refuses filesystems under 300 MiB.
pub const MIN_XFS_MIB: u64 = 300;
/// The smallest `rest` accepted for anything else.
pub const MIN_REST_MIB: u64 = 16;
/// Partition entries in each GPT table (the usual 128 entries of 128 bytes).
const GPT_ENTRIES_BYTES: u64 = 128 * 128;
/// The legacy-BIOS-bootable attribute (bit 2) that gptmbr.bin looks for.
pub const ATTR_LEGACY_BIOS_BOOTABLE: u64 = 1 << 2;

/// One chosen disk as the arithmetic needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskGeometry {
    pub bytes: u64,
    /// Logical sector size: 512 or 4096.
    pub sector: u64,
}

/// A GPT partition's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PartType {
    BiosBoot,
    Esp,
    LinuxFs,
    Swap,
    /// A member of an md array.
    Raid,
    /// An LVM physical volume.
    Lvm,
}

/// What a planned partition is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    BiosBoot,
    Esp,
    /// `layout.partitions[i]` (its member, with RAID1).
    Data(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedPart {
    /// GPT partition number (1-based), in on-disk order.
    pub number: u32,
    pub role: Role,
    pub part_type: PartType,
    /// The GPT partition name: `root` for `/` (a reinstall finds its previous
    /// root by it), `swap`, `lvm`, the mount point otherwise.
    pub name: String,
    pub first_lba: u64,
    pub lba_count: u64,
    /// GPT attribute bits.
    pub attributes: u64,
}

/// One disk's GPT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskPlan {
    pub sector_size: u64,
    pub total_lba: u64,
    pub parts: Vec<PlannedPart>,
}

/// Where a filesystem, swap area or physical volume lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// Partition `number` of chosen disk `disk`.
    Partition { disk: usize, number: u32 },
    /// `Plan::arrays[i]`.
    Array(usize),
    /// `Plan::lvm.volumes[i]`.
    Volume(usize),
}

/// An md RAID1 array over the same partition of each disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArrayPlan {
    /// The array's name (`root`, `swap`, `boot`, `pv`, the mount point's
    /// last part): its device is `/dev/md/NAME` ([`Plan::device`]).
    pub name: String,
    /// `layout.partitions[partition]`.
    pub partition: usize,
    /// (disk, partition number) of each member.
    pub members: Vec<(usize, u32)>,
    /// Each member's size and the array's size with md's overhead taken off.
    pub member_mib: u64,
    pub mib: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumePlan {
    pub name: String,
    pub extents: u64,
}

impl VolumePlan {
    pub fn mib(&self) -> u64 {
        self.extents * EXTENT_MIB
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LvmPlan {
    pub vg: String,
    /// The physical volumes (partitions or arrays).
    pub pvs: Vec<Source>,
    /// Extents of the whole volume group.
    pub extents: u64,
    pub volumes: Vec<VolumePlan>,
}

/// A filesystem or swap area to make, and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub source: Source,
    /// `Content::Filesystem` or `Content::Swap`.
    pub content: Content,
    pub mib: u64,
}

impl Target {
    pub fn filesystem(&self) -> Option<&Filesystem> {
        match &self.content {
            Content::Filesystem(f) => Some(f),
            _ => None,
        }
    }
}

/// The whole layout over the chosen disks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub firmware: Firmware,
    pub disks: Vec<DiskPlan>,
    pub arrays: Vec<ArrayPlan>,
    pub lvm: Option<LvmPlan>,
    /// In mount order (parents first), swap areas last.
    pub targets: Vec<Target>,
}

/// How many disks the layout takes: two with RAID1, one otherwise.
pub fn disk_count(layout: &Layout) -> usize {
    if layout.raid.is_some() {
        2
    } else {
        1
    }
}

/// The disk rules, one per disk taken (`first` where the layout names none).
pub fn disk_rules(layout: &Layout) -> Vec<DiskRule> {
    (0..disk_count(layout))
        .map(|i| layout.disks.get(i).cloned().unwrap_or(DiskRule::First))
        .collect()
}

fn boot_mib(firmware: Firmware) -> u64 {
    match firmware {
        Firmware::Bios => BIOS_BOOT_MIB,
        Firmware::Uefi => ESP_MIB,
    }
}

/// The smallest size a `rest` (or any) filesystem of this content may get.
pub fn min_mib(content: &Content) -> u64 {
    match content {
        Content::Filesystem(f) if f.fs == Fs::Xfs => MIN_XFS_MIB,
        Content::Filesystem(f) if f.mount == "/" => MIN_REST_ROOT_MIB,
        _ => MIN_REST_MIB,
    }
}

/// `1 MiB bios_boot + 1024 MiB / ext3 + 2048 MiB swap + rest /scratch xfs`.
pub fn describe_wanted(layout: &Layout, firmware: Firmware) -> String {
    let boot = match firmware {
        Firmware::Bios => format!("{BIOS_BOOT_MIB} MiB bios_boot"),
        Firmware::Uefi => format!("{ESP_MIB} MiB esp"),
    };
    let mut v = vec![boot];
    v.extend(layout.partitions.iter().map(|p| {
        let size = match p.size {
            Size::Mib(m) => format!("{m} MiB"),
            Size::Rest => format!("rest (at least {} MiB)", rest_min_mib(layout, p)),
        };
        format!("{size} {}", p.content.describe())
    }));
    v.join(" + ")
}

/// The least MiB a `rest` partition must get: its content's minimum, or what
/// its volume group needs when it is a physical volume.
fn rest_min_mib(layout: &Layout, p: &crate::wire::Partition) -> u64 {
    match (&p.content, &layout.lvm) {
        (Content::LvmPv, Some(lvm)) => {
            let fixed: u64 = lvm
                .volumes
                .iter()
                .map(|v| match v.size {
                    Size::Mib(m) => m.div_ceil(EXTENT_MIB) * EXTENT_MIB,
                    Size::Rest => min_mib(&v.content).div_ceil(EXTENT_MIB) * EXTENT_MIB,
                })
                .sum();
            let md = if layout.raid.is_some() {
                MD_OVERHEAD_MIB
            } else {
                0
            };
            fixed + PV_METADATA_MIB + md
        }
        (c, _) => min_mib(c),
    }
}

/// MiB a disk needs for this layout (the smallest `rest`s included), with the
/// MiB in front (MBR, primary GPT, alignment) and the MiB at the end (backup GPT).
pub fn required_mib(layout: &Layout, firmware: Firmware) -> u64 {
    let parts: u64 = layout
        .partitions
        .iter()
        .map(|p| match p.size {
            Size::Mib(m) => m,
            Size::Rest => rest_min_mib(layout, p),
        })
        .sum();
    boot_mib(firmware) + parts + 2
}

/// The usable MiB of a disk: whole MiB from MiB 1 to the last MiB boundary
/// before the backup GPT (its entry array and header in the last sectors).
fn end_mib(g: DiskGeometry) -> u64 {
    let total_lba = g.bytes / g.sector;
    let backup = 1 + GPT_ENTRIES_BYTES / g.sector;
    total_lba.saturating_sub(backup) * g.sector / MIB
}

fn gpt_name(c: &Content) -> String {
    match c {
        Content::Filesystem(f) if f.mount == "/" => GPT_ROOT_NAME.into(),
        Content::Filesystem(f) => f.mount.chars().take(36).collect(),
        Content::Swap => "swap".into(),
        Content::LvmPv => "lvm".into(),
    }
}

/// An md array's name from what it holds: `root`, `swap`, `pv`, or the mount
/// point's path without slashes (`var_log`), at most 32 bytes as md allows.
fn array_name(c: &Content) -> String {
    let name = match c {
        Content::Filesystem(f) if f.mount == "/" => "root".to_string(),
        Content::Filesystem(f) => f.mount.trim_start_matches('/').replace('/', "_"),
        Content::Swap => "swap".into(),
        Content::LvmPv => "pv".into(),
    };
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(28)
        .collect()
}

/// GPT names the installer and `rollout-sync` look partitions up by.
pub const GPT_ROOT_NAME: &str = "root";
pub const GPT_ESP_NAME: &str = "EFI system partition";
pub const GPT_BIOS_BOOT_NAME: &str = "BIOS boot partition";

/// The mount point holding `/boot`: `/boot` when it is its own filesystem, `/` otherwise.
pub fn boot_mount(layout: &Layout) -> &'static str {
    if layout.contents().any(|(_, c)| c.mount() == Some("/boot")) {
        "/boot"
    } else {
        "/"
    }
}

/// Plans `layout` over `disks` (as many as [`disk_count`], in rule order).
/// Refuses what [`check`] refuses, and every disk too small, with the sizes.
pub fn plan(
    layout: &Layout,
    firmware: Firmware,
    disks: &[DiskGeometry],
) -> Result<Plan, LayoutError> {
    check(layout, Some(firmware))?;
    if disks.len() != disk_count(layout) {
        return Err(LayoutError::DiskCount {
            layout: layout.name.clone(),
            want: disk_count(layout),
            got: disks.len(),
        });
    }
    for g in disks {
        if g.sector != 512 && g.sector != 4096 {
            return Err(LayoutError::SectorSize(g.sector));
        }
    }
    let need = required_mib(layout, firmware);
    let too_small = |i: usize| {
        let g = disks[i];
        LayoutError::TooSmall {
            layout: layout.name.clone(),
            disk: i + 1,
            disk_mib: g.bytes / MIB,
            disk_bytes: g.bytes,
            need_mib: need,
            detail: describe_wanted(layout, firmware),
        }
    };
    for (i, g) in disks.iter().enumerate() {
        if g.bytes < need * MIB {
            return Err(too_small(i));
        }
    }
    // RAID1 members sit at the same place on each disk: the smaller one decides.
    let smallest = (0..disks.len())
        .min_by_key(|&i| end_mib(disks[i]))
        .unwrap_or(0);
    let end = end_mib(disks[smallest]);
    let fixed: u64 = layout
        .partitions
        .iter()
        .map(|p| match p.size {
            Size::Mib(m) => m,
            Size::Rest => 0,
        })
        .sum();
    let start = 1 + boot_mib(firmware);
    let rest = end
        .checked_sub(start + fixed)
        .ok_or_else(|| too_small(smallest))?;
    // (start MiB, MiB) of each data partition.
    let mut spans = Vec::new();
    let mut at = start;
    for p in &layout.partitions {
        let mib = match p.size {
            Size::Mib(m) => m,
            Size::Rest => rest,
        };
        if p.size == Size::Rest && mib < rest_min_mib(layout, p) {
            return Err(too_small(smallest));
        }
        spans.push((at, mib));
        at += mib;
    }
    let raid = layout.raid.is_some();
    let boot_holder = boot_mount(layout);
    let disk_plans = disks
        .iter()
        .map(|g| {
            let align = MIB / g.sector;
            let mut parts = vec![PlannedPart {
                number: 1,
                role: match firmware {
                    Firmware::Bios => Role::BiosBoot,
                    Firmware::Uefi => Role::Esp,
                },
                part_type: match firmware {
                    Firmware::Bios => PartType::BiosBoot,
                    Firmware::Uefi => PartType::Esp,
                },
                name: match firmware {
                    Firmware::Bios => GPT_BIOS_BOOT_NAME.into(),
                    Firmware::Uefi => GPT_ESP_NAME.into(),
                },
                first_lba: align,
                lba_count: boot_mib(firmware) * align,
                attributes: 0,
            }];
            for (i, (p, &(at, mib))) in layout.partitions.iter().zip(&spans).enumerate() {
                let part_type = match (&p.content, raid) {
                    (_, true) => PartType::Raid,
                    (Content::Filesystem(_), _) => PartType::LinuxFs,
                    (Content::Swap, _) => PartType::Swap,
                    (Content::LvmPv, _) => PartType::Lvm,
                };
                // gptmbr.bin boots the partition with this bit: the one holding /boot.
                let bootable = firmware == Firmware::Bios && p.content.mount() == Some(boot_holder);
                parts.push(PlannedPart {
                    number: i as u32 + 2,
                    role: Role::Data(i),
                    part_type,
                    name: gpt_name(&p.content),
                    first_lba: at * align,
                    lba_count: mib * align,
                    attributes: if bootable {
                        ATTR_LEGACY_BIOS_BOOTABLE
                    } else {
                        0
                    },
                });
            }
            DiskPlan {
                sector_size: g.sector,
                total_lba: g.bytes / g.sector,
                parts,
            }
        })
        .collect();
    // Where each data partition's content is: the partition, or its array.
    let mut arrays = Vec::new();
    let mut sources = Vec::new();
    for (i, &(_, mib)) in spans.iter().enumerate() {
        if raid {
            let mut name = array_name(&layout.partitions[i].content);
            if arrays.iter().any(|a: &ArrayPlan| a.name == name) {
                name = format!("{name}{i}");
            }
            arrays.push(ArrayPlan {
                name,
                partition: i,
                members: (0..disks.len()).map(|d| (d, i as u32 + 2)).collect(),
                member_mib: mib,
                mib: mib - MD_OVERHEAD_MIB,
            });
            sources.push((Source::Array(arrays.len() - 1), mib - MD_OVERHEAD_MIB));
        } else {
            sources.push((
                Source::Partition {
                    disk: 0,
                    number: i as u32 + 2,
                },
                mib,
            ));
        }
    }
    let mut targets = Vec::new();
    let mut pvs = Vec::new();
    for (p, &(source, mib)) in layout.partitions.iter().zip(&sources) {
        match &p.content {
            Content::LvmPv => pvs.push((source, mib)),
            c => targets.push(Target {
                source,
                content: c.clone(),
                mib,
            }),
        }
    }
    let lvm = match &layout.lvm {
        None => None,
        Some(lvm) => {
            let extents: u64 = pvs
                .iter()
                .map(|&(_, mib)| mib.saturating_sub(PV_METADATA_MIB) / EXTENT_MIB)
                .sum();
            let fixed: u64 = lvm
                .volumes
                .iter()
                .map(|v| match v.size {
                    Size::Mib(m) => m.div_ceil(EXTENT_MIB),
                    Size::Rest => 0,
                })
                .sum();
            let vg_too_small = |need_mib: u64| LayoutError::VgTooSmall {
                layout: layout.name.clone(),
                vg: lvm.vg.clone(),
                vg_mib: extents * EXTENT_MIB,
                need_mib,
            };
            let left = extents
                .checked_sub(fixed)
                .ok_or_else(|| vg_too_small(fixed * EXTENT_MIB))?;
            let mut volumes = Vec::new();
            for v in &lvm.volumes {
                let ext = match v.size {
                    Size::Mib(m) => m.div_ceil(EXTENT_MIB),
                    Size::Rest => {
                        let min = min_mib(&v.content).div_ceil(EXTENT_MIB);
                        if left < min {
                            return Err(vg_too_small((fixed + min) * EXTENT_MIB));
                        }
                        left
                    }
                };
                targets.push(Target {
                    source: Source::Volume(volumes.len()),
                    content: v.content.clone(),
                    mib: ext * EXTENT_MIB,
                });
                volumes.push(VolumePlan {
                    name: v.name.clone(),
                    extents: ext,
                });
            }
            Some(LvmPlan {
                vg: lvm.vg.clone(),
                pvs: pvs.iter().map(|&(s, _)| s).collect(),
                extents,
                volumes,
            })
        }
    };
    targets.sort_by_key(|t| mount_order(t.content.mount()));
    Ok(Plan {
        firmware,
        disks: disk_plans,
        arrays,
        lvm,
        targets,
    })
}

/// Sort key that mounts parents before children (`/`, `/var`, `/var/log`) and
/// puts swap (no mount point) last.
pub fn mount_order(mount: Option<&str>) -> (usize, String) {
    match mount {
        Some("/") => (0, "/".into()),
        Some(m) => (m.split('/').filter(|s| !s.is_empty()).count(), m.into()),
        None => (usize::MAX, String::new()),
    }
}

impl Plan {
    /// The target mounted on `/`.
    pub fn root(&self) -> Option<&Target> {
        self.targets.iter().find(|t| t.content.mount() == Some("/"))
    }

    /// The device path of a source, given each chosen disk's partition paths.
    pub fn device(&self, source: Source, partition_path: impl Fn(usize, u32) -> String) -> String {
        match source {
            Source::Partition { disk, number } => partition_path(disk, number),
            Source::Array(i) => format!("/dev/md/{}", self.arrays[i].name),
            Source::Volume(i) => {
                let lvm = self
                    .lvm
                    .as_ref()
                    .expect("a volume source has a volume group");
                mapper_path(&lvm.vg, &lvm.volumes[i].name)
            }
        }
    }

    /// `disk /dev/vda 4096 MiB: 1 MiB bios_boot + 1024 MiB / ext3 + 2048 MiB swap`,
    /// one line per disk, then the arrays and volumes.
    pub fn describe(&self, layout: &Layout, disk_names: &[String]) -> Vec<String> {
        let mut lines = Vec::new();
        for (d, disk) in self.disks.iter().enumerate() {
            let parts: Vec<String> = disk
                .parts
                .iter()
                .map(|p| {
                    let mib = p.lba_count * disk.sector_size / MIB;
                    let what = match p.role {
                        Role::BiosBoot => "bios_boot".to_string(),
                        Role::Esp => "esp".to_string(),
                        Role::Data(i) if p.part_type == PartType::Raid => {
                            format!("raid member of {}", self.arrays[i].name)
                        }
                        Role::Data(i) => layout.partitions[i].content.describe(),
                    };
                    format!("{mib} MiB {what}")
                })
                .collect();
            let name = disk_names.get(d).map_or("?", String::as_str);
            lines.push(format!(
                "disk {name} {} MiB: {}",
                disk.total_lba * disk.sector_size / MIB,
                parts.join(" + ")
            ));
        }
        for a in &self.arrays {
            lines.push(format!(
                "raid1 /dev/md/{} {} MiB: {}",
                a.name,
                a.mib,
                layout.partitions[a.partition].content.describe()
            ));
        }
        if let Some(lvm) = &self.lvm {
            let vols: Vec<String> = lvm
                .volumes
                .iter()
                .zip(layout.lvm.iter().flat_map(|l| &l.volumes))
                .map(|(v, w)| format!("{} {} MiB {}", v.name, v.mib(), w.content.describe()))
                .collect();
            lines.push(format!(
                "lvm {} {} MiB: {}",
                lvm.vg,
                lvm.extents * EXTENT_MIB,
                vols.join(" + ")
            ));
        }
        lines
    }
}

/// `/dev/mapper/VG-LV`, dashes in either name doubled as device-mapper does.
pub fn mapper_path(vg: &str, lv: &str) -> String {
    format!(
        "/dev/mapper/{}-{}",
        vg.replace('-', "--"),
        lv.replace('-', "--")
    )
}

/// Whether `path` is at or under a network mount of the layout.
pub fn under_network_mount(layout: &Layout, path: &str) -> bool {
    layout
        .mounts
        .iter()
        .any(|m| matches!(m.kind, MountKind::Nfs { .. }) && is_at_or_under(path, &m.mount))
}

/// `/usr/lib` is under `/usr` and `/usr` is at it; `/usrx` is neither.
pub fn is_at_or_under(path: &str, dir: &str) -> bool {
    dir == "/"
        || path == dir
        || path
            .strip_prefix(dir)
            .is_some_and(|tail| tail.starts_with('/'))
}
