//! Operator sign-in and delegation against a real `rollout serve` on loopback:
//! the admin token's minimum length, dashboard sessions (sign in, use, sign
//! out, expiry), CSRF on dashboard changes, and named operators with roles that
//! are refused what their role does not allow and revoked while the server runs.
//! Each attack is tried with a real HTTP client and seen to change nothing.

mod common;
use common::loopback::{free_port, write_config, Server};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// An HTTP answer: status, `Location`, `Set-Cookie` and body.
struct Answer {
    status: u16,
    location: String,
    cookie: String,
    body: String,
}

fn answer(r: Result<ureq::Response, ureq::Error>) -> Answer {
    let r = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{e}"),
    };
    Answer {
        status: r.status(),
        location: r.header("location").unwrap_or("").to_string(),
        cookie: r.header("set-cookie").unwrap_or("").to_string(),
        body: r.into_string().unwrap_or_default(),
    }
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .redirects(0)
        .timeout(Duration::from_secs(10))
        .build()
}

/// A config for [`Server::start`] with extra `[server]` keys.
fn config_with(dir: &Path, server_keys: &str) {
    let cfg = write_config(dir, free_port());
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replacen("[server]\n", &format!("[server]\n{server_keys}\n"), 1),
    )
    .unwrap();
}

/// The value between a value's `name="csrf" value="` and the next quote.
fn form_csrf(page: &str) -> String {
    let at = page
        .find(r#"name="csrf" value=""#)
        .unwrap_or_else(|| panic!("no CSRF field in {page}"));
    let rest = &page[at + r#"name="csrf" value=""#.len()..];
    rest[..rest.find('"').unwrap()].to_string()
}

/// Signs in as a browser would: the form (with its CSRF cookie and field), then
/// the post. Returns the `name=value` session cookie and the answer.
fn sign_in(s: &Server, token: &str) -> (String, Answer) {
    let a = agent();
    let form = answer(a.get(&s.url("/login")).call());
    assert_eq!(form.status, 200);
    let login_cookie = form.cookie.split(';').next().unwrap().to_string();
    let csrf = form_csrf(&form.body);
    let done = answer(
        a.post(&s.url("/login"))
            .set("Cookie", &login_cookie)
            .send_form(&[("token", token), ("csrf", &csrf)]),
    );
    let session = done.cookie.split(';').next().unwrap_or("").to_string();
    (session, done)
}

fn get_with_cookie(s: &Server, path: &str, cookie: &str) -> Answer {
    answer(agent().get(&s.url(path)).set("Cookie", cookie).call())
}

fn node_state(s: &Server) -> String {
    s.req("GET", "/api/v1/nodes/node1", None, true).1["state"]
        .as_str()
        .unwrap()
        .to_string()
}

fn rollout(config: &Path, token: Option<&str>, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rollout"));
    cmd.arg("--config").arg(config).args(args);
    match token {
        Some(t) => cmd.env("ROLLOUT_TOKEN", t),
        None => cmd.env_remove("ROLLOUT_TOKEN"),
    };
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn an_empty_or_short_admin_token_stops_serve_and_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("rollout.toml");
    for key in [r#"admin_token = """#, r#"admin_token = "hunter2""#] {
        config_with(dir.path(), key);
        for cmd in ["check-config", "serve"] {
            let out = Command::new(env!("CARGO_BIN_EXE_rollout"))
                .args([cmd, "--config"])
                .arg(&cfg)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{cmd} with {key} succeeded");
            assert!(
                err.contains("server.admin_token")
                    && err.contains("minimum of 32")
                    && err.contains("openssl rand -hex 24"),
                "{cmd}: {err}"
            );
        }
    }
    // A short token file (written by hand) is refused too, naming the file.
    config_with(dir.path(), "");
    std::fs::create_dir_all(dir.path().join("state")).unwrap();
    std::fs::write(dir.path().join("state/admin.token"), "abc\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rollout"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("admin.token") && err.contains("minimum of 32"),
        "{err}"
    );
    // A long enough one starts.
    std::fs::write(
        dir.path().join("state/admin.token"),
        "0123456789abcdef0123456789abcdef\n",
    )
    .unwrap();
    let s = Server::start(dir.path());
    assert_eq!(s.token, "0123456789abcdef0123456789abcdef");
    assert_eq!(node_state(&s), "pending");
}

#[test]
fn a_session_cookie_signs_in_works_and_dies_at_sign_out() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    // Not signed in: pages send to the sign-in form, the API says 401.
    let page = get_with_cookie(&s, "/", "rollout_session=guessed");
    assert_eq!((page.status, page.location.as_str()), (303, "/login"));
    // A sign-in post without the form's CSRF token (another site's form) is refused.
    let forged = answer(
        agent()
            .post(&s.url("/login"))
            .send_form(&[("token", &s.token)]),
    );
    assert_eq!(forged.status, 403, "{}", forged.body);
    assert!(forged.cookie.is_empty());
    let (_, wrong) = sign_in(&s, "not-the-token");
    assert_eq!(wrong.status, 401);
    assert!(!wrong.cookie.contains("rollout_session=") || wrong.cookie.is_empty());

    let (cookie, done) = sign_in(&s, &s.token);
    assert_eq!(done.status, 200);
    assert!(done.body.contains("Signed in as admin"), "{}", done.body);
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(done.cookie.contains(attr), "{}", done.cookie);
    }
    assert!(
        cookie.starts_with("rollout_session=") && !done.cookie.contains(&s.token),
        "the token itself must not be in the cookie: {}",
        done.cookie
    );
    let page = get_with_cookie(&s, "/", &cookie);
    assert_eq!(page.status, 200);
    assert!(page.body.contains("admin (admin)") && page.body.contains("node1"));
    let api = get_with_cookie(&s, "/api/v1/nodes/node1", &cookie);
    assert_eq!(api.status, 200, "{}", api.body);

    // Sign out (a form with the session's CSRF token): the old cookie is refused after.
    let csrf = form_csrf(&page.body);
    let bye = answer(
        agent()
            .post(&s.url("/logout"))
            .set("Cookie", &cookie)
            .send_form(&[("csrf", &csrf)]),
    );
    assert_eq!((bye.status, bye.location.as_str()), (303, "/login"));
    assert!(bye.cookie.contains("Max-Age=0"), "{}", bye.cookie);
    let page = get_with_cookie(&s, "/", &cookie);
    assert_eq!((page.status, page.location.as_str()), (303, "/login"));
    assert_eq!(get_with_cookie(&s, "/api/v1/nodes", &cookie).status, 401);
}

