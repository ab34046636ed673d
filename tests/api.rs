//! The operator API and the installer API against a real `rollout serve` on
//! loopback (DHCP off), plus the CLI that talks to it.

mod common;
use common::loopback::{event, Server};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[test]
fn every_endpoint_with_auth_and_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());

    // Reads need a credential (any role) unless server.anonymous_read.
    let (st, e) = s.req("GET", "/api/v1/nodes", None, false);
    assert_eq!(st, 401, "{e}");
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("rollout operator add"),
        "{e}"
    );
    let (st, nodes) = s.req("GET", "/api/v1/nodes", None, true);
    assert_eq!(st, 200);
    assert_eq!(nodes[0]["hostname"], "node1");
    assert_eq!(nodes[0]["state"], "pending");
    assert!(nodes[0].get("token").is_none(), "tokens must not leak");
    let (st, one) = s.req("GET", "/api/v1/nodes/node1", None, true);
    assert_eq!((st, one["mac"].as_str()), (200, Some("52:54:00:00:00:01")));
    let (st, e) = s.req("GET", "/api/v1/nodes/nosuch", None, true);
    assert_eq!(st, 404);
    assert!(e["error"].as_str().unwrap().contains("rollout node list"));
    let (st, images) = s.req("GET", "/api/v1/images", None, true);
    assert_eq!(
        (
            st,
            images[0]["name"].as_str(),
            images[0]["published"].as_u64()
        ),
        (200, Some("default"), Some(1))
    );
    // Each complete serial with its metadata, as the image store reads it.
    assert_eq!(
        images[0]["serials"][0]["serial"].as_u64(),
        Some(1),
        "{images}"
    );
    assert!(images[0]["serials"][0]["created"].is_string(), "{images}");
    let serial = s.admin_text("/api/v1/images/default/serial");
    assert_eq!(serial.trim(), "1");
    // Node-local paths for rollout-sync: the defaults, then the image's own.
    let excludes = s.admin_text("/api/v1/images/default/excludes");
    let lines: Vec<&str> = excludes.lines().collect();
    assert!(lines.contains(&"/etc/hostname"), "{excludes}");
    assert_eq!(lines.last(), Some(&"/var/lib/site/"), "{excludes}");
    let missing = ureq::get(&s.url("/api/v1/images/nosuch/excludes"))
        .set("Authorization", &format!("Bearer {}", s.token))
        .call();
    assert!(
        matches!(missing, Err(ureq::Error::Status(404, _))),
        "{missing:?}"
    );
    let (st, spec) = s.req("GET", "/api/v1/openapi.json", None, false);
    assert_eq!(st, 200);
    assert_eq!(spec["openapi"], "3.1.0");

    // Changes need the token, and a refused change changes nothing.
    let add = json!({"mac": "52:54:00:00:00:02", "hostname": "node2", "ip": "127.0.0.12"});
    let (st, e) = s.req("POST", "/api/v1/nodes", Some(add.clone()), false);
    assert_eq!(st, 401);
    assert!(e["error"].as_str().unwrap().contains("admin.token"));
    for (bad, why) in [
        (
            json!({"mac": "52:54:00", "hostname": "x"}),
            "not a MAC address",
        ),
        (
            json!({"mac": "52:54:00:00:00:03", "hostname": "node1"}),
            "hostname node1 is already used",
        ),
        (
            json!({"mac": "52:54:00:00:00:03", "hostname": "n3", "ip": "127.0.0.11"}),
            "already reserved for node1",
        ),
        (
            json!({"mac": "52:54:00:00:00:03", "hostname": "n3", "ip": "10.9.9.9"}),
            "outside the provisioning subnet",
        ),
        (
            json!({"mac": "52:54:00:00:00:03", "hostname": "n3", "image": "nosuch"}),
            "image \"nosuch\" does not exist",
        ),
        (
            json!({"mac": "52:54:00:00:00:03", "hostname": "bad name"}),
            "is not valid",
        ),
        (json!({"mac": "52:54:00:00:00:03"}), "body is not a node"),
    ] {
        let (st, e) = s.req("POST", "/api/v1/nodes", Some(bad.clone()), true);
        assert!((400..500).contains(&st), "{bad}: {st}");
        assert!(e["error"].as_str().unwrap().contains(why), "{bad}: {e}");
    }
    assert_eq!(
        s.req("GET", "/api/v1/nodes", None, true)
            .1
            .as_array()
            .unwrap()
            .len(),
        1,
        "refused calls changed state"
    );
    let (st, n2) = s.req("POST", "/api/v1/nodes", Some(add), true);
    assert_eq!((st, n2["state"].as_str()), (200, Some("pending")));

    // Reinstall, delete (config nodes cannot be deleted through the API).
    assert_eq!(
        s.req("POST", "/api/v1/nodes/node2/reinstall", None, false)
            .0,
        401
    );
    assert_eq!(
        s.req("POST", "/api/v1/nodes/node2/reinstall", None, true).0,
        200
    );
    assert_eq!(s.req("DELETE", "/api/v1/nodes/node1", None, true).0, 409);
    assert_eq!(s.req("DELETE", "/api/v1/nodes/node2", None, false).0, 401);
    assert_eq!(s.req("DELETE", "/api/v1/nodes/node2", None, true).0, 204);
    assert_eq!(s.req("GET", "/api/v1/nodes/node2", None, true).0, 404);

    // A stranger PXE-boots: discovered, waits for approval, then installs.
    let script = s.text("/boot.ipxe?mac=aa:bb:cc:00:00:01&platform=efi");
    assert!(script.contains("waiting for approval"), "{script}");
    let (_, disc) = s.req("GET", "/api/v1/discovered", None, true);
    assert_eq!(disc[0]["mac"], "aa:bb:cc:00:00:01");
    assert_eq!(disc[0]["firmware"], "efi");
    // Waiting for approval: its script carries no boot secret, so no plan.
    assert!(!script.contains("rollout.boot_secret"), "{script}");
    assert_eq!(
        s.req("POST", "/api/v1/plan/aa:bb:cc:00:00:01", None, false)
            .0,
        403
    );
    assert_eq!(
        s.req(
            "POST",
            "/api/v1/discovered/aa:bb:cc:00:00:01/approve",
            None,
            false
        )
        .0,
        401
    );
    assert_eq!(
        s.req(
            "POST",
            "/api/v1/discovered/aa:bb:cc:00:00:01/approve",
            None,
            true
        )
        .0,
        200
    );
    let script = s.text("/boot.ipxe?mac=aa:bb:cc:00:00:01");
    assert!(script.contains("rollout.mac=aa:bb:cc:00:00:01"), "{script}");
    assert_eq!(
        s.req(
            "POST",
            "/api/v1/discovered/aa:bb:cc:00:00:01/ignore",
            None,
            true
        )
        .0,
        200
    );
    let script = s.text("/boot.ipxe?mac=aa:bb:cc:00:00:01");
    assert!(
        script.lines().any(|l| l == "exit 1"),
        "ignored machines boot their disk: {script}"
    );

    // The installer's side: plan, events with the plan's token only, history.
    let (st, plan) = s.plan("52:54:00:00:00:01");
    assert_eq!(st, 200);
    assert_eq!(
        (plan["hostname"].as_str(), plan["image"]["serial"].as_u64()),
        (Some("node1"), Some(1))
    );
    assert_eq!(plan["layout"]["partitions"][0]["size"], "1GiB");
    assert_eq!(plan["layout"]["partitions"][0]["content"]["mount"], "/");
    assert_eq!(plan["sync_interval_secs"], 900, "[install] sync_interval");
    let excludes: Vec<&str> = plan["excludes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        excludes.contains(&"/etc/ssh/ssh_host_*") && excludes.contains(&"/var/lib/site/"),
        "{excludes:?}"
    );
    let path = format!(
        "/api/v1/installs/{}/events",
        plan["install_id"].as_str().unwrap()
    );
    let ev = event(
        "copy",
        json!({"kind": "progress", "done_bytes": 10, "total_bytes": 40}),
    );
    let st = ureq::post(&s.url(&path))
        .send_json(ev.clone())
        .err()
        .map(|e| match e {
            ureq::Error::Status(s, _) => s,
            _ => 0,
        });
    assert_eq!(st, Some(401));
    let st = ureq::post(&s.url(&path))
        .set("Authorization", "Bearer nope")
        .send_json(ev.clone())
        .err()
        .map(|e| match e {
            ureq::Error::Status(s, _) => s,
            _ => 0,
        });
    assert_eq!(st, Some(403));
    let token = plan["token"].as_str().unwrap();
    let ok = ureq::post(&s.url(&path))
        .set("Authorization", &format!("Bearer {token}"))
        .send_json(ev)
        .unwrap();
    assert_eq!(ok.status(), 204);
    let (_, n1) = s.req("GET", "/api/v1/nodes/node1", None, true);
    assert_eq!(
        (
            n1["state"].as_str(),
            n1["stage"].as_str(),
            n1["done_bytes"].as_u64()
        ),
        (Some("installing"), Some("copy"), Some(10))
    );
    let (st, hist) = s.req("GET", "/api/v1/nodes/node1/history", None, true);
    assert_eq!(st, 200);
    assert!(hist
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h["event"]["kind"] == "install_started"));

    // The CLI reads the same API.
    let (ok, out, err) = s.cli(&["node", "list"]);
    assert!(ok, "{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("node1") && l.contains("installing") && l.contains("25%")),
        "{out}"
    );
    let (ok, out, _) = s.cli(&["node", "list", "--json"]);
    assert!(ok);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert!(v.as_array().unwrap().len() >= 2);
    let (ok, out, err) = s.cli(&[
        "node",
        "add",
        "--mac",
        "52:54:00:00:00:05",
        "--hostname",
        "node5",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("node5 (52:54:00:00:00:05) declared: pending"));
    let (ok, _, err) = s.cli(&[
        "node",
        "add",
        "--mac",
        "52:54:00:00:00:06",
        "--hostname",
        "node5",
    ]);
    assert!(
        !ok && err.contains("hostname node5 is already used"),
        "{err}"
    );
    let (ok, out, _) = s.cli(&["node", "show", "node1"]);
    assert!(ok && out.contains("install_started"), "{out}");
    let (ok, out, _) = s.cli(&["discovered", "list"]);
    assert!(
        ok && out.contains("aa:bb:cc:00:00:01") && out.contains("ignored"),
        "{out}"
    );
    let (ok, out, _) = s.cli(&["watch", "--once"]);
    assert!(ok && out.contains("node1"), "{out}");
}

