//! Real BMCs for tests, on 127.0.0.1: OpenIPMI's `ipmi_sim` (whose chassis is a
//! script that keeps the power state in files and logs each call) and
//! sushy-tools' Redfish emulator (http or https).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SUSHY: &str = "/opt/rollout-sushy/bin/sushy-emulator";
pub const SYSTEM_UUID: &str = "27946b59-9e44-4fa7-8e91-f3527a1ef094";

pub fn secret_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("{text}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child killed on drop.
pub struct Daemon(pub Child);
impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// ipmi_sim with one BMC on 127.0.0.1:`port`, user admin/`password`, whose
/// chassis is a small script keeping the power and boot device in files (the
/// `chassis_control` program interface of ipmi_sim) and logging each call.
pub fn start_ipmi_sim(dir: &Path, port: u16, password: &str) -> Daemon {
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
    let program = format!("{} {}", script.display(), chassis.display());
    let conf = testkit::ipmi_sim::SimBmc {
        lan: ("127.0.0.1", port),
        vm: None,
        chassis_program: &program,
        user: "admin",
        password,
    }
    .lan_conf();
    std::fs::write(&lan, conf).unwrap();
    let emu = dir.join("sim.emu");
    std::fs::write(&emu, testkit::ipmi_sim::SIM_EMU).unwrap();
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
pub fn sets_after(dir: &Path, n: usize) -> Vec<String> {
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

pub fn calls(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("chassis/calls"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// sushy-tools' emulator (its fake driver: no libvirt here) on 127.0.0.1 with
/// one system, `node` with `mac`, powered off, behind HTTP basic authentication
/// (admin/`password`); over https when `tls` gives a certificate and its key.
/// Returns the emulator and its port.
pub fn start_sushy(
    dir: &Path,
    node: &str,
    mac: &str,
    password: &str,
    tls: Option<(&Path, &Path)>,
) -> (Daemon, u16) {
    // HTTP basic authentication, as BMCs ask: a bcrypt htpasswd entry, made
    // with the emulator's own Python (its venv has bcrypt).
    let python = Path::new(SUSHY).with_file_name("python3");
    let hash = Command::new(&python)
        .args([
            "-c",
            &format!(
                "import bcrypt; print(bcrypt.hashpw(b'{password}', bcrypt.gensalt()).decode())"
            ),
        ])
        .output()
        .unwrap();
    assert!(hash.status.success(), "{hash:?}");
    let htpasswd = dir.join("htpasswd");
    std::fs::write(
        &htpasswd,
        format!("admin:{}\n", String::from_utf8_lossy(&hash.stdout).trim()),
    )
    .unwrap();
    let conf = dir.join("emulator.conf");
    std::fs::write(
        &conf,
        format!(
            "SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'\nSUSHY_EMULATOR_AUTH_FILE = '{}'\nSUSHY_EMULATOR_STATE_DIR = '{}'\nSUSHY_EMULATOR_FAKE_DRIVER = True\nSUSHY_EMULATOR_FAKE_SYSTEMS = [{{'uuid': '{SYSTEM_UUID}', 'name': '{node}', 'power_state': 'Off', 'nics': [{{'mac': '{mac}', 'ip': '10.44.0.11'}}]}}]\n",
            htpasswd.display(),
            dir.join("state").display()
        ),
    )
    .unwrap();
    let port = testkit::ports::free_port();
    let mut cmd = Command::new(SUSHY);
    cmd.arg("--config")
        .arg(&conf)
        .args(["-i", "127.0.0.1", "-p", &port.to_string()]);
    if let Some((cert, key)) = tls {
        cmd.arg("--ssl-certificate")
            .arg(cert)
            .arg("--ssl-key")
            .arg(key);
    }
    let emu = Daemon(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sushy-emulator"),
    );
    (emu, port)
}

/// Whether the emulator is installed (else the prerequisite policy decides).
pub fn sushy_available() -> bool {
    if Path::new(SUSHY).exists() {
        return true;
    }
    testkit::prereq::missing(format!(
        "{SUSHY} is missing (sushy-tools from PyPI; scripts/setup.sh installs it into a venv there)"
    ));
    false
}
