//! From a mounted root to the reboot: the image copy, node files, bootloader.

use super::*;

impl Installer {
    pub(super) fn copy(&mut self) -> Result<((), String), StepError> {
        let plan = self.plan().clone();
        let reporter = &mut self.reporter;
        let mut last_console = Instant::now();
        let started = Instant::now();
        let done = rsync::copy(
            &plan.image.rsync_url,
            paths::TARGET,
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
            |attempt, why| {
                console::line(&format!("copy: attempt {attempt} failed ({why}); resuming"))
            },
        )?;
        // A copy shorter than the progress interval never reported; the record
        // should still say how much arrived.
        self.reporter.send(
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

    pub(super) fn configure(&mut self) -> Result<((), String), StepError> {
        let plan = self.plan().clone();
        let target = Path::new(paths::TARGET);
        // ssh-keygen in the chroot needs /dev (urandom) and /proc.
        for d in ["dev", "proc", "sys"] {
            sys::bind(&Path::new("/").join(d), &target.join(d))?;
        }
        let facts = configure::NodeFacts {
            plan: &plan,
            root_uuid: self.root_uuid.clone().expect("formatted"),
            root_fs: plan.layout.root_fs,
            swap_uuid: self.swap_uuid.clone(),
            iface: self.iface.clone().unwrap_or_else(|| "eth0".into()),
            installer_exe: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/init")),
        };
        let result = configure::apply(target, &facts);
        for d in ["dev", "proc", "sys"] {
            sys::umount_tree(&target.join(d));
        }
        let notes = result?;
        for n in &notes {
            console::line(&format!("configure: {n}"));
        }
        Ok((
            (),
            format!(
                "{} configured (fstab, network, machine-id, ssh, phone-home, {} plan files)",
                plan.hostname,
                plan.files.len()
            ),
        ))
    }

    pub(super) fn bootloader(&mut self) -> Result<((), String), StepError> {
        let plan = self.plan().clone();
        let d = self.disk.clone().expect("disk chosen");
        let l = self.layout.clone().expect("layout planned");
        let target = Path::new(paths::TARGET);
        let root_uuid = self.root_uuid.clone().expect("formatted");
        let title = format!("{} serial {}", plan.image.name, plan.image.serial);
        let msg = match l.firmware {
            Firmware::Bios => bootloader::install_extlinux(
                target,
                &d.dev,
                &title,
                &root_uuid,
                &plan.kernel_cmdline,
            )?,
            Firmware::Uefi => {
                let esp = Path::new(paths::ESP_MOUNT);
                let dev = self.parts[&PartKind::Esp].to_string_lossy().to_string();
                sys::mount(
                    &dev,
                    esp,
                    "vfat",
                    MsFlags::empty(),
                    Some(paths::ESP_MOUNT_OPTIONS),
                )?;
                let r = bootloader::install_sdboot(
                    target,
                    esp,
                    &title,
                    &root_uuid,
                    &plan.kernel_cmdline,
                );
                sys::sync();
                sys::umount_tree(esp);
                let mut msg = r?;
                msg.push_str(&format!(
                    ", {}",
                    self.register_efi_entry(&l, &plan.hostname)
                ));
                msg
            }
        };
        Ok(((), msg))
    }

    /// The firmware boots only what BootOrder lists (OVMF ends in its setup UI
    /// otherwise), so the ESP gets a Boot#### behind the network entries. Not
    /// fatal: firmware that falls back to \EFI\BOOT\BOOTX64.EFI still boots.
    fn register_efi_entry(&self, l: &PlannedLayout, hostname: &str) -> String {
        let (Some(part), Some(guid)) = (l.part(PartKind::Esp), self.part_guids.get(&PartKind::Esp))
        else {
            return "no EFI boot entry (no ESP in the layout)".into();
        };
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

    pub(super) fn finish(&mut self) -> Result<((), String), StepError> {
        let plan = self.plan().clone();
        sys::sync();
        let stuck = sys::umount_tree(Path::new(paths::TARGET));
        sys::sync();
        if !stuck.is_empty() {
            console::line(&format!(
                "finish: note: could not unmount {}",
                stuck.join(", ")
            ));
        }
        // The disk is complete now: a reporting failure below must not wipe it.
        self.wipe_on_failure = None;
        let msg = format!(
            "installed {} serial {} on {}; rebooting",
            plan.image.name, plan.image.serial, plan.hostname
        );
        let ev = self.reporter.event(
            Step::Finish,
            EventKind::Installed {
                serial: plan.image.serial,
            },
            &msg,
        );
        for attempt in 1..=3 {
            match self.reporter.post(&ev) {
                Ok(()) => break,
                Err(e) if attempt == 3 => console::line(&format!(
                    "finish: note: server did not take the Installed report: {e}"
                )),
                Err(_) => std::thread::sleep(Duration::from_secs(2)),
            }
        }
        Ok(((), msg))
    }
}
