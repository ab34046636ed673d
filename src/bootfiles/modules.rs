//! Kernel module selection: which `.ko` files the installer needs and in what order to
//! load them. Everything here is a pure function over the text of `modules.dep`,
//! `modules.builtin`, `modules.softdep` and `modules.alias`, so it is tested against fixtures.

use std::collections::HashSet;

// The line parsers and names are shared with the installer.
use crate::kernel::alias::glob_match;
pub use crate::kernel::deps::{render_trimmed, resolve, ModulesDep, Resolution, Tables};
pub use crate::kernel::{
    compare_versions, module_name, normalize_module_name, parse_builtin, parse_exact_aliases,
    parse_softdeps, plain_ko_path, SoftDeps,
};

/// The driver trees the installer carries whole (globs over module paths in
/// `modules.dep`, `*` crossing `/`): every wired NIC, storage controller and
/// hypervisor device a rack or a VM may have, so the installer can load what
/// each device's modalias asks for (`crate::kernel::alias`) instead of a fixed
/// list. Wireless, CAN, USB and the like stay out: nothing installs over them.
pub const DRIVER_TREES: &[&str] = &[
    // NICs: every Ethernet vendor, the hypervisors' paravirtual ones, and what
    // VLANs and bonds need.
    "kernel/drivers/net/ethernet/*",
    "kernel/drivers/net/virtio_net.ko*",
    "kernel/drivers/net/xen-netfront.ko*",
    "kernel/drivers/net/vmxnet3/*",
    "kernel/drivers/net/hyperv/*",
    "kernel/drivers/net/bonding/*",
    "kernel/net/8021q/*",
    "kernel/drivers/virtio/*",
    // Disks: NVMe, SCSI HBAs and RAID controllers (mpt3sas, megaraid_sas,
    // virtio_scsi, sd_mod, …), older LSI Fusion, SATA/PATA, virtio and Xen block,
    // Intel VMD (which hides NVMe drives on many servers), and md/dm for
    // software RAID members.
    "kernel/drivers/nvme/*",
    "kernel/drivers/scsi/*",
    "kernel/drivers/message/fusion/*",
    "kernel/drivers/ata/*",
    "kernel/drivers/block/virtio_blk.ko*",
    "kernel/drivers/block/xen-blkfront.ko*",
    "kernel/drivers/pci/controller/vmd.ko*",
    "kernel/drivers/md/*",
];

/// Names of the modules whose paths match one of `trees`, by name.
pub fn tree_modules(dep: &ModulesDep, trees: &[String]) -> Vec<String> {
    dep.modules()
        .filter(|(_, path)| trees.iter().any(|t| glob_match(t, path)))
        .map(|(name, _)| name.to_string())
        .collect()
}

/// The newest version that has both a modules directory and a kernel image.
pub fn pick_kernel_version(module_dirs: &[String], vmlinuz_files: &[String]) -> Option<String> {
    let kernels: HashSet<&str> = vmlinuz_files
        .iter()
        .filter_map(|f| f.strip_prefix("vmlinuz-"))
        .collect();
    module_dirs
        .iter()
        .filter(|v| kernels.contains(v.as_str()))
        .max_by(|a, b| compare_versions(a, b))
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trees_select_by_path() {
        let dep = ModulesDep::parse(
            "kernel/drivers/net/ethernet/intel/ice/ice.ko: kernel/drivers/dpll.ko\n\
             kernel/drivers/net/virtio_net.ko:\n\
             kernel/drivers/net/wireless/intel/iwlwifi/iwlwifi.ko:\n\
             kernel/drivers/net/tun.ko:\n\
             kernel/drivers/scsi/mpt3sas/mpt3sas.ko.xz:\n\
             kernel/drivers/scsi/sd_mod.ko:\n\
             kernel/fs/ext4/ext4.ko:\n",
        );
        let trees: Vec<String> = DRIVER_TREES.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            tree_modules(&dep, &trees),
            ["ice", "mpt3sas", "sd_mod", "virtio_net"]
        );
    }

    #[test]
    fn newest_kernel_with_an_image_wins() {
        let dirs = vec![
            "6.1.0-9-amd64".to_string(),
            "6.1.0-56-amd64".to_string(),
            "6.10.0-1-amd64".to_string(),
        ];
        let boot = vec![
            "vmlinuz-6.1.0-9-amd64".to_string(),
            "vmlinuz-6.1.0-56-amd64".to_string(),
            "config-6.10.0-1-amd64".to_string(),
        ];
        assert_eq!(
            pick_kernel_version(&dirs, &boot).as_deref(),
            Some("6.1.0-56-amd64")
        );
        assert_eq!(pick_kernel_version(&dirs, &[]), None);
    }
}
