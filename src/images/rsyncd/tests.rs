//! Tests of the rsync daemon's config: read-only modules per serial, relayed subnets, refused injections.

use super::*;

fn settings() -> RsyncdSettings {
    test_settings()
}

#[test]
fn config_has_read_only_chrooted_modules_per_serial() {
    let m = vec![
        ModuleSpec {
            name: "web".into(),
            image: "web".into(),
            path: "/var/lib/rollout/images/web/published/root".into(),
            comment: "c".into(),
        },
        ModuleSpec {
            name: "web-3".into(),
            image: "web".into(),
            path: "/var/lib/rollout/images/web/serials/3/root".into(),
            comment: "c".into(),
        },
        ModuleSpec {
            name: "db-1".into(),
            image: "db".into(),
            path: "/var/lib/rollout/images/db/serials/1/root".into(),
            comment: "c".into(),
        },
    ];
    let user = |user: &str, image: &str| RsyncUser {
        user: user.into(),
        password: "pw".into(),
        image: image.into(),
    };
    let users = [user("install-1", "web"), user("node-2", "web")];
    let c = render_config(&settings(), &m, &users).unwrap();
    for line in [
        "address = 10.44.0.1",
        "hosts allow = 10.44.0.0/24",
        "hosts deny = *",
        "use chroot = yes",
        "numeric ids = yes",
        "read only = yes",
        "max connections = 32",
        "[web]\n    path = /var/lib/rollout/images/web/published/root",
        "[web-3]\n    path = /var/lib/rollout/images/web/serials/3/root",
        "list = no",
        "secrets file = /var/lib/rollout/rsyncd.secrets",
        "auth users = rollout-nobody\n",
        "    auth users = install-1, node-2\n",
    ] {
        assert!(c.contains(line), "missing {line:?} in\n{c}");
    }
    assert!(!c.contains("list = yes"));
    // Every module has its own readers line; db's has no real user.
    assert_eq!(c.matches("    auth users = ").count(), 3, "{c}");
    assert!(c.ends_with("    auth users = rollout-nobody\n"), "{c}");
    assert_eq!(render_secrets(&users).unwrap(), "install-1:pw\nnode-2:pw\n");
    assert!(render_secrets(&[user("x:y", "web")]).is_err());
    assert!(render_secrets(&[user("node-1\nevil", "web")]).is_err());
    assert_eq!(settings().url("web-3"), "rsync://10.44.0.1:873/web-3/");
}

/// rsyncd.conf cannot be written (its directory is not a directory): the
/// supervisor counts and retries instead of returning an error, which would
/// stop DHCP and HTTP with it; once the directory is fixed the file appears.
#[tokio::test]
async fn a_config_write_error_is_counted_and_retried_not_fatal() {
    if testkit::prereq::which("rsync").is_none() {
        testkit::prereq::missing("rsync is not installed (apt-get install rsync)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("state");
    std::fs::write(&blocker, "a file where state_dir should be").unwrap();
    let mut settings = RsyncdSettings::new(
        &blocker.join("inner"),
        "127.0.0.1".parse().unwrap(),
        vec!["127.0.0.0/8".into()],
    );
    settings.port = testkit::ports::free_port();
    let mut supervisor = Supervisor::new(settings.clone());
    supervisor.refresh_every = Duration::from_millis(200);
    let metrics = supervisor.metrics.clone();
    let cancel = CancellationToken::new();
    let running = tokio::spawn(supervisor.run(cancel.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !running.is_finished(),
        "the supervisor gave up (and would stop the server)"
    );
    let failures = metrics.rsyncd_config_failures.get();
    assert!(failures >= 1, "the failure was not counted");
    // Fixed: the next retry writes the file and starts the daemon.
    std::fs::remove_file(&blocker).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !settings.config_path().is_file() {
        assert!(
            std::time::Instant::now() < deadline,
            "rsyncd.conf never written"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cancel.cancel();
    let done = tokio::time::timeout(Duration::from_secs(10), running).await;
    assert!(matches!(done, Ok(Ok(Ok(())))), "{done:?}");
}

/// `ensure` reads the file itself and asks the supervisor only for a module the
/// file lacks; with no supervisor left it says no instead of waiting.
#[tokio::test]
async fn modules_are_asked_for_only_when_missing() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("rsyncd.conf");
    std::fs::write(&config_path, "[web-1]\n").unwrap();
    let (refresh, mut requests) = tokio::sync::mpsc::channel::<Refresh>(1);
    let modules = RsyncModules {
        config_path: config_path.clone(),
        refresh,
    };
    let supervisor = tokio::spawn(async move {
        let mut asked = 0;
        while let Some(answer) = requests.recv().await {
            asked += 1;
            std::fs::write(&config_path, "[web-1]\n\n[web-2]\n").unwrap();
            let _ = answer.send(());
        }
        asked
    });
    assert!(modules.ensure("web", 1).await);
    assert!(modules.ensure("web", 2).await);
    assert!(!modules.ensure("web", 3).await, "still not listed");
    drop(modules);
    assert_eq!(supervisor.await.unwrap(), 2);
    let (refresh, requests) = tokio::sync::mpsc::channel::<Refresh>(1);
    drop(requests);
    let orphan = RsyncModules {
        config_path: dir.path().join("rsyncd.conf"),
        refresh,
    };
    assert!(!orphan.ensure("web", 9).await);
}

#[test]
fn relayed_subnets_may_copy_images() {
    let relay = |first: [u8; 4], last: [u8; 4]| crate::config::RelaySubnet {
        range: [first.into(), last.into()],
        netmask: [255, 255, 255, 0].into(),
        router: None,
    };
    let allow = hosts_allow(
        [10, 44, 0, 1].into(),
        [255, 255, 255, 0].into(),
        &[
            relay([10, 45, 0, 50], [10, 45, 0, 99]),
            relay([10, 45, 0, 100], [10, 45, 0, 120]),
            relay([10, 46, 7, 10], [10, 46, 7, 20]),
        ],
    );
    assert_eq!(allow, ["10.44.0.0/24", "10.45.0.0/24", "10.46.7.0/24"]);
    assert_eq!(
        hosts_allow([10, 44, 0, 1].into(), [255, 255, 0, 0].into(), &[]),
        ["10.44.0.0/16"]
    );
}

#[test]
fn injection_and_wildcard_binds_are_refused() {
    let mut s = settings();
    s.hosts_allow = vec!["10.44.0.0/24\n[evil]".into()];
    assert!(render_config(&s, &[], &[]).is_err());
    let mut s = settings();
    s.address = "0.0.0.0".parse().unwrap();
    assert!(render_config(&s, &[], &[]).is_err());
    let m = vec![ModuleSpec {
        name: "x".into(),
        image: "x".into(),
        path: "/a\npath = /".into(),
        comment: String::new(),
    }];
    assert!(render_config(&settings(), &m, &[]).is_err());
}
