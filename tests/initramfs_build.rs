//! Builds a real initramfs from this host's kernel modules and tools and checks what a
//! node would find in it, using GNU cpio as an independent reader.

use rollout::bootfiles::{build, default_kernel_version, BuildOptions};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use testkit::prereq;

/// Whether this host has a kernel with modules, cpio and gzip; when not, the test
/// fails under CI and scripts/test.sh and a plain `cargo test` skips it.
fn can_run() -> bool {
    if default_kernel_version().is_none() {
        prereq::missing(
            "no /boot/vmlinuz-* with its modules in /lib/modules (Debian package linux-image-amd64)",
        );
        return false;
    }
    prereq::require_tools(&[("cpio", "cpio"), ("gzip", "gzip")])
}

fn gunzip_cpio_list(img: &Path) -> Vec<String> {
    let gz = std::fs::read(img).unwrap();
    let mut gunzip = Command::new("gzip")
        .arg("-dc")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = gunzip.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&gz).unwrap());
    let cpio_bytes = gunzip.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(cpio_bytes.status.success(), "gzip -dc failed");

    let mut cpio = Command::new("cpio")
        .args(["-t", "--quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = cpio.stdin.take().unwrap();
    let data = cpio_bytes.stdout;
    let writer = std::thread::spawn(move || stdin.write_all(&data).unwrap());
    let out = cpio.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success(), "cpio -t rejected the archive");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn initramfs_has_installer_modules_helpers_and_libc() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A stand-in for the real installer: the build treats /init as opaque bytes.
    let installer = dir.path().join("fake-installer");
    std::fs::write(&installer, b"#!/bin/sh\necho fake installer\n").unwrap();

    let mut opts = BuildOptions::new(dir.path().join("boot"));
    opts.installer = Some(installer.clone());
    let report = build(&opts).unwrap();
    println!("{report}");

    let names = gunzip_cpio_list(&report.initramfs);
    let has = |pred: &dyn Fn(&str) -> bool, what: &str| {
        assert!(
            names.iter().any(|n| pred(n)),
            "{what} missing from {names:#?}"
        );
    };
    has(&|n| n == "init", "/init");
    has(
        &|n| n.ends_with(&format!("modules/{}/modules.dep", report.kernel_version)),
        "modules.dep",
    );
    has(&|n| n.ends_with("/virtio_net.ko"), "virtio_net.ko");
    has(&|n| n.ends_with("/virtio_blk.ko"), "virtio_blk.ko");
    has(
        &|n| n.ends_with("/ext4.ko") || n.ends_with("/jbd2.ko"),
        "ext4 or its deps",
    );
    has(&|n| n == "usr/sbin/mke2fs", "mke2fs");
    has(&|n| n == "usr/bin/rsync", "rsync");
    has(&|n| n == "usr/bin/extlinux", "extlinux");
    has(&|n| n.ends_with("/libc.so.6"), "libc");
    has(
        &|n| n == "lib64/ld-linux-x86-64.so.2" || n == "usr/lib64/ld-linux-x86-64.so.2",
        "the dynamic loader",
    );
    has(&|n| n.ends_with("bios/ldlinux.c32"), "ldlinux.c32");
    has(&|n| n.ends_with("systemd-bootx64.efi"), "systemd-boot");
    has(&|n| n == "dev/console", "/dev/console");
    // At the very paths the installer runs and reads them (the list both share).
    for path in rollout::wire::initramfs::PROGRAMS
        .iter()
        .chain(rollout::wire::initramfs::FILES)
    {
        has(&|n| n == path.trim_start_matches('/'), path);
    }
    assert!(!names
        .iter()
        .any(|n| n.ends_with(".ko.xz") || n.ends_with(".ko.zst")));

    // Every module named in the trimmed modules.dep is shipped.
    let modules_dir = names
        .iter()
        .find(|n| n.ends_with("/modules.dep"))
        .unwrap()
        .trim_end_matches("/modules.dep")
        .to_string();
    assert_eq!(
        report.modules.len(),
        names.iter().filter(|n| n.ends_with(".ko")).count()
    );
    for m in &report.modules {
        let want = format!("{modules_dir}/{m}");
        assert!(
            names.contains(&want),
            "{want} listed in modules.dep but not shipped"
        );
    }

    assert!(report.compressed_bytes < 40 * 1024 * 1024, "{report}");
    assert!(report.modules_bytes > 0 && report.libs_bytes > 0 && report.helpers_bytes > 0);
    assert_eq!(
        std::fs::read(dir.path().join("boot/vmlinuz")).unwrap(),
        std::fs::read(format!("/boot/vmlinuz-{}", report.kernel_version)).unwrap()
    );

    // Same inputs, same bytes.
    let first = std::fs::read(&report.initramfs).unwrap();
    let mut again = BuildOptions::new(dir.path().join("boot2"));
    again.installer = Some(installer);
    let second = std::fs::read(build(&again).unwrap().initramfs).unwrap();
    assert!(first == second, "two builds from the same inputs differ");
}

#[test]
fn missing_installer_says_how_to_build_it() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut opts = BuildOptions::new(dir.path());
    opts.installer = Some(dir.path().join("nope"));
    let err = build(&opts).unwrap_err().to_string();
    assert!(
        err.contains(
            "cargo build -p rollout-installer --release --target x86_64-unknown-linux-musl"
        ),
        "{err}"
    );
}