#[test]
fn a_session_expires_after_its_configured_lifetime() {
    let dir = tempfile::tempdir().unwrap();
    config_with(dir.path(), "session_lifetime = 2");
    let s = Server::start(dir.path());
    let (cookie, done) = sign_in(&s, &s.token);
    assert!(done.cookie.contains("Max-Age=2"), "{}", done.cookie);
    assert_eq!(get_with_cookie(&s, "/", &cookie).status, 200);
    std::thread::sleep(Duration::from_millis(2500));
    let page = get_with_cookie(&s, "/", &cookie);
    assert_eq!((page.status, page.location.as_str()), (303, "/login"));
    assert_eq!(get_with_cookie(&s, "/api/v1/nodes", &cookie).status, 401);
}

#[test]
fn a_dashboard_change_without_its_csrf_token_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    s.install("52:54:00:00:00:01");
    let (cookie, _) = sign_in(&s, &s.token);
    let page = get_with_cookie(&s, "/nodes/node1", &cookie);
    let csrf = form_csrf(&page.body);
    // What a forged cross-site form would send: the cookie, but no or a wrong token.
    for form in [vec![], vec![("csrf", "0000")]] {
        let r = answer(
            agent()
                .post(&s.url("/nodes/node1/reinstall"))
                .set("Cookie", &cookie)
                .send_form(&form),
        );
        assert_eq!(r.status, 403, "{form:?}: {}", r.body);
        assert!(r.body.contains("CSRF"), "{}", r.body);
    }
    // The API with the cookie needs the token as X-CSRF-Token.
    let r = answer(
        agent()
            .post(&s.url("/api/v1/nodes/node1/reinstall"))
            .set("Cookie", &cookie)
            .call(),
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(
        node_state(&s),
        "installed",
        "a refused post changed the node"
    );
    assert!(!s
        .history_kinds("node1")
        .contains(&"reinstall_requested".into()));
    let script = s.text("/boot.ipxe?mac=52-54-00-00-00-01&platform=pcbios");
    assert!(script.contains("booting from its disk"), "{script}");

    // The dashboard's own form carries it, and takes; history names who.
    let r = answer(
        agent()
            .post(&s.url("/nodes/node1/reinstall"))
            .set("Cookie", &cookie)
            .send_form(&[("csrf", &csrf)]),
    );
    assert_eq!(
        (r.status, r.location.as_str()),
        (303, "/nodes/52:54:00:00:00:01")
    );
    assert_eq!(node_state(&s), "pending");
    let (_, hist) = s.req("GET", "/api/v1/nodes/node1/history", None, true);
    let last = hist.as_array().unwrap().last().unwrap()["event"].clone();
    assert_eq!(last, json!({"kind": "reinstall_requested", "by": "admin"}));
    let page = get_with_cookie(&s, "/nodes/node1", &cookie);
    assert!(
        page.body.contains("reinstall_requested"),
        "the node page shows it"
    );
}

