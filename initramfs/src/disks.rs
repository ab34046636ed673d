//! Choosing a layout's disks by its rules (`first`, a `/dev/…` path, `size>=…`).
//! The installer has no udev, so `/dev/disk/by-id` and `/dev/disk/by-path`
//! names are matched against what sysfs says of each disk ([`names`]).

use std::path::Path;

use rollout::wire::DiskRule;

use crate::disk::{choose, DiskError, DiskInfo};
use crate::layout::MIB;

/// The `/dev/disk/by-id/…` and `/dev/disk/by-path/…` names udev would give
/// disk `name`, as far as sysfs tells: `virtio-SERIAL` and `nvme-MODEL_SERIAL`
/// by id; `pci-ADDR` and `virtio-pci-ADDR` by path for a disk that is its own
/// PCI function (virtio-blk, NVMe namespace 1).
pub fn names(sys_block: &Path, name: &str) -> Vec<String> {
    let dir = sys_block.join(name);
    let read = |p: &str| {
        std::fs::read_to_string(dir.join(p))
            .ok()
            .map(|s| s.trim().replace(' ', "_"))
            .filter(|s| !s.is_empty())
    };
    let mut out = Vec::new();
    if name.starts_with("vd") {
        if let Some(serial) = read("serial") {
            out.push(format!("/dev/disk/by-id/virtio-{serial}"));
        }
    }
    if name.starts_with("nvme") {
        if let (Some(model), Some(serial)) = (read("device/model"), read("device/serial")) {
            out.push(format!("/dev/disk/by-id/nvme-{model}_{serial}"));
        }
    }
    if let Ok(real) = std::fs::canonicalize(dir.join("device")) {
        out.extend(by_path(&real.to_string_lossy(), name));
    }
    out
}

/// by-path names from a disk's sysfs device path: the last PCI address in it.
pub fn by_path(device_path: &str, name: &str) -> Vec<String> {
    let is_pci = |c: &str| {
        let b = c.as_bytes();
        c.len() == 12 && b[4] == b':' && b[7] == b':' && b[10] == b'.'
    };
    let Some(addr) = device_path.split('/').rfind(|c| is_pci(c)) else {
        return vec![];
    };
    let mut out = vec![format!("/dev/disk/by-path/pci-{addr}")];
    if name.starts_with("vd") {
        out.push(format!("/dev/disk/by-path/virtio-pci-{addr}"));
    } else if name.starts_with("nvme") && name.ends_with("n1") {
        out.push(format!("/dev/disk/by-path/pci-{addr}-nvme-1"));
    }
    out
}

