//! Tests of the node-specific files the installer writes.

use super::*;

/// Facts for a root on ext3 without swap, with the NIC eth0.
fn facts<'a>(
    plan: &'a InstallPlan,
    installer_exe: PathBuf,
    identity: Option<&'a Identity>,
) -> NodeFacts<'a> {
    NodeFacts {
        plan,
        fstab: vec![],
        mdadm_conf: None,
        iface: "eth0".into(),
        nics: vec![],
        installer_exe,
        identity,
    }
}

#[test]
fn plan_paths_cannot_escape() {
    let t = Path::new("/target");
    assert_eq!(
        in_target(t, "/etc/motd").unwrap(),
        PathBuf::from("/target/etc/motd")
    );
    assert!(in_target(t, "etc/motd").is_err());
    assert!(in_target(t, "/etc/../../x").is_err());
}

/// A fake systemd-less, ssh-less image: files land where they should.
#[test]
fn apply_to_a_minimal_tree() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path();
    std::fs::create_dir_all(t.join("etc/ssh")).unwrap();
    std::fs::create_dir_all(t.join("etc/rc2.d")).unwrap();
    std::fs::write(t.join("etc/ssh/ssh_host_ed25519_key"), "IMAGE KEY").unwrap();
    std::fs::create_dir_all(t.join("root/.ssh")).unwrap();
    std::fs::write(
        t.join("root/.ssh/authorized_keys"),
        "ssh-ed25519 AAAA image\n",
    )
    .unwrap();
    symlink(
        "/run/systemd/resolve/stub-resolv.conf",
        t.join("etc/resolv.conf"),
    )
    .unwrap();
    let exe = dir.path().join("fake-installer");
    std::fs::write(&exe, "binary").unwrap();
    let mut plan = crate::testutil::plan();
    plan.hostname = "node7".into();
    plan.sync_interval_secs = 600;
    plan.network = NetworkPlan::Static {
        address: "10.44.0.27/24".into(),
        gateway: None,
        dns: vec!["10.44.0.1".into()],
    };
    plan.layout.mounts = vec![
        rollout::wire::Mount {
            mount: "/usr".into(),
            kind: rollout::wire::MountKind::Nfs {
                source: "nfs1:/export/usr".into(),
            },
            options: Some("ro".into()),
        },
        rollout::wire::Mount {
            mount: "/var/lock".into(),
            kind: rollout::wire::MountKind::Tmpfs,
            options: None,
        },
    ];
    // The image has /var/lock as a symlink: it stays one.
    std::fs::create_dir_all(t.join("var")).unwrap();
    symlink("/run/lock", t.join("var/lock")).unwrap();
    let root = plan.layout.partitions[0].content.clone();
    let facts = NodeFacts {
        plan: &plan,
        fstab: render::fstab_entries(
            &[(&root, "r-uuid"), (&rollout::wire::Content::Swap, "s-uuid")],
            &plan.layout.mounts,
        ),
        mdadm_conf: Some("ARRAY /dev/md/root UUID=x\n".into()),
        iface: "eth0".into(),
        nics: vec![],
        installer_exe: exe,
        identity: None,
    };
    let notes = apply(t, &facts).unwrap();
    let read = |p: &str| std::fs::read_to_string(t.join(p)).unwrap();
    assert_eq!(read("etc/hostname"), "node7\n");
    assert!(read("etc/fstab").contains("UUID=r-uuid\t/\text3"));
    assert!(read("etc/fstab").contains("nfs1:/export/usr\t/usr\tnfs\tro\t0\t0"));
    assert!(t.join("usr").is_dir(), "the nfs mount point is made");
    assert!(t.join("var/lock").symlink_metadata().unwrap().is_symlink());
    assert_eq!(read("etc/mdadm/mdadm.conf"), "ARRAY /dev/md/root UUID=x\n");
    assert!(read("etc/network/interfaces").contains("iface eth0 inet static"));
    assert_eq!(
        read("etc/resolv.conf"),
        "# Written by rollout-installer.\nnameserver 10.44.0.1\n"
    );
    let mid = read("etc/machine-id");
    assert_eq!(mid.trim().len(), 32);
    assert!(mid.trim().chars().all(|c| c.is_ascii_hexdigit()));
    assert!(
        !t.join("etc/ssh/ssh_host_ed25519_key").exists(),
        "image host key kept"
    );
    assert_eq!(
        read("root/.ssh/authorized_keys"),
        "ssh-ed25519 AAAA image\nssh-ed25519 AAAA rollout-server\n"
    );
    assert_eq!(read("etc/rollout/serial"), "7\n");
    assert!(read("etc/rollout/node.toml").contains("hostname = \"node7\""));
    assert_eq!(read("etc/motd"), "hello\n");
    let mode = std::fs::metadata(t.join("etc/motd"))
        .unwrap()
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o640);
    // The node's credential: for root only.
    for (file, want) in [
        ("etc/rollout/node.secret", "nodesecret\n"),
        ("etc/rollout/rsync.password", "noderspw\n"),
    ] {
        assert_eq!(read(file), want);
        let mode = std::fs::metadata(t.join(file))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777;
        assert_eq!(mode, 0o600, "{file}");
    }
    assert_eq!(read("var/lib/rollout/bin/rollout-sync"), "binary");
    assert!(t
        .join("etc/rc3.d/S99rollout-phone-home")
        .symlink_metadata()
        .is_ok());
    assert!(notes.iter().any(|n| n.contains("sysvinit")), "{notes:?}");
    assert!(
        notes
            .iter()
            .any(|n| n.contains("not set up, the image has no systemd")),
        "{notes:?}"
    );
    assert!(!t.join("etc/systemd/system/rollout-sync.timer").exists());
    assert!(
        notes.iter().any(|n| n.contains("no ssh-keygen")),
        "{notes:?}"
    );
}

