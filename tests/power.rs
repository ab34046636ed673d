//! The power drivers against real peers: IPMI against OpenIPMI's `ipmi_sim`
//! (driven by the real `ipmitool`), Redfish against sushy-tools' emulator (its
//! fake driver: no libvirt here), Wake-on-LAN captured in a test namespace.
//! Everything listens on 127.0.0.1 or inside a namespace the test creates.

mod common;

use rollout::config::{BmcConfig, BmcDriver};
use rollout::power::{self, PowerError, PowerState, Target};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NODE: &str = "rack1-node1";
const MAC: &str = "52:54:00:aa:00:01";
const PASSWORD: &str = "s3cret-BMC-pw";

fn bmc(driver: BmcDriver) -> BmcConfig {
    BmcConfig {
        driver,
        address: None,
        port: None,
        username: None,
        password_file: None,
        system: None,
        verify_tls: true,
        socket: None,
        broadcast: None,
        boot_mode: None,
    }
}

fn target<'a>(bmc: &'a BmcConfig, interface: Option<&'a str>) -> Target<'a> {
    Target {
        node: NODE,
        mac: MAC,
        bmc,
        interface,
        timeout: Duration::from_secs(6),
    }
}

fn secret_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("{text}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// `cfg` with a wrong password: the typed bad-credentials error, naming the
/// node and `bmc`, and neither password. Returns its text.
fn wrong_password_error(cfg: &BmcConfig, dir: &Path, bmc: &str) -> String {
    let mut bad = cfg.clone();
    bad.password_file = Some(secret_file(dir, "wrong", "not-the-password"));
    let e = power::driver(&target(&bad, None))
        .unwrap()
        .status()
        .unwrap_err();
    assert!(matches!(e, PowerError::BadCredentials { .. }), "{e:?}");
    let text = e.to_string();
    assert!(text.contains(NODE) && text.contains(bmc), "{text}");
    assert!(
        !text.contains(PASSWORD) && !text.contains("not-the-password"),
        "{text}"
    );
    text
}

fn basic_auth(user: &str, password: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child killed on drop.
struct Daemon(Child);
impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// ipmi_sim with one BMC on 127.0.0.1:`port`, user admin/PASSWORD, whose
/// chassis is a small script keeping the power and boot device in files (the
/// `chassis_control` program interface of ipmi_sim) and logging each call.
fn start_ipmi_sim(dir: &Path, port: u16) -> Daemon {
    let chassis = dir.join("chassis");
    std::fs::create_dir_all(&chassis).unwrap();
    let script = dir.join("chassis.sh");
    std::fs::write(
        &script,
        r#"#!/bin/sh
# ipmi_sim calls: STATE get NAME… | STATE set NAME VALUE…
d="$1"; op="$2"; shift 2
echo "$op $*" >> "$d/calls"
if [ "$op" = get ]; then
  for n in "$@"; do printf '%s:%s\n' "$n" "$(cat "$d/$n" 2>/dev/null || echo 0)"; done
else
  while [ $# -ge 2 ]; do printf '%s' "$2" > "$d/$1"; shift 2; done
fi
"#,
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let lan = dir.join("lan.conf");
    std::fs::write(
        &lan,
        format!(
            r#"name "rollouttest"
set_working_mc 0x20
  startlan 1
    addr 127.0.0.1 {port}
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    guid a123456789abcdefa123456789abcdef
  endlan
  chassis_control "{} {}"
  user 2 true "admin" "{PASSWORD}" admin 10 none md2 md5 straight
"#,
            script.display(),
            chassis.display()
        ),
    )
    .unwrap();
    let emu = dir.join("sim.emu");
    std::fs::write(
        &emu,
        "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\nmc_enable 0x20\n",
    )
    .unwrap();
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let child = Command::new("ipmi_sim")
        .arg("-c")
        .arg(&lan)
        .arg("-f")
        .arg(&emu)
        .arg("-s")
        .arg(&state)
        .arg("-n")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start ipmi_sim");
    Daemon(child)
}

/// The chassis' "set" calls once they number `n` (ipmi_sim powers a cycled
/// chassis back on from a timer, a moment after answering).
fn sets_after(dir: &Path, n: usize) -> Vec<String> {
    let sets = || -> Vec<String> {
        calls(dir)
            .into_iter()
            .filter(|c| c.starts_with("set"))
            .collect()
    };
    wait_for("the chassis calls", Duration::from_secs(10), || {
        sets().len() >= n
    });
    sets()
}

fn calls(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("chassis/calls"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn ipmi_against_ipmi_sim() {
    if !testkit::prereq::require_tools(&[("ipmi_sim", "openipmi"), ("ipmitool", "ipmitool")]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_udp_port();
    let _sim = start_ipmi_sim(dir.path(), port);
    let mut cfg = bmc(BmcDriver::Ipmi);
    cfg.address = Some("127.0.0.1".into());
    cfg.port = Some(port);
    cfg.username = Some("admin".into());
    cfg.password_file = Some(secret_file(dir.path(), "pw", PASSWORD));
    let d = power::driver(&target(&cfg, None)).unwrap();
    // The simulator needs a moment to listen.
    wait_for("ipmi_sim", Duration::from_secs(10), || d.status().is_ok());
    let first = d.status().unwrap();
    assert_eq!(first, PowerState::Off);
    d.on().unwrap();
    assert_eq!(d.status().unwrap(), PowerState::On);
    d.boot_once_pxe(true).unwrap();
    d.cycle().unwrap();
    sets_after(dir.path(), 4);
    assert_eq!(d.status().unwrap(), PowerState::On);
    d.off().unwrap();
    assert_eq!(d.status().unwrap(), PowerState::Off);
    // What the BMC's chassis saw, in order (status reads in between).
    assert_eq!(
        sets_after(dir.path(), 5),
        [
            "set power 1",
            "set boot pxe",
            "set power 0",
            "set power 1",
            "set power 0"
        ],
        "chassis calls"
    );

    // Reinstall's power half on a node that is off: PXE once, then on.
    let done = power::reinstall_now(d.as_ref(), true).unwrap();
    assert_eq!(done, ["boot_once_pxe", "on"]);
    assert_eq!(d.status().unwrap(), PowerState::On);

    // A wrong password: the typed error, naming node and BMC, without the password.
    let text = wrong_password_error(&cfg, dir.path(), &format!("127.0.0.1:{port}"));
    assert!(
        text.contains("check bmc.username and the password"),
        "{text}"
    );

    // Nobody listening: unreachable, not "bad credentials".
    let mut gone = cfg.clone();
    gone.port = Some(free_udp_port());
    let e = power::driver(&target(&gone, None))
        .unwrap()
        .status()
        .unwrap_err();
    assert!(matches!(e, PowerError::Unreachable { .. }), "{e:?}");
    assert!(!e.to_string().contains(PASSWORD));

    // A world-readable password file is refused before anything is sent.
    let open = dir.path().join("open");
    std::fs::write(&open, PASSWORD).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut leaky = cfg.clone();
    leaky.password_file = Some(open);
    let e = power::driver(&target(&leaky, None))
        .unwrap()
        .status()
        .unwrap_err();
    assert!(matches!(e, PowerError::Password { .. }), "{e:?}");
    assert!(e.to_string().contains("chmod 600"), "{e}");
}

const SUSHY: &str = "/opt/rollout-sushy/bin/sushy-emulator";
const SYSTEM_UUID: &str = "27946b59-9e44-4fa7-8e91-f3527a1ef094";

#[test]
fn redfish_against_sushy_tools() {
    if !Path::new(SUSHY).exists() {
        testkit::prereq::missing(format!(
            "{SUSHY} is missing (sushy-tools from PyPI; scripts/setup.sh installs it into a venv there)"
        ));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // HTTP basic authentication, as BMCs ask: a bcrypt htpasswd entry, made
    // with the emulator's own Python (its venv has bcrypt).
    let python = Path::new(SUSHY).with_file_name("python3");
    let hash = Command::new(&python)
        .args([
            "-c",
            &format!(
                "import bcrypt; print(bcrypt.hashpw(b'{PASSWORD}', bcrypt.gensalt()).decode())"
            ),
        ])
        .output()
        .unwrap();
    assert!(hash.status.success(), "{hash:?}");
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(
        &htpasswd,
        format!("admin:{}\n", String::from_utf8_lossy(&hash.stdout).trim()),
    )
    .unwrap();
    let conf = dir.path().join("emulator.conf");
    std::fs::write(
        &conf,
        format!(
            "SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'\nSUSHY_EMULATOR_AUTH_FILE = '{}'\nSUSHY_EMULATOR_STATE_DIR = '{}'\nSUSHY_EMULATOR_FAKE_DRIVER = True\nSUSHY_EMULATOR_FAKE_SYSTEMS = [{{'uuid': '{SYSTEM_UUID}', 'name': '{NODE}', 'power_state': 'Off', 'nics': [{{'mac': '{MAC}', 'ip': '10.44.0.11'}}]}}]\n",
            htpasswd.display(),
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let port = testkit::ports::free_port();
    let _emu = Daemon(
        Command::new(SUSHY)
            .arg("--config")
            .arg(&conf)
            .args(["-i", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sushy-emulator"),
    );
    let mut cfg = bmc(BmcDriver::Redfish);
    cfg.address = Some(format!("http://127.0.0.1:{port}"));
    cfg.system = Some(format!("/redfish/v1/Systems/{SYSTEM_UUID}"));
    cfg.username = Some("admin".into());
    cfg.password_file = Some(secret_file(dir.path(), "pw", PASSWORD));
    let d = power::driver(&target(&cfg, None)).unwrap();
    wait_for("sushy-emulator", Duration::from_secs(20), || {
        d.status().is_ok()
    });
    assert_eq!(d.status().unwrap(), PowerState::Off);
    // The fake driver applies power changes 1–11 s later, as real hardware might.
    let settle = |want: PowerState| {
        wait_for(&format!("power {want:?}"), Duration::from_secs(20), || {
            d.status().unwrap() == want
        })
    };
    d.on().unwrap();
    settle(PowerState::On);
    d.boot_once_pxe(true).unwrap();
    let sys: serde_json::Value = ureq::get(&format!(
        "http://127.0.0.1:{port}/redfish/v1/Systems/{SYSTEM_UUID}"
    ))
    .set(
        "Authorization",
        &format!("Basic {}", basic_auth("admin", PASSWORD)),
    )
    .call()
    .unwrap()
    .into_json()
    .unwrap();
    assert_eq!(sys["Boot"]["BootSourceOverrideTarget"], "Pxe", "{sys}");
    assert_eq!(sys["Boot"]["BootSourceOverrideMode"], "UEFI", "{sys}");
    // A cycle (ForceRestart here: the emulator offers no PowerCycle, and refuses
    // types it does not know, so a wrong choice fails here) ends on.
    d.cycle().unwrap();
    settle(PowerState::On);
    d.off().unwrap();
    settle(PowerState::Off);

    // A wrong password: the typed error naming node and BMC, without the password.
    let text = wrong_password_error(&cfg, dir.path(), &format!("127.0.0.1:{port}"));
    assert!(text.contains("HTTP 401"), "{text}");

    // A system that does not exist is a rejected operation naming the path.
    let mut wrong = cfg.clone();
    wrong.system = Some("/redfish/v1/Systems/nope".into());
    let e = power::driver(&target(&wrong, None))
        .unwrap()
        .on()
        .unwrap_err();
    assert!(matches!(e, PowerError::Rejected { .. }), "{e:?}");
    assert!(e.to_string().contains("HTTP 404"), "{e}");
    // Nobody listening: unreachable.
    let mut gone = cfg.clone();
    gone.address = Some(format!("http://127.0.0.1:{}", testkit::ports::free_port()));
    let e = power::driver(&target(&gone, None))
        .unwrap()
        .status()
        .unwrap_err();
    assert!(matches!(e, PowerError::Unreachable { .. }), "{e:?}");
    assert!(e.to_string().contains(NODE), "{e}");
}

#[test]
fn wake_on_lan_packet_is_broadcast_on_the_interface() {
    if !testkit::prereq::require_root("network namespaces for the Wake-on-LAN test")
        || !testkit::prereq::require_tools(&[("ip", "iproute2")])
    {
        return;
    }
    let ns = testkit::netns::Netns::create("rollout-wol").unwrap();
    // A veth pair inside the namespace: the packet leaves on one end and a
    // plain UDP socket on port 9 receives the broadcast.
    ns.ip(&[
        "link", "add", "wol0", "type", "veth", "peer", "name", "wol1",
    ])
    .unwrap();
    ns.ip(&["addr", "add", "10.98.0.1/24", "dev", "wol0"])
        .unwrap();
    ns.ip(&["addr", "add", "10.98.0.2/24", "dev", "wol1"])
        .unwrap();
    ns.ip(&["link", "set", "wol0", "up"]).unwrap();
    ns.ip(&["link", "set", "wol1", "up"]).unwrap();
    let got = ns
        .run_in(|| {
            let rx = std::net::UdpSocket::bind("0.0.0.0:9").unwrap();
            rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut cfg = bmc(BmcDriver::Wol);
            cfg.broadcast = Some("10.98.0.255".parse().unwrap());
            let d = power::driver(&target(&cfg, Some("wol0"))).unwrap();
            assert_eq!(d.status().unwrap(), PowerState::Unknown);
            d.on().unwrap();
            let e = d.off().unwrap_err().to_string();
            assert!(e.contains("can only power a node on"), "{e}");
            let mut buf = [0u8; 200];
            let (n, _from) = rx.recv_from(&mut buf).expect("the magic packet");
            buf[..n].to_vec()
        })
        .unwrap();
    let mac = [0x52, 0x54, 0x00, 0xaa, 0x00, 0x01];
    let mut want = vec![0xffu8; 6];
    for _ in 0..16 {
        want.extend_from_slice(&mac);
    }
    assert_eq!(got, want);
}

/// The operator's side, through a real `rollout serve` and the CLI: power
/// status/on, `reinstall --now` (PXE once, then cycle), each recorded with who
/// did it; a BMC that went away leaves the node marked and the error shown.
#[test]
fn cli_and_api_power_a_node_and_reinstall_it_now() {
    if !testkit::prereq::require_tools(&[("ipmi_sim", "openipmi"), ("ipmitool", "ipmitool")]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_udp_port();
    let sim = start_ipmi_sim(dir.path(), port);
    let pw = secret_file(dir.path(), "bmc-pw", PASSWORD);
    let cfg = common::loopback::write_config(dir.path(), testkit::ports::free_port());
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "ip = \"127.0.0.11\"\n",
        &format!(
            "ip = \"127.0.0.11\"\nbmc = {{ driver = \"ipmi\", address = \"127.0.0.1\", port = {port}, username = \"admin\", password_file = \"{}\", boot_mode = \"legacy\" }}\n",
            pw.display()
        ),
    );
    // A BMC that does not answer is given up on after 4 s.
    std::fs::write(&cfg, format!("{text}\n[power]\ntimeout = 4\n")).unwrap();
    // ipmi_sim answers before the server starts: its first poll sees "off".
    let mut direct = bmc(BmcDriver::Ipmi);
    direct.address = Some("127.0.0.1".into());
    direct.port = Some(port);
    direct.username = Some("admin".into());
    direct.password_file = Some(pw.clone());
    let d = power::driver(&target(&direct, None)).unwrap();
    wait_for("ipmi_sim", Duration::from_secs(10), || d.status().is_ok());
    let s = common::loopback::Server::start(dir.path());

    // Without a credential: refused.
    let (st, _) = s.req(
        "POST",
        "/api/v1/nodes/node1/power",
        Some(serde_json::json!({"action": "on"})),
        false,
    );
    assert_eq!(st, 401);
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let (ok, out, err) = s.cli(&["node", "power", "node1", "status"]);
        if ok {
            assert_eq!(out.trim(), "node1: power off");
            break;
        }
        assert!(Instant::now() < end, "power status never worked: {err}");
        std::thread::sleep(Duration::from_millis(300));
    }
    // The background poll asks every BMC once at start-up: its answer is in
    // the node's history.
    wait_for("the first poll", Duration::from_secs(15), || {
        let (_, hist) = s.req("GET", "/api/v1/nodes/node1/history", None, true);
        hist.as_array()
            .unwrap()
            .iter()
            .any(|h| h["event"]["kind"] == "power_state" && h["event"]["state"] == "off")
    });
    // A read-only operator may see the state but not change it; a maintainer
    // may, and the history names them.
    let token = |name: &str, role: &str| {
        let (ok, out, err) = s.cli(&["operator", "add", name, "--role", role]);
        assert!(ok, "{err}");
        out.trim().to_string()
    };
    let (viewer, ops) = (token("viewer", "read"), token("ops", "maintain"));
    let call = |method: &str, tok: &str, body: Option<serde_json::Value>| {
        let r = ureq::request(method, &s.url("/api/v1/nodes/node1/power"))
            .set("Authorization", &format!("Bearer {tok}"));
        let result = match body {
            Some(b) => r.send_json(b),
            None => r.call(),
        };
        match result {
            Ok(resp) => resp.status(),
            Err(ureq::Error::Status(code, _)) => code,
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(call("GET", &viewer, None), 200);
    let off = serde_json::json!({"action": "off"});
    assert_eq!(call("POST", &viewer, Some(off.clone())), 403);
    assert_eq!(call("POST", &ops, Some(off)), 200);
    let (ok, out, err) = s.cli(&["node", "power", "node1", "on"]);
    assert!(ok, "{out}{err}");
    let (st, v) = s.req("GET", "/api/v1/nodes/node1/power", None, true);
    assert_eq!((st, v["state"].as_str()), (200, Some("on")), "{v}");

    let (ok, out, err) = s.cli(&["node", "reinstall", "node1", "--now"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("boot_once_pxe → cycle"), "{out}");
    assert_eq!(
        sets_after(dir.path(), 5),
        [
            "set power 0",
            "set power 1",
            "set boot pxe",
            "set power 0",
            "set power 1"
        ]
    );
    let (_, hist) = s.req("GET", "/api/v1/nodes/node1/history", None, true);
    let power_rows: Vec<&serde_json::Value> = hist
        .as_array()
        .unwrap()
        .iter()
        .map(|h| &h["event"])
        .filter(|e| e["kind"] == "power")
        .collect();
    assert_eq!(power_rows.len(), 3, "{hist}");
    assert_eq!(power_rows[0]["action"], "off");
    assert_eq!(power_rows[0]["by"], "ops");
    assert_eq!(power_rows[1]["action"], "on");
    assert_eq!(power_rows[2]["action"], "reinstall_now");
    assert!(
        power_rows
            .iter()
            .all(|e| e["by"].is_string() && e["result"] == "ok"),
        "{hist}"
    );
    assert!(s
        .history_kinds("node1")
        .contains(&"reinstall_requested".to_string()));

    // The BMC goes away: the reinstall is still marked, the error names the
    // node and the BMC, and the history has it.
    drop(sim);
    let (ok, out, err) = s.cli(&["node", "reinstall", "node1", "--now"]);
    assert!(!ok, "{out}{err}");
    assert!(
        err.contains("node1") && err.contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
    assert!(err.contains("marked for reinstall"), "{err}");
    let (_, node) = s.req("GET", "/api/v1/nodes/node1", None, true);
    assert_eq!(node["state"], "pending", "{node}");
    let (_, hist) = s.req("GET", "/api/v1/nodes/node1/history", None, true);
    let last = hist
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|h| &h["event"])
        .find(|e| e["kind"] == "power")
        .unwrap();
    assert_eq!(last["result"], "failed", "{hist}");
    assert!(
        last["error"].as_str().unwrap().contains("does not answer"),
        "{hist}"
    );
    // Each BMC call is on /metrics, by driver, operation and outcome.
    let metrics = s.admin_text("/metrics");
    let calls = |op: &str, outcome: &str| -> f64 {
        let series = format!(
            r#"rollout_bmc_calls_total{{driver="ipmi",operation="{op}",outcome="{outcome}"}}"#
        );
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&series)?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    assert_eq!(calls("off", "ok"), 1.0, "{metrics}");
    assert_eq!(calls("on", "ok"), 1.0, "{metrics}");
    assert_eq!(calls("boot_once_pxe", "ok"), 1.0, "{metrics}");
    assert_eq!(calls("cycle", "ok"), 1.0, "{metrics}");
    assert!(
        calls("status", "ok") >= 2.0,
        "the poll and the CLI: {metrics}"
    );
    assert_eq!(calls("status", "unreachable"), 1.0, "{metrics}");
    // --all names every declared node.
    let (ok, out, err) = s.cli(&["node", "reinstall", "--all"]);
    assert!(
        ok && out.contains("node1 (52:54:00:00:00:01) will reinstall"),
        "{out}{err}"
    );
    // The password is nowhere: not in the history, the API, nor the log.
    for text in [hist.to_string(), node.to_string(), s.log_text(), err] {
        assert!(!text.contains(PASSWORD), "password leaked: {text}");
    }
}
