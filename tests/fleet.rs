//! `rollout exec` against "nodes" that are network namespaces these tests
//! create, each running a real sshd that trusts a key made here, plus one
//! address where nothing answers. The node list comes from a tiny fake API on
//! loopback; one node has no `ip` and is found through its DHCP lease. The
//! server's known_hosts is written as `rollout serve` writes it from installed
//! reports (`known_hosts::record`); a rogue sshd holds another key.
//!
//! Topology (all in test-made namespaces, 10.44.77.0/24 and 10.44.78.0/24): a
//! hub namespace with a bridge, where the test's thread, the fake API and the
//! ssh client run; node namespaces plugged into the bridge with veths.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{can_run, must};
use rollout::fleet::ssh::known_hosts;
use rollout::fleet::{self, ExecArgs, Target};
use testkit::netns::Netns;

const HUB_IP: &str = "10.44.77.1";
const A_IP: &str = "10.44.77.11";
const B_IP: &str = "10.44.77.12";
/// In the subnet, nobody there: ARP fails, ssh says "No route to host".
const NOBODY_IP: &str = "10.44.77.13";
/// The rogue test's own lab.
const ROGUE_HUB_IP: &str = "10.44.78.1";
const GOOD_IP: &str = "10.44.78.11";
const ROGUE_IP: &str = "10.44.78.12";

/// A new ed25519 key pair at `path` and `path.pub`.
fn keygen(path: &Path) {
    must(&[
        "ssh-keygen",
        "-q",
        "-t",
        "ed25519",
        "-N",
        "",
        "-f",
        &path.to_string_lossy(),
    ]);
}

struct Lab {
    hub: Netns,
    nodes: Vec<Netns>,
    sshds: Vec<Child>,
}

impl Lab {
    /// `lab` tells the namespaces of tests running at the same time apart.
    fn new(lab: &str, hub_ip: &str, node_ips: &[&str]) -> Lab {
        let id = std::process::id() % 100000;
        let hub = Netns::create(&format!("r{lab}-{id}-h")).unwrap_or_else(|e| panic!("{e}"));
        hub.add_bridge("fbr0", &format!("{hub_ip}/24"))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut nodes = vec![];
        for (i, (tag, ip)) in ["a", "b"].into_iter().zip(node_ips).enumerate() {
            let ns = Netns::create(&format!("r{lab}-{id}-{tag}")).unwrap_or_else(|e| panic!("{e}"));
            hub.add_bridge_port("fbr0", &format!("p{i}"), ns.name(), "eth0")
                .and_then(|()| ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]))
                .and_then(|_| ns.ip(&["link", "set", "eth0", "up"]))
                .unwrap_or_else(|e| panic!("{e}"));
            nodes.push(ns);
        }
        Lab {
            hub,
            nodes,
            sshds: vec![],
        }
    }

    /// A real sshd in node namespace `i`, trusting only `authorized_keys`.
    fn start_sshd(&mut self, i: usize, dir: &Path, ip: &str, name: &str, authorized_keys: &Path) {
        let host_key = dir.join(format!("host_key_{name}"));
        keygen(&host_key);
        let conf = dir.join(format!("sshd_{name}.conf"));
        std::fs::write(
            &conf,
            format!(
                "ListenAddress {ip}\nPort 22\nHostKey {}\nPidFile {}/sshd_{name}.pid\nAuthorizedKeysFile {}\nPermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n# The key lives in a temp dir, not ~root/.ssh.\nStrictModes no\nSetEnv NODE={name}\nForceCommand {}\n",
                host_key.display(),
                dir.display(),
                authorized_keys.display(),
                dir.join("dispatch.sh").display()
            ),
        )
        .unwrap();
        // sshd's privilege separation directory.
        std::fs::create_dir_all("/run/sshd").unwrap();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                self.nodes[i].name(),
                "/usr/sbin/sshd",
                "-D",
                "-e",
                "-f",
            ])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("sshd_{name}.log"))).unwrap())
            .spawn()
            .unwrap();
        self.sshds.push(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let up = Command::new("ip")
                .args(["netns", "exec", self.nodes[i].name(), "bash", "-c"])
                .arg(format!("exec 3<>/dev/tcp/{ip}/22"))
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if up {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "sshd for {name} did not listen: {}",
                std::fs::read_to_string(dir.join(format!("sshd_{name}.log"))).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Moves the calling thread (and threads and processes it starts later)
    /// into the hub namespace.
    fn enter_hub(&self) {
        let f = std::fs::File::open(format!("/var/run/netns/{}", self.hub.name())).unwrap();
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.sshds {
            let _ = c.kill();
            let _ = c.wait();
        }
        // `hub` and `nodes` drop next and delete their namespaces.
    }
}

/// Answers `GET /api/v1/nodes` with `body`, forever (loopback of the hub).
fn fake_api(body: String) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 2048];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match c.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let reply = if buf.starts_with(b"GET /api/v1/nodes ") {
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into()
            };
            let _ = c.write_all(reply.as_bytes());
        }
    });
    port
}

