//! `rollout-sync sync --root DIR` against a real `rsync --daemon` and a tiny HTTP
//! responder, both on 127.0.0.1: updates, deletions, node-local files, the
//! serial written only after success, and the up-to-date short cut.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rollout_installer::paths;
use testkit::prereq;

struct Daemon(Child);

const NODE_SECRET: &str = "0123456789abcdef";
const RSYNC_USER: &str = "node-525400000001";
const RSYNC_PASSWORD: &str = "fedcba9876543210";

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn read(root: &Path, rel: &str) -> String {
    std::fs::read_to_string(root.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Serves `GET /api/v1/images/web/serial` from `serial` and the image's excludes,
/// and records the bodies of `POST /api/v1/phone-home`, to a client with the
/// node's Bearer ([`NODE_SECRET`]) only, as `rollout serve` does.
fn http_responder(serial: Arc<AtomicU64>, posts: Arc<Mutex<Vec<String>>>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { continue };
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let (head, body) = loop {
                let Ok(n) = c.read(&mut chunk) else {
                    break (String::new(), String::new());
                };
                if n == 0 {
                    break (String::new(), String::new());
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some((h, b)) = text.split_once("\r\n\r\n") {
                    let len = h
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if b.len() >= len {
                        break (h.to_string(), b.to_string());
                    }
                }
            };
            if !head
                .lines()
                .any(|l| l == format!("Authorization: Bearer {NODE_SECRET}"))
            {
                let _ =
                    c.write_all(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 9\r\n\r\nno bearer");
                continue;
            }
            let reply = if head.starts_with("GET /api/v1/images/web/serial ") {
                format!("{}\n", serial.load(Ordering::SeqCst))
            } else if head.starts_with("GET /api/v1/images/web/excludes ") {
                // As `rollout serve` lists them: defaults, then the image's [[image]] excludes.
                "/etc/hostname\n/var/lib/site/\n".to_string()
            } else if head.starts_with("POST /api/v1/phone-home ") {
                posts.lock().unwrap().push(body);
                String::new()
            } else {
                let _ = c.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
                continue;
            };
            let _ = c.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{reply}",
                    reply.len()
                )
                .as_bytes(),
            );
        }
    });
    port
}

