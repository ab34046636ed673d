//! `rollout serve` on loopback with DHCP off: for API, CLI and browser tests.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};
pub use testkit::ports::free_port;

pub struct Server {
    pub child: Child,
    pub base: String,
    pub dir: PathBuf,
    log: PathBuf,
    pub token: String,
}

/// [`write_config`] with one more `[install]` setting (`tar_prefill = true`).
pub fn write_config_with_install(dir: &Path, setting: &str) -> PathBuf {
    let cfg = write_config(dir, 0);
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("[install]\n", &format!("[install]\n{setting}\n"));
    std::fs::write(&cfg, text).unwrap();
    cfg
}

/// Serial 1 of the default image with what an image stream must carry or
/// leave out: a 3 MB file `/usr/lib/big.so` (returned), a symlink `/usr/big`
/// to it, and `/var/lib/site/secret` under the test config's exclude.
pub fn stream_test_serial(dir: &Path) -> Vec<u8> {
    let root = dir.join("state/images/default/serials/1/root");
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::create_dir_all(root.join("usr/lib")).unwrap();
    std::fs::write(root.join("usr/lib/big.so"), &big).unwrap();
    std::os::unix::fs::symlink("lib/big.so", root.join("usr/big")).unwrap();
    std::fs::create_dir_all(root.join("var/lib/site")).unwrap();
    std::fs::write(root.join("var/lib/site/secret"), "site-local").unwrap();
    big
}

pub fn write_config(dir: &Path, port: u16) -> PathBuf {
    let cfg = dir.join("rollout.toml");
    let body = format!(
        r#"state_dir = "{state}"
[server]
address = "127.0.0.1"
http_port = {port}
tftp_port = {tftp}
rsync_port = {rsync}
[install]
unknown = "approve"
install_timeout = 5
sync_interval = 900
[[node]]
mac = "52:54:00:00:00:01"
hostname = "node1"
ip = "127.0.0.11"
[[image]]
name = "default"
excludes = ["/var/lib/site/"]
"#,
        state = dir.join("state").display(),
        tftp = free_port(),
        rsync = free_port(),
    );
    std::fs::write(&cfg, body).unwrap();
    // A published image, laid out as `rollout image` lays it out.
    let img = dir.join("state/images/default");
    std::fs::create_dir_all(img.join("serials/1/root/etc")).unwrap();
    std::fs::write(
        img.join("serials/1/meta.json"),
        r#"{"serial":1,"created":"2026-01-01T00:00:00Z","size_bytes":0,"file_count":1,"note":"test fixture","parent":null,"changes":null}"#,
    )
    .unwrap();
    std::os::unix::fs::symlink("serials/1", img.join("published")).ok();
    cfg
}

