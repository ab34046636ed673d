//! The bootloader side of a sync: did /boot change, which bootloader does this
//! node boot, and rewriting its entry for the new kernel with the same root and
//! options.

use std::path::Path;

use super::{in_root, io, SyncError};
use crate::{bootloader, layout, paths};

/// Whether an itemized change touches a file under /boot: a transfer, creation,
/// hard link or deletion of a non-directory (attribute-only and directory
/// changes do not make a new kernel).
pub fn boot_changed(lines: &[String]) -> bool {
    lines.iter().any(|l| {
        let (code, path) = if let Some(p) = l.strip_prefix("*deleting") {
            ("*deleting", p.trim_start())
        } else {
            match l.split_once(' ') {
                Some((c, p)) if c.len() == 11 => (c, p.trim_start()),
                _ => return false,
            }
        };
        let in_boot = path.starts_with("boot/") && !path.ends_with('/');
        let is_dir = code != "*deleting" && code.as_bytes()[1] == b'd';
        let changes = code == "*deleting" || matches!(code.as_bytes()[0], b'>' | b'c' | b'h');
        in_boot && !is_dir && changes
    })
}

/// The stable `root=` names an install writes: a filesystem UUID, or an LVM
/// volume's device-mapper path. A kernel name such as `/dev/sda1` is not one
/// (it moves when disks are added), so an entry with it was not written by
/// rollout and is not rewritten by a sync.
fn stable_root(value: &str) -> bool {
    value.starts_with("UUID=") || value.starts_with("/dev/mapper/")
}

/// `root=` (`UUID=…`, `/dev/mapper/VG-LV`) and the rest of the kernel options
/// from the current boot entry (`APPEND` in extlinux.conf, `options` in a
/// systemd-boot entry), so an update keeps what the install set.
pub fn current_options(conf: &str) -> Option<(String, String)> {
    let opts = conf.lines().find_map(|l| {
        let l = l.trim();
        let (k, v) = l.split_once(char::is_whitespace)?;
        (k.eq_ignore_ascii_case("append") || k == "options").then(|| v.trim().to_string())
    })?;
    let mut uuid = None;
    let mut seen_ro = false;
    let mut rest = Vec::new();
    for w in opts.split_whitespace() {
        if let Some(u) = w.strip_prefix("root=").filter(|u| stable_root(u)) {
            uuid = Some(u.to_string());
        } else if w == "ro" && !seen_ro {
            seen_ro = true;
        } else {
            rest.push(w);
        }
    }
    Some((uuid?, rest.join(" ")))
}

/// The `LINUX` path of an extlinux.conf.
pub fn extlinux_kernel(conf: &str) -> Option<&str> {
    conf.lines().find_map(|l| {
        let (k, v) = l.trim().split_once(char::is_whitespace)?;
        (k.eq_ignore_ascii_case("linux") || k.eq_ignore_ascii_case("kernel")).then(|| v.trim())
    })
}

/// Whether extlinux.conf boots another kernel than the newest one in /boot: an
/// earlier sync copied /boot and then failed, so this run's itemized output no
/// longer shows the change.
pub(super) fn extlinux_stale(root: &Path) -> bool {
    let conf =
        std::fs::read_to_string(in_root(root, bootloader::EXTLINUX_CONF)).unwrap_or_default();
    match (extlinux_kernel(&conf), bootloader::find_kernel(root)) {
        (Some(cur), Ok(k)) => cur != bootloader::boot_relative(root, k).kernel,
        _ => false,
    }
}

/// Where the node's bootloader lives, for re-pointing it at a new kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootTarget {
    Extlinux,
    /// systemd-boot on the ESP partition `dev`.
    SdBoot {
        dev: String,
    },
    None(String),
}

/// The ESP next to the root file system: a sibling partition whose GPT name is
/// the one the installer gave it.
fn find_esp(root: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(root).ok()?.dev();
    let (maj, min) = (libc::major(dev), libc::minor(dev));
    let part = std::fs::canonicalize(format!("/sys/dev/block/{maj}:{min}")).ok()?;
    let disk = part.parent()?;
    let want = format!("PARTNAME={}", layout::GPT_ESP_NAME);
    std::fs::read_dir(disk).ok()?.flatten().find_map(|e| {
        let uevent = std::fs::read_to_string(e.path().join("uevent")).ok()?;
        if !uevent.lines().any(|l| l == want) {
            return None;
        }
        let name = uevent.lines().find_map(|l| l.strip_prefix("DEVNAME="))?;
        Some(format!("/dev/{name}"))
    })
}

