//! Which interface is the boot NIC: the one with the MAC the firmware booted
//! from (`rollout.mac`, or pxelinux's `BOOTIF=01-…`), whatever its name or
//! position among the node's NICs. The choice is a pure function over what
//! /sys/class/net shows; a miss names every interface seen.

use std::path::Path;

/// An interface as /sys/class/net shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    pub name: String,
    /// Lower-case, colon-separated.
    pub mac: String,
    /// The driver of its device (`device/driver`); `None` for virtual ones (lo, bonds, VLANs).
    pub driver: Option<String>,
    /// `carrier` as read; `None` while the interface is down.
    pub carrier: Option<bool>,
}

impl Nic {
    fn describe(&self) -> String {
        let link = match self.carrier {
            Some(true) => "link up",
            Some(false) => "no link",
            None => "down",
        };
        format!(
            "{} {} ({}, {link})",
            self.name,
            self.mac,
            self.driver.as_deref().unwrap_or("no driver")
        )
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("no network interface has the boot MAC {mac} (after {secs} s); interfaces seen: {seen}. Is the booting NIC's driver in the initramfs (see the load_modules lines), or did the firmware boot another NIC than rollout.mac/BOOTIF says?")]
pub struct NoBootNic {
    pub mac: String,
    pub secs: u64,
    pub seen: String,
}

/// The interface with `boot_mac`. Several can share it (a VLAN or bond on top of
/// the NIC); the one backed by a device driver is the NIC itself.
pub fn choose<'a>(nics: &'a [Nic], boot_mac: &str) -> Option<&'a Nic> {
    let mac = boot_mac.to_ascii_lowercase();
    let mut same: Vec<&Nic> = nics.iter().filter(|n| n.mac == mac).collect();
    same.sort_by_key(|n| (n.driver.is_none(), n.name.clone()));
    same.first().copied()
}

/// The error for a miss: every interface seen, with MAC, driver and link.
pub fn no_boot_nic(nics: &[Nic], boot_mac: &str, secs: u64) -> NoBootNic {
    let seen: Vec<String> = nics
        .iter()
        .filter(|n| n.name != "lo")
        .map(Nic::describe)
        .collect();
    NoBootNic {
        mac: boot_mac.to_string(),
        secs,
        seen: if seen.is_empty() {
            "none (no NIC driver claimed a device)".into()
        } else {
            seen.join(", ")
        },
    }
}

/// Every interface under `sys_class_net` (/sys/class/net), by name.
pub fn list(sys_class_net: &Path) -> Vec<Nic> {
    crate::net::interfaces(sys_class_net)
        .into_iter()
        .map(|(name, mac)| {
            let at = sys_class_net.join(&name);
            let driver = std::fs::read_link(at.join("device/driver"))
                .ok()
                .and_then(|t| t.file_name().map(|f| f.to_string_lossy().into_owned()));
            // Reading carrier fails (EINVAL) while the interface is down.
            let carrier = std::fs::read_to_string(at.join("carrier"))
                .ok()
                .map(|s| s.trim() == "1");
            Nic {
                name,
                mac,
                driver,
                carrier,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nic(name: &str, mac: &str, driver: Option<&str>, carrier: Option<bool>) -> Nic {
        Nic {
            name: name.into(),
            mac: mac.into(),
            driver: driver.map(String::from),
            carrier,
        }
    }

    #[test]
    fn the_booted_nic_wins_even_when_not_first() {
        let nics = [
            nic("eth0", "52:54:00:00:00:01", Some("e1000e"), Some(true)),
            nic("eth1", "52:54:00:00:00:02", Some("vmxnet3"), None),
            nic("lo", "00:00:00:00:00:00", None, Some(true)),
        ];
        assert_eq!(choose(&nics, "52:54:00:00:00:02").unwrap().name, "eth1");
        assert_eq!(choose(&nics, "52:54:00:00:00:01").unwrap().name, "eth0");
        assert_eq!(choose(&nics, "52:54:00:00:00:09"), None);
    }

    #[test]
    fn the_device_beats_a_vlan_or_bond_with_its_mac() {
        let nics = [
            nic("bond0", "52:54:00:00:00:02", None, Some(true)),
            nic("eth1", "52:54:00:00:00:02", Some("ixgbe"), Some(true)),
            nic("eth1.100", "52:54:00:00:00:02", None, Some(true)),
        ];
        assert_eq!(choose(&nics, "52:54:00:00:00:02").unwrap().name, "eth1");
    }

    #[test]
    fn a_miss_names_every_interface_with_mac_driver_and_link() {
        let nics = [
            nic("eth0", "52:54:00:00:00:01", Some("e1000e"), Some(false)),
            nic("eth1", "52:54:00:00:00:02", Some("r8169"), None),
            nic("lo", "00:00:00:00:00:00", None, Some(true)),
        ];
        let e = no_boot_nic(&nics, "52:54:00:aa:00:01", 30).to_string();
        assert!(e.starts_with("no network interface has the boot MAC 52:54:00:aa:00:01 (after 30 s); interfaces seen: eth0 52:54:00:00:00:01 (e1000e, no link), eth1 52:54:00:00:00:02 (r8169, down). "), "{e}");
        let e = no_boot_nic(&nics[2..], "52:54:00:aa:00:01", 30).to_string();
        assert!(
            e.contains("interfaces seen: none (no NIC driver claimed a device)"),
            "{e}"
        );
    }

    #[test]
    fn lists_sysfs_interfaces() {
        let dir = tempfile::tempdir().unwrap();
        let drv = dir.path().join("drivers/vmxnet3");
        std::fs::create_dir_all(&drv).unwrap();
        for (n, m, carrier, dev) in [
            ("eth1", "52:54:00:AA:00:01\n", Some("1\n"), true),
            ("eth0", "52:54:00:00:00:02\n", None, false),
        ] {
            let at = dir.path().join("net").join(n);
            std::fs::create_dir_all(at.join("device")).unwrap();
            std::fs::write(at.join("address"), m).unwrap();
            if let Some(c) = carrier {
                std::fs::write(at.join("carrier"), c).unwrap();
            }
            if dev {
                std::os::unix::fs::symlink(&drv, at.join("device/driver")).unwrap();
            }
        }
        let nics = list(&dir.path().join("net"));
        assert_eq!(
            nics,
            [
                nic("eth0", "52:54:00:00:00:02", None, None),
                nic("eth1", "52:54:00:aa:00:01", Some("vmxnet3"), Some(true)),
            ]
        );
    }
}
