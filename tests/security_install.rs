//! A stranger on the provisioning network against a real `rollout serve` on
//! loopback (DHCP off, so rollout leases nothing here and the boot secret is
//! the node's proof): with curl and rsync it tries to take a node's plan, to
//! hijack an install in progress, to forge a phone-home and to read images.
//! Each attempt is refused and changes nothing; the node's own path works.
//! The last test runs rollout's DHCP in full mode in network namespaces: there
//! the lease holder (or the reserved address) is the node's proof.

mod common;
use common::loopback::{event, Server};
use serde_json::{json, Value};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const MAC: &str = "52:54:00:00:00:01";

fn tools() -> bool {
    testkit::prereq::require_known_tools(&["curl", "rsync"])
}

/// `curl` from `source` (a loopback address) with an optional JSON body:
/// (HTTP status, body).
fn curl(
    s: &Server,
    method: &str,
    path: &str,
    source: &str,
    body: Option<&str>,
    bearer: Option<&str>,
) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-o", "-", "-w", "\n%{http_code}", "--max-time", "10"])
        .args(["--interface", source, "-X", method]);
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data", b]);
    }
    if let Some(t) = bearer {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = cmd.arg(s.url(path)).output().expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn node(s: &Server) -> Value {
    let (st, n) = s.req("GET", "/api/v1/nodes/node1", None, true);
    assert_eq!(st, 200);
    n
}

fn post_event(s: &Server, install_id: &str, token: &str, ev: Value) -> u16 {
    let path = format!("/api/v1/installs/{install_id}/events");
    match ureq::post(&s.url(&path))
        .set("Authorization", &format!("Bearer {token}"))
        .send_json(ev)
    {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(c, _)) => c,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn only_the_node_gets_its_plan_and_an_install_keeps_its_token() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let plan_path = format!("/api/v1/plan/{MAC}");
    // An entry the old handler's `ssh-keygen -R <caller>` would have removed.
    let known_hosts = dir.path().join("state/ssh/known_hosts");
    let entry = "127.0.0.5 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOtVcmCVcPDxbwjbZDKk9AQ2OIdgDC9F4yAVrNY5pcCe\n";
    std::fs::create_dir_all(known_hosts.parent().unwrap()).unwrap();
    std::fs::write(&known_hosts, entry).unwrap();

    // A GET has no side effects any more: it is not even routed.
    let (st, _) = curl(&s, "GET", &plan_path, "127.0.0.1", None, None);
    assert_eq!(st, 405);
    // A stranger, without a secret, from its own address, or from the node's
    // reserved one (rollout leases nothing here, so the reservation proves nothing).
    for source in ["127.0.0.1", "127.0.0.11"] {
        let (st, body) = curl(&s, "POST", &plan_path, source, None, None);
        assert_eq!(st, 403, "{source}: {body}");
        assert!(body.contains("rollout.boot_secret"), "{body}");
    }
    let (st, body) = curl(
        &s,
        "POST",
        &plan_path,
        "127.0.0.1",
        Some(r#"{"boot_secret":"0000"}"#),
        None,
    );
    assert_eq!(st, 403, "{body}");
    let n = node(&s);
    assert_eq!(
        (n["state"].as_str(), n["install_id"].as_str()),
        (Some("pending"), None),
        "a refusal started an install: {n}"
    );
    assert!(!s
        .history_kinds("node1")
        .contains(&"install_started".to_string()));

    // The node: its iPXE script's secret gets the plan, once.
    let secret = s.boot_secret(MAC);
    let body = json!({ "boot_secret": secret }).to_string();
    let (st, text) = curl(&s, "POST", &plan_path, "127.0.0.5", Some(&body), None);
    assert_eq!(st, 200, "{text}");
    let plan: Value = serde_json::from_str(&text).unwrap();
    let (id, token) = (
        plan["install_id"].as_str().unwrap().to_string(),
        plan["token"].as_str().unwrap().to_string(),
    );
    assert_eq!(plan["rsync"]["user"], "install-525400000001");
    assert_eq!(plan["node"]["rsync"]["user"], "node-525400000001");
    assert_eq!(plan["node"]["secret"].as_str().map(str::len), Some(64));

    // The install in progress keeps its id and token against everyone else,
    // and against a replay of the spent secret.
    for (source, body) in [
        ("127.0.0.1", None),
        ("127.0.0.1", Some(body.as_str())),
        ("127.0.0.5", Some(body.as_str())),
    ] {
        let (st, text) = curl(&s, "POST", &plan_path, source, body, None);
        assert_eq!(st, 403, "{source} {body:?}: {text}");
    }
    let (st, text) = curl(&s, "POST", &plan_path, "127.0.0.1", Some(&body), None);
    assert!(st == 403 && text.contains("already used"), "{text}");
    assert_eq!(node(&s)["install_id"].as_str(), Some(id.as_str()));
    let progress = event(
        "copy",
        json!({"kind": "progress", "done_bytes": 1, "total_bytes": 2}),
    );
    assert_eq!(
        post_event(&s, &id, &token, progress.clone()),
        204,
        "the node's token still works"
    );
    // A stranger's "installed" with a guessed token changes nothing either.
    assert_eq!(
        post_event(
            &s,
            &id,
            "guessed",
            event("finish", json!({"kind": "installed", "serial": 1}))
        ),
        403
    );
    assert_eq!(node(&s)["state"], "installing");

    // A stranger that fakes the node's PXE boot gets a script and its secret
    // (`/boot.ipxe` answers anyone), but not the install that is still reporting.
    let (st, text) = s.plan(MAC);
    assert_eq!(st, 409, "{text}");
    assert!(
        text["error"]
            .as_str()
            .unwrap()
            .contains("s ago; a new one may start over it"),
        "{text}"
    );
    assert_eq!(node(&s)["install_id"].as_str(), Some(id.as_str()));
    assert_eq!(post_event(&s, &id, &token, progress.clone()), 204);

    // The node rebooted mid-install: once its old install is quiet (the
    // installer retries a 409; here `install_timeout = 5` makes the wait 5 s),
    // its new script's secret starts a new install, and the old token stops working.
    std::thread::sleep(Duration::from_secs(6));
    let (st, again) = s.plan(MAC);
    assert_eq!(st, 200, "{again}");
    assert_ne!(again["install_id"].as_str(), Some(id.as_str()));
    assert_eq!(
        post_event(&s, &id, &token, progress),
        404,
        "the old install is gone"
    );
    assert_eq!(
        std::fs::read_to_string(&known_hosts).unwrap(),
        entry,
        "a plan request touched known_hosts"
    );
}

#[test]
fn a_forged_phone_home_or_sync_request_changes_nothing() {
    if !tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let plan = s.install(MAC);
    let secret = plan["node"]["secret"].as_str().unwrap().to_string();
    let before = node(&s);
    assert_eq!(
        (
            before["state"].as_str(),
            before["serial"].as_u64(),
            before["booted_at"].as_u64()
        ),
        (Some("installed"), Some(1), None)
    );

    let report =
        r#"{"mac":"52:54:00:00:00:01","hostname":"node1","serial":666,"boot_id":"forged"}"#;
    let (st, body) = curl(
        &s,
        "POST",
        "/api/v1/phone-home",
        "127.0.0.1",
        Some(report),
        None,
    );
    assert_eq!(st, 401, "{body}");
    assert!(body.contains("node.secret"), "{body}");
    for forged in ["guessed", &s.token, plan["token"].as_str().unwrap()] {
        let (st, body) = curl(
            &s,
            "POST",
            "/api/v1/phone-home",
            "127.0.0.1",
            Some(report),
            Some(forged),
        );
        assert_eq!(st, 403, "{forged}: {body}");
    }
    let after = node(&s);
    assert_eq!(
        (
            after["serial"].as_u64(),
            after["booted_at"].as_u64(),
            after["boot_id"].as_str()
        ),
        (Some(1), None, None),
        "{after}"
    );
    assert!(!s.history_kinds("node1").contains(&"booted".to_string()));

    // rollout-sync's questions: the node's secret or the admin token only.
    for path in [
        "/api/v1/images/default/serial",
        "/api/v1/images/default/excludes",
    ] {
        assert_eq!(
            curl(&s, "GET", path, "127.0.0.1", None, None).0,
            401,
            "{path}"
        );
        assert_eq!(
            curl(&s, "GET", path, "127.0.0.1", None, Some("guessed")).0,
            403,
            "{path}"
        );
        assert_eq!(
            curl(&s, "GET", path, "127.0.0.1", None, Some(&secret)).0,
            200,
            "{path}"
        );
        assert_eq!(
            curl(&s, "GET", path, "127.0.0.1", None, Some(&s.token)).0,
            200,
            "{path}"
        );
    }

    // The node itself.
    let real = r#"{"mac":"52:54:00:00:00:01","hostname":"node1","serial":1,"boot_id":"b-1"}"#;
    let (st, body) = curl(
        &s,
        "POST",
        "/api/v1/phone-home",
        "127.0.0.11",
        Some(real),
        Some(&secret),
    );
    assert_eq!(st, 204, "{body}");
    let n = node(&s);
    assert_eq!(n["boot_id"], "b-1");
    assert!(n["booted_at"].as_u64().is_some());
    // A reinstall issues a new credential: the old one stops working.
    assert_eq!(
        s.req("POST", "/api/v1/nodes/node1/reinstall", None, true).0,
        200
    );
    s.install(MAC);
    let (st, _) = curl(
        &s,
        "POST",
        "/api/v1/phone-home",
        "127.0.0.11",
        Some(real),
        Some(&secret),
    );
    assert_eq!(st, 403);
    assert!(
        n.get("node_key").is_none() && n.get("node_rsync").is_none(),
        "credentials leak: {n}"
    );
}

/// rsync as `user` (password in RSYNC_PASSWORD, as the installer passes it).
fn rsync(user: Option<(&str, &str)>, port: u16, src: &str, dest: &std::path::Path) -> Output {
    let mut cmd = Command::new("rsync");
    cmd.env_remove("RSYNC_PASSWORD").arg("-a");
    let url = match user {
        Some((u, p)) => {
            cmd.env("RSYNC_PASSWORD", p);
            format!("rsync://{u}@127.0.0.1:{port}/{src}")
        }
        None => format!("rsync://127.0.0.1:{port}/{src}"),
    };
    cmd.arg(url).arg(dest).output().expect("rsync runs")
}

#[test]
fn images_are_read_with_credentials_only() {
    if !tools() || !testkit::prereq::require_root("rsyncd reads the image as uid 0") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    // Serial 2, published as `rollout image import` does, with a file worth stealing.
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("etc/shadow"), "root:$y$secret:\n").unwrap();
    let published = rollout::images::Images::new(&dir.path().join("state"))
        .import("default", &tree, "", &[])
        .unwrap()
        .unwrap();
    assert_eq!(published.serial, 2);
    let text = std::fs::read_to_string(dir.path().join("rollout.toml")).unwrap();
    let port: u16 = text
        .lines()
        .find_map(|l| l.strip_prefix("rsync_port = "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let out_dir = dir.path().join("got");

    // Anonymous: the listing names nothing, every module refuses.
    let deadline = Instant::now() + Duration::from_secs(15);
    let listing = loop {
        let o = Command::new("rsync")
            .env_remove("RSYNC_PASSWORD")
            .arg(format!("rsync://127.0.0.1:{port}/"))
            .output()
            .unwrap();
        if o.status.success() {
            break String::from_utf8_lossy(&o.stdout).to_string();
        }
        assert!(
            Instant::now() < deadline,
            "rsyncd never answered: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(listing.trim(), "", "modules are listed");
    // Served once asked for, as a node's question makes it.
    assert_eq!(s.admin_text("/api/v1/images/default/serial").trim(), "2");
    for module in ["default-2/etc/shadow", "default/etc/shadow", "default-2/"] {
        let o = rsync(None, port, module, &out_dir);
        assert!(!o.status.success(), "anonymous read of {module}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("auth failed"),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let conf = std::fs::read_to_string(dir.path().join("state/rsyncd.conf")).unwrap();
    assert!(
        conf.contains("list = no") && !conf.contains("list = yes"),
        "{conf}"
    );

    // The install's credential reads its serial while the install runs.
    let (st, plan) = s.plan(MAC);
    assert_eq!(st, 200, "{plan}");
    let install = (
        plan["rsync"]["user"].as_str().unwrap(),
        plan["rsync"]["password"].as_str().unwrap(),
    );
    let o = rsync(
        Some((install.0, "wrong")),
        port,
        "default-2/etc/shadow",
        &out_dir,
    );
    assert!(!o.status.success(), "a wrong password reads");
    let o = rsync(Some(install), port, "default-2/etc/shadow", &out_dir);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        std::fs::read_to_string(&out_dir).unwrap(),
        "root:$y$secret:\n"
    );
    std::fs::remove_file(&out_dir).unwrap();

    // Installed: the install's credential ends, the node's own one reads.
    let id = plan["install_id"].as_str().unwrap();
    let token = plan["token"].as_str().unwrap();
    assert_eq!(
        post_event(
            &s,
            id,
            token,
            event("finish", json!({"kind": "installed", "serial": 1}))
        ),
        204
    );
    let o = rsync(Some(install), port, "default-2/etc/shadow", &out_dir);
    assert!(
        !o.status.success(),
        "the install credential outlived the install"
    );
    let node_cred = (
        plan["node"]["rsync"]["user"].as_str().unwrap(),
        plan["node"]["rsync"]["password"].as_str().unwrap(),
    );
    let o = rsync(Some(node_cred), port, "default/etc/shadow", &out_dir);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let secrets = dir.path().join("state/rsyncd.secrets");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&secrets).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        !std::fs::read_to_string(&secrets)
            .unwrap()
            .contains(plan["node"]["secret"].as_str().unwrap()),
        "the node's HTTP secret is not in the rsync file"
    );
}

/// Full DHCP mode, in namespaces: the machine that holds a node's lease (or its
/// reservation) gets its plan, with nothing on its command line; another
/// machine with a lease of its own, or an address rollout never leased, is
/// refused and the node's install keeps its id.
#[test]
fn in_full_mode_the_lease_holder_gets_the_plan() {
    if !common::can_run(&["busybox", "curl"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("etc/motd"), "hi\n").unwrap();
    rollout::images::Images::new(&dir.path().join("state"))
        .import("default", &tree, "", &[])
        .unwrap();
    let config = common::write_config(
        dir.path(),
        r#"
[server]
interface = "rbr0"
address = "10.44.0.1"
[dhcp]
mode = "full"
range = ["10.44.0.100", "10.44.0.199"]
router = "10.44.0.1"
lease_time = 600
[[node]]
mac = "52:54:00:aa:00:01"
hostname = "reserved1"
ip = "10.44.0.11"
[[node]]
mac = "52:54:00:aa:00:02"
hostname = "dynamic2"
"#,
    );
    let mut net = common::Net::new("sec");
    let _srv = common::Server::start(&net, &config);
    // Each machine takes its lease and puts the address on its interface.
    let mut machine = |mac: &str| -> String {
        let iface = net.add_client(mac);
        let got = common::udhcpc(&net, &iface, &[]);
        let ip = got["ip"].clone();
        net.cli
            .ip(&["addr", "add", &format!("{ip}/24"), "dev", &iface])
            .unwrap_or_else(|e| panic!("{e}"));
        ip
    };
    let node2 = machine("52:54:00:aa:00:02");
    let node1 = machine("52:54:00:aa:00:01");
    let stranger = machine("52:54:00:00:66:66");
    assert_eq!(node1, "10.44.0.11");
    let unleased = net.add_client("52:54:00:00:66:67");
    net.cli
        .ip(&["addr", "add", "10.44.0.50/24", "dev", &unleased])
        .unwrap_or_else(|e| panic!("{e}"));
    let plan = |from: &str, mac: &str| -> (u16, String) {
        let out = net
            .in_cli(&[
                "curl",
                "-s",
                "-o",
                "-",
                "-w",
                "\n%{http_code}",
                "--max-time",
                "10",
                "-X",
                "POST",
                "--interface",
                from,
            ])
            .arg(format!("http://{}/api/v1/plan/{mac}", common::SERVER_IP))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.trim().parse().unwrap_or(0), body.to_string())
    };
    let install_id = |host: &str| -> Option<String> {
        let out = srv_curl(&net, &dir, &format!("/api/v1/nodes/{host}"));
        let v: Value = serde_json::from_str(&out).unwrap();
        v["install_id"].as_str().map(String::from)
    };

    let (st, body) = plan(&node2, "52:54:00:aa:00:02");
    assert_eq!(st, 200, "the lease holder: {body}");
    let id = install_id("dynamic2").expect("an install started");
    let (st, body) = plan(&stranger, "52:54:00:aa:00:02");
    assert_eq!(st, 403, "{body}");
    assert!(body.contains("leased to 52:54:00:00:66:66"), "{body}");
    let (st, body) = plan(&stranger, "52:54:00:aa:00:01");
    assert_eq!(st, 403, "{body}");
    // An address rollout never leased (set by hand) proves nothing either.
    let (st, body) = plan("10.44.0.50", "52:54:00:aa:00:02");
    assert_eq!(st, 403, "{body}");
    assert_eq!(
        install_id("dynamic2"),
        Some(id),
        "a refused request replaced the install"
    );
    // The reserved node from its reserved address.
    let (st, body) = plan(&node1, "52:54:00:aa:00:01");
    assert_eq!(st, 200, "the reservation: {body}");
}

/// GET `path` on the server from inside its namespace, as the admin (reads
/// need a credential).
fn srv_curl(net: &common::Net, dir: &tempfile::TempDir, path: &str) -> String {
    let token = std::fs::read_to_string(dir.path().join("state/admin.token")).unwrap();
    let out = net
        .srv
        .command("curl")
        .args(["-sf", "--max-time", "10", "-H"])
        .arg(format!("Authorization: Bearer {}", token.trim()))
        .arg(format!("http://{}{path}", common::SERVER_IP))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "GET {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}
