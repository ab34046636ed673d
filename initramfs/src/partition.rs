//! Writing the GPT (with a protective MBR) for a planned layout, and wiping it.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gpt::disk::LogicalBlockSize;
use gpt::mbr::ProtectiveMBR;
use gpt::partition_types::{self, Type};

use crate::disk::partition_path;
use crate::layout::{PartKind, PlannedLayout, MIB};

#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    #[error("{op} on {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the GPT to {path}: {source}")]
    Gpt {
        path: String,
        #[source]
        source: gpt::GptError,
    },
    #[error("writing the protective MBR to {path}: {source}")]
    Mbr {
        path: String,
        #[source]
        source: gpt::mbr::MBRError,
    },
    #[error(
        "partition {0} did not appear within {1:?} after re-reading the table; is the disk in use?"
    )]
    NoNode(String, Duration),
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> PartitionError {
    let path = path.display().to_string();
    move |source| PartitionError::Io { op, path, source }
}

pub fn gpt_name(kind: PartKind) -> &'static str {
    match kind {
        PartKind::BiosBoot => "BIOS boot partition",
        PartKind::Esp => "EFI system partition",
        PartKind::Root => "root",
        PartKind::Swap => "swap",
    }
}

fn gpt_type(kind: PartKind) -> Type {
    match kind {
        PartKind::BiosBoot => partition_types::BIOS,
        PartKind::Esp => partition_types::EFI,
        PartKind::Root => partition_types::LINUX_FS,
        PartKind::Swap => partition_types::LINUX_SWAP,
    }
}

/// Zeroes the first and last MiB of the disk: both GPT copies and the MBR go, so
/// neither firmware nor the server's sanboot finds a half-installed system.
pub fn wipe(disk: &Path) -> Result<(), PartitionError> {
    let mut f = OpenOptions::new()
        .write(true)
        .open(disk)
        .map_err(io("open for wiping", disk))?;
    let size = f.seek(SeekFrom::End(0)).map_err(io("size", disk))?;
    let zeros = vec![0u8; MIB as usize];
    let head = size.min(MIB);
    f.seek(SeekFrom::Start(0)).map_err(io("seek", disk))?;
    f.write_all(&zeros[..head as usize])
        .map_err(io("wipe head", disk))?;
    let tail_start = size.saturating_sub(MIB);
    f.seek(SeekFrom::Start(tail_start))
        .map_err(io("seek", disk))?;
    f.write_all(&zeros[..(size - tail_start) as usize])
        .map_err(io("wipe tail", disk))?;
    f.sync_all().map_err(io("sync", disk))?;
    reread(&f, disk);
    Ok(())
}

/// Writes a protective MBR and a fresh GPT holding exactly the planned partitions.
/// Returns each partition's device path, in the layout's order.
pub fn write_table(disk: &Path, layout: &PlannedLayout) -> Result<Vec<PathBuf>, PartitionError> {
    wipe(disk)?;
    let lb = match layout.sector_size {
        4096 => LogicalBlockSize::Lb4096,
        _ => LogicalBlockSize::Lb512,
    };
    let gpt_err = |source| PartitionError::Gpt {
        path: disk.display().to_string(),
        source,
    };
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .map_err(io("open", disk))?;
    let mbr = ProtectiveMBR::with_lb_size(
        u32::try_from(layout.total_lba.saturating_sub(1)).unwrap_or(u32::MAX),
    );
    mbr.overwrite_lba0(&mut f)
        .map_err(|source| PartitionError::Mbr {
            path: disk.display().to_string(),
            source,
        })?;
    let mut table = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(lb)
        .change_partition_count(true)
        .create_from_device(f, None)
        .map_err(gpt_err)?;
    for p in &layout.parts {
        table
            .add_partition_at(
                gpt_name(p.kind),
                p.number,
                p.first_lba,
                p.lba_count,
                gpt_type(p.kind),
                p.attributes,
            )
            .map_err(gpt_err)?;
    }
    let f = table.write().map_err(gpt_err)?;
    f.sync_all().map_err(io("sync", disk))?;
    reread(&f, disk);
    let paths: Vec<PathBuf> = layout
        .parts
        .iter()
        .map(|p| partition_path(disk, p.number))
        .collect();
    wait_for_nodes(&paths, Duration::from_secs(10))?;
    Ok(paths)
}

nix::ioctl_none!(blkrrpart, 0x12, 95);

/// Asks the kernel to re-read the partition table. Failure is not fatal here: the
/// node wait that follows reports the real problem if the kernel kept the old one.
fn reread(f: &File, disk: &Path) {
    for _ in 0..5 {
        // SAFETY: BLKRRPART takes no argument and only acts on the block device.
        match unsafe { blkrrpart(f.as_raw_fd()) } {
            Ok(_) => return,
            // EBUSY right after a write is udev-less noise; retry shortly.
            Err(nix::errno::Errno::EBUSY) => std::thread::sleep(Duration::from_millis(300)),
            Err(e) => {
                crate::console::line(&format!(
                    "partition: note: re-reading the table of {} failed: {e}",
                    disk.display()
                ));
                return;
            }
        }
    }
}

fn wait_for_nodes(paths: &[PathBuf], timeout: Duration) -> Result<(), PartitionError> {
    let start = Instant::now();
    for p in paths {
        while !p.exists() {
            if start.elapsed() > timeout {
                return Err(PartitionError::NoNode(p.display().to_string(), timeout));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

/// Writes the first 440 bytes of the MBR (boot code), keeping the disk signature
/// and the protective partition entry.
pub fn write_mbr_bootcode(disk: &Path, code: &[u8]) -> Result<(), PartitionError> {
    let mut buf = [0u8; 440];
    let n = code.len().min(440);
    buf[..n].copy_from_slice(&code[..n]);
    let mut f = OpenOptions::new()
        .write(true)
        .open(disk)
        .map_err(io("open", disk))?;
    f.seek(SeekFrom::Start(0)).map_err(io("seek", disk))?;
    f.write_all(&buf).map_err(io("write MBR boot code", disk))?;
    f.sync_all().map_err(io("sync", disk))
}
