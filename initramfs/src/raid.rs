//! Software RAID1 with mdadm (from the storage tools archive, `tools::ensure`):
//! creating a mirror, the installed node's `/etc/mdadm/mdadm.conf`, stopping
//! arrays before reboot, and wiping what an earlier install left on a disk.
//! The argument lists are pure functions; the rest runs mdadm.

use std::path::{Path, PathBuf};

use crate::paths;
use crate::sys::{self, SysError};

/// Without udev in the installer, mdadm must make `/dev/md*` itself.
const NO_UDEV: &[(&str, &str)] = &[("MDADM_NO_UDEV", "1")];

#[derive(Debug, thiserror::Error)]
pub enum RaidError {
    #[error("{} is not in the installer: the storage tools were not unpacked (tools::ensure runs when the plan's layout asks for RAID); check that the server has /boot/{} next to initramfs.img (rollout initramfs build makes both)", paths::MDADM, rollout::wire::initramfs::STORAGE_TOOLS_IMG)]
    NoMdadm,
    #[error("a RAID1 needs at least two members, got {0}: give the layout two disks")]
    TooFewMembers(usize),
    #[error("creating RAID1 {name} over {members}: {source}; check that no member is in use (mounted, or in an array started elsewhere) and that the raid1 module loaded")]
    Create {
        name: String,
        members: String,
        #[source]
        source: Box<SysError>,
    },
    #[error("mdadm created {0} but its device node did not appear; the md_mod/raid1 modules may be missing from the initramfs")]
    NoNode(String),
    #[error("reading the details of {md}: {source}")]
    Detail {
        md: String,
        #[source]
        source: Box<SysError>,
    },
    #[error("mdadm --detail --export {md} printed no MD_UUID: {output}")]
    NoUuid { md: String, output: String },
    #[error("stopping {md}: {source}; something still holds it open (a mount, swap, or an LVM volume group: vgchange -an first)")]
    Stop {
        md: String,
        #[source]
        source: Box<SysError>,
    },
    #[error("wiping old signatures from {device}: {source}")]
    Wipe {
        device: String,
        #[source]
        source: crate::partition::PartitionError,
    },
}

/// An array as the installed node's mdadm.conf names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MdArray {
    /// `/dev/md/NAME`.
    pub device: PathBuf,
    /// mdadm's UUID notation, `xxxxxxxx:xxxxxxxx:xxxxxxxx:xxxxxxxx`.
    pub uuid: String,
}

/// `mdadm --create` for a RAID1 named `name` over `members`.
///
/// - `--metadata=1.0`: the superblock sits at the end of each member, so a
///   member starts with the filesystem itself. On BIOS the root is a mirror
///   and extlinux (loaded by gptmbr from the partition's first sector) reads
///   it as a plain ext partition; 1.2 would put the superblock where it looks.
/// - `--homehost=any`: the name is stored as `any:NAME`, which mdadm treats as
///   local on every host, so the installed OS's initramfs assembles it as
///   `/dev/md/NAME` whatever hostname it has (a host-tagged array on a host
///   of another name is assembled as a "foreign" `md127` instead).
/// - `--assume-clean`: the members are new and empty. A mirror's initial
///   resync only makes unused blocks equal; every block the filesystem writes
///   goes to both members, and it never reads a block it did not write. Skipping
///   it keeps the copy from competing with a resync for the disks' bandwidth.
///   (A later `check` scrub counts mismatches in never-written blocks.)
/// - `--run`: no confirmation question when a member looks used (it was
///   wiped; old partition tables say otherwise until re-read).
pub fn create_args(name: &str, members: &[PathBuf]) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "--create".into(),
        format!("/dev/md/{name}"),
        "--run".into(),
        "--level=1".into(),
        format!("--raid-devices={}", members.len()),
        "--metadata=1.0".into(),
        "--homehost=any".into(),
        format!("--name={name}"),
        "--assume-clean".into(),
    ];
    a.extend(members.iter().map(|m| m.display().to_string()));
    a
}

