//! LVM with lvm2's `lvm` binary (from the storage tools archive, `tools::ensure`):
//! physical volumes, one volume group and its logical volumes, in an initramfs
//! that has no udev. Argument lists are pure functions; the rest runs `lvm`.

use std::path::{Path, PathBuf};

use crate::paths;
use crate::sys::{self, SysError};

/// lvm's settings for a root without udev: libdevmapper must not wait for udev
/// to confirm device nodes (`udev_sync`) and makes `/dev/mapper/*` and
/// `/dev/VG/LV` itself (`udev_rules = 0`); devices are found by scanning
/// `/dev`, not from udev's database. No backup/archive copies of the metadata
/// in the installer's RAM, and no devices file (the installer's /etc has none).
pub const CONFIG: &str = "activation { udev_sync = 0 udev_rules = 0 monitoring = 0 } \
devices { obtain_device_list_from_udev = 0 use_devicesfile = 0 } \
backup { backup = 0 archive = 0 }";

/// `DM_DISABLE_UDEV` tells libdevmapper the same as [`CONFIG`]; lvm otherwise
/// complains of the installer's inherited descriptors on every run.
const ENV: &[(&str, &str)] = &[("DM_DISABLE_UDEV", "1"), ("LVM_SUPPRESS_FD_WARNINGS", "1")];

#[derive(Debug, thiserror::Error)]
pub enum LvmError {
    #[error("{} is not in the installer: the storage tools were not unpacked (tools::ensure runs when the plan's layout asks for LVM); check that the server has /boot/{} next to initramfs.img (rollout initramfs build makes both)", paths::LVM, rollout::wire::initramfs::STORAGE_TOOLS_IMG)]
    NoLvm,
    #[error("volume group {vg} needs at least one physical volume")]
    NoPvs { vg: String },
    #[error("volume group {vg}: only the last logical volume may take the rest of the space, but {lv} does")]
    RestNotLast { vg: String, lv: String },
    #[error("{what}: {source}; {remedy}")]
    Command {
        what: String,
        remedy: &'static str,
        #[source]
        source: Box<SysError>,
    },
    #[error("logical volume {vg}/{lv} was created but {path} did not appear and /sys/block has no dm device named {dm}; is the dm_mod module loaded?")]
    NoNode {
        vg: String,
        lv: String,
        path: String,
        dm: String,
    },
    #[error("making the device node {path}: {source}")]
    Mknod {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// One `lvm` invocation: the subcommand, `--config`, then its arguments.
fn with_config(cmd: &str, rest: &[String]) -> Vec<String> {
    let mut a = vec![cmd.to_string(), "--config".into(), CONFIG.into()];
    a.extend(rest.iter().cloned());
    a
}

/// `pvcreate -y -ff` (answer yes to wiping old signatures, force over a
/// physical volume an earlier install's volume group still names).
pub fn pvcreate_args(pvs: &[PathBuf]) -> Vec<String> {
    let mut rest: Vec<String> = vec!["-y".into(), "-ff".into()];
    rest.extend(pvs.iter().map(|p| p.display().to_string()));
    with_config("pvcreate", &rest)
}

pub fn vgcreate_args(vg: &str, pvs: &[PathBuf]) -> Vec<String> {
    let mut rest: Vec<String> = vec!["-y".into(), vg.to_string()];
    rest.extend(pvs.iter().map(|p| p.display().to_string()));
    with_config("vgcreate", &rest)
}

/// `lvcreate` for one volume: `-L {MiB}m`, or `-l 100%FREE` for the rest;
/// `--wipesignatures y` so a filesystem left at the same offset by an earlier
/// install is not found in the new volume.
pub fn lvcreate_args(vg: &str, lv: &str, mib: Option<u64>) -> Vec<String> {
    let size = match mib {
        Some(m) => vec!["-L".to_string(), format!("{m}m")],
        None => vec!["-l".to_string(), "100%FREE".to_string()],
    };
    let mut rest: Vec<String> = vec![
        "-y".into(),
        "--wipesignatures".into(),
        "y".into(),
        "-n".into(),
        lv.into(),
    ];
    rest.extend(size);
    rest.push(vg.into());
    with_config("lvcreate", &rest)
}

pub fn deactivate_args(vg: &str) -> Vec<String> {
    with_config("vgchange", &["-an".to_string(), vg.to_string()])
}

/// The device-mapper name of `vg/lv`: hyphens inside either part are doubled,
/// one hyphen joins them (`vg-0/root-a` → `vg--0-root--a`).
pub fn dm_name(vg: &str, lv: &str) -> String {
    format!("{}-{}", vg.replace('-', "--"), lv.replace('-', "--"))
}

/// The `N` of `/sys/block/dm-N` whose `dm/name` is `name`, and its `MAJ:MIN`.
pub fn find_dm(sys_block: &Path, name: &str) -> Option<(String, String)> {
    let rd = std::fs::read_dir(sys_block).ok()?;
    rd.filter_map(|e| e.ok()).find_map(|e| {
        let dir = e.path();
        let n = std::fs::read_to_string(dir.join("dm/name")).ok()?;
        if n.trim() != name {
            return None;
        }
        let dev = std::fs::read_to_string(dir.join("dev")).ok()?;
        Some((
            e.file_name().to_string_lossy().into_owned(),
            dev.trim().to_string(),
        ))
    })
}

fn lvm(what: String, remedy: &'static str, args: Vec<String>) -> Result<String, LvmError> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    sys::run_env(paths::LVM, &args, ENV).map_err(|source| LvmError::Command {
        what,
        remedy,
        source: Box::new(source),
    })
}

