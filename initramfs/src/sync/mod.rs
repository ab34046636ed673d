//! `rollout-sync sync`: brings an installed node to the image serial the server
//! publishes, with rsync `--delete` onto the live root. Node-local files (the
//! installer's excludes and everything it wrote) are kept; the recorded serial
//! changes only after the copy and the bootloader update both succeeded.

use crate::fileop::{io, FileError};
use crate::nodetoml::{NodeToml, NodeTomlError};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rollout::wire;

use crate::{bootloader, configure, paths, rsync};

mod boot;
mod remote;

pub use boot::{boot_changed, boot_target, current_options, extlinux_kernel, BootTarget};
use boot::{extlinux_stale, update_bootloader};
pub use remote::{excludes_url, module_url, parse_excludes, parse_serial, serial_url};
use remote::{fetch_excludes, fetch_published, report_serial};

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    NodeToml(#[from] NodeTomlError),
    #[error("asking the server {url}: {reason}; nothing was changed, run the sync again once the server answers")]
    Server { url: String, reason: String },
    #[error("another rollout-sync has held {0} for 10 minutes; see whether it hangs (ps, journalctl -u rollout-sync) before running it again")]
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
    #[error(transparent)]
    Io(#[from] FileError),
}

/// What `/etc/rollout/node.toml` says about this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConf {
    pub server: String,
    pub image: String,
    /// `rsync://host[:port]` of the server's rsync daemon, when the installer
    /// recorded it; otherwise the server's host on the default port.
    pub rsync: Option<String>,
    /// The node's Bearer for the server ([`paths::NODE_SECRET`]).
    pub secret: String,
    /// The node's rsync login.
    pub rsync_auth: wire::RsyncCredential,
}

pub fn in_root(root: &Path, p: &str) -> PathBuf {
    root.join(p.trim_start_matches('/'))
}

