//! Making the installed disk bootable: extlinux + gptmbr.bin on BIOS,
//! systemd-boot on UEFI. Both boot the image's own kernel and initrd.

use crate::fileop::{io, FileError};
use std::path::{Path, PathBuf};

use crate::{partition, paths, sys};

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("the image has no kernel: no /boot/vmlinuz-* and no /vmlinuz symlink; install a kernel package in the golden image")]
    NoKernel,
    #[error(transparent)]
    Io(#[from] FileError),
    #[error(transparent)]
    Sys(#[from] sys::SysError),
    #[error(transparent)]
    Partition(#[from] partition::PartitionError),
}

/// Kernel and initrd as paths inside the installed root (`/boot/vmlinuz-…`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelPair {
    pub kernel: String,
    pub initrd: Option<String>,
}

/// Resolves a symlink like `/vmlinuz → boot/vmlinuz-6.1.0-13-amd64` to a path
/// inside the image.
fn resolve_in_image(root: &Path, link: &str) -> Option<String> {
    let p = root.join(link.trim_start_matches('/'));
    let target = std::fs::read_link(&p).ok()?;
    let resolved = if target.is_absolute() {
        target
    } else {
        Path::new(link)
            .parent()
            .unwrap_or(Path::new("/"))
            .join(target)
    };
    let s = resolved.to_string_lossy().to_string();
    root.join(s.trim_start_matches('/')).exists().then_some(s)
}

pub fn find_kernel(root: &Path) -> Result<KernelPair, BootError> {
    let boot = root.join("boot");
    let mut versions: Vec<String> = std::fs::read_dir(&boot)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().is_file())
                .filter_map(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .strip_prefix("vmlinuz-")
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    versions.sort_by(|a, b| rollout::kernel::compare_versions(b, a));
    let with_initrd = versions
        .iter()
        .find(|v| boot.join(format!("initrd.img-{v}")).exists());
    if let Some(v) = with_initrd.or(versions.first()) {
        let initrd = format!("/boot/initrd.img-{v}");
        return Ok(KernelPair {
            kernel: format!("/boot/vmlinuz-{v}"),
            initrd: root
                .join(initrd.trim_start_matches('/'))
                .exists()
                .then_some(initrd),
        });
    }
    for (k, i) in [
        ("/vmlinuz", "/initrd.img"),
        ("/boot/vmlinuz", "/boot/initrd.img"),
    ] {
        if let Some(kernel) = resolve_in_image(root, k) {
            return Ok(KernelPair {
                kernel,
                initrd: resolve_in_image(root, i),
            });
        }
    }
    Err(BootError::NoKernel)
}

/// `SERIAL 0 115200` when the kernel command line sends the console to ttyS0, so
/// the boot menu shows up where the kernel's output will.
pub fn serial_directive(cmdline: &str) -> Option<String> {
    cmdline.split_whitespace().find_map(|w| {
        let dev = w.strip_prefix("console=ttyS")?;
        let (port, rest) = dev.split_once(',').unwrap_or((dev, "115200"));
        let port: u8 = port.parse().ok()?;
        let baud: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        let baud = if baud.is_empty() {
            "115200".into()
        } else {
            baud
        };
        Some(format!("SERIAL {port} {baud}"))
    })
}

/// `root` is what follows `root=`: `UUID=…` for a filesystem on a partition or
/// an md array, `/dev/mapper/VG-LV` for a logical volume.
pub fn kernel_options(root: &str, extra: &str) -> String {
    let extra = extra.trim();
    if extra.is_empty() {
        format!("root={root} ro")
    } else {
        format!("root={root} ro {extra}")
    }
}

/// The kernel and initrd as extlinux finds them: paths on the filesystem it
/// is installed in, so without `/boot` when `/boot` is its own filesystem.
pub fn boot_relative(target: &Path, k: KernelPair) -> KernelPair {
    use std::os::unix::fs::MetadataExt;
    let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
    let separate = dev(&target.join("boot")).is_some() && dev(&target.join("boot")) != dev(target);
    if !separate {
        return k;
    }
    let strip = |p: String| match p.strip_prefix("/boot/") {
        Some(rest) => format!("/{rest}"),
        None => p,
    };
    KernelPair {
        kernel: strip(k.kernel),
        initrd: k.initrd.map(strip),
    }
}

pub fn extlinux_conf(k: &KernelPair, title: &str, root: &str, cmdline: &str) -> String {
    let mut s = String::from("# Written by rollout-installer.\n");
    if let Some(serial) = serial_directive(cmdline) {
        s.push_str(&serial);
        s.push('\n');
    }
    s.push_str("DEFAULT rollout\nPROMPT 0\nTIMEOUT 10\n\nLABEL rollout\n");
    s.push_str(&format!("  MENU LABEL {title}\n  LINUX {}\n", k.kernel));
    if let Some(i) = &k.initrd {
        s.push_str(&format!("  INITRD {i}\n"));
    }
    s.push_str(&format!("  APPEND {}\n", kernel_options(root, cmdline)));
    s
}

pub const ESP_KERNEL: &str = "/rollout/vmlinuz";
pub const ESP_INITRD: &str = "/rollout/initrd.img";

pub fn sdboot_entry(title: &str, has_initrd: bool, root: &str, cmdline: &str) -> String {
    let mut s = format!("title {title}\nlinux {ESP_KERNEL}\n");
    if has_initrd {
        s.push_str(&format!("initrd {ESP_INITRD}\n"));
    }
    s.push_str(&format!("options {}\n", kernel_options(root, cmdline)));
    s
}

pub fn loader_conf() -> String {
    "default rollout.conf\ntimeout 3\nconsole-mode keep\n".into()
}

fn copy(from: &Path, to: &Path) -> Result<(), BootError> {
    if let Some(p) = to.parent() {
        std::fs::create_dir_all(p).map_err(io("create directory", p))?;
    }
    std::fs::copy(from, to).map_err(io("copy to", to))?;
    Ok(())
}

fn in_root(root: &Path, p: &str) -> PathBuf {
    root.join(p.trim_start_matches('/'))
}

pub const EXTLINUX_CONF: &str = "/boot/extlinux/extlinux.conf";
pub const SDBOOT_ENTRY: &str = "/loader/entries/rollout.conf";

/// Writes `file` through a temporary sibling and a rename, so a crash leaves the
/// old or the new contents, never half of one (the node must stay bootable).
pub fn write_atomic(file: &Path, contents: &[u8]) -> Result<(), BootError> {
    let tmp = file.with_extension("rollout-tmp");
    std::fs::write(&tmp, contents).map_err(io("write", &tmp))?;
    std::fs::rename(&tmp, file).map_err(|e| io("rename into place", file)(e).into())
}

/// (Re)writes extlinux.conf for the newest kernel in `target`; extlinux must be
/// installed in `target/boot/extlinux` already.
pub fn write_extlinux_conf(
    target: &Path,
    title: &str,
    root: &str,
    cmdline: &str,
) -> Result<KernelPair, BootError> {
    let k = boot_relative(target, find_kernel(target)?);
    let conf = in_root(target, EXTLINUX_CONF);
    write_atomic(&conf, extlinux_conf(&k, title, root, cmdline).as_bytes())?;
    Ok(k)
}

/// BIOS: extlinux in /boot/extlinux (on the root filesystem or /boot's own),
/// gptmbr.bin in the MBR of every disk given (each member disk of a mirror, so
/// either boots alone).
pub fn install_extlinux(
    target: &Path,
    disks: &[&Path],
    title: &str,
    root: &str,
    cmdline: &str,
) -> Result<String, BootError> {
    let dir = target.join("boot/extlinux");
    std::fs::create_dir_all(&dir).map_err(io("create directory", &dir))?;
    sys::run(paths::EXTLINUX, &["--install", &dir.to_string_lossy()])?;
    let k = write_extlinux_conf(target, title, root, cmdline)?;
    for m in paths::EXTLINUX_C32 {
        let src = Path::new(paths::SYSLINUX_BIOS_MODULES).join(m);
        if src.exists() {
            copy(&src, &dir.join(m))?;
        }
    }
    let mbr = std::fs::read(paths::GPTMBR_BIN).map_err(io("read", Path::new(paths::GPTMBR_BIN)))?;
    for disk in disks {
        partition::write_mbr_bootcode(disk, &mbr)?;
    }
    let names: Vec<String> = disks.iter().map(|d| d.display().to_string()).collect();
    Ok(format!(
        "extlinux in /boot/extlinux, gptmbr.bin on {}, kernel {}",
        names.join(" and "),
        k.kernel
    ))
}

/// UEFI: systemd-boot as the removable-media loader, kernel and initrd copied to
/// the ESP (mounted at `esp`).
pub fn install_sdboot(
    target: &Path,
    esp: &Path,
    title: &str,
    root: &str,
    cmdline: &str,
) -> Result<String, BootError> {
    let efi = Path::new(paths::SYSTEMD_BOOT_EFI);
    copy(efi, &esp.join("EFI/BOOT/BOOTX64.EFI"))?;
    copy(efi, &esp.join("EFI/systemd/systemd-bootx64.efi"))?;
    let loader = esp.join("loader/loader.conf");
    std::fs::create_dir_all(esp.join("loader/entries")).map_err(io("create directory", &loader))?;
    std::fs::write(&loader, loader_conf()).map_err(io("write", &loader))?;
    let k = write_sdboot_kernel(target, esp, title, root, cmdline)?;
    Ok(format!("systemd-boot on the ESP, kernel {}", k.kernel))
}

/// Copies the newest kernel and initrd of `target` to the ESP and (re)writes the
/// loader entry; systemd-boot itself must be on the ESP already.
pub fn write_sdboot_kernel(
    target: &Path,
    esp: &Path,
    title: &str,
    root: &str,
    cmdline: &str,
) -> Result<KernelPair, BootError> {
    let k = find_kernel(target)?;
    copy(&in_root(target, &k.kernel), &in_root(esp, ESP_KERNEL))?;
    if let Some(i) = &k.initrd {
        copy(&in_root(target, i), &in_root(esp, ESP_INITRD))?;
    }
    let entry = in_root(esp, SDBOOT_ENTRY);
    if let Some(p) = entry.parent() {
        std::fs::create_dir_all(p).map_err(io("create directory", p))?;
    }
    write_atomic(
        &entry,
        sdboot_entry(title, k.initrd.is_some(), root, cmdline).as_bytes(),
    )?;
    Ok(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: &str = "UUID=0f3c2a7e-1b2d-4c5e-8f90-123456789abc";

    fn golden(name: &str) -> String {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    #[test]
    fn extlinux_conf_matches_golden_file() {
        let k = KernelPair {
            kernel: "/boot/vmlinuz-6.1.0-56-amd64".into(),
            initrd: Some("/boot/initrd.img-6.1.0-56-amd64".into()),
        };
        let got = extlinux_conf(&k, "default serial 7", UUID, "console=ttyS0,115200n8 quiet");
        assert_eq!(got, golden("extlinux.conf"));
    }

    #[test]
    fn sdboot_entry_matches_golden_file() {
        let got = sdboot_entry("default serial 7", true, UUID, "console=ttyS0");
        assert_eq!(got, golden("rollout-sdboot-entry.conf"));
        assert!(!sdboot_entry("t", false, UUID, "").contains("initrd"));
        assert!(sdboot_entry("t", false, UUID, "")
            .ends_with("options root=UUID=0f3c2a7e-1b2d-4c5e-8f90-123456789abc ro\n"));
    }

    #[test]
    fn serial_directive_follows_console() {
        assert_eq!(
            serial_directive("quiet console=ttyS1,9600n8").as_deref(),
            Some("SERIAL 1 9600")
        );
        assert_eq!(
            serial_directive("console=ttyS0").as_deref(),
            Some("SERIAL 0 115200")
        );
        assert_eq!(serial_directive("console=tty0"), None);
        let k = KernelPair {
            kernel: "/k".into(),
            initrd: None,
        };
        let c = extlinux_conf(&k, "t", UUID, "");
        assert!(!c.contains("SERIAL") && !c.contains("INITRD"), "{c}");
        let c = extlinux_conf(&k, "t", "/dev/mapper/vg0-root", "");
        assert!(c.contains("APPEND root=/dev/mapper/vg0-root ro\n"), "{c}");
    }

    #[test]
    fn finds_newest_kernel_with_initrd_or_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        std::fs::create_dir_all(r.join("boot")).unwrap();
        for f in [
            "vmlinuz-6.1.0-9-amd64",
            "initrd.img-6.1.0-9-amd64",
            "vmlinuz-6.1.0-10-amd64",
            "initrd.img-6.1.0-10-amd64",
            "vmlinuz-6.1.0-11-amd64",
        ] {
            std::fs::write(r.join("boot").join(f), "x").unwrap();
        }
        let k = find_kernel(r).unwrap();
        assert_eq!(
            k.kernel, "/boot/vmlinuz-6.1.0-10-amd64",
            "newest with an initrd wins"
        );
        assert_eq!(k.initrd.as_deref(), Some("/boot/initrd.img-6.1.0-10-amd64"));

        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        std::fs::create_dir_all(r.join("opt/k")).unwrap();
        std::fs::write(r.join("opt/k/bzImage"), "x").unwrap();
        std::os::unix::fs::symlink("opt/k/bzImage", r.join("vmlinuz")).unwrap();
        let k = find_kernel(r).unwrap();
        assert_eq!((k.kernel.as_str(), k.initrd), ("/opt/k/bzImage", None));
        assert!(matches!(
            find_kernel(tempfile::tempdir().unwrap().path()),
            Err(BootError::NoKernel)
        ));
    }
}