#[test]
fn roles_allow_what_they_name_and_a_revoked_token_stops_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    s.install("52:54:00:00:00:01");
    let cfg = dir.path().join("rollout.toml");
    let add = |name: &str, role: &str| {
        let (ok, out, err) = rollout(&cfg, None, &["operator", "add", name, "--role", role]);
        assert!(ok, "{err}");
        let token = out.trim().to_string();
        assert_eq!(token.len(), 48, "{out}");
        token
    };
    let viewer = add("viewer", "read");
    let ops = add("ops", "maintain");
    let boss = add("boss", "admin");
    let (ok, out, _) = rollout(&cfg, None, &["operator", "list"]);
    assert!(
        ok && out.contains("viewer") && out.contains("maintain"),
        "{out}"
    );
    assert!(!out.contains(&viewer), "list shows no tokens");
    let db = std::fs::read(dir.path().join("state/rollout.db")).unwrap();
    let wal = std::fs::read(dir.path().join("state/rollout.db-wal")).unwrap_or_default();
    assert!(
        ![&db, &wal]
            .iter()
            .any(|b| b.windows(48).any(|w| w == viewer.as_bytes())),
        "a token is stored in clear"
    );

    let call = |token: &str, method: &str, path: &str, body: Option<Value>| {
        let r = agent()
            .request(method, &s.url(path))
            .set("Authorization", &format!("Bearer {token}"));
        answer(match body {
            Some(b) => r.send_json(b),
            None => r.call(),
        })
    };
    let node5 = json!({"mac": "52:54:00:00:00:05", "hostname": "node5"});
    // read: sees everything, changes nothing.
    assert_eq!(call(&viewer, "GET", "/api/v1/nodes", None).status, 200);
    let r = call(&viewer, "POST", "/api/v1/nodes/node1/reinstall", None);
    assert_eq!(r.status, 403);
    assert!(
        r.body.contains("needs role maintain; viewer has read"),
        "{}",
        r.body
    );
    let (ok, _, err) = rollout(&cfg, Some(&viewer), &["node", "reinstall", "node1"]);
    assert!(
        !ok && err.contains("needs role maintain; viewer has read"),
        "{err}"
    );
    let (ok, out, err) = rollout(&cfg, Some(&viewer), &["node", "list"]);
    assert!(ok && out.contains("node1"), "{err}");
    assert_eq!(node_state(&s), "installed");
    // maintain: reinstalls, but does not declare nodes or issue credentials.
    let r = call(&ops, "POST", "/api/v1/nodes", Some(node5.clone()));
    assert_eq!(r.status, 403);
    assert!(
        r.body.contains("needs role admin; ops has maintain"),
        "{}",
        r.body
    );
    let r = call(
        &ops,
        "POST",
        "/api/v1/operators",
        Some(json!({"name": "x", "role": "admin"})),
    );
    assert_eq!(r.status, 403);
    let (ok, _, err) = rollout(&cfg, Some(&ops), &["node", "reinstall", "node1"]);
    assert!(ok, "{err}");
    assert_eq!(node_state(&s), "pending");
    // exec and sync go over SSH from the CLI; the CLI first announces each run to
    // the server, which refuses a read credential before any SSH is tried.
    let (ok, _, err) = rollout(&cfg, Some(&viewer), &["exec", "--all", "--", "true"]);
    assert!(
        !ok && err.contains("needs role maintain; viewer has read"),
        "{err}"
    );
    let (ok, _, err) = rollout(&cfg, Some(&viewer), &["sync", "--nodes", "node1"]);
    assert!(
        !ok && err.contains("needs role maintain; viewer has read"),
        "{err}"
    );
    assert!(!s
        .history_kinds("node1")
        .iter()
        .any(|k| k == "exec" || k == "sync"));
    let r = call(
        &ops,
        "POST",
        "/api/v1/nodes/node1/runs",
        Some(json!({"action": "exec", "command": "uptime"})),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let (_, hist) = s.req("GET", "/api/v1/nodes/node1/history", None, true);
    let last = hist.as_array().unwrap().last().unwrap()["event"].clone();
    assert_eq!(
        last,
        json!({"kind": "exec", "by": "ops", "command": "uptime"})
    );
    // admin: declares.
    let r = call(&boss, "POST", "/api/v1/nodes", Some(node5));
    assert_eq!(r.status, 200, "{}", r.body);
    // History and the server log say who did what.
    let (_, hist) = s.req("GET", "/api/v1/nodes/node1/history", None, true);
    assert!(
        hist.as_array()
            .unwrap()
            .iter()
            .any(|h| h["event"] == json!({"kind": "reinstall_requested", "by": "ops"})),
        "{hist}"
    );
    let (_, hist) = s.req("GET", "/api/v1/nodes/node5/history", None, true);
    assert_eq!(hist[0]["event"]["by"], "boss", "{hist}");
    let (ok, out, _) = rollout(&cfg, None, &["node", "show", "node1"]);
    assert!(ok && out.contains("ops"), "node show names who: {out}");
    let log = s.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("operator=ops") && l.contains("reinstall")),
        "{log}"
    );

    // Revoked while the server runs: the next request (API, CLI, dashboard session) is refused.
    let (cookie, _) = sign_in(&s, &ops);
    assert_eq!(get_with_cookie(&s, "/", &cookie).status, 200);
    let (ok, _, err) = rollout(&cfg, Some(&ops), &["operator", "revoke", "ops"]);
    assert!(!ok && err.contains("needs role admin"), "{err}");
    let (ok, out, err) = rollout(&cfg, None, &["operator", "revoke", "ops"]);
    assert!(ok && out.contains("revoked"), "{err}");
    let r = call(&ops, "GET", "/api/v1/nodes", None);
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.body.contains("revoked"), "{}", r.body);
    let (ok, _, err) = rollout(&cfg, Some(&ops), &["node", "list"]);
    assert!(!ok && err.contains("401"), "{err}");
    let page = get_with_cookie(&s, "/", &cookie);
    assert_eq!((page.status, page.location.as_str()), (303, "/login"));
    // A new credential under the same name is a new token: the old one stays dead.
    let ops2 = add("ops", "maintain");
    assert_ne!(ops, ops2);
    assert_eq!(call(&ops, "GET", "/api/v1/nodes", None).status, 401);
    assert_eq!(call(&ops2, "GET", "/api/v1/nodes", None).status, 200);
    let (ok, out, _) = rollout(&cfg, Some(&ops2), &["operator", "whoami"]);
    assert!(ok && out.trim() == "ops (maintain)", "{out}");
}

