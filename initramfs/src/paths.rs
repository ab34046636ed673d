//! Every path the installer expects inside the initramfs and on the node. The
//! programs and data files come from `rollout::wire::initramfs`, the list the
//! initramfs builder packs.

/// Kernel modules live under `{MODULES_DIR}/{uname -r}/` together with `modules.dep`.
pub const MODULES_DIR: &str = "/lib/modules";
/// Where devices show their `modalias` (`/sys/bus/*/devices/*/modalias`).
pub const SYS_BUS: &str = "/sys/bus";

/// Programs and data files, at the paths the initramfs builder packs them.
pub use rollout::wire::initramfs::{
    EXTLINUX, EXTLINUX_C32, GPTMBR_BIN, MKE2FS, MKFS_FAT, RSYNC, SYSLINUX_BIOS_MODULES,
    SYSTEMD_BOOT_EFI, TUNE2FS, UDP_RECEIVER,
};
/// The storage tools, present only once `tools::ensure` unpacked them.
pub use rollout::wire::initramfs::{LVM, MDADM, MKFS_XFS};

/// Spawned with `rollout.debug=1` after a failure, when present.
pub const SHELL: &str = "/bin/sh";
/// The console the kernel gives PID 1; the builder must create this node (c 5 1).
pub const CONSOLE: &str = "/dev/console";

/// Where the installer mounts the new root and the EFI system partition.
pub const TARGET: &str = "/target";
pub const ESP_MOUNT: &str = "/run/rollout-esp";
/// Where a previous install's root is mounted read-only to carry its identity over.
pub const OLD_ROOT: &str = "/run/rollout-old-root";
/// vfat loads its I/O charset at mount time, and Debian's kernel defaults to
/// `ascii` (nls_ascii), which the initramfs does not carry: without this the
/// ESP mount fails with EINVAL. nls_iso8859_1 is loaded with the storage modules.
pub const ESP_MOUNT_OPTIONS: &str = "iocharset=iso8859-1";

/// Where the installer puts itself on the installed node. Not under /usr: a
/// layout may mount /usr from NFS (the image's, read-only), which would hide
/// anything the installer wrote there.
pub const NODE_SYNC_BINARY: &str = "/var/lib/rollout/bin/rollout-sync";
pub const NODE_CONFIG: &str = "/etc/rollout/node.toml";
pub const NODE_SERIAL: &str = "/etc/rollout/serial";
/// The node's secret (0600): its `Authorization: Bearer` to the server.
pub const NODE_SECRET: &str = "/etc/rollout/node.secret";
/// The node's rsync password (0600); its user is `rsync_user` in node.toml.
pub const NODE_RSYNC_PASSWORD: &str = "/etc/rollout/rsync.password";
pub const NODE_PHONE_HOME_SCRIPT: &str = "/var/lib/rollout/bin/rollout-phone-home";
/// The periodic sync of an image whose init is busybox (no systemd timer).
pub const NODE_SYNC_LOOP_SCRIPT: &str = "/var/lib/rollout/bin/rollout-sync-loop";

/// The kernel modules the installer loads whatever the hardware, in this order
/// (dependencies first); device drivers come by modalias. Missing ones are
/// skipped with a note.
pub use rollout::wire::INSTALLER_MODULES as MODULES;
