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
        identity::read_previous(&disk.first().dev, plan)
    }
    fn partition(&mut self, plan: &InstallPlan, disk: &ChosenDisk) -> StepResult<Partitioned> {
        storage::partition(plan, disk)
    }
    fn format(
        &mut self,
        plan: &InstallPlan,
        disk: &ChosenDisk,
        parts: &Partitioned,
    ) -> StepResult<Formatted> {
        storage::format(plan, disk, parts)
    }
    fn mount_root(
        &mut self,
        plan: &InstallPlan,
        disk: &ChosenDisk,
        fs: &Formatted,
    ) -> StepResult<MountedRoot> {
        storage::mount_root(plan, disk, fs)
    }
    fn copy(
        &mut self,
        reporter: &mut Reporter,
        plan: &InstallPlan,
        root: &MountedRoot,
    ) -> StepResult<()> {
        copy(reporter, plan, root)
    }
    fn copy_image(
        &mut self,
        reporter: &mut Reporter,
        plan: &InstallPlan,
        root: &ImageRoot,
    ) -> StepResult<bool> {
        copy_image(reporter, plan, root)
    }
    fn configure(
        &mut self,
        plan: &InstallPlan,
        net: &Network,
        disk: &ChosenDisk,
        fs: &Formatted,
        root: MountedRoot,
        identity: Option<&Identity>,
    ) -> StepResult<Configured> {
        configure(plan, net, disk, fs, root, identity)
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
        let MountedRoot {
            children,
            mount,
            teardown,
        } = root.root;
        // The root's unmount takes everything under it; the children's guards
        // then find nothing left to unmount.
        let mut stuck = mount.unmount();
        drop(children);
        sys::sync();
        if stuck.is_empty() {
            stuck.extend(storage::teardown(&teardown));
        }
        stuck
    }
}

fn copy(reporter: &mut Reporter, plan: &InstallPlan, root: &MountedRoot) -> StepResult<()> {
    copy_into(reporter, plan, root.at())
}

/// The copy step onto `dest`: the multicast stream when the plan offers it,
/// then a copy slot from the server, then rsync with the first-install flags,
/// progress reported. Public for the scale bench's simulated installer
/// (`examples/sim_installer.rs`), which copies into a directory instead of a
/// mounted disk.
pub fn copy_into(reporter: &mut Reporter, plan: &InstallPlan, dest: &Path) -> StepResult<()> {
    let prefilled = prefill_by_multicast(reporter, plan, dest);
    let admitted = admit(reporter);
    console::line(&format!("copy: {admitted}"));
    let streamed = match plan.tar_prefill && !prefilled {
        true => prefill_by_http(reporter, plan, dest),
        false => 0,
    };
    let mut last_console = Instant::now();
    let started = Instant::now();
    // The target was formatted a moment ago: nothing to compare against.
    let flags = rollout::rsync_caps::first_install_flags(
        &plan.image.rsync_checksums,
        &rsync::local_checksums(),
    );
    let mut extra: Vec<&str> = flags.iter().map(String::as_str).collect();
    let (sparse_bytes, sparse_flag) = copy_sparse_files(plan, dest, &extra);
    extra.extend(sparse_flag);
    let done = rsync::copy_with(
        &plan.image.rsync_url,
        Some(&plan.rsync),
        &dest.to_string_lossy(),
        &plan.excludes,
        &extra,
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
            report_copy_progress(reporter, &mut last_console, p.bytes, total, &msg);
        },
        |attempt, why| console::line(&format!("copy: attempt {attempt} failed ({why}); resuming")),
    )?
    .progress;
    // A copy shorter than the progress interval never reported; the record
    // should still say how much arrived.
    let copied = done.bytes + streamed + sparse_bytes;
    reporter.send(
        Step::Copy,
        EventKind::Progress {
            done_bytes: copied,
            total_bytes: copied,
        },
        &format!("copy: 100% ({} MiB)", copied / MIB),
    );
    Ok((
        (),
        format!(
            "{} MiB from {} in {} s",
            copied / MIB,
            plan.image.rsync_url,
            started.elapsed().as_secs()
        ),
    ))
}