#[test]
fn anonymous_reads_only_when_the_config_allows_them() {
    let dir = tempfile::tempdir().unwrap();
    config_with(dir.path(), "anonymous_read = true");
    let s = Server::start(dir.path());
    assert_eq!(s.req("GET", "/api/v1/nodes", None, false).0, 200);
    let page = answer(agent().get(&s.url("/nodes/node1")).call());
    assert_eq!(page.status, 200);
    // Reading is all it allows.
    assert_eq!(
        s.req("POST", "/api/v1/nodes/node1/reinstall", None, false)
            .0,
        401
    );
    let r = answer(agent().post(&s.url("/nodes/node1/reinstall")).call());
    assert_eq!((r.status, r.location.as_str()), (303, "/login"));
    assert_eq!(node_state(&s), "pending");
}

/// A stranger on the network with curl: no page, no read, no change, whatever
/// cookie they make up, the raw admin token in the old cookie included; the
/// admin's Bearer call with the same curl works.
#[test]
fn a_stranger_with_curl_reads_nothing_and_changes_nothing() {
    if !testkit::prereq::require_known_tools(&["curl"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    s.install("52:54:00:00:00:01");
    // `-w` prints the status code last; the body before it.
    let curl = |args: &[&str]| -> (u16, String) {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "10", "-w", "\n%{http_code}"])
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (code.parse().unwrap(), body.to_string())
    };
    let (code, body) = curl(&[&s.url("/api/v1/nodes")]);
    assert_eq!(code, 401, "{body}");
    assert!(!body.contains("node1"));
    assert_eq!(curl(&[&s.url("/")]).0, 303);
    assert_eq!(curl(&[&s.url("/api/v1/events")]).0, 401);
    let old_cookie = format!("rollout_admin={}", s.token);
    for cookie in ["rollout_session=0123456789abcdef", old_cookie.as_str()] {
        assert_eq!(curl(&["-b", cookie, &s.url("/nodes/node1")]).0, 303);
        let (code, _) = curl(&[
            "-b",
            cookie,
            "-X",
            "POST",
            &s.url("/api/v1/nodes/node1/reinstall"),
        ]);
        assert_eq!(code, 401, "{cookie}");
        let (code, _) = curl(&[
            "-b",
            cookie,
            "-d",
            "csrf=x",
            &s.url("/nodes/node1/reinstall"),
        ]);
        assert_eq!(code, 303, "{cookie}: sent to sign in");
    }
    for guess in ["", "admin", &s.token[..s.token.len() - 1]] {
        let auth = format!("Authorization: Bearer {guess}");
        let (code, _) = curl(&[
            "-H",
            &auth,
            "-X",
            "POST",
            &s.url("/api/v1/nodes/node1/reinstall"),
        ]);
        assert_eq!(code, 401, "{guess:?}");
    }
    assert_eq!(node_state(&s), "installed", "a stranger changed the node");
    let auth = format!("Authorization: Bearer {}", s.token);
    let (code, body) = curl(&[
        "-H",
        &auth,
        "-X",
        "POST",
        &s.url("/api/v1/nodes/node1/reinstall"),
    ]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(node_state(&s), "pending");
}
