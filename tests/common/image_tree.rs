//! A tiny image root for tests that enter images: busybox as the shell, plus the
//! secrets a real image would carry and that must never ship.

use std::path::{Path, PathBuf};

pub const BUSYBOX: &str = "/bin/busybox";

fn skip_reason() -> Option<&'static str> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (chroot and mount namespaces)");
    }
    if !Path::new(BUSYBOX).exists() {
        return Some("needs /bin/busybox (apt-get install busybox-static)");
    }
    None
}

/// False (after saying why) when this host cannot chroot into a busybox image.
pub fn can_enter_images() -> bool {
    match skip_reason() {
        Some(why) => {
            eprintln!("skipping: {why}");
            false
        }
        None => true,
    }
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