/// The served OpenAPI document against the router's own route table, in both
/// directions, and every documented operation asked of the running server: the
/// router answers it (a handler's status, not axum's bare 404 or 405).
#[test]
fn openapi_documents_exactly_the_routes_the_server_answers() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let (st, spec) = s.req("GET", "/api/v1/openapi.json", None, false);
    assert_eq!(st, 200);
    let documented = rollout::http::documented_operations(&spec);
    let (undocumented, unserved) = rollout::http::spec_mismatches(&spec);
    assert!(
        undocumented.is_empty(),
        "served but not documented: {undocumented:?}"
    );
    assert!(
        unserved.is_empty(),
        "documented but not served: {unserved:?}"
    );

    // Without the admin token and without bodies, so nothing is changed; what
    // matters is who answers.
    let agent = ureq::AgentBuilder::new()
        .redirects(0)
        .timeout(Duration::from_secs(10))
        .build();
    let ask = |method: &str, path: &str| -> (u16, String) {
        let res = agent.request(method, &s.url(path)).call();
        let (status, resp) = match res {
            Ok(r) => (r.status(), r),
            Err(ureq::Error::Status(c, r)) => (c, r),
            Err(e) => panic!("{method} {path}: {e}"),
        };
        // The event stream never ends: its headers are the answer.
        let streaming = resp.content_type() == "text/event-stream";
        let body = if streaming {
            String::new()
        } else {
            resp.into_string().unwrap_or_default()
        };
        (status, body)
    };
    let unrouted = |(status, body): &(u16, String)| {
        *status == 405 || (*status == 404 && body.trim().is_empty())
    };
    // The check tells a missing route from a handler's own 404.
    assert!(unrouted(&ask("GET", "/api/v1/nosuch")));
    assert!(unrouted(&ask("PUT", "/api/v1/nodes")));
    assert!(!unrouted(&ask("GET", "/api/v1/nodes/nosuch")));
    for (method, path) in &documented {
        let concrete = path
            .replace("{id}", "node1")
            .replace("{mac}", "52:54:00:00:00:01")
            .replace("{name}", "default");
        assert!(!concrete.contains('{'), "a parameter to fill in: {path}");
        let got = ask(method, &concrete);
        assert!(
            !unrouted(&got),
            "{method} {path} is documented but the router does not answer it: {got:?}"
        );
    }
}

