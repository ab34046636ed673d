//! `rollout-sync sync`: brings an installed node to the image serial the server
//! publishes, with rsync `--delete` onto the live root. Node-local files (the
//! installer's excludes and everything it wrote) are kept; the recorded serial
//! changes only after the copy and the bootloader update both succeeded.

use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rollout::wire::{self, paths as api};

use crate::{bootloader, configure, http, layout, partition, paths, phone_home, render, rsync};

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(
        "reading {path}: {source} (written by the installer; was this node installed by rollout?)"
    )]
    Config {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} lacks `{1}`; reinstall the node or add the key")]
    Missing(String, &'static str),
    #[error("asking {url} for the published serial: {reason}")]
    Serial { url: String, reason: String },
    #[error("another rollout-sync is running (lock {0}); wait for it to finish")]
    Locked(String),
    #[error(transparent)]
    Rsync(#[from] rsync::RsyncError),
    #[error("copied serial {serial} but could not update the bootloader: {source}; the recorded serial stays at the old one, run sync again after fixing this")]
    Boot {
        serial: u64,
        #[source]
        source: bootloader::BootError,
    },
    #[error("{0}")]
    BootConfig(String),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SyncError {
    let path = path.display().to_string();
    move |source| SyncError::Io { op, path, source }
}

/// What `/etc/rollout/node.toml` says about this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConf {
    pub server: String,
    pub image: String,
    /// `rsync://host[:port]` of the server's rsync daemon, when the installer
    /// recorded it; otherwise the server's host on the default port.
    pub rsync: Option<String>,
}

pub fn in_root(root: &Path, p: &str) -> PathBuf {
    root.join(p.trim_start_matches('/'))
}

pub fn read_conf(root: &Path) -> Result<NodeConf, SyncError> {
    let path = in_root(root, paths::NODE_CONFIG);
    let text = std::fs::read_to_string(&path).map_err(|source| SyncError::Config {
        path: path.display().to_string(),
        source,
    })?;
    let m = render::parse_node_toml(&text);
    let get = |k: &'static str| {
        m.get(k)
            .filter(|v| !v.is_empty())
            .cloned()
            .ok_or_else(|| SyncError::Missing(path.display().to_string(), k))
    };
    Ok(NodeConf {
        server: get("server")?,
        image: get("image")?,
        rsync: m.get("rsync").filter(|v| !v.is_empty()).cloned(),
    })
}

/// The serial this node runs, `None` when the file is missing or unreadable.
pub fn local_serial(root: &Path) -> Option<u64> {
    std::fs::read_to_string(in_root(root, paths::NODE_SERIAL))
        .ok()?
        .trim()
        .parse()
        .ok()
}

pub fn serial_url(server: &str, image: &str) -> String {
    format!(
        "{}{}/{image}/serial",
        server.trim_end_matches('/'),
        api::IMAGES
    )
}

/// `rsync://host[:port]/{image}-{serial}/`, the server's per-serial module.
pub fn module_url(conf: &NodeConf, serial: u64) -> Result<String, SyncError> {
    let base = match &conf.rsync {
        Some(b) => b.trim_end_matches('/').to_string(),
        None => {
            let u = http::parse_url(&conf.server).map_err(|e| SyncError::Serial {
                url: conf.server.clone(),
                reason: e.to_string(),
            })?;
            format!("rsync://{}", u.host)
        }
    };
    Ok(format!("{base}/{}-{serial}/", conf.image))
}

pub fn parse_serial(body: &str) -> Option<u64> {
    body.trim().parse().ok()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    UpToDate(u64),
    /// Any difference syncs, downwards too: the published serial is the truth
    /// (that is how an operator rolls back).
    Update {
        from: Option<u64>,
        to: u64,
    },
}

pub fn decide(local: Option<u64>, published: u64) -> Decision {
    match local {
        Some(l) if l == published => Decision::UpToDate(l),
        from => Decision::Update {
            from,
            to: published,
        },
    }
}

/// Excludes for an update: the installer's defaults, everything the installer
/// wrote, and the installed extlinux (ldlinux.sys must not move on disk).
pub fn excludes() -> Vec<String> {
    wire::DEFAULT_EXCLUDES
        .iter()
        .chain(configure::INSTALLER_WRITTEN)
        .chain(&["/boot/extlinux/"])
        .map(|s| s.to_string())
        .collect()
}

