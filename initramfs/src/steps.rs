//! The install sequence: one method per `wire::Step`, each printing one console
//! line and reporting Started/Done, plus the failure policy.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::MsFlags;
use rollout::wire::{self, Bootloader, EventKind, FailurePolicy, InstallPlan, Step};

use crate::cmdline::{self, KernelArgs};
use crate::layout::{self, Firmware, PartKind, PlannedLayout, MIB};
use crate::report::Reporter;
use crate::{
    bootloader, configure, console, dhcp, disk, efivars, format, http, modules, net, partition,
    paths, rsync, swap, sys,
};

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Cmdline(#[from] cmdline::CmdlineError),
    #[error(transparent)]
    Sys(#[from] sys::SysError),
    #[error(transparent)]
    Modules(#[from] modules::ModuleError),
    #[error(transparent)]
    Net(#[from] net::NetError),
    #[error(transparent)]
    Dhcp(#[from] dhcp::DhcpError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Disk(#[from] disk::DiskError),
    #[error(transparent)]
    Layout(#[from] layout::LayoutError),
    #[error(transparent)]
    Partition(#[from] partition::PartitionError),
    #[error(transparent)]
    Format(#[from] format::FormatError),
    #[error(transparent)]
    Swap(#[from] swap::SwapError),
    #[error(transparent)]
    Rsync(#[from] rsync::RsyncError),
    #[error(transparent)]
    Configure(#[from] configure::ConfigureError),
    #[error(transparent)]
    Boot(#[from] bootloader::BootError),
    #[error("{0}")]
    Other(String),
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("GET {url}: {source}")]
    Http {
        url: String,
        #[source]
        source: http::HttpError,
    },
    #[error("GET {url} answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("GET {url} returned a plan this installer cannot read ({source}); are server and installer from the same release?")]
    Json {
        url: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("no usable plan from {url} after {secs} s; last error: {last}")]
    GaveUp {
        url: String,
        secs: u64,
        last: String,
    },
}

#[derive(Debug)]
pub struct Failure {
    pub step: Step,
    pub error: StepError,
}

pub fn plan_url(server: &str, mac: &str) -> String {
    format!("{server}{}/{mac}", wire::paths::PLAN)
}

/// One GET of the plan.
pub fn get_plan(server: &str, mac: &str) -> Result<InstallPlan, PlanError> {
    let url = plan_url(server, mac);
    let resp = http::get(&url, Duration::from_secs(10)).map_err(|source| PlanError::Http {
        url: url.clone(),
        source,
    })?;
    if resp.status != 200 {
        return Err(PlanError::Status {
            url,
            status: resp.status,
            body: resp.text().trim().chars().take(300).collect(),
        });
    }
    serde_json::from_slice(&resp.body).map_err(|source| PlanError::Json { url, source })
}

/// [`get_plan`] until it succeeds, waiting 1, 2, 4 … up to 30 s between tries
/// (`pause` does the waiting, so tests need not), and giving up after `limit`.
pub fn get_plan_retrying(
    server: &str,
    mac: &str,
    limit: Duration,
    pause: &mut dyn FnMut(Duration, &PlanError),
) -> Result<InstallPlan, PlanError> {
    let mut waited = Duration::ZERO;
    let mut wait = Duration::from_secs(1);
    loop {
        match get_plan(server, mac) {
            Ok(p) => return Ok(p),
            Err(e) if waited + wait > limit => {
                return Err(PlanError::GaveUp {
                    url: plan_url(server, mac),
                    secs: limit.as_secs(),
                    last: e.to_string(),
                })
            }
            Err(e) => {
                pause(wait, &e);
                waited += wait;
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        }
    }
}

pub fn detect_firmware() -> Firmware {
    if Path::new("/sys/firmware/efi").exists() {
        Firmware::Uefi
    } else {
        Firmware::Bios
    }
}

pub fn firmware_for(b: Bootloader, detected: Firmware) -> Firmware {
    match b {
        Bootloader::Auto => detected,
        Bootloader::Extlinux => Firmware::Bios,
        Bootloader::Uefi => Firmware::Uefi,
    }
}

pub struct Installer {
    pub args: Option<KernelArgs>,
    pub reporter: Reporter,
    iface: Option<String>,
    pub plan: Option<InstallPlan>,
    disk: Option<disk::DiskInfo>,
    layout: Option<PlannedLayout>,
    parts: HashMap<PartKind, PathBuf>,
    /// GPT unique partition GUIDs, for the UEFI boot entry.
    part_guids: HashMap<PartKind, uuid::Uuid>,
    /// Set once partitioning begins: on failure this disk's table is wiped.
    wipe_on_failure: Option<PathBuf>,
    root_uuid: Option<String>,
    swap_uuid: Option<String>,
}

impl Installer {
    pub fn new(start: Instant) -> Self {
        Installer {
            args: None,
            reporter: Reporter::new("", start),
            iface: None,
            plan: None,
            disk: None,
            layout: None,
            parts: HashMap::new(),
            part_guids: HashMap::new(),
            wipe_on_failure: None,
            root_uuid: None,
            swap_uuid: None,
        }
    }

    fn step<T>(
        &mut self,
        step: Step,
        f: impl FnOnce(&mut Self) -> Result<(T, String), StepError>,
    ) -> Result<T, Failure> {
        self.reporter
            .send(step, EventKind::Started, &format!("{step}: started"));
        match f(self) {
            Ok((v, msg)) => {
                let line = format!("{step}: {msg}");
                console::line(&line);
                // Finish reports `Installed` itself; after it the install is over
                // and the server refuses further reports for it.
                if step != Step::Finish {
                    self.reporter.send(step, EventKind::Done, &line);
                }
                Ok(v)
            }
            Err(error) => Err(Failure { step, error }),
        }
    }

    fn args(&self) -> &KernelArgs {
        self.args
            .as_ref()
            .expect("kernel args are parsed in mount_pseudo")
    }

    fn plan(&self) -> &InstallPlan {
        self.plan
            .as_ref()
            .expect("plan is fetched before disk steps")
    }

    /// Everything up to and including the first plan.
    pub fn bring_up(&mut self) -> Result<(), Failure> {
        self.step(Step::MountPseudo, |s| s.mount_pseudo())?;
        self.step(Step::LoadModules, |_| load_modules())?;
        self.step(Step::PickNic, |s| s.pick_nic())?;
        self.step(Step::Dhcp, |s| s.dhcp())?;
        self.step(Step::FetchPlan, |s| s.fetch_plan())?;
        Ok(())
    }

    /// The install proper, for the current plan.
    pub fn install(&mut self) -> Result<(), Failure> {
        self.step(Step::ChooseDisk, |s| s.choose_disk())?;
        self.step(Step::Partition, |s| s.partition())?;
        self.step(Step::Format, |s| s.format())?;
        self.step(Step::Mount, |s| s.mount_root())?;
        self.step(Step::Copy, |s| s.copy())?;
        self.step(Step::Configure, |s| s.configure())?;
        self.step(Step::Bootloader, |s| s.bootloader())?;
        self.step(Step::Finish, |s| s.finish())?;
        Ok(())
    }

    fn mount_pseudo(&mut self) -> Result<((), String), StepError> {
        let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        let mut done = Vec::new();
        if !Path::new("/proc/self").exists() {
            sys::mount("proc", Path::new("/proc"), "proc", nodev, None)?;
            done.push("/proc");
        }
        for (what, at, fs, flags, data) in [
            ("sysfs", "/sys", "sysfs", nodev, None),
            (
                "devtmpfs",
                "/dev",
                "devtmpfs",
                MsFlags::MS_NOSUID,
                Some("mode=0755"),
            ),
            (
                "tmpfs",
                "/run",
                "tmpfs",
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some("mode=0755"),
            ),
        ] {
            // The kernel may have auto-mounted devtmpfs already.
            if !sys::is_mounted(Path::new(at)) {
                sys::mount(what, Path::new(at), fs, flags, data)?;
                done.push(at);
            }
        }
        console::ensure_console_fds();
        let line = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        let args = cmdline::parse(&line)?;
        self.reporter.set_server(&args.server);
        let msg = format!(
            "mounted {}; server {} mac {}",
            if done.is_empty() {
                "nothing (already mounted)".into()
            } else {
                done.join(" ")
            },
            args.server,
            args.mac
        );
        self.args = Some(args);
        Ok(((), msg))
    }

    fn pick_nic(&mut self) -> Result<((), String), StepError> {
        let mac = self.args().mac.clone();
        let iface = net::wait_for_mac(&mac, Duration::from_secs(30))?;
        let _ = net::set_up("lo");
        net::set_up(&iface)?;
        let carrier = net::wait_for_carrier(&iface, Duration::from_secs(10));
        let msg = format!(
            "{iface} ({mac}) up, carrier {}",
            if carrier { "yes" } else { "not yet" }
        );
        self.iface = Some(iface);
        Ok(((), msg))
    }

    fn dhcp(&mut self) -> Result<((), String), StepError> {
        let iface = self.iface.clone().expect("pick_nic ran");
        let mac = cmdline::mac_bytes(&self.args().mac).expect("validated MAC");
        let lease = dhcp::obtain(&iface, mac, Duration::from_secs(120))?;
        net::configure(&iface, lease.addr, lease.netmask, lease.router)?;
        let gw = lease.router.map(|r| format!(" gw {r}")).unwrap_or_default();
        Ok((
            (),
            format!(
                "{iface} {}/{}{gw} from {}",
                lease.addr,
                lease.prefix_len(),
                lease.server_id
            ),
        ))
    }

    fn fetch_plan(&mut self) -> Result<((), String), StepError> {
        let (server, mac) = (self.args().server.clone(), self.args().mac.clone());
        let plan = get_plan_retrying(&server, &mac, Duration::from_secs(300), &mut |wait, e| {
            console::line(&format!(
                "fetch_plan: retrying in {} s: {e}",
                wait.as_secs()
            ));
            std::thread::sleep(wait);
        })?;
        self.set_plan(plan);
        let p = self.plan();
        Ok((
            (),
            format!(
                "install {}: {} as {} image {} serial {}",
                p.install_id, p.mac, p.hostname, p.image.name, p.image.serial
            ),
        ))
    }

    pub fn set_plan(&mut self, plan: InstallPlan) {
        self.reporter.set_install(&plan.install_id, &plan.token);
        self.plan = Some(plan);
    }

    fn choose_disk(&mut self) -> Result<((), String), StepError> {
        let plan = self.plan().clone();
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
            std::thread::sleep(Duration::from_millis(500));
        };
        let d = disk::choose(&disks, plan.disk.path.as_deref(), need)?;
        let l = layout::plan(d.size_bytes, d.logical_sector, fw, &plan.layout)?;
        let msg = format!(
            "{} {} MiB, {}-byte sectors, {} boot",
            d.dev.display(),
            d.size_bytes / MIB,
            d.logical_sector,
            fw.as_str()
        );
        self.disk = Some(d);
        self.layout = Some(l);
        Ok(((), msg))
    }

    fn partition(&mut self) -> Result<((), String), StepError> {
        let d = self.disk.clone().expect("disk chosen");
        let l = self.layout.clone().expect("layout planned");
        self.wipe_on_failure = Some(d.dev.clone());
        let written = partition::write_table_parts(&d.dev, &l)?;
        for (p, w) in l.parts.iter().zip(written) {
            self.parts.insert(p.kind, w.path);
            self.part_guids.insert(p.kind, w.guid);
        }
        Ok(((), format!("{} {}", d.dev.display(), l.describe())))
    }

    fn format(&mut self) -> Result<((), String), StepError> {
        let plan = self.plan().clone();
        let l = self.layout.clone().expect("layout planned");
        let root = self.parts[&PartKind::Root].clone();
        format::mke2fs(plan.layout.root_fs, &plan.layout.root_label, &root)?;
        let root_uuid = format::uuid_string(format::read_ext_uuid(&root)?);
        let mut msg = format!(
            "root {} {} label {} UUID {root_uuid}",
            root.display(),
            plan.layout.root_fs.as_str(),
            plan.layout.root_label
        );
        if let (Some(dev), Some(part)) = (self.parts.get(&PartKind::Swap), l.part(PartKind::Swap)) {
            let uuid = *uuid::Uuid::new_v4().as_bytes();
            swap::write(dev, part.lba_count * l.sector_size, uuid, "rollout-swap")?;
            let s = format::uuid_string(uuid);
            msg.push_str(&format!(", swap {} UUID {s}", dev.display()));
            self.swap_uuid = Some(s);
        }
        if let Some(esp) = self.parts.get(&PartKind::Esp) {
            format::mkfs_fat("ESP", esp)?;
            msg.push_str(&format!(", esp {} vfat", esp.display()));
        }
        self.root_uuid = Some(root_uuid);
        Ok(((), msg))
    }

    fn mount_root(&mut self) -> Result<((), String), StepError> {
        let plan = self.plan().clone();
        let root = self.parts[&PartKind::Root].clone();
        let target = Path::new(paths::TARGET);
        let fs = plan.layout.root_fs.as_str();
        let dev = root.to_string_lossy().to_string();
        // The ext4 driver serves ext3 too; some kernels register no "ext3" type.
        let used = match sys::mount(&dev, target, fs, MsFlags::empty(), None) {
            Ok(()) => fs,
            Err(_) => {
                sys::mount(&dev, target, "ext4", MsFlags::empty(), None)?;
                "ext4"
            }
        };
        Ok(((), format!("{dev} on {} ({used})", target.display())))
    }

    fn copy(&mut self) -> Result<((), String), StepError> {
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

    fn configure(&mut self) -> Result<((), String), StepError> {
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

    fn bootloader(&mut self) -> Result<((), String), StepError> {
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

    fn finish(&mut self) -> Result<((), String), StepError> {
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

    /// Cleans up after a failed step and reports it. Returns the policy to apply.
    pub fn fail(&mut self, f: &Failure) -> FailurePolicy {
        console::line(&format!("{}: FAILED: {}", f.step, f.error));
        let stuck = sys::umount_tree(Path::new(paths::ESP_MOUNT));
        let stuck2 = sys::umount_tree(Path::new(paths::TARGET));
        if let Some(d) = self.wipe_on_failure.take() {
            if !stuck.is_empty() || !stuck2.is_empty() {
                console::line("note: some file systems stayed mounted; wiping anyway");
            }
            match partition::wipe(&d) {
                Ok(()) => console::line(&format!(
                    "wiped the partition table of {} so this half-installed disk cannot boot",
                    d.display()
                )),
                Err(e) => console::line(&format!("could not wipe {}: {e}", d.display())),
            }
        }
        let ev = self.reporter.event(
            f.step,
            EventKind::Failed {
                error: f.error.to_string(),
                console_tail: console::tail(),
            },
            &format!("{}: FAILED: {}", f.step, f.error),
        );
        if let Err(e) = self.reporter.post(&ev) {
            console::line(&format!("note: failure report not delivered: {e}"));
        }
        self.plan
            .as_ref()
            .map(|p| p.on_failure.clone())
            .unwrap_or_default()
    }

    /// Forgets per-install state so a new plan starts from choose_disk.
    pub fn reset_install(&mut self) {
        self.disk = None;
        self.layout = None;
        self.parts.clear();
        self.part_guids.clear();
        self.wipe_on_failure = None;
        self.root_uuid = None;
        self.swap_uuid = None;
    }

    /// Whether the network is up (the plan can be polled after a failure).
    pub fn has_network(&self) -> bool {
        self.plan.is_some()
    }
}

fn load_modules() -> Result<((), String), StepError> {
    let dir = modules::modules_dir(Path::new(paths::MODULES_DIR));
    let r = modules::load(&dir, paths::MODULES)?;
    if !r.missing.is_empty() {
        console::line(&format!(
            "load_modules: note: not in the initramfs, skipped: {}",
            r.missing.join(" ")
        ));
    }
    for n in &r.notes {
        console::line(&format!("load_modules: note: {n}"));
    }
    Ok((
        (),
        format!(
            "{} loaded, {} already loaded, {} built in, {} missing, {} failed ({})",
            r.loaded.len(),
            r.already.len(),
            r.builtin.len(),
            r.missing.len(),
            r.notes.len(),
            dir.display()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_firmware_choice() {
        assert_eq!(
            plan_url("http://10.44.0.1:8080", "52:54:00:00:00:01"),
            "http://10.44.0.1:8080/api/v1/plan/52:54:00:00:00:01"
        );
        assert_eq!(
            firmware_for(Bootloader::Auto, Firmware::Uefi),
            Firmware::Uefi
        );
        assert_eq!(
            firmware_for(Bootloader::Extlinux, Firmware::Uefi),
            Firmware::Bios
        );
        assert_eq!(
            firmware_for(Bootloader::Uefi, Firmware::Bios),
            Firmware::Uefi
        );
    }

    /// Server unreachable: retried with growing waits, then a clear failure; a
    /// server that comes up meanwhile is used.
    #[test]
    fn unreachable_server_is_retried_with_backoff_then_given_up() {
        // A port nobody listens on: connection refused every time.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let server = format!("http://127.0.0.1:{port}");
        let mut waits = vec![];
        let e = get_plan_retrying(
            &server,
            "52:54:00:00:00:01",
            Duration::from_secs(60),
            &mut |w, _| waits.push(w.as_secs()),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(waits, [1, 2, 4, 8, 16], "backoff doubles until the limit");
        assert!(e.contains("60") && e.contains(&server), "{e}");

        // The server starts while the installer waits: the next try gets the plan.
        let mut listener = None;
        let body = serde_json::to_string(&crate::testutil::plan()).unwrap();
        let mut tries = 0;
        let plan = get_plan_retrying(
            &server,
            "52:54:00:00:00:01",
            Duration::from_secs(60),
            &mut |_, _| {
                tries += 1;
                if tries == 2 {
                    let l = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
                    let body = body.clone();
                    listener = Some(std::thread::spawn(move || {
                        use std::io::{Read, Write};
                        let (mut c, _) = l.accept().unwrap();
                        let mut buf = [0u8; 2048];
                        let _ = c.read(&mut buf).unwrap();
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        c.write_all(resp.as_bytes()).unwrap();
                    }));
                }
            },
        )
        .unwrap();
        assert_eq!(plan, crate::testutil::plan());
        assert_eq!(tries, 2);
        listener.unwrap().join().unwrap();
    }

    #[test]
    fn plan_fetch_reads_json_and_reports_status() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let body = serde_json::to_string(&crate::testutil::plan()).unwrap();
        let t = std::thread::spawn(move || {
            use std::io::{Read, Write};
            for resp in [
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                ),
                "HTTP/1.1 404 Not Found\r\nContent-Length: 7\r\n\r\nunknown".to_string(),
            ] {
                let (mut c, _) = listener.accept().unwrap();
                let mut buf = [0u8; 2048];
                let _ = c.read(&mut buf).unwrap();
                c.write_all(resp.as_bytes()).unwrap();
            }
        });
        let server = format!("http://127.0.0.1:{port}");
        let p = get_plan(&server, "52:54:00:00:00:01").unwrap();
        assert_eq!(p, crate::testutil::plan());
        let e = get_plan(&server, "52:54:00:00:00:01")
            .unwrap_err()
            .to_string();
        assert!(e.contains("404") && e.contains("unknown"), "{e}");
        t.join().unwrap();
    }
}