impl Server {
    pub fn start(dir: &Path) -> Server {
        let port = free_port();
        let cfg = if dir.join("rollout.toml").exists() {
            let text = std::fs::read_to_string(dir.join("rollout.toml")).unwrap();
            let re = text
                .lines()
                .map(|l| {
                    if l.starts_with("http_port") {
                        format!("http_port = {port}")
                    } else {
                        l.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n");
            std::fs::write(dir.join("rollout.toml"), re).unwrap();
            dir.join("rollout.toml")
        } else {
            write_config(dir, port)
        };
        let log = dir.join(format!("server-{port}.log"));
        let log_file = std::fs::File::create(&log).unwrap();
        // tracing writes to stdout: the log holds it, for tests that read the log.
        let child = Command::new(env!("CARGO_BIN_EXE_rollout"))
            .args(["serve", "--config"])
            .arg(&cfg)
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while ureq::get(&format!("{base}/healthz")).call().is_err() {
            assert!(
                Instant::now() < deadline,
                "server did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let token = std::fs::read_to_string(dir.join("state/admin.token"))
            .unwrap()
            .trim()
            .to_string();
        Server {
            child,
            base,
            dir: dir.to_owned(),
            log,
            token,
        }
    }

    /// What the server has logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn url(&self, p: &str) -> String {
        format!("{}{p}", self.base)
    }

    /// A GET with an optional `Authorization` header: the status and the
    /// body as bytes, whatever the status.
    pub fn get_bytes(&self, path: &str, auth: Option<&str>) -> (u16, Vec<u8>) {
        let mut r = ureq::get(&self.url(path));
        if let Some(a) = auth {
            r = r.set("Authorization", a);
        }
        let resp = match r.call() {
            Ok(resp) => resp,
            Err(ureq::Error::Status(_, resp)) => resp,
            Err(e) => panic!("GET {path}: {e}"),
        };
        let st = resp.status();
        let mut body = Vec::new();
        std::io::Read::read_to_end(&mut resp.into_reader(), &mut body).unwrap();
        (st, body)
    }

    /// With `[install] {option}` off, the plan does not offer it and the
    /// install's own `route` (after `/api/v1/installs/{id}/`) answers 404
    /// naming the option.
    pub fn assert_install_route_off(&self, option: &str, route: &str) {
        let (st, plan) = self.plan("52:54:00:00:00:01");
        assert_eq!(st, 200, "{plan}");
        assert_eq!(plan[option], Value::Bool(false), "{plan}");
        let (st, body) = self.get_bytes(
            &format!(
                "/api/v1/installs/{}/{route}",
                plan["install_id"].as_str().unwrap()
            ),
            Some(&format!("Bearer {}", plan["token"].as_str().unwrap())),
        );
        let text = String::from_utf8_lossy(&body);
        assert_eq!(st, 404, "{text}");
        assert!(text.contains(option), "{text}");
    }

    /// The body of a successful GET, as text.
    pub fn text(&self, p: &str) -> String {
        ureq::get(&self.url(p))
            .call()
            .unwrap_or_else(|e| panic!("GET {p}: {e}"))
            .into_string()
            .unwrap()
    }

    /// The body of a successful GET with the admin token (dashboard pages, operator reads).
    pub fn admin_text(&self, p: &str) -> String {
        ureq::get(&self.url(p))
            .set("Authorization", &format!("Bearer {}", self.token))
            .call()
            .unwrap_or_else(|e| panic!("GET {p}: {e}"))
            .into_string()
            .unwrap()
    }

    /// (status, JSON body or Null)
    pub fn req(&self, method: &str, path: &str, body: Option<Value>, admin: bool) -> (u16, Value) {
        let mut r = ureq::request(method, &self.url(path));
        if admin {
            r = r.set("Authorization", &format!("Bearer {}", self.token));
        }
        let res = match body {
            Some(b) => r.send_json(b),
            None => r.call(),
        };
        let (status, resp) = match res {
            Ok(resp) => (resp.status(), resp),
            Err(ureq::Error::Status(s, resp)) => (s, resp),
            Err(e) => panic!("{method} {path}: {e}"),
        };
        let text = resp.into_string().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// The one-time boot secret in the install script the server serves `mac` now.
    pub fn boot_secret(&self, mac: &str) -> String {
        let script = self.text(&format!("/boot.ipxe?mac={mac}"));
        script
            .split_whitespace()
            .find_map(|w| w.strip_prefix("rollout.boot_secret="))
            .unwrap_or_else(|| panic!("no boot secret in the script for {mac}:\n{script}"))
            .to_string()
    }

    /// The plan request the installer makes after booting the script: a POST
    /// with the script's boot secret. (status, plan or error)
    pub fn plan(&self, mac: &str) -> (u16, Value) {
        let secret = self.boot_secret(mac);
        self.req(
            "POST",
            &format!("/api/v1/plan/{mac}"),
            Some(json!({ "boot_secret": secret })),
            false,
        )
    }

    /// Takes the node with `mac` through a whole install as its installer would:
    /// the plan, then the final report with the plan's per-install token.
    /// Returns the plan (with the node's credential).
    pub fn install(&self, mac: &str) -> Value {
        let (st, plan) = self.plan(mac);
        assert_eq!(st, 200, "plan for {mac}: {plan}");
        let path = format!(
            "/api/v1/installs/{}/events",
            plan["install_id"].as_str().unwrap()
        );
        let serial = plan["image"]["serial"].as_u64().unwrap();
        ureq::post(&self.url(&path))
            .set(
                "Authorization",
                &format!("Bearer {}", plan["token"].as_str().unwrap()),
            )
            .send_json(event(
                "finish",
                json!({"kind": "installed", "serial": serial}),
            ))
            .unwrap_or_else(|e| panic!("install of {mac}: {e}"));
        plan
    }

    /// The `event.kind` of every history row of node `id`, oldest first.
    pub fn history_kinds(&self, id: &str) -> Vec<String> {
        let (st, hist) = self.req("GET", &format!("/api/v1/nodes/{id}/history"), None, true);
        assert_eq!(st, 200, "history of {id}: {hist}");
        hist.as_array()
            .unwrap()
            .iter()
            .filter_map(|h| h["event"]["kind"].as_str().map(String::from))
            .collect()
    }

    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_rollout"))
            .arg("--config")
            .arg(self.dir.join("rollout.toml"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into(),
            String::from_utf8_lossy(&out.stderr).into(),
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- server log ---\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        testkit::process::kill_tree(&mut self.child);
    }
}

pub fn event(step: &str, kind: Value) -> Value {
    let mut e = json!({"step": step, "message": format!("{step}"), "elapsed_ms": 1});
    for (k, v) in kind.as_object().unwrap() {
        e[k] = v.clone();
    }
    e
}
