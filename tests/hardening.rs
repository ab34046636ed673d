//! Bounded resources, tried as an attacker on the provisioning network would:
//! slowloris HTTP clients, oversized bodies, a live stream held across shutdown, a
//! flood of never-acknowledged TFTP reads; each against `rollout serve` in
//! namespaces the test makes, with the legitimate path checked afterwards. And
//! the state directory's secrets, as `rollout serve` leaves them.

mod common;
use common::*;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

const CLIENT_IP: &str = "10.44.0.50";

fn serve(tag: &str) -> (tempfile::TempDir, Net, Server) {
    let (dir, net, srv, _) = serve_with_iface(tag);
    (dir, net, srv)
}

fn serve_with_iface(tag: &str) -> (tempfile::TempDir, Net, Server, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut net = Net::new(tag);
    let config = write_config(
        dir.path(),
        "[server]\ninterface = \"rbr0\"\naddress = \"10.44.0.1\"\n[dhcp]\nmode = \"off\"\n",
    );
    let srv = Server::start(&net, &config);
    let iface = net.add_static_client(CLIENT_IP);
    (dir, net, srv, iface)
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

/// POSTs `body` (on curl's stdin) as JSON with a bearer token; the HTTP status.
fn post_json(net: &Net, path: &str, body: &str) -> String {
    let mut child = net
        .in_cli(&[
            "curl",
            "-sS",
            "--max-time",
            "20",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .args([
            "-H",
            "Content-Type: application/json",
            "-H",
            "Authorization: Bearer x",
        ])
        .args(["--data-binary", "@-", &format!("http://{SERVER_IP}{path}")])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // curl may stop reading once the server answers 413.
    let _ = child.stdin.take().unwrap().write_all(body.as_bytes());
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
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

    // Phone-home is small (4 KiB), an installer event at most 256 KiB.
    let big = format!(
        "{{\"mac\":\"52:54:00:00:00:09\",\"hostname\":\"{}\",\"serial\":1,\"boot_id\":\"b\"}}",
        "h".repeat(8 << 10)
    );
    let code = post_json(&net, "/api/v1/phone-home", &big);
    assert_eq!(code, "413", "an 8 KiB phone-home");
    let event = format!(
        "{{\"step\":\"copy\",\"kind\":\"started\",\"message\":\"{}\",\"elapsed_ms\":1}}",
        "m".repeat(300 << 10)
    );
    let code = post_json(&net, "/api/v1/installs/1-abc/events", &event);
    assert_eq!(code, "413", "a 300 KiB installer event");
    // The same requests at a normal size reach their handlers (which then look
    // for a node or install that does not exist).
    let small = big.replace(&"h".repeat(8 << 10), "node9");
    let code = post_json(&net, "/api/v1/phone-home", &small);
    assert_ne!(code, "413", "a normal phone-home was refused as too large");
    assert!(code.starts_with('4') || code.starts_with('2'), "{code}");
}

#[test]
fn sigterm_with_a_live_stream_open_exits_promptly() {
    if !can_run(&["curl"]) {
        return;
    }
    let (dir, net, mut srv) = serve("lt");
    // Reads need a credential: the live stream is opened as the admin.
    let token = std::fs::read_to_string(dir.path().join("state/admin.token")).unwrap();
    let auth = format!("Authorization: Bearer {}", token.trim());
    let mut stream = net
        .in_cli(&[
            "curl",
            "-sN",
            "--max-time",
            "60",
            "-H",
            &auth,
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

/// Sends `count` read requests for `file`, each from its own port of `source`,
/// acknowledges nothing, and prints one JSON line: how many requests went out and
/// how many first replies were TFTP errors and how many DATA/OACK (a transfer
/// started). Then it holds its sockets open (unacknowledged) until killed or 60 s.
const FLOOD: &str = r#"
import json, resource, selectors, socket, sys, time
source, server, file, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
sel = selectors.DefaultSelector()
socks = []
rrq = b"\x00\x01" + file.encode() + b"\x00octet\x00"
for i in range(count):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((source, 0))
    s.setblocking(False)
    s.sendto(rrq, (server, 69))
    sel.register(s, selectors.EVENT_READ)
    socks.append(s)
    if i % 100 == 99:
        time.sleep(0.01)
seen, replies = set(), {"error": 0, "started": 0}
end = time.time() + 3
while time.time() < end and len(seen) < count:
    for key, _ in sel.select(timeout=0.2):
        s = key.fileobj
        try:
            data = s.recv(65536)
        except OSError:
            continue
        if s in seen:
            continue
        seen.add(s)
        replies["error" if data[:2] == b"\x00\x05" else "started"] += 1
print(json.dumps({"sent": count, **replies}), flush=True)
time.sleep(60)
"#;

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn tftp_holds_up_under_a_flood_of_unacknowledged_reads() {
    if !can_run(&["curl", "python3"]) {
        return;
    }
    const FLOODER: &str = "10.44.0.51";
    const REQUESTS: usize = 1500;
    /// The server's descriptors: ~20 of its own (database, listeners, rsync
    /// daemon pipes, runtime; 21 measured here) plus at most 16 transfers for the
    /// flooding address (tftp::MAX_TRANSFERS_PER_CLIENT), the fetch below and a
    /// few HTTP connections. Without the per-client cap the flood held ~470.
    const FD_BOUND: usize = 64;
    // Start the server with a low soft open-files limit (inherited), as many
    // systems have, to see serve raise it.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain calls on a struct we own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_max > 1024 {
            lim.rlim_cur = 1024;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        }
    }
    let (_dir, net, srv, iface) = serve_with_iface("lf");
    net.cli
        .ip(&["addr", "add", &format!("{FLOODER}/24"), "dev", &iface])
        .unwrap_or_else(|e| panic!("{e}"));
    // serve raised its soft open-files limit to the hard one.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", srv.child.id())).unwrap();
    let files: Vec<&str> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(files[3], files[4], "soft != hard: {files:?}");
    let before = fd_count(srv.child.id());
    let mut flood = net
        .in_cli(&["python3", "-c", FLOOD, FLOODER, SERVER_IP, "undionly.kpxe"])
        .arg(REQUESTS.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(flood.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let during = fd_count(srv.child.id());
    let replies: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("flood sender said {line:?}: {e}"));
    // With every flood request still unacknowledged: the server answers and serves.
    assert!(healthy(&net), "/healthz does not answer during the flood");
    let want = std::fs::read("/usr/lib/ipxe/undionly.kpxe").unwrap();
    let (ok, _, body) = curl(&net, &["tftp://10.44.0.1/undionly.kpxe"]);
    assert!(ok, "a normal TFTP fetch failed during the flood");
    assert_eq!(body, want, "the TFTP fetch is not byte-identical");
    let after = fd_count(srv.child.id());
    let _ = flood.kill();
    let _ = flood.wait();
    eprintln!(
        "flood replies {replies}; server fds {before} before, {during} during, {after} after"
    );
    assert!(
        during < FD_BOUND && after < FD_BOUND,
        "server fds: {before} before, {during} during, {after} after the flood (bound {FD_BOUND})"
    );
    // At most 16 transfers started for the flooding address; the rest were told
    // "busy" with a TFTP error packet rather than left waiting.
    let (started, errors) = (
        replies["started"].as_u64().unwrap(),
        replies["error"].as_u64().unwrap(),
    );
    assert!(started <= 16, "{replies}");
    assert!(errors >= 1400, "too few error replies: {replies}");
    assert!(srv
        .log_text()
        .contains("answering the excess with an error"));
}

fn mode(p: &std::path::Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .mode()
        & 0o7777
}

#[test]
fn the_state_dir_is_private_and_its_secrets_0600() {
    if !can_run(&["curl", "ssh-keygen"]) {
        return;
    }
    let (dir, _net, mut srv) = serve("lm");
    let state = dir.path().join("state");
    let expected = [
        (state.clone(), 0o700),
        (state.join("admin.token"), 0o600),
        (state.join("ssh"), 0o700),
        (state.join("ssh/id_ed25519"), 0o600),
    ];
    for (path, want) in &expected {
        assert_eq!(mode(path), *want, "{} on a fresh state_dir", path.display());
    }
    let token = std::fs::read_to_string(state.join("admin.token")).unwrap();
    assert_eq!(token.trim().len(), 48, "{token:?}");
    assert!(srv.stop().success());
    // Loosened by hand (a careless copy, a umask): the next start narrows them
    // again, says so, and keeps the token.
    use std::os::unix::fs::PermissionsExt;
    for (path, _) in &expected {
        let wide = if path.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(wide)).unwrap();
    }
    let net = Net::new("ln");
    let srv = Server::start(&net, &srv.config);
    for (path, want) in &expected {
        assert_eq!(mode(path), *want, "{} after a restart", path.display());
    }
    assert_eq!(
        std::fs::read_to_string(state.join("admin.token")).unwrap(),
        token
    );
    assert!(srv.log_text().contains("narrowed permissions of"));
}
