//! Everything the installer writes into a node, and the node's own state (logs,
//! users' files), must survive `rollout-sync`:
//! configure a tree as the installer does, then rsync an empty image over it
//! with `--delete` and the sync excludes (the real rsync decides what matches).
//! A file added to `configure` without an exclude fails here.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rollout::wire::*;
use rollout_installer::{configure, paths, rsync, sync};
use testkit::prereq;

fn plan(network: NetworkPlan) -> InstallPlan {
    InstallPlan {
        install_id: "i".into(),
        token: "t".into(),
        mac: "52:54:00:00:00:01".into(),
        hostname: "node1".into(),
        server_url: "http://10.44.0.1:8080".into(),
        network,
        link: Default::default(),
        image: ImageRef {
            name: "web".into(),
            serial: 3,
            rsync_url: "rsync://10.44.0.1:873/web-3/".into(),
            rsync_checksums: vec![],
            sparse_files: None,
        },
        disk: DiskSelector::default(),
        layout: Layout::default(),
        bootloader: Bootloader::Auto,
        excludes: DEFAULT_EXCLUDES.iter().map(|s| s.to_string()).collect(),
        // plan.files are not recorded on the node, so a sync cannot keep them.
        files: vec![],
        ssh_authorized_keys: vec!["ssh-ed25519 AAAA rollout-server".into()],
        kernel_cmdline: String::new(),
        on_failure: FailurePolicy::default(),
        // The timer's units are node-local too: a sync must keep them.
        sync_interval_secs: 900,
        keep_identity: true,
        multicast: None,
        tar_prefill: false,
        block_image: false,
        rsync: RsyncCredential::default(),
        node: NodeCredential {
            secret: "node-secret".into(),
            rsync: RsyncCredential {
                user: "node-525400000001".into(),
                password: "pw".into(),
            },
        },
    }
}

/// Files and symlinks under `root`, relative.
fn tree(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path().strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

fn check(image_files: &[&str], network: NetworkPlan) {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("node");
    for f in image_files {
        let p = t.join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, "image\n").unwrap();
    }
    let before = tree(&t);
    let exe = dir.path().join("installer");
    std::fs::write(&exe, "binary").unwrap();
    let plan = plan(network);
    configure::apply(
        &t,
        &configure::NodeFacts {
            plan: &plan,
            fstab: vec![],
            mdadm_conf: Some("ARRAY /dev/md/root metadata=1.0 UUID=1:2:3:4\n".into()),
            iface: "eth0".into(),
            nics: vec![],
            installer_exe: exe,
            identity: None,
        },
    )
    .unwrap();
    // What the running node writes itself: its journal and logs, users' files.
    for f in [
        "var/log/journal/0123abcd/system.journal",
        "var/log/syslog",
        "var/lib/systemd/random-seed",
        "home/alice/notes",
        "root/.bash_history",
    ] {
        let p = t.join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, "the node's own\n").unwrap();
    }
    // New files, and image files the installer overwrote (dbus machine-id...).
    let untouched = |p: &Path| std::fs::read_to_string(t.join(p)).is_ok_and(|c| c == "image\n");
    let written: Vec<PathBuf> = tree(&t)
        .into_iter()
        .filter(|p| !before.contains(p) || !untouched(p))
        .collect();
    let image_only: Vec<PathBuf> = before.into_iter().filter(|p| untouched(p)).collect();
    assert!(written.len() > 5, "{written:?}");
    let empty = dir.path().join("empty-image");
    std::fs::create_dir_all(&empty).unwrap();
    sync_once(&empty, &t, &sync::extra_flags());
    let lost: Vec<&PathBuf> = written
        .iter()
        .filter(|p| t.join(p).symlink_metadata().is_err())
        .collect();
    assert!(
        lost.is_empty(),
        "a sync would delete these node files; add them to configure::INSTALLER_WRITTEN or wire::NODE_STATE: {lost:?}"
    );
    // The image's own files are not protected.
    for f in &image_only {
        assert!(!t.join(f).exists(), "{f:?} kept although not node-local");
    }
}

#[test]
fn installer_written_files_survive_a_sync() {
    if !prereq::require_file(paths::RSYNC, "rsync") {
        return;
    }
    check(
        &[
            "usr/lib/systemd/systemd",
            "usr/lib/systemd/systemd-networkd",
            "usr/lib/systemd/system/systemd-networkd.service",
            "usr/lib/systemd/system/systemd-networkd.socket",
            "usr/lib/systemd/system/systemd-networkd-wait-online.service",
            "var/lib/dbus/machine-id",
        ],
        NetworkPlan::Dhcp,
    );
    check(
        &["etc/rc2.d/README", "etc/network/interfaces"],
        NetworkPlan::Static {
            address: "10.44.0.20/24".into(),
            gateway: Some("10.44.0.1".into()),
            dns: vec!["10.44.0.1".into()],
        },
    );
}

/// A node with /usr over NFS, a local /scratch and a tmpfs /var/lock, none of
/// which the image has: a sync leaves everything under /usr alone (the export
/// serves it, read-only), keeps the node's data on /scratch and the tmpfs's
/// contents, and removes none of the mount points (rmdir of a mount point
/// fails with EBUSY, which used to fail the whole sync).
#[test]
fn a_sync_leaves_the_nodes_other_mounts_alone() {
    if !prereq::require_file(paths::RSYNC, "rsync") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let node = dir.path().join("node");
    let image = dir.path().join("image");
    for (root, f) in [
        (&node, "usr/bin/from-nfs"),
        (&node, "etc/fstab"),
        (&node, "scratch/results.dat"),
        (&node, "var/lock/daemon.pid"),
        (&image, "usr/bin/image-only"),
        (&image, "opt/new"),
        (&image, "var/log/keep"),
    ] {
        let p = root.join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, "x\n").unwrap();
    }
    let fstab = "UUID=r\t/\text3\terrors=remount-ro\t0\t1\nnfs1:/export/usr\t/usr\tnfs\tro,nolock\t0\t0\nUUID=s /scratch xfs defaults 0 2\ntmpfs /var/lock tmpfs defaults 0 0\n";
    std::fs::write(node.join("etc/fstab"), fstab).unwrap();
    sync_once(&image, &node, &sync::flags_for(fstab));
    assert!(
        node.join("usr/bin/from-nfs").exists(),
        "deleted under the nfs mount"
    );
    assert!(
        !node.join("usr/bin/image-only").exists(),
        "copied under the nfs mount"
    );
    assert!(
        node.join("scratch/results.dat").exists(),
        "the node's data on its /scratch filesystem was deleted"
    );
    assert!(
        node.join("var/lock/daemon.pid").exists(),
        "the tmpfs /var/lock was emptied"
    );
    assert!(
        node.join("opt/new").exists() && node.join("var/log/keep").exists(),
        "the rest of the image is synced"
    );
    // The same without the fstab's rules deletes what the image lacks: the
    // rules, not luck, kept them.
    sync_once(&image, &node, &sync::extra_flags());
    assert!(!node.join("scratch").exists());
}

/// One local rsync of `image` onto `node` with the sync's `flags` (no image
/// excludes, one attempt), as `rollout-sync` runs it against the server.
fn sync_once(image: &std::path::Path, node: &std::path::Path, flags: &[String]) {
    rsync::copy_with(
        &image.to_string_lossy(),
        None,
        &node.to_string_lossy(),
        &sync::excludes(&[]),
        &flags.iter().map(String::as_str).collect::<Vec<_>>(),
        1,
        Duration::ZERO,
        |_| {},
        |_, why| panic!("{why}"),
    )
    .unwrap();
}
