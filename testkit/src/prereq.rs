//! What a test does when this machine lacks something it needs (root, a tool, a file).
//!
//! A developer's plain `cargo test` without root or tools skips such a test and says
//! why on stderr (`SKIPPED: …`). In strict mode, which CI (`CI` set) and
//! `scripts/test.sh` (`ROLLOUT_TEST_STRICT=1`) turn on, the same test fails instead:
//! a run that is meant to test everything cannot pass by skipping.
//!
//! ```
//! # fn test() {
//! if !testkit::prereq::require_tools(&[("rsync", "rsync")]) {
//!     return; // not strict, and rsync is not installed: skipped, and said so
//! }
//! // … use rsync
//! # }
//! ```

use std::fmt::Display;
use std::path::{Path, PathBuf};

/// The Debian package that provides each program the tests run; the same pairs as
/// `PROGRAMS` in scripts/setup.sh (a unit test keeps the two in step).
pub const PACKAGES: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("qemu-img", "qemu-utils"),
    ("qemu-nbd", "qemu-utils"),
    ("ip", "iproute2"),
    ("bridge", "iproute2"),
    ("dhclient", "isc-dhcp-client"),
    ("udhcpc", "udhcpc"),
    ("busybox", "busybox-static"),
    ("curl", "curl"),
    ("python3", "python3"),
    ("dnsmasq", "dnsmasq-base"),
    ("perfdhcp", "kea-admin"),
    ("tcpdump", "tcpdump"),
    ("python3", "python3"),
    ("modprobe", "kmod"),
    ("depmod", "kmod"),
    ("cpio", "cpio"),
    ("zstd", "zstd"),
    ("gzip", "gzip"),
    ("rsync", "rsync"),
    ("mke2fs", "e2fsprogs"),
    ("mkfs.ext3", "e2fsprogs"),
    ("dumpe2fs", "e2fsprogs"),
    ("mkswap", "util-linux"),
    ("sgdisk", "gdisk"),
    ("sfdisk", "fdisk"),
    ("mkfs.vfat", "dosfstools"),
    ("blkid", "util-linux"),
    ("losetup", "mount"),
    ("extlinux", "extlinux"),
    ("debootstrap", "debootstrap"),
    ("ssh", "openssh-client"),
    ("ssh-keygen", "openssh-client"),
    ("sshd", "openssh-server"),
    ("mtype", "mtools"),
    ("mdir", "mtools"),
    ("chromium", "chromium"),
    ("chromedriver", "chromium-driver"),
    ("ipmitool", "ipmitool"),
    ("ipmi_sim", "openipmi"),
    ("prometheus", "prometheus"),
    ("tmux", "tmux"),
    ("lintian", "lintian"),
    ("dpkg-deb", "dpkg"),
    ("dpkg-shlibdeps", "dpkg-dev"),
    ("strip", "binutils"),
    ("setpriv", "util-linux"),
    ("unshare", "util-linux"),
    ("ganesha.nfsd", "nfs-ganesha"),
    ("rpcbind", "rpcbind"),
    ("nfs-cat", "libnfs-utils"),
    ("runuser", "util-linux"),
];

/// The message a strict run fails with; `{why}` goes in front.
const STRICT_NOTE: &str = "(CI / scripts/test.sh never skip; run scripts/setup.sh)";

/// True under CI (`CI` set to anything but "", "0" or "false") or `scripts/test.sh`
/// (`ROLLOUT_TEST_STRICT=1`): then a missing prerequisite fails the test.
pub fn strict() -> bool {
    let var = |name| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned());
    strict_from(var("CI").as_deref(), var("ROLLOUT_TEST_STRICT").as_deref())
}

/// [`strict`] for the given values of `CI` and `ROLLOUT_TEST_STRICT` (`None`: unset).
pub fn strict_from(ci: Option<&str>, rollout_test_strict: Option<&str>) -> bool {
    is_set(ci) || is_set(rollout_test_strict)
}

fn is_set(value: Option<&str>) -> bool {
    value.is_some_and(|v| {
        let v = v.trim();
        !(v.is_empty() || v == "0" || v.eq_ignore_ascii_case("false"))
    })
}

/// A prerequisite of the calling test is missing: panics in [`strict`] mode,
/// otherwise prints `SKIPPED: {why}` to stderr and returns (the caller then returns).
/// `why` should name the tool or file and the Debian package that provides it.
#[track_caller]
pub fn missing(why: impl Display) {
    missing_in(strict(), why)
}

/// [`missing`] with the mode given.
#[track_caller]
pub fn missing_in(strict: bool, why: impl Display) {
    if strict {
        panic!("prerequisite missing: {why} {STRICT_NOTE}");
    }
    eprintln!("SKIPPED: {why}");
}

