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
use crate::layout::{DiskPlan, PartType, MIB};

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

fn gpt_type(t: PartType) -> Type {
    match t {
        PartType::BiosBoot => partition_types::BIOS,
        PartType::Esp => partition_types::EFI,
        PartType::LinuxFs => partition_types::LINUX_FS,
        PartType::Swap => partition_types::LINUX_SWAP,
        PartType::Raid => partition_types::LINUX_RAID,
        PartType::Lvm => partition_types::LINUX_LVM,
    }
}

/// Zeroes the first and last MiB of the disk: both GPT copies and the MBR go, so
/// no firmware finds a half-installed system to boot.
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
    sync_kernel_view(&f, disk, &[]);
    Ok(())
}

/// A partition as written: its device node and its GPT unique partition GUID
/// (what a UEFI HardDrive device path names it by).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenPart {
    pub path: PathBuf,
    pub guid: uuid::Uuid,
}

/// Writes a protective MBR and a fresh GPT holding exactly the planned partitions.
/// Returns each partition's device path, in the layout's order.
pub fn write_table(disk: &Path, layout: &DiskPlan) -> Result<Vec<PathBuf>, PartitionError> {
    Ok(write_table_parts(disk, layout)?
        .into_iter()
        .map(|p| p.path)
        .collect())
}

/// `write_table`, also returning each partition's unique GUID.
pub fn write_table_parts(
    disk: &Path,
    layout: &DiskPlan,
) -> Result<Vec<WrittenPart>, PartitionError> {
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
                &p.name,
                p.number,
                p.first_lba,
                p.lba_count,
                gpt_type(p.part_type),
                p.attributes,
            )
            .map_err(gpt_err)?;
    }
    // The gpt crate makes up each unique GUID; keep them for the UEFI boot entry.
    let guids: Vec<uuid::Uuid> = layout
        .parts
        .iter()
        .map(|p| {
            table
                .partitions()
                .get(&p.number)
                .map(|q| q.part_guid)
                .unwrap_or_default()
        })
        .collect();
    let f = table.write().map_err(gpt_err)?;
    f.sync_all().map_err(io("sync", disk))?;
    let want: Vec<(u32, u64, u64)> = layout
        .parts
        .iter()
        .map(|p| {
            (
                p.number,
                p.first_lba * layout.sector_size,
                p.lba_count * layout.sector_size,
            )
        })
        .collect();
    sync_kernel_view(&f, disk, &want);
    let paths: Vec<PathBuf> = layout
        .parts
        .iter()
        .map(|p| partition_path(disk, p.number))
        .collect();
    wait_for_nodes(&paths, Duration::from_secs(10))?;
    Ok(paths
        .into_iter()
        .zip(guids)
        .map(|(path, guid)| WrittenPart { path, guid })
        .collect())
}

nix::ioctl_none!(blkrrpart, 0x12, 95);

#[repr(C)]
struct BlkpgPartition {
    start: libc::c_longlong,
    length: libc::c_longlong,
    pno: libc::c_int,
    devname: [u8; 64],
    volname: [u8; 64],
}

#[repr(C)]
struct BlkpgIoctlArg {
    op: libc::c_int,
    flags: libc::c_int,
    datalen: libc::c_int,
    data: *mut BlkpgPartition,
}

const BLKPG_ADD_PARTITION: libc::c_int = 1;
const BLKPG_DEL_PARTITION: libc::c_int = 2;

fn blkpg(f: &File, op: libc::c_int, pno: u32, start: u64, length: u64) -> std::io::Result<()> {
    let mut part = BlkpgPartition {
        start: start as libc::c_longlong,
        length: length as libc::c_longlong,
        pno: pno as libc::c_int,
        devname: [0; 64],
        volname: [0; 64],
    };
    let mut arg = BlkpgIoctlArg {
        op,
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as libc::c_int,
        data: &mut part,
    };
    let req = nix::request_code_none!(0x12, 105);
    // SAFETY: BLKPG reads a blkpg_ioctl_arg pointing at a blkpg_partition, both
    // alive for the duration of the call.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), req as _, &mut arg as *mut BlkpgIoctlArg) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// (number, start byte, length bytes) of the partitions the kernel currently has.
fn kernel_partitions(disk: &Path) -> Vec<(u32, u64, u64)> {
    let name = disk
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let dir = Path::new("/sys/class/block").join(&name);
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let num = |p: PathBuf| -> Option<u64> { std::fs::read_to_string(p).ok()?.trim().parse().ok() };
    rd.filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&name))
        .filter_map(|e| {
            let p = e.path();
            Some((
                num(p.join("partition"))? as u32,
                num(p.join("start"))? * 512,
                num(p.join("size"))? * 512,
            ))
        })
        .collect()
}

/// Makes the kernel's partition list match `want` (number, start, length in
/// bytes). BLKRRPART first; then, like `partx -u`, BLKPG for whatever the kernel
/// did not pick up (kernels without a GPT parser, or a table still in use).
fn sync_kernel_view(f: &File, disk: &Path, want: &[(u32, u64, u64)]) {
    reread(f, disk);
    let have = kernel_partitions(disk);
    for &(pno, start, len) in &have {
        if !want.contains(&(pno, start, len)) {
            if let Err(e) = blkpg(f, BLKPG_DEL_PARTITION, pno, 0, 0) {
                crate::console::line(&format!(
                    "partition: note: removing stale partition {pno} of {}: {e}",
                    disk.display()
                ));
            }
        }
    }
    let have = kernel_partitions(disk);
    for &(pno, start, len) in want {
        if !have.contains(&(pno, start, len)) {
            if let Err(e) = blkpg(f, BLKPG_ADD_PARTITION, pno, start, len) {
                crate::console::line(&format!(
                    "partition: note: adding partition {pno} of {} to the kernel: {e}",
                    disk.display()
                ));
            }
        }
    }
}

/// Asks the kernel to re-read the partition table. Failure is not fatal here:
/// `sync_kernel_view` and the node wait that follow catch what it missed.
fn reread(f: &File, disk: &Path) {
    for _ in 0..5 {
        // SAFETY: BLKRRPART takes no argument and only acts on the block device.
        match unsafe { blkrrpart(f.as_raw_fd()) } {
            Ok(_) => return,
            // EBUSY right after a write is transient; retry shortly.
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