#[test]
fn crash_mid_install_keeps_state_and_history_then_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(dir.path());
    let (_, plan) = s.plan("52:54:00:00:00:01");
    let path = format!(
        "/api/v1/installs/{}/events",
        plan["install_id"].as_str().unwrap()
    );
    let auth = format!("Bearer {}", plan["token"].as_str().unwrap());
    for (i, step) in ["choose_disk", "partition", "format", "mount"]
        .iter()
        .enumerate()
    {
        let ev = event(step, json!({"kind": "done"}));
        ureq::post(&s.url(&path))
            .set("Authorization", &auth)
            .send_json(ev)
            .unwrap();
        if i == 2 {
            // kill -9 between two acknowledged reports.
            testkit::process::kill_tree(&mut s.child);
            s = Server::start(dir.path());
        }
    }
    let (_, n) = s.req("GET", "/api/v1/nodes/node1", None, true);
    assert_eq!(
        (n["state"].as_str(), n["stage"].as_str()),
        (Some("installing"), Some("mount"))
    );
    let (_, hist) = s.req("GET", "/api/v1/nodes/node1/history", None, true);
    let steps: Vec<&str> = hist
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h["event"]["step"].as_str())
        .collect();
    assert_eq!(
        steps,
        ["choose_disk", "partition", "format", "mount"],
        "acknowledged reports lost in the crash"
    );
    // The install then stops reporting: the configured 5 s timeout fails it.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let (_, n) = s.req("GET", "/api/v1/nodes/node1", None, true);
        if n["state"] == "failed" {
            assert!(
                n["last_error"].as_str().unwrap().contains("timed out"),
                "{n}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "install never timed out: {n}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A serial published by the CLI is handed out only with its rsync module in
/// place: asking right after the switch finds it in rsyncd.conf already, not
/// after the supervisor's next refresh. Its plan lists the serial's sparse
/// files, which the installer copies apart to keep their holes.
#[test]
fn a_newly_published_serial_comes_with_its_rsync_module_and_sparse_files() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::create_dir_all(tree.join("var/log")).unwrap();
    std::fs::write(tree.join("etc/motd"), "serial 2\n").unwrap();
    std::fs::File::create(tree.join("var/log/lastlog"))
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let published = rollout::images::Images::new(&dir.path().join("state"))
        .import("default", &tree, "", &[])
        .unwrap()
        .unwrap();
    assert_eq!(published.serial, 2);
    let serial = s.admin_text("/api/v1/images/default/serial");
    assert_eq!(serial.trim(), "2");
    let conf = std::fs::read_to_string(dir.path().join("state/rsyncd.conf")).unwrap();
    assert!(conf.contains("[default-2]"), "{conf}");
    let (st, plan) = s.plan("52:54:00:00:00:01");
    assert_eq!(st, 200, "{plan}");
    assert_eq!(plan["image"]["serial"], 2, "{plan}");
    assert_eq!(
        plan["image"]["sparse_files"],
        json!(["/var/log/lastlog"]),
        "{plan}"
    );
}

/// A fresh ed25519 public key line made by ssh-keygen, and its fingerprint as
/// `ssh-keygen -l` prints it.
fn new_host_key(dir: &std::path::Path, name: &str) -> (String, String) {
    let key = dir.join(name);
    let ok = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "root@node1", "-f"])
        .arg(&key)
        .status()
        .expect("ssh-keygen (apt-get install openssh-client)");
    assert!(ok.success());
    let line = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let fp = std::process::Command::new("ssh-keygen")
        .arg("-lf")
        .arg(key.with_extension("pub"))
        .output()
        .unwrap();
    let fp = String::from_utf8_lossy(&fp.stdout);
    (
        line.trim().to_string(),
        fp.split_whitespace().nth(1).unwrap().to_string(),
    )
}