fn exec(
    config: &rollout::config::Config,
    target: Target,
    timeout: u64,
    cmd: &[&str],
) -> (i32, String) {
    let mut out = Vec::new();
    let code = fleet::run_exec_to(
        ExecArgs {
            target,
            parallel: 3,
            timeout,
            command: cmd.iter().map(|s| s.to_string()).collect(),
        },
        config,
        &mut out,
    )
    .unwrap();
    (code, String::from_utf8(out).unwrap())
}

fn line_of<'a>(out: &'a str, host: &str) -> &'a str {
    out.lines()
        .find(|l| l.split_whitespace().next() == Some(host))
        .unwrap_or_else(|| panic!("no line for {host} in:\n{out}"))
}

fn nodes(pattern: &str) -> Target {
    Target {
        nodes: Some(pattern.into()),
        all: false,
    }
}

/// The server's state dir with its SSH key, and the script every test sshd
/// runs commands through (it leaves `ran-NODE` behind for every command).
struct Fixture {
    _tmp: tempfile::TempDir,
    dir: std::path::PathBuf,
    state: std::path::PathBuf,
    authorized: std::path::PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path().to_path_buf();
        let state = t.join("state");
        std::fs::create_dir_all(state.join("ssh")).unwrap();
        let key = state.join("ssh/id_ed25519");
        keygen(&key);
        let authorized = t.join("authorized_keys");
        std::fs::copy(key.with_extension("pub"), &authorized).unwrap();
        // The nodes share this machine's file system, which has no rollout-sync:
        // stand in for it, passing every other command through.
        let dispatch = t.join("dispatch.sh");
        std::fs::write(
            &dispatch,
            format!("#!/bin/sh\ntouch '{}/ran-'\"$NODE\"\nif [ \"$SSH_ORIGINAL_COMMAND\" = \"/var/lib/rollout/bin/rollout-sync sync\" ]; then\n  echo 'rollout-sync: syncing rsync://10.44.77.1/web-3/ onto /'\n  if [ \"$NODE\" = a ]; then echo 'updated 2 → 3, 1234 bytes transferred, reboot needed: yes'; else echo 'up to date (serial 3)'; fi\n  exit 0\nfi\nexec sh -c \"$SSH_ORIGINAL_COMMAND\"\n", t.display()),
        )
        .unwrap();
        std::fs::set_permissions(
            &dispatch,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        Fixture {
            _tmp: tmp,
            dir: t,
            state,
            authorized,
        }
    }

    /// The public host key of the test sshd `name` (after `start_sshd`).
    fn host_key(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("host_key_{name}.pub")))
            .unwrap()
            .trim()
            .to_string()
    }

    /// What `rollout serve` does with an installed report: the node's keys
    /// under its hostname and address.
    fn record_keys(&self, hostname: &str, address: &str, key: &str) {
        let k = known_hosts::HostKey::parse(key).unwrap();
        known_hosts::record(
            &self.state.join("ssh/known_hosts"),
            &[hostname.to_string(), address.to_string()],
            &[k],
        )
        .unwrap();
    }

    fn config(&self, api: serde_json::Value) -> rollout::config::Config {
        let port = fake_api(api.to_string());
        rollout::config::Config::parse(&format!(
            "state_dir = \"{}\"\n[server]\naddress = \"127.0.0.1\"\nhttp_port = {port}\n",
            self.state.display()
        ))
        .unwrap()
    }

    fn ran_on(&self, node: &str) -> bool {
        self.dir.join(format!("ran-{node}")).exists()
    }
}

fn bare(key: &str) -> String {
    known_hosts::HostKey::parse(key).unwrap().line()
}

