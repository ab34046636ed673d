//! The install sequence, one phase per `wire::Step`. Each phase is a small
//! function that takes the results of the earlier ones and returns its own, so
//! nothing is looked up later in half-filled state: network → plan → disk
//! (chosen, partitioned, formatted) → mounted root → configured → finish.
//! `run` holds what the failure path needs whatever failed (the reporter, the
//! running step, the disk to wipe); `network` brings the node up to a plan,
//! `storage` takes a plan to a mounted root, `system` goes from there to the
//! reboot; the plan fetch with its retries is in `plan`.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::MsFlags;
use rollout::wire::{self, Bootloader, EventKind, InstallPlan, Step};

use crate::cmdline::{self, KernelArgs};
use crate::identity::{self, Identity};
use crate::layout::{self, Firmware, MIB};
use crate::report::Reporter;
use crate::{
    bootloader, configure, console, dhcp_client, disk, disks, efivars, format, http_client, lvm,
    modules, net, nic, partition, paths, raid, render, rsync, swap, sys, tools,
};

mod network;
mod plan;
mod run;
mod storage;
mod system;
#[cfg(test)]
mod tests;

pub use plan::{get_plan, get_plan_retrying, plan_url, PlanError};
pub use run::{Failure, Run};
pub use system::{admit, copy_into, Hardware};

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
    Nic(#[from] nic::NoBootNic),
    #[error(transparent)]
    Link(#[from] crate::link::LinkError),
    #[error(transparent)]
    Dhcp(#[from] dhcp_client::DhcpError),
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
    #[error(transparent)]
    Raid(#[from] raid::RaidError),
    #[error(transparent)]
    Lvm(#[from] lvm::LvmError),
    #[error(transparent)]
    Tools(#[from] tools::ToolsError),
    /// A bug: the step panicked (message and location from `crash`).
    #[error("internal error (panic): {0}")]
    Panic(String),
    #[error("{0}")]
    Other(String),
}

/// A phase's result and the console line that says what it did.
pub type StepResult<T> = Result<(T, String), StepError>;

/// The network as DHCP configured it, and the server the kernel command line named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    pub iface: String,
    pub addr: Ipv4Addr,
    pub server: String,
    pub mac: String,
    /// From the kernel command line, for the plan request.
    pub boot_secret: Option<String>,
}

/// The target disks (one, or two for RAID1) and the layout planned over them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChosenDisk {
    pub disks: Vec<disk::DiskInfo>,
    pub plan: layout::Plan,
}

impl ChosenDisk {
    /// The first disk: a reinstall's identity is read from it.
    pub fn first(&self) -> &disk::DiskInfo {
        &self.disks[0]
    }

    pub fn devs(&self) -> Vec<&Path> {
        self.disks.iter().map(|d| d.dev.as_path()).collect()
    }
}

/// The block devices as made: each disk's partitions (in its plan's order),
/// the md arrays and the logical volumes (in the plan's order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partitioned {
    pub disks: Vec<Vec<partition::WrittenPart>>,
    pub arrays: Vec<PathBuf>,
    pub volumes: Vec<PathBuf>,
}

impl Partitioned {
    /// Partition `number` of chosen disk `disk`.
    pub fn part(
        &self,
        plan: &layout::Plan,
        disk: usize,
        number: u32,
    ) -> Option<&partition::WrittenPart> {
        let i = plan
            .disks
            .get(disk)?
            .parts
            .iter()
            .position(|p| p.number == number)?;
        self.disks.get(disk)?.get(i)
    }

    /// The device a filesystem, swap area or physical volume is made on.
    pub fn device(
        &self,
        plan: &layout::Plan,
        source: layout::Source,
    ) -> Result<PathBuf, StepError> {
        let found = match source {
            layout::Source::Partition { disk, number } => {
                self.part(plan, disk, number).map(|p| p.path.clone())
            }
            layout::Source::Array(i) => self.arrays.get(i).cloned(),
            layout::Source::Volume(i) => self.volumes.get(i).cloned(),
        };
        found.ok_or_else(|| StepError::Other(format!("no device was made for {source:?}")))
    }

    /// Each disk's ESP: (disk, planned partition, written partition).
    pub fn esps<'a>(
        &'a self,
        plan: &'a layout::Plan,
    ) -> Vec<(usize, &'a layout::PlannedPart, &'a partition::WrittenPart)> {
        plan.disks
            .iter()
            .enumerate()
            .filter_map(|(d, dp)| {
                let p = dp.parts.iter().find(|p| p.role == layout::Role::Esp)?;
                Some((d, p, self.part(plan, d, p.number)?))
            })
            .collect()
    }
}

/// A filesystem or swap area as made: its device and UUID (per plan target).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Made {
    pub device: PathBuf,
    pub uuid: String,
}

