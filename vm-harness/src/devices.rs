//! The hardware a lab node is built from besides its firmware: the NIC model,
//! the disk's controller and sector size, and an extra NIC ahead of the boot
//! NIC, so the installer meets what real servers have, not only virtio.
//! Pure: each choice becomes QEMU arguments here, unit-tested.

use std::str::FromStr;

/// The network card the node boots from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NicModel {
    /// virtio-net (modern id, iPXE's virtio ROM).
    #[default]
    Virtio,
    /// Intel 82574 (Linux `e1000e`), QEMU's default iPXE ROM.
    E1000e,
    /// VMware's paravirtual NIC (Linux `vmxnet3`).
    Vmxnet3,
}

impl NicModel {
    /// The QEMU device.
    pub fn device(self) -> &'static str {
        match self {
            NicModel::Virtio => "virtio-net-pci",
            NicModel::E1000e => "e1000e",
            NicModel::Vmxnet3 => "vmxnet3",
        }
    }
    /// The Linux driver that claims it.
    pub fn driver(self) -> &'static str {
        match self {
            NicModel::Virtio => "virtio_net",
            NicModel::E1000e => "e1000e",
            NicModel::Vmxnet3 => "vmxnet3",
        }
    }
}

impl FromStr for NicModel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "virtio" => Ok(NicModel::Virtio),
            "e1000e" => Ok(NicModel::E1000e),
            "vmxnet3" => Ok(NicModel::Vmxnet3),
            _ => Err(format!("unknown NIC {s:?}: use virtio, e1000e or vmxnet3")),
        }
    }
}

/// The controller the node's disk hangs off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiskBus {
    #[default]
    VirtioBlk,
    Nvme,
    /// SATA on an AHCI controller.
    Sata,
    VirtioScsi,
}

impl DiskBus {
    /// The Linux driver that claims the controller.
    pub fn driver(self) -> &'static str {
        match self {
            DiskBus::VirtioBlk => "virtio_blk",
            DiskBus::Nvme => "nvme",
            DiskBus::Sata => "ahci",
            DiskBus::VirtioScsi => "virtio_scsi",
        }
    }
}

impl FromStr for DiskBus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "virtio" => Ok(DiskBus::VirtioBlk),
            "nvme" => Ok(DiskBus::Nvme),
            "sata" => Ok(DiskBus::Sata),
            "virtio-scsi" => Ok(DiskBus::VirtioScsi),
            _ => Err(format!(
                "unknown disk bus {s:?}: use virtio, nvme, sata or virtio-scsi"
            )),
        }
    }
}

/// A node's devices. The default is what the lab always had: one virtio NIC,
/// one virtio disk with 512-byte sectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hardware {
    pub nic: NicModel,
    pub disk: DiskBus,
    /// Logical (and physical) sector size of the disk: 512 or 4096.
    pub sector_size: u32,
    /// Another NIC of the same model, without a boot ROM, placed ahead of the
    /// boot NIC on the PCI bus: the installer must still pick the boot NIC.
    pub spare_nic_first: bool,
    /// How many disks of the same kind and size (two for a RAID1 layout).
    pub disks: u8,
}

impl Default for Hardware {
    fn default() -> Self {
        Hardware {
            nic: NicModel::Virtio,
            disk: DiskBus::VirtioBlk,
            sector_size: 512,
            spare_nic_first: false,
            disks: 1,
        }
    }
}

/// The MAC of the spare NIC of node number `index`.
pub fn spare_mac(index: usize) -> String {
    format!(
        "52:54:00:ff:{:02x}:{:02x}",
        (index >> 8) & 0xff,
        index & 0xff
    )
}

/// `-device` for a NIC on netdev `netdev`. `rom` is the boot ROM: `None` for
/// QEMU's default for the model, `Some("")` for none.
pub fn nic_device(
    model: NicModel,
    netdev: &str,
    mac: &str,
    rom: Option<&str>,
    boot: &str,
) -> String {
    // The virtio ROM is built for the modern id (1af4:1041); see qemu.rs.
    let legacy = if model == NicModel::Virtio {
        ",disable-legacy=on"
    } else {
        ""
    };
    let rom = rom.map(|r| format!(",romfile={r}")).unwrap_or_default();
    format!(
        "{},netdev={netdev},mac={mac}{legacy}{rom}{boot}",
        model.device()
    )
}

/// One disk of a node: its `-drive` id, serial and bootindex suffix (or "").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drive {
    pub id: String,
    pub serial: String,
    pub boot: String,
}

