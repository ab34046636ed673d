//! Firmware the shipped modules ask for: each module's `.modinfo` names it
//! (`MODULE_FIRMWARE`, what `modinfo -F firmware` prints), and Debian's firmware
//! packages (firmware-misc-nonfree, firmware-bnx2x, firmware-realtek, …) put it
//! under /lib/firmware when installed. A NIC such as bnx2x or a Realtek chip that
//! needs a blob fails to come up without it, so the initramfs carries whatever
//! of it the build host has; what it lacks is counted in the report.

use super::elf;
use crate::kernel::alias::glob_match;
use std::collections::BTreeSet;
use std::path::Path;

/// The `firmware=` entries of a `.modinfo` section (NUL-separated `key=value`).
pub fn declared(modinfo: &[u8]) -> Vec<String> {
    modinfo
        .split(|&b| b == 0)
        .filter_map(|kv| kv.strip_prefix(b"firmware="))
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .filter(|v| !v.is_empty())
        .collect()
}

/// The firmware a module file declares; a file that is not a readable ELF
/// module declares none.
pub fn of_module(ko: &[u8]) -> Vec<String> {
    match elf::section(ko, ".modinfo") {
        Ok(Some(s)) => declared(s),
        _ => Vec::new(),
    }
}

/// The files under `root` that provide firmware `name`, relative to `root`: the
/// file itself and its `.xz` form (the kernel's loader tries `NAME.xz` too,
/// CONFIG_FW_LOADER_COMPRESS), or every file its glob matches in its directory
/// (a few drivers declare `vendor/chip-*.bin`). Sorted, so builds are repeatable.
pub fn provided(root: &Path, name: &str) -> Vec<String> {
    let mut out = BTreeSet::new();
    if name.contains(['*', '?', '[']) {
        let (dir, file) = name.rsplit_once('/').unwrap_or(("", name));
        if let Ok(rd) = std::fs::read_dir(root.join(dir)) {
            for e in rd.filter_map(|e| e.ok()) {
                let f = e.file_name().to_string_lossy().into_owned();
                let plain = f.strip_suffix(".xz").unwrap_or(&f);
                if glob_match(file, plain) && e.path().is_file() {
                    out.insert(if dir.is_empty() {
                        f
                    } else {
                        format!("{dir}/{f}")
                    });
                }
            }
        }
    } else {
        for candidate in [name.to_string(), format!("{name}.xz")] {
            if root.join(&candidate).is_file() {
                out.insert(candidate);
            }
        }
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modinfo_firmware_entries() {
        let info = b"license=GPL\0firmware=rtl_nic/rtl8168d-1.fw\0\0alias=pci:v*\0firmware=rtl_nic/rtl8125a-3.fw\0firmware=\0";
        assert_eq!(
            declared(info),
            ["rtl_nic/rtl8168d-1.fw", "rtl_nic/rtl8125a-3.fw"]
        );
        assert!(of_module(b"not an elf").is_empty());
    }

    #[test]
    fn a_real_module_declares_its_firmware() {
        // Debian's r8169 declares its Realtek blobs. Without that kernel this
        // skips, and fails where a skip is not allowed (CI, scripts/test.sh).
        let Some(ver) = crate::bootfiles::default_kernel_version() else {
            testkit::prereq::missing(
                "no kernel in /lib/modules (Debian package linux-image-amd64)",
            );
            return;
        };
        let path = format!("/lib/modules/{ver}/kernel/drivers/net/ethernet/realtek/r8169.ko");
        if !testkit::prereq::require_file(&path, "linux-image-amd64") {
            return;
        }
        let bytes = std::fs::read(&path).unwrap();
        let fw = of_module(&bytes);
        assert!(
            fw.iter().any(|f| f.starts_with("rtl_nic/")),
            "{path}: {fw:?}"
        );
    }

    #[test]
    fn provided_files_plain_compressed_and_globbed() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("rtl_nic")).unwrap();
        std::fs::create_dir_all(r.join("bnx2x")).unwrap();
        std::fs::write(r.join("rtl_nic/rtl8168d-1.fw"), b"a").unwrap();
        std::fs::write(r.join("rtl_nic/rtl8125a-3.fw.xz"), b"b").unwrap();
        std::fs::write(r.join("bnx2x/bnx2x-e2-7.13.21.0.fw"), b"c").unwrap();
        std::fs::write(r.join("bnx2x/bnx2x-e1-7.13.21.0.fw"), b"d").unwrap();
        std::fs::write(r.join("bnx2x/README"), b"e").unwrap();
        assert_eq!(
            provided(r, "rtl_nic/rtl8168d-1.fw"),
            ["rtl_nic/rtl8168d-1.fw"]
        );
        assert_eq!(
            provided(r, "rtl_nic/rtl8125a-3.fw"),
            ["rtl_nic/rtl8125a-3.fw.xz"]
        );
        assert!(provided(r, "rtl_nic/absent.fw").is_empty());
        assert_eq!(
            provided(r, "bnx2x/bnx2x-e*.fw"),
            ["bnx2x/bnx2x-e1-7.13.21.0.fw", "bnx2x/bnx2x-e2-7.13.21.0.fw"]
        );
    }
}