pub fn read_conf(root: &Path) -> Result<NodeConf, SyncError> {
    let conf = NodeToml::read(root)?;
    Ok(NodeConf {
        server: conf.require("server")?,
        image: conf.require("image")?,
        rsync: conf.get("rsync").map(String::from),
        secret: crate::nodetoml::node_secret(root)?,
        rsync_auth: crate::nodetoml::node_rsync(root, &conf)?,
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

/// Excludes for an update: the image's node-local paths as the server lists them
/// now, the installer's defaults, everything the installer wrote, and the
/// installed extlinux (ldlinux.sys must not move on disk).
pub fn excludes(image: &[String]) -> Vec<String> {
    let mut all: Vec<String> = Vec::new();
    let fixed = wire::DEFAULT_EXCLUDES
        .iter()
        .chain(configure::INSTALLER_WRITTEN)
        .chain(&["/boot/extlinux/"])
        .map(|s| s.to_string());
    for e in image.iter().cloned().chain(fixed) {
        if !all.contains(&e) {
            all.push(e);
        }
    }
    all
}

/// rsync filter rules that keep a sync off the node's other mounts, read from
/// its fstab. A network or tmpfs mount's contents are not the image's to
/// update (an NFS `/usr` is the export's, often read-only; a tmpfs holds
/// running state): excluded. A local data filesystem (`/scratch`, `/var/log`
/// on its own disk) keeps what the image lacks: protected from `--delete`,
/// while the image's files there are still updated. `/boot` and the ESP are
/// the image's kernels and are synced like the root. Every mount point itself
/// survives a sync even when the image has no such directory (rmdir of a
/// mount point fails with EBUSY and failed the whole sync).
pub fn mount_filters(fstab: &str) -> Vec<String> {
    let mut rules = Vec::new();
    for l in fstab.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
        let f: Vec<&str> = l.split_whitespace().collect();
        let (mount, kind) = match f.as_slice() {
            [_, mount, kind, ..] if mount.starts_with('/') && *mount != "/" => (*mount, *kind),
            _ => continue,
        };
        let mount = mount.trim_end_matches('/');
        if mount == "/boot" || mount.starts_with("/boot/") || kind == "swap" {
            continue;
        }
        rules.push(format!("--filter=P {mount}"));
        if matches!(kind, "nfs" | "nfs4" | "tmpfs") {
            rules.push(format!("--filter=- {mount}/*"));
        } else {
            rules.push(format!("--filter=P {mount}/***"));
        }
    }
    rules
}

/// rsync flags on top of the installer's copy flags: delete what the image no
/// longer has, except the node's own state ([`wire::NODE_STATE`]).
pub fn extra_flags() -> Vec<String> {
    ["--delete", "--stats", "--itemize-changes"]
        .iter()
        .map(|s| s.to_string())
        .chain(wire::NODE_STATE.iter().map(|p| format!("--filter=P {p}")))
        .collect()
}

/// Every rsync flag of a node's sync on top of the copy flags: [`extra_flags`]
/// and the [`mount_filters`] of the node's fstab.
pub fn flags_for(fstab: &str) -> Vec<String> {
    let mut flags = extra_flags();
    flags.extend(mount_filters(fstab));
    flags
}

/// Sum of `Total bytes received:` over every `--stats` block in `lines`.
pub fn bytes_received(lines: &[String]) -> u64 {
    lines
        .iter()
        .filter_map(|l| l.trim().strip_prefix("Total bytes received:"))
        .filter_map(|v| v.trim().replace(',', "").parse::<u64>().ok())
        .sum()
}

/// Holds an exclusive lock on `/etc/rollout/sync.lock` (excluded from syncs)
/// for as long as it lives.
struct Lock(#[allow(dead_code)] std::fs::File);

/// How long a sync waits for one already running (the node's timer, say) before
/// giving up; the running one finishes a copy of the changes in far less.
const LOCK_WAIT: Duration = Duration::from_secs(600);

fn lock(root: &Path, wait: Duration, log: &mut impl FnMut(&str)) -> Result<Lock, SyncError> {
    let path = in_root(root, "/etc/rollout/sync.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io("open", &path))?;
    let deadline = std::time::Instant::now() + wait;
    let mut said = false;
    // SAFETY: flock on a descriptor we own; released when the file is closed.
    while unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        if std::time::Instant::now() >= deadline {
            return Err(SyncError::Locked(path.display().to_string()));
        }
        if !said {
            log("another rollout-sync is running (the node's timer?); waiting for it");
            said = true;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(Lock(f))
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
    std::fs::rename(&tmp, &path).map_err(io("rename into place", &path))?;
    Ok(())
}

/// The whole sync against `root` (`/` on a node). `log` gets progress lines.
pub fn run(root: &Path, mut log: impl FnMut(&str)) -> Result<Report, SyncError> {
    let conf = read_conf(root)?;
    let _lock = lock(root, LOCK_WAIT, &mut log)?;
    let published = fetch_published(&conf)?;
    let (from, to) = match decide(local_serial(root), published) {
        Decision::UpToDate(s) => return Ok(Report::UpToDate(s)),
        Decision::Update { from, to } => (from, to),
    };
    let image_excludes = fetch_excludes(&conf)?;
    let fstab = std::fs::read_to_string(in_root(root, "/etc/fstab")).unwrap_or_default();
    let flags = flags_for(&fstab);
    let url = module_url(&conf, to)?;
    log(&format!("syncing {url} onto {}", root.display()));
    let dest = root.to_string_lossy().to_string();
    let outcome = rsync::copy_with(
        &url,
        Some(&conf.rsync_auth),
        &dest,
        &excludes(&image_excludes),
        &flags.iter().map(String::as_str).collect::<Vec<_>>(),
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
    fn urls_and_excludes() {
        let mut c = NodeConf {
            server: "http://10.44.0.1:8080/".into(),
            image: "web".into(),
            rsync: None,
            secret: "s".into(),
            rsync_auth: wire::RsyncCredential::default(),
        };
        assert_eq!(
            serial_url(&c.server, "web"),
            "http://10.44.0.1:8080/api/v1/images/web/serial"
        );
        assert_eq!(module_url(&c, 7).unwrap(), "rsync://10.44.0.1/web-7/");
        c.rsync = Some("rsync://10.44.0.1:8873/".into());
        assert_eq!(module_url(&c, 7).unwrap(), "rsync://10.44.0.1:8873/web-7/");
        assert_eq!(
            excludes_url(&c.server, "web"),
            "http://10.44.0.1:8080/api/v1/images/web/excludes"
        );
        let ex = excludes(&["/var/lib/site/".to_string(), "/etc/hostname".to_string()]);
        assert_eq!(ex[0], "/var/lib/site/", "the image's own come first");
        assert_eq!(ex.iter().filter(|e| *e == "/etc/hostname").count(), 1);
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
    fn other_mounts_are_kept_out_of_a_sync() {
        let fstab = "# /etc/fstab\nUUID=r\t/\text3\terrors=remount-ro\t0\t1\nUUID=b /boot ext4 defaults 0 2\nUUID=e /boot/efi vfat umask=0077 0 1\nUUID=s none swap sw 0 0\nnfs1:/export/usr\t/usr\tnfs\tro,nolock\t0\t0\nnfs1:/home /home/ nfs4 defaults 0 0\ntmpfs\t/tmp\ttmpfs\tdefaults\t0\t0\nUUID=x /scratch xfs defaults 0 2\n#nfs1:/x /x nfs ro 0 0\n";
        assert_eq!(
            mount_filters(fstab),
            [
                "--filter=P /usr",
                "--filter=- /usr/*",
                "--filter=P /home",
                "--filter=- /home/*",
                "--filter=P /tmp",
                "--filter=- /tmp/*",
                "--filter=P /scratch",
                "--filter=P /scratch/***",
            ]
        );
        assert!(mount_filters("").is_empty());
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

    /// A sync started while another runs (the node's timer) waits for it
    /// instead of failing, up to a limit.
    #[test]
    fn a_second_sync_waits_for_the_running_one() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc/rollout")).unwrap();
        let held = lock(dir.path(), Duration::ZERO, &mut |_| {}).unwrap();
        let err = lock(dir.path(), Duration::from_millis(300), &mut |_| {});
        assert!(matches!(err, Err(SyncError::Locked(_))));
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(700));
            drop(held);
        });
        let mut said = Vec::new();
        lock(dir.path(), Duration::from_secs(10), &mut |l| {
            said.push(l.to_string())
        })
        .unwrap();
        assert!(said[0].contains("waiting for it"), "{said:?}");
        release.join().unwrap();
    }
}
