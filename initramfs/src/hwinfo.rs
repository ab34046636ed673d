//! The hardware inventory sent with the plan request: CPU (/proc/cpuinfo),
//! memory (/proc/meminfo), disks (/sys/block), NICs (/sys/class/net), firmware
//! mode (/sys/firmware/efi) and DMI identity (/sys/class/dmi/id). Every reader
//! takes the root it reads under, so the tests run on fixture trees; a value
//! the machine does not expose stays empty.

use rollout::wire::hardware::{Cpu, Disk, Hardware, Nic, System};
use std::path::Path;

/// `model name` of the first processor and the number of `processor` entries
/// (logical CPUs).
pub fn parse_cpuinfo(text: &str) -> Cpu {
    let mut cpu = Cpu::default();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        match k.trim() {
            "processor" => cpu.count += 1,
            "model name" if cpu.model.is_empty() => cpu.model = v.trim().to_string(),
            _ => {}
        }
    }
    cpu
}

/// `MemTotal` in MiB (0 when absent).
pub fn parse_meminfo(text: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            let rest = l.strip_prefix("MemTotal:")?;
            let kb: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
            Some(kb / 1024)
        })
        .unwrap_or(0)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Block devices that are not disks: loop, RAM and compressed-RAM disks,
/// device-mapper and md arrays (built from disks listed on their own), optical
/// and floppy drives.
fn is_virtual_block(name: &str) -> bool {
    ["loop", "ram", "zram", "dm-", "md", "sr", "fd", "nbd"]
        .iter()
        .any(|p| name.starts_with(p))
}