#[test]
fn busybox_images_get_their_periodic_sync_from_inittab_and_keep_it_after_an_update() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path();
    std::fs::create_dir_all(t.join("etc")).unwrap();
    let tab = "::sysinit:/etc/init.d/rcS\n";
    std::fs::write(t.join("etc/inittab"), tab).unwrap();
    let exe = t.join("exe");
    std::fs::write(&exe, "b").unwrap();
    let mut plan = crate::testutil::plan();
    plan.sync_interval_secs = 30;
    let notes = apply(t, &facts(&plan, exe, None)).unwrap();
    assert!(
        notes
            .iter()
            .any(|n| n == "periodic sync: busybox inittab, every 30 s"),
        "{notes:?}"
    );
    let script = std::fs::read_to_string(t.join("var/lib/rollout/bin/rollout-sync-loop")).unwrap();
    assert!(script.contains("while sleep 30; do\n  /var/lib/rollout/bin/rollout-sync sync\n"));
    let read_tab = || std::fs::read_to_string(t.join("etc/inittab")).unwrap();
    let want = "::once:/var/lib/rollout/bin/rollout-phone-home\n::once:/var/lib/rollout/bin/rollout-sync-loop\n";
    assert_eq!(read_tab(), format!("{tab}{want}"));
    // An update brings the image's inittab back; rollout-sync hooks both again, once.
    std::fs::write(t.join("etc/inittab"), tab).unwrap();
    hook_phone_home(t).unwrap();
    hook_phone_home(t).unwrap();
    assert_eq!(read_tab(), format!("{tab}{want}"));
}

