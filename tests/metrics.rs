//! `GET /metrics` scraped by a real Prometheus (Debian's `prometheus`) while a
//! node takes a real DHCP lease (busybox udhcpc) and goes through an install
//! (its plan and reports, as the installer sends them), all inside network
//! namespaces the test makes; then the JSON log format with the DHCP spans.

mod common;
use common::*;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

const NODE_MAC: &str = "52:54:00:aa:00:02";
const PROM_PORT: u16 = 9090;

fn config(dir: &Path) -> std::path::PathBuf {
    // A published image: the plan needs one.
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    rollout::images::Images::new(&dir.join("state"))
        .import("default", &tree, "", &[])
        .unwrap();
    write_config(
        dir,
        &format!(
            r#"
[server]
interface = "rbr0"
address = "10.44.0.1"
[dhcp]
mode = "full"
range = ["10.44.0.100", "10.44.0.109"]
router = "10.44.0.1"
lease_time = 600
[[node]]
mac = "{NODE_MAC}"
hostname = "rack1-node2"
"#
        ),
    )
}

/// `curl` in the server's namespace: (HTTP status, body).
fn curl(net: &Net, args: &[&str]) -> (u16, String) {
    let out = net
        .srv
        .command("curl")
        .args(["-s", "--max-time", "5", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (status.trim().parse().unwrap_or(0), body.to_string())
}

fn api(net: &Net, method: &str, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    let url = format!("http://{SERVER_IP}{path}");
    let auth = format!("Authorization: Bearer {token}");
    let mut args = vec!["-X", method, "-H", &auth, &url];
    let body = body.map(|b| b.to_string());
    if let Some(b) = &body {
        args.extend(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    let (status, text) = curl(net, &args);
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Prometheus, killed on drop.
struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_prometheus(net: &Net, dir: &Path, token: &str) -> Prometheus {
    let credentials = dir.join("prometheus.token");
    std::fs::write(&credentials, token).unwrap();
    let cfg = dir.join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            r#"global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: rollout
    metrics_path: /metrics
    authorization:
      type: Bearer
      credentials_file: {}
    static_configs:
      - targets: ["{SERVER_IP}:80"]
"#,
            credentials.display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let child = net
        .srv
        .command("prometheus")
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{PROM_PORT}"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let p = Prometheus(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while curl(net, &[&format!("http://127.0.0.1:{PROM_PORT}/-/ready")]).0 != 200 {
        assert!(
            Instant::now() < deadline,
            "prometheus did not become ready: {}",
            std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    p
}

/// Prometheus' answer to an instant query: each series' labels and value.
fn query(net: &Net, promql: &str) -> Vec<(Value, f64)> {
    let url = format!("http://127.0.0.1:{PROM_PORT}/api/v1/query");
    let q = format!("query={promql}");
    let (status, body) = curl(net, &["-G", &url, "--data-urlencode", &q]);
    assert_eq!(status, 200, "query {promql}: {body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "success", "{body}");
    v["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let value = r["value"][1].as_str().unwrap().parse().unwrap();
            (r["metric"].clone(), value)
        })
        .collect()
}

/// Waits (Prometheus scrapes every second) until `promql` has one series
/// whose value satisfies `ok`; returns that value.
fn wait_for(net: &Net, promql: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = query(net, promql);
        if let Some((_, v)) = got.iter().find(|(_, v)| ok(*v)) {
            return *v;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never saw the expected value of {promql}; last answer {got:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn event(step: &str, kind: Value, elapsed_ms: u64) -> Value {
    let mut e = json!({"step": step, "message": step, "elapsed_ms": elapsed_ms});
    for (k, v) in kind.as_object().unwrap() {
        e[k] = v.clone();
    }
    e
}

#[test]
fn prometheus_scrapes_an_install_the_leases_and_the_http_routes() {
    if !can_run(&["busybox", "curl", "prometheus", "rsync"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut net = Net::new("m");
    let srv = Server::start(&net, &config(dir.path()));
    let admin = std::fs::read_to_string(dir.path().join("state/admin.token"))
        .unwrap()
        .trim()
        .to_string();

    // Metrics are a read: no credential, no metrics; a `read` operator may.
    let (status, _) = curl(&net, &[&format!("http://{SERVER_IP}/metrics")]);
    assert_eq!(status, 401, "/metrics without a credential");
    let (status, op) = api(
        &net,
        "POST",
        "/api/v1/operators",
        &admin,
        Some(json!({"name": "prometheus", "role": "read"})),
    );
    assert_eq!(status, 200, "{op}");
    let read_token = op["token"].as_str().unwrap().to_string();
    let _prom = start_prometheus(&net, dir.path(), &read_token);

    wait_for(&net, r#"up{job="rollout"}"#, |v| v == 1.0);
    let range = r#"range="10.44.0.100-10.44.0.109""#;
    let active = format!(r#"rollout_dhcp_leases{{{range},state="active"}}"#);
    let free = format!(r#"rollout_dhcp_leases{{{range},state="free"}}"#);
    assert_eq!(wait_for(&net, &active, |_| true), 0.0);
    assert_eq!(wait_for(&net, &free, |_| true), 10.0);

    // The node PXE-boots: a real DHCP exchange for its MAC.
    let iface = net.add_client(NODE_MAC);
    let got = udhcpc(&net, &iface, &["-V", "PXEClient:Arch:00000:UNDI:002001"]);
    assert!(got["ip"].starts_with("10.44.0.10"), "{got:?}");
    wait_for(&net, &active, |v| v == 1.0);
    wait_for(&net, &free, |v| v == 9.0);
    wait_for(
        &net,
        r#"rollout_dhcp_packets_total{type="discover",outcome="offer"}"#,
        |v| v >= 1.0,
    );
    wait_for(
        &net,
        r#"rollout_dhcp_packets_total{type="request",outcome="ack"}"#,
        |v| v >= 1.0,
    );

    // Its installer: the script's boot secret buys the plan, then reports.
    let (_, script) = curl(
        &net,
        &[&format!("http://{SERVER_IP}/boot.ipxe?mac={NODE_MAC}")],
    );
    let secret = script
        .split_whitespace()
        .find_map(|w| w.strip_prefix("rollout.boot_secret="))
        .unwrap_or_else(|| panic!("no boot secret in {script}"))
        .to_string();
    let (status, plan) = api(
        &net,
        "POST",
        &format!("/api/v1/plan/{NODE_MAC}"),
        "-",
        Some(json!({ "boot_secret": secret })),
    );
    assert_eq!(status, 200, "plan: {plan}");
    let token = plan["token"].as_str().unwrap();
    let events = format!(
        "/api/v1/installs/{}/events",
        plan["install_id"].as_str().unwrap()
    );
    let send = |ev: Value| {
        let (status, body) = api(&net, "POST", &events, token, Some(ev));
        assert_eq!(status, 204, "{body}");
    };
    send(event("copy", json!({"kind": "started"}), 5_000));
    // 10 MB/s by the installer's clock, 100 MB to copy.
    const MB: u64 = 1_000_000;
    for i in 0..=4u64 {
        send(event(
            "copy",
            json!({"kind": "progress", "done_bytes": 10 * MB * i, "total_bytes": 100 * MB}),
            5_000 + 1000 * i,
        ));
    }
    let (_, node) = api(&net, "GET", "/api/v1/nodes/rack1-node2", &admin, None);
    assert_eq!(node["state"], "installing", "{node}");
    assert_eq!(node["eta_secs"], 6, "60 MB left at 10 MB/s: {node}");
    assert_eq!(node["copy_rate"], 10 * MB, "{node}");
    send(event(
        "copy",
        json!({"kind": "progress", "done_bytes": 100 * MB, "total_bytes": 100 * MB}),
        15_000,
    ));
    send(event("copy", json!({"kind": "done"}), 15_000));
    send(event(
        "finish",
        json!({"kind": "installed", "serial": 1}),
        20_000,
    ));

    wait_for(
        &net,
        r#"rollout_installs_finished_total{outcome="installed"}"#,
        |v| v == 1.0,
    );
    wait_for(&net, "rollout_installs_started_total", |v| v == 1.0);
    wait_for(&net, r#"rollout_nodes{state="installed"}"#, |v| v == 1.0);
    wait_for(&net, r#"rollout_nodes{state="installing"}"#, |v| v == 0.0);
    wait_for(&net, "rollout_install_duration_seconds_count", |v| v == 1.0);
    // The copy's average rate: 100 MB over the 10 s between its first and last report.
    let sum = wait_for(&net, "rollout_copy_throughput_bytes_per_second_sum", |v| {
        v > 0.0
    });
    assert_eq!(sum, (10 * MB) as f64);

    // A client connected to the rsync daemon (as an installer copying) is
    // counted while it stays connected.
    let mut rsync_client = net
        .srv
        .command("curl")
        .args(["-s", &format!("telnet://{SERVER_IP}:873")])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&net, "rollout_rsync_connections", |v| v == 1.0);
    let _ = rsync_client.kill();
    let _ = rsync_client.wait();
    wait_for(&net, "rollout_rsync_connections", |v| v == 0.0);

    // HTTP requests are labelled by route template, not by raw path.
    let reports = r#"rollout_http_requests_total{method="POST",route="/api/v1/installs/{id}/events",status="204"}"#;
    wait_for(&net, reports, |v| v == 9.0);
    wait_for(
        &net,
        r#"rollout_http_requests_total{route="/api/v1/nodes/{id}",status="200"}"#,
        |v| v >= 1.0,
    );
    wait_for(
        &net,
        r#"rollout_http_requests_total{route="/metrics",status="401"}"#,
        |v| v == 1.0,
    );
    let raw = query(
        &net,
        r#"rollout_http_requests_total{route=~".*(rack1|52:54).*"}"#,
    );
    assert!(raw.is_empty(), "a raw path became a label: {raw:?}");
    // The default log format is text, with the DHCP span in front.
    let log = srv.log_text();
    assert!(
        log.contains("dhcp{xid=0x") && !log.starts_with('{'),
        "{log}"
    );
}

#[test]
fn json_logs_have_level_target_fields_and_the_dhcp_span() {
    if !can_run(&["busybox", "curl"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut net = Net::new("j");
    let srv = Server::start_with(&net, &config(dir.path()), &["--log-format", "json"]);
    let iface = net.add_client(NODE_MAC);
    let got = udhcpc(&net, &iface, &["-V", "PXEClient:Arch:00000:UNDI:002001"]);
    assert!(got.contains_key("ip"), "{got:?}");
    let text = srv.log_text();
    let mut lines = 0;
    let mut dhcp_lines = vec![];
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        for key in ["timestamp", "level", "target", "fields"] {
            assert!(v.get(key).is_some(), "no {key} in {line}");
        }
        lines += 1;
        if v["span"]["name"] == "dhcp" {
            dhcp_lines.push(v);
        }
    }
    assert!(lines >= 5, "{text}");
    let offer = dhcp_lines
        .iter()
        .find(|v| {
            v["fields"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("OFFER")
        })
        .unwrap_or_else(|| panic!("no OFFER line inside a dhcp span:\n{text}"));
    assert_eq!(offer["span"]["mac"], NODE_MAC, "{offer}");
    let xid = offer["span"]["xid"].as_str().unwrap();
    assert!(xid.starts_with("0x") && xid.len() == 10, "{offer}");
    assert_eq!(offer["level"], "INFO");
    assert!(
        offer["target"]
            .as_str()
            .unwrap()
            .starts_with("rollout::dhcp"),
        "{offer}"
    );
}