/// Picks one disk per rule, never the same twice. `wanted` (the node's `disk`
/// key) stands for the first rule. `names_of` gives a disk's by-id/by-path names.
pub fn choose_all(
    disks: &[DiskInfo],
    rules: &[DiskRule],
    wanted: Option<&str>,
    need_bytes: u64,
    names_of: impl Fn(&DiskInfo) -> Vec<String>,
) -> Result<Vec<DiskInfo>, DiskError> {
    let mut chosen: Vec<DiskInfo> = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let rule = match (i, wanted) {
            (0, Some(p)) => DiskRule::Path(p.to_string()),
            _ => rule.clone(),
        };
        let free: Vec<DiskInfo> = disks
            .iter()
            .filter(|d| !chosen.iter().any(|c| c.name == d.name))
            .cloned()
            .collect();
        let d = match &rule {
            DiskRule::First => choose(&free, None, need_bytes)?,
            DiskRule::MinSize(mib) => choose(&free, None, need_bytes.max(mib * MIB))?,
            DiskRule::Path(p) => {
                let direct = p.strip_prefix("/dev/").filter(|n| !n.contains('/'));
                let by_name = || {
                    let real = std::fs::canonicalize(p).ok()?;
                    let n = real.file_name()?.to_string_lossy().into_owned();
                    Some(n)
                };
                let name = direct.map(str::to_string).or_else(by_name).or_else(|| {
                    disks
                        .iter()
                        .find(|d| names_of(d).iter().any(|n| n == p))
                        .map(|d| d.name.clone())
                });
                if let Some(taken) = chosen.iter().find(|c| Some(&c.name) == name.as_ref()) {
                    return Err(DiskError::NotFound {
                        path: format!(
                            "{p} (already taken by an earlier rule as {})",
                            taken.dev.display()
                        ),
                        found: String::new(),
                    });
                }
                let dev = name.map_or_else(|| p.clone(), |n| format!("/dev/{n}"));
                choose(disks, Some(&dev), need_bytes).map_err(|e| match e {
                    DiskError::NotFound { found, .. } => DiskError::NotFound {
                        path: p.clone(),
                        found,
                    },
                    other => other,
                })?
            }
        };
        chosen.push(d);
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn disk(name: &str, mib: u64) -> DiskInfo {
        DiskInfo {
            name: name.into(),
            dev: PathBuf::from(format!("/dev/{name}")),
            size_bytes: mib * MIB,
            logical_sector: 512,
            removable: false,
        }
    }

    fn ids(d: &DiskInfo) -> Vec<String> {
        match d.name.as_str() {
            "vdb" => vec![
                "/dev/disk/by-id/virtio-data2".into(),
                "/dev/disk/by-path/pci-0000:00:06.0".into(),
            ],
            _ => vec![],
        }
    }

    #[test]
    fn rules_pick_distinct_disks() {
        let disks = [disk("vda", 4096), disk("vdb", 8192), disk("vdc", 20480)];
        let first_two = choose_all(
            &disks,
            &[DiskRule::First, DiskRule::First],
            None,
            3000 * MIB,
            ids,
        )
        .unwrap();
        let names: Vec<&str> = first_two.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["vda", "vdb"]);
        let sized = choose_all(&disks, &[DiskRule::MinSize(10240)], None, MIB, ids).unwrap();
        assert_eq!(sized[0].name, "vdc");
        for p in [
            "/dev/disk/by-id/virtio-data2",
            "/dev/disk/by-path/pci-0000:00:06.0",
            "/dev/vdb",
        ] {
            let by = choose_all(
                &disks,
                &[DiskRule::Path(p.into()), DiskRule::First],
                None,
                MIB,
                ids,
            )
            .unwrap();
            assert_eq!(
                (by[0].name.as_str(), by[1].name.as_str()),
                ("vdb", "vda"),
                "{p}"
            );
        }
        // The node's own `disk` key replaces the first rule.
        let node = choose_all(&disks, &[DiskRule::First], Some("/dev/vdc"), MIB, ids).unwrap();
        assert_eq!(node[0].name, "vdc");
    }

    #[test]
    fn refusals_say_what_was_found() {
        let disks = [disk("vda", 4096), disk("vdb", 2048)];
        let e = choose_all(
            &disks,
            &[DiskRule::First, DiskRule::First],
            None,
            3000 * MIB,
            ids,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("needs 3000 MiB") && e.contains("/dev/vdb 2048 MiB"),
            "{e}"
        );
        let e = choose_all(
            &disks,
            &[DiskRule::Path("/dev/disk/by-id/virtio-nope".into())],
            None,
            MIB,
            ids,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("/dev/disk/by-id/virtio-nope") && e.contains("/dev/vda 4096 MiB"),
            "{e}"
        );
        let e = choose_all(
            &disks,
            &[
                DiskRule::Path("/dev/vda".into()),
                DiskRule::Path("/dev/vda".into()),
            ],
            None,
            MIB,
            ids,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("already taken"), "{e}");
        let e = choose_all(&disks, &[DiskRule::MinSize(8192)], None, MIB, ids)
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs 8192 MiB"), "{e}");
    }

    #[test]
    fn by_path_names_come_from_the_last_pci_address() {
        assert_eq!(
            by_path(
                "/sys/devices/pci0000:00/0000:00:05.0/virtio2/block/vda",
                "vda"
            ),
            [
                "/dev/disk/by-path/pci-0000:00:05.0",
                "/dev/disk/by-path/virtio-pci-0000:00:05.0"
            ]
        );
        assert!(by_path("/sys/devices/platform/x", "sda").is_empty());
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("vda")).unwrap();
        std::fs::write(dir.path().join("vda/serial"), "disk one\n").unwrap();
        assert_eq!(
            names(dir.path(), "vda"),
            ["/dev/disk/by-id/virtio-disk_one"]
        );
    }
}
