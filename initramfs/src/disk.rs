//! Finding the target disk under /sys/block and naming its partitions.

use std::path::{Path, PathBuf};

use crate::contents::{self, Contents};
use crate::layout::MIB;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskInfo {
    /// Kernel name, e.g. `vda`.
    pub name: String,
    pub dev: PathBuf,
    pub size_bytes: u64,
    pub logical_sector: u64,
    pub removable: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("no disk found under /sys/block (candidates: {0}); check that the storage driver is among the loaded modules")]
    NoDisk(String),
    #[error("no non-removable disk is big enough: the layout needs {need_mib} MiB ({need_bytes} bytes); found {found}")]
    NoneBigEnough {
        need_bytes: u64,
        need_mib: u64,
        found: String,
    },
    #[error("the plan asks for disk {path}, but it does not exist (found: {found})")]
    NotFound { path: String, found: String },
    #[error("disk {path} is {size_mib} MiB ({size_bytes} bytes) but the layout needs {need_mib} MiB ({need_bytes} bytes); nothing was written")]
    TooSmall {
        path: String,
        size_bytes: u64,
        size_mib: u64,
        need_bytes: u64,
        need_mib: u64,
    },
    #[error("disk {path} holds data ({found}) and node {mac} was never declared or approved, so rollout will not repartition it; nothing was written. To install it, declare it ([[node]] in rollout.toml or `rollout node add --mac {mac} ...`) or approve it (`rollout discovered approve {mac}`) and boot it again; to keep the data, set [install] unknown = \"approve\" or \"ignore\"")]
    HoldsData {
        path: String,
        found: Contents,
        mac: String,
    },
    #[error("cannot read {path} to check what it holds ({source}); the node was never declared or approved, so rollout will not repartition a disk it cannot see is blank; nothing was written")]
    Unreadable {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Device kinds that are never install targets.
fn is_virtual(name: &str) -> bool {
    ["loop", "ram", "zram", "dm-", "md", "sr", "fd", "nbd"]
        .iter()
        .any(|p| name.starts_with(p))
}

fn read_trim(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

/// Reads one disk's facts from `{sys_block}/{name}`.
pub fn info(sys_block: &Path, name: &str) -> Option<DiskInfo> {
    let dir = sys_block.join(name);
    // /sys/block/*/size is always in 512-byte units, whatever the sector size.
    let sectors: u64 = read_trim(&dir.join("size"))?.parse().ok()?;
    let logical_sector = read_trim(&dir.join("queue/logical_block_size"))
        .and_then(|s| s.parse().ok())
        .unwrap_or(512);
    let removable = read_trim(&dir.join("removable")).as_deref() == Some("1");
    Some(DiskInfo {
        name: name.to_string(),
        dev: PathBuf::from("/dev").join(name),
        size_bytes: sectors * 512,
        logical_sector,
        removable,
    })
}

/// All real disks, sorted by name (`nvme0n1`, `sda`, `vda`, ...).
pub fn list(sys_block: &Path) -> Vec<DiskInfo> {
    let Ok(rd) = std::fs::read_dir(sys_block) else {
        return Vec::new();
    };
    let mut names: Vec<String> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !is_virtual(n))
        .collect();
    names.sort();
    names
        .iter()
        .filter_map(|n| info(sys_block, n))
        .filter(|d| d.size_bytes > 0)
        .collect()
}

fn summary(disks: &[DiskInfo]) -> String {
    if disks.is_empty() {
        return "none".into();
    }
    disks
        .iter()
        .map(|d| {
            format!(
                "{} {} MiB{}",
                d.dev.display(),
                d.size_bytes / MIB,
                if d.removable { " removable" } else { "" }
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Picks the plan's disk, or the first non-removable disk with at least `need_bytes`.
pub fn choose(
    disks: &[DiskInfo],
    wanted: Option<&str>,
    need_bytes: u64,
) -> Result<DiskInfo, DiskError> {
    if let Some(path) = wanted {
        let name = path.trim_start_matches("/dev/");
        let d = disks
            .iter()
            .find(|d| d.name == name)
            .ok_or_else(|| DiskError::NotFound {
                path: path.to_string(),
                found: summary(disks),
            })?;
        if d.size_bytes < need_bytes {
            return Err(DiskError::TooSmall {
                path: path.to_string(),
                size_bytes: d.size_bytes,
                size_mib: d.size_bytes / MIB,
                need_bytes,
                need_mib: need_bytes / MIB,
            });
        }
        return Ok(d.clone());
    }
    if disks.is_empty() {
        return Err(DiskError::NoDisk(summary(disks)));
    }
    disks
        .iter()
        .find(|d| !d.removable && d.size_bytes >= need_bytes)
        .cloned()
        .ok_or_else(|| DiskError::NoneBigEnough {
            need_bytes,
            need_mib: need_bytes / MIB,
            found: summary(disks),
        })
}

/// Whether the install may repartition a disk found holding `found`. A declared
/// or approved node may (someone who owns the machine asked for it, and a
/// reinstall overwrites the node's previous install by design); a stranger only
/// gets a blank disk.
pub fn may_overwrite(declared: bool, found: Option<&Contents>) -> bool {
    declared || found.is_none()
}

/// Reads what `disk` holds and refuses it when [`may_overwrite`] says no: the
/// check `choose_disk` makes before the first write. Returns what was found, for
/// the console line ("was GPT with 3 partitions").
pub fn guard(disk: &DiskInfo, declared: bool, mac: &str) -> Result<Option<Contents>, DiskError> {
    let path = disk.dev.display().to_string();
    let found = match contents::read(&disk.dev, disk.logical_sector) {
        Ok(found) => found,
        // A declared node's disk is repartitioned anyway; the write says more.
        Err(_) if declared => return Ok(None),
        Err(source) => return Err(DiskError::Unreadable { path, source }),
    };
    if !may_overwrite(declared, found.as_ref()) {
        return Err(DiskError::HoldsData {
            path,
            found: found.expect("refused only with contents"),
            mac: mac.to_string(),
        });
    }
    Ok(found)
}

/// `/dev/vda` + 2 → `/dev/vda2`; `/dev/nvme0n1` + 2 → `/dev/nvme0n1p2` (a `p`
/// separates names that end in a digit, as the kernel does).
pub fn partition_path(disk: &Path, number: u32) -> PathBuf {
    let s = disk.to_string_lossy();
    if s.ends_with(|c: char| c.is_ascii_digit()) {
        PathBuf::from(format!("{s}p{number}"))
    } else {
        PathBuf::from(format!("{s}{number}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(name: &str, mib: u64, removable: bool) -> DiskInfo {
        DiskInfo {
            name: name.into(),
            dev: PathBuf::from(format!("/dev/{name}")),
            size_bytes: mib * MIB,
            logical_sector: 512,
            removable,
        }
    }

    #[test]
    fn picks_first_fixed_disk_big_enough() {
        let disks = [
            disk("sda", 8000, true),
            disk("sdb", 100, false),
            disk("vda", 4000, false),
        ];
        assert_eq!(choose(&disks, None, 3000 * MIB).unwrap().name, "vda");
    }

    #[test]
    fn refuses_with_sizes_in_message() {
        let disks = [disk("vda", 2000, false)];
        let e = choose(&disks, None, 3075 * MIB).unwrap_err().to_string();
        assert!(
            e.contains("3075 MiB") && e.contains("/dev/vda 2000 MiB"),
            "{e}"
        );
        let e = choose(&disks, Some("/dev/vda"), 3075 * MIB)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("2000 MiB (2097152000 bytes)") && e.contains("3075 MiB"),
            "{e}"
        );
        let e = choose(&disks, Some("/dev/sdz"), 1).unwrap_err().to_string();
        assert!(e.contains("/dev/sdz") && e.contains("/dev/vda"), "{e}");
        assert!(matches!(choose(&[], None, 1), Err(DiskError::NoDisk(_))));
    }

    #[test]
    fn plan_may_name_a_removable_disk() {
        let disks = [disk("sda", 8000, true)];
        assert_eq!(choose(&disks, Some("/dev/sda"), MIB).unwrap().name, "sda");
    }

    #[test]
    fn only_declared_nodes_may_overwrite_data() {
        let gpt = Contents::Gpt { partitions: 3 };
        assert!(may_overwrite(true, Some(&gpt)));
        assert!(may_overwrite(true, None));
        assert!(may_overwrite(false, None));
        assert!(!may_overwrite(false, Some(&gpt)));
        assert!(!may_overwrite(false, Some(&Contents::Signature("ext4"))));
    }

    #[test]
    fn a_strangers_disk_with_data_is_refused_saying_what_and_how() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk");
        let mut bytes = vec![0u8; 2 * MIB as usize];
        bytes[1080..1082].copy_from_slice(&0xEF53u16.to_le_bytes());
        bytes[1024 + 96] = 0x40;
        std::fs::write(&img, &bytes).unwrap();
        let d = DiskInfo {
            dev: img.clone(),
            ..disk("vdz", 2, false)
        };
        let e = guard(&d, false, "52:54:00:aa:00:09")
            .unwrap_err()
            .to_string();
        for part in [
            "ext4 filesystem",
            "never declared or approved",
            "nothing was written",
            "rollout discovered approve 52:54:00:aa:00:09",
            "[[node]]",
        ] {
            assert!(e.contains(part), "{part}: {e}");
        }
        assert_eq!(
            guard(&d, true, "m").unwrap(),
            Some(Contents::Signature("ext4"))
        );
        std::fs::write(&img, vec![0u8; 2 * MIB as usize]).unwrap();
        assert_eq!(guard(&d, false, "m").unwrap(), None);
        // A disk it cannot read is no blank disk for a stranger.
        let gone = DiskInfo {
            dev: dir.path().join("missing"),
            ..d
        };
        assert!(matches!(
            guard(&gone, false, "m"),
            Err(DiskError::Unreadable { .. })
        ));
        assert_eq!(guard(&gone, true, "m").unwrap(), None);
    }

    #[test]
    fn partition_names() {
        assert_eq!(
            partition_path(Path::new("/dev/vda"), 2),
            PathBuf::from("/dev/vda2")
        );
        assert_eq!(
            partition_path(Path::new("/dev/nvme0n1"), 1),
            PathBuf::from("/dev/nvme0n1p1")
        );
        assert_eq!(
            partition_path(Path::new("/dev/loop7"), 3),
            PathBuf::from("/dev/loop7p3")
        );
    }

    #[test]
    fn reads_sysfs_and_skips_virtual_devices() {
        let dir = tempfile::tempdir().unwrap();
        for (name, size, rem, lbs) in [
            ("vda", "8388608", "0", "512"),
            ("loop0", "100", "0", "512"),
            ("sdb", "2097152", "1", "4096"),
        ] {
            let d = dir.path().join(name);
            std::fs::create_dir_all(d.join("queue")).unwrap();
            std::fs::write(d.join("size"), format!("{size}\n")).unwrap();
            std::fs::write(d.join("removable"), rem).unwrap();
            std::fs::write(d.join("queue/logical_block_size"), lbs).unwrap();
        }
        let l = list(dir.path());
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].name, "sdb");
        assert_eq!(
            (l[0].logical_sector, l[0].removable, l[0].size_bytes),
            (4096, true, 1 << 30)
        );
        assert_eq!((l[1].name.as_str(), l[1].size_bytes), ("vda", 4 << 30));
    }
}