/// The file systems made on the devices, in the plan's target order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Formatted {
    pub made: Vec<Made>,
    /// What the kernel's `root=` names: `UUID=…` (partition or md array) or
    /// `/dev/mapper/VG-LV` (a logical volume, found before any filesystem is).
    pub root: String,
    /// The root left unformatted for the serial's block image
    /// (`[install] block_image`): the copy writes it before it is mounted.
    pub image_root: Option<ImageRoot>,
}

/// A root the block image makes: its device, and what the node's files
/// already name it by (the UUID in `root=` and fstab, the label).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRoot {
    pub device: PathBuf,
    pub fs: wire::Fs,
    pub label: String,
    pub uuid: String,
}

/// What must be closed before the reboot once the target is unmounted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Teardown {
    pub vg: Option<String>,
    pub arrays: Vec<PathBuf>,
}

/// Every local filesystem of the layout mounted under `paths::TARGET`, root
/// first; unmounted (deepest first) when dropped.
#[derive(Debug)]
pub struct MountedRoot {
    /// Declared before `mount`: fields drop in order, children first.
    children: sys::Mounts,
    mount: sys::Mounted,
    teardown: Teardown,
}

impl MountedRoot {
    pub fn at(&self) -> &Path {
        self.mount.at()
    }
}

/// The mounted root once the node's files are written: only this can get a
/// bootloader and be finished.
#[derive(Debug)]
pub struct Configured {
    root: MountedRoot,
    /// The public SSH host keys now in the root, for the `installed` report.
    host_keys: Vec<String>,
}

impl Configured {
    pub fn at(&self) -> &Path {
        self.root.at()
    }
}