/// The copy as a block image: within a copy slot, the serial's filesystem,
/// made by the server for this device's size, written onto the root device. Whatever goes wrong with
/// the image, the root is formatted empty instead and `false` returned: the
/// rsync copy then runs, so the image costs at most time, never the install.
fn copy_image(reporter: &mut Reporter, plan: &InstallPlan, root: &ImageRoot) -> StepResult<bool> {
    let admitted = admit(reporter);
    let dev = root.device.display().to_string();
    console::line(&format!("copy: {admitted}"));
    console::line(&format!(
        "copy: writing the serial's block image onto {dev}"
    ));
    let mut last_report = Instant::now();
    let mut last_console = Instant::now();
    let written = crate::block_image::write(plan, root.fs, &root.device, &mut |done, total| {
        if last_report.elapsed() < Duration::from_secs(2) {
            return;
        }
        last_report = Instant::now();
        let msg = format!(
            "copy: {}% ({} of {} MiB)",
            (done * 100).checked_div(total).unwrap_or(100),
            done / MIB,
            total / MIB
        );
        report_copy_progress(reporter, &mut last_console, done, total, &msg);
    })
    .map_err(|e| e.to_string())
    .and_then(|w| {
        let uuid = uuid::Uuid::parse_str(&root.uuid).map_err(|e| e.to_string())?;
        format::set_identity(&root.device, &uuid, &root.label)
            .map(|said| (w, said))
            .map_err(|e| format!("the written image could not get its UUID: {e}"))
    });
    match written {
        Ok((w, said)) => {
            reporter.send(
                Step::Copy,
                EventKind::Progress {
                    done_bytes: w.data_bytes,
                    total_bytes: w.data_bytes,
                },
                &format!("copy: 100% ({} MiB)", w.data_bytes / MIB),
            );
            Ok((
                true,
                format!(
                    "block image of serial {} ({} MiB filesystem): {} MiB written onto {dev} in {:.2} s (the server answered in {:.2} s; metadata zeroed and flushed in {:.2} s), UUID {} ({said})",
                    plan.image.serial,
                    w.image_bytes / MIB,
                    w.data_bytes / MIB,
                    w.took.as_secs_f64(),
                    w.answered.as_secs_f64(),
                    w.finished.as_secs_f64(),
                    root.uuid,
                ),
            ))
        }
        Err(why) => {
            console::line(&format!(
                "warning: copy: block image not used ({why}); formatting {dev} for an rsync copy"
            ));
            format::mke2fs_with_uuid(root.fs, &root.label, &root.device, &root.uuid)?;
            Ok((
                false,
                format!("block image not used ({why}); {dev} formatted, rsync copies next"),
            ))
        }
    }
}

/// A copy's progress to the server, and to the console every 10 s.
fn report_copy_progress(
    reporter: &mut Reporter,
    last_console: &mut Instant,
    done: u64,
    total: u64,
    msg: &str,
) {
    if last_console.elapsed() >= Duration::from_secs(10) {
        console::line(msg);
        *last_console = Instant::now();
    }
    reporter.send(
        Step::Copy,
        EventKind::Progress {
            done_bytes: done,
            total_bytes: total,
        },
        msg,
    );
}

/// The image's sparse files, with `--sparse`, when the plan lists them
/// ([`rollout::wire::ImageRef::sparse_files`]): then the rest of the copy can
/// go without that flag, whose 1 KiB writes cost a dense copy about 40% more
/// CPU. Returns the bytes copied and the flag for the rest of the copy; on any
/// doubt (no list, this pass failed) no flag, so the whole copy keeps holes.
fn copy_sparse_files(
    plan: &InstallPlan,
    dest: &Path,
    flags: &[&str],
) -> (u64, Option<&'static str>) {
    match plan.image.sparse_files.as_deref() {
        None => (0, None),
        Some([]) => (0, Some("--no-sparse")),
        Some(files) => {
            console::line(&format!(
                "copy: {} sparse file(s) first, keeping their holes",
                files.len()
            ));
            match rsync::copy_listed(
                &plan.image.rsync_url,
                Some(&plan.rsync),
                &dest.to_string_lossy(),
                &plan.excludes,
                flags,
                files,
                3,
                |attempt, why| {
                    console::line(&format!(
                        "copy: sparse files: attempt {attempt} failed ({why})"
                    ))
                },
            ) {
                Ok(done) => (done.progress.bytes, Some("--no-sparse")),
                Err(e) => {
                    console::line(&format!(
                        "warning: copy: sparse files not copied first ({e}); the whole copy keeps holes"
                    ));
                    (0, None)
                }
            }
        }
    }
}

