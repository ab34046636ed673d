//! From a plan to a mounted root: the disk, its partitions and filesystems.

use super::*;

pub(super) fn choose_disk(plan: &InstallPlan) -> StepResult<ChosenDisk> {
    let fw = firmware_for(plan.bootloader, detect_firmware());
    let need = layout::required_bytes(fw, &plan.layout);
    let sys_block = Path::new("/sys/block");
    // Storage drivers probe asynchronously after loading.
    let deadline = Instant::now() + Duration::from_secs(15);
    let disks = loop {
        let disks = disk::list(sys_block);
        let ready = match &plan.disk.path {
            Some(p) => disks.iter().any(|d| d.dev == Path::new(p)),
            None => disks.iter().any(|d| !d.removable && d.size_bytes >= need),
        };
        if ready || Instant::now() > deadline {
            break disks;
        }
        // Disks behind a controller appear after it probes, and ask for sd_mod.
        super::network::rescan_devices("choose_disk");
        std::thread::sleep(Duration::from_millis(500));
    };
    let d = disk::choose(&disks, plan.disk.path.as_deref(), need)?;
    let l = layout::plan(d.size_bytes, d.logical_sector, fw, &plan.layout)?;
    // Before the first write: a stranger's disk that holds data is refused here.
    let found = disk::guard(&d, plan.disk.declared, &plan.mac)?;
    let was = match found {
        Some(c) => format!(", was {c} (declared node: overwritten)"),
        None => String::new(),
    };
    let msg = format!(
        "{} {} MiB, {}-byte sectors, {} boot{was}",
        d.dev.display(),
        d.size_bytes / MIB,
        d.logical_sector,
        fw.as_str()
    );
    Ok((ChosenDisk { disk: d, layout: l }, msg))
}

pub(super) fn partition(chosen: &ChosenDisk) -> StepResult<Partitioned> {
    let (d, l) = (&chosen.disk, &chosen.layout);
    let written = partition::write_table_parts(&d.dev, l)?;
    let parts = Partitioned::new(l, written)?;
    Ok((parts, format!("{} {}", d.dev.display(), l.describe())))
}

pub(super) fn format(
    plan: &InstallPlan,
    chosen: &ChosenDisk,
    parts: &Partitioned,
) -> StepResult<Formatted> {
    let l = &chosen.layout;
    let root = &parts.root.path;
    format::mke2fs(plan.layout.root_fs, &plan.layout.root_label, root)?;
    let root_uuid = format::uuid_string(format::read_ext_uuid(root)?);
    let mut msg = format!(
        "root {} {} label {} UUID {root_uuid}",
        root.display(),
        plan.layout.root_fs.as_str(),
        plan.layout.root_label
    );
    let mut swap_uuid = None;
    if let (Some(dev), Some(part)) = (&parts.swap, l.part(PartKind::Swap)) {
        let uuid = *uuid::Uuid::new_v4().as_bytes();
        swap::write(
            &dev.path,
            part.lba_count * l.sector_size,
            uuid,
            "rollout-swap",
        )?;
        let s = format::uuid_string(uuid);
        msg.push_str(&format!(", swap {} UUID {s}", dev.path.display()));
        swap_uuid = Some(s);
    }
    if let Some(esp) = &parts.esp {
        format::mkfs_fat("ESP", &esp.path)?;
        msg.push_str(&format!(", esp {} vfat", esp.path.display()));
    }
    let fs = Formatted {
        root_uuid,
        swap_uuid,
    };
    Ok((fs, msg))
}

pub(super) fn mount_root(plan: &InstallPlan, parts: &Partitioned) -> StepResult<MountedRoot> {
    let target = Path::new(paths::TARGET);
    let fs = plan.layout.root_fs.as_str();
    let dev = parts.root.path.to_string_lossy().to_string();
    // The ext4 driver serves ext3 too; some kernels register no "ext3" type.
    let (mount, used) = match sys::mount_guarded(&dev, target, fs, MsFlags::empty(), None) {
        Ok(m) => (m, fs),
        Err(_) => (
            sys::mount_guarded(&dev, target, "ext4", MsFlags::empty(), None)?,
            "ext4",
        ),
    };
    let msg = format!("{dev} on {} ({used})", target.display());
    Ok((MountedRoot { mount }, msg))
}
