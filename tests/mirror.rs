//! Image mirroring against real rsync daemons on 127.0.0.1: a primary's
//! `rsync --daemon` (the supervisor `rollout serve` runs, with the mirror module
//! exported) and a mirror pulling from it with the real rsync client.
//!
//! Needs root (the daemon reads images as uid 0 in a chroot) and rsync: a machine
//! without them fails these tests rather than skipping them.

use rollout::config::{ImageConfig, MirrorUrl, MIRROR_MODULE, MIRROR_USER};
use rollout::images::mirror::status::{MirrorState, MirrorStatus};
use rollout::images::mirror::{Mirror, MirrorError, Pulled};
use rollout::images::rsyncd::{RsyncUser, RsyncdSettings, Supervisor};
use rollout::images::Images;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const PASSWORD: &str = "mirror-0123456789abcdef";

fn prerequisites() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests run rsync daemons that read images as root: run them as root"
    );
    assert!(
        std::process::Command::new("rsync")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "rsync is not installed (apt-get install rsync)"
    );
}

fn write_file(path: &Path, data: &[u8], mode: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn random_bytes(n: usize) -> Vec<u8> {
    use std::io::Read;
    let mut buf = vec![0; n];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut buf)
        .unwrap();
    buf
}

/// A small root with what rsync must carry exactly: modes, a symlink, a hard
/// link, an owner other than root, and a node-local path the [[image]] strips.
fn source_tree(dir: &Path, version: &str, big: &[u8]) -> PathBuf {
    let root = dir.join(format!("src-{version}"));
    write_file(&root.join("etc/version"), version.as_bytes(), 0o644);
    // Every version has the same size and mtime: only the contents tell them
    // apart (as a one-character edit in `enter` within a second would). The
    // store needs another change to see a new serial (it compares metadata).
    write_file(&root.join(format!("etc/release-{version}")), b"", 0o644);
    std::fs::File::options()
        .write(true)
        .open(root.join("etc/version"))
        .unwrap()
        .set_modified(std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        .unwrap();
    write_file(&root.join("etc/shadow"), b"root:*:1::::::\n", 0o600);
    write_file(&root.join("usr/lib/big"), big, 0o644);
    write_file(&root.join("var/lib/site/local"), b"node-local", 0o644);
    std::fs::hard_link(root.join("etc/version"), root.join("etc/version.hard")).unwrap();
    std::os::unix::fs::symlink("../usr/lib/big", root.join("etc/big-link")).unwrap();
    std::os::unix::fs::chown(root.join("etc/shadow"), Some(1234), Some(42)).unwrap();
    root
}

fn primary_images(state: &Path) -> Images {
    Images::new(state).configured(vec![ImageConfig {
        name: "web".into(),
        excludes: vec!["/var/lib/site/".into()],
        mounts: vec![],
    }])
}

/// The primary's rsync daemon with the mirror module, until `cancel`.
struct Primary {
    state: PathBuf,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), rollout::images::ImageError>>,
}

impl Primary {
    async fn start(state: &Path, port: u16, export: bool) -> Primary {
        let mut settings = RsyncdSettings::new(
            state,
            "127.0.0.1".parse().unwrap(),
            vec!["127.0.0.1".into()],
        );
        settings.port = port;
        if export {
            settings.mirror_hosts = Some(vec!["127.0.0.1".into()]);
        }
        let mut sup = Supervisor::new(settings);
        sup.refresh_every = Duration::from_millis(200);
        sup.users = std::sync::Arc::new(|| {
            vec![RsyncUser {
                user: MIRROR_USER.into(),
                password: PASSWORD.into(),
                image: MIRROR_MODULE.into(),
            }]
        });
        let cancel = CancellationToken::new();
        let task = tokio::spawn(sup.run(cancel.clone()));
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the primary's rsync daemon never listened"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Primary {
            state: state.to_path_buf(),
            cancel,
            task,
        }
    }

    async fn stop(self) {
        self.cancel.cancel();
        let done = tokio::time::timeout(Duration::from_secs(15), self.task).await;
        assert!(matches!(done, Ok(Ok(Ok(())))), "{done:?}");
    }

    fn images(&self) -> Images {
        primary_images(&self.state)
    }
}

