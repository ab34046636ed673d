//! Two `rollout serve` (loopback, DHCP off) sharing one PostgreSQL, as the
//! servers of two racks do (README "Several racks"): a node declared and
//! installed through server A shows on server B's live feed within a second
//! and in `rollout watch` against B; a reinstall asked of B is what A's boot
//! script serves the node next; an operator made on B works on A, and its
//! revoke on B takes effect on A at once; a power request or reinstall-now
//! made on B for a node whose BMC only A's config holds is run by A.

mod common;

use common::bmc::{secret_file, sets_after, start_ipmi_sim, wait_for};
use common::loopback::{write_config, Server};
use serde_json::json;
use std::io::BufRead;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use testkit::postgres::TempPostgres;

const MAC: &str = "52:54:00:00:00:02";
/// node1 of the loopback config.
const MAC_INSTALLED: &str = "52:54:00:00:00:01";

/// A server's config with its own state_dir and ports, the shared database's url added.
fn shared_server(dir: &Path, url: &str) -> Server {
    shared_server_with(dir, url, |text| text)
}

/// [`shared_server`], its config text changed by `edit` first.
fn shared_server_with(dir: &Path, url: &str, edit: impl Fn(String) -> String) -> Server {
    let cfg = write_config(dir, 0);
    let mut text = edit(std::fs::read_to_string(&cfg).unwrap());
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

/// How the child exited, killed if it had not after `within`.
fn finish(mut child: std::process::Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    child.wait().unwrap()
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

    // Installed through A, watched on B (once `rollout watch` has drawn its
    // table it follows B's feed).
    let mut watch = std::process::Command::new(env!("CARGO_BIN_EXE_rollout"))
        .arg("--config")
        .arg(b.dir.join("rollout.toml"))
        .args(["watch", "--until-done"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (lines_tx, lines) = mpsc::channel();
    let stdout = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines_tx.send(line);
        }
    });
    let mut watched = vec![];
    while !watched.iter().any(|l: &String| l.starts_with("node2")) {
        watched.push(
            lines
                .recv_timeout(Duration::from_secs(10))
                .expect("watch draws its table"),
        );
    }
    let started = Instant::now();
    a.install(MAC);
    assert!(
        seen_in(&feed, "installed", started, Duration::from_secs(1)).is_some(),
        "an install reported to A shows on B within a second"
    );
    let status = finish(watch, Duration::from_secs(20));
    watched.extend(lines.try_iter());
    assert!(status.success(), "{watched:#?}");
    assert!(
        watched
            .iter()
            .any(|l| l.starts_with("node2") && l.contains("installed")),
        "`rollout watch` against B follows the install A ran: {watched:#?}"
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

/// node1's BMC (ipmi_sim) is in A's config only, as a rack's BMCs are in
/// its own server's; B relays what it is asked to A through the database.
#[test]
fn power_asked_of_one_server_runs_on_the_server_holding_the_bmc() {
    if !TempPostgres::available()
        || !testkit::prereq::require_tools(&[("ipmi_sim", "openipmi"), ("ipmitool", "ipmitool")])
    {
        return;
    }
    let pg = TempPostgres::start();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let port = common::bmc::free_udp_port();
    let _sim = start_ipmi_sim(dir_a.path(), port, "bmc-secret");
    let pw = secret_file(dir_a.path(), "bmc-pw", "bmc-secret");
    let a = shared_server_with(dir_a.path(), &pg.url(), |text| {
        let bmc = format!(
            "bmc = {{ driver = \"ipmi\", address = \"127.0.0.1\", port = {port}, username = \"admin\", password_file = \"{}\", boot_mode = \"legacy\" }}\n",
            pw.display()
        );
        text.replace(
            "ip = \"127.0.0.11\"\n",
            &format!("ip = \"127.0.0.11\"\n{bmc}"),
        ) + "[power]\ntimeout = 4\n"
    });
    let b = shared_server(dir_b.path(), &pg.url());
    wait_for("ipmi_sim through A", Duration::from_secs(15), || {
        a.req("GET", "/api/v1/nodes/node1/power", None, true).0 == 200
    });

    let (st, body) = b.req(
        "POST",
        "/api/v1/nodes/node1/power",
        Some(json!({"action": "on"})),
        true,
    );
    assert_eq!(st, 200, "B relays the power request to A: {body}");
    assert_eq!(sets_after(dir_a.path(), 1), ["set power 1"]);
    let (st, body) = b.req("GET", "/api/v1/nodes/node1/power", None, true);
    assert_eq!((st, body["state"].as_str()), (200, Some("on")), "{body}");
    let (st, body) = b.req("POST", "/api/v1/nodes/node1/reinstall?now=true", None, true);
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["power"], json!(["boot_once_pxe", "cycle"]), "{body}");
    assert_eq!(
        sets_after(dir_a.path(), 4),
        ["set power 1", "set boot pxe", "set power 0", "set power 1"]
    );
    // A ran them: its history rows name who asked on B.
    let (_, hist) = b.req("GET", "/api/v1/nodes/node1/history", None, true);
    let power: Vec<_> = hist
        .as_array()
        .unwrap()
        .iter()
        .map(|h| &h["event"])
        .filter(|e| e["kind"] == "power")
        .collect();
    assert_eq!(power.len(), 2, "{hist}");
    assert!(
        power
            .iter()
            .all(|e| e["by"] == "admin" && e["result"] == "ok"),
        "{hist}"
    );
    assert_eq!(power[1]["action"], "reinstall_now");
    assert!(a
        .log_text()
        .contains("ran a power request relayed by another server"));
    let page = b.admin_text("/nodes/52:54:00:00:00:01");
    assert!(
        page.contains("power-state power-on"),
        "B's dashboard shows node1's power (its buttons need a session):\n{page}"
    );

    // A node no server has a BMC for: B says so instead of waiting forever.
    let (st, body) = b.req(
        "POST",
        "/api/v1/nodes",
        Some(json!({"mac": MAC, "hostname": "node2"})),
        true,
    );
    assert_eq!(st, 200, "{body}");
    let (st, body) = b.req(
        "POST",
        "/api/v1/nodes/node2/power",
        Some(json!({"action": "cycle"})),
        true,
    );
    assert_eq!(st, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("no other server sharing the database claimed"),
        "{body}"
    );
    let page = b.admin_text(&format!("/nodes/{MAC}"));
    assert!(
        page.contains("power-state power-no-BMC"),
        "no BMC anywhere:\n{page}"
    );
}

/// PostgreSQL down: a node this server last knew as installed still boots
/// its disk, a node due an install is told to ask again (an install starts
/// with writes), `/healthz` names the outage; all as before once it is back.
#[test]
fn with_the_database_down_installed_nodes_boot_their_disks_and_installs_wait() {
    if !TempPostgres::available() {
        return;
    }
    let pg = TempPostgres::start();
    let dir = tempfile::tempdir().unwrap();
    let a = shared_server(dir.path(), &pg.url());
    a.install(MAC_INSTALLED);
    let (st, body) = a.req(
        "POST",
        "/api/v1/nodes",
        Some(json!({"mac": MAC, "hostname": "node2"})),
        true,
    );
    assert_eq!(st, 200, "{body}");
    let boot = |mac: &str| a.text(&format!("/boot.ipxe?mac={mac}"));
    assert!(
        boot(MAC).contains("rollout.boot_secret="),
        "node2 is due its install"
    );

    pg.stop();
    let script = boot(MAC_INSTALLED);
    assert!(
        script.contains("is installed with default serial 1; booting from its disk"),
        "{script}"
    );
    let script = boot(MAC);
    assert!(
        script.contains("the node database cannot be read now") && script.contains("sleep 30"),
        "{script}"
    );
    let health = a.text("/healthz");
    assert!(
        health.starts_with("degraded\nnode_store_unreachable since "),
        "{health}"
    );

    pg.resume();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !boot(MAC).contains("rollout.boot_secret=") {
        assert!(
            Instant::now() < deadline,
            "installs go on once PostgreSQL is back"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(a.text("/healthz").starts_with("ok\n"));
    let (_, hist) = a.req("GET", "/api/v1/nodes/node1/history", None, true);
    assert!(
        hist.to_string().contains("\"installed\""),
        "the history written before the outage is intact: {hist}"
    );
}