/// Makes `pvs` physical volumes of a new group `vg` and creates `volumes`
/// (name, MiB or `None` for the rest) in order. Returns each volume's
/// `/dev/VG/LV`, made by hand from /sys when lvm did not make it.
pub fn create(
    vg: &str,
    pvs: &[PathBuf],
    volumes: &[(String, Option<u64>)],
) -> Result<Vec<PathBuf>, LvmError> {
    if pvs.is_empty() {
        return Err(LvmError::NoPvs { vg: vg.into() });
    }
    if let Some((lv, _)) = volumes
        .iter()
        .take(volumes.len().saturating_sub(1))
        .find(|(_, m)| m.is_none())
    {
        return Err(LvmError::RestNotLast {
            vg: vg.into(),
            lv: lv.clone(),
        });
    }
    if !Path::new(paths::LVM).exists() {
        return Err(LvmError::NoLvm);
    }
    // lvm's file locks live here; the installer's /run is an empty tmpfs.
    let _ = std::fs::create_dir_all("/run/lock/lvm");
    let names = pvs
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(" ");
    lvm(
        format!("pvcreate {names}"),
        "check that the device exists and is not in use",
        pvcreate_args(pvs),
    )?;
    lvm(
        format!("vgcreate {vg} {names}"),
        "a volume group of that name may exist on another disk of this node: wipe that disk or pick another vg name",
        vgcreate_args(vg, pvs),
    )?;
    let mut out = Vec::new();
    for (lv, mib) in volumes {
        lvm(
            format!("lvcreate {vg}/{lv}"),
            "the layout's volumes may not fit the group (sizes are checked at config load; LVM keeps 1 MiB per physical volume for metadata)",
            lvcreate_args(vg, lv, *mib),
        )?;
        out.push(ensure_node(vg, lv)?);
    }
    Ok(out)
}

/// `/dev/VG/LV`: lvm makes it with `udev_rules = 0`; if not, `vgmknodes`;
/// if still not, the node from /sys/block/dm-N/dev and the links by hand.
fn ensure_node(vg: &str, lv: &str) -> Result<PathBuf, LvmError> {
    let link = PathBuf::from(format!("/dev/{vg}/{lv}"));
    if link.exists() {
        return Ok(link);
    }
    let _ = lvm(
        format!("vgmknodes {vg}"),
        "",
        with_config("vgmknodes", &[vg.to_string()]),
    );
    if link.exists() {
        return Ok(link);
    }
    let dm = dm_name(vg, lv);
    let Some((_, majmin)) = find_dm(Path::new("/sys/block"), &dm) else {
        return Err(LvmError::NoNode {
            vg: vg.into(),
            lv: lv.into(),
            path: link.display().to_string(),
            dm,
        });
    };
    let mapper = PathBuf::from(format!("/dev/mapper/{dm}"));
    let mknod_err = |p: &Path| {
        let path = p.display().to_string();
        move |source| LvmError::Mknod { path, source }
    };
    if !mapper.exists() {
        let (maj, min) = majmin.split_once(':').unwrap_or(("0", "0"));
        let dev = nix::sys::stat::makedev(maj.parse().unwrap_or(0), min.parse().unwrap_or(0));
        std::fs::create_dir_all("/dev/mapper").map_err(mknod_err(&mapper))?;
        nix::sys::stat::mknod(
            &mapper,
            nix::sys::stat::SFlag::S_IFBLK,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            dev,
        )
        .map_err(|e| mknod_err(&mapper)(std::io::Error::from(e)))?;
    }
    std::fs::create_dir_all(link.parent().unwrap_or(Path::new("/dev")))
        .map_err(mknod_err(&link))?;
    std::os::unix::fs::symlink(format!("../mapper/{dm}"), &link).map_err(mknod_err(&link))?;
    Ok(link)
}