/// Waits for the server's copy slot ([`crate::slot`]), showing and reporting
/// the queue place; returns the line that says how the copy was admitted.
pub fn admit(reporter: &mut Reporter) -> String {
    let Some((server, id, token)) = reporter
        .install()
        .map(|(s, i, t)| (s.to_string(), i.to_string(), t.to_string()))
    else {
        return "copying without a slot: no install id".into();
    };
    crate::slot::wait_for_slot(
        &mut || crate::slot::ask(&server, &id, &token),
        &mut |position, queued| {
            let msg = format!("queued, position {position} of {queued}");
            console::line(&format!("copy: {msg}"));
            reporter.send(Step::Copy, EventKind::Queued { position, queued }, &msg);
        },
        &mut std::thread::sleep,
    )
}

/// The multicast part of the copy (`crate::multicast`), when the plan offers
/// it: whatever it comes to, the rsync copy runs next. Whether the new root
/// holds the checked stream.
fn prefill_by_multicast(reporter: &mut Reporter, plan: &InstallPlan, root: &Path) -> bool {
    let done = crate::multicast::prefill(plan, root, &mut |l| console::line(l));
    if done == crate::multicast::Prefill::NotOffered {
        return false;
    }
    let line = match done.is_warning() {
        true => format!("warning: {}", done.line()),
        false => done.line(),
    };
    console::line(&line);
    reporter.send(Step::Copy, EventKind::Started, &line);
    matches!(done, crate::multicast::Prefill::Received { .. })
}

/// The HTTP tar stream part of the copy (`crate::tar_stream`), within the
/// copy slot: whatever it comes to, the rsync copy runs next. The bytes
/// that stayed on the new root.
fn prefill_by_http(reporter: &mut Reporter, plan: &InstallPlan, root: &Path) -> u64 {
    console::line("copy: unpacking the image's tar stream; rsync then copies what it missed");
    let (line, kept) = match crate::tar_stream::prefill(plan, root) {
        Ok((bytes, took)) => (
            format!(
                "copy: tar stream unpacked, {} MiB in {:.1} s",
                bytes / MIB,
                took.as_secs_f64()
            ),
            bytes,
        ),
        Err(why) => (
            format!("warning: copy: tar stream discarded ({why}); rsync copies everything"),
            0,
        ),
    };
    console::line(&line);
    reporter.send(Step::Copy, EventKind::Started, &line);
    kept
}

fn configure(
    plan: &InstallPlan,
    net: &Network,
    disk: &ChosenDisk,
    fs: &Formatted,
    root: MountedRoot,
    identity: Option<&Identity>,
) -> StepResult<Configured> {
    let (fstab, mdadm_conf) = storage::node_files(plan, disk, fs)?;
    let target = root.at();
    // ssh-keygen in the chroot needs /dev (urandom) and /proc; the binds are
    // unmounted (in reverse) when `binds` drops, also on an error or a panic.
    let mut binds = sys::Mounts::default();
    for d in ["dev", "proc", "sys"] {
        binds.push(sys::bind_guarded(&Path::new("/").join(d), &target.join(d))?);
    }
    let facts = configure::NodeFacts {
        plan,
        fstab,
        mdadm_conf,
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
    let p = &chosen.plan;
    let target = root.at();
    let title = format!("{} serial {}", plan.image.name, plan.image.serial);
    let msg = match p.firmware {
        // gptmbr.bin on every disk: each boots the legacy-bootable partition
        // holding /boot, a mirror member on both with RAID1.
        Firmware::Bios => bootloader::install_extlinux(
            target,
            &chosen.devs(),
            &title,
            &fs.root,
            &plan.kernel_cmdline,
        )?,
        Firmware::Uefi => {
            let esps = parts.esps(p);
            if esps.is_empty() {
                return Err(StepError::Other(
                    "UEFI boot but the layout has no ESP".into(),
                ));
            }
            // The same loader, kernel and initrd on every disk's ESP.
            let mut said = Vec::new();
            for (d, _, esp_part) in &esps {
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
                    bootloader::install_sdboot(target, esp, &title, &fs.root, &plan.kernel_cmdline);
                sys::sync();
                drop(esp_mount);
                said.push(format!("{} ({})", r?, chosen.disks[*d].dev.display()));
            }
            let (_, part, written) = esps[0];
            said.push(register_efi_entry(part, written, &plan.hostname));
            said.join(", ")
        }
    };
    Ok(((), msg))
}

/// The firmware boots only what BootOrder lists (OVMF ends in its setup UI
/// otherwise), so the ESP gets a Boot#### behind the network entries. Not
/// fatal: firmware that falls back to \EFI\BOOT\BOOTX64.EFI still boots.
fn register_efi_entry(
    part: &layout::PlannedPart,
    written: &partition::WrittenPart,
    hostname: &str,
) -> String {
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
