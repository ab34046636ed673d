//! Types that cross the wire between `rollout serve` and the installer (and the
//! installed node's `rollout-sync`). Both sides import exactly these structs, so a
//! field added here is added on both ends at once.
//!
//! This module depends on serde only: the installer builds the `rollout` crate with
//! `default-features = false` and gets nothing else.

use serde::{Deserialize, Serialize};

pub mod block_image;
pub mod hardware;
pub mod initramfs;
pub mod layout;
pub mod link;
pub mod multicast;

pub use hardware::Hardware;
pub use layout::{
    Content, DiskRule, Filesystem, Fs, Layout, Lvm, Mount, MountKind, Partition, Raid, Size, Volume,
};
pub use link::{BondMode, BondPlan, LinkPlan, BOND_NAME, VLAN_IDS};

/// Kernel command-line keys the iPXE script passes to the installer.
pub mod cmdline {
    /// Base URL of the server, e.g. `http://10.44.0.1:8080`.
    pub const SERVER: &str = "rollout.server";
    /// MAC address of the NIC the firmware booted from (iPXE `${netX/mac}`).
    pub const MAC: &str = "rollout.mac";
    /// The same as pxelinux passes it (`BOOTIF=01-aa-bb-cc-dd-ee-ff`, `01` the
    /// ARP type of Ethernet): used when `rollout.mac` is absent, so a node
    /// booted by a hand-written pxelinux or GRUB entry still finds its NIC.
    pub const BOOTIF: &str = "BOOTIF";
    /// Set to `1` to make the installer drop to a shell instead of rebooting on failure.
    pub const DEBUG: &str = "rollout.debug";
    /// The one-time boot secret of this node's iPXE script: the installer sends it
    /// with its plan request ([`super::PlanRequest`]). It proves the requester got
    /// the script rollout made for this boot, where rollout hands out no address
    /// that could prove it (proxy DHCP, an address another server leased).
    pub const BOOT_SECRET: &str = "rollout.boot_secret";
    /// The node's 802.1Q VLAN id ([`super::LinkPlan::vlan`]): the installer
    /// runs DHCP on a VLAN device, not on the bare NIC.
    pub const VLAN: &str = "rollout.vlan";
    /// `MODE,MAC[,MAC…]`: the installer bonds these NICs ([`super::BondPlan`]).
    pub const BOND: &str = "rollout.bond";
}

/// HTTP paths served by `rollout serve` that the installer and installed nodes call.
pub mod paths {
    /// `POST {PLAN}/{mac}` with a [`PlanRequest`](super::PlanRequest) →
    /// [`InstallPlan`](super::InstallPlan); only for the node's lease holder or
    /// the holder of its boot secret (403 otherwise). A POST: it starts an install.
    pub const PLAN: &str = "/api/v1/plan";
    /// `POST /api/v1/installs/{install_id}/events` with a [`ProgressEvent`](super::ProgressEvent),
    /// `Authorization: Bearer {token}`; `POST /api/v1/installs/{install_id}/slot`
    /// (same token) → [`SlotAnswer`](super::SlotAnswer) before the copy.
    /// `Authorization: Bearer {token}`; `POST /api/v1/installs/{install_id}/multicast`
    /// (same token) → [`MulticastAnswer`](super::multicast::MulticastAnswer).
    pub const INSTALLS: &str = "/api/v1/installs";
    /// `POST` a [`PhoneHome`](super::PhoneHome) from the installed OS, with
    /// `Authorization: Bearer {node secret}` ([`NodeCredential::secret`](super::NodeCredential)).
    pub const PHONE_HOME: &str = "/api/v1/phone-home";
    /// `GET {IMAGES}/{name}/serial` → the published serial as plain text;
    /// `GET {IMAGES}/{name}/excludes` → the image's node-local paths, one per line.
    /// Both need `Authorization: Bearer` with a node secret or the admin token.
    pub const IMAGES: &str = "/api/v1/images";
}

/// What stays node-local: never copied from the image on install, never
/// overwritten on update (rsync filter syntax, anchored at the image root).
pub const DEFAULT_EXCLUDES: &[&str] = &[
    "/etc/hostname",
    "/etc/hosts",
    "/etc/fstab",
    "/etc/machine-id",
    "/etc/ssh/ssh_host_*",
    "/etc/rollout/",
    "/etc/network/interfaces",
    "/etc/systemd/network/",
    "/var/lib/dhcp/",
    "/lost+found",
    "/proc/*",
    "/sys/*",
    "/dev/*",
    "/run/*",
    "/tmp/*",
];

