//! Making file systems (mke2fs, mkfs.fat) and reading their UUIDs back.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::Command;

use rollout::wire::RootFs;

use crate::paths;

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("{tool} could not be started ({source}); the initramfs must contain it")]
    Spawn {
        tool: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{tool} failed on {device} ({status}): {output}")]
    Failed {
        tool: &'static str,
        device: String,
        status: String,
        output: String,
    },
    #[error("reading the superblock of {device}: {source}")]
    Io {
        device: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} has no ext2/3/4 superblock (magic 0xEF53 missing)")]
    NotExt(String),
    #[error("{0} has no XFS superblock (magic XFSB missing)")]
    NotXfs(String),
}

/// mke2fs arguments: the ones the server's block images are made with
/// (`rollout::wire::block_image::mke2fs_args`), then the device.
pub fn mke2fs_args(fs: RootFs, label: &str, device: &Path) -> Vec<String> {
    let mut args = rollout::wire::block_image::mke2fs_args(fs, label);
    args.push(device.display().to_string());
    args
}

fn run(tool: &'static str, path: &str, args: &[String], device: &Path) -> Result<(), FormatError> {
    let out = Command::new(path)
        .args(args)
        .output()
        .map_err(|source| FormatError::Spawn { tool, source })?;
    if out.status.success() {
        return Ok(());
    }
    let mut output = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if output.is_empty() {
        output = String::from_utf8_lossy(&out.stdout).trim().to_string();
    }
    Err(FormatError::Failed {
        tool,
        device: device.display().to_string(),
        status: out.status.to_string(),
        output,
    })
}

pub fn mke2fs(fs: RootFs, label: &str, device: &Path) -> Result<(), FormatError> {
    run(
        "mke2fs",
        paths::MKE2FS,
        &mke2fs_args(fs, label, device),
        device,
    )
}

/// mke2fs with the UUID the plan's files already name (the block image
/// root's fallback: the UUID was chosen before the image was tried).
pub fn mke2fs_with_uuid(
    fs: RootFs,
    label: &str,
    device: &Path,
    uuid: &str,
) -> Result<(), FormatError> {
    let mut args = mke2fs_args(fs, label, device);
    args.splice(0..0, ["-U".to_string(), uuid.to_string()]);
    run("mke2fs", paths::MKE2FS, &args, device)
}

