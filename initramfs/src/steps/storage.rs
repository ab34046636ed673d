//! From a plan to mounted filesystems: the disks, their GPTs, md arrays and
//! logical volumes, the filesystems and swap areas, and the mounts under the target.

use super::*;
use rollout::wire::{Content, Fs};

pub(super) fn choose_disk(plan: &InstallPlan) -> StepResult<ChosenDisk> {
    let fw = firmware_for(plan.bootloader, detect_firmware());
    // What the layout refuses on this firmware, before looking at any disk.
    layout::check(&plan.layout, Some(fw))?;
    let need = layout::required_mib(&plan.layout, fw) * MIB;
    let rules = layout::disk_rules(&plan.layout);
    let sys_block = Path::new("/sys/block");
    let names_of = |d: &disk::DiskInfo| disks::names(sys_block, &d.name);
    // Storage drivers probe asynchronously after loading.
    let deadline = Instant::now() + Duration::from_secs(15);
    let chosen = loop {
        let found = disk::list(sys_block);
        let r = disks::choose_all(&found, &rules, plan.disk.path.as_deref(), need, names_of);
        if r.is_ok() || Instant::now() > deadline {
            break r?;
        }
        // Disks behind a controller appear after it probes, and ask for sd_mod.
        super::network::rescan_devices("choose_disk");
        std::thread::sleep(Duration::from_millis(500));
    };
    let geometry: Vec<layout::DiskGeometry> = chosen
        .iter()
        .map(|d| layout::DiskGeometry {
            bytes: d.size_bytes,
            sector: d.logical_sector,
        })
        .collect();
    // The real disks against the layout, before the first write.
    let planned = layout::plan(&plan.layout, fw, &geometry)?;
    // A stranger's disk that holds data is refused here.
    let mut was = String::new();
    for d in &chosen {
        if let Some(c) = disk::guard(d, plan.disk.declared, &plan.mac)? {
            was.push_str(&format!(
                ", {} was {c} (declared node: overwritten)",
                d.dev.display()
            ));
        }
    }
    // mdadm, lvm and mkfs.xfs come from the server only when the layout needs them.
    if plan.layout.needs_storage_tools() {
        let filesystems: Vec<&str> = plan
            .layout
            .contents()
            .filter_map(|(_, c)| match c {
                Content::Filesystem(f) => Some(f.fs.as_str()),
                _ => None,
            })
            .collect();
        let needs = tools::needs(
            filesystems,
            plan.layout.raid.is_some(),
            plan.layout.lvm.is_some(),
        );
        console::line(&format!(
            "{}: {}",
            Step::ChooseDisk,
            tools::ensure(needs, &plan.server_url)?
        ));
    }
    let names: Vec<String> = chosen
        .iter()
        .map(|d| format!("{} ({}-byte sectors)", d.dev.display(), d.logical_sector))
        .collect();
    let msg = format!(
        "layout {}: {}, {} boot{was}",
        plan.layout.name,
        names.join(" + "),
        fw.as_str()
    );
    Ok((
        ChosenDisk {
            disks: chosen,
            plan: planned,
        },
        msg,
    ))
}

