//! A tiny image root for tests that enter images: busybox as the shell, plus the
//! secrets a real image would carry and that must never ship.

use std::path::{Path, PathBuf};

pub const BUSYBOX: &str = "/bin/busybox";

/// Whether this host can chroot into a busybox image (root, /bin/busybox). When
/// not, the test fails under CI and scripts/test.sh and a plain `cargo test` skips
/// it (`testkit::prereq`).
pub fn can_enter_images() -> bool {
    testkit::prereq::require_root("chroot and mount namespaces")
        && testkit::prereq::require_file(BUSYBOX, "busybox-static")
}

/// A tiny root: busybox as /bin/sh, fake host keys and a machine-id that must not ship.
pub fn sample_tree(dir: &Path) -> PathBuf {
    let root = dir.join("src-root");
    for d in ["bin", "etc/ssh", "tmp", "root"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(BUSYBOX, root.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
    std::os::unix::fs::symlink("busybox", root.join("bin/sleep")).unwrap();
    std::fs::write(root.join("etc/ssh/ssh_host_ed25519_key"), "PRIVATE KEY").unwrap();
    std::fs::write(
        root.join("etc/ssh/sshd_config"),
        "PermitRootLogin prohibit-password\n",
    )
    .unwrap();
    std::fs::write(
        root.join("etc/machine-id"),
        "0123456789abcdef0123456789abcdef\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/os-release"), "NAME=test\n").unwrap();
    std::fs::write(root.join("root/.bash_history"), "secret command\n").unwrap();
    root
}

pub fn sh(cmd: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), cmd.into()]
}

pub fn mounts_under(p: &Path) -> Vec<String> {
    let p = p.to_string_lossy().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&p))
        .map(String::from)
        .collect()
}