/// What each install phase does to the machine. [`Hardware`] is the real one;
/// tests drive [`install`] with a fake to check the sequencing.
pub trait Machine {
    fn choose_disk(&mut self, plan: &InstallPlan) -> StepResult<ChosenDisk>;
    /// This node's identity from its previous install on the chosen disk, read
    /// before anything is written, and the console line that says what happens.
    fn previous_identity(
        &mut self,
        plan: &InstallPlan,
        disk: &ChosenDisk,
    ) -> (Option<Identity>, String);
    fn partition(&mut self, plan: &InstallPlan, disk: &ChosenDisk) -> StepResult<Partitioned>;
    fn format(
        &mut self,
        plan: &InstallPlan,
        disk: &ChosenDisk,
        parts: &Partitioned,
    ) -> StepResult<Formatted>;
    fn mount_root(
        &mut self,
        plan: &InstallPlan,
        disk: &ChosenDisk,
        fs: &Formatted,
    ) -> StepResult<MountedRoot>;
    fn copy(
        &mut self,
        reporter: &mut Reporter,
        plan: &InstallPlan,
        root: &MountedRoot,
    ) -> StepResult<()>;
    /// Writes the block image onto an unformatted root; whether it did (else
    /// the root was formatted empty and the rsync copy runs after the mount).
    fn copy_image(
        &mut self,
        reporter: &mut Reporter,
        plan: &InstallPlan,
        root: &ImageRoot,
    ) -> StepResult<bool>;
    fn configure(
        &mut self,
        plan: &InstallPlan,
        net: &Network,
        disk: &ChosenDisk,
        fs: &Formatted,
        root: MountedRoot,
        identity: Option<&Identity>,
    ) -> StepResult<Configured>;
    fn bootloader(
        &mut self,
        plan: &InstallPlan,
        disk: &ChosenDisk,
        parts: &Partitioned,
        fs: &Formatted,
        root: &Configured,
    ) -> StepResult<()>;
    /// Flushes and unmounts the finished root; returns what stayed mounted.
    fn unmount(&mut self, root: Configured) -> Vec<String>;
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

/// Pseudo file systems, kernel command line, modules.
pub fn boot(run: &mut Run) -> Result<KernelArgs, Failure> {
    let args = run.step(Step::MountPseudo, |run| {
        network::mount_pseudo(&mut run.reporter)
    })?;
    run.step(Step::LoadModules, |_| network::load_modules())?;
    Ok(args)
}

/// The NIC, its address and the first plan (whose install the reports go to).
pub fn bring_up(run: &mut Run, args: &KernelArgs) -> Result<(Network, InstallPlan), Failure> {
    let iface = run.step(Step::PickNic, |_| network::pick_nic(args))?;
    let net = run.step(Step::Dhcp, |_| network::dhcp(args, iface))?;
    let plan = run.step(Step::FetchPlan, |run| {
        let (plan, msg) = network::fetch_plan(&net)?;
        run.set_plan(&plan);
        Ok((plan, msg))
    })?;
    Ok((net, plan))
}

/// The install proper, for one plan. Mount guards live in this frame (and in
/// the phases' values), so any way out of it unmounts the target.
pub fn install(
    run: &mut Run,
    m: &mut dyn Machine,
    net: &Network,
    plan: &InstallPlan,
) -> Result<(), Failure> {
    let (disk, identity) = run.step(Step::ChooseDisk, |_| {
        let (disk, msg) = m.choose_disk(plan)?;
        // Before the first write: the old root is gone once partitioning starts.
        let (identity, note) = if plan.keep_identity {
            m.previous_identity(plan, &disk)
        } else {
            (
                None,
                "identity: fresh SSH host keys and machine-id ([install] keep_identity = false)"
                    .into(),
            )
        };
        console::line(&format!("{}: {note}", Step::ChooseDisk));
        Ok(((disk, identity), msg))
    })?;
    let parts = run.step(Step::Partition, |run| {
        // From the first write on, a failure leaves disks that must not boot.
        run.writing_to(&disk.devs());
        m.partition(plan, &disk)
    })?;
    let fs = run.step(Step::Format, |_| m.format(plan, &disk, &parts))?;
    // A block image fills the root before it is mounted; if it cannot, the
    // root is formatted then and rsync copies into the mounted tree.
    let imaged = match &fs.image_root {
        Some(img) => run.step(Step::Copy, |run| m.copy_image(&mut run.reporter, plan, img))?,
        None => false,
    };
    let root = run.step(Step::Mount, |_| m.mount_root(plan, &disk, &fs))?;
    if !imaged {
        run.step(Step::Copy, |run| m.copy(&mut run.reporter, plan, &root))?;
    }
    let root = run.step(Step::Configure, |_| {
        m.configure(plan, net, &disk, &fs, root, identity.as_ref())
    })?;
    run.step(Step::Bootloader, |_| {
        m.bootloader(plan, &disk, &parts, &fs, &root)
    })?;
    run.step(Step::Finish, |run| {
        let host_keys = root.host_keys.clone();
        let stuck = m.unmount(root);
        if !stuck.is_empty() {
            console::line(&format!(
                "finish: note: could not unmount {}",
                stuck.join(", ")
            ));
        }
        // The disk is complete now: a reporting failure below must not wipe it.
        run.disk_complete();
        Ok(((), run.report_installed(plan, host_keys)))
    })
}
