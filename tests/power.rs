//! The power drivers against real peers: IPMI against OpenIPMI's `ipmi_sim`
//! (driven by the real `ipmitool`), Redfish against sushy-tools' emulator (its
//! fake driver: no libvirt here), Wake-on-LAN captured in a test namespace.
//! Everything listens on 127.0.0.1 or inside a namespace the test creates.

mod common;

use common::bmc::{
    free_udp_port, secret_file, sets_after, start_ipmi_sim, start_sushy, sushy_available, wait_for,
    SYSTEM_UUID,
};
use rollout::config::{BmcConfig, BmcDriver};
use rollout::power::{self, PowerError, PowerState, Target};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const NODE: &str = "rack1-node1";
const MAC: &str = "52:54:00:aa:00:01";
const PASSWORD: &str = "s3cret-BMC-pw";

fn bmc(driver: BmcDriver) -> BmcConfig {
    BmcConfig::new(driver)
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

#[test]
fn ipmi_against_ipmi_sim() {
    if !testkit::prereq::require_tools(&[("ipmi_sim", "openipmi"), ("ipmitool", "ipmitool")]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_udp_port();
    let _sim = start_ipmi_sim(dir.path(), port, PASSWORD);
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

/// Drives the emulator's system through `cfg` once it answers: off at first,
/// on, next boot PXE (`efi` or legacy), a cycle (ForceRestart here: the
/// emulator offers no PowerCycle, and refuses types it does not know, so a
/// wrong choice fails here) that ends on, then off. The fake driver applies
/// power changes 1–11 s later, as real hardware might. Returns the driver.
fn drive_redfish(cfg: &BmcConfig, efi: bool) -> Box<dyn power::PowerDriver> {
    let d = power::driver(&target(cfg, None)).unwrap();
    wait_for("sushy-emulator", Duration::from_secs(20), || {
        d.status().is_ok()
    });
    assert_eq!(d.status().unwrap(), PowerState::Off);
    let settle = |want: PowerState| {
        wait_for(&format!("power {want:?}"), Duration::from_secs(20), || {
            d.status().unwrap() == want
        })
    };
    d.on().unwrap();
    settle(PowerState::On);
    d.boot_once_pxe(efi).unwrap();
    d.cycle().unwrap();
    settle(PowerState::On);
    d.off().unwrap();
    settle(PowerState::Off);
    d
}

/// The emulator's system resource as the BMC shows it (with admin's password).
fn read_system(agent: &ureq::Agent, base: &str) -> serde_json::Value {
    agent
        .get(&format!("{base}/redfish/v1/Systems/{SYSTEM_UUID}"))
        .set(
            "Authorization",
            &format!("Basic {}", basic_auth("admin", PASSWORD)),
        )
        .call()
        .unwrap()
        .into_json()
        .unwrap()
}

#[test]
fn redfish_against_sushy_tools() {
    if !sushy_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_emu, port) = start_sushy(dir.path(), NODE, MAC, PASSWORD, None);
    let mut cfg = bmc(BmcDriver::Redfish);
    cfg.address = Some(format!("http://127.0.0.1:{port}"));
    cfg.system = Some(format!("/redfish/v1/Systems/{SYSTEM_UUID}"));
    cfg.username = Some("admin".into());
    cfg.password_file = Some(secret_file(dir.path(), "pw", PASSWORD));
    drive_redfish(&cfg, true);
    let sys = read_system(&ureq::agent(), &format!("http://127.0.0.1:{port}"));
    assert_eq!(sys["Boot"]["BootSourceOverrideTarget"], "Pxe", "{sys}");
    assert_eq!(sys["Boot"]["BootSourceOverrideMode"], "UEFI", "{sys}");

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

/// A self-signed certificate for 127.0.0.1 (as BMCs ship), made with openssl in
/// `dir`: (certificate, key).
fn self_signed_cert(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join("bmc.pem"), dir.join("bmc.key"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=rollout test BMC"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl");
    assert!(out.status.success(), "openssl: {out:?}");
    (cert, key)
}

/// Redfish over https against sushy-tools serving a self-signed certificate:
/// with verify_tls = false every operation works (status, on, off, cycle, the
/// boot override); with verify_tls = true the certificate is refused with an
/// error naming the node, the BMC, "certificate" and both ways out; with the
/// certificate as ca_file it is trusted again.
#[test]
fn redfish_over_https_with_a_self_signed_certificate() {
    if !sushy_available() || !testkit::prereq::require_tools(&[("openssl", "openssl")]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed_cert(dir.path());
    let (_emu, port) = start_sushy(dir.path(), NODE, MAC, PASSWORD, Some((&cert, &key)));
    let base = format!("https://127.0.0.1:{port}");
    let mut cfg = bmc(BmcDriver::Redfish);
    cfg.address = Some(base.clone());
    cfg.system = Some(format!("/redfish/v1/Systems/{SYSTEM_UUID}"));
    cfg.username = Some("admin".into());
    cfg.password_file = Some(secret_file(dir.path(), "pw", PASSWORD));
    cfg.verify_tls = false;
    // The file as an operator writes it passes the config's validation.
    let toml = format!(
        "state_dir = \"/x\"\n[[node]]\nmac = \"{MAC}\"\nhostname = \"{NODE}\"\nbmc = {{ driver = \"redfish\", address = \"{base}\", system = \"/redfish/v1/Systems/{SYSTEM_UUID}\", verify_tls = false }}\n"
    );
    rollout::config::Config::parse(&toml).expect("https is accepted");

    let d = drive_redfish(&cfg, false);
    // The override, read back over https with the certificate trusted.
    let tls = rollout::power::tls::client_config(true, Some(&cert)).unwrap();
    let sys = read_system(&ureq::AgentBuilder::new().tls_config(tls).build(), &base);
    assert_eq!(sys["Boot"]["BootSourceOverrideTarget"], "Pxe", "{sys}");
    assert_eq!(sys["Boot"]["BootSourceOverrideMode"], "Legacy", "{sys}");

    // Verification on: the self-signed certificate is refused, and the error
    // says so and what to do, without the password.
    let mut strict = cfg.clone();
    strict.verify_tls = true;
    let e = power::driver(&target(&strict, None))
        .unwrap()
        .status()
        .unwrap_err();
    assert!(matches!(e, PowerError::Certificate { .. }), "{e:?}");
    let text = e.to_string();
    for want in [
        NODE,
        base.as_str(),
        "certificate",
        "verify_tls = false",
        "ca_file",
    ] {
        assert!(text.contains(want), "{want:?} missing: {text}");
    }
    assert!(!text.contains(PASSWORD), "{text}");
    // No power change went through the refused connection.
    assert!(power::driver(&target(&strict, None)).unwrap().on().is_err());
    assert_eq!(d.status().unwrap(), PowerState::Off);

    // The BMC's certificate as ca_file: verified and trusted.
    strict.ca_file = Some(cert.clone());
    let trusted = power::driver(&target(&strict, None)).unwrap();
    assert_eq!(trusted.status().unwrap(), PowerState::Off);
    // A wrong password over https is still the credentials error.
    wrong_password_error(&strict, dir.path(), &base);
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
    let sim = start_ipmi_sim(dir.path(), port, PASSWORD);
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