#[test]
fn the_installed_report_sets_known_hosts_and_a_forged_one_cannot() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let known_hosts = dir.path().join("state/ssh/known_hosts");
    let install = |keys: &[&str]| {
        let (st, plan) = s.plan("52:54:00:00:00:01");
        assert_eq!(st, 200, "{plan}");
        let path = format!(
            "/api/v1/installs/{}/events",
            plan["install_id"].as_str().unwrap()
        );
        (
            path,
            plan["token"].as_str().unwrap().to_string(),
            json!(keys),
        )
    };
    // The status of an installed report with these keys.
    let post = |path: &str, token: &str, keys: &Value| -> u16 {
        let r = ureq::post(&s.url(path))
            .set("Authorization", &format!("Bearer {token}"))
            .send_json(event(
                "finish",
                json!({"kind": "installed", "serial": 1, "host_keys": keys}),
            ));
        match r {
            Ok(r) => r.status(),
            Err(ureq::Error::Status(code, _)) => code,
            Err(e) => panic!("{e}"),
        }
    };

    let (key1, fp1) = new_host_key(dir.path(), "k1");
    let (path, token, keys) = install(&[&key1, "@cert-authority * ssh-rsa AAAA"]);
    assert_eq!(post(&path, &token, &keys), 204);
    let (_, n) = s.req("GET", "/api/v1/nodes/node1", None, true);
    let bare = key1.rsplit_once(' ').unwrap().0;
    assert_eq!(n["host_keys"], json!([bare]), "{n}");
    assert_eq!(
        n["host_key_fingerprints"],
        json!([format!("ED25519 {fp1}")]),
        "{n}"
    );
    assert_eq!(
        std::fs::read_to_string(&known_hosts).unwrap(),
        format!("node1,127.0.0.11 {bare}\n"),
        "the smuggled marker line must not reach known_hosts"
    );
    let (ok, out, err) = s.cli(&["node", "show", "node1"]);
    assert!(ok, "{err}");
    assert!(out.contains(&format!("ED25519 {fp1}")), "{out}");

    // A stranger replays the report with its own key: the token is spent and
    // a guessed one is refused; known_hosts does not change.
    let (evil, _) = new_host_key(dir.path(), "evil");
    for t in [token.as_str(), "0123456789abcdef0123456789abcdef"] {
        let st = post(&path, t, &json!([evil]));
        assert!((400..500).contains(&st), "{st}");
    }
    assert_eq!(
        std::fs::read_to_string(&known_hosts).unwrap(),
        format!("node1,127.0.0.11 {bare}\n")
    );

    // A reinstall with new keys replaces the node's entry (one line, the new key).
    let (_, reinstall) = s.req("POST", "/api/v1/nodes/node1/reinstall", None, true);
    assert_eq!(reinstall["state"], "pending", "{reinstall}");
    let (key2, fp2) = new_host_key(dir.path(), "k2");
    let (path, token, keys) = install(&[&key2]);
    assert_eq!(post(&path, &token, &keys), 204);
    let bare2 = key2.rsplit_once(' ').unwrap().0;
    assert_eq!(
        std::fs::read_to_string(&known_hosts).unwrap(),
        format!("node1,127.0.0.11 {bare2}\n")
    );
    let (_, n) = s.req("GET", "/api/v1/nodes/node1", None, true);
    assert_eq!(
        n["host_key_fingerprints"],
        json!([format!("ED25519 {fp2}")])
    );

    // A node removed from the inventory takes its known_hosts entry with it.
    let add = json!({"mac": "52:54:00:00:00:02", "hostname": "node2", "ip": "127.0.0.12"});
    assert_eq!(s.req("POST", "/api/v1/nodes", Some(add), true).0, 200);
    let (st, plan) = s.plan("52:54:00:00:00:02");
    assert_eq!(st, 200, "{plan}");
    let path2 = format!(
        "/api/v1/installs/{}/events",
        plan["install_id"].as_str().unwrap()
    );
    assert_eq!(
        post(&path2, plan["token"].as_str().unwrap(), &json!([key1])),
        204
    );
    let both = std::fs::read_to_string(&known_hosts).unwrap();
    assert!(both.contains("node2,127.0.0.12 ssh-ed25519 "), "{both}");
    assert_eq!(s.req("DELETE", "/api/v1/nodes/node2", None, true).0, 204);
    assert_eq!(
        std::fs::read_to_string(&known_hosts).unwrap(),
        format!("node1,127.0.0.11 {bare2}\n")
    );
}

