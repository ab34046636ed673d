//! The hardware inventory the installer sends with its plan request
//! ([`super::PlanRequest::hardware`]) and the server keeps with the node.

use serde::{Deserialize, Serialize};

/// What the installer found on the machine. Every field is best effort: a
/// value the machine does not expose is empty or `None`, never guessed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct Hardware {
    #[serde(default)]
    pub cpu: Cpu,
    /// `MemTotal` of /proc/meminfo, in MiB.
    #[serde(default)]
    pub memory_mib: u64,
    #[serde(default)]
    pub disks: Vec<Disk>,
    #[serde(default)]
    pub nics: Vec<Nic>,
    /// `bios` or `uefi` (see [`super::Firmware`]).
    #[serde(default)]
    pub firmware: String,
    #[serde(default)]
    pub system: System,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct Cpu {
    /// `model name` of the first processor.
    #[serde(default)]
    pub model: String,
    /// Logical processors (threads).
    #[serde(default)]
    pub count: u32,
}

impl Cpu {
    /// `8 × AMD EPYC 7763`, for people.
    pub fn describe(&self) -> String {
        let model = if self.model.is_empty() {
            "unknown model"
        } else {
            &self.model
        };
        format!("{} × {model}", self.count)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct Disk {
    /// Kernel name, e.g. `sda`, `nvme0n1`.
    pub name: String,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub serial: String,
    pub size_bytes: u64,
    /// Spinning (`/sys/block/X/queue/rotational` = 1).
    #[serde(default)]
    pub rotational: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct Nic {
    /// Kernel name in the installer, e.g. `eth0`.
    pub name: String,
    pub mac: String,
    /// The driver bound to it, e.g. `virtio_net`, `ixgbe`.
    #[serde(default)]
    pub driver: String,
    /// Link speed in Mbit/s, when the link is up and the driver says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed_mbps: Option<u32>,
    /// Carrier present.
    #[serde(default)]
    pub link: bool,
}

/// DMI (SMBIOS) system identity, from /sys/class/dmi/id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct System {
    #[serde(default)]
    pub vendor: String,
    #[serde(default)]
    pub product: String,
    #[serde(default)]
    pub serial: String,
}

/// Bounds the server applies before storing a report (a plan request is
/// unauthenticated until checked, and a record is rewritten often).
pub const MAX_DEVICES: usize = 64;
pub const MAX_TEXT: usize = 128;

impl Hardware {
    /// The largest disk, in GiB (0 without disks).
    pub fn largest_disk_gib(&self) -> u64 {
        self.disks
            .iter()
            .map(|d| d.size_bytes >> 30)
            .max()
            .unwrap_or(0)
    }

    /// A copy with at most [`MAX_DEVICES`] disks and NICs and every text at
    /// most [`MAX_TEXT`] characters, control characters dropped.
    pub fn bounded(&self) -> Hardware {
        fn t(s: &str) -> String {
            s.chars()
                .filter(|c| !c.is_control())
                .take(MAX_TEXT)
                .collect::<String>()
                .trim()
                .to_string()
        }
        Hardware {
            cpu: Cpu {
                model: t(&self.cpu.model),
                count: self.cpu.count,
            },
            memory_mib: self.memory_mib,
            disks: self
                .disks
                .iter()
                .take(MAX_DEVICES)
                .map(|d| Disk {
                    name: t(&d.name),
                    model: t(&d.model),
                    serial: t(&d.serial),
                    size_bytes: d.size_bytes,
                    rotational: d.rotational,
                })
                .collect(),
            nics: self
                .nics
                .iter()
                .take(MAX_DEVICES)
                .map(|n| Nic {
                    name: t(&n.name),
                    mac: t(&n.mac),
                    driver: t(&n.driver),
                    speed_mbps: n.speed_mbps,
                    link: n.link,
                })
                .collect(),
            firmware: t(&self.firmware),
            system: System {
                vendor: t(&self.system.vendor),
                product: t(&self.system.product),
                serial: t(&self.system.serial),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_caps_devices_and_text() {
        let hw = Hardware {
            cpu: Cpu {
                model: "x".repeat(500),
                count: 4,
            },
            disks: vec![
                Disk {
                    name: "sda\u{7}".into(),
                    size_bytes: 3 << 30,
                    ..Default::default()
                };
                100
            ],
            ..Default::default()
        };
        let b = hw.bounded();
        assert_eq!(b.cpu.model.len(), MAX_TEXT);
        assert_eq!(b.disks.len(), MAX_DEVICES);
        assert_eq!(b.disks[0].name, "sda");
        assert_eq!(b.largest_disk_gib(), 3);
        assert_eq!(Hardware::default().largest_disk_gib(), 0);
    }

    #[test]
    fn an_empty_report_parses() {
        let hw: Hardware = serde_json::from_str("{}").unwrap();
        assert_eq!(hw, Hardware::default());
    }
}