/// Deactivates the group before reboot, so its volumes are closed cleanly.
pub fn deactivate(vg: &str) -> Result<(), LvmError> {
    if !Path::new(paths::LVM).exists() {
        return Err(LvmError::NoLvm);
    }
    lvm(
        format!("vgchange -an {vg}"),
        "a volume is still mounted or used as swap: unmount it first",
        deactivate_args(vg),
    )
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_works_without_udev() {
        for args in [
            pvcreate_args(&[PathBuf::from("/dev/md0")]),
            vgcreate_args("vg0", &[PathBuf::from("/dev/md0")]),
            lvcreate_args("vg0", "root", Some(1024)),
            deactivate_args("vg0"),
        ] {
            assert_eq!(args[1], "--config", "{args:?}");
            assert!(args[2].contains("udev_sync = 0"), "{args:?}");
            assert!(args[2].contains("udev_rules = 0"), "{args:?}");
            assert!(args[2].contains("obtain_device_list_from_udev = 0"));
        }
    }

    #[test]
    fn argument_lists() {
        let pvs = [PathBuf::from("/dev/vda3"), PathBuf::from("/dev/vdb3")];
        assert_eq!(
            &pvcreate_args(&pvs)[3..],
            ["-y", "-ff", "/dev/vda3", "/dev/vdb3"]
        );
        assert_eq!(&vgcreate_args("vg0", &pvs)[..1], ["vgcreate"],);
        assert_eq!(
            &vgcreate_args("vg0", &pvs)[3..],
            ["-y", "vg0", "/dev/vda3", "/dev/vdb3"]
        );
        assert_eq!(
            &lvcreate_args("vg0", "root", Some(1024))[3..],
            [
                "-y",
                "--wipesignatures",
                "y",
                "-n",
                "root",
                "-L",
                "1024m",
                "vg0"
            ]
        );
        assert_eq!(
            &lvcreate_args("vg0", "scratch", None)[3..],
            [
                "-y",
                "--wipesignatures",
                "y",
                "-n",
                "scratch",
                "-l",
                "100%FREE",
                "vg0"
            ]
        );
        assert_eq!(deactivate_args("vg0")[0], "vgchange");
        assert_eq!(&deactivate_args("vg0")[3..], ["-an", "vg0"]);
    }

    #[test]
    fn dm_names_double_hyphens() {
        assert_eq!(dm_name("vg0", "root"), "vg0-root");
        assert_eq!(dm_name("vg-0", "root-a"), "vg--0-root--a");
    }

    #[test]
    fn dm_device_found_by_name_in_sysfs() {
        let d = tempfile::tempdir().unwrap();
        for (dev, name, majmin) in [("dm-0", "vg0-swap", "254:0"), ("dm-1", "vg0-root", "254:1")] {
            std::fs::create_dir_all(d.path().join(dev).join("dm")).unwrap();
            std::fs::write(d.path().join(dev).join("dm/name"), format!("{name}\n")).unwrap();
            std::fs::write(d.path().join(dev).join("dev"), format!("{majmin}\n")).unwrap();
        }
        std::fs::create_dir_all(d.path().join("vda")).unwrap();
        assert_eq!(
            find_dm(d.path(), "vg0-root"),
            Some(("dm-1".to_string(), "254:1".to_string()))
        );
        assert_eq!(find_dm(d.path(), "vg0-home"), None);
    }

    #[test]
    fn plan_errors_come_before_any_command() {
        let e = create("vg0", &[], &[("root".into(), None)]).unwrap_err();
        assert!(
            e.to_string().contains("at least one physical volume"),
            "{e}"
        );
        let e = create(
            "vg0",
            &[PathBuf::from("/dev/vda3")],
            &[("scratch".into(), None), ("root".into(), Some(1024))],
        )
        .unwrap_err();
        assert!(e.to_string().contains("scratch does"), "{e}");
    }
}
