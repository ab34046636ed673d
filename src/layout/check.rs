//! What can be refused about a layout without a disk: the config refuses it at
//! load time, the installer again before it writes anything.

use super::{boot_mount, is_at_or_under, required_mib, MIN_XFS_MIB};
use crate::wire::layout::{Content, DiskRule, Fs, Layout, MountKind, Size};
use crate::wire::Firmware;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    #[error("layout {layout:?}: {message}")]
    Invalid { layout: String, message: String },
    #[error("logical sector size {0} is not supported (only 512 and 4096 bytes)")]
    SectorSize(u64),
    #[error("layout {layout:?} takes {want} disk(s), {got} were given")]
    DiskCount {
        layout: String,
        want: usize,
        got: usize,
    },
    #[error("layout {layout:?}: disk {disk} is {disk_mib} MiB ({disk_bytes} bytes) but the layout needs {need_mib} MiB ({detail} + 2 MiB for GPT and alignment); use a bigger disk or shrink the layout")]
    TooSmall {
        layout: String,
        /// 1-based, in the layout's disk order.
        disk: usize,
        disk_mib: u64,
        disk_bytes: u64,
        need_mib: u64,
        detail: String,
    },
    #[error("layout {layout:?}: volume group {vg} has {vg_mib} MiB but its volumes need {need_mib} MiB; make its physical volumes bigger or the volumes smaller")]
    VgTooSmall {
        layout: String,
        vg: String,
        vg_mib: u64,
        need_mib: u64,
    },
}

/// Refuses what no disk can make right. With a firmware, also what that
/// firmware cannot boot (BIOS: extlinux reads `/boot` from a plain or mirrored
/// ext3/ext4 partition, never from LVM or xfs).
pub fn check(layout: &Layout, firmware: Option<Firmware>) -> Result<(), LayoutError> {
    let bad = |message: String| LayoutError::Invalid {
        layout: layout.name.clone(),
        message,
    };
    if layout.name.is_empty() {
        return Err(bad("a layout needs a name".into()));
    }
    match (&layout.raid, layout.disks.len()) {
        (Some(r), _) if r.level != 1 => {
            return Err(bad(format!(
                "raid level {} is not supported (only 1, a mirror over two disks)",
                r.level
            )))
        }
        (Some(_), n) if n != 2 => {
            return Err(bad(format!(
                "raid = {{ level = 1 }} mirrors two disks: give two disk rules, not {n}"
            )))
        }
        (None, n) if n > 1 => {
            return Err(bad(format!(
                "{n} disk rules without raid: a layout without raid = {{ level = 1 }} uses one disk"
            )))
        }
        _ => {}
    }
    let paths: Vec<&str> = layout
        .disks
        .iter()
        .filter_map(|d| match d {
            DiskRule::Path(p) => Some(p.as_str()),
            _ => None,
        })
        .collect();
    if let Some(p) = paths
        .iter()
        .enumerate()
        .find_map(|(i, p)| paths[..i].contains(p).then_some(p))
    {
        return Err(bad(format!("disk {p} is named twice")));
    }
    if layout.partitions.is_empty() {
        return Err(bad(
            "no partitions: a layout needs at least the root filesystem".into(),
        ));
    }
    let rests = layout
        .partitions
        .iter()
        .filter(|p| p.size == Size::Rest)
        .count();
    if rests > 1 {
        return Err(bad(format!(
            "{rests} partitions have size \"rest\": only one can take what is left"
        )));
    }
    // Every mount point, local or not, with what mounts it.
    let mut mounts: Vec<(&str, String)> = Vec::new();
    for (size, c) in layout.contents() {
        if let Content::Filesystem(f) = c {
            check_mount_point(&f.mount).map_err(&bad)?;
            let label_max = if f.fs == Fs::Xfs { 12 } else { 16 };
            if let Some(l) = &f.label {
                if l.len() > label_max || l.is_empty() || l.chars().any(char::is_whitespace) {
                    return Err(bad(format!(
                        "label {l:?} of {}: {} labels are 1 to {label_max} bytes without spaces",
                        f.mount,
                        f.fs.as_str()
                    )));
                }
            }
            check_options(&f.mount, f.options.as_deref()).map_err(&bad)?;
            if let (Fs::Xfs, Size::Mib(m)) = (f.fs, size) {
                if *m < MIN_XFS_MIB {
                    return Err(bad(format!(
                        "{} is {m} MiB of xfs: mkfs.xfs needs at least {MIN_XFS_MIB} MiB",
                        f.mount
                    )));
                }
            }
            mounts.push((&f.mount, format!("a {} filesystem", f.fs.as_str())));
        }
    }
    let local: Vec<&str> = mounts.iter().map(|(m, _)| *m).collect();
    for m in &layout.mounts {
        check_mount_point(&m.mount).map_err(&bad)?;
        check_options(&m.mount, m.options.as_deref()).map_err(&bad)?;
        let what = match &m.kind {
            MountKind::Nfs { source } => {
                if !source.contains(":/") || source.chars().any(char::is_whitespace) {
                    return Err(bad(format!(
                        "nfs source {source:?} of {}: write server:/export/path",
                        m.mount
                    )));
                }
                "an nfs mount"
            }
            MountKind::Tmpfs => "a tmpfs",
        };
        if m.mount == "/" {
            return Err(bad(format!(
                "/ cannot be {what}: the root is a local filesystem (the installer copies the image onto it)"
            )));
        }
        // Nothing local may hide under a network or tmpfs mount.
        if let Some(l) = local
            .iter()
            .find(|l| is_at_or_under(l, &m.mount) && **l != m.mount)
        {
            return Err(bad(format!(
                "{l} would be hidden under {what} on {}",
                m.mount
            )));
        }
        mounts.push((&m.mount, what.to_string()));
    }
    for (i, (m, what)) in mounts.iter().enumerate() {
        if let Some((_, other)) = mounts[..i].iter().find(|(n, _)| n == m) {
            return Err(bad(format!("{m} is mounted twice: {other} and {what}")));
        }
    }
    if !mounts
        .iter()
        .any(|(m, what)| *m == "/" && what.ends_with("filesystem"))
    {
        return Err(bad("no filesystem is mounted on /".into()));
    }
    check_lvm(layout).map_err(&bad)?;
    if firmware == Some(Firmware::Bios) {
        check_bios(layout).map_err(&bad)?;
    }
    // Sizes that overflow are refused here, not added up later.
    layout
        .contents()
        .try_fold(0u64, |acc, (s, _)| match s {
            Size::Mib(m) => acc.checked_add(*m),
            Size::Rest => Some(acc),
        })
        .ok_or_else(|| bad("the sizes add up to more than any disk".into()))?;
    if let Some(min) = layout.disks.iter().find_map(|d| match d {
        DiskRule::MinSize(m) => Some(*m),
        _ => None,
    }) {
        // The smaller of the firmware's needs: a disk rule that cannot hold
        // even that never will.
        let need = required_mib(layout, firmware.unwrap_or(Firmware::Bios));
        if min < need {
            return Err(bad(format!(
                "the disk rule size>={min}MiB allows disks smaller than the {need} MiB the layout needs"
            )));
        }
    }
    Ok(())
}