/// rsync flags on top of the installer's copy flags.
pub const EXTRA_FLAGS: &[&str] = &["--delete", "--stats", "--itemize-changes"];

/// Sum of `Total bytes received:` over every `--stats` block in `lines`.
pub fn bytes_received(lines: &[String]) -> u64 {
    lines
        .iter()
        .filter_map(|l| l.trim().strip_prefix("Total bytes received:"))
        .filter_map(|v| v.trim().replace(',', "").parse::<u64>().ok())
        .sum()
}

/// Whether an itemized change touches a file under /boot: a transfer, creation,
/// hard link or deletion of a non-directory (attribute-only and directory
/// changes do not make a new kernel).
pub fn boot_changed(lines: &[String]) -> bool {
    lines.iter().any(|l| {
        let (code, path) = if let Some(p) = l.strip_prefix("*deleting") {
            ("*deleting", p.trim_start())
        } else {
            match l.split_once(' ') {
                Some((c, p)) if c.len() == 11 => (c, p.trim_start()),
                _ => return false,
            }
        };
        let in_boot = path.starts_with("boot/") && !path.ends_with('/');
        let is_dir = code != "*deleting" && code.as_bytes()[1] == b'd';
        let changes = code == "*deleting" || matches!(code.as_bytes()[0], b'>' | b'c' | b'h');
        in_boot && !is_dir && changes
    })
}

/// `root=UUID=…` and the rest of the kernel options from the current boot
/// entry (`APPEND` in extlinux.conf, `options` in a systemd-boot entry), so an
/// update keeps what the install set.
pub fn current_options(conf: &str) -> Option<(String, String)> {
    let opts = conf.lines().find_map(|l| {
        let l = l.trim();
        let (k, v) = l.split_once(char::is_whitespace)?;
        (k.eq_ignore_ascii_case("append") || k == "options").then(|| v.trim().to_string())
    })?;
    let mut uuid = None;
    let mut seen_ro = false;
    let mut rest = Vec::new();
    for w in opts.split_whitespace() {
        if let Some(u) = w.strip_prefix("root=UUID=") {
            uuid = Some(u.to_string());
        } else if w == "ro" && !seen_ro {
            seen_ro = true;
        } else {
            rest.push(w);
        }
    }
    Some((uuid?, rest.join(" ")))
}

/// The `LINUX` path of an extlinux.conf.
pub fn extlinux_kernel(conf: &str) -> Option<&str> {
    conf.lines().find_map(|l| {
        let (k, v) = l.trim().split_once(char::is_whitespace)?;
        (k.eq_ignore_ascii_case("linux") || k.eq_ignore_ascii_case("kernel")).then(|| v.trim())
    })
}

/// Whether extlinux.conf boots another kernel than the newest one in /boot: an
/// earlier sync copied /boot and then failed, so this run's itemized output no
/// longer shows the change.
fn extlinux_stale(root: &Path) -> bool {
    let conf =
        std::fs::read_to_string(in_root(root, bootloader::EXTLINUX_CONF)).unwrap_or_default();
    match (extlinux_kernel(&conf), bootloader::find_kernel(root)) {
        (Some(cur), Ok(k)) => cur != k.kernel,
        _ => false,
    }
}

/// Where the node's bootloader lives, for re-pointing it at a new kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootTarget {
    Extlinux,
    /// systemd-boot on the ESP partition `dev`.
    SdBoot {
        dev: String,
    },
    None(String),
}

/// The ESP next to the root file system: a sibling partition whose GPT name is
/// the one the installer gave it.
fn find_esp(root: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(root).ok()?.dev();
    let (maj, min) = (libc::major(dev), libc::minor(dev));
    let part = std::fs::canonicalize(format!("/sys/dev/block/{maj}:{min}")).ok()?;
    let disk = part.parent()?;
    let want = format!("PARTNAME={}", partition::gpt_name(layout::PartKind::Esp));
    std::fs::read_dir(disk).ok()?.flatten().find_map(|e| {
        let uevent = std::fs::read_to_string(e.path().join("uevent")).ok()?;
        if !uevent.lines().any(|l| l == want) {
            return None;
        }
        let name = uevent.lines().find_map(|l| l.strip_prefix("DEVNAME="))?;
        Some(format!("/dev/{name}"))
    })
}

