//! A minimal initramfs for boot tests: a newc cpio whose /init is a busybox
//! script that announces itself on the console and powers the node off. It
//! proves DHCP → iPXE → HTTP → kernel → initramfs works without the real
//! installer.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use rollout::cpio::Archive;

/// What the probe prints; the same line the real installer prints first.
pub const STARTING: &str = "rollout-installer: starting";

/// The probe's /init: print [`STARTING`] and the kernel command line, power off.
pub fn probe_init_script() -> String {
    format!(
        "#!/bin/busybox sh\n\
         /bin/busybox mount -t proc proc /proc\n\
         echo \"{STARTING} (probe initramfs)\"\n\
         echo \"probe: cmdline: $(/bin/busybox cat /proc/cmdline)\"\n\
         /bin/busybox sleep 1\n\
         /bin/busybox poweroff -f\n"
    )
}

/// The bones of a busybox initramfs: /bin, /dev, /proc, /sys, the console node and
/// a static busybox. Callers add their /init (and whatever else they need).
pub fn busybox_skeleton(busybox: &Path) -> Result<Archive> {
    let bb = std::fs::read(busybox).ctx("reading busybox (install busybox-static)", busybox)?;
    let mut a = Archive::new();
    for d in ["bin", "dev", "proc", "sys"] {
        a.add_dir(d, 0o755);
    }
    // The kernel opens /dev/console for /init before anything mounts devtmpfs.
    a.add_char_dev("dev/console", 0o600, 5, 1);
    a.add_file("bin/busybox", 0o755, bb);
    Ok(a)
}

/// Builds the probe initramfs around a static busybox.
pub fn probe_initramfs(busybox: &Path) -> Result<Vec<u8>> {
    let mut a = busybox_skeleton(busybox)?;
    a.add_symlink("bin/sh", "busybox");
    a.add_file("init", 0o755, probe_init_script().into_bytes());
    Ok(a.to_bytes())
}

/// The newest `/boot/vmlinuz-*` on this machine.
pub fn host_kernel() -> Result<PathBuf> {
    let mut ks: Vec<PathBuf> = fs::read_dir("/boot")
        .ctx("listing kernels", "/boot")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .collect();
    ks.sort();
    ks.pop().ok_or_else(|| Error::MissingTool {
        tool: "/boot/vmlinuz-*".into(),
        hint: "install linux-image-amd64 (scripts/setup.sh does)".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::{Command, Stdio};

    /// The probe as GNU cpio reads it: what the kernel needs before /init runs.
    #[test]
    fn probe_initramfs_holds_init_shell_and_console() {
        if !testkit::prereq::require_tools(&[("cpio", "cpio")]) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let bb = dir.path().join("busybox");
        fs::write(&bb, b"not really busybox").unwrap();
        let bytes = probe_initramfs(&bb).unwrap();
        let mut child = Command::new("cpio")
            .args(["-t", "-v", "-H", "newc", "--quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&bytes).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(listing.contains("bin/sh -> busybox"), "{listing}");
        assert!(
            listing
                .lines()
                .any(|l| l.starts_with("crw-------") && l.ends_with("dev/console")),
            "{listing}"
        );
        assert!(
            listing
                .lines()
                .any(|l| l.starts_with("-rwxr-xr-x") && l.ends_with(" init")),
            "{listing}"
        );
        assert!(
            listing.lines().any(|l| l.ends_with(" bin/busybox")),
            "{listing}"
        );
    }
}
