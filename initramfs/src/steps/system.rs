//! From a mounted root to the reboot: the image copy, node files, bootloader.

use super::*;

/// The real machine: each phase is the function of the same name in `storage`
/// or here.
pub struct Hardware;

impl Machine for Hardware {
    fn choose_disk(&mut self, plan: &InstallPlan) -> StepResult<ChosenDisk> {
        storage::choose_disk(plan)
    }
    fn previous_identity(
        &mut self,
        plan: &InstallPlan,
        disk: &ChosenDisk,
    ) -> (Option<Identity>, String) {
        identity::read_previous(&disk.disk.dev, plan)
    }
    fn partition(&mut self, disk: &ChosenDisk) -> StepResult<Partitioned> {
        storage::partition(disk)
    }
    fn format(
        &mut self,
        plan: &InstallPlan,
        disk: &ChosenDisk,
        parts: &Partitioned,
    ) -> StepResult<Formatted> {
        storage::format(plan, disk, parts)
    }
    fn mount_root(&mut self, plan: &InstallPlan, parts: &Partitioned) -> StepResult<MountedRoot> {
        storage::mount_root(plan, parts)
    }
    fn copy(
        &mut self,
        reporter: &mut Reporter,
        plan: &InstallPlan,
        root: &MountedRoot,
    ) -> StepResult<()> {
        copy(reporter, plan, root)
    }
    fn configure(
        &mut self,
        plan: &InstallPlan,
        net: &Network,
        fs: &Formatted,
        root: MountedRoot,
        identity: Option<&Identity>,
    ) -> StepResult<Configured> {
        configure(plan, net, fs, root, identity)
    }
    fn bootloader(
        &mut self,
        plan: &InstallPlan,
        disk: &ChosenDisk,
        parts: &Partitioned,
        fs: &Formatted,
        root: &Configured,
    ) -> StepResult<()> {
        bootloader(plan, disk, parts, fs, root)
    }
    fn unmount(&mut self, root: Configured) -> Vec<String> {
        sys::sync();
        let stuck = root.root.mount.unmount();
        sys::sync();
        stuck
    }
}

fn copy(reporter: &mut Reporter, plan: &InstallPlan, root: &MountedRoot) -> StepResult<()> {
    let mut last_console = Instant::now();
    let started = Instant::now();
    let done = rsync::copy(
        &plan.image.rsync_url,
        Some(&plan.rsync),
        &root.at().to_string_lossy(),
        &plan.excludes,
        5,
        Duration::from_secs(2),
        |p| {
            let total = p.estimated_total();
            let msg = format!(
                "copy: {}% ({} of ~{} MiB)",
                p.percent,
                p.bytes / MIB,
                total / MIB
            );
            if last_console.elapsed() >= Duration::from_secs(10) {
                console::line(&msg);
                last_console = Instant::now();
            }
            reporter.send(
                Step::Copy,
                EventKind::Progress {
                    done_bytes: p.bytes,
                    total_bytes: total,
                },
                &msg,
            );
        },
        |attempt, why| console::line(&format!("copy: attempt {attempt} failed ({why}); resuming")),
    )?;
    // A copy shorter than the progress interval never reported; the record
    // should still say how much arrived.
    reporter.send(
        Step::Copy,
        EventKind::Progress {
            done_bytes: done.bytes,
            total_bytes: done.bytes,
        },
        &format!("copy: 100% ({} MiB)", done.bytes / MIB),
    );
    Ok((
        (),
        format!(
            "{} MiB from {} in {} s",
            done.bytes / MIB,
            plan.image.rsync_url,
            started.elapsed().as_secs()
        ),
    ))
}

