//! Bounded resources, tried as an attacker on the provisioning network would:
//! slowloris HTTP clients, oversized bodies, a live stream held across shutdown, a
//! flood of never-acknowledged TFTP reads; each against `rollout serve` in
//! namespaces the test makes, with the legitimate path checked afterwards.

mod common;
use common::*;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

const CLIENT_IP: &str = "10.44.0.50";

fn serve(tag: &str) -> (tempfile::TempDir, Net, Server) {
    let dir = tempfile::tempdir().unwrap();
    let mut net = Net::new(tag);
    let config = write_config(
        dir.path(),
        "[server]\ninterface = \"rbr0\"\naddress = \"10.44.0.1\"\n[dhcp]\nmode = \"off\"\n",
    );
    let srv = Server::start(&net, &config);
    net.add_static_client(CLIENT_IP);
    (dir, net, srv)
}

/// curl from the client namespace: (exit ok, HTTP status, body).
fn curl(net: &Net, args: &[&str]) -> (bool, String, Vec<u8>) {
    let out = net
        .in_cli(&["curl", "-sS", "--max-time", "20", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    let mut body = out.stdout;
    let nl = body.iter().rposition(|&b| b == b'\n').unwrap_or(0);
    let code = String::from_utf8_lossy(&body[nl..]).trim().to_string();
    body.truncate(nl);
    (out.status.success(), code, body)
}

fn healthy(net: &Net) -> bool {
    let (ok, code, body) = curl(net, &["http://10.44.0.1/healthz"]);
    ok && code == "200" && body == b"ok\n"
}

#[test]
fn http_drops_slowloris_clients_and_refuses_oversized_bodies() {
    if !can_run(&["curl"]) {
        return;
    }
    let (_dir, net, _srv) = serve("ls");
    // Half a request line, then silence: the server hangs up on its own.
    let (closed_after, healthy_meanwhile) = common::netns::in_netns(net.cli.name(), || {
        let mut s = std::net::TcpStream::connect((SERVER_IP, 80)).unwrap();
        s.write_all(b"GET /healthz HT").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let start = Instant::now();
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).unwrap_or(0);
        (start.elapsed(), n)
    });
    assert_eq!(healthy_meanwhile, 0, "the server answered half a request");
    assert!(
        closed_after < Duration::from_secs(20),
        "a slowloris client was held {closed_after:?}"
    );
    assert!(healthy(&net));

    // Phone-home is small (4 KiB), every other API body at most 64 KiB.
    let big = format!(
        "{{\"mac\":\"52:54:00:00:00:09\",\"hostname\":\"{}\",\"serial\":1,\"boot_id\":\"b\"}}",
        "h".repeat(8 << 10)
    );
    let (_, code, _) = curl(
        &net,
        &[
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &big,
            "http://10.44.0.1/api/v1/phone-home",
        ],
    );
    assert_eq!(code, "413", "an 8 KiB phone-home");
    let event = format!(
        "{{\"step\":\"copy\",\"kind\":\"started\",\"message\":\"{}\",\"elapsed_ms\":1}}",
        "m".repeat(100 << 10)
    );
    let (_, code, _) = curl(
        &net,
        &[
            "-H",
            "Content-Type: application/json",
            "-H",
            "Authorization: Bearer x",
            "--data-binary",
            &event,
            "http://10.44.0.1/api/v1/installs/1-abc/events",
        ],
    );
    assert_eq!(code, "413", "a 100 KiB installer event");
    // The same requests at a normal size reach their handlers (which then look
    // for a node or install that does not exist).
    let small = big.replace(&"h".repeat(8 << 10), "node9");
    let (_, code, _) = curl(
        &net,
        &[
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &small,
            "http://10.44.0.1/api/v1/phone-home",
        ],
    );
    assert_ne!(code, "413", "a normal phone-home was refused as too large");
    assert!(code.starts_with('4') || code.starts_with('2'), "{code}");
}

#[test]
fn sigterm_with_a_live_stream_open_exits_promptly() {
    if !can_run(&["curl"]) {
        return;
    }
    let (_dir, net, mut srv) = serve("lt");
    let mut stream = net
        .in_cli(&[
            "curl",
            "-sN",
            "--max-time",
            "60",
            "http://10.44.0.1/api/v1/events",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Let the stream establish (it would receive node events from here on).
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        stream.try_wait().unwrap().is_none(),
        "the stream ended early"
    );
    let start = Instant::now();
    let pid = nix::unistd::Pid::from_raw(srv.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = loop {
        if let Some(s) = srv.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(8),
            "rollout serve still running {:?} after SIGTERM with a stream open",
            start.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "exit {status}; log:\n{}", srv.log_text());
    // The stream ended with the server, not at curl's own timeout.
    let curl_done = stream.wait().unwrap();
    assert!(start.elapsed() < Duration::from_secs(10), "{curl_done}");
}