pub(super) fn partition(plan: &InstallPlan, chosen: &ChosenDisk) -> StepResult<Partitioned> {
    let p = &chosen.plan;
    let mut written = Vec::new();
    for (d, dp) in chosen.disks.iter().zip(&p.disks) {
        if !p.arrays.is_empty() || p.lvm.is_some() {
            // Old md superblocks and LVM labels at the new partitions' places
            // would be assembled over the new layout.
            raid::wipe_stale(Path::new("/sys/class/block"), &d.dev)?;
        }
        written.push(partition::write_table_parts(&d.dev, dp)?);
    }
    let devs: Vec<String> = chosen
        .disks
        .iter()
        .map(|d| d.dev.display().to_string())
        .collect();
    let mut lines = p.describe(&plan.layout, &devs);
    let mut parts = Partitioned {
        disks: written,
        arrays: vec![],
        volumes: vec![],
    };
    for a in &p.arrays {
        let members = a
            .members
            .iter()
            .map(|&(d, n)| {
                parts
                    .part(p, d, n)
                    .map(|w| w.path.clone())
                    .ok_or_else(|| StepError::Other(format!("no partition {n} on disk {d}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        parts.arrays.push(raid::create_mirror(&a.name, &members)?);
    }
    if let (Some(lvm), Some(want)) = (&p.lvm, &plan.layout.lvm) {
        let pvs = lvm
            .pvs
            .iter()
            .map(|&s| parts.device(p, s))
            .collect::<Result<Vec<_>, _>>()?;
        // Whole extents as planned, so what the plan said fits is what is made.
        let volumes: Vec<(String, Option<u64>)> = lvm
            .volumes
            .iter()
            .zip(&want.volumes)
            .map(|(v, w)| {
                (
                    v.name.clone(),
                    (w.size != rollout::wire::Size::Rest).then(|| v.mib()),
                )
            })
            .collect();
        parts.volumes = lvm::create(&lvm.vg, &pvs, &volumes)?;
    }
    for l in &lines[1..] {
        console::line(&format!("{}: {l}", Step::Partition));
    }
    let first = lines.remove(0);
    Ok((parts, first))
}

pub(super) fn format(
    plan: &InstallPlan,
    chosen: &ChosenDisk,
    parts: &Partitioned,
) -> StepResult<Formatted> {
    let p = &chosen.plan;
    let image_fs = match plan.block_image {
        true => plan.layout.block_image_fs(),
        false => None,
    };
    let mut image_root = None;
    let mut made = Vec::new();
    let mut said = Vec::new();
    for t in &p.targets {
        let dev = parts.device(p, t.source)?;
        let uuid = match &t.content {
            Content::Filesystem(f) => {
                let label = f.label.clone().unwrap_or_else(|| default_label(&f.mount));
                match f.fs {
                    fs if f.mount == "/" && image_fs == Some(fs) => {
                        let uuid = uuid::Uuid::new_v4().to_string();
                        said.push(format!(
                            "/ {} left for the block image ({}, UUID {uuid})",
                            dev.display(),
                            fs.as_str()
                        ));
                        image_root = Some(ImageRoot {
                            device: dev.clone(),
                            fs,
                            label,
                            uuid: uuid.clone(),
                        });
                        made.push(Made { device: dev, uuid });
                        continue;
                    }
                    Fs::Xfs => {
                        format::mkfs_xfs(&label, &dev)?;
                        format::uuid_string(format::read_xfs_uuid(&dev)?)
                    }
                    fs => {
                        format::mke2fs(fs, &label, &dev)?;
                        format::uuid_string(format::read_ext_uuid(&dev)?)
                    }
                }
            }
            Content::Swap => {
                let uuid = *uuid::Uuid::new_v4().as_bytes();
                swap::write(&dev, t.mib * MIB, uuid, "rollout-swap")?;
                format::uuid_string(uuid)
            }
            Content::LvmPv => continue,
        };
        said.push(format!(
            "{} {} UUID {uuid}",
            t.content.describe(),
            dev.display()
        ));
        made.push(Made { device: dev, uuid });
    }
    for (_, _, esp) in parts.esps(p) {
        format::mkfs_fat("ESP", &esp.path)?;
        said.push(format!("esp {} vfat", esp.path.display()));
    }
    let root = root_spec(p, &made)?;
    Ok((
        Formatted {
            made,
            root,
            image_root,
        },
        said.join(", "),
    ))
}

/// `rollout-root` for `/` as before layouts; the mount point's last part
/// otherwise (`scratch`), at most 12 bytes so xfs takes it too.
fn default_label(mount: &str) -> String {
    if mount == "/" {
        return rollout::wire::layout::ROOT_LABEL.into();
    }
    let last = mount.rsplit('/').next().unwrap_or("data");
    last.chars().take(12).collect()
}

/// The kernel's `root=`: a logical volume by its device-mapper path (an
/// initramfs activates the group by name), anything else by filesystem UUID.
pub(super) fn root_spec(p: &layout::Plan, made: &[Made]) -> Result<String, StepError> {
    let i = p
        .targets
        .iter()
        .position(|t| t.content.mount() == Some("/"))
        .ok_or_else(|| StepError::Other("the layout has no root filesystem".into()))?;
    Ok(match p.targets[i].source {
        layout::Source::Volume(v) => {
            let lvm = p.lvm.as_ref().expect("a volume has a group");
            layout::mapper_path(&lvm.vg, &lvm.volumes[v].name)
        }
        _ => format!("UUID={}", made[i].uuid),
    })
}

pub(super) fn mount_root(
    _plan: &InstallPlan,
    chosen: &ChosenDisk,
    fs: &Formatted,
) -> StepResult<MountedRoot> {
    let target = Path::new(paths::TARGET);
    let p = &chosen.plan;
    let mut root = None;
    let mut children = sys::Mounts::default();
    let mut said = Vec::new();
    // Targets are in mount order: `/` first, parents before children.
    for (t, m) in p.targets.iter().zip(&fs.made) {
        let Some(f) = t.filesystem() else { continue };
        let at = target.join(f.mount.trim_start_matches('/'));
        std::fs::create_dir_all(&at)
            .map_err(|e| StepError::Other(format!("create {}: {e}", at.display())))?;
        let dev = m.device.to_string_lossy().to_string();
        let (guard, used) = mount_fs(&dev, &at, f.fs)?;
        said.push(format!("{dev} on {} ({used})", at.display()));
        if f.mount == "/" {
            root = Some(guard);
        } else {
            children.push(guard);
        }
    }
    let mount = root.ok_or_else(|| StepError::Other("the layout has no root filesystem".into()))?;
    let teardown = Teardown {
        vg: p.lvm.as_ref().map(|l| l.vg.clone()),
        arrays: p
            .arrays
            .iter()
            .map(|a| PathBuf::from(format!("/dev/md/{}", a.name)))
            .collect(),
    };
    Ok((
        MountedRoot {
            children,
            mount,
            teardown,
        },
        said.join(", "),
    ))
}

/// Mounts one filesystem; ext3 falls back to the ext4 driver, which serves it
/// on kernels that register no "ext3" type.
fn mount_fs(dev: &str, at: &Path, fs: Fs) -> Result<(sys::Mounted, &'static str), StepError> {
    match sys::mount_guarded(dev, at, fs.as_str(), MsFlags::empty(), None) {
        Ok(m) => Ok((m, fs.as_str())),
        Err(_) if fs == Fs::Ext3 => Ok((
            sys::mount_guarded(dev, at, "ext4", MsFlags::empty(), None)?,
            "ext4",
        )),
        Err(e) => Err(e.into()),
    }
}

/// Closes the volume group and stops the arrays once nothing is mounted, so
/// both mirror halves are marked clean before the reboot.
pub(super) fn teardown(t: &Teardown) -> Vec<String> {
    let mut notes = Vec::new();
    if let Some(vg) = &t.vg {
        if let Err(e) = lvm::deactivate(vg) {
            notes.push(format!("vgchange -an {vg}: {e}"));
        }
    }
    for md in &t.arrays {
        if let Err(e) = raid::stop(md) {
            notes.push(format!("mdadm --stop {}: {e}", md.display()));
        }
    }
    notes
}

/// The installed fstab and mdadm.conf for what was made.
pub(super) fn node_files(
    plan: &InstallPlan,
    chosen: &ChosenDisk,
    fs: &Formatted,
) -> Result<(Vec<render::FstabEntry>, Option<String>), StepError> {
    let made: Vec<(&Content, &str)> = chosen
        .plan
        .targets
        .iter()
        .zip(&fs.made)
        .map(|(t, m)| (&t.content, m.uuid.as_str()))
        .collect();
    let fstab = render::fstab_entries(&made, &plan.layout.mounts);
    if chosen.plan.arrays.is_empty() {
        return Ok((fstab, None));
    }
    let arrays = chosen
        .plan
        .arrays
        .iter()
        .map(|a| {
            let device = PathBuf::from(format!("/dev/md/{}", a.name));
            Ok(raid::MdArray {
                uuid: raid::array_uuid(&device)?,
                device,
            })
        })
        .collect::<Result<Vec<_>, raid::RaidError>>()?;
    Ok((fstab, Some(raid::mdadm_conf(&arrays))))
}