fn check_mount_point(m: &str) -> Result<(), String> {
    let ok = m.starts_with('/')
        && (m == "/" || !m.ends_with('/'))
        && !m.contains("//")
        && !m.split('/').any(|c| c == "." || c == "..")
        && !m.chars().any(|c| c.is_whitespace() || c.is_control());
    if !ok {
        return Err(format!(
            "mount point {m:?}: write an absolute path without spaces, \"..\" or a trailing /"
        ));
    }
    Ok(())
}

fn check_options(mount: &str, options: Option<&str>) -> Result<(), String> {
    match options {
        Some(o) if o.is_empty() || o.chars().any(char::is_whitespace) => Err(format!(
            "options {o:?} of {mount}: a comma-separated list without spaces"
        )),
        _ => Ok(()),
    }
}

/// LVM's own name rules (letters, digits, `+_.-`, not starting with `-`).
fn check_lvm_name(what: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('-')
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+_.-".contains(c));
    if !ok {
        return Err(format!(
            "{what} name {name:?}: letters, digits and + _ . - only, not starting with -"
        ));
    }
    Ok(())
}

fn check_lvm(layout: &Layout) -> Result<(), String> {
    let pvs = layout
        .partitions
        .iter()
        .filter(|p| p.content == Content::LvmPv)
        .count();
    let Some(lvm) = &layout.lvm else {
        if pvs > 0 {
            return Err("a partition is an lvm physical volume but the layout has no lvm = { vg = …, volumes = […] }".into());
        }
        return Ok(());
    };
    if pvs == 0 {
        return Err(format!(
            "volume group {} has no physical volume: add a partition {{ lvm = true, size = \"rest\" }}",
            lvm.vg
        ));
    }
    check_lvm_name("volume group", &lvm.vg)?;
    if lvm.volumes.is_empty() {
        return Err(format!("volume group {} has no volumes", lvm.vg));
    }
    let rests = lvm.volumes.iter().filter(|v| v.size == Size::Rest).count();
    if rests > 1 {
        return Err(format!(
            "{rests} volumes of {} have size \"rest\": only one can take what is left",
            lvm.vg
        ));
    }
    for (i, v) in lvm.volumes.iter().enumerate() {
        check_lvm_name("volume", &v.name)?;
        if lvm.volumes[..i].iter().any(|w| w.name == v.name) {
            return Err(format!("volume {} of {} is named twice", v.name, lvm.vg));
        }
        if v.content == Content::LvmPv {
            return Err(format!(
                "volume {} of {} cannot be a physical volume itself",
                v.name, lvm.vg
            ));
        }
    }
    Ok(())
}

/// extlinux boots `/boot` from the partition gptmbr.bin chains to: a plain or
/// mirrored (md 1.0: the member starts with the filesystem) ext3/ext4 partition.
fn check_bios(layout: &Layout) -> Result<(), String> {
    let holder = boot_mount(layout);
    let on_partition = layout.partitions.iter().find_map(|p| match &p.content {
        Content::Filesystem(f) if f.mount == holder => Some(f),
        _ => None,
    });
    match on_partition {
        None => Err(format!(
            "{holder} is on LVM, which extlinux (BIOS boot) cannot read: add a partition {{ mount = \"/boot\", size = \"512MiB\", fs = \"ext3\" }}"
        )),
        Some(f) if f.fs == Fs::Xfs => Err(format!(
            "{holder} is xfs, which extlinux (BIOS boot) does not boot: make it ext3 or ext4, or add an ext3 /boot partition"
        )),
        Some(_) => Ok(()),
    }
}
