//! End-to-end PXE boot: a blank BIOS node and a blank UEFI node, each on a tap in
//! a private namespace, must get from firmware through `rollout serve` (DHCP,
//! iPXE script, HTTP kernel + initramfs) to the installer's first console line.
//!
//! Needs root and qemu-system-x86_64; otherwise it fails under CI and scripts/test.sh
//! (a plain `cargo test` skips it, saying why).
//! ROLLOUT_BIN picks the server binary (default: <workspace>/target/debug/rollout,
//! built here if missing); ROLLOUT_INITRAMFS a real installer initramfs (default:
//! a busybox probe that prints the same line and powers off).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use testkit::prereq;
use vm_harness::boottest::{self, BootTestOptions, ServerKind};
use vm_harness::Firmware;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("vm-harness sits in the workspace")
        .to_path_buf()
}

fn rollout_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ROLLOUT_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"));
    let bin = target.join("debug/rollout");
    if !bin.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = Command::new(cargo)
            .args(["build", "--bin", "rollout"])
            .current_dir(workspace())
            .status()
            .expect("running cargo build --bin rollout");
        assert!(st.success(), "cargo build --bin rollout failed");
    }
    bin
}

#[test]
fn blank_bios_and_uefi_nodes_reach_the_installer() {
    if !prereq::require_root("network namespace, tap devices")
        || !prereq::require_known_tools(&["qemu-system-x86_64", "qemu-img", "ip"])
    {
        return;
    }
    let mut opts = BootTestOptions::new("pxe-test", ServerKind::Rollout(rollout_bin()));
    opts.firmwares = vec![Firmware::Bios, Firmware::Uefi];
    opts.initramfs = std::env::var_os("ROLLOUT_INITRAMFS").map(PathBuf::from);
    opts.timeout = Duration::from_secs(240);

    let report = boottest::run(&opts).unwrap_or_else(|e| panic!("setting up the lab: {e}"));
    let text = report.render();
    eprint!("{text}");
    assert_eq!(report.nodes.len(), 2);
    assert!(report.all_passed(), "PXE boot failed:\n{text}");
}