fn mirror(state: &Path, port: u16, password: &str) -> Mirror {
    let pw = state.with_extension("password");
    write_file(&pw, format!("{password}\n").as_bytes(), 0o600);
    let url = MirrorUrl::try_from(format!("rsync://127.0.0.1:{port}/").as_str()).unwrap();
    let mut m = Mirror::new(state, url, pw);
    m.interval = Duration::from_secs(1);
    m.client.io_timeout = Duration::from_secs(20);
    m
}

fn status() -> MirrorStatus {
    MirrorStatus::new("test".into())
}

/// Everything rsync must reproduce, per path: type and mode, owner, size,
/// mtime (seconds), symlink target, contents, and which paths share an inode.
fn fingerprint(root: &Path) -> Vec<String> {
    let inv = rollout::images::tree::scan(root).unwrap();
    let mut first_name: std::collections::HashMap<(u64, u64), String> = Default::default();
    inv.iter()
        .map(|(name, n)| {
            let path = root.join(name.trim_start_matches('/'));
            let contents = if n.mode & 0o170000 == 0o100000 {
                let data = std::fs::read(&path).unwrap();
                format!(
                    "{:x}",
                    data.iter()
                        .fold(0u64, |h, b| h.wrapping_mul(131).wrapping_add(*b as u64))
                )
            } else {
                String::new()
            };
            let nlink = std::fs::symlink_metadata(&path).unwrap().nlink();
            let same = if nlink > 1 {
                first_name
                    .entry(n.dev_ino)
                    .or_insert_with(|| name.clone())
                    .clone()
            } else {
                String::new()
            };
            format!(
                "{name} {:o} {}:{} {} {} {:?} {contents} {same}",
                n.mode,
                n.uid,
                n.gid,
                n.size,
                n.mtime_ns / 1_000_000_000,
                n.link
            )
        })
        .collect()
}

fn assert_same_serial(primary: &Images, mirror: &Images, serial: u64) {
    assert_eq!(
        fingerprint(&primary.serial_root("web", serial)),
        fingerprint(&mirror.serial_root("web", serial)),
        "serial {serial} differs"
    );
    assert_eq!(
        primary.meta("web", serial).unwrap(),
        mirror.meta("web", serial).unwrap()
    );
    let excludes =
        |i: &Images| std::fs::read_to_string(i.serial_dir("web", serial).join("excludes")).unwrap();
    assert_eq!(excludes(primary), excludes(mirror));
}

/// A primary whose image "web" serial 1 holds a 16 MiB file, and a mirror of it
/// limited to 2 MiB/s: a copy that takes about 8 s, to interrupt.
async fn slow_copy(t: &Path) -> (u16, Primary, Mirror, PathBuf) {
    let port = testkit::ports::free_port();
    let primary = Primary::start(&t.join("primary"), port, true).await;
    primary
        .images()
        .import(
            "web",
            &source_tree(t, "1", &random_bytes(16 << 20)),
            "",
            &[],
        )
        .unwrap();
    let m_state = t.join("mirror");
    let mut m = mirror(&m_state, port, PASSWORD);
    m.client.bwlimit = 2048; // KiB/s: 8 s for the big file
    (port, primary, m, m_state)
}

async fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Bytes under `dir` (a staging copy in progress).
fn bytes_under(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.filter_map(|e| e.ok())
        .map(|e| {
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                bytes_under(&e.path())
            } else {
                m.len()
            }
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_copies_every_serial_exactly_and_follows_publish_and_prune() {
    prerequisites();
    let t = tempfile::tempdir().unwrap();
    let port = testkit::ports::free_port();
    let primary = Primary::start(&t.path().join("primary"), port, true).await;
    let big = random_bytes(2 << 20);
    let p = primary.images();
    p.import("web", &source_tree(t.path(), "1", &big), "first", &[])
        .unwrap();
    p.import("web", &source_tree(t.path(), "2", &big), "second", &[])
        .unwrap();
    assert_eq!(p.serials("web").unwrap(), [1, 2]);

    let m_state = t.path().join("mirror");
    let m = mirror(&m_state, port, PASSWORD);
    let cancel = CancellationToken::new();
    m.sync_once(&cancel, &mut status()).await.unwrap();
    let local = Images::new(&m_state);
    assert_eq!(local.serials("web").unwrap(), [1, 2]);
    assert_eq!(local.published("web").unwrap(), Some(2));
    assert_same_serial(&p, &local, 1);
    assert_same_serial(&p, &local, 2);
    assert!(
        !local.serial_root("web", 2).join("var/lib/site").exists(),
        "stripped on the primary"
    );
    assert_eq!(
        std::fs::read_to_string(local.published_root("web").join("etc/version")).unwrap(),
        "2"
    );
    assert!(
        !local.image_dir("web").join("mirror-staging/2").exists(),
        "staging is renamed into place"
    );

    // Nodes of the mirror keep what the primary's [[image]] says is node-local.
    let config = rollout::config::Config::parse(&format!(
        "state_dir = \"{}\"\n[images]\nmirror_from = \"rsync://127.0.0.1:{port}/\"\nmirror_password_file = \"/p\"\n",
        m_state.display()
    ))
    .unwrap();
    assert!(config
        .excludes_for("web")
        .contains(&"/var/lib/site/".to_string()));

    // A new serial costs its changes: the unchanged 2 MiB comes from serial 2 here.
    p.import("web", &source_tree(t.path(), "3", &big), "third", &[])
        .unwrap();
    let pulled = m.pull("web", 3, &cancel, &mut status()).await.unwrap();
    let Pulled::Complete(stats) = pulled else {
        panic!("{pulled:?}")
    };
    assert!(stats.total_size > 2 << 20, "{stats:?}");
    assert!(
        stats.literal < 1 << 20,
        "unchanged data crossed the network again: {stats:?}"
    );
    assert_same_serial(&p, &local, 3);
    m.sync_once(&cancel, &mut status()).await.unwrap();
    assert_eq!(local.published("web").unwrap(), Some(3));

    // A rollback on the primary is followed, and so is a prune.
    p.rollback("web", 1).unwrap();
    m.sync_once(&cancel, &mut status()).await.unwrap();
    assert_eq!(local.published("web").unwrap(), Some(1));
    p.rollback("web", 3).unwrap();
    assert_eq!(p.prune("web", 1, &[]).unwrap(), [1, 2]);
    m.sync_once(&cancel, &mut status()).await.unwrap();
    assert_eq!(local.serials("web").unwrap(), [3]);
    assert_eq!(local.published("web").unwrap(), Some(3));
    primary.stop().await;
}

/// The mirror is stopped mid-copy (as when `rollout serve` is restarted): nothing
/// is published, the partial copy stays, and the next pull resumes from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_copy_resumes_and_never_publishes_half() {
    prerequisites();
    let t = tempfile::tempdir().unwrap();
    let (port, primary, m, m_state) = slow_copy(t.path()).await;
    let size = 16 << 20;
    let p = primary.images();
    let staging = m.staging_dir("web", 1);
    let local = Images::new(&m_state);
    let cancel = CancellationToken::new();
    let running = tokio::spawn(m.run(cancel.clone()));
    wait_until("a quarter of the copy", Duration::from_secs(30), || {
        assert!(
            local.serials("web").unwrap().is_empty(),
            "published before complete"
        );
        bytes_under(&staging) > (size as u64) / 4
    })
    .await;
    // Operators see the copy move (rsync's progress, live).
    wait_until("progress in the status", Duration::from_secs(10), || {
        assert!(local.serials("web").unwrap().is_empty(), "published before complete");
        let shown = MirrorStatus::read(&m_state).unwrap();
        matches!(&shown.state, MirrorState::Copying { image, serial: 1, percent, bytes } if image == "web" && *percent > 0 && *percent < 100 && *bytes > 0)
            && shown.to_string().contains("copying web serial 1: ")
    })
    .await;
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(15), running)
        .await
        .unwrap()
        .unwrap();
    assert!(
        local.serials("web").unwrap().is_empty(),
        "a half copy was published"
    );
    assert_eq!(
        MirrorStatus::read(&m_state).unwrap().state,
        MirrorState::Stopped
    );
    assert_eq!(local.published("web").unwrap(), None);
    let kept = std::fs::metadata(staging.join("root/usr/lib/big"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(
        kept > 0 && kept < size as u64,
        "the partial file was not kept for the resume: {kept} bytes"
    );

    // Restarted (no bandwidth limit now): only what is missing crosses the network.
    let m = mirror(&m_state, port, PASSWORD);
    let pulled = m
        .pull("web", 1, &CancellationToken::new(), &mut status())
        .await
        .unwrap();
    let Pulled::Complete(stats) = pulled else {
        panic!("{pulled:?}")
    };
    assert!(
        stats.matched >= kept / 2,
        "the partial copy was not reused: {stats:?}, {kept} kept"
    );
    assert!(stats.literal < size as u64 - kept / 2, "{stats:?}");
    assert_same_serial(&p, &local, 1);
    primary.stop().await;
}

/// The processes of the primary's rsync daemon (the listener and the one serving
/// each connection), found by the config file they were started with.
fn daemon_pids(state: &Path) -> Vec<i32> {
    let conf = format!("--config={}", state.join("rsyncd.conf").display());
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == conf.as_bytes()))
        })
        .collect()
}