#[test]
fn exec_over_ssh_reports_each_node_and_a_summary() {
    if !can_run(&["ip", "ssh", "ssh-keygen", "sshd"]) {
        return;
    }
    let f = Fixture::new();
    let (t, state, authorized) = (f.dir.as_path(), &f.state, &f.authorized);

    // beta has no fixed address: the server's lease table knows it.
    let conn = rusqlite::Connection::open(state.join("rollout.db")).unwrap();
    conn.execute_batch(&format!(
        "CREATE TABLE leases (ip TEXT PRIMARY KEY, mac TEXT NOT NULL, expires INTEGER NOT NULL, state TEXT NOT NULL);
         INSERT INTO leases VALUES ('{B_IP}', '52:54:00:77:00:02', 4000000000, 'bound');"
    ))
    .unwrap();
    drop(conn);

    let mut lab = Lab::new("f", HUB_IP, &[A_IP, B_IP]);
    lab.start_sshd(0, t, A_IP, "a", authorized);
    lab.start_sshd(1, t, B_IP, "b", authorized);
    lab.enter_hub();
    let (ka, kb) = (f.host_key("a"), f.host_key("b"));
    f.record_keys("alpha", A_IP, &ka);
    f.record_keys("beta", B_IP, &kb);
    f.record_keys("gamma", NOBODY_IP, &ka);
    let known_before = std::fs::read_to_string(state.join("ssh/known_hosts")).unwrap();

    let api = serde_json::json!([
        {"mac": "52:54:00:77:00:01", "hostname": "alpha", "ip": A_IP, "state": "installed", "serial": 3, "host_keys": [bare(&ka)]},
        {"mac": "52:54:00:77:00:02", "hostname": "beta", "ip": null, "state": "installed", "serial": 3, "host_keys": [bare(&kb)]},
        {"mac": "52:54:00:77:00:03", "hostname": "gamma", "ip": NOBODY_IP, "state": "installed", "serial": 2, "host_keys": [bare(&ka)]},
    ]);
    let config = f.config(api);

    // Every node: alpha succeeds, beta's command fails, gamma is not there.
    let (code, out) = exec(
        &config,
        Target {
            nodes: None,
            all: true,
        },
        30,
        &["echo node=$NODE; test \"$NODE\" = a"],
    );
    assert_eq!(line_of(&out, "alpha"), "alpha  exit=0  node=a", "{out}");
    assert_eq!(line_of(&out, "beta"), "beta   exit=1  node=b", "{out}");
    let gamma = line_of(&out, "gamma");
    assert!(gamma.starts_with("gamma  UNREACHABLE: "), "{out}");
    assert!(gamma.contains(NOBODY_IP), "{out}");
    assert_eq!(out.lines().count(), 4, "{out}");
    assert_eq!(
        out.lines().last(),
        Some("1 ok, 1 failed, 1 unreachable"),
        "{out}"
    );
    assert_ne!(code, 0);
    assert_eq!(
        std::fs::read_to_string(state.join("ssh/known_hosts")).unwrap(),
        known_before,
        "ssh never adds to the server's known_hosts"
    );

    // A pattern picks nodes; several arguments run as that exact argv.
    let (code, out) = exec(
        &config,
        nodes("al*"),
        30,
        &["sh", "-c", "echo \"$NODE  two  spaces\""],
    );
    assert_eq!(
        out,
        "alpha  exit=0  a  two  spaces\n1 ok, 0 failed, 0 unreachable\n"
    );
    assert_eq!(code, 0);

    // The per-node timeout kills a hanging command.
    let started = Instant::now();
    let (code, out) = exec(&config, nodes("beta"), 2, &["echo started; sleep 30"]);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "timeout not applied"
    );
    assert_eq!(
        line_of(&out, "beta"),
        "beta  TIMEOUT after 2 s  started",
        "{out}"
    );
    assert!(out.ends_with("0 ok, 1 failed, 0 unreachable\n"), "{out}");
    assert_ne!(code, 0);

    // `rollout sync`: each node's serial from what rollout-sync printed.
    let mut buf = Vec::new();
    let code = fleet::run_sync_to(
        fleet::SyncArgs {
            target: Target {
                nodes: None,
                all: true,
            },
            parallel: 3,
            timeout: 30,
        },
        &config,
        &mut buf,
    )
    .unwrap();
    let out = String::from_utf8(buf).unwrap();
    assert_eq!(
        line_of(&out, "alpha"),
        "alpha  exit=0  serial 3 (updated 2 → 3, 1234 bytes transferred, reboot needed: yes)",
        "{out}"
    );
    assert_eq!(
        line_of(&out, "beta"),
        "beta   exit=0  serial 3 (up to date)",
        "{out}"
    );
    assert!(
        line_of(&out, "gamma").starts_with("gamma  UNREACHABLE: "),
        "{out}"
    );
    assert!(
        out.ends_with("2 ok, 0 failed, 1 unreachable\nreboot needed on: alpha\n"),
        "{out}"
    );
    assert_ne!(code, 0);

    // A pattern that matches nobody is an error naming the known nodes.
    let err = fleet::run_exec_to(
        ExecArgs {
            target: nodes("web*"),
            parallel: 1,
            timeout: 5,
            command: vec!["true".into()],
        },
        &config,
        &mut Vec::new(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("web*") && err.contains("alpha, beta, gamma"),
        "{err}"
    );
}