pub fn boot_target(root: &Path) -> BootTarget {
    if in_root(root, bootloader::EXTLINUX_CONF).exists() {
        return BootTarget::Extlinux;
    }
    // Only a real root has a firmware and an ESP to look for.
    if root == Path::new("/") && Path::new("/sys/firmware/efi").exists() {
        if let Some(dev) = find_esp(root) {
            return BootTarget::SdBoot { dev };
        }
        return BootTarget::None(
            "UEFI, but no partition named \"EFI system partition\" next to the root".into(),
        );
    }
    BootTarget::None(format!("no {}", bootloader::EXTLINUX_CONF))
}

fn update_bootloader(root: &Path, title: &str, serial: u64) -> Result<String, SyncError> {
    let boot = |source| SyncError::Boot { serial, source };
    match boot_target(root) {
        BootTarget::Extlinux => {
            let conf = in_root(root, bootloader::EXTLINUX_CONF);
            let text = std::fs::read_to_string(&conf).map_err(io("read", &conf))?;
            let (uuid, cmdline) = current_options(&text).ok_or_else(|| {
                SyncError::BootConfig(format!(
                    "{} has no APPEND line with root=UUID=; fix it by hand or reinstall the node",
                    conf.display()
                ))
            })?;
            let k = bootloader::write_extlinux_conf(root, title, &uuid, &cmdline).map_err(boot)?;
            Ok(format!("extlinux.conf now boots {}", k.kernel))
        }
        BootTarget::SdBoot { dev } => {
            let esp = Path::new(paths::ESP_MOUNT);
            std::fs::create_dir_all(esp).map_err(io("create directory", esp))?;
            crate::sys::mount(&dev, esp, "vfat", nix::mount::MsFlags::empty(), None)
                .map_err(|e| boot(e.into()))?;
            let result = (|| {
                let entry = in_root(esp, bootloader::SDBOOT_ENTRY);
                let text = std::fs::read_to_string(&entry).map_err(io("read", &entry))?;
                let (uuid, cmdline) = current_options(&text).ok_or_else(|| {
                    SyncError::BootConfig(format!(
                        "{} on {dev} has no options line with root=UUID=",
                        bootloader::SDBOOT_ENTRY
                    ))
                })?;
                bootloader::write_sdboot_kernel(root, esp, title, &uuid, &cmdline).map_err(boot)
            })();
            crate::sys::sync();
            crate::sys::umount_tree(esp);
            Ok(format!(
                "systemd-boot on {dev} now boots {}",
                result?.kernel
            ))
        }
        BootTarget::None(why) => Err(SyncError::BootConfig(format!(
            "/boot changed but no bootloader to update ({why}); the new kernel would not boot"
        ))),
    }
}

/// Holds an exclusive lock on `/etc/rollout/sync.lock` (excluded from syncs)
/// for as long as it lives.
struct Lock(#[allow(dead_code)] std::fs::File);

fn lock(root: &Path) -> Result<Lock, SyncError> {
    let path = in_root(root, "/etc/rollout/sync.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io("open", &path))?;
    // SAFETY: flock on a descriptor we own; released when the file is closed.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(SyncError::Locked(path.display().to_string()));
    }
    Ok(Lock(f))
}

fn fetch_published(conf: &NodeConf) -> Result<u64, SyncError> {
    let url = serial_url(&conf.server, &conf.image);
    let err = |reason: String| SyncError::Serial {
        url: url.clone(),
        reason,
    };
    let mut last = String::new();
    for attempt in 1..=3 {
        match http::get(&url, Duration::from_secs(10)) {
            Ok(r) if r.is_success() => {
                return parse_serial(&r.text())
                    .ok_or_else(|| err(format!("answer {:?} is not a serial", r.text().trim())))
            }
            // The server answered: retrying will not change its mind.
            Ok(r) => {
                return Err(err(format!(
                    "server answered {}: {}",
                    r.status,
                    r.text().trim()
                )))
            }
            Err(e) => last = e.to_string(),
        }
        if attempt < 3 {
            std::thread::sleep(Duration::from_secs(2 * attempt));
        }
    }
    Err(err(last))
}

/// What a sync did, for the one-line summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    UpToDate(u64),
    Updated {
        from: Option<u64>,
        to: u64,
        bytes: u64,
        reboot: bool,
        /// Non-fatal notes (bootloader, hooks, phone-home).
        notes: Vec<String>,
    },
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Report::UpToDate(s) => write!(f, "up to date (serial {s})"),
            Report::Updated {
                from,
                to,
                bytes,
                reboot,
                ..
            } => {
                let from = from.map_or("none".to_string(), |s| s.to_string());
                let reboot = if *reboot { "yes" } else { "no" };
                write!(
                    f,
                    "updated {from} → {to}, {bytes} bytes transferred, reboot needed: {reboot}"
                )
            }
        }
    }
}

