//! `[[image]]` settings on this host: configured mounts exist inside `image enter`
//! and only there (nothing on them reaches a serial, nothing stays mounted), a mount
//! that fails discards the change with a message naming it, and configured excludes
//! never reach a published serial. Needs root and busybox, like tests/images.rs.

mod common;

use common::image_tree::{can_enter_images, mounts_under, sample_tree, sh};
use rollout::config::{ImageConfig, ImageMount};
use rollout::images::enter::EnterOptions;
use rollout::images::{ImageError, Images};
use std::path::Path;

fn mount(source: &Path, target: &str, fstype: &str, options: &str) -> ImageMount {
    ImageMount {
        source: source.display().to_string(),
        target: target.into(),
        fstype: fstype.into(),
        options: options.into(),
    }
}

/// Image `img` in `state` with these settings.
fn configured(state: &Path, excludes: &[&str], mounts: Vec<ImageMount>) -> Images {
    Images::new(state).configured(vec![ImageConfig {
        name: "img".into(),
        excludes: excludes.iter().map(|e| e.to_string()).collect(),
        mounts,
    }])
}

/// A host directory to bind-mount, under `dir`.
fn host_dir(dir: &Path) -> std::path::PathBuf {
    let tools = dir.join("site-tools");
    std::fs::create_dir(&tools).unwrap();
    tools
}

fn run(images: &Images, cmd: &str) -> Result<Option<rollout::images::SerialMeta>, ImageError> {
    images.enter(
        "img",
        &EnterOptions {
            command: sh(cmd),
            ..Default::default()
        },
    )
}

#[test]
fn configured_mounts_exist_only_inside_enter_and_excludes_never_ship() {
    if !can_enter_images() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let tools = host_dir(t.path());
    std::fs::write(tools.join("hello"), "from the host\n").unwrap();
    let src = sample_tree(t.path());
    std::fs::write(src.join("etc/site-a.key"), "site secret\n").unwrap();

    let images = configured(
        &t.path().join("state"),
        &["/var/lib/site/", "/etc/site-*.key"],
        vec![
            mount(&tools, "/opt/site/tools", "bind", "ro"),
            mount(Path::new("tmpfs"), "/var/cache/build", "tmpfs", "size=4m"),
        ],
    );
    images.import("img", &src, "", &[]).unwrap();
    assert!(
        !images.serial_root("img", 1).join("etc/site-a.key").exists(),
        "an import publishes configured excludes"
    );

    let m = run(
        &images,
        "busybox cat /opt/site/tools/hello > /etc/seen-tools \
         && ! busybox touch /opt/site/tools/new 2>/dev/null \
         && busybox grep -q ' /var/cache/build tmpfs ' /proc/self/mounts \
         && echo obj > /var/cache/build/obj \
         && busybox mkdir -p /var/lib/site && echo mine > /var/lib/site/state \
         && echo k > /etc/site-b.key",
    )
    .unwrap()
    .expect("a change was made");
    let root = images.published_root("img");
    assert_eq!(
        std::fs::read_to_string(root.join("etc/seen-tools")).unwrap(),
        "from the host\n",
        "the bind mount was visible inside"
    );
    assert!(
        !tools.join("new").exists(),
        "the ro bind mount was writable"
    );
    for gone in ["opt", "var/cache", "var/lib/site", "etc/site-b.key"] {
        assert!(
            !root.join(gone).exists(),
            "/{gone} reached serial {}",
            m.serial
        );
    }
    let changes = m.changes.unwrap();
    assert!(changes.added.contains(&"/etc/seen-tools".to_string()));
    assert!(
        changes
            .added
            .iter()
            .all(|p| !p.starts_with("/opt") && !p.starts_with("/var/cache")),
        "{changes:?}"
    );
    assert!(
        mounts_under(t.path()).is_empty(),
        "{:?}",
        mounts_under(t.path())
    );
    assert!(!images.work_dir("img").exists());
}

#[test]
fn a_failing_or_escaping_mount_discards_the_change_and_says_which() {
    if !can_enter_images() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = sample_tree(t.path());
    std::os::unix::fs::symlink("/etc", src.join("lnk")).unwrap();
    let state = t.path().join("state");
    Images::new(&state).import("img", &src, "", &[]).unwrap();
    let with_mount = |m: ImageMount| configured(&state, &[], vec![m]);

    // mount(8) itself fails: an unknown filesystem type.
    let images = with_mount(mount(Path::new("none"), "/mnt/data", "nosuchfs", ""));
    let err = run(&images, "echo x > /etc/changed")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("nosuchfs") && err.contains("/mnt/data") && err.contains("[[image.mount]]"),
        "{err}"
    );
    // A symlink on the way would put the mount outside the image.
    let images = with_mount(mount(&t.path().join("src-root/etc"), "/lnk/x", "bind", ""));
    let err = run(&images, "echo x > /etc/changed")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("/lnk") && err.contains("not a directory"),
        "{err}"
    );
    assert!(!Path::new("/etc/x").exists());
    // A bind source that does not exist on this host.
    let images = with_mount(mount(&t.path().join("absent"), "/mnt/data", "bind", ""));
    let err = run(&images, "true").unwrap_err().to_string();
    assert!(
        err.contains("absent") && err.contains("does not exist"),
        "{err}"
    );

    assert_eq!(images.serials("img").unwrap(), [1], "nothing was published");
    let root = images.published_root("img");
    assert!(!root.join("etc/changed").exists() && !root.join("mnt").exists());
    assert!(!images.lock_path("img").exists(), "the lock was released");
    assert!(
        mounts_under(t.path()).is_empty(),
        "{:?}",
        mounts_under(t.path())
    );
}

/// Killing the command in the image (an operator's shell dying, say) leaves no
/// mount behind and publishes nothing; while it ran, its mounts were never
/// visible on the host.
#[test]
fn killing_the_command_leaves_nothing_mounted_and_nothing_published() {
    if !can_enter_images() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let tools = host_dir(t.path());
    let images = configured(
        &t.path().join("state"),
        &[],
        vec![
            mount(&tools, "/opt/tools", "bind", ""),
            mount(Path::new("tmpfs"), "/scratch", "tmpfs", ""),
        ],
    );
    images
        .import("img", &sample_tree(t.path()), "", &[])
        .unwrap();
    let pid_file = images.work_dir("img").join("root/tmp/pid");
    let running = {
        let images = images.clone();
        std::thread::spawn(move || run(&images, "echo $$ > /tmp/pid; exec sleep 60"))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let pid = loop {
        if let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            break pid;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the command never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(
        mounts_under(t.path()).is_empty(),
        "the image's mounts leaked into the host namespace: {:?}",
        mounts_under(t.path())
    );
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL).unwrap();
    let err = running.join().unwrap().unwrap_err();
    assert!(
        matches!(err, ImageError::Discarded { serial: 1, .. }),
        "{err}"
    );
    assert!(
        mounts_under(t.path()).is_empty(),
        "{:?}",
        mounts_under(t.path())
    );
    assert!(!images.lock_path("img").exists(), "the lock was released");
    assert!(
        !images.work_dir("img").exists(),
        "the work copy was removed"
    );
    assert_eq!(images.serials("img").unwrap(), [1]);
}