/// What a running node accumulates and an update must not delete (rsync
/// "protect" rules, `***` = the directory and everything in it): a sync still
/// brings the image's files there, it only never removes what the image lacks.
/// Without these, `--delete` took the node's journal and logs with every update.
pub const NODE_STATE: &[&str] = &[
    "/var/log/***",
    "/var/tmp/***",
    "/var/spool/***",
    "/var/lib/systemd/random-seed",
    "/var/lib/systemd/timers/***",
    "/var/lib/systemd/coredump/***",
    "/home/***",
    "/root/***",
];

/// Kernel modules the installer loads whatever the hardware, in this order (its
/// initramfs carries them with their dependencies): what no device asks for by
/// modalias. Device drivers (NICs, disk controllers, virtio) are not listed: the
/// initramfs carries whole driver trees and the installer loads what each
/// device's modalias matches in `modules.alias`. ext4 needs crc32c through the
/// crypto API, a soft dependency: an implementation comes first.
pub const INSTALLER_MODULES: &[&str] = &[
    "crc32c_generic",
    "crc32c_intel",
    "ext4",
    "vfat",
    "nls_cp437",
    "nls_iso8859_1",
    "af_packet",
    "efivarfs",
];

/// The body of a plan request (`POST {PLAN}/{mac}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct PlanRequest {
    /// The value of [`cmdline::BOOT_SECRET`], when the kernel command line had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_secret: Option<String>,
    /// What the installer found on the machine; stored with the node once the
    /// request is granted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware: Option<Hardware>,
}

/// A user and password of the server's rsync daemon (`auth users`). The
/// installer passes the password in `RSYNC_PASSWORD`, never on a command line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct RsyncCredential {
    pub user: String,
    pub password: String,
}

/// The node's own credential, issued with its install and valid until it is
/// reinstalled or removed: `secret` is its `Authorization: Bearer` for
/// phone-home and rollout-sync's requests, `rsync` reads its image's modules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct NodeCredential {
    pub secret: String,
    pub rsync: RsyncCredential,
}