/// curl plays a node whose installer never reaches the server (no NIC driver,
/// say): it fetches its install script three times and never a plan. The node
/// turns "stuck before network" in the API, on the dashboard and in `rollout
/// watch`; its plan fetch clears it.
#[test]
fn installer_boots_without_a_plan_show_the_node_stuck_before_network() {
    if !testkit::prereq::require_tools(&[("curl", "curl")]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let mac = "52:54:00:00:00:01";
    let curl = |args: &[&str]| {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--fail", "--max-time", "10"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "curl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let stuck = || {
        let (st, node) = s.req("GET", "/api/v1/nodes/node1", None, true);
        assert_eq!(st, 200, "{node}");
        node["stuck_before_network"].as_str().map(String::from)
    };
    let mut secret = String::new();
    for boot in 1..=3 {
        let script = curl(&[&s.url(&format!("/boot.ipxe?mac={mac}"))]);
        secret = script
            .split_whitespace()
            .find_map(|w| w.strip_prefix("rollout.boot_secret="))
            .unwrap_or_else(|| panic!("boot {boot}: not an install script:\n{script}"))
            .to_string();
        if boot < 3 {
            assert_eq!(stuck(), None, "after boot {boot}");
        }
    }
    let msg = stuck().expect("stuck after three installer boots without a plan");
    assert!(msg.starts_with("installer booted 3× since "), "{msg}");
    assert!(
        msg.ends_with(" UTC, never reached the server: check its NIC driver"),
        "{msg}"
    );
    let list = s.admin_text("/");
    assert!(list.contains(&msg), "the dashboard's node list:\n{list}");
    let page = s.admin_text(&format!("/nodes/{mac}"));
    assert!(page.contains(&msg), "the node's page:\n{page}");
    let (ok, out, err) = s.cli(&["watch", "--once"]);
    assert!(ok, "{err}");
    assert!(
        out.lines()
            .any(|l| l.contains("node1") && l.ends_with(&msg)),
        "{out}"
    );

    // The installer finally gets through: its plan request clears the state.
    let plan = curl(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "-d",
        &format!(r#"{{"boot_secret":"{secret}"}}"#),
        &s.url(&format!("/api/v1/plan/{mac}")),
    ]);
    assert!(plan.contains("\"install_id\""), "{plan}");
    assert_eq!(stuck(), None);
    assert!(!s.admin_text("/").contains("never reached the server"));
    assert!(s
        .history_kinds("node1")
        .contains(&"stuck_before_network".to_string()));
}