/// The `-device` arguments of the disks on `drives`, all on the bus `hw` names
/// (one controller for all of them where the bus has one).
pub fn disk_devices(hw: &Hardware, drives: &[Drive]) -> Vec<String> {
    let sectors = if hw.sector_size == 512 {
        String::new()
    } else {
        format!(
            ",logical_block_size={0},physical_block_size={0}",
            hw.sector_size
        )
    };
    let mut a = Vec::new();
    let mut device = |d: String| {
        a.push("-device".to_string());
        a.push(d);
    };
    match hw.disk {
        DiskBus::Sata => device("ahci,id=sata0".into()),
        DiskBus::VirtioScsi => device("virtio-scsi-pci,id=scsi0".into()),
        DiskBus::VirtioBlk | DiskBus::Nvme => {}
    }
    for (i, Drive { id, serial, boot }) in drives.iter().enumerate() {
        device(match hw.disk {
            DiskBus::VirtioBlk => {
                format!("virtio-blk-pci,drive={id},serial={serial}{sectors}{boot}")
            }
            // Under the Intel ID Linux sends this controller no Write Zeroes
            // (NVME_QUIRK_DISABLE_WRITE_ZEROES): QEMU 7.2's emulation of it
            // stalls under TCG load until the driver resets the controller.
            DiskBus::Nvme => {
                format!("nvme,drive={id},serial={serial},use-intel-id=on{sectors}{boot}")
            }
            DiskBus::Sata => {
                format!("ide-hd,drive={id},bus=sata0.{i},serial={serial}{sectors}{boot}")
            }
            DiskBus::VirtioScsi => {
                format!("scsi-hd,drive={id},bus=scsi0.0,scsi-id={i},serial={serial}{sectors}{boot}")
            }
        });
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nics_carry_their_model_rom_and_boot_order() {
        assert_eq!(
            nic_device(NicModel::Virtio, "n0", "52:54:00:00:00:01", Some("/r.rom"), ",bootindex=1"),
            "virtio-net-pci,netdev=n0,mac=52:54:00:00:00:01,disable-legacy=on,romfile=/r.rom,bootindex=1"
        );
        assert_eq!(
            nic_device(NicModel::E1000e, "n0", "52:54:00:00:00:02", None, ""),
            "e1000e,netdev=n0,mac=52:54:00:00:00:02"
        );
        assert_eq!(
            nic_device(NicModel::Vmxnet3, "n1", "52:54:00:ff:00:02", Some(""), ""),
            "vmxnet3,netdev=n1,mac=52:54:00:ff:00:02,romfile="
        );
        assert_eq!(spare_mac(3), "52:54:00:ff:00:03");
        assert_eq!(spare_mac(300), "52:54:00:ff:01:2c");
    }

    #[test]
    fn disks_hang_off_the_chosen_controller() {
        let hw = |disk, sector_size| Hardware {
            disk,
            sector_size,
            ..Hardware::default()
        };
        let one = |boot: &str| {
            vec![Drive {
                id: "d0".into(),
                serial: "s1".into(),
                boot: boot.into(),
            }]
        };
        assert_eq!(
            disk_devices(&hw(DiskBus::VirtioBlk, 512), &one(",bootindex=2")).join(" "),
            "-device virtio-blk-pci,drive=d0,serial=s1,bootindex=2"
        );
        assert_eq!(
            disk_devices(&hw(DiskBus::Nvme, 4096), &one("")).join(" "),
            "-device nvme,drive=d0,serial=s1,use-intel-id=on,logical_block_size=4096,physical_block_size=4096"
        );
        assert_eq!(
            disk_devices(&hw(DiskBus::Sata, 512), &one("")).join(" "),
            "-device ahci,id=sata0 -device ide-hd,drive=d0,bus=sata0.0,serial=s1"
        );
        assert_eq!(
            disk_devices(&hw(DiskBus::VirtioScsi, 512), &one("")).join(" "),
            "-device virtio-scsi-pci,id=scsi0 -device scsi-hd,drive=d0,bus=scsi0.0,scsi-id=0,serial=s1"
        );
    }

    #[test]
    fn a_second_disk_shares_the_controller() {
        let hw = Hardware {
            disk: DiskBus::Sata,
            disks: 2,
            ..Hardware::default()
        };
        let drives: Vec<Drive> = (0..2)
            .map(|i| Drive {
                id: format!("d{i}"),
                serial: format!("s{i}"),
                boot: String::new(),
            })
            .collect();
        assert_eq!(
            disk_devices(&hw, &drives).join(" "),
            "-device ahci,id=sata0 -device ide-hd,drive=d0,bus=sata0.0,serial=s0 \
             -device ide-hd,drive=d1,bus=sata0.1,serial=s1"
        );
    }

    #[test]
    fn names_parse() {
        assert_eq!("e1000e".parse::<NicModel>(), Ok(NicModel::E1000e));
        assert_eq!("nvme".parse::<DiskBus>(), Ok(DiskBus::Nvme));
        assert!("rtl"
            .parse::<NicModel>()
            .unwrap_err()
            .contains("virtio, e1000e"));
    }
}