/// Gives a block image written onto `device` this node's UUID and label.
/// Without metadata checksums (ext3) that is two fields of every superblock
/// copy, written here; with them (ext4's default) every checksum is seeded
/// from the UUID, so tune2fs rewrites them.
pub fn set_identity(device: &Path, uuid: &uuid::Uuid, label: &str) -> Result<String, FormatError> {
    let label: String = label.chars().take(16).collect();
    let ioe = |source| FormatError::Io {
        device: device.display().to_string(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
        .map_err(ioe)?;
    let sb = read_superblock(&mut f, device)?;
    let copies =
        superblock_copies(&sb).ok_or_else(|| FormatError::NotExt(device.display().to_string()))?;
    if copies.is_empty() {
        run(
            "tune2fs",
            paths::TUNE2FS,
            &[
                "-U".into(),
                uuid.to_string(),
                "-L".into(),
                label,
                device.display().to_string(),
            ],
            device,
        )?;
        return Ok("UUID and label by tune2fs (metadata checksums)".into());
    }
    let mut name = [0u8; 16];
    name[..label.len()].copy_from_slice(label.as_bytes());
    for at in &copies {
        use std::os::unix::fs::FileExt;
        f.write_all_at(uuid.as_bytes(), at + SB_UUID).map_err(ioe)?;
        f.write_all_at(&name, at + SB_VOLUME_NAME).map_err(ioe)?;
    }
    f.sync_all().map_err(ioe)?;
    Ok(format!(
        "UUID and label in {} superblock copies",
        copies.len()
    ))
}

const SB_MAGIC: std::ops::Range<usize> = 0x38..0x3a;
const EXT_MAGIC: [u8; 2] = [0x53, 0xef];
const SB_UUID: u64 = 0x68;
const SB_VOLUME_NAME: u64 = 0x78;

/// Byte offsets of every superblock copy of the ext filesystem whose primary
/// superblock is `sb`, or an empty list when its metadata is checksummed
/// (the copies cannot simply be patched); None if `sb` is not ext.
pub fn superblock_copies(sb: &[u8; 1024]) -> Option<Vec<u64>> {
    let le32 = |o: usize| {
        u64::from(u32::from_le_bytes(
            sb[o..o + 4].try_into().expect("4 bytes"),
        ))
    };
    if sb[SB_MAGIC] != EXT_MAGIC {
        return None;
    }
    let ro_compat = le32(0x64);
    const SPARSE_SUPER: u64 = 0x1;
    const METADATA_CSUM: u64 = 0x400;
    const GDT_CSUM: u64 = 0x10;
    if ro_compat & (METADATA_CSUM | GDT_CSUM) != 0 {
        return Some(vec![]);
    }
    // 64bit, meta_bg and sparse_super2 place copies elsewhere: leave those to tune2fs.
    let incompat = le32(0x60);
    let compat = le32(0x5c);
    if incompat & (0x80 | 0x10) != 0 || compat & 0x200 != 0 {
        return Some(vec![]);
    }
    let blocks = le32(0x04);
    let first = le32(0x14);
    let block = 1024u64 << le32(0x18);
    let per_group = le32(0x20);
    if per_group == 0 || blocks <= first {
        return None;
    }
    let groups = (blocks - first).div_ceil(per_group);
    let has_copy = |g: u64| {
        if ro_compat & SPARSE_SUPER == 0 || g <= 1 {
            return true;
        }
        [3u64, 5, 7].iter().any(|&b| {
            let mut p = b;
            while p < g {
                p *= b;
            }
            p == g
        })
    };
    let mut out = vec![1024];
    for g in (1..groups).filter(|&g| has_copy(g)) {
        out.push((g * per_group + first) * block);
    }
    Some(out)
}

/// FAT32 for the EFI system partition.
pub fn mkfs_fat(label: &str, device: &Path) -> Result<(), FormatError> {
    let args = vec![
        "-F".into(),
        "32".into(),
        "-n".into(),
        label.chars().take(11).collect::<String>(),
        device.display().to_string(),
    ];
    run("mkfs.fat", paths::MKFS_FAT, &args, device)
}

/// mkfs.xfs arguments: `-f` because the device is fresh and may hold an old
/// filesystem; XFS labels hold at most 12 bytes. The sector size comes from
/// the device (a 4Kn disk gets 4096-byte sectors without being told).
pub fn mkfs_xfs_args(label: &str, device: &Path) -> Vec<String> {
    vec![
        "-f".into(),
        "-q".into(),
        "-L".into(),
        label.chars().take(12).collect(),
        device.display().to_string(),
    ]
}

/// XFS (from the storage tools archive, fetched when the layout names xfs).
pub fn mkfs_xfs(label: &str, device: &Path) -> Result<(), FormatError> {
    run(
        "mkfs.xfs",
        paths::MKFS_XFS,
        &mkfs_xfs_args(label, device),
        device,
    )
}

/// The UUID of an XFS superblock (at byte 0: magic `XFSB`, then blocksize,
/// dblocks, rblocks and rextents before `sb_uuid` at offset 32).
pub fn parse_xfs_uuid(superblock: &[u8]) -> Option<[u8; 16]> {
    if superblock.len() < 48 || &superblock[..4] != b"XFSB" {
        return None;
    }
    superblock[32..48].try_into().ok()
}

pub fn read_xfs_uuid(device: &Path) -> Result<[u8; 16], FormatError> {
    let err = |source| FormatError::Io {
        device: device.display().to_string(),
        source,
    };
    let mut sb = [0u8; 512];
    std::fs::File::open(device)
        .and_then(|mut f| f.read_exact(&mut sb))
        .map_err(err)?;
    parse_xfs_uuid(&sb).ok_or_else(|| FormatError::NotXfs(device.display().to_string()))
}

/// The UUID of an ext superblock: the superblock starts at byte 1024, its magic
/// 0xEF53 at offset 56 and `s_uuid` at offset 104.
pub fn parse_ext_uuid(superblock: &[u8]) -> Option<[u8; 16]> {
    if superblock.len() < 120 || superblock[SB_MAGIC] != EXT_MAGIC {
        return None;
    }
    superblock[104..120].try_into().ok()
}

/// The primary ext superblock: 1024 bytes at byte 1024, whatever the block size.
fn read_superblock(f: &mut std::fs::File, device: &Path) -> Result<[u8; 1024], FormatError> {
    let err = |source| FormatError::Io {
        device: device.display().to_string(),
        source,
    };
    f.seek(SeekFrom::Start(1024)).map_err(err)?;
    let mut sb = [0u8; 1024];
    f.read_exact(&mut sb).map_err(err)?;
    Ok(sb)
}

pub fn read_ext_uuid(device: &Path) -> Result<[u8; 16], FormatError> {
    let mut f = std::fs::File::open(device).map_err(|source| FormatError::Io {
        device: device.display().to_string(),
        source,
    })?;
    parse_ext_uuid(&read_superblock(&mut f, device)?)
        .ok_or_else(|| FormatError::NotExt(device.display().to_string()))
}

/// Canonical lower-case UUID text, as blkid and fstab use it.
pub fn uuid_string(u: [u8; 16]) -> String {
    uuid::Uuid::from_bytes(u).hyphenated().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ext3_args_forbid_extents() {
        let a = mke2fs_args(RootFs::Ext3, "rollout-root", Path::new("/dev/vda2"));
        assert_eq!(
            a,
            [
                "-F",
                "-q",
                "-t",
                "ext3",
                "-O",
                "has_journal,^extent,^64bit,^metadata_csum",
                "-L",
                "rollout-root",
                "/dev/vda2"
            ]
        );
        let a = mke2fs_args(RootFs::Ext4, "a-label-longer-than-16", Path::new("/dev/x"));
        assert_eq!(
            a,
            ["-F", "-q", "-t", "ext4", "-L", "a-label-longer-t", "/dev/x"]
        );
    }

    #[test]
    fn xfs_args_and_superblock() {
        assert_eq!(
            mkfs_xfs_args("rollout-scratch", Path::new("/dev/vda4")),
            ["-f", "-q", "-L", "rollout-scra", "/dev/vda4"]
        );
        let mut sb = [0u8; 512];
        sb[32..48].copy_from_slice(&[9u8; 16]);
        assert_eq!(parse_xfs_uuid(&sb), None);
        sb[..4].copy_from_slice(b"XFSB");
        assert_eq!(parse_xfs_uuid(&sb), Some([9u8; 16]));
    }

    /// The real mkfs.xfs on an image file, and the UUID read back as blkid has it.
    #[test]
    fn mkfs_xfs_on_an_image_file() {
        if !testkit::prereq::require_tools(&[("mkfs.xfs", "xfsprogs"), ("blkid", "util-linux")]) {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("xfs.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(320 << 20)
            .unwrap();
        mkfs_xfs("scratch", &img).unwrap();
        let uuid = uuid_string(read_xfs_uuid(&img).unwrap());
        let out = Command::new("blkid")
            .args(["-o", "value", "-s", "UUID"])
            .arg(&img)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), uuid);
        assert!(read_ext_uuid(&img).is_err());
    }

    /// A block image's identity: written into every superblock copy of an
    /// ext3 (the backups of groups 1 and 3 too, which e2fsck falls back on),
    /// by tune2fs on an ext4 with metadata checksums; e2fsck passes both.
    #[test]
    fn set_identity_names_every_superblock_copy() {
        if !testkit::prereq::require_tools(&[
            ("mke2fs", "e2fsprogs"),
            ("dumpe2fs", "e2fsprogs"),
            ("e2fsck", "e2fsprogs"),
        ]) {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        // 1 GiB: 4 KiB blocks; 300 MiB: mke2fs's "small" type, 1 KiB blocks
        // and the first data block at 1, which moves every backup.
        for (fs, size) in [
            (RootFs::Ext3, 1u64 << 30),
            (RootFs::Ext3, 300 << 20),
            (RootFs::Ext4, 300 << 20),
        ] {
            let img = d.path().join(format!("{}-{size}.img", fs.as_str()));
            std::fs::File::create(&img).unwrap().set_len(size).unwrap();
            mke2fs(fs, "built", &img).unwrap();
            let uuid = uuid::Uuid::new_v4();
            let said = set_identity(&img, &uuid, "rollout-root").unwrap();
            let dump = |args: &[&str]| {
                let o = Command::new("dumpe2fs")
                    .args(args)
                    .arg(&img)
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&o.stdout).into_owned()
            };
            let want = format!("Filesystem UUID:          {uuid}");
            assert!(dump(&["-h"]).contains(&want), "{fs:?} primary: {said}");
            assert!(dump(&["-h"]).contains("volume name:   rollout-root"));
            if fs == RootFs::Ext3 {
                assert!(said.contains("superblock copies"), "{said}");
                let head = dump(&["-h"]);
                let field = |name: &str| -> u64 {
                    head.lines()
                        .find_map(|l| l.strip_prefix(name))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap()
                };
                let (block, per_group, first) = (
                    field("Block size:"),
                    field("Blocks per group:"),
                    field("First block:"),
                );
                for group in [1, 3] {
                    let at = group * per_group + first;
                    let b = dump(&[
                        "-h",
                        "-o",
                        &format!("superblock={at}"),
                        "-o",
                        &format!("blocksize={block}"),
                    ]);
                    assert!(b.contains(&want), "backup of group {group} at {at}:\n{b}");
                }
            } else {
                assert!(said.contains("tune2fs"), "{said}");
            }
            let fsck = Command::new("e2fsck")
                .arg("-fn")
                .arg(&img)
                .output()
                .unwrap();
            assert!(
                fsck.status.success(),
                "{fs:?}: {}",
                String::from_utf8_lossy(&fsck.stdout)
            );
        }
        let mut not_ext = [0u8; 1024];
        assert_eq!(superblock_copies(&not_ext), None);
        not_ext[0x38..0x3a].copy_from_slice(&[0x53, 0xef]);
        assert_eq!(superblock_copies(&not_ext), None, "no blocks per group");
    }

    #[test]
    fn superblock_uuid_needs_magic() {
        let mut sb = [0u8; 1024];
        sb[104..120].copy_from_slice(&[7u8; 16]);
        assert_eq!(parse_ext_uuid(&sb), None);
        sb[56] = 0x53;
        sb[57] = 0xEF;
        assert_eq!(parse_ext_uuid(&sb), Some([7u8; 16]));
        assert_eq!(
            uuid_string([0xab; 16]),
            "abababab-abab-abab-abab-abababababab"
        );
    }
}