#[test]
fn systemd_images_get_networkd_and_a_unit() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path();
    for f in [
        "usr/lib/systemd/systemd",
        "usr/lib/systemd/systemd-networkd",
        "usr/lib/systemd/system/systemd-networkd.service",
        "etc/network/interfaces",
    ] {
        std::fs::create_dir_all(t.join(f).parent().unwrap()).unwrap();
        std::fs::write(t.join(f), "x").unwrap();
    }
    let exe = t.join("exe");
    std::fs::write(&exe, "b").unwrap();
    let mut plan = crate::testutil::plan();
    plan.sync_interval_secs = 900;
    let facts = facts(&plan, exe, None);
    let notes = apply(t, &facts).unwrap();
    assert!(
        notes
            .iter()
            .any(|n| n.contains("timer rollout-sync.timer every 900 s")),
        "{notes:?}"
    );
    let timer = std::fs::read_to_string(t.join("etc/systemd/system/rollout-sync.timer")).unwrap();
    assert!(timer.contains("OnUnitActiveSec=900\n") && timer.contains("RandomizedDelaySec=90\n"));
    let service =
        std::fs::read_to_string(t.join("etc/systemd/system/rollout-sync.service")).unwrap();
    assert!(
        service.contains("ExecStart=/var/lib/rollout/bin/rollout-sync sync\n"),
        "{service}"
    );
    assert_eq!(
        std::fs::read_link(t.join("etc/systemd/system/timers.target.wants/rollout-sync.timer"))
            .unwrap(),
        PathBuf::from("/etc/systemd/system/rollout-sync.timer")
    );
    let net = std::fs::read_to_string(t.join("etc/systemd/network/10-rollout.network")).unwrap();
    assert!(net.contains("MACAddress=52:54:00:00:00:01"));
    let l = std::fs::read_link(
        t.join("etc/systemd/system/multi-user.target.wants/systemd-networkd.service"),
    )
    .unwrap();
    assert_eq!(
        l,
        PathBuf::from("/usr/lib/systemd/system/systemd-networkd.service")
    );
    let l = std::fs::read_link(
        t.join("etc/systemd/system/multi-user.target.wants/rollout-phone-home.service"),
    )
    .unwrap();
    assert_eq!(
        l,
        PathBuf::from("/etc/systemd/system/rollout-phone-home.service")
    );
    assert!(!std::fs::read_to_string(t.join("etc/network/interfaces"))
        .unwrap()
        .contains("eth0"));
}

/// A reinstall writes the previous install's keys and machine-id instead of
/// fresh ones (no ssh-keygen needed), and reports exactly those public keys.
#[test]
fn a_kept_identity_replaces_the_image_keys() {
    use crate::identity::{Identity, KeyFile};
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path();
    std::fs::create_dir_all(t.join("etc/ssh")).unwrap();
    std::fs::write(t.join("etc/ssh/ssh_host_ed25519_key"), "IMAGE KEY").unwrap();
    std::fs::write(
        t.join("etc/ssh/ssh_host_ed25519_key.pub"),
        "ssh-ed25519 IMAGE",
    )
    .unwrap();
    let exe = t.join("exe");
    std::fs::write(&exe, "b").unwrap();
    let kept = Identity {
        machine_id: Some("0123456789abcdef0123456789abcdef".into()),
        host_keys: vec![
            KeyFile {
                name: "ssh_host_ed25519_key".into(),
                contents: b"OLD PRIVATE".to_vec(),
                mode: 0o600,
            },
            KeyFile {
                name: "ssh_host_ed25519_key.pub".into(),
                contents: b"ssh-ed25519 AAAAOLD root@node1\n".to_vec(),
                mode: 0o644,
            },
        ],
    };
    let plan = crate::testutil::plan();
    let facts = facts(&plan, exe, Some(&kept));
    let notes = apply(t, &facts).unwrap();
    assert!(
        notes
            .iter()
            .any(|n| n.contains("key files of the previous install")),
        "{notes:?}"
    );
    let read = |p: &str| std::fs::read_to_string(t.join(p)).unwrap();
    assert_eq!(read("etc/machine-id"), "0123456789abcdef0123456789abcdef\n");
    assert_eq!(read("etc/ssh/ssh_host_ed25519_key"), "OLD PRIVATE");
    let mode = std::fs::metadata(t.join("etc/ssh/ssh_host_ed25519_key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(public_host_keys(t), ["ssh-ed25519 AAAAOLD root@node1"]);
}
