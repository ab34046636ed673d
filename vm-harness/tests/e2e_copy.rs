//! The image copy when the server's rsync daemon dies: killed once mid-copy,
//! the server's supervisor brings it back and the installer resumes where it
//! was; kept down, the install fails naming the copy step and the disk is left
//! with no partition table a firmware could boot.
//!
//! Needs root, QEMU and the tools of scripts/setup.sh (under CI and
//! scripts/test.sh a missing one fails the test).

mod e2e_support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use e2e_support::{check_disk, fixture, E2eLab};
use vm_harness::demo::NodeProgress;
use vm_harness::disk::DiskImage;
use vm_harness::e2e::ImageKind;
use vm_harness::{Firmware, Lab};

const GIB: u64 = 1 << 30;
const INSTALL: Duration = Duration::from_secs(420);
/// Incompressible bytes added to the tiny image so the copy lasts long enough
/// (tens of seconds under TCG) to be interrupted in the middle.
const PAD_MIB: u64 = 600;

/// Every `rsync --daemon` process of the lab (the listener and the per-client
/// children that serve a copy), killed with SIGKILL. Returns how many.
fn kill_rsync_daemons(lab: &Lab) -> usize {
    let mut killed = 0;
    for pid in lab.netns().pids() {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_daemon = args.first().is_some_and(|a| a.ends_with(b"rsync"))
            && args.iter().any(|a| *a == b"--daemon");
        if is_daemon {
            // SAFETY: kill(2) on a pid we just read; a race with its exit is harmless.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            killed += 1;
        }
    }
    killed
}

/// Publishes the tiny image plus `PAD_MIB` of random data as the next serial.
fn publish_padded_image(t: &E2eLab, a: &vm_harness::e2e::Artifacts) {
    let tree = t.lab.dir().join("padded-image");
    let st = Command::new("cp")
        .arg("-a")
        .arg(a.tiny_image())
        .arg(&tree)
        .status()
        .unwrap();
    assert!(st.success(), "copying the tiny image");
    let pad = tree.join("var/lib/rollout-e2e-pad.bin");
    std::fs::create_dir_all(pad.parent().unwrap()).unwrap();
    let st = Command::new("dd")
        .args(["if=/dev/urandom", "bs=1M", "status=none"])
        .arg(format!("count={PAD_MIB}"))
        .arg(format!("of={}", pad.display()))
        .status()
        .unwrap();
    assert!(st.success(), "writing the padding");
    t.host_cli(a, &["image", "import", "default", &tree.to_string_lossy()]);
    let _ = std::fs::remove_dir_all(&tree);
}

fn wait_copying(t: &mut E2eLab, node: &str) {
    t.wait_record(node, "its copy to be under way", INSTALL, |r| {
        r.stage.as_deref() == Some("copy") && r.done_bytes > 0
    });
}

#[test]
fn copy_resumes_after_the_rsync_daemon_dies_and_fails_cleanly_when_it_stays_away() {
    let Some((_serial, a)) = fixture() else {
        return;
    };
    let mut t = E2eLab::build(a, "e2e-copy", ImageKind::Tiny, 8 * GIB, |lab| {
        lab.add_node(Firmware::Bios)?;
        lab.add_node(Firmware::Bios)?;
        Ok(lab.config())
    });
    publish_padded_image(&t, a);

    // node1: the daemon dies once in the middle of the copy.
    t.lab.node_mut("node1").unwrap().start().unwrap();
    wait_copying(&mut t, "node1");
    let killed = kill_rsync_daemons(&t.lab);
    assert!(
        killed >= 2,
        "expected the listener and node1's copy, killed {killed}"
    );
    let rec = t.wait_booted("node1", INSTALL);
    assert_eq!(rec.installs, 1, "{}", rec.line());
    assert_eq!(
        rec.serial,
        Some(2),
        "node1 did not install the padded serial"
    );
    let console = t.lab.nodes()[0].console_tail(2000).join("\n");
    assert!(
        console.contains("copy: attempt 1 failed"),
        "the installer never saw its copy interrupted:\n{console}"
    );
    assert!(
        t.server_log().contains("rsync daemon stopped; restarting"),
        "the server did not notice its rsync daemon die"
    );
    let node1 = &mut t.lab.nodes_mut()[0];
    node1.power_off().unwrap();
    check_disk(&node1.disk_path(), "node1", Firmware::Bios);

    // node2: the daemon dies at every restart, for as long as the installer
    // keeps trying (five attempts over ~80 s).
    t.lab.node_mut("node2").unwrap().start().unwrap();
    wait_copying(&mut t, "node2");
    let start = Instant::now();
    let failed = loop {
        kill_rsync_daemons(&t.lab);
        // A failed poll (the server busy) is just another try.
        let rec = vm_harness::demo::fetch_node(&t.lab, t.server, "node2").ok();
        if let Some(rec) = rec.as_ref().filter(|r| r.is_failed()) {
            break rec.clone();
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "node2 never gave up its copy: {}",
            rec.map_or("no record".into(), |r| r.line())
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // Off before its failure reboot can start anything new on the disk.
    let node2 = &mut t.lab.nodes_mut()[1];
    node2.power_off().unwrap();
    assert_eq!(failed.stage.as_deref(), Some("copy"), "{}", failed.line());
    let err = failed.last_error.clone().unwrap_or_default();
    assert!(
        err.contains("rsync"),
        "the error does not name rsync: {err}"
    );
    let disk = DiskImage::open(&node2.disk_path()).expect("reading node2's disk");
    assert!(
        disk.partition(1).is_err() && disk.partition(2).is_err(),
        "the failed install left a partition table:\n{}",
        disk.sgdisk
    );
    assert!(
        !raw_has_boot_signature(&node2.disk_path()),
        "the failed install left an MBR boot signature"
    );
}

/// Whether the disk's first sector ends in 0x55AA (an MBR, protective or not).
fn raw_has_boot_signature(qcow2: &Path) -> bool {
    let raw = qcow2.with_extension("sector0.raw");
    let st = Command::new("qemu-img")
        .args(["dd", "-f", "qcow2", "-O", "raw", "bs=512", "count=1"])
        .arg(format!("if={}", qcow2.display()))
        .arg(format!("of={}", raw.display()))
        .status()
        .unwrap();
    assert!(st.success(), "qemu-img dd of the first sector");
    let sector = std::fs::read(&raw).unwrap();
    let _ = std::fs::remove_file(&raw);
    sector.len() == 512 && sector[510] == 0x55 && sector[511] == 0xAA
}