/// Everything a node needs to install itself. Fetched by MAC from the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct InstallPlan {
    /// Identifies this install attempt; progress events are posted under it.
    pub install_id: String,
    /// Bearer token for progress events: a node can only report for its own install.
    pub token: String,
    pub mac: String,
    pub hostname: String,
    pub server_url: String,
    pub network: NetworkPlan,
    /// Bond and VLAN under `network` (none: the boot NIC itself).
    #[serde(default)]
    pub link: LinkPlan,
    pub image: ImageRef,
    pub disk: DiskSelector,
    pub layout: Layout,
    pub bootloader: Bootloader,
    /// rsync exclude patterns (anchored at the image root), node-local files among them.
    pub excludes: Vec<String>,
    /// Extra files the server wants written into the installed root.
    pub files: Vec<FileSpec>,
    /// Keys put in root's `~/.ssh/authorized_keys` (the server's, for `rollout exec`).
    pub ssh_authorized_keys: Vec<String>,
    /// Appended to the installed kernel command line after `root=UUID=…`.
    pub kernel_cmdline: String,
    pub on_failure: FailurePolicy,
    /// Seconds between the installed node's own `rollout-sync` runs (a systemd
    /// timer); 0: none, the node updates when `rollout sync` tells it to.
    #[serde(default)]
    pub sync_interval_secs: u64,
    /// Reads `image.rsync_url` for as long as this install is in progress.
    #[serde(default)]
    pub rsync: RsyncCredential,
    /// Written on the node (0600) for its life after the install.
    #[serde(default)]
    pub node: NodeCredential,
    /// Carry the node's identity (SSH host keys, machine-id) over from its
    /// previous install on the same disk, so a reinstall does not change the
    /// host key operators and `rollout exec` know (`[install] keep_identity`).
    #[serde(default = "yes")]
    pub keep_identity: bool,
    /// The server streams the image by multicast to the installs of this
    /// serial that ask at the same time (`[install] multicast`); none: rsync only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multicast: Option<multicast::MulticastPlan>,
    /// Unpack `GET /api/v1/installs/{install_id}/image.tar` (same token) onto
    /// the new root before the rsync copy (`[install] tar_prefill`).
    #[serde(default)]
    pub tar_prefill: bool,
    /// Write `GET /api/v1/installs/{install_id}/root.img` (same token) onto
    /// the root device instead of formatting it and copying with rsync, when
    /// the layout allows ([`Layout::block_image_fs`], `[install] block_image`).
    #[serde(default)]
    pub block_image: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub enum NetworkPlan {
    /// The installed OS runs DHCP on the boot NIC (the server reserves its address).
    Dhcp,
    Static {
        /// CIDR, e.g. `10.44.0.20/24`.
        address: String,
        gateway: Option<String>,
        dns: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct ImageRef {
    pub name: String,
    pub serial: u64,
    /// `rsync://host/module/` serving exactly this serial, read-only.
    pub rsync_url: String,
    /// The transfer checksums the server's rsync supports, in its order of
    /// preference (`rsync --version`'s "Checksum list"): the installer picks a
    /// fast one both ends have ([`crate::rsync_caps::first_install_checksum`]).
    /// Empty from an older server: the installer then names none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rsync_checksums: Vec<String>,
    /// The serial's sparse files (as `/var/log/lastlog`: regular files with at
    /// least [`SPARSE_HOLES`] bytes of holes). A first install copies these with
    /// rsync's `--sparse` and then everything else without it: `--sparse` makes
    /// rsync write in 1 KiB pieces, which costs a dense copy about 40% more CPU.
    /// `None` when the server cannot say (an older server, a serial published
    /// before the list, too many of them): the installer then copies everything
    /// with `--sparse`, so no hole is ever filled in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sparse_files: Option<Vec<String>>,
}

/// Holes a regular file must have to count as sparse ([`ImageRef::sparse_files`]):
/// smaller ones cost at most this much disk when copied densely, and ext4's
/// inline data or a compressing filesystem's small files are not listed.
pub const SPARSE_HOLES: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct DiskSelector {
    /// A device path such as `/dev/vda`; `None` picks the first non-removable disk
    /// that is large enough for the layout.
    pub path: Option<String>,
    /// The node was declared (`[[node]]`, the API) or approved by an operator:
    /// the installer repartitions its disk even when it holds a partition table or
    /// a filesystem (someone who owns the machine asked for it). `false` (a
    /// stranger installed under `[install] unknown = "install"`, or a server that
    /// predates the field): only a blank disk is used, anything else is refused
    /// before a byte is written.
    #[serde(default)]
    pub declared: bool,
}

/// The filesystem type of the root before layouts had other filesystems.
pub type RootFs = Fs;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub enum Bootloader {
    /// extlinux on BIOS, an EFI loader on UEFI: decided by the installer from /sys/firmware/efi.
    #[default]
    Auto,
    Extlinux,
    Uefi,
}

/// A node's firmware: it decides the partition layout (BIOS boot partition or
/// ESP) and the boot loader. The installer detects it; the lab boots nodes with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    Bios,
    Uefi,
}

impl Firmware {
    pub fn as_str(self) -> &'static str {
        match self {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
        }
    }
}

