//! The install sequence: one method per `wire::Step`, each printing one console
//! line and reporting Started/Done, plus the failure policy. The steps live in
//! `network` (up to the plan), `storage` (to a mounted root) and `system` (copy to
//! reboot); the plan fetch with its retries in `plan`.

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

mod network;
mod plan;
mod storage;
mod system;

use network::load_modules;
pub use plan::{get_plan, get_plan_retrying, plan_url, PlanError};

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

#[derive(Debug)]
pub struct Failure {
    pub step: Step,
    pub error: StepError,
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

    pub fn set_plan(&mut self, plan: InstallPlan) {
        self.reporter.set_install(&plan.install_id, &plan.token);
        self.plan = Some(plan);
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
}
