//! Every path the installer expects inside the initramfs, in one place so the
//! initramfs builder can pack exactly these (see `REQUIRED_FILES`).

/// Kernel modules live under `{MODULES_DIR}/{uname -r}/` together with `modules.dep`.
pub const MODULES_DIR: &str = "/lib/modules";
// Debian 12 paths (merged /usr: /sbin and /bin are symlinks into /usr), the same
// on the build host and in the initramfs.
/// e2fsprogs' mke2fs; also makes ext3/ext4 through `-t`.
pub const MKE2FS: &str = "/usr/sbin/mke2fs";
/// dosfstools' mkfs.vfat (a symlink to mkfs.fat), only for the EFI system partition.
pub const MKFS_FAT: &str = "/usr/sbin/mkfs.vfat";
pub const RSYNC: &str = "/usr/bin/rsync";
pub const EXTLINUX: &str = "/usr/bin/extlinux";
/// syslinux' GPT-aware MBR boot code (440 bytes).
pub const GPTMBR_BIN: &str = "/usr/lib/syslinux/mbr/gptmbr.bin";
/// syslinux' BIOS COM32 modules (`ldlinux.c32`, ...).
pub const SYSLINUX_BIOS_MODULES: &str = "/usr/lib/syslinux/modules/bios";
pub const SYSTEMD_BOOT_EFI: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";
/// Spawned with `rollout.debug=1` after a failure, when present.
pub const SHELL: &str = "/bin/sh";
/// The console the kernel gives PID 1; the builder must create this node (c 5 1).
pub const CONSOLE: &str = "/dev/console";

/// Where the installer mounts the new root and the EFI system partition.
pub const TARGET: &str = "/target";
pub const ESP_MOUNT: &str = "/run/rollout-esp";
/// vfat loads its I/O charset at mount time, and Debian's kernel defaults to
/// `ascii` (nls_ascii), which the initramfs does not carry: without this the
/// ESP mount fails with EINVAL. nls_iso8859_1 is loaded with the storage modules.
pub const ESP_MOUNT_OPTIONS: &str = "iocharset=iso8859-1";

/// Where the installer puts itself on the installed node.
pub const NODE_SYNC_BINARY: &str = "/usr/local/sbin/rollout-sync";
pub const NODE_CONFIG: &str = "/etc/rollout/node.toml";
pub const NODE_SERIAL: &str = "/etc/rollout/serial";
/// The node's secret (0600): its `Authorization: Bearer` to the server.
pub const NODE_SECRET: &str = "/etc/rollout/node.secret";
/// The node's rsync password (0600); its user is `rsync_user` in node.toml.
pub const NODE_RSYNC_PASSWORD: &str = "/etc/rollout/rsync.password";
pub const NODE_PHONE_HOME_SCRIPT: &str = "/usr/local/sbin/rollout-phone-home";

/// Files and directories the initramfs must contain for every step to work
/// (helpers also need their shared libraries and the ELF interpreter).
pub const REQUIRED_FILES: &[&str] = &[
    MKE2FS,
    MKFS_FAT,
    RSYNC,
    EXTLINUX,
    GPTMBR_BIN,
    SYSLINUX_BIOS_MODULES,
    SYSTEMD_BOOT_EFI,
    CONSOLE,
];

/// The kernel modules the installer loads, in this order (dependencies first,
/// resolved from `modules.dep`). Missing ones are skipped with a note.
pub use rollout::wire::INSTALLER_MODULES as MODULES;

/// COM32 modules copied next to `extlinux.conf` (extlinux itself installs
/// `ldlinux.sys`; a matching `ldlinux.c32` must sit beside it).
pub const EXTLINUX_C32: &[&str] = &["ldlinux.c32", "libcom32.c32", "libutil.c32"];