/// Creates the mirror and returns its device (`/dev/md/NAME` resolved to the
/// kernel's `/dev/mdN` when the link exists).
pub fn create_mirror(name: &str, members: &[PathBuf]) -> Result<PathBuf, RaidError> {
    if members.len() < 2 {
        return Err(RaidError::TooFewMembers(members.len()));
    }
    require_mdadm()?;
    let args = create_args(name, members);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    sys::run_env(paths::MDADM, &args, NO_UDEV).map_err(|source| RaidError::Create {
        name: name.to_string(),
        members: members
            .iter()
            .map(|m| m.display().to_string())
            .collect::<Vec<_>>()
            .join(" "),
        source: Box::new(source),
    })?;
    let link = PathBuf::from(format!("/dev/md/{name}"));
    // mdadm makes the node and the link itself; give a slow kernel a moment.
    for _ in 0..50 {
        if let Ok(real) = std::fs::canonicalize(&link) {
            return Ok(real);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Err(RaidError::NoNode(link.display().to_string()))
}

/// The `MD_UUID` of `mdadm --detail --export` output.
pub fn parse_detail_uuid(export: &str) -> Option<String> {
    export
        .lines()
        .find_map(|l| l.trim().strip_prefix("MD_UUID="))
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
}

/// The array's UUID, for mdadm.conf.
pub fn array_uuid(md: &Path) -> Result<String, RaidError> {
    require_mdadm()?;
    let md_s = md.display().to_string();
    let out = sys::run_env(paths::MDADM, &["--detail", "--export", &md_s], NO_UDEV).map_err(
        |source| RaidError::Detail {
            md: md_s.clone(),
            source: Box::new(source),
        },
    )?;
    parse_detail_uuid(&out).ok_or(RaidError::NoUuid {
        md: md_s,
        output: out,
    })
}

/// The installed node's `/etc/mdadm/mdadm.conf`: every array by UUID, so the
/// node's initramfs and mdadm find them whatever their member names become
/// (`DEVICE partitions` scans every partition the kernel lists).
pub fn mdadm_conf(arrays: &[MdArray]) -> String {
    let mut s = String::from(
        "# Written by the rollout installer: this node's arrays, by UUID.\n\
         DEVICE partitions\n\
         HOMEHOST <system>\n\
         MAILADDR root\n",
    );
    for a in arrays {
        s.push_str(&format!(
            "ARRAY {} metadata=1.0 UUID={}\n",
            a.device.display(),
            a.uuid
        ));
    }
    s
}

/// Stops an array before reboot, so both members are marked clean.
pub fn stop(md: &Path) -> Result<(), RaidError> {
    require_mdadm()?;
    let md_s = md.display().to_string();
    sys::run_env(paths::MDADM, &["--stop", &md_s], NO_UDEV)
        .map(|_| ())
        .map_err(|source| RaidError::Stop {
            md: md_s,
            source: Box::new(source),
        })
}

/// The partitions the kernel lists for `disk` (`/sys/class/block/NAME/*/partition`),
/// as device paths, sorted.
pub fn old_partitions(sys_class_block: &Path, disk: &Path) -> Vec<PathBuf> {
    let Some(name) = disk.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = std::fs::read_dir(sys_class_block.join(&name))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().join("partition").exists())
                .map(|e| Path::new("/dev").join(e.file_name()))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Before a declared disk is reused: zeroes the first and last MiB of each of
/// its old partitions, then of the disk. That erases every md superblock
/// (0.90 and 1.0 at the end, 1.1 and 1.2 at the start), LVM's label (sector
/// 1), filesystem superblocks and both GPTs, so neither this installer nor
/// the installed node's initramfs assembles or activates a stale array or
/// volume group over the new layout (what `mdadm --zero-superblock` and
/// `wipefs -a` would do, without needing the tools on a disk without RAID).
pub fn wipe_stale(sys_class_block: &Path, disk: &Path) -> Result<Vec<PathBuf>, RaidError> {
    let mut wiped = old_partitions(sys_class_block, disk);
    wiped.push(disk.to_path_buf());
    for dev in &wiped {
        crate::partition::wipe(dev).map_err(|source| RaidError::Wipe {
            device: dev.display().to_string(),
            source,
        })?;
    }
    Ok(wiped)
}

fn require_mdadm() -> Result<(), RaidError> {
    if Path::new(paths::MDADM).exists() {
        Ok(())
    } else {
        Err(RaidError::NoMdadm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_args_make_a_bootable_host_independent_mirror() {
        let a = create_args(
            "root",
            &[PathBuf::from("/dev/vda2"), PathBuf::from("/dev/vdb2")],
        );
        assert_eq!(
            a,
            [
                "--create",
                "/dev/md/root",
                "--run",
                "--level=1",
                "--raid-devices=2",
                "--metadata=1.0",
                "--homehost=any",
                "--name=root",
                "--assume-clean",
                "/dev/vda2",
                "/dev/vdb2"
            ]
        );
    }

    #[test]
    fn one_member_is_refused_before_running_anything() {
        let e = create_mirror("root", &[PathBuf::from("/dev/vda2")]).unwrap_err();
        assert!(e.to_string().contains("at least two members, got 1"), "{e}");
    }

    #[test]
    fn detail_uuid_and_conf() {
        let out = "MD_LEVEL=raid1\nMD_DEVICES=2\nMD_METADATA=1.0\nMD_UUID=3b6a1c2e:0f9a4d11:8e2b7c55:a1b2c3d4\nMD_NAME=any:root\n";
        let uuid = parse_detail_uuid(out).unwrap();
        assert_eq!(uuid, "3b6a1c2e:0f9a4d11:8e2b7c55:a1b2c3d4");
        assert_eq!(parse_detail_uuid("MD_LEVEL=raid1\n"), None);
        assert_eq!(parse_detail_uuid("MD_UUID=\n"), None);
        let conf = mdadm_conf(&[
            MdArray {
                device: PathBuf::from("/dev/md/root"),
                uuid,
            },
            MdArray {
                device: PathBuf::from("/dev/md/swap"),
                uuid: "00000000:11111111:22222222:33333333".into(),
            },
        ]);
        let arrays: Vec<&str> = conf.lines().filter(|l| l.starts_with("ARRAY")).collect();
        assert_eq!(
            arrays,
            [
                "ARRAY /dev/md/root metadata=1.0 UUID=3b6a1c2e:0f9a4d11:8e2b7c55:a1b2c3d4",
                "ARRAY /dev/md/swap metadata=1.0 UUID=00000000:11111111:22222222:33333333"
            ]
        );
        assert!(conf.contains("DEVICE partitions\n"), "{conf}");
    }

    #[test]
    fn old_partitions_come_from_sysfs() {
        let d = tempfile::tempdir().unwrap();
        for p in ["vda/vda1", "vda/vda2", "vda/queue"] {
            std::fs::create_dir_all(d.path().join(p)).unwrap();
        }
        std::fs::write(d.path().join("vda/vda1/partition"), "1\n").unwrap();
        std::fs::write(d.path().join("vda/vda2/partition"), "2\n").unwrap();
        assert_eq!(
            old_partitions(d.path(), Path::new("/dev/vda")),
            [PathBuf::from("/dev/vda1"), PathBuf::from("/dev/vda2")]
        );
        assert!(old_partitions(d.path(), Path::new("/dev/vdz")).is_empty());
    }

    /// A stale md 1.0 superblock (4 KiB-aligned, 8 KiB before the end) and an
    /// LVM label (sector 1) on an image file are gone after the wipe.
    #[test]
    fn wipe_erases_md_superblocks_and_lvm_labels() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("disk.img");
        let size: u64 = 8 << 20;
        let mut data = vec![0xAAu8; size as usize];
        data[512..520].copy_from_slice(b"LABELONE");
        let sb = (size - 8192) as usize;
        data[sb..sb + 4].copy_from_slice(&0xa92b4efcu32.to_le_bytes());
        std::fs::write(&img, &data).unwrap();
        let wiped = wipe_stale(d.path(), &img).unwrap();
        assert_eq!(wiped, std::slice::from_ref(&img));
        let after = std::fs::read(&img).unwrap();
        assert_eq!(after.len() as u64, size);
        assert!(after[..1 << 20].iter().all(|b| *b == 0));
        assert!(after[(size as usize - (1 << 20))..].iter().all(|b| *b == 0));
        // The middle is left alone.
        assert_eq!(after[4 << 20], 0xAA);
    }
}
