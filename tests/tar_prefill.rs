//! `GET /api/v1/installs/{id}/image.tar` on a real `rollout serve` (loopback,
//! DHCP off), read back with GNU tar: with `[install] tar_prefill` the plan
//! says so and the install's own token (only it) streams the serial's tree,
//! the image's excludes left out; without it the route refuses and says why.

mod common;
use common::loopback::{stream_test_serial, write_config_with_install, Server};
use serde_json::Value;
use std::path::Path;

#[test]
fn the_install_token_streams_the_serial_without_its_excludes() {
    let dir = tempfile::tempdir().unwrap();
    write_config_with_install(dir.path(), "tar_prefill = true");
    let big = stream_test_serial(dir.path());
    let s = Server::start(dir.path());

    let (st, plan) = s.plan("52:54:00:00:00:01");
    assert_eq!(st, 200, "{plan}");
    assert_eq!(plan["tar_prefill"], Value::Bool(true), "{plan}");
    let id = plan["install_id"].as_str().unwrap();
    let token = plan["token"].as_str().unwrap();
    let path = format!("/api/v1/installs/{id}/image.tar");

    assert_eq!(s.get_bytes(&path, None).0, 401);
    assert_eq!(s.get_bytes(&path, Some("Bearer not-the-token")).0, 403);
    let other = "/api/v1/installs/nosuch/image.tar";
    assert_eq!(s.get_bytes(other, Some(&format!("Bearer {token}"))).0, 404);

    let (st, tar) = s.get_bytes(&path, Some(&format!("Bearer {token}")));
    assert_eq!(
        st,
        200,
        "{}",
        String::from_utf8_lossy(&tar[..tar.len().min(300)])
    );
    let out = tempfile::tempdir().unwrap();
    std::fs::write(out.path().join("image.tar"), &tar).unwrap();
    let x = std::process::Command::new("tar")
        .arg("-xf")
        .arg(out.path().join("image.tar"))
        .arg("-C")
        .arg(out.path())
        .output()
        .unwrap();
    assert!(x.status.success(), "{}", String::from_utf8_lossy(&x.stderr));
    assert_eq!(
        std::fs::read(out.path().join("usr/lib/big.so")).unwrap(),
        big
    );
    assert_eq!(
        std::fs::read_link(out.path().join("usr/big")).unwrap(),
        Path::new("lib/big.so")
    );
    assert!(
        !out.path().join("var/lib/site/secret").exists(),
        "the image's exclude /var/lib/site/ was streamed"
    );
}

#[test]
fn without_tar_prefill_the_plan_offers_none_and_the_route_says_why() {
    let dir = tempfile::tempdir().unwrap();
    Server::start(dir.path()).assert_install_route_off("tar_prefill", "image.tar");
}
