//! What the installer initramfs holds besides `/init` and kernel modules: the
//! programs the installer execs and the files it copies onto the disk. One list
//! for both ends: `rollout initramfs build` (`bootfiles`) packs exactly these host
//! paths, the installer (`initramfs/src/paths.rs`) uses them at the same paths.
//!
//! Debian 12 paths (merged /usr: `/sbin`, `/bin`, `/lib` and `/lib64` are symlinks
//! into `/usr`), the same on the build host and in the initramfs.

/// e2fsprogs' mke2fs; also makes ext3/ext4 through `-t`.
pub const MKE2FS: &str = "/usr/sbin/mke2fs";
/// e2fsprogs' tune2fs: a block image root (`wire::block_image`) with
/// metadata checksums (ext4) gets the node's UUID and label from it.
pub const TUNE2FS: &str = "/usr/sbin/tune2fs";
/// dosfstools' mkfs.vfat (a symlink to mkfs.fat), only for the EFI system partition.
pub const MKFS_FAT: &str = "/usr/sbin/mkfs.vfat";
pub const RSYNC: &str = "/usr/bin/rsync";
pub const EXTLINUX: &str = "/usr/bin/extlinux";
/// udpcast's receiver, for the multicast first install (65 KiB, libc only).
pub const UDP_RECEIVER: &str = "/usr/bin/udp-receiver";
/// For `rollout.debug=1` shells (`/usr/bin/sh` links to it).
pub const BUSYBOX: &str = "/usr/bin/busybox";

/// The storage tools: not in the installer initramfs but in a second archive,
/// [`STORAGE_TOOLS_IMG`], that the installer fetches and unpacks into its own
/// root only when the plan's layout asks for RAID, LVM or XFS. They and their
/// libraries would otherwise add megabytes to every install.
pub const MDADM: &str = "/usr/sbin/mdadm";
/// lvm2's one binary; the installer runs `lvm pvcreate …`, so no per-command links.
pub const LVM: &str = "/usr/sbin/lvm";
pub const MKFS_XFS: &str = "/usr/sbin/mkfs.xfs";
/// What the storage tools archive carries (with their shared libraries).
pub const STORAGE_PROGRAMS: &[&str] = &[MDADM, LVM, MKFS_XFS];
/// Kernel modules the storage tools archive adds to what the initramfs has
/// (md and dm already ship with it; xfs does not), dependencies resolved at build.
pub const STORAGE_MODULES: &[&str] = &["xfs", "raid1", "md_mod", "dm_mod"];
/// File name of the storage tools archive (gzipped newc cpio), built beside
/// `initramfs.img` and served at `/boot/{STORAGE_TOOLS_IMG}`.
pub const STORAGE_TOOLS_IMG: &str = "storage-tools.img";

/// syslinux' GPT-aware MBR boot code (440 bytes).
pub const GPTMBR_BIN: &str = "/usr/lib/syslinux/mbr/gptmbr.bin";
/// syslinux' BIOS COM32 modules (`ldlinux.c32`, ...).
pub const SYSLINUX_BIOS_MODULES: &str = "/usr/lib/syslinux/modules/bios";
/// COM32 modules the installer copies next to `extlinux.conf` (extlinux itself
/// installs `ldlinux.sys`; a matching `ldlinux.c32` must sit beside it).
pub const EXTLINUX_C32: &[&str] = &["ldlinux.c32", "libcom32.c32", "libutil.c32"];
pub const SYSTEMD_BOOT_EFI: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";

/// Programs the installer may exec; the builder adds their shared libraries and
/// the ELF interpreter.
pub const PROGRAMS: &[&str] = &[
    MKE2FS,
    TUNE2FS,
    "/usr/sbin/mkfs.ext3",
    "/usr/sbin/mkfs.ext4",
    "/usr/sbin/mkswap",
    MKFS_FAT,
    RSYNC,
    EXTLINUX,
    BUSYBOX,
    UDP_RECEIVER,
];

/// Data files the installer reads or copies onto the target disk.
pub const FILES: &[&str] = &[
    GPTMBR_BIN,
    "/usr/lib/syslinux/mbr/mbr.bin",
    "/usr/lib/syslinux/modules/bios/ldlinux.c32",
    "/usr/lib/syslinux/modules/bios/libcom32.c32",
    "/usr/lib/syslinux/modules/bios/libutil.c32",
    "/usr/lib/syslinux/modules/bios/menu.c32",
    "/usr/lib/syslinux/modules/bios/mboot.c32",
    SYSTEMD_BOOT_EFI,
    "/etc/mke2fs.conf",
];

#[cfg(test)]
mod tests {
    use super::*;

    /// The installer copies each COM32 module from SYSLINUX_BIOS_MODULES: a name
    /// added to EXTLINUX_C32 but not to FILES would fail every BIOS install.
    #[test]
    fn every_com32_module_the_installer_copies_is_packed() {
        for m in EXTLINUX_C32 {
            let path = format!("{SYSLINUX_BIOS_MODULES}/{m}");
            assert!(FILES.contains(&path.as_str()), "{path} is not in FILES");
        }
    }

    #[test]
    fn paths_are_absolute_and_listed_once() {
        let all: Vec<&str> = PROGRAMS
            .iter()
            .chain(FILES)
            .chain(STORAGE_PROGRAMS)
            .copied()
            .collect();
        for p in &all {
            assert!(p.starts_with('/'), "{p}");
            assert_eq!(all.iter().filter(|q| *q == p).count(), 1, "{p} twice");
        }
    }
}