/// Whether the effective user is root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Where `tool` is: a path is taken as is, a name is looked up in `PATH` and then in
/// /usr/sbin and /sbin (not on a plain user's `PATH` on Debian).
pub fn which(tool: &str) -> Option<PathBuf> {
    if tool.contains('/') {
        return Some(PathBuf::from(tool)).filter(|p| is_executable(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .filter(|d| !d.as_os_str().is_empty())
        .map(|d| d.join(tool))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The Debian package of `tool`, from [`PACKAGES`].
pub fn package_of(tool: &str) -> Option<&'static str> {
    PACKAGES.iter().find(|(t, _)| *t == tool).map(|(_, p)| *p)
}

/// Why the first of `tools` (program, Debian package) that is not installed is
/// missing, or `None` when all are there.
pub fn missing_tool(tools: &[(&str, &str)]) -> Option<String> {
    tools
        .iter()
        .find(|(tool, _)| which(tool).is_none())
        .map(|(tool, package)| format!("{tool} is not installed (Debian package {package})"))
}

/// Whether the test may go on: true when every (program, Debian package) of `tools`
/// is installed; otherwise [`missing`] (a panic in strict mode) and false.
#[track_caller]
pub fn require_tools(tools: &[(&str, &str)]) -> bool {
    match missing_tool(tools) {
        Some(why) => {
            missing(why);
            false
        }
        None => true,
    }
}

/// [`require_tools`] with the packages looked up in [`PACKAGES`]. Panics on a
/// program that table does not know: add it there (and to scripts/setup.sh).
#[track_caller]
pub fn require_known_tools(tools: &[&str]) -> bool {
    let pairs: Vec<(&str, &str)> = tools
        .iter()
        .map(|t| {
            let package = package_of(t).unwrap_or_else(|| {
                panic!("testkit::prereq::PACKAGES does not know which Debian package has {t}")
            });
            (*t, package)
        })
        .collect();
    require_tools(&pairs)
}

/// Whether the test may go on: true as root; otherwise [`missing`] and false.
/// `what` says what root is needed for ("network namespaces").
#[track_caller]
pub fn require_root(what: &str) -> bool {
    if is_root() {
        return true;
    }
    missing(format!("needs root ({what})"));
    false
}

/// Whether the test may go on: true when `path` exists; otherwise [`missing`]
/// naming the Debian `package` that provides it, and false.
#[track_caller]
pub fn require_file(path: impl AsRef<Path>, package: &str) -> bool {
    let path = path.as_ref();
    if path.exists() {
        return true;
    }
    missing(format!(
        "{} is missing (Debian package {package})",
        path.display()
    ));
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_under_ci_or_test_sh() {
        assert!(!strict_from(None, None));
        for off in ["", "0", "false", "FALSE", " False "] {
            assert!(!strict_from(Some(off), None), "CI={off:?}");
            assert!(!strict_from(None, Some(off)), "ROLLOUT_TEST_STRICT={off:?}");
        }
        for on in ["true", "1", "yes", "github-actions"] {
            assert!(strict_from(Some(on), None), "CI={on:?}");
        }
        assert!(strict_from(None, Some("1")));
        assert!(strict_from(Some("0"), Some("1")));
        assert!(
            strict_from(Some("true"), Some("0")),
            "CI cannot be overruled"
        );
    }

    #[test]
    fn missing_fails_in_strict_mode_and_names_the_fix() {
        let err = std::panic::catch_unwind(|| {
            missing_in(
                true,
                "dnsmasq is not installed (Debian package dnsmasq-base)",
            )
        })
        .unwrap_err();
        let msg = err
            .downcast_ref::<String>()
            .expect("a formatted panic message");
        assert_eq!(
            msg,
            "prerequisite missing: dnsmasq is not installed (Debian package dnsmasq-base) \
             (CI / scripts/test.sh never skip; run scripts/setup.sh)"
        );
    }

    #[test]
    fn missing_returns_when_not_strict() {
        missing_in(false, "nothing (Debian package none)");
    }

    #[test]
    fn which_searches_path_and_sbin() {
        assert!(which("sh").is_some());
        assert_eq!(which("/bin/sh"), Some(PathBuf::from("/bin/sh")));
        assert_eq!(which("rollout-no-such-tool"), None);
        assert_eq!(which("/nonexistent/sh"), None);
        assert_eq!(which("/etc/passwd"), None, "not executable");
    }

    #[test]
    fn a_missing_tool_is_named_with_its_package() {
        assert_eq!(missing_tool(&[("sh", "dash")]), None);
        assert_eq!(
            missing_tool(&[("sh", "dash"), ("rollout-no-such-tool", "rollout-pkg")]).as_deref(),
            Some("rollout-no-such-tool is not installed (Debian package rollout-pkg)")
        );
    }

    #[test]
    #[should_panic(expected = "does not know which Debian package has rollout-no-such-tool")]
    fn an_unknown_tool_must_be_added_to_the_table() {
        require_known_tools(&["rollout-no-such-tool"]);
    }

    /// Every pair here is one of scripts/setup.sh's `PROGRAMS`, so what the tests
    /// say to install is what setup.sh installs and checks.
    #[test]
    fn packages_match_setup_sh() {
        let setup = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/setup.sh");
        let text = std::fs::read_to_string(&setup).unwrap();
        let start = text.find("PROGRAMS=(").expect("PROGRAMS in setup.sh");
        let list = &text[start..start + text[start..].find("\n)").unwrap()];
        let programs: Vec<&str> = list
            .lines()
            .skip(1)
            .flat_map(|l| l.split('#').next().unwrap().split_whitespace())
            .collect();
        for (tool, package) in PACKAGES {
            let pair = format!("{tool}:{package}");
            assert!(programs.contains(&pair.as_str()), "{pair} not in {setup:?}");
        }
    }
}