pub fn boot_target(root: &Path) -> BootTarget {
    if in_root(root, bootloader::EXTLINUX_CONF).exists() {
        return BootTarget::Extlinux;
    }
    // Only a real root has a firmware and an ESP to look for.
    if root == Path::new("/") && Path::new("/sys/firmware/efi").exists() {
        if let Some(dev) = find_esp(root) {
            return BootTarget::SdBoot { dev };
        }
        return BootTarget::None(
            "UEFI, but no partition named \"EFI system partition\" next to the root".into(),
        );
    }
    BootTarget::None(format!("no {}", bootloader::EXTLINUX_CONF))
}

pub(super) fn update_bootloader(
    root: &Path,
    title: &str,
    serial: u64,
) -> Result<String, SyncError> {
    let boot = |source| SyncError::Boot { serial, source };
    match boot_target(root) {
        BootTarget::Extlinux => {
            let conf = in_root(root, bootloader::EXTLINUX_CONF);
            let text = std::fs::read_to_string(&conf).map_err(io("read", &conf))?;
            let (uuid, cmdline) = current_options(&text).ok_or_else(|| {
                SyncError::BootConfig(format!(
                    "{} has no APPEND line with root=UUID= (or root=/dev/mapper/ for LVM); fix it by hand or reinstall the node",
                    conf.display()
                ))
            })?;
            let k = bootloader::write_extlinux_conf(root, title, &uuid, &cmdline).map_err(boot)?;
            Ok(format!("extlinux.conf now boots {}", k.kernel))
        }
        BootTarget::SdBoot { dev } => {
            let esp = Path::new(paths::ESP_MOUNT);
            std::fs::create_dir_all(esp).map_err(io("create directory", esp))?;
            crate::sys::mount(&dev, esp, "vfat", nix::mount::MsFlags::empty(), None)
                .map_err(|e| boot(e.into()))?;
            let result = (|| {
                let entry = in_root(esp, bootloader::SDBOOT_ENTRY);
                let text = std::fs::read_to_string(&entry).map_err(io("read", &entry))?;
                let (uuid, cmdline) = current_options(&text).ok_or_else(|| {
                    SyncError::BootConfig(format!(
                        "{} on {dev} has no options line with root=UUID= (or root=/dev/mapper/ for LVM)",
                        bootloader::SDBOOT_ENTRY
                    ))
                })?;
                bootloader::write_sdboot_kernel(root, esp, title, &uuid, &cmdline).map_err(boot)
            })();
            crate::sys::sync();
            crate::sys::umount_tree(esp);
            Ok(format!(
                "systemd-boot on {dev} now boots {}",
                result?.kernel
            ))
        }
        BootTarget::None(why) => Err(SyncError::BootConfig(format!(
            "/boot changed but no bootloader to update ({why}); the new kernel would not boot"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(s: &[&str]) -> Vec<String> {
        s.iter().map(|l| l.to_string()).collect()
    }

    #[test]
    fn boot_changes_need_a_file_change_under_boot() {
        assert!(boot_changed(&lines(&[">f+++++++++ boot/vmlinuz-6.1"])));
        assert!(boot_changed(&lines(&["*deleting   boot/initrd.img-6.0"])));
        assert!(boot_changed(&lines(&["cL+++++++++ boot/vmlinuz -> x"])));
        assert!(boot_changed(&lines(&[">f.st...... boot/config"])));
        assert!(!boot_changed(&lines(&[".d..t...... boot/"])));
        assert!(!boot_changed(&lines(&["cd+++++++++ boot/grub/"])));
        assert!(!boot_changed(&lines(&[".f...p..... boot/vmlinuz-6.1"])));
        assert!(!boot_changed(&lines(&[">f+++++++++ etc/boot/x"])));
        assert!(!boot_changed(&lines(&[">f+++++++++ bootstrap"])));
        assert!(!boot_changed(&lines(&["Total bytes received: 5"])));
    }

    #[test]
    fn keeps_root_uuid_and_options_from_the_current_entry() {
        let conf = "DEFAULT rollout\nLABEL rollout\n  LINUX /boot/vmlinuz-1\n  APPEND root=UUID=abc-1 ro console=ttyS0 quiet\n";
        assert_eq!(
            current_options(conf),
            Some(("UUID=abc-1".into(), "console=ttyS0 quiet".into()))
        );
        let entry = "title t\nlinux /rollout/vmlinuz\noptions root=UUID=u2 ro\n";
        assert_eq!(
            current_options(entry),
            Some(("UUID=u2".into(), String::new()))
        );
        // An LVM root is named by its device-mapper path.
        assert_eq!(
            current_options("APPEND root=/dev/mapper/vg0-root ro quiet"),
            Some(("/dev/mapper/vg0-root".into(), "quiet".into()))
        );
        assert_eq!(current_options("APPEND ro quiet"), None);
        assert_eq!(
            current_options("APPEND root=/dev/sda1 ro"),
            None,
            "a kernel disk name is not what an install writes"
        );
        assert_eq!(extlinux_kernel(conf), Some("/boot/vmlinuz-1"));
        assert_eq!(extlinux_kernel("DEFAULT x\n"), None);
    }
}
