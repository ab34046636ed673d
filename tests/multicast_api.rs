//! `POST /api/v1/installs/{id}/multicast` on a real `rollout serve` (loopback,
//! DHCP off): the plan carries the offer only when `[install] multicast` is
//! on; the call takes the install's own token and nothing else (401, 403,
//! 404, and 409 once the install ended); the legitimate installer gets an
//! answer it can act on. Sessions themselves, with real udpcast, are
//! `tests/multicast.rs`.

mod common;
use common::loopback::{write_config, Server};
use serde_json::Value;

fn post(s: &Server, path: &str, auth: Option<&str>) -> (u16, Value) {
    let mut r = ureq::post(&s.url(path));
    if let Some(a) = auth {
        r = r.set("Authorization", a);
    }
    match r.send_bytes(b"") {
        Ok(resp) => (resp.status(), resp.into_json().unwrap_or(Value::Null)),
        Err(ureq::Error::Status(st, resp)) => (st, resp.into_json().unwrap_or(Value::Null)),
        Err(e) => panic!("POST {path}: {e}"),
    }
}

#[test]
fn only_the_install_token_joins_and_the_plan_says_when_multicast_is_on() {
    let dir = tempfile::tempdir().unwrap();
    // The fixture's config, plus multicast on (and no server.interface: the
    // server has nothing to stream on, and says so).
    let cfg = write_config(dir.path(), 0);
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "[install]\n",
        "[install]\nmulticast = { enabled = true, wait_secs = 7 }\n",
    );
    std::fs::write(&cfg, text).unwrap();
    let s = Server::start(dir.path());

    let (st, plan) = s.plan("52:54:00:00:00:01");
    assert_eq!(st, 200, "{plan}");
    assert_eq!(plan["multicast"]["wait_secs"], 7, "{plan}");
    let id = plan["install_id"].as_str().unwrap();
    let token = plan["token"].as_str().unwrap();
    let path = format!("/api/v1/installs/{id}/multicast");

    let (st, e) = post(&s, &path, None);
    assert_eq!(st, 401, "{e}");
    let (st, e) = post(&s, &path, Some("Bearer not-the-token"));
    assert_eq!(st, 403, "{e}");
    // Another install's id with this token: unknown.
    let (st, e) = post(
        &s,
        "/api/v1/installs/nosuch/multicast",
        Some(&format!("Bearer {token}")),
    );
    assert_eq!(st, 404, "{e}");

    let (st, a) = post(&s, &path, Some(&format!("Bearer {token}")));
    assert_eq!(st, 200, "{a}");
    assert_eq!(a["multicast"], "no_session", "{a}");
    assert!(
        a["reason"].as_str().unwrap().contains("server.interface"),
        "{a}"
    );

    // Once the install ended, its token joins nothing.
    let serial = plan["image"]["serial"].as_u64().unwrap();
    ureq::post(&s.url(&format!("/api/v1/installs/{id}/events")))
        .set("Authorization", &format!("Bearer {token}"))
        .send_json(common::loopback::event(
            "finish",
            serde_json::json!({"kind": "installed", "serial": serial}),
        ))
        .unwrap();
    let (st, e) = post(&s, &path, Some(&format!("Bearer {token}")));
    assert_eq!(st, 409, "{e}");
}

#[test]
fn the_plan_has_no_offer_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let (st, plan) = s.plan("52:54:00:00:00:01");
    assert_eq!(st, 200, "{plan}");
    assert!(plan.get("multicast").is_none(), "{plan}");
    let (st, a) = post(
        &s,
        &format!(
            "/api/v1/installs/{}/multicast",
            plan["install_id"].as_str().unwrap()
        ),
        Some(&format!("Bearer {}", plan["token"].as_str().unwrap())),
    );
    assert_eq!(st, 200, "{a}");
    assert_eq!(a["multicast"], "no_session", "{a}");
    assert!(
        a["reason"]
            .as_str()
            .unwrap()
            .contains("[install] multicast"),
        "{a}"
    );
}