fn sync(root: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rollout-installer"))
        .args(["sync", "--root", &root.to_string_lossy()])
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn sync_updates_a_node_root_from_an_rsync_daemon() {
    if !prereq::require_root("the rsync daemon serves files as uid 0 and the copy keeps owners")
        || !prereq::require_file(paths::RSYNC, "rsync")
    {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();

    // Three published serials of image "web".
    let img = |n: u64| t.join(format!("images/web-{n}"));
    for (rel, body) in [
        ("boot/vmlinuz-6.1.0-1-amd64", "kernel one"),
        ("etc/app.conf", "v1\n"),
        ("etc/gone", "removed in serial 2\n"),
        ("etc/hostname", "golden\n"),
        ("etc/fstab", "golden fstab\n"),
        ("usr/bin/tool", "tool 1\n"),
    ] {
        write(&img(1), rel, body);
    }
    for (rel, body) in [
        ("boot/vmlinuz-6.1.0-2-amd64", "kernel two"),
        ("etc/app.conf", "v2\n"),
        ("etc/hostname", "golden\n"),
        ("etc/fstab", "golden fstab\n"),
        ("usr/bin/tool", "tool 2\n"),
    ] {
        write(&img(2), rel, body);
    }
    // rsync's quick check compares size and mtime: give each serial its own
    // mtimes, as images built at different times have.
    for n in 1..=2u64 {
        let when = std::time::SystemTime::now() - Duration::from_secs(3600 * (4 - n));
        let out = Command::new("find")
            .arg(img(n))
            .args(["-type", "f"])
            .output()
            .unwrap();
        for f in String::from_utf8_lossy(&out.stdout).lines() {
            let file = std::fs::File::options().write(true).open(f).unwrap();
            file.set_modified(when).unwrap();
        }
    }
    // Serial 3 is serial 2 with one file changed (unchanged files keep mtimes).
    let out = Command::new("cp")
        .arg("-a")
        .arg(img(2))
        .arg(img(3))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    write(&img(3), "etc/app.conf", "v3 with a longer body\n");
    // As `rollout serve` configures it: nothing anonymous.
    let mut conf = format!(
        "pid file = {0}/rsyncd.pid\nuse chroot = no\nlist = no\nsecrets file = {0}/rsyncd.secrets\n",
        t.display()
    );
    for n in 1..=3 {
        conf.push_str(&format!(
            "[web-{n}]\n    path = {}\n    read only = yes\n    uid = 0\n    gid = 0\n    numeric ids = yes\n    auth users = {RSYNC_USER}\n",
            img(n).display()
        ));
    }
    write(
        t,
        "rsyncd.secrets",
        &format!("{RSYNC_USER}:{RSYNC_PASSWORD}\n"),
    );
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            t.join("rsyncd.secrets"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
    }
    write(t, "rsyncd.conf", &conf);
    let rsync_port = testkit::ports::free_port();
    let _daemon = Daemon(
        Command::new(paths::RSYNC)
            .args([
                "--daemon",
                "--no-detach",
                "--address=127.0.0.1",
                &format!("--port={rsync_port}"),
                &format!("--config={}/rsyncd.conf", t.display()),
            ])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", rsync_port)).is_err() {
        assert!(Instant::now() < deadline, "rsync daemon did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }

    let published = Arc::new(AtomicU64::new(2));
    let posts = Arc::new(Mutex::new(Vec::new()));
    let http_port = http_responder(published.clone(), posts.clone());

    // The node as the installer left it with serial 1, plus node-local files.
    let root = t.join("root");
    let out = Command::new(paths::RSYNC)
        .args([
            "-a",
            &format!("{}/", img(1).display()),
            &format!("{}/", root.display()),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    write(&root, "etc/hostname", "node1\n");
    write(
        &root,
        "etc/fstab",
        "UUID=abc-1\t/\text3\terrors=remount-ro\t0\t1\n",
    );
    write(
        &root,
        "var/lib/rollout/bin/rollout-sync",
        "the installed binary\n",
    );
    write(
        &root,
        "boot/extlinux/ldlinux.sys",
        "placed by extlinux --install\n",
    );
    write(&root, "etc/rollout/serial", "1\n");
    // Node-local by the image's own configured exclude; the image has no such path.
    write(&root, "var/lib/site/state", "this node's\n");
    write(
        &root,
        "etc/rollout/node.toml",
        &format!(
            "server = \"http://127.0.0.1:{http_port}\"\nmac = \"52:54:00:00:00:01\"\nhostname = \"node1\"\nimage = \"web\"\nserial = 1\nrsync = \"rsync://127.0.0.1:{rsync_port}\"\nrsync_user = \"{RSYNC_USER}\"\n"
        ),
    );
    // A node installed before node credentials: told what to do, nothing changed.
    let o = sync(&root);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("rollout node reinstall"),
        "{}",
        text(&o)
    );
    assert_eq!(read(&root, "etc/rollout/serial"), "1\n");
    // A wrong rsync password is refused by the daemon.
    write(
        &root,
        "etc/rollout/node.secret",
        &format!("{NODE_SECRET}\n"),
    );
    write(&root, "etc/rollout/rsync.password", "guessed\n");
    // No root=UUID= in the current entry: the sync must copy, then refuse to
    // write a bootloader config, and leave the recorded serial alone.
    let bad_conf = "DEFAULT rollout\nLABEL rollout\n  LINUX /boot/vmlinuz-6.1.0-1-amd64\n  APPEND root=/dev/sda1 ro console=ttyS0\n";
    write(&root, "boot/extlinux/extlinux.conf", bad_conf);

    let o = sync(&root);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("auth failed"),
        "{}",
        text(&o)
    );
    assert_eq!(read(&root, "etc/app.conf"), "v1\n", "copied without auth");
    write(
        &root,
        "etc/rollout/rsync.password",
        &format!("{RSYNC_PASSWORD}\n"),
    );

    let o = sync(&root);
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("root=UUID="), "{}", text(&o));
    assert_eq!(
        read(&root, "etc/rollout/serial"),
        "1\n",
        "serial written before success"
    );
    assert!(posts.lock().unwrap().is_empty(), "reported a failed sync");

    // Fixed by hand: the retry must notice that extlinux.conf still boots the
    // deleted kernel even though rsync has nothing left to copy in /boot.
    write(
        &root,
        "boot/extlinux/extlinux.conf",
        &bad_conf.replace("root=/dev/sda1", "root=UUID=abc-1"),
    );
    let o = sync(&root);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "{}", text(&o));
    assert!(out.contains("updated 1 → 2, "), "{}", text(&o));
    assert!(out.contains("reboot needed: yes"), "{}", text(&o));
    assert_eq!(read(&root, "etc/app.conf"), "v2\n");
    assert_eq!(read(&root, "usr/bin/tool"), "tool 2\n");
    assert!(!root.join("etc/gone").exists(), "deleted file kept");
    assert!(!root.join("boot/vmlinuz-6.1.0-1-amd64").exists());
    assert_eq!(read(&root, "etc/hostname"), "node1\n");
    assert_eq!(read(&root, "var/lib/site/state"), "this node's\n");
    assert_eq!(
        read(&root, "etc/fstab"),
        "UUID=abc-1\t/\text3\terrors=remount-ro\t0\t1\n"
    );
    assert_eq!(
        read(&root, "var/lib/rollout/bin/rollout-sync"),
        "the installed binary\n"
    );
    assert_eq!(
        read(&root, "boot/extlinux/ldlinux.sys"),
        "placed by extlinux --install\n"
    );
    let ext = read(&root, "boot/extlinux/extlinux.conf");
    assert!(
        ext.contains("  LINUX /boot/vmlinuz-6.1.0-2-amd64\n"),
        "{ext}"
    );
    assert!(
        ext.contains("  APPEND root=UUID=abc-1 ro console=ttyS0\n"),
        "{ext}"
    );
    assert!(ext.contains("MENU LABEL web serial 2"), "{ext}");
    assert_eq!(read(&root, "etc/rollout/serial"), "2\n");
    {
        let p = posts.lock().unwrap();
        assert_eq!(p.len(), 1, "{p:?}");
        let v: serde_json::Value = serde_json::from_str(&p[0]).unwrap();
        assert_eq!(
            (v["serial"].as_u64(), v["mac"].as_str()),
            (Some(2), Some("52:54:00:00:00:01"))
        );
    }

    let o = sync(&root);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "up to date (serial 2)\n"
    );
    assert_eq!(posts.lock().unwrap().len(), 1, "up to date must not report");

    // Serial 3 changes a file outside /boot: no reboot, bytes counted.
    published.store(3, Ordering::SeqCst);
    let o = sync(&root);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "{}", text(&o));
    assert!(out.contains("updated 2 → 3, "), "{}", text(&o));
    assert!(out.contains("reboot needed: no"), "{}", text(&o));
    let bytes: u64 = out
        .split("updated 2 → 3, ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no byte count in {out}"));
    assert!(bytes >= "v3 with a longer body\n".len() as u64, "{out}");
    assert_eq!(read(&root, "etc/app.conf"), "v3 with a longer body\n");
    assert_eq!(read(&root, "etc/rollout/serial"), "3\n");
}