/// Writes the serial through a rename, so it is either the old or the new one.
pub fn write_serial(root: &Path, serial: u64) -> Result<(), SyncError> {
    let path = in_root(root, paths::NODE_SERIAL);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{serial}\n")).map_err(io("write", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io("rename into place", &path))
}

fn report_serial(root: &Path) -> Result<(), String> {
    let (url, report) = phone_home::build(root).map_err(|e| e.to_string())?;
    let body = render::phone_home_json(&report);
    match http::post_json(&url, None, &body, Duration::from_secs(10)) {
        Ok(r) if r.is_success() => Ok(()),
        Ok(r) => Err(format!("{url} answered {}: {}", r.status, r.text().trim())),
        Err(e) => Err(e.to_string()),
    }
}

/// The whole sync against `root` (`/` on a node). `log` gets progress lines.
pub fn run(root: &Path, mut log: impl FnMut(&str)) -> Result<Report, SyncError> {
    let conf = read_conf(root)?;
    let _lock = lock(root)?;
    let published = fetch_published(&conf)?;
    let (from, to) = match decide(local_serial(root), published) {
        Decision::UpToDate(s) => return Ok(Report::UpToDate(s)),
        Decision::Update { from, to } => (from, to),
    };
    let url = module_url(&conf, to)?;
    log(&format!("syncing {url} onto {}", root.display()));
    let dest = root.to_string_lossy().to_string();
    let outcome = rsync::copy_with(
        &url,
        &dest,
        &excludes(),
        EXTRA_FLAGS,
        5,
        Duration::from_secs(3600),
        |_| {},
        |attempt, why| log(&format!("rsync attempt {attempt} failed ({why}); retrying")),
    )?;
    let bytes = bytes_received(&outcome.lines);
    let target = boot_target(root);
    let reboot =
        boot_changed(&outcome.lines) || (target == BootTarget::Extlinux && extlinux_stale(root));
    let mut notes = Vec::new();
    // The ESP copy of the kernel cannot be compared cheaply: refresh it always.
    if reboot || matches!(target, BootTarget::SdBoot { .. }) {
        let title = format!("{} serial {to}", conf.image);
        notes.push(update_bootloader(root, &title, to)?);
    }
    // A new image may bring a new /etc/inittab without the phone-home entry.
    match configure::hook_phone_home(root) {
        Ok(n) => notes.push(n),
        Err(e) => notes.push(format!("note: re-hooking phone-home failed: {e}")),
    }
    crate::sys::sync();
    write_serial(root, to)?;
    crate::sys::sync();
    if let Err(e) = report_serial(root) {
        notes.push(format!(
            "note: could not report serial {to} to the server: {e}"
        ));
    }
    Ok(Report::Updated {
        from,
        to,
        bytes,
        reboot,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(s: &[&str]) -> Vec<String> {
        s.iter().map(|l| l.to_string()).collect()
    }

    #[test]
    fn decision_follows_the_published_serial() {
        assert_eq!(decide(Some(4), 4), Decision::UpToDate(4));
        assert_eq!(
            decide(Some(4), 5),
            Decision::Update {
                from: Some(4),
                to: 5
            }
        );
        assert_eq!(
            decide(Some(5), 4),
            Decision::Update {
                from: Some(5),
                to: 4
            },
            "rollback"
        );
        assert_eq!(decide(None, 1), Decision::Update { from: None, to: 1 });
        assert_eq!(parse_serial("12\n"), Some(12));
        assert_eq!(parse_serial("<html>"), None);
    }

    #[test]
    fn stats_sum_received_bytes_over_attempts() {
        let l = lines(&[
            ">f+++++++++ etc/x",
            "Total bytes sent: 219",
            "Total bytes received: 1,234,567",
            "sent 219 bytes  received 69 bytes  576.00 bytes/sec",
            "Total bytes received: 10",
        ]);
        assert_eq!(bytes_received(&l), 1_234_577);
        assert_eq!(bytes_received(&lines(&["nothing"])), 0);
    }

    #[test]
    fn boot_changes_need_a_file_change_under_boot() {
        assert!(boot_changed(&lines(&[">f+++++++++ boot/vmlinuz-6.1"])));
        assert!(boot_changed(&lines(&["*deleting   boot/initrd.img-6.0"])));
        assert!(boot_changed(&lines(&["cL+++++++++ boot/vmlinuz -> x"])));
        assert!(boot_changed(&lines(&[">f.st...... boot/config"])));
        assert!(!boot_changed(&lines(&[".d..t...... boot/"])));
        assert!(!boot_changed(&lines(&["cd+++++++++ boot/grub/"])));
        assert!(!boot_changed(&lines(&[".f...p..... boot/vmlinuz-6.1"])));
        assert!(!boot_changed(&lines(&[">f+++++++++ etc/boot/x"])));
        assert!(!boot_changed(&lines(&[">f+++++++++ bootstrap"])));
        assert!(!boot_changed(&lines(&["Total bytes received: 5"])));
    }

    #[test]
    fn keeps_root_uuid_and_options_from_the_current_entry() {
        let conf = "DEFAULT rollout\nLABEL rollout\n  LINUX /boot/vmlinuz-1\n  APPEND root=UUID=abc-1 ro console=ttyS0 quiet\n";
        assert_eq!(
            current_options(conf),
            Some(("abc-1".into(), "console=ttyS0 quiet".into()))
        );
        let entry = "title t\nlinux /rollout/vmlinuz\noptions root=UUID=u2 ro\n";
        assert_eq!(current_options(entry), Some(("u2".into(), String::new())));
        assert_eq!(current_options("APPEND root=/dev/sda1 ro"), None);
        assert_eq!(extlinux_kernel(conf), Some("/boot/vmlinuz-1"));
        assert_eq!(extlinux_kernel("DEFAULT x\n"), None);
    }

    #[test]
    fn urls_and_excludes() {
        let mut c = NodeConf {
            server: "http://10.44.0.1:8080/".into(),
            image: "web".into(),
            rsync: None,
        };
        assert_eq!(
            serial_url(&c.server, "web"),
            "http://10.44.0.1:8080/api/v1/images/web/serial"
        );
        assert_eq!(module_url(&c, 7).unwrap(), "rsync://10.44.0.1/web-7/");
        c.rsync = Some("rsync://10.44.0.1:8873/".into());
        assert_eq!(module_url(&c, 7).unwrap(), "rsync://10.44.0.1:8873/web-7/");
        let ex = excludes();
        for must in [
            "/etc/hostname",
            "/etc/fstab",
            "/etc/rollout/",
            paths::NODE_SYNC_BINARY,
            "/root/.ssh/authorized_keys",
            "/boot/extlinux/",
        ] {
            assert!(ex.iter().any(|e| e == must), "{must} missing from {ex:?}");
        }
    }

    #[test]
    fn report_lines() {
        assert_eq!(Report::UpToDate(3).to_string(), "up to date (serial 3)");
        let r = Report::Updated {
            from: Some(3),
            to: 4,
            bytes: 99,
            reboot: true,
            notes: vec![],
        };
        assert_eq!(
            r.to_string(),
            "updated 3 → 4, 99 bytes transferred, reboot needed: yes"
        );
    }

    #[test]
    fn serial_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc/rollout")).unwrap();
        assert_eq!(local_serial(dir.path()), None);
        write_serial(dir.path(), 8).unwrap();
        assert_eq!(local_serial(dir.path()), Some(8));
        assert!(!dir.path().join("etc/rollout/serial.tmp").exists());
    }
}