/// The disks under `sys_block` (`/sys/block`), by name.
pub fn disks(sys_block: &Path) -> Vec<Disk> {
    let Ok(rd) = std::fs::read_dir(sys_block) else {
        return vec![];
    };
    let mut out: Vec<Disk> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if is_virtual_block(&name) {
                return None;
            }
            let dir = e.path();
            // `size` counts 512-byte sectors whatever the device's block size.
            let sectors: u64 = read(&dir.join("size")).parse().ok()?;
            if sectors == 0 {
                return None;
            }
            // NVMe and virtio have a `serial` file; SCSI and SATA disks (libata
            // answers as SCSI) have it in VPD page 0x80, "Unit Serial Number".
            let serial = [dir.join("device/serial"), dir.join("serial")]
                .iter()
                .map(|p| read(p))
                .find(|s| !s.is_empty())
                .or_else(|| {
                    std::fs::read(dir.join("device/vpd_pg80"))
                        .ok()
                        .and_then(|page| vpd_unit_serial(&page))
                })
                .unwrap_or_default();
            Some(Disk {
                model: read(&dir.join("device/model")),
                serial,
                size_bytes: sectors * 512,
                rotational: read(&dir.join("queue/rotational")) == "1",
                name,
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The serial number in a SCSI VPD page 0x80 (a 4-byte header whose last two
/// bytes are the length, then ASCII, often space-padded).
pub fn vpd_unit_serial(page: &[u8]) -> Option<String> {
    if page.len() < 4 || page[1] != 0x80 {
        return None;
    }
    let len = u16::from_be_bytes([page[2], page[3]]) as usize;
    let text = page.get(4..4 + len.min(page.len() - 4))?;
    let serial: String = String::from_utf8_lossy(text)
        .trim_matches(|c: char| c.is_whitespace() || c == '\0')
        .to_string();
    (!serial.is_empty()).then_some(serial)
}

/// The physical NICs under `sys_class_net` (those with a `device`), by name.
pub fn nics(sys_class_net: &Path) -> Vec<Nic> {
    let Ok(rd) = std::fs::read_dir(sys_class_net) else {
        return vec![];
    };
    let mut out: Vec<Nic> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let dir = e.path();
            if !dir.join("device").exists() {
                return None;
            }
            let driver = std::fs::read_link(dir.join("device/driver"))
                .ok()
                .and_then(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()))
                .unwrap_or_default();
            // `speed` is -1 (or unreadable) without a link.
            let speed_mbps = read(&dir.join("speed"))
                .parse::<i64>()
                .ok()
                .filter(|s| *s > 0)
                .and_then(|s| u32::try_from(s).ok());
            Some(Nic {
                name: e.file_name().to_string_lossy().into_owned(),
                mac: crate::net::permanent_mac(&dir).unwrap_or_default(),
                driver,
                speed_mbps,
                link: read(&dir.join("carrier")) == "1",
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Everything, read under `root` (`/` on the machine).
pub fn collect(root: &Path) -> Hardware {
    let dmi = root.join("sys/class/dmi/id");
    Hardware {
        cpu: parse_cpuinfo(&read(&root.join("proc/cpuinfo"))),
        memory_mib: parse_meminfo(&read(&root.join("proc/meminfo"))),
        disks: disks(&root.join("sys/block")),
        nics: nics(&root.join("sys/class/net")),
        firmware: if root.join("sys/firmware/efi").exists() {
            "uefi".into()
        } else {
            "bios".into()
        },
        system: System {
            vendor: read(&dmi.join("sys_vendor")),
            product: read(&dmi.join("product_name")),
            serial: read(&dmi.join("product_serial")),
        },
    }
}

/// One console line: what the server will be told.
pub fn summary(hw: &Hardware) -> String {
    format!(
        "{}, {} MiB, {} disk(s) (largest {} GiB), {} NIC(s), {}, {} {}",
        hw.cpu.describe(),
        hw.memory_mib,
        hw.disks.len(),
        hw.largest_disk_gib(),
        hw.nics.len(),
        hw.firmware,
        hw.system.vendor,
        hw.system.product
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const CPUINFO: &str = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz\nflags\t\t: fpu vme\n\nprocessor\t: 1\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz\n\n";
    const MEMINFO: &str =
        "MemTotal:        8141240 kB\nMemFree:         7000000 kB\nMemAvailable:    7500000 kB\n";

    #[test]
    fn cpu_and_memory_from_proc() {
        let cpu = parse_cpuinfo(CPUINFO);
        assert_eq!(cpu.count, 2);
        assert_eq!(cpu.model, "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz");
        assert_eq!(parse_meminfo(MEMINFO), 7950);
        assert_eq!(parse_meminfo("MemFree: 1 kB\n"), 0);
        // arm64 has no `model name`: the count still holds.
        assert_eq!(
            parse_cpuinfo("processor\t: 0\nBogoMIPS\t: 50.00\n"),
            Cpu {
                model: String::new(),
                count: 1
            }
        );
    }

    fn put(root: &Path, path: &str, text: &str) {
        let p = root.join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    /// A fixture tree as a QEMU guest with an NVMe and a SATA disk, two NICs
    /// (one with link) and a loop device shows it.
    fn fixture(root: &Path) {
        put(root, "proc/cpuinfo", CPUINFO);
        put(root, "proc/meminfo", MEMINFO);
        put(root, "sys/block/nvme0n1/size", "209715200\n");
        put(
            root,
            "sys/block/nvme0n1/device/model",
            "QEMU NVMe Ctrl                          \n",
        );
        put(root, "sys/block/nvme0n1/device/serial", "deadbeef\n");
        put(root, "sys/block/nvme0n1/queue/rotational", "0\n");
        put(root, "sys/block/sda/size", "20971520\n");
        put(root, "sys/block/sda/device/model", "QEMU HARDDISK\n");
        std::fs::write(
            root.join("sys/block/sda/device/vpd_pg80"),
            b"\x00\x80\x00\x0drollout-node2",
        )
        .unwrap();
        put(root, "sys/block/sda/queue/rotational", "1\n");
        put(root, "sys/block/loop0/size", "100\n");
        put(root, "sys/block/sr0/size", "0\n");
        for (n, mac, carrier, speed) in [
            ("eth0", "52:54:00:AA:00:01\n", "1\n", "1000\n"),
            ("eth1", "52:54:00:aa:00:02\n", "0\n", "-1\n"),
        ] {
            put(root, &format!("sys/class/net/{n}/address"), mac);
            put(root, &format!("sys/class/net/{n}/carrier"), carrier);
            put(root, &format!("sys/class/net/{n}/speed"), speed);
            let dev = root.join(format!("sys/devices/pci0/{n}"));
            fs::create_dir_all(&dev).unwrap();
            fs::create_dir_all(root.join("sys/bus/pci/drivers/e1000e")).unwrap();
            std::os::unix::fs::symlink(root.join("sys/bus/pci/drivers/e1000e"), dev.join("driver"))
                .unwrap();
            std::os::unix::fs::symlink(&dev, root.join(format!("sys/class/net/{n}/device")))
                .unwrap();
        }
        put(root, "sys/class/net/lo/address", "00:00:00:00:00:00\n");
        put(root, "sys/class/dmi/id/sys_vendor", "QEMU\n");
        put(
            root,
            "sys/class/dmi/id/product_name",
            "Standard PC (Q35 + ICH9, 2009)\n",
        );
        put(root, "sys/class/dmi/id/product_serial", "SN-0042\n");
    }

    #[test]
    fn a_fixture_machine_is_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        fixture(dir.path());
        let hw = collect(dir.path());
        assert_eq!(hw.cpu.count, 2);
        assert_eq!(hw.memory_mib, 7950);
        assert_eq!(
            hw.disks,
            vec![
                Disk {
                    name: "nvme0n1".into(),
                    model: "QEMU NVMe Ctrl".into(),
                    serial: "deadbeef".into(),
                    size_bytes: 100 << 30,
                    rotational: false
                },
                Disk {
                    name: "sda".into(),
                    model: "QEMU HARDDISK".into(),
                    serial: "rollout-node2".into(),
                    size_bytes: 10 << 30,
                    rotational: true
                },
            ]
        );
        assert_eq!(
            hw.nics,
            vec![
                Nic {
                    name: "eth0".into(),
                    mac: "52:54:00:aa:00:01".into(),
                    driver: "e1000e".into(),
                    speed_mbps: Some(1000),
                    link: true
                },
                Nic {
                    name: "eth1".into(),
                    mac: "52:54:00:aa:00:02".into(),
                    driver: "e1000e".into(),
                    speed_mbps: None,
                    link: false
                },
            ]
        );
        assert_eq!(hw.firmware, "bios");
        assert_eq!(hw.system.vendor, "QEMU");
        assert_eq!(hw.system.product, "Standard PC (Q35 + ICH9, 2009)");
        assert_eq!(hw.system.serial, "SN-0042");
        fs::create_dir_all(dir.path().join("sys/firmware/efi")).unwrap();
        assert_eq!(collect(dir.path()).firmware, "uefi");
        assert_eq!(
            summary(&hw),
            "2 × Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz, 7950 MiB, 2 disk(s) (largest 100 GiB), 2 NIC(s), bios, QEMU Standard PC (Q35 + ICH9, 2009)"
        );
    }

    #[test]
    fn an_empty_tree_gives_an_empty_report() {
        let dir = tempfile::tempdir().unwrap();
        let hw = collect(dir.path());
        assert_eq!(hw.cpu.count, 0);
        assert!(hw.disks.is_empty() && hw.nics.is_empty());
        assert_eq!(hw.system, System::default());
    }

    /// This machine, read the way the installer reads a node.
    #[test]
    fn this_machine_has_cpus_and_memory() {
        let hw = collect(Path::new("/"));
        assert!(hw.cpu.count >= 1, "{hw:?}");
        assert!(hw.memory_mib > 0, "{hw:?}");
        assert!(hw.nics.iter().all(|n| !n.mac.is_empty()), "{hw:?}");
    }
}
