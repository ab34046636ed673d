//! A minimal initramfs for boot tests: a newc cpio whose /init is a busybox
//! script that announces itself on the console and powers the node off. It
//! proves DHCP → iPXE → HTTP → kernel → initramfs works without the real
//! installer.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// What the probe prints; the same line the real installer prints first.
pub const STARTING: &str = "rollout-installer: starting";

/// One entry of a newc archive.
#[derive(Debug, Clone)]
pub enum Entry {
    Dir(String),
    File {
        path: String,
        mode: u32,
        data: Vec<u8>,
    },
    Symlink {
        path: String,
        target: String,
    },
    CharDev {
        path: String,
        major: u32,
        minor: u32,
    },
}

/// Encodes `entries` as an uncompressed SVR4 "newc" cpio archive (the format
/// the kernel unpacks into the initramfs), ending with the trailer.
pub fn newc(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let ino = i as u32 + 1;
        let (path, mode, data, rdev): (&str, u32, &[u8], (u32, u32)) = match e {
            Entry::Dir(p) => (p, 0o040755, &[], (0, 0)),
            Entry::File { path, mode, data } => (path, 0o100000 | mode, data, (0, 0)),
            Entry::Symlink { path, target } => (path, 0o120777, target.as_bytes(), (0, 0)),
            Entry::CharDev { path, major, minor } => (path, 0o020600, &[], (*major, *minor)),
        };
        let nlink = if matches!(e, Entry::Dir(_)) { 2 } else { 1 };
        push_entry(&mut out, ino, mode, nlink, path, data, rdev);
    }
    push_entry(&mut out, 0, 0, 1, "TRAILER!!!", &[], (0, 0));
    out
}

fn push_entry(
    out: &mut Vec<u8>,
    ino: u32,
    mode: u32,
    nlink: u32,
    path: &str,
    data: &[u8],
    rdev: (u32, u32),
) {
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime
        data.len() as u32,
        0, // devmajor
        0, // devminor
        rdev.0,
        rdev.1,
        path.len() as u32 + 1,
        0, // check
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08X}").as_bytes());
    }
    out.extend_from_slice(path.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    let pad = (4 - out.len() % 4) % 4;
    out.resize(out.len() + pad, 0);
}

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
pub fn busybox_skeleton(busybox: &Path) -> Result<Vec<Entry>> {
    let bb = std::fs::read(busybox).ctx("reading busybox (install busybox-static)", busybox)?;
    Ok(vec![
        Entry::Dir("bin".into()),
        Entry::Dir("dev".into()),
        Entry::Dir("proc".into()),
        Entry::Dir("sys".into()),
        // The kernel opens /dev/console for /init before anything mounts devtmpfs.
        Entry::CharDev {
            path: "dev/console".into(),
            major: 5,
            minor: 1,
        },
        Entry::File {
            path: "bin/busybox".into(),
            mode: 0o755,
            data: bb,
        },
    ])
}

/// Builds the probe initramfs around a static busybox.
pub fn probe_initramfs(busybox: &Path) -> Result<Vec<u8>> {
    let mut entries = busybox_skeleton(busybox)?;
    entries.push(Entry::Symlink {
        path: "bin/sh".into(),
        target: "busybox".into(),
    });
    entries.push(Entry::File {
        path: "init".into(),
        mode: 0o755,
        data: probe_init_script().into_bytes(),
    });
    Ok(newc(&entries))
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
    use std::process::{Command, Stdio};

    #[test]
    fn newc_layout_is_aligned_and_terminated() {
        let a = newc(&[Entry::File {
            path: "init".into(),
            mode: 0o755,
            data: b"abc".to_vec(),
        }]);
        assert!(a.starts_with(b"070701"));
        assert_eq!(a.len() % 4, 0);
        let text = String::from_utf8_lossy(&a);
        assert!(text.contains("TRAILER!!!"));
        // header (110) + "init\0" (5) padded to 116, then "abc" padded to 120.
        assert_eq!(&a[116..119], b"abc");
    }

    /// Cross-checks the encoder against GNU cpio when it is installed.
    #[test]
    fn gnu_cpio_reads_our_archive() {
        if !testkit::prereq::require_tools(&[("cpio", "cpio")]) {
            return;
        }
        let a = newc(&[
            Entry::Dir("bin".into()),
            Entry::File {
                path: "bin/tool".into(),
                mode: 0o755,
                data: b"hello\n".to_vec(),
            },
            Entry::Symlink {
                path: "bin/sh".into(),
                target: "tool".into(),
            },
            Entry::CharDev {
                path: "dev/console".into(),
                major: 5,
                minor: 1,
            },
        ]);
        let mut child = Command::new("cpio")
            .args(["-t", "-v", "-H", "newc"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&a).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(listing.contains("bin/tool"), "{listing}");
        assert!(listing.contains("bin/sh -> tool"), "{listing}");
        assert!(listing.contains("crw-------"), "{listing}");
        assert!(listing.contains("5,"), "{listing}");
    }
}