/// Sends `signal` to the daemon's processes; continues them when dropped, so a
/// failing test leaves nothing stopped behind.
struct Frozen(Vec<i32>);

impl Frozen {
    fn freeze(state: &Path) -> Frozen {
        let pids = daemon_pids(state);
        assert!(!pids.is_empty(), "no rsync daemon of {}", state.display());
        for &pid in &pids {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGSTOP);
        }
        Frozen(pids)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for &pid in &self.0 {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGCONT);
        }
    }
}

/// The primary stops answering mid-copy (its daemon frozen, as behind a dead
/// link): rsync gives up after its I/O timeout, the mirror reports the error and
/// keeps retrying, publishes nothing, and keeps what it copied for the next try.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_network_is_an_error_that_publishes_nothing_and_resumes() {
    prerequisites();
    let t = tempfile::tempdir().unwrap();
    let (port, primary, mut m, m_state) = slow_copy(t.path()).await;
    let p_state = t.path().join("primary");
    let size = 16 << 20;
    let p = primary.images();
    m.client.io_timeout = Duration::from_secs(3);
    let staging = m.staging_dir("web", 1);
    let local = Images::new(&m_state);
    let cancel = CancellationToken::new();
    let running = tokio::spawn(m.run(cancel.clone()));
    wait_until("a quarter of the copy", Duration::from_secs(30), || {
        bytes_under(&staging) > (size as u64) / 4
    })
    .await;
    let frozen = Frozen::freeze(&p_state);
    wait_until("the error in the status", Duration::from_secs(30), || {
        assert!(
            local.serials("web").unwrap().is_empty(),
            "published before complete"
        );
        matches!(
            MirrorStatus::read(&m_state).map(|s| s.state),
            Some(MirrorState::Error { cause, .. }) if cause.contains("cannot reach the primary")
        )
    })
    .await;
    assert!(!running.is_finished(), "the mirror gave up");
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(15), running)
        .await
        .unwrap()
        .unwrap();
    let kept = std::fs::metadata(staging.join("root/usr/lib/big"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(kept > 0 && kept < size as u64, "nothing kept: {kept} bytes");
    assert!(local.serials("web").unwrap().is_empty());

    // The link is back.
    drop(frozen);
    let m = mirror(&m_state, port, PASSWORD);
    let pulled = m
        .pull("web", 1, &CancellationToken::new(), &mut status())
        .await
        .unwrap();
    let Pulled::Complete(stats) = pulled else {
        panic!("{pulled:?}")
    };
    assert!(stats.matched >= kept / 2, "{stats:?}, {kept} kept");
    assert_same_serial(&p, &local, 1);
    primary.stop().await;
}

/// `rollout image prune` on the primary while a mirror copies that serial: the
/// mirror discards its copy (never publishing it) and goes on with the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serial_pruned_during_its_copy_is_discarded() {
    prerequisites();
    let t = tempfile::tempdir().unwrap();
    let (_port, primary, m, m_state) = slow_copy(t.path()).await;
    let p = primary.images();
    p.import("web", &source_tree(t.path(), "2", b"small"), "", &[])
        .unwrap();

    let staging = m.staging_dir("web", 1);
    let local = Images::new(&m_state);
    let cancel = CancellationToken::new();
    let running = tokio::spawn(m.run(cancel.clone()));
    // The published serial 2 comes first, then serial 1 slowly.
    wait_until("serial 1 being copied", Duration::from_secs(30), || {
        bytes_under(&staging) > 1 << 20
    })
    .await;
    assert_eq!(local.serials("web").unwrap(), [2]);
    assert_eq!(p.prune("web", 1, &[]).unwrap(), [1]);
    wait_until("the mirror to be idle", Duration::from_secs(60), || {
        assert!(
            !local.serials("web").unwrap().contains(&1),
            "the pruned serial was published"
        );
        matches!(
            MirrorStatus::read(&m_state).map(|s| s.state),
            Some(MirrorState::Idle)
        )
    })
    .await;
    assert!(
        !staging.exists(),
        "the staging copy of the pruned serial stayed"
    );
    assert_eq!(local.serials("web").unwrap(), [2]);
    assert_eq!(local.published("web").unwrap(), Some(2));
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(15), running)
        .await
        .unwrap()
        .unwrap();
    primary.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_passwords_unreachable_primaries_and_missing_exports_say_what_to_fix() {
    prerequisites();
    let t = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    let port = testkit::ports::free_port();
    let m_state = t.path().join("mirror");

    // Nobody listens: unreachable, and the loop keeps retrying and says so.
    let m = mirror(&m_state, port, PASSWORD);
    let e = m.sync_once(&cancel, &mut status()).await.unwrap_err();
    assert!(matches!(e, MirrorError::Unreachable { .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("cannot reach the primary") && text.contains(&port.to_string()),
        "{text}"
    );
    let running = tokio::spawn(m.run(cancel.clone()));
    wait_until("the error in the status", Duration::from_secs(15), || {
        matches!(MirrorStatus::read(&m_state).map(|s| s.state), Some(MirrorState::Error { cause, .. }) if cause.contains("cannot reach"))
    })
    .await;
    assert!(!running.is_finished(), "the mirror gave up");

    // The primary starts: the running mirror catches up on its own.
    let primary = Primary::start(&t.path().join("primary"), port, true).await;
    primary
        .images()
        .import("web", &source_tree(t.path(), "1", b"x"), "", &[])
        .unwrap();
    let local = Images::new(&m_state);
    wait_until("the mirror to catch up", Duration::from_secs(30), || {
        local.published("web").unwrap() == Some(1)
            && matches!(
                MirrorStatus::read(&m_state).map(|s| s.state),
                Some(MirrorState::Idle)
            )
    })
    .await;
    cancel.cancel();
    running.await.unwrap();

    let e = mirror(&m_state, port, "wrong-password-123")
        .sync_once(&CancellationToken::new(), &mut status())
        .await
        .unwrap_err();
    assert!(matches!(e, MirrorError::AuthFailed { .. }), "{e}");
    assert!(e.to_string().contains("refused the mirror password"), "{e}");
    primary.stop().await;

    // A primary that exports nothing to mirrors.
    let other = testkit::ports::free_port();
    let plain = Primary::start(&t.path().join("plain"), other, false).await;
    let e = mirror(&m_state, other, PASSWORD)
        .sync_once(&CancellationToken::new(), &mut status())
        .await
        .unwrap_err();
    assert!(
        matches!(e, MirrorError::NotExported { .. })
            && e.to_string().contains("mirror_password_file on it"),
        "{e}"
    );
    plain.stop().await;
}
