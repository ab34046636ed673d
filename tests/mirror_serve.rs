//! Two `rollout serve` on loopback, a primary and a mirror of it: the wiring of
//! `[images]` end to end (the primary's daemon exports the store with the mirror
//! user, the mirror's server pulls, publishes and serves), what operators see in
//! `rollout image list`, and what the CLI and `serve` refuse on a mirror.

mod common;
use common::loopback::{free_port, Server};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

const PASSWORD: &str = "serve-mirror-0123456789";

fn write_config(dir: &Path, rsync_port: u16, images: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let pw = dir.join("mirror.password");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    let body = format!(
        r#"state_dir = "{state}"
[server]
address = "127.0.0.1"
http_port = {http}
tftp_port = {tftp}
rsync_port = {rsync_port}
[images]
mirror_password_file = "{pw}"
{images}
[[image]]
name = "web"
excludes = ["/var/lib/site/"]
"#,
        state = dir.join("state").display(),
        http = free_port(),
        tftp = free_port(),
        pw = pw.display(),
    );
    std::fs::write(dir.join("rollout.toml"), body).unwrap();
}

fn wait_for(what: &str, server: &Server, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; log:\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A primary `rollout serve` (its rsync port, the server) with image "web"
/// imported from a tree holding one file.
fn primary_with(t: &Path, file: &str, contents: &[u8]) -> (u16, Server) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "rollout serve's rsync daemon reads images as root: run this test as root"
    );
    let primary_rsync = free_port();
    let p_dir = t.join("primary");
    write_config(&p_dir, primary_rsync, "");
    let primary = Server::start(&p_dir);
    let src = t.join("src");
    let path = src.join(file);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, contents).unwrap();
    let (ok, out, err) = primary.cli(&["image", "import", "web", src.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    (primary_rsync, primary)
}

#[test]
fn a_mirror_server_copies_publishes_and_refuses_to_change_images() {
    let t = tempfile::tempdir().unwrap();
    let (primary_rsync, primary) = primary_with(t.path(), "etc/version", b"1");
    let src = t.path().join("src");

    let m_dir = t.path().join("mirror");
    write_config(
        &m_dir,
        free_port(),
        &format!("mirror_from = \"rsync://127.0.0.1:{primary_rsync}/\"\nmirror_interval = 5"),
    );
    let mirror = Server::start(&m_dir);
    wait_for(
        "the mirror to publish serial 1",
        &mirror,
        Duration::from_secs(60),
        || {
            let (_, out, _) = mirror.cli(&["image", "list"]);
            out.lines()
                .any(|l| l.starts_with("web ") && l.split_whitespace().nth(1) == Some("1"))
                && out.contains("idle (in step with the primary)")
        },
    );
    let copied = m_dir.join("state/images/web/published/root/etc/version");
    assert_eq!(std::fs::read_to_string(copied).unwrap(), "1");
    // The same state in the API and on the dashboard's images page.
    let (st, status) = mirror.req("GET", "/api/v1/mirror", None, true);
    assert_eq!(st, 200, "{status}");
    assert_eq!(status["state"]["state"], "idle", "{status}");
    assert_eq!(
        status["from"],
        format!("rsync://127.0.0.1:{primary_rsync}/")
    );
    assert!(status["last_synced"].is_string(), "{status}");
    let page = mirror.admin_text("/images");
    assert!(
        page.contains(&format!(
            "mirror of rsync://127.0.0.1:{primary_rsync}/: idle (in step with the primary)"
        )),
        "{page}"
    );
    let (st, body) = primary.req("GET", "/api/v1/mirror", None, true);
    assert_eq!(st, 404, "the primary is no mirror: {body}");
    let log = mirror.log_text();
    assert!(log.contains("mirror: serial 1 of web: 100%"), "{log}");
    assert!(log.contains("mirror: serial 1 of web complete"), "{log}");
    // The mirror serves what it copied to its own nodes.
    wait_for(
        "the mirror's rsync module",
        &mirror,
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(m_dir.join("state/rsyncd.conf"))
                .is_ok_and(|c| c.contains("[web-1]"))
        },
    );

    let (ok, _, err) = mirror.cli(&["image", "import", "web", src.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("mirrors its images from rsync://127.0.0.1") && err.contains("on the primary"),
        "{err}"
    );

    // A second serial on the primary reaches the mirror by itself.
    std::fs::write(src.join("etc/version"), "2").unwrap();
    let (ok, out, err) = primary.cli(&["image", "import", "web", src.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    wait_for(
        "serial 2 on the mirror",
        &mirror,
        Duration::from_secs(60),
        || {
            std::fs::read_to_string(m_dir.join("state/images/web/published/root/etc/version"))
                .is_ok_and(|v| v == "2")
        },
    );
}

#[test]
fn serve_refuses_a_mirror_from_that_is_not_rsync() {
    let t = tempfile::tempdir().unwrap();
    write_config(t.path(), free_port(), "mirror_from = \"http://primary/\"");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rollout"))
        .args(["serve", "--config"])
        .arg(t.path().join("rollout.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("images.mirror_from")
            && err.contains("not an rsync:// url")
            && err.contains("rsync://primary/"),
        "{err}"
    );
}

/// rsync processes writing into `state`'s staging copies.
fn staging_writers(state: &Path) -> Vec<String> {
    let needle = state
        .join("images/web/mirror-staging")
        .display()
        .to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            cmd.contains(&needle).then(|| format!("{pid}: {cmd}"))
        })
        .collect()
}

/// The mirror's server is killed outright (SIGKILL) mid-copy: its rsync goes
/// with it (its progress output has no reader left; PDEATHSIG otherwise), keeping
/// its partial file; nothing half-copied is published, and the restarted server
/// resumes from the staging copy.
#[test]
fn a_mirror_server_killed_mid_copy_resumes_after_restart() {
    let t = tempfile::tempdir().unwrap();
    let big = {
        use std::io::Read;
        let mut b = vec![0u8; 16 << 20];
        std::fs::File::open("/dev/urandom")
            .unwrap()
            .read_exact(&mut b)
            .unwrap();
        b
    };
    // Kept (not `_`): dropping the server would stop it.
    let (primary_rsync, _primary) = primary_with(t.path(), "usr/lib/big", &big);

    let m_dir = t.path().join("mirror");
    write_config(
        &m_dir,
        free_port(),
        &format!("mirror_from = \"rsync://127.0.0.1:{primary_rsync}/\"\nmirror_interval = 5\nmirror_bwlimit = 2048"),
    );
    let m_state = m_dir.join("state");
    let mut mirror = Server::start(&m_dir);
    wait_for(
        "the copy to be under way",
        &mirror,
        Duration::from_secs(30),
        || {
            let (_, out, _) = mirror.cli(&["image", "list"]);
            out.contains("copying web serial 1: ") && !out.contains("copying web serial 1: 0%")
        },
    );
    // Killed alone: its rsync client must stop by itself. Its rsync daemon
    // has no such duty (systemd stops the whole unit); it is killed after.
    let children = testkit::process::descendants(mirror.child.id());
    mirror.child.kill().unwrap();
    mirror.child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !staging_writers(&m_state).is_empty() {
        assert!(
            Instant::now() < deadline,
            "rsync outlived its server: {:?}",
            staging_writers(&m_state)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    testkit::process::kill_all(&children);
    assert!(
        !m_state.join("images/web/published").exists(),
        "a half copy was published"
    );
    assert!(!m_state.join("images/web/serials/1").exists());
    let kept = std::fs::metadata(m_state.join("images/web/mirror-staging/1/root/usr/lib/big"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(kept > 0, "the partial file was not kept");
    drop(mirror);

    let mirror = Server::start(&m_dir);
    wait_for(
        "serial 1 on the restarted mirror",
        &mirror,
        Duration::from_secs(60),
        || {
            let (_, out, _) = mirror.cli(&["image", "list"]);
            out.contains("idle (in step with the primary)")
        },
    );
    assert_eq!(
        std::fs::read(m_state.join("images/web/published/root/usr/lib/big")).unwrap(),
        big
    );
    let log = mirror.log_text();
    assert!(log.contains("resume=true"), "{log}");
}
