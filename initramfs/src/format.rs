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
}

/// mke2fs arguments. ext3 stays classic (journal, no extents) so older kernels and
/// tools can read it; `-F` because the partition is fresh and may hold old data.
pub fn mke2fs_args(fs: RootFs, label: &str, device: &Path) -> Vec<String> {
    let mut args = vec!["-F".into(), "-q".into(), "-t".into(), fs.as_str().into()];
    if fs == RootFs::Ext3 {
        // Explicit so a mke2fs.conf in the initramfs cannot sneak extents in.
        args.extend([
            "-O".into(),
            "has_journal,^extent,^64bit,^metadata_csum".into(),
        ]);
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
