//! Golden images end to end on this host: import, enter (chroot in a private mount
//! namespace), stripping, history, locking, and the rsync daemon with a real client.
//! Needs root (chroot, mount namespaces) and a static busybox to act as the image's shell.

mod common;

use common::image_tree::{can_enter_images, mounts_under, sample_tree, sh};
use rollout::images::enter::EnterOptions;
use rollout::images::rsyncd::{RsyncdSettings, Supervisor};
use rollout::images::{ImageError, Images};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn import_enter_strips_and_records_history() {
    if !can_enter_images() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let images = Images::new(&t.path().join("state"));
    let src = sample_tree(t.path());

    let m1 = images.import("img", &src, "first", &[]).unwrap().unwrap();
    assert_eq!(m1.serial, 1);
    let r1 = images.serial_root("img", 1);
    assert!(!r1.join("etc/ssh/ssh_host_ed25519_key").exists());
    assert!(r1.join("etc/ssh/sshd_config").exists());
    assert!(!r1.join("root/.bash_history").exists());
    assert_eq!(std::fs::read(r1.join("etc/machine-id")).unwrap(), b"");

    // The command sees mounted /proc and /dev, writes a file, and recreates the secrets
    // a package install would (host keys, machine-id).
    let opts = EnterOptions {
        command: sh(
            "test -r /proc/self/status && test -c /dev/null && echo x > /etc/newfile \
                     && echo KEY > /etc/ssh/ssh_host_rsa_key && echo feed > /etc/machine-id \
                     && echo cached > /tmp/scratch",
        ),
        note: "add newfile".into(),
        extra_strip: vec![],
    };
    let m2 = images
        .enter("img", &opts)
        .unwrap()
        .expect("a change was made");
    assert_eq!(m2.serial, 2);
    assert_eq!(m2.parent, Some(1));
    assert_eq!(images.published("img").unwrap(), Some(2));

    let pubroot = images.published_root("img");
    assert_eq!(
        std::fs::read_to_string(pubroot.join("etc/newfile")).unwrap(),
        "x\n"
    );
    assert!(
        !pubroot.join("etc/ssh/ssh_host_rsa_key").exists(),
        "host key leaked into the image"
    );
    assert_eq!(std::fs::read(pubroot.join("etc/machine-id")).unwrap(), b"");
    assert!(!pubroot.join("tmp/scratch").exists());
    assert!(!r1.join("etc/newfile").exists(), "serial 1 must not change");
    assert!(
        mounts_under(t.path()).is_empty(),
        "mounts left: {:?}",
        mounts_under(t.path())
    );
    assert!(!images.image_dir("img").join("dirty.lock").exists());
    assert!(!images.image_dir("img").join("work").exists());

    let history = images.history("img").unwrap();
    assert_eq!(history.len(), 2);
    let changes = history[1].changes.as_ref().unwrap();
    assert_eq!(changes.added, ["/etc/newfile"], "{changes:?}");
    assert!(changes.removed.is_empty(), "{changes:?}");
    assert_eq!(history[1].note, "add newfile");

    // A failing command discards its changes.
    let err = images
        .enter(
            "img",
            &EnterOptions {
                command: sh("echo y > /etc/y; exit 3"),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(
        matches!(err, ImageError::Discarded { serial: 2, .. }),
        "{err}"
    );
    assert_eq!(images.published("img").unwrap(), Some(2));
    assert!(!images.published_root("img").join("etc/y").exists());

    // Nothing changed: no new serial.
    assert!(images
        .enter(
            "img",
            &EnterOptions {
                command: sh("true"),
                ..Default::default()
            }
        )
        .unwrap()
        .is_none());
    assert_eq!(images.serials("img").unwrap(), [1, 2]);

    images.rollback("img", 1).unwrap();
    assert!(!images.published_root("img").join("etc/newfile").exists());
}

#[test]
fn second_enter_is_refused_naming_the_holder() {
    if !can_enter_images() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let images = Images::new(&t.path().join("state"));
    images
        .import("busy", &sample_tree(t.path()), "", &[])
        .unwrap();

    let lock = images.lock_path("busy");
    let first = {
        let images = images.clone();
        std::thread::spawn(move || {
            images.enter(
                "busy",
                &EnterOptions {
                    command: sh("sleep 2; echo 1 > /etc/first"),
                    ..Default::default()
                },
            )
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lock.exists() {
        assert!(Instant::now() < deadline, "first enter never took the lock");
        std::thread::sleep(Duration::from_millis(20));
    }
    let err = images
        .enter(
            "busy",
            &EnterOptions {
                command: sh("echo 2 > /etc/second"),
                ..Default::default()
            },
        )
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ImageError::Locked { .. }), "{msg}");
    assert!(
        msg.contains(&format!("pid {}", std::process::id())),
        "{msg}"
    );
    assert!(msg.contains("sleep 2"), "holder's command missing: {msg}");
    // Rollback is a publish too: also refused.
    assert!(matches!(
        images.rollback("busy", 1),
        Err(ImageError::Locked { .. })
    ));

    let m = first.join().unwrap().unwrap().unwrap();
    assert_eq!(m.serial, 2);
    assert!(images.published_root("busy").join("etc/first").exists());
    assert!(!images.published_root("busy").join("etc/second").exists());
}

fn rsync(args: &[&str]) -> std::process::Output {
    Command::new("rsync")
        .args(args)
        .env_remove("RSYNC_PASSWORD")
        .output()
        .expect("rsync client installed")
}

/// rsync as the daemon's user `node-1` (password in the environment, as nodes pass it).
fn rsync_as(password: &str, args: &[&str]) -> std::process::Output {
    Command::new("rsync")
        .args(args)
        .env("RSYNC_PASSWORD", password)
        .output()
        .expect("rsync client installed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsync_daemon_serves_serials_read_only() {
    if !can_enter_images() {
        return;
    }
    if !testkit::prereq::require_tools(&[("rsync", "rsync")]) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let state = t.path().join("state");
    let images = Images::new(&state);
    images
        .import("img", &sample_tree(t.path()), "", &[])
        .unwrap();

    let port = testkit::ports::free_port();
    let mut settings = RsyncdSettings::new(
        &state,
        "127.0.0.1".parse().unwrap(),
        vec!["127.0.0.1".into()],
    );
    settings.port = port;
    let mut sup = Supervisor::new(settings);
    sup.refresh_every = Duration::from_millis(200);
    sup.users = std::sync::Arc::new(|| {
        vec![rollout::images::rsyncd::RsyncUser {
            user: "node-1".into(),
            password: "pw1".into(),
            image: "img".into(),
        }]
    });
    let cancel = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(sup.run(cancel.clone()));
    let secrets = state.join("rsyncd.secrets");
    {
        use std::os::unix::fs::PermissionsExt;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !secrets.exists() {
            assert!(Instant::now() < deadline, "no secrets file");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mode = std::fs::metadata(&secrets).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the secrets file is for root only");
        assert_eq!(std::fs::read_to_string(&secrets).unwrap(), "node-1:pw1\n");
    }

    let base = format!("rsync://127.0.0.1:{port}");
    let user_base = format!("rsync://node-1@127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let listing = loop {
        let out = tokio::task::spawn_blocking({
            let base = base.clone();
            move || rsync(&[&format!("{base}/")])
        })
        .await
        .unwrap();
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout).to_string();
        }
        assert!(
            Instant::now() < deadline,
            "daemon never answered: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(listing.trim(), "", "list = no: modules are not listed");

    let checks = tokio::task::spawn_blocking({
        let base = base.clone();
        let user_base = user_base.clone();
        let dir = t.path().to_path_buf();
        move || {
            // Anonymous and wrong-password reads are refused.
            let stolen = dir.join("stolen");
            let out = rsync(&["-a", &format!("{base}/img-1/"), stolen.to_str().unwrap()]);
            assert!(!out.status.success(), "anonymous read");
            let out = rsync_as(
                "guess",
                &[
                    "-a",
                    &format!("{user_base}/img-1/"),
                    stolen.to_str().unwrap(),
                ],
            );
            assert!(!out.status.success(), "read with a wrong password");
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("auth failed"),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(!stolen.exists());
            let dest = dir.join("pulled");
            let out = rsync_as(
                "pw1",
                &["-a", &format!("{user_base}/img-1/"), dest.to_str().unwrap()],
            );
            assert!(
                out.status.success(),
                "pull failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(
                std::fs::read_to_string(dest.join("etc/os-release")).unwrap(),
                "NAME=test\n"
            );
            assert!(dest.join("bin/busybox").exists());
            assert!(!dest.join("etc/ssh/ssh_host_ed25519_key").exists());

            let upload = dir.join("upload.txt");
            std::fs::write(&upload, "x").unwrap();
            let out = rsync_as(
                "pw1",
                &[upload.to_str().unwrap(), &format!("{user_base}/img-1/")],
            );
            assert!(
                !out.status.success(),
                "write to a read-only module succeeded"
            );

            let escape = dir.join("escape");
            let out = rsync_as(
                "pw1",
                &[
                    &format!("{user_base}/img-1/../../etc/passwd"),
                    escape.to_str().unwrap(),
                ],
            );
            assert!(!out.status.success(), "path traversal was not refused");
            assert!(!escape.exists(), "got a file through ../..");
        }
    });
    checks.await.unwrap();
    assert!(!images.serial_root("img", 1).join("upload.txt").exists());

    // A new serial appears as a module without restarting anything.
    let src2 = t.path().join("src2");
    std::fs::create_dir_all(src2.join("etc")).unwrap();
    std::fs::write(src2.join("etc/v2"), "2").unwrap();
    images.import("img", &src2, "v2", &[]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = tokio::task::spawn_blocking({
            let user_base = user_base.clone();
            move || rsync_as("pw1", &[&format!("{user_base}/img-2/etc/v2")])
        })
        .await
        .unwrap();
        if out.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "img-2 never appeared");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "daemon still listening"
    );
}

/// Where the two slow Debian tests keep their image (`ROLLOUT_IMAGE_STATE`): the
/// second one enters the image the first one built.
fn debootstrap_state() -> PathBuf {
    std::env::var_os("ROLLOUT_IMAGE_STATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("rollout-debootstrap-test"))
}

/// The real debootstrap build (minutes, needs the Debian mirror). Run by hand:
/// `ROLLOUT_IMAGE_STATE=/var/tmp/rollout-state cargo test -p rollout --test images -- --ignored --nocapture`
#[test]
#[ignore = "slow: downloads and installs a Debian system"]
fn debootstrap_build() {
    if !can_enter_images() {
        return;
    }
    let images = Images::new(&debootstrap_state());
    let start = Instant::now();
    let meta = images
        .build(
            "debian",
            &rollout::images::build::BuildOptions::default(),
            &mut |l| println!("{l}"),
        )
        .unwrap();
    println!(
        "built serial {} in {:.0}s",
        meta.serial,
        start.elapsed().as_secs_f64()
    );
    let root = images.published_root("debian");
    for must in [
        "usr/sbin/sshd",
        "usr/bin/rsync",
        "lib/systemd/systemd",
        "etc/systemd/system/multi-user.target.wants/systemd-networkd.service",
    ] {
        assert!(
            std::fs::symlink_metadata(root.join(must)).is_ok(),
            "{must} missing"
        );
    }
    assert!(std::fs::read_dir(root.join("boot")).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with("vmlinuz-")));
    assert!(!std::fs::read_dir(root.join("etc/ssh")).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with("ssh_host_")));
    assert_eq!(std::fs::read(root.join("etc/machine-id")).unwrap(), b"");
}

/// `apt-get install` inside a debootstrapped image (run after `debootstrap_build`, same
/// `ROLLOUT_IMAGE_STATE`): name resolution works, no service starts, host keys don't ship.
#[test]
#[ignore = "slow: needs the image from debootstrap_build and the Debian mirror"]
fn enter_debian_and_install_a_package() {
    if !can_enter_images() {
        return;
    }
    let images = Images::new(&debootstrap_state());
    let opts = EnterOptions {
        command: vec![
            "sh".into(),
            "-c".into(),
            "apt-get update -q && apt-get install -y -q --no-install-recommends less \
             && test ! -e /run/sshd.pid"
                .into(),
        ],
        note: "add less".into(),
        extra_strip: vec![],
    };
    let meta = images
        .enter("debian", &opts)
        .unwrap()
        .expect("less was installed");
    let changes = meta.changes.unwrap();
    assert!(
        changes.added.iter().any(|p| p == "/usr/bin/less"),
        "{changes:?}"
    );
    let root = images.published_root("debian");
    assert!(!root.join("usr/sbin/policy-rc.d").exists());
    assert!(std::fs::read_dir(root.join("var/lib/apt/lists"))
        .unwrap()
        .all(|e| !e.unwrap().file_name().to_string_lossy().contains('_')));
}

/// `rollout image prune` reads the server's node records: a serial a node is
/// installing right now keeps its rsync module, whatever `--keep` says.
#[test]
fn prune_keeps_a_serial_a_node_is_installing() {
    if !can_enter_images() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let state = t.path().join("state");
    let images = Images::new(&state);
    let src = sample_tree(t.path());
    for n in 1..=3 {
        std::fs::write(src.join("etc/version"), format!("{n}\n")).unwrap();
        images.import("img", &src, "", &[]).unwrap();
    }
    let inventory = rollout::inventory::Inventory::open(
        &state.join("rollout.db"),
        rollout::inventory::Policy::default(),
    )
    .unwrap();
    let node = rollout::inventory::NodeRecord::new(
        "52:54:00:00:00:01",
        "node1",
        "img",
        rollout::inventory::Source::Config,
        rollout::inventory::NodeState::Pending,
    );
    inventory.declare(node).unwrap();
    inventory.begin_install("52:54:00:00:00:01", 1).unwrap();
    drop(inventory);

    let config = t.path().join("rollout.toml");
    std::fs::write(&config, format!("state_dir = \"{}\"\n", state.display())).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rollout"))
        .arg("-c")
        .arg(&config)
        .args(["image", "prune", "img", "--keep", "1"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("keeping serial 1: node1 is installing it"),
        "{text}"
    );
    assert!(text.contains("removed serials [2]"), "{text}");
    assert_eq!(images.serials("img").unwrap(), [1, 3]);
}
