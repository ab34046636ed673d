//! Partition layout arithmetic: where each partition starts and ends for a given
//! disk size, sector size and firmware. Pure, so every size rule is unit tested.

use rollout::wire::Layout;

pub const MIB: u64 = 1024 * 1024;
/// Size of the BIOS boot partition (GRUB-style; extlinux does not use it, but
/// firmware and tools expect a GPT BIOS disk to have one).
pub const BIOS_BOOT_MIB: u64 = 1;
pub const ESP_MIB: u64 = 256;
/// The smallest root partition accepted when the layout says "fill" (`root_mib = 0`).
pub const MIN_FILL_ROOT_MIB: u64 = 512;
/// Partition entries in each GPT table (the usual 128 entries of 128 bytes).
const GPT_ENTRIES_BYTES: u64 = 128 * 128;
/// The legacy-BIOS-bootable attribute (bit 2) that gptmbr.bin looks for.
pub const ATTR_LEGACY_BIOS_BOOTABLE: u64 = 1 << 2;

pub use rollout::wire::Firmware;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PartKind {
    BiosBoot,
    Esp,
    Root,
    Swap,
}

impl PartKind {
    pub fn short_name(self) -> &'static str {
        match self {
            PartKind::BiosBoot => "bios_boot",
            PartKind::Esp => "esp",
            PartKind::Root => "root",
            PartKind::Swap => "swap",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedPart {
    /// GPT partition number (1-based): boot 1, root 2, swap 3 whatever their order on disk.
    pub number: u32,
    pub kind: PartKind,
    pub first_lba: u64,
    pub lba_count: u64,
    /// GPT attribute bits.
    pub attributes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedLayout {
    pub sector_size: u64,
    pub total_lba: u64,
    pub firmware: Firmware,
    /// In partition-number order.
    pub parts: Vec<PlannedPart>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    #[error("logical sector size {0} is not supported (only 512 and 4096 bytes)")]
    SectorSize(u64),
    #[error("disk is {disk_mib} MiB ({disk_bytes} bytes) but the layout needs {need_mib} MiB ({need_bytes} bytes: {detail} + 2 MiB for GPT and alignment); use a bigger disk or shrink layout.root_mib/swap_mib")]
    TooSmall {
        disk_bytes: u64,
        disk_mib: u64,
        need_bytes: u64,
        need_mib: u64,
        detail: String,
    },
}

/// The partitions (kind, MiB; 0 = fill) in on-disk order.
fn wanted(firmware: Firmware, layout: &Layout) -> Vec<(PartKind, u64)> {
    let mut v = vec![match firmware {
        Firmware::Bios => (PartKind::BiosBoot, BIOS_BOOT_MIB),
        Firmware::Uefi => (PartKind::Esp, ESP_MIB),
    }];
    let swap = (layout.swap_mib > 0).then_some((PartKind::Swap, layout.swap_mib));
    if layout.root_mib == 0 {
        // A filling root goes last so it can take whatever the disk has left.
        v.extend(swap);
        v.push((PartKind::Root, 0));
    } else {
        v.push((PartKind::Root, layout.root_mib));
        v.extend(swap);
    }
    v
}

fn detail(firmware: Firmware, layout: &Layout) -> String {
    wanted(firmware, layout)
        .iter()
        .map(|(k, mib)| match (k, mib) {
            (PartKind::Root, 0) => format!("at least {MIN_FILL_ROOT_MIB} MiB root (fill)"),
            (k, mib) => format!("{mib} MiB {}", k.short_name()),
        })
        .collect::<Vec<_>>()
        .join(" + ")
}

/// Bytes a disk needs for this layout: the partitions plus 1 MiB in front (MBR,
/// primary GPT, alignment) and 1 MiB at the end (backup GPT).
pub fn required_bytes(firmware: Firmware, layout: &Layout) -> u64 {
    let parts: u64 = wanted(firmware, layout)
        .iter()
        .map(|(_, mib)| if *mib == 0 { MIN_FILL_ROOT_MIB } else { *mib })
        .sum();
    (parts + 2) * MIB
}

pub fn plan(
    disk_bytes: u64,
    sector_size: u64,
    firmware: Firmware,
    layout: &Layout,
) -> Result<PlannedLayout, LayoutError> {
    if sector_size != 512 && sector_size != 4096 {
        return Err(LayoutError::SectorSize(sector_size));
    }
    let too_small = || {
        let need = required_bytes(firmware, layout);
        LayoutError::TooSmall {
            disk_bytes,
            disk_mib: disk_bytes / MIB,
            need_bytes: need,
            need_mib: need / MIB,
            detail: detail(firmware, layout),
        }
    };
    // The stated requirement is the contract (errors quote it), even where the
    // trailing MiB is more than a 512-byte-sector backup GPT strictly needs.
    if disk_bytes < required_bytes(firmware, layout) {
        return Err(too_small());
    }
    let align = MIB / sector_size;
    let total_lba = disk_bytes / sector_size;
    let entries_lba = GPT_ENTRIES_BYTES / sector_size;
    // Backup header in the last LBA, its entry array just before it.
    let Some(usable_end) = total_lba.checked_sub(1 + entries_lba) else {
        return Err(too_small());
    };
    // Partitions end on a MiB boundary so every size is a whole number of MiB.
    let end_lba = usable_end / align * align;
    let mut next = align;
    let mut parts = Vec::new();
    for (kind, mib) in wanted(firmware, layout) {
        let count = if mib == 0 {
            let left = end_lba.saturating_sub(next);
            if left < MIN_FILL_ROOT_MIB * align {
                return Err(too_small());
            }
            left
        } else {
            mib * align
        };
        if next + count > end_lba {
            return Err(too_small());
        }
        let (number, attributes) = match kind {
            PartKind::BiosBoot | PartKind::Esp => (1, 0),
            PartKind::Root if firmware == Firmware::Bios => (2, ATTR_LEGACY_BIOS_BOOTABLE),
            PartKind::Root => (2, 0),
            PartKind::Swap => (3, 0),
        };
        parts.push(PlannedPart {
            number,
            kind,
            first_lba: next,
            lba_count: count,
            attributes,
        });
        next += count;
    }
    parts.sort_by_key(|p| p.number);
    Ok(PlannedLayout {
        sector_size,
        total_lba,
        firmware,
        parts,
    })
}

impl PlannedLayout {
    pub fn part(&self, kind: PartKind) -> Option<&PlannedPart> {
        self.parts.iter().find(|p| p.kind == kind)
    }

    pub fn mib(&self, p: &PlannedPart) -> u64 {
        p.lba_count * self.sector_size / MIB
    }

    /// `GPT 1 MiB bios_boot + 1024 MiB root + 2048 MiB swap`, in on-disk order.
    pub fn describe(&self) -> String {
        let mut by_pos: Vec<&PlannedPart> = self.parts.iter().collect();
        by_pos.sort_by_key(|p| p.first_lba);
        let parts: Vec<String> = by_pos
            .iter()
            .map(|p| format!("{} MiB {}", self.mib(p), p.kind.short_name()))
            .collect();
        format!("GPT {}", parts.join(" + "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollout::wire::RootFs;

    fn layout(root: u64, swap: u64) -> Layout {
        Layout {
            root_mib: root,
            swap_mib: swap,
            root_fs: RootFs::Ext3,
            root_label: "root".into(),
        }
    }

    #[test]
    fn bios_default_layout_on_512_byte_sectors() {
        let l = plan(8 * 1024 * MIB, 512, Firmware::Bios, &layout(1024, 2048)).unwrap();
        assert_eq!(l.parts.len(), 3);
        let boot = l.part(PartKind::BiosBoot).unwrap();
        assert_eq!(
            (boot.number, boot.first_lba, boot.lba_count),
            (1, 2048, 2048)
        );
        let root = l.part(PartKind::Root).unwrap();
        assert_eq!(
            (root.number, root.first_lba, root.lba_count),
            (2, 4096, 1024 * 2048)
        );
        assert_eq!(root.attributes, 4, "root must be legacy-BIOS-bootable");
        let swap = l.part(PartKind::Swap).unwrap();
        assert_eq!(swap.first_lba, 4096 + 1024 * 2048);
        assert_eq!(l.mib(swap), 2048);
        assert_eq!(
            l.describe(),
            "GPT 1 MiB bios_boot + 1024 MiB root + 2048 MiB swap"
        );
    }

    #[test]
    fn uefi_on_4k_sectors_is_mib_aligned() {
        let l = plan(4 * 1024 * MIB, 4096, Firmware::Uefi, &layout(1024, 512)).unwrap();
        let esp = l.part(PartKind::Esp).unwrap();
        assert_eq!((esp.first_lba, esp.lba_count), (256, 256 * 256));
        for p in &l.parts {
            assert_eq!(p.first_lba % 256, 0, "{p:?} not aligned");
            assert_eq!(p.lba_count % 256, 0);
        }
        assert_eq!(l.part(PartKind::Root).unwrap().attributes, 0);
        assert_eq!(
            l.describe(),
            "GPT 256 MiB esp + 1024 MiB root + 512 MiB swap"
        );
    }

    #[test]
    fn fill_root_goes_last_and_leaves_room_for_backup_gpt() {
        let disk = 4 * 1024 * MIB + 12345; // not a MiB multiple
        let l = plan(disk, 512, Firmware::Bios, &layout(0, 1024)).unwrap();
        let root = l.part(PartKind::Root).unwrap();
        let swap = l.part(PartKind::Swap).unwrap();
        assert!(root.first_lba > swap.first_lba);
        let end = root.first_lba + root.lba_count;
        // Backup GPT needs the last 33 sectors.
        assert!(end <= l.total_lba - 33, "{end} overlaps backup GPT");
        assert_eq!(l.mib(root), 4096 - 1 - 1 - 1024 - 1);
        assert_eq!(
            l.describe(),
            "GPT 1 MiB bios_boot + 1024 MiB swap + 3069 MiB root"
        );
    }

    #[test]
    fn no_swap_partition_when_swap_is_zero() {
        let l = plan(2048 * MIB, 512, Firmware::Bios, &layout(1024, 0)).unwrap();
        assert!(l.part(PartKind::Swap).is_none());
        assert_eq!(l.parts.len(), 2);
    }

    #[test]
    fn exactly_required_size_fits_one_byte_less_does_not() {
        for (fw, sector) in [(Firmware::Bios, 512), (Firmware::Uefi, 4096)] {
            let lay = layout(1024, 2048);
            let need = required_bytes(fw, &lay);
            assert!(plan(need, sector, fw, &lay).is_ok(), "{fw:?} {sector}");
            let err = plan(need - sector, sector, fw, &lay).unwrap_err();
            assert!(matches!(err, LayoutError::TooSmall { .. }), "{err}");
        }
    }

    #[test]
    fn too_small_error_states_both_sizes() {
        let err = plan(3 * 1024 * MIB, 512, Firmware::Bios, &layout(1024, 2048)).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("disk is 3072 MiB (3221225472 bytes)"), "{msg}");
        assert!(msg.contains("needs 3075 MiB"), "{msg}");
        assert!(
            msg.contains("1 MiB bios_boot + 1024 MiB root + 2048 MiB swap"),
            "{msg}"
        );
        let err = plan(600 * MIB, 512, Firmware::Uefi, &layout(0, 0)).unwrap_err();
        assert!(
            err.to_string().contains("at least 512 MiB root (fill)"),
            "{err}"
        );
        assert!(plan(10, 512, Firmware::Bios, &layout(1, 1)).is_err());
    }

    #[test]
    fn odd_sector_sizes_are_refused() {
        assert_eq!(
            plan(MIB * 1024, 520, Firmware::Bios, &layout(1, 1)),
            Err(LayoutError::SectorSize(520))
        );
    }
}