impl std::fmt::Display for Firmware {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct FileSpec {
    pub path: String,
    pub mode: u32,
    pub contents: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct FailurePolicy {
    /// Reboot this many seconds after a failure (the server then decides what the
    /// node boots); `None` waits for a retry signal from the server.
    pub reboot_after_secs: Option<u64>,
}

impl Default for FailurePolicy {
    fn default() -> Self {
        FailurePolicy {
            reboot_after_secs: Some(60),
        }
    }
}

/// The installer's steps, in order. Names are stable: they appear on the console,
/// in the server's records and on the dashboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub enum Step {
    MountPseudo,
    LoadModules,
    PickNic,
    Dhcp,
    FetchPlan,
    ChooseDisk,
    Partition,
    Format,
    Mount,
    Copy,
    Configure,
    Bootloader,
    Finish,
}

impl Step {
    pub const ALL: [Step; 13] = [
        Step::MountPseudo,
        Step::LoadModules,
        Step::PickNic,
        Step::Dhcp,
        Step::FetchPlan,
        Step::ChooseDisk,
        Step::Partition,
        Step::Format,
        Step::Mount,
        Step::Copy,
        Step::Configure,
        Step::Bootloader,
        Step::Finish,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Step::MountPseudo => "mount_pseudo",
            Step::LoadModules => "load_modules",
            Step::PickNic => "pick_nic",
            Step::Dhcp => "dhcp",
            Step::FetchPlan => "fetch_plan",
            Step::ChooseDisk => "choose_disk",
            Step::Partition => "partition",
            Step::Format => "format",
            Step::Mount => "mount",
            Step::Copy => "copy",
            Step::Configure => "configure",
            Step::Bootloader => "bootloader",
            Step::Finish => "finish",
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One report from the installer, posted to
/// `{server}/api/v1/installs/{install_id}/events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct ProgressEvent {
    pub step: Step,
    #[serde(flatten)]
    pub kind: EventKind,
    /// Human-readable line, as printed on the node's console.
    pub message: String,
    /// Milliseconds since the installer started.
    pub elapsed_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub enum EventKind {
    Started,
    Progress {
        done_bytes: u64,
        total_bytes: u64,
    },
    Done,
    /// The whole install is finished and the node is about to reboot.
    Installed {
        serial: u64,
        /// The installed node's SSH host public keys, one OpenSSH line each
        /// (`ssh-ed25519 AAAA… comment`): the server writes its known_hosts from
        /// them. Sent only in this authenticated event; empty from an older
        /// installer or an image without ssh-keygen.
        #[serde(default)]
        host_keys: Vec<String>,
    },
    Failed {
        error: String,
        /// The last lines the installer printed, for the operator.
        console_tail: Vec<String>,
    },
    /// Waiting for a copy slot ([`SlotAnswer::Wait`]): `position` (1 is next)
    /// of `queued`, shown on the dashboard and by `rollout watch`.
    Queued {
        position: u32,
        queued: u32,
    },
}

/// The answer to `POST /api/v1/installs/{id}/slot`: copy now, or wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "slot", rename_all = "snake_case")]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub enum SlotAnswer {
    /// Start the copy. The slot lasts `lease_secs` after each event of the
    /// install and ends with the copy (its `done` event), the install or a failure.
    Granted {
        lease_secs: u64,
        /// Copies running now (this one included) and the server's limit.
        active: u32,
        max: u32,
    },
    /// Not yet: `position` (1 is next) of `queued` waiting; ask again in
    /// `retry_secs` (0: at once; the server holds a request near the head of
    /// the queue for up to 4 s and answers it the moment a slot frees).
    Wait {
        position: u32,
        queued: u32,
        retry_secs: u64,
    },
}

/// Posted by the installed OS on every boot (the unit the installer writes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct PhoneHome {
    pub mac: String,
    pub hostname: String,
    pub serial: u64,
    pub boot_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_event_json_is_flat_and_tagged() {
        let ev = ProgressEvent {
            step: Step::Copy,
            kind: EventKind::Progress {
                done_bytes: 50,
                total_bytes: 100,
            },
            message: "copy 50%".into(),
            elapsed_ms: 1234,
        };
        let json = serde_json::to_value(&ev).unwrap();
        assert_eq!(json["step"], "copy");
        assert_eq!(json["kind"], "progress");
        assert_eq!(json["done_bytes"], 50);
        let back: ProgressEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, ev);
    }

    #[test]
    fn installed_event_carries_host_keys_and_old_ones_parse() {
        let ev = ProgressEvent {
            step: Step::Finish,
            kind: EventKind::Installed {
                serial: 3,
                host_keys: vec!["ssh-ed25519 AAAAC3Nz root@n1".into()],
            },
            message: "installed".into(),
            elapsed_ms: 1,
        };
        let json = serde_json::to_value(&ev).unwrap();
        assert_eq!(json["host_keys"][0], "ssh-ed25519 AAAAC3Nz root@n1");
        assert_eq!(serde_json::from_value::<ProgressEvent>(json).unwrap(), ev);
        // An installer from before host keys were reported.
        let old: ProgressEvent = serde_json::from_str(
            r#"{"step":"finish","kind":"installed","serial":2,"message":"m","elapsed_ms":0}"#,
        )
        .unwrap();
        assert_eq!(
            old.kind,
            EventKind::Installed {
                serial: 2,
                host_keys: vec![]
            }
        );
    }

    #[test]
    fn step_names_round_trip_through_serde() {
        for step in Step::ALL {
            let s = serde_json::to_string(&step).unwrap();
            assert_eq!(s, format!("\"{}\"", step.as_str()));
        }
    }
}
