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

/// mke2fs arguments. ext3 stays classic (journal, no extents) so older kernels and
/// tools can read it; `-F` because the partition is fresh and may hold old data.
pub fn mke2fs_args(fs: RootFs, label: &str, device: &Path) -> Vec<String> {
    let mut args = vec!["-F".into(), "-q".into(), "-t".into(), fs.as_str().into()];
    // ext3 explicit (the same as the server's block image), so a mke2fs.conf
    // in the initramfs cannot sneak extents in.
    if let Some(features) = rollout::wire::block_image::ext_features(fs) {
        args.extend(["-O".into(), features.into()]);
    }
    // ext labels hold at most 16 bytes.
    let label: String = label.chars().take(16).collect();
    args.extend(["-L".into(), label, device.display().to_string()]);
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

/// A block image written onto `device` made into this node's root: grown to
/// the whole device, given a journal sized for it, the node's UUID and label.
/// Returns how long each tool took (resize2fs, tune2fs), for the console.
pub fn finish_image_root(
    device: &Path,
    uuid: &str,
    label: &str,
) -> Result<(std::time::Duration, std::time::Duration), FormatError> {
    let dev = device.display().to_string();
    let started = std::time::Instant::now();
    // -f: the image was checked when it was made and has never been mounted.
    run(
        "resize2fs",
        paths::RESIZE2FS,
        &["-f".into(), dev.clone()],
        device,
    )?;
    let grown = started.elapsed();
    let label: String = label.chars().take(16).collect();
    run(
        "tune2fs",
        paths::TUNE2FS,
        &[
            "-j".into(),
            "-U".into(),
            uuid.into(),
            "-L".into(),
            label,
            dev,
        ],
        device,
    )?;
    Ok((grown, started.elapsed() - grown))
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
    if superblock.len() < 120 || superblock[56..58] != [0x53, 0xEF] {
        return None;
    }
    superblock[104..120].try_into().ok()
}

pub fn read_ext_uuid(device: &Path) -> Result<[u8; 16], FormatError> {
    let err = |source| FormatError::Io {
        device: device.display().to_string(),
        source,
    };
    let mut f = std::fs::File::open(device).map_err(err)?;
    f.seek(SeekFrom::Start(1024)).map_err(err)?;
    let mut sb = [0u8; 1024];
    f.read_exact(&mut sb).map_err(err)?;
    parse_ext_uuid(&sb).ok_or_else(|| FormatError::NotExt(device.display().to_string()))
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