fn configure(
    plan: &InstallPlan,
    net: &Network,
    fs: &Formatted,
    root: MountedRoot,
    identity: Option<&Identity>,
) -> StepResult<Configured> {
    let target = root.at();
    // ssh-keygen in the chroot needs /dev (urandom) and /proc; the binds are
    // unmounted (in reverse) when `binds` drops, also on an error or a panic.
    let mut binds = sys::Mounts::default();
    for d in ["dev", "proc", "sys"] {
        binds.push(sys::bind_guarded(&Path::new("/").join(d), &target.join(d))?);
    }
    let facts = configure::NodeFacts {
        plan,
        root_uuid: fs.root_uuid.clone(),
        root_fs: plan.layout.root_fs,
        swap_uuid: fs.swap_uuid.clone(),
        iface: net.iface.clone(),
        nics: crate::net::physical_interfaces(Path::new("/sys/class/net")),
        installer_exe: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/init")),
        identity,
    };
    let result = configure::apply(target, &facts);
    drop(binds);
    let notes = result?;
    for n in &notes {
        console::line(&format!("configure: {n}"));
    }
    let msg = format!(
        "{} configured (fstab, network, machine-id, ssh, phone-home, {} plan files)",
        plan.hostname,
        plan.files.len()
    );
    let host_keys = configure::public_host_keys(target);
    if host_keys.is_empty() {
        console::line("configure: note: no SSH host public keys in the root: the server will not let `rollout exec` reach this node");
    }
    Ok((Configured { root, host_keys }, msg))
}

fn bootloader(
    plan: &InstallPlan,
    chosen: &ChosenDisk,
    parts: &Partitioned,
    fs: &Formatted,
    root: &Configured,
) -> StepResult<()> {
    let (d, l) = (&chosen.disk, &chosen.layout);
    let target = root.at();
    let root_uuid = &fs.root_uuid;
    let title = format!("{} serial {}", plan.image.name, plan.image.serial);
    let msg = match (l.firmware, &parts.esp) {
        (Firmware::Bios, _) => {
            bootloader::install_extlinux(target, &d.dev, &title, root_uuid, &plan.kernel_cmdline)?
        }
        (Firmware::Uefi, None) => {
            return Err(StepError::Other(
                "UEFI boot but the layout has no ESP".into(),
            ))
        }
        (Firmware::Uefi, Some(esp_part)) => {
            let esp = Path::new(paths::ESP_MOUNT);
            let dev = esp_part.path.to_string_lossy().to_string();
            let esp_mount = sys::mount_guarded(
                &dev,
                esp,
                "vfat",
                MsFlags::empty(),
                Some(paths::ESP_MOUNT_OPTIONS),
            )?;
            let r =
                bootloader::install_sdboot(target, esp, &title, root_uuid, &plan.kernel_cmdline);
            sys::sync();
            drop(esp_mount);
            let mut msg = r?;
            msg.push_str(&format!(
                ", {}",
                register_efi_entry(l, esp_part, &plan.hostname)
            ));
            msg
        }
    };
    Ok(((), msg))
}

/// The firmware boots only what BootOrder lists (OVMF ends in its setup UI
/// otherwise), so the ESP gets a Boot#### behind the network entries. Not
/// fatal: firmware that falls back to \EFI\BOOT\BOOTX64.EFI still boots.
fn register_efi_entry(
    l: &PlannedLayout,
    written: &partition::WrittenPart,
    hostname: &str,
) -> String {
    let Some(part) = l.part(PartKind::Esp) else {
        return "no EFI boot entry (no ESP in the layout)".into();
    };
    let guid = written.guid;
    let esp = efivars::EspLocation {
        number: part.number,
        start_lba: part.first_lba,
        size_lba: part.lba_count,
        signature: guid.to_bytes_le(),
    };
    let desc = format!("{}{hostname}", efivars::DESCRIPTION_PREFIX);
    match efivars::register(&desc, &esp) {
        Ok(Some((n, order))) => format!(
            "EFI boot entry {} \"{desc}\" (HD({},GPT,{guid}){}), BootOrder {}",
            efivars::boot_var_name(n),
            part.number,
            efivars::LOADER_PATH,
            order
                .iter()
                .map(|o| format!("{o:04X}"))
                .collect::<Vec<_>>()
                .join(",")
        ),
        Ok(None) => {
            console::line("bootloader: note: not booted through UEFI (no /sys/firmware/efi): no EFI boot entry; the firmware must find \\EFI\\BOOT\\BOOTX64.EFI itself");
            "no EFI boot entry (not booted through UEFI)".into()
        }
        Err(e) => {
            console::line(&format!("bootloader: note: could not add the EFI boot entry: {e}; the firmware must find {} itself", efivars::LOADER_PATH));
            format!("no EFI boot entry ({e})")
        }
    }
}
