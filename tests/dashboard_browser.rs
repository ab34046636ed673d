//! The dashboard in a real headless Chromium (driven over WebDriver by
//! chromedriver): a node's progress bar moves live while it installs, without a
//! reload, and the page is saved as a screenshot.

mod common;
use common::loopback::{event, free_port, Server};
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Driver {
    child: Child,
    base: String,
    session: String,
}

impl Driver {
    fn start() -> Option<Driver> {
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while ureq::get(&format!("{base}/status")).call().is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = tempfile::tempdir().unwrap().keep();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                         "--disable-background-networking", "--disable-component-update", "--disable-sync",
                         "--window-size=1280,600", format!("--user-data-dir={}", profile.display())]
            }
        }}});
        let resp: Value = ureq::post(&format!("{base}/session"))
            .send_json(caps)
            .unwrap()
            .into_json()
            .unwrap();
        let session = resp["value"]["sessionId"]
            .as_str()
            .expect("a WebDriver session")
            .to_string();
        Some(Driver {
            child,
            base,
            session,
        })
    }

    fn cmd(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let r = match method {
            "GET" => ureq::get(&url).call(),
            _ => ureq::post(&url).send_json(body),
        };
        match r {
            Ok(r) => r.into_json::<Value>().unwrap()["value"].clone(),
            Err(ureq::Error::Status(_, r)) => {
                panic!("WebDriver {path}: {}", r.into_string().unwrap_or_default())
            }
            Err(e) => panic!("WebDriver {path}: {e}"),
        }
    }

    fn script(&self, js: &str) -> Value {
        self.cmd("POST", "/execute/sync", json!({"script": js, "args": []}))
    }

    /// The WebDriver id of the element `css` selects.
    fn element(&self, css: &str) -> String {
        let e = self.cmd(
            "POST",
            "/element",
            json!({"using": "css selector", "value": css}),
        );
        e["element-6066-11e4-a52e-4f735466cecf"]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {e}"))
            .to_string()
    }

    fn click(&self, css: &str) {
        let id = self.element(css);
        self.cmd("POST", &format!("/element/{id}/click"), json!({}));
    }

    fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css);
        self.cmd(
            "POST",
            &format!("/element/{id}/value"),
            json!({"text": text}),
        );
    }

    /// Signs in on the dashboard's form with `token`, as a person would, and
    /// waits for the page that says who is signed in.
    fn sign_in(&self, s: &Server, token: &str) {
        self.cmd("POST", "/url", json!({"url": s.url("/login")}));
        self.type_into(r#"input[name="token"]"#, token);
        self.click(r#"form[action="/login"] button"#);
        self.wait_for_text("Signed in as");
    }

    /// Waits until the page's text contains `text`; returns the text.
    fn wait_for_text(&self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let body = self.script("return document.body.textContent;");
            let body = body.as_str().unwrap_or("");
            if body.contains(text) {
                return body.to_string();
            }
            assert!(Instant::now() < deadline, "{text:?} never showed: {body}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the browser is on a page whose path is `path`.
    fn wait_for_path(&self, path: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let url = self.cmd("GET", "/url", Value::Null);
            let at = url.as_str().unwrap_or("");
            let here = at.splitn(4, '/').nth(3).map(|p| format!("/{p}"));
            if here.as_deref() == Some(path) {
                return;
            }
            assert!(Instant::now() < deadline, "browser at {at}, not {path}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = ureq::delete(&format!("{}/session/{}", self.base, self.session)).call();
        testkit::process::kill_tree(&mut self.child);
    }
}

/// One browser at a time: two Chromiums starting on a small machine can take longer
/// than the test server's 5 s install timeout, which fails the install being watched.
static ONE_BROWSER: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_browser() -> std::sync::MutexGuard<'static, ()> {
    ONE_BROWSER.lock().unwrap_or_else(|e| e.into_inner())
}

const PROGRESS: &str = r#"var p = document.querySelector('tr[data-mac="52:54:00:00:00:01"] progress'); return p ? p.value : -1;"#;

fn wait_for(d: &Driver, want: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = d.script(PROGRESS).as_f64().unwrap_or(-1.0);
        if (v - want).abs() < 0.5 || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A new `read` operator, "viewer": its token.
fn read_operator(s: &Server) -> String {
    let (st, viewer) = s.req(
        "POST",
        "/api/v1/operators",
        Some(json!({"name": "viewer", "role": "read"})),
        true,
    );
    assert_eq!(st, 200, "{viewer}");
    viewer["token"].as_str().unwrap().to_string()
}

/// Whether Chromium and ChromeDriver are here (otherwise the prerequisite
/// policy decides: skip locally, fail under CI).
fn browser_available() -> bool {
    let ok = Command::new("chromedriver")
        .arg("--version")
        .output()
        .is_ok()
        && std::path::Path::new("/usr/bin/chromium").exists();
    if !ok {
        testkit::prereq::missing(
            "chromium or chromedriver is not installed (Debian packages chromium, chromium-driver)",
        );
    }
    ok
}

#[test]
fn progress_bar_moves_live_and_screenshot_is_saved() {
    if !browser_available() {
        return;
    }
    let _browser = one_browser();
    // The browser first: the test server fails an install after 5 s without a
    // report, and a cold Chromium start can take that long.
    let d = Driver::start().expect("chromedriver starts");
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let (_, plan) = s.plan("52:54:00:00:00:01");
    let path = format!(
        "/api/v1/installs/{}/events",
        plan["install_id"].as_str().unwrap()
    );
    let auth = format!("Bearer {}", plan["token"].as_str().unwrap());
    // 20 bytes/s by the installer's clock: an ETA once three reports span 3 s.
    let report = |done: u64, elapsed_ms: u64| {
        let mut ev = event(
            "copy",
            json!({"kind": "progress", "done_bytes": done, "total_bytes": 200}),
        );
        ev["elapsed_ms"] = json!(elapsed_ms);
        ureq::post(&s.url(&path))
            .set("Authorization", &auth)
            .send_json(ev)
            .unwrap();
    };
    report(20, 1000);
    d.sign_in(&s, &s.token);
    d.cmd("POST", "/url", json!({"url": s.url("/")}));
    assert_eq!(wait_for(&d, 10.0), 10.0, "server-rendered progress");
    // Wait until the event stream is connected, then mark the page: a reload would lose the mark.
    let deadline = Instant::now() + Duration::from_secs(15);
    while d.script("return document.getElementById('live').textContent;") != "live" {
        assert!(
            Instant::now() < deadline,
            "the page never connected to /api/v1/events"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    d.script("window.rolloutMark = 1; return 0;");
    report(120, 6000);
    assert_eq!(
        wait_for(&d, 60.0),
        60.0,
        "progress bar did not follow the install"
    );
    report(180, 9000);
    assert_eq!(wait_for(&d, 90.0), 90.0);
    assert_eq!(
        d.script("return window.rolloutMark || 0;"),
        json!(1),
        "the page reloaded instead of updating live"
    );
    let stage = d.script(
        r#"return document.querySelector('tr[data-mac="52:54:00:00:00:01"] .stage').textContent;"#,
    );
    assert!(
        stage
            .as_str()
            .unwrap()
            .starts_with("copy 90% · 180 B / 200 B · "),
        "{stage}"
    );
    assert!(
        stage.as_str().unwrap().ends_with(" · ETA 1s"),
        "20 B left at 20 B/s: {stage}"
    );

    let png = d.cmd("GET", "/screenshot", Value::Null);
    let b64 = png.as_str().unwrap();
    let bytes = base64_decode(b64);
    assert!(bytes.starts_with(b"\x89PNG"), "screenshot is not a PNG");
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&out, &bytes).unwrap();
    eprintln!("screenshot: {}", out.display());

    // The node page renders too, without JavaScript involvement (a fresh
    // report first: the test server times an install out after 5 s).
    report(190, 9500);
    d.cmd("POST", "/url", json!({"url": s.url("/nodes/node1")}));
    let h1 = d.script("return document.querySelector('h1').textContent;");
    assert!(h1.as_str().unwrap().contains("node1"), "{h1}");
    let body = d.script("return document.body.textContent;");
    assert!(
        body.as_str().unwrap().contains("ETA 1s"),
        "node page: {body}"
    );
}

/// The node page's reinstall button in a real browser: no page without signing
/// in; a `read` operator sees the node but is refused the reinstall (the page
/// names the role needed), signs out; the admin's click takes, and the node's
/// history names who asked.
#[test]
fn reinstall_button_needs_a_maintain_sign_in_in_the_browser() {
    if !browser_available() {
        return;
    }
    let _browser = one_browser();
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    // Installed, so a reinstall that got through would show.
    s.install("52:54:00:00:00:01");
    let state = || s.req("GET", "/api/v1/nodes/node1", None, true).1["state"].clone();
    assert_eq!(state(), "installed");
    let viewer = read_operator(&s);

    let d = Driver::start().expect("chromedriver starts");
    const BUTTON: &str = r#"form[action$="/reinstall"] button"#;
    d.cmd("POST", "/url", json!({"url": s.url("/nodes/node1")}));
    d.wait_for_path("/login");

    d.sign_in(&s, &viewer);
    d.cmd("POST", "/url", json!({"url": s.url("/nodes/node1")}));
    d.wait_for_text("viewer (read)");
    d.click(BUTTON);
    d.wait_for_text("needs role maintain; viewer has read");
    assert_eq!(
        state(),
        "installed",
        "a read operator's click changed the node"
    );
    let kinds = s.history_kinds("node1");
    assert!(
        !kinds.iter().any(|k| k == "reinstall_requested"),
        "{kinds:?}"
    );

    d.cmd("POST", "/url", json!({"url": s.url("/")}));
    d.click(r#"form[action="/logout"] button"#);
    d.wait_for_path("/login");
    d.cmd("POST", "/url", json!({"url": s.url("/nodes/node1")}));
    d.wait_for_path("/login");

    d.sign_in(&s, &s.token);
    d.cmd("POST", "/url", json!({"url": s.url("/nodes/node1")}));
    d.click(BUTTON);
    d.wait_for_path("/nodes/52:54:00:00:00:01");
    assert_eq!(state(), "pending", "the admin's click did not take");
    assert_eq!(
        s.history_kinds("node1").last().map(String::as_str),
        Some("reinstall_requested")
    );
    let page = d.wait_for_text("reinstall_requested");
    assert!(
        page.contains(r#""by":"admin""#),
        "the node page shows who: {page}"
    );
}

/// Waits until `js` (an expression) is true in the page; returns the page's text.
fn wait_until(d: &Driver, what: &str, js: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if d.script(&format!("return !!({js});")) == json!(true) {
            return d
                .script("return document.body.textContent;")
                .as_str()
                .unwrap_or("")
                .to_string();
        }
        let body = d.script("return document.body.textContent;");
        assert!(Instant::now() < deadline, "{what} never showed: {body}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A forged dashboard post with `curl`, as another page or script would send
/// it: `cookie` is a session id (or none), `form` the body. (status, body)
fn forged_post(url: &str, cookie: Option<&str>, form: &str) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-w", "\n%{http_code}", "-X", "POST", "--data", form]);
    if let Some(c) = cookie {
        cmd.args(["-H", &format!("Cookie: rollout_session={c}")]);
    }
    let out = cmd.arg(url).output().expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

const BMC_PASSWORD: &str = "dash-BMC-s3cret";

/// The power column and buttons against a real BMC (OpenIPMI's ipmi_sim, driven
/// by the server's ipmitool): a read-only operator sees each node's power
/// ("off, polled", "no BMC") but no buttons, and forged posts (no CSRF token,
/// a wrong one, the read role, no session) change nothing; the admin clicks
/// power on, power off and reinstall now, sees the state and the history row
/// after each, and the BMC's chassis got exactly those calls; a node whose BMC
/// does not answer shows the error on its page and stays marked for reinstall.
#[test]
fn power_buttons_drive_a_real_bmc_for_admins_only() {
    if !browser_available()
        || !testkit::prereq::require_tools(&[
            ("ipmi_sim", "openipmi"),
            ("ipmitool", "ipmitool"),
            ("curl", "curl"),
        ])
    {
        return;
    }
    use common::bmc::{calls, free_udp_port, secret_file, start_ipmi_sim, wait_for};
    let _browser = one_browser();
    let dir = tempfile::tempdir().unwrap();
    let port = free_udp_port();
    let _sim = start_ipmi_sim(dir.path(), port, BMC_PASSWORD);
    let pw = secret_file(dir.path(), "bmc-pw", BMC_PASSWORD);
    let dead = free_udp_port();
    let bmc = |port: u16| {
        format!(
            "bmc = {{ driver = \"ipmi\", address = \"127.0.0.1\", port = {port}, username = \"admin\", password_file = \"{}\", boot_mode = \"legacy\" }}\n",
            pw.display()
        )
    };
    let cfg = common::loopback::write_config(dir.path(), free_port());
    // node1: the live BMC; node2: none; node3: a BMC nobody answers for.
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(
            "ip = \"127.0.0.11\"\n",
            &format!("ip = \"127.0.0.11\"\n{}", bmc(port)),
        )
        .replace(
            "[[image]]",
            &format!(
                "[[node]]\nmac = \"52:54:00:00:00:02\"\nhostname = \"node2\"\nip = \"127.0.0.12\"\n\n[[node]]\nmac = \"52:54:00:00:00:03\"\nhostname = \"node3\"\nip = \"127.0.0.13\"\n{}\n[[image]]",
                bmc(dead)
            ),
        );
    std::fs::write(&cfg, format!("{text}\n[power]\ntimeout = 4\n")).unwrap();
    // ipmi_sim answers before the server starts, so its first poll sees "off".
    let parsed = rollout::config::Config::parse(&text).unwrap();
    let live = parsed.nodes[0].bmc.clone().unwrap();
    let target = rollout::power::Target {
        node: "node1",
        mac: "52:54:00:00:00:01",
        bmc: &live,
        interface: None,
        timeout: Duration::from_secs(4),
    };
    let direct = rollout::power::driver(&target).unwrap();
    wait_for("ipmi_sim", Duration::from_secs(10), || {
        direct.status().is_ok()
    });

    let d = Driver::start().expect("chromedriver starts");
    let s = Server::start(dir.path());
    s.install("52:54:00:00:00:01");
    s.install("52:54:00:00:00:03");
    let node_state = |id: &str| {
        s.req("GET", &format!("/api/v1/nodes/{id}"), None, true).1["state"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let power_rows = |id: &str| -> Vec<Value> {
        let (_, h) = s.req("GET", &format!("/api/v1/nodes/{id}/history"), None, true);
        h.as_array()
            .unwrap()
            .iter()
            .map(|h| h["event"].clone())
            .filter(|e| e["kind"] == "power")
            .collect()
    };
    let sets = || -> Vec<String> {
        calls(dir.path())
            .into_iter()
            .filter(|c| c.starts_with("set"))
            .collect()
    };
    let viewer = read_operator(&s);

    // The read-only operator: power states on the list, no buttons.
    d.sign_in(&s, &viewer);
    d.cmd("POST", "/url", json!({"url": s.url("/")}));
    const ROW1: &str = r#"document.querySelector('tr[data-mac="52:54:00:00:00:01"] td.power')"#;
    const ROW2: &str = r#"document.querySelector('tr[data-mac="52:54:00:00:00:02"] td.power')"#;
    // The poll runs at start-up; reload until its answer is on the page.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        d.cmd("POST", "/refresh", json!({}));
        let cell = d.script(&format!("return {ROW1}.textContent;"));
        let cell = cell.as_str().unwrap_or("");
        if cell.starts_with("off polled, ") {
            break;
        }
        assert!(Instant::now() < deadline, "node1's power: {cell:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(
        d.script(&format!("return {ROW2}.textContent;")),
        json!("no BMC")
    );
    d.cmd("POST", "/url", json!({"url": s.url("/nodes/node1")}));
    d.wait_for_text("viewer (read)");
    const BUTTONS: &str = r#"document.querySelectorAll('#power-buttons, form[action*="/power/"], form[action$="/reinstall-now"]').length"#;
    assert_eq!(d.script(&format!("return {BUTTONS};")), json!(0));

    // Forged posts: each refused, nothing reaches the BMC or the history.
    let cookie = |d: &Driver| {
        d.cmd("GET", "/cookie/rollout_session", Value::Null)["value"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let csrf = |d: &Driver| {
        d.script(
            r#"return document.querySelector('form[action="/logout"] input[name="csrf"]').value;"#,
        )
        .as_str()
        .unwrap()
        .to_string()
    };
    let on_url = s.url("/nodes/node1/power/on");
    let (viewer_cookie, viewer_csrf) = (cookie(&d), csrf(&d));
    let (st, body) = forged_post(
        &on_url,
        Some(&viewer_cookie),
        &format!("csrf={viewer_csrf}"),
    );
    assert_eq!(st, 403, "{body}");
    assert!(body.contains("needs role admin; viewer has read"), "{body}");
    let (st, body) = forged_post(&on_url, Some(&viewer_cookie), "x=1");
    assert_eq!(st, 403, "{body}");
    d.click(r#"form[action="/logout"] button"#);
    d.wait_for_path("/login");
    d.sign_in(&s, &s.token);
    d.cmd("POST", "/url", json!({"url": s.url("/nodes/node1")}));
    d.wait_for_text("admin (admin)");
    let admin_cookie = cookie(&d);
    for (form, why) in [
        ("x=1", "no CSRF token"),
        ("csrf=0123abcd", "a wrong CSRF token"),
    ] {
        for path in ["/nodes/node1/power/on", "/nodes/node1/reinstall-now"] {
            let (st, body) = forged_post(&s.url(path), Some(&admin_cookie), form);
            assert_eq!(st, 403, "{path} with {why}: {body}");
            assert!(body.contains("CSRF"), "{body}");
        }
    }
    let (st, _) = forged_post(&on_url, None, "x=1");
    assert_eq!(st, 303, "no session: sent to the sign-in page");
    assert!(
        sets().is_empty(),
        "a forged post reached the BMC: {:?}",
        sets()
    );
    assert!(power_rows("node1").is_empty(), "{:?}", power_rows("node1"));
    assert_eq!(node_state("node1"), "installed");

    // The admin's clicks, each seen on the page and in the history.
    const POWER: &str = "document.querySelector('td.power').textContent";
    let click_and_see = |button: &str, source: &str, state: &str| {
        d.click(button);
        let page = wait_until(
            &d,
            &format!("power {state} ({source})"),
            &format!("{POWER}.startsWith('{state} {source}, ')"),
        );
        page
    };
    click_and_see(r#"form[action$="/power/on"] button"#, "on by admin", "on");
    assert_eq!(sets(), ["set power 1"]);
    let page = click_and_see(
        r#"form[action$="/power/off"] button"#,
        "off by admin",
        "off",
    );
    assert_eq!(sets(), ["set power 1", "set power 0"]);
    assert!(
        page.contains(r#"{"action":"off","by":"admin","kind":"power","result":"ok"}"#),
        "the history row is on the page: {page}"
    );
    let page = click_and_see(
        r#"form[action$="/reinstall-now"] button"#,
        "reinstall_now by admin",
        "on",
    );
    assert_eq!(
        sets(),
        ["set power 1", "set power 0", "set boot pxe", "set power 1"],
        "PXE once, then on (the node was off)"
    );
    assert!(page.contains("reinstall_requested"), "{page}");
    assert!(page.contains(r#""steps":["boot_once_pxe","on"]"#), "{page}");
    assert_eq!(node_state("node1"), "pending");
    let rows = power_rows("node1");
    let actions: Vec<&str> = rows.iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["on", "off", "reinstall_now"]);
    assert!(
        rows.iter()
            .all(|r| r["by"] == "admin" && r["result"] == "ok"),
        "{rows:?}"
    );
    assert_eq!(
        direct.status().unwrap(),
        rollout::power::PowerState::On,
        "the BMC agrees"
    );

    // A BMC that does not answer: the error on the page, the node still marked.
    d.cmd("POST", "/url", json!({"url": s.url("/nodes/node3")}));
    d.click(r#"form[action$="/reinstall-now"] button"#);
    let page = wait_until(&d, "the failure", "document.getElementById('failure')");
    let failure = d.script("return document.getElementById('failure').textContent;");
    let failure = failure.as_str().unwrap();
    for want in [
        "node3 is marked for reinstall, but its power step failed",
        &format!("the BMC at 127.0.0.1:{dead} does not answer"),
        "check that the BMC is powered and cabled",
    ] {
        assert!(failure.contains(want), "{want:?} missing: {failure}");
    }
    assert_eq!(node_state("node3"), "pending");
    assert!(page.contains(r#""result":"failed""#), "{page}");
    let rows = power_rows("node3");
    assert_eq!(rows.last().unwrap()["result"], "failed", "{rows:?}");
    // The BMC password is on no page.
    for path in ["/", "/nodes/node1", "/nodes/node3"] {
        d.cmd("POST", "/url", json!({"url": s.url(path)}));
        let html = d.script("return document.documentElement.outerHTML;");
        assert!(!html.as_str().unwrap().contains(BMC_PASSWORD), "{path}");
    }
}

/// Standard base64 (WebDriver screenshots); small and local so the test needs no crate.
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter_map(val) {
        acc = (acc << 6) | c;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}