/// The attacker's view: a machine on the provisioning network runs its own
/// sshd (trusting the server's key, so it would run anything it is sent) at a
/// node's address, and PXE-boots once to become a discovered record.
#[test]
fn a_rogue_sshd_never_sees_a_command() {
    if !can_run(&["ip", "ssh", "ssh-keygen", "sshd"]) {
        return;
    }
    let f = Fixture::new();
    let mut lab = Lab::new("g", ROGUE_HUB_IP, &[GOOD_IP, ROGUE_IP]);
    lab.start_sshd(0, &f.dir, GOOD_IP, "good", &f.authorized);
    lab.start_sshd(1, &f.dir, ROGUE_IP, "rogue", &f.authorized);
    lab.enter_hub();
    // The victim's real key: what its installer reported. The rogue has another.
    let real = f.dir.join("victim_real");
    keygen(&real);
    let victim_key = std::fs::read_to_string(real.with_extension("pub")).unwrap();
    let good_key = f.host_key("good");
    f.record_keys("good", GOOD_IP, &good_key);
    f.record_keys("victim", ROGUE_IP, &victim_key);
    let config = f.config(serde_json::json!([
        {"mac": "52:54:00:78:00:01", "hostname": "good", "ip": GOOD_IP, "state": "installed", "host_keys": [bare(&good_key)]},
        {"mac": "52:54:00:78:00:02", "hostname": "victim", "ip": ROGUE_IP, "state": "installed", "host_keys": [bare(&victim_key)]},
        {"mac": "52:54:00:78:78:78", "hostname": "node-787878", "ip": ROGUE_IP, "state": "discovered"},
        // Keys in the record, none in known_hosts (a failed write): not run either.
        {"mac": "52:54:00:78:00:03", "hostname": "stale", "ip": GOOD_IP, "state": "failed", "host_keys": [bare(&good_key)]},
    ]));
    let (code, out) = exec(&config, nodes("stale"), 30, &["true"]);
    assert!(
        line_of(&out, "stale").contains("REFUSED: ")
            && out.contains("has no entry for stale")
            && out.contains("rollout node reinstall stale"),
        "{out}"
    );
    assert_ne!(code, 0);
    assert!(!f.ran_on("good"), "ran without a known host key: {out}");

    let all = || Target {
        nodes: None,
        all: true,
    };

    let (code, out) = exec(&config, all(), 30, &["echo hello from $NODE"]);
    assert_eq!(
        line_of(&out, "good"),
        "good    exit=0  hello from good",
        "{out}"
    );
    let victim = line_of(&out, "victim");
    assert!(
        victim.starts_with("victim  REFUSED: host key mismatch")
            && victim.contains(ROGUE_IP)
            && victim.contains("victim's installer"),
        "{out}"
    );
    assert!(
        !out.contains("node-787878  "),
        "a discovered record is not contacted by --all: {out}"
    );
    assert!(
        out.contains("2 node(s) not installed, not contacted"),
        "{out}"
    );
    assert!(
        out.ends_with("1 ok, 0 failed, 0 unreachable, 1 refused\n"),
        "{out}"
    );
    assert_ne!(code, 0);
    assert!(f.ran_on("good"), "the legitimate node ran the command");
    assert!(!f.ran_on("rogue"), "the rogue sshd ran a command: {out}");

    // Named explicitly, the discovered record is refused, saying why.
    let (code, out) = exec(&config, nodes("node-*"), 30, &["true"]);
    assert!(
        line_of(&out, "node-787878").contains("REFUSED: not contacted: discovered"),
        "{out}"
    );
    assert_ne!(code, 0);

    // `rollout sync` checks the same way.
    let mut buf = Vec::new();
    let code = fleet::run_sync_to(
        fleet::SyncArgs {
            target: nodes("victim"),
            parallel: 1,
            timeout: 30,
        },
        &config,
        &mut buf,
    )
    .unwrap();
    let out = String::from_utf8(buf).unwrap();
    assert!(
        line_of(&out, "victim").contains("REFUSED: host key mismatch"),
        "{out}"
    );
    assert_ne!(code, 0);
    assert!(!f.ran_on("rogue"), "the rogue sshd ran a command: {out}");
}
