//! Two `rollout serve` (loopback, DHCP off) sharing one PostgreSQL, as the
//! servers of two racks do (README "Several racks"): a node declared and
//! installed through server A shows on server B's live feed within a second
//! and in `rollout watch` against B; a reinstall asked of B is what A's boot
//! script serves the node next; an operator made on B works on A, and its
//! revoke on B takes effect on A at once.

mod common;

use common::loopback::{write_config, Server};
use serde_json::json;
use std::io::BufRead;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use testkit::postgres::TempPostgres;

const MAC: &str = "52:54:00:00:00:02";

/// A server's config with its own state_dir and ports, the shared database's url added.
fn shared_server(dir: &Path, url: &str) -> Server {
    let cfg = write_config(dir, 0);
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!("[store]\nurl = \"{url}\"\n"));
    std::fs::write(&cfg, text).unwrap();
    Server::start(dir)
}

/// Every `data:` line of `server`'s live feed, with when it arrived.
fn live_feed(server: &Server) -> mpsc::Receiver<(Instant, serde_json::Value)> {
    let resp = ureq::get(&server.url("/api/v1/events"))
        .set("Authorization", &format!("Bearer {}", server.token))
        .call()
        .expect("the live feed opens");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(resp.into_reader()).lines() {
            let Ok(line) = line else { return };
            if let Some(data) = line.strip_prefix("data:") {
                let value = serde_json::from_str(data.trim()).unwrap_or_default();
                if tx.send((Instant::now(), value)).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// How long after `since` the feed showed `MAC` in `state` (None: not within `within`).
fn seen_in(
    feed: &mpsc::Receiver<(Instant, serde_json::Value)>,
    state: &str,
    since: Instant,
    within: Duration,
) -> Option<Duration> {
    let deadline = since + within;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        let (at, node) = feed.recv_timeout(left).ok()?;
        if node["mac"] == MAC && node["state"] == state {
            return Some(at - since);
        }
    }
}

/// The child's output once it exits, or once it is killed after `within`.
fn finish(mut child: std::process::Child, within: Duration) -> std::process::Output {
    let deadline = Instant::now() + within;
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    child.wait_with_output().unwrap()
}

#[test]
fn two_servers_on_one_database_show_and_steer_every_node() {
    if !TempPostgres::available() {
        return;
    }
    let pg = TempPostgres::start();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = shared_server(dir_a.path(), &pg.url());
    let b = shared_server(dir_b.path(), &pg.url());
    let feed = live_feed(&b);

    // Declared on A: on B's feed within a second, and in B's API.
    let declared = Instant::now();
    let (st, body) = a.req(
        "POST",
        "/api/v1/nodes",
        Some(json!({"mac": MAC, "hostname": "node2", "ip": "127.0.0.12"})),
        true,
    );
    assert_eq!(st, 200, "{body}");
    let took = seen_in(&feed, "pending", declared, Duration::from_secs(1));
    assert!(
        took.is_some(),
        "A's declaration reaches B's live feed within a second"
    );
    eprintln!("declared on A, on B's feed after {took:?}");
    let (st, node) = b.req("GET", "/api/v1/nodes/node2", None, true);
    assert_eq!(
        (st, node["ip"].as_str()),
        (200, Some("127.0.0.12")),
        "{node}"
    );
    let (st, body) = b.req(
        "POST",
        "/api/v1/nodes",
        Some(json!({"mac": "52:54:00:00:00:03", "hostname": "node3", "ip": "127.0.0.12"})),
        true,
    );
    assert_eq!(st, 409, "the address A reserved is refused on B: {body}");

    // Installed through A, watched on B.
    let watch = std::process::Command::new(env!("CARGO_BIN_EXE_rollout"))
        .arg("--config")
        .arg(b.dir.join("rollout.toml"))
        .args(["watch", "--until-done"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    a.install(MAC);
    assert!(
        seen_in(&feed, "installed", started, Duration::from_secs(1)).is_some(),
        "an install reported to A shows on B within a second"
    );
    let out = finish(watch, Duration::from_secs(20));
    let watched = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{watched}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        watched
            .lines()
            .any(|l| l.starts_with("node2") && l.contains("installed")),
        "`rollout watch` against B follows the install A ran:\n{watched}"
    );

    // Installed: A's boot script boots the disk. A reinstall asked of B makes
    // A's next script install it again.
    let script = a.text(&format!("/boot.ipxe?mac={MAC}"));
    assert!(!script.contains("rollout.boot_secret="), "{script}");
    let (st, body) = b.req("POST", "/api/v1/nodes/node2/reinstall", None, true);
    assert_eq!(st, 200, "{body}");
    let (st, plan) = a.plan(MAC);
    assert_eq!(
        st, 200,
        "A installs the node B was asked to reinstall: {plan}"
    );

    // One operator table: made on B, used on A, revoked on B, refused on A.
    let (st, made) = b.req(
        "POST",
        "/api/v1/operators",
        Some(json!({"name": "carol", "role": "read"})),
        true,
    );
    assert_eq!(st, 200, "{made}");
    let as_carol = |s: &Server| match ureq::get(&s.url("/api/v1/nodes"))
        .set(
            "Authorization",
            &format!("Bearer {}", made["token"].as_str().unwrap()),
        )
        .call()
    {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(code, _)) => code,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(as_carol(&a), 200, "a token made on B works on A");
    let (st, _) = b.req("DELETE", "/api/v1/operators/carol", None, true);
    assert_eq!(st, 204);
    assert_eq!(as_carol(&a), 401, "revoked on B, refused on A at once");
}
