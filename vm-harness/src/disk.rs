//! Looking into a powered-off node's disk from the host, without libguestfs:
//! `qemu-img convert` to a sparse raw file, the GPT read with `sgdisk`, each
//! partition a read-only loop device at its offset (no partition scanning or
//! udev needed, and no `nbd` module, which some hosts lack).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, IoContext, Result};
use crate::proc::run;

const SECTOR: u64 = 512;

/// One GPT entry as `sgdisk -p` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub number: u32,
    pub start: u64,
    pub end: u64,
    /// sgdisk's type code, e.g. `8300`, `8200`, `EF00`, `EF02`.
    pub code: String,
    pub name: String,
}

impl Partition {
    pub fn size_bytes(&self) -> u64 {
        (self.end + 1 - self.start) * SECTOR
    }
}

/// Parses the partition table lines of `sgdisk -p`.
pub fn parse_sgdisk(text: &str) -> Vec<Partition> {
    text.lines()
        .skip_while(|l| !l.trim_start().starts_with("Number"))
        .skip(1)
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let number = w.next()?.parse().ok()?;
            let start = w.next()?.parse().ok()?;
            let end = w.next()?.parse().ok()?;
            // Size is two words ("1024.0 MiB"), then the code, then the name.
            let _ = (w.next()?, w.next()?);
            let code = w.next()?.to_string();
            let name = w.collect::<Vec<_>>().join(" ");
            Some(Partition {
                number,
                start,
                end,
                code,
                name,
            })
        })
        .collect()
}

/// Parses `blkid -o export` output into KEY → value.
pub fn parse_blkid(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A node disk opened for inspection. Dropping it unmounts, detaches the loop
/// devices and deletes the raw copy.
#[derive(Debug)]
pub struct DiskImage {
    raw: PathBuf,
    pub sgdisk: String,
    pub partitions: Vec<Partition>,
    loops: Vec<String>,
    mounts: Vec<PathBuf>,
}

impl DiskImage {
    /// Copies `qcow2` to a raw file next to it and reads its partition table.
    /// The node must be powered off.
    pub fn open(qcow2: &Path) -> Result<DiskImage> {
        let raw = qcow2.with_extension("inspect.raw");
        let _ = fs::remove_file(&raw);
        run(Command::new("qemu-img")
            .args(["convert", "-q", "-f", "qcow2", "-O", "raw", "-S", "4k"])
            .arg(qcow2)
            .arg(&raw))?;
        let mut d = DiskImage {
            raw,
            sgdisk: String::new(),
            partitions: Vec::new(),
            loops: Vec::new(),
            mounts: Vec::new(),
        };
        d.sgdisk = run(Command::new("sgdisk").arg("-p").arg(&d.raw))?;
        d.partitions = parse_sgdisk(&d.sgdisk);
        Ok(d)
    }

    pub fn partition(&self, number: u32) -> Result<&Partition> {
        self.partitions
            .iter()
            .find(|p| p.number == number)
            .ok_or_else(|| Error::Command {
                cmd: format!("sgdisk -p {}", self.raw.display()),
                status: "ok".into(),
                stderr: format!("no partition {number} in:\n{}", self.sgdisk),
            })
    }

    /// A read-only loop device over partition `number`.
    pub fn loop_device(&mut self, number: u32) -> Result<String> {
        let p = self.partition(number)?.clone();
        let dev = run(Command::new("losetup")
            .args(["--find", "--show", "--read-only"])
            .arg(format!("--offset={}", p.start * SECTOR))
            .arg(format!("--sizelimit={}", p.size_bytes()))
            .arg(&self.raw))?
        .trim()
        .to_string();
        self.loops.push(dev.clone());
        Ok(dev)
    }

    /// `blkid -p` of partition `number`: TYPE, UUID, LABEL….
    pub fn blkid(&mut self, number: u32) -> Result<HashMap<String, String>> {
        let dev = self.loop_device(number)?;
        let out = run(Command::new("blkid").args(["-p", "-o", "export", &dev]))?;
        Ok(parse_blkid(&out))
    }

    /// Reads `path` (e.g. `/loader/loader.conf`) from the FAT file system on
    /// partition `number` with mtools: hosts whose kernel has no vfat (some CI
    /// VMs) can still look into an ESP.
    pub fn fat_read(&self, number: u32, path: &str) -> Result<Vec<u8>> {
        let p = self.partition(number)?;
        let img = format!("{}@@{}", self.raw.display(), p.start * SECTOR);
        let out = Command::new("mtype")
            .args(["-i", &img, &format!("::{path}")])
            .output()
            .map_err(|source| Error::Spawn {
                cmd: "mtype (install mtools)".into(),
                source,
            })?;
        if !out.status.success() {
            return Err(Error::Command {
                cmd: format!("mtype -i {img} ::{path}"),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(out.stdout)
    }

    /// Mounts partition `number` read-only (without replaying the journal: the
    /// node was switched off, not shut down) and returns the mount point.
    pub fn mount(&mut self, number: u32) -> Result<PathBuf> {
        let dev = self.loop_device(number)?;
        let mnt = self.raw.with_extension(format!("p{number}.mnt"));
        fs::create_dir_all(&mnt).ctx("creating a mount point", &mnt)?;
        let probe = |usage: &str| -> Result<String> {
            Ok(parse_blkid(&run(
                Command::new("blkid").args(["-p", "-u", usage, "-o", "export", &dev])
            )?)
            .remove("TYPE")
            .unwrap_or_default())
        };
        let mut fstype = probe("filesystem,raid")?;
        // A RAID1 member with md metadata 1.0 (superblock at the end) starts
        // with its filesystem: mount that, read-only, as a lone member.
        if fstype == "linux_raid_member" {
            fstype = probe("filesystem")?;
        }
        let opts = if fstype.starts_with("ext") {
            "ro,noload"
        } else {
            "ro"
        };
        let mut mount = Command::new("mount");
        if !fstype.is_empty() {
            mount.args(["-t", &fstype]);
        }
        run(mount.args(["-o", opts, &dev]).arg(&mnt))?;
        self.mounts.push(mnt.clone());
        Ok(mnt)
    }
}

impl Drop for DiskImage {
    fn drop(&mut self) {
        for m in self.mounts.drain(..).rev() {
            let _ = Command::new("umount").arg(&m).status();
            let _ = fs::remove_dir(&m);
        }
        for l in self.loops.drain(..) {
            let _ = Command::new("losetup").args(["-d", &l]).status();
        }
        let _ = fs::remove_file(&self.raw);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sgdisk_table_parses() {
        let out = "Disk /x.raw: 16777216 sectors, 8.0 GiB\n\
Sector size (logical): 512 bytes\n\
Total free space is 4029 sectors (2.0 MiB)\n\
\n\
Number  Start (sector)    End (sector)  Size       Code  Name\n\
   1            2048            4095   1024.0 KiB  EF02  BIOS boot\n\
   2            4096         2101247   1024.0 MiB  8300  rollout-root\n\
   3         2101248         6295551   2.0 GiB     8200  swap\n";
        let p = parse_sgdisk(out);
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].code, "EF02");
        assert_eq!(p[0].name, "BIOS boot");
        assert_eq!(p[1].size_bytes(), 1 << 30);
        assert_eq!(p[2].size_bytes(), 2 << 30);
        assert_eq!(p[2].code, "8200");
    }

    #[test]
    fn blkid_export_parses() {
        let m = parse_blkid("DEVNAME=/dev/loop0\nUUID=abc-1\nTYPE=ext3\n");
        assert_eq!(m["TYPE"], "ext3");
        assert_eq!(m["UUID"], "abc-1");
    }
}
