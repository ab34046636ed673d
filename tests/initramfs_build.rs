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

fn modules_dir_of(names: &[String]) -> String {
    names
        .iter()
        .find(|n| n.ends_with("/modules.dep"))
        .expect("modules.dep in the archive")
        .trim_end_matches("/modules.dep")
        .to_string()
}

/// `gzip -dc IMG | cpio -i --quiet ARGS` in `dir`; its stdout, after checking it worked.
fn cpio_in(img: &Path, args: &str, dir: &Path) -> Vec<u8> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "gzip -dc '{}' | cpio -i --quiet {args}",
            img.display()
        ))
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cpio -i {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// One file's content from the archive (`cpio -i --to-stdout`).
fn unpack_file(img: &Path, path: &str) -> String {
    String::from_utf8(cpio_in(
        img,
        &format!("--to-stdout '{path}'"),
        Path::new("/"),
    ))
    .unwrap()
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

    // Firmware as a Debian firmware package would install it: what r8169 and
    // tg3 declare in their .modinfo, and one file nobody declares.
    let fw = dir.path().join("firmware");
    std::fs::create_dir_all(fw.join("rtl_nic")).unwrap();
    std::fs::create_dir_all(fw.join("tigon")).unwrap();
    std::fs::write(fw.join("rtl_nic/rtl8125a-3.fw"), b"realtek blob").unwrap();
    std::fs::write(fw.join("tigon/tg3_tso5.bin.xz"), b"broadcom blob").unwrap();
    std::fs::write(fw.join("rtl_nic/unrelated.fw"), b"nobody asks").unwrap();

    let mut opts = BuildOptions::new(dir.path().join("boot"));
    opts.installer = Some(installer.clone());
    opts.firmware_dir = fw.clone();
    let started = std::time::Instant::now();
    let report = build(&opts).unwrap();
    println!("{report}built in {:.1} s", started.elapsed().as_secs_f64());

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
    // The driver trees: the NICs and storage controllers of real racks and of
    // other hypervisors, where this kernel builds them as modules.
    let modules_dep = format!("/lib/modules/{}/modules.dep", report.kernel_version);
    let host_dep = std::fs::read_to_string(&modules_dep).unwrap();
    let host_has = |m: &str| {
        host_dep.lines().any(|l| {
            l.split(':').next().is_some_and(|p| {
                p.ends_with(&format!("/{m}.ko")) || p.contains(&format!("/{m}.ko."))
            })
        })
    };
    let mut checked = 0;
    for m in [
        "i40e",
        "ice",
        "mlx5_core",
        "bnxt_en",
        "tg3",
        "r8169",
        "e1000e",
        "igb",
        "ixgbe",
        "vmxnet3",
        "virtio_net",
        "virtio_pci",
        "mpt3sas",
        "megaraid_sas",
        "virtio_scsi",
        "sd_mod",
        "ahci",
        "nvme",
        "bonding",
        "8021q",
    ] {
        if host_has(m) {
            has(&|n| n.ends_with(&format!("/{m}.ko")), m);
            checked += 1;
        } else {
            println!("{m}: not a module of this kernel, not checked");
        }
    }
    assert!(
        checked >= 15,
        "only {checked} of the driver list are modules here"
    );
    // The table the installer matches device modaliases against ships with
    // them, holding shipped modules only.
    let alias = unpack_file(
        &report.initramfs,
        &format!("{}/modules.alias", modules_dir_of(&names)),
    );
    for line in [
        "alias pci:v*d*sv*sd*bc01sc06i01* ahci",
        "alias virtio:d00000001v* virtio_net",
        "alias scsi:t-0x00* sd_mod",
    ] {
        assert!(
            alias.lines().any(|l| l == line),
            "{line} missing from the shipped modules.alias"
        );
    }
    let shipped: std::collections::HashSet<String> = report
        .modules
        .iter()
        .map(|m| rollout::kernel::module_name(m))
        .collect();
    for (pattern, module) in rollout::kernel::alias::alias_lines(&alias) {
        assert!(
            shipped.contains(&rollout::kernel::normalize_module_name(module)),
            "alias {pattern} names {module}, which is not shipped"
        );
    }
    // Declared firmware the host has, where the kernel's loader looks; nothing else.
    has(
        &|n| n.ends_with("lib/firmware/rtl_nic/rtl8125a-3.fw"),
        "r8169's firmware",
    );
    has(
        &|n| n.ends_with("lib/firmware/tigon/tg3_tso5.bin.xz"),
        "tg3's compressed firmware",
    );
    assert!(!names.iter().any(|n| n.ends_with("unrelated.fw")));
    assert_eq!(
        report.firmware,
        ["rtl_nic/rtl8125a-3.fw", "tigon/tg3_tso5.bin.xz"]
    );
    assert!(report.firmware_missing > 0, "{report}");
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

    assert!(report.compressed_bytes <= 60 * 1024 * 1024, "{report}");
    let shown = report.to_string();
    assert!(
        shown.contains("MiB compressed")
            && shown.contains("MiB uncompressed")
            && shown.contains("firmware"),
        "{shown}"
    );
    assert!(report.modules_bytes > 0 && report.libs_bytes > 0 && report.helpers_bytes > 0);
    assert_eq!(
        std::fs::read(dir.path().join("boot/vmlinuz")).unwrap(),
        std::fs::read(format!("/boot/vmlinuz-{}", report.kernel_version)).unwrap()
    );

    // The storage tools are not in the initramfs every node boots.
    for p in rollout::wire::initramfs::STORAGE_PROGRAMS {
        assert!(
            !names.iter().any(|n| n == p.trim_start_matches('/')),
            "{p} in the initramfs"
        );
    }
    assert!(!names.iter().any(|n| n.ends_with("/xfs.ko")));
    check_storage_tools(&report, &names);

    // Same inputs, same bytes.
    let first = std::fs::read(&report.initramfs).unwrap();
    let first_tools = std::fs::read(dir.path().join("boot/storage-tools.img")).unwrap();
    let mut again = BuildOptions::new(dir.path().join("boot2"));
    again.installer = Some(installer);
    again.firmware_dir = fw;
    let second = std::fs::read(build(&again).unwrap().initramfs).unwrap();
    assert!(first == second, "two builds from the same inputs differ");
    let second_tools = std::fs::read(dir.path().join("boot2/storage-tools.img")).unwrap();
    assert!(
        first_tools == second_tools,
        "two storage tools archives from the same inputs differ"
    );
}

/// The storage tools archive beside the initramfs: the programs at the paths
/// the installer runs, every shared library they need (here or already in the
/// initramfs), xfs.ko and a modules.dep naming both archives' modules; nothing
/// the initramfs already holds.
fn check_storage_tools(report: &rollout::bootfiles::BuildReport, main: &[String]) {
    let tools = match &report.storage_tools {
        Ok(t) => t,
        Err(why) => {
            prereq::missing(format!(
                "no storage tools archive: {why} (Debian packages mdadm lvm2 xfsprogs)"
            ));
            return;
        }
    };
    println!("{tools}");
    let img = report.initramfs.with_file_name("storage-tools.img");
    assert_eq!(tools.path, img);
    assert_eq!(
        std::fs::metadata(&img).unwrap().len(),
        tools.compressed_bytes
    );
    let names = gunzip_cpio_list(&img);
    for p in rollout::wire::initramfs::STORAGE_PROGRAMS {
        assert!(
            names.iter().any(|n| n == p.trim_start_matches('/')),
            "{p} missing from {names:#?}"
        );
        // Every library the program needs (ldd's view), in one archive or the other.
        let ldd = Command::new("ldd").arg(p).output().unwrap();
        for line in String::from_utf8_lossy(&ldd.stdout).lines() {
            let Some(path) = line
                .split("=>")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
            else {
                continue;
            };
            let real = std::fs::canonicalize(path).unwrap();
            let rel = real.to_string_lossy().trim_start_matches('/').to_string();
            assert!(
                names.contains(&rel) || main.contains(&rel),
                "{p} needs {path} ({rel}), in neither archive"
            );
        }
    }
    // What the initramfs has (libc, the loader) is not shipped again.
    assert!(
        !names.iter().any(|n| n.ends_with("/libc.so.6")),
        "{names:#?}"
    );
    assert!(!names.iter().any(|n| n.ends_with(".ko") && main.contains(n)));
    let modules_dir = modules_dir_of(&names);
    assert!(
        names.contains(&format!("{modules_dir}/kernel/fs/xfs/xfs.ko")),
        "xfs.ko missing from {names:#?}"
    );
    let dep = unpack_file(&img, &format!("{modules_dir}/modules.dep"));
    assert!(
        dep.lines().any(|l| l.starts_with("kernel/fs/xfs/xfs.ko:")),
        "{dep}"
    );
    assert!(
        dep.lines()
            .any(|l| l.starts_with("kernel/drivers/md/raid1.ko:")),
        "{dep}"
    );
    assert!(
        dep.lines()
            .any(|l| l.starts_with("kernel/drivers/net/virtio_net.ko:")),
        "{dep}"
    );
    assert_eq!(
        tools
            .modules
            .iter()
            .filter(|m| m.ends_with("xfs.ko"))
            .count(),
        1
    );
    assert!(tools.compressed_bytes < 20 * 1024 * 1024, "{tools}");

    // Unpacked over the initramfs, as the installer does, each program runs
    // there: its loader and every library resolve inside that root.
    if !prereq::require_root("chroot into the unpacked archives") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    for archive in [&report.initramfs, &img] {
        cpio_in(archive, "-d -u --no-absolute-filenames", root.path());
    }
    for (program, arg) in [
        (rollout::wire::initramfs::MDADM, "--version"),
        (rollout::wire::initramfs::LVM, "version"),
        (rollout::wire::initramfs::MKFS_XFS, "-V"),
    ] {
        let out = Command::new("chroot")
            .arg(root.path())
            .args([program, arg])
            .env("LVM_SUPPRESS_FD_WARNINGS", "1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{program} {arg} in the unpacked root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn without_the_storage_programs_no_archive_is_served() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let installer = dir.path().join("fake-installer");
    std::fs::write(&installer, b"#!/bin/sh\n").unwrap();
    let boot = dir.path().join("boot");
    std::fs::create_dir_all(&boot).unwrap();
    // One left from an earlier build, for another kernel perhaps.
    std::fs::write(boot.join("storage-tools.img"), b"stale").unwrap();
    let mut opts = BuildOptions::new(&boot);
    opts.installer = Some(installer);
    opts.driver_trees.clear();
    opts.storage_programs = vec!["/usr/sbin/mdadm-not-installed".into()];
    let report = build(&opts).unwrap();
    let why = report.storage_tools.as_ref().unwrap_err();
    assert!(why.contains("apt-get install mdadm"), "{why}");
    assert!(report
        .to_string()
        .contains("layouts with RAID, LVM or XFS cannot install"));
    assert!(!boot.join("storage-tools.img").exists());
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
