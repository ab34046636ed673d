//! A lab node with a real IPMI BMC: OpenIPMI's `ipmi_sim` in the lab namespace,
//! attached to the node's QEMU through QEMU's external BMC device
//! (`-device ipmi-bmc-extern` over a socket chardev, `isa-ipmi-kcs` in the
//! guest), as QEMU's and OpenIPMI's lanserv documentation set it up.
//!
//! The BMC owns the node's power: its `chassis_control` program starts the
//! node's QEMU on "power on", stops it on "power off" (a cycle is both) and
//! keeps the one-time boot device. (ipmi_sim's own `startcmd` would start QEMU
//! too, but OpenIPMI 2.0.33 refuses boot flags without a chassis program, so a
//! `chassis bootdev pxe` would fail.) The harness never starts such a node: the
//! server's `ipmi` power driver does, over RMCP+ like any rack's BMC.

use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, IoContext, Result};
use crate::proc::{have_program, ProcessGroup};
use rollout::fleet::ssh::shell_quote;
use testkit::ipmi_sim::SimBmc;

/// The BMC's login (the password goes into a 0600 file for the server).
pub const USER: &str = "admin";
/// Where the BMC answers inside the lab namespace (the server runs there too).
pub const ADDRESS: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// The IPMI LAN port of node number `index` (1-based) inside the namespace.
pub fn lan_port(index: usize) -> u16 {
    6230 + index as u16
}

/// The port the BMC listens on for the node's QEMU (its VM serial interface).
pub fn vm_port(index: usize) -> u16 {
    9100 + index as u16
}

/// The QEMU arguments that give a node its BMC: QEMU connects (and reconnects
/// after the BMC restarts) to the BMC's VM port.
pub fn qemu_args(vm_port: u16) -> Vec<String> {
    vec![
        "-chardev".into(),
        format!("socket,id=ipmi0,host={ADDRESS},port={vm_port},reconnect=1"),
        "-device".into(),
        "ipmi-bmc-extern,id=bmc0,chardev=ipmi0".into(),
        "-device".into(),
        "isa-ipmi-kcs,bmc=bmc0".into(),
    ]
}

/// `ipmi_sim`'s LAN configuration for one BMC.
pub fn lan_conf(lan_port: u16, vm_port: u16, chassis: &Path, password: &str) -> String {
    let address = ADDRESS.to_string();
    SimBmc {
        lan: (&address, lan_port),
        vm: Some((&address, vm_port)),
        chassis_program: &chassis.display().to_string(),
        user: USER,
        password,
    }
    .lan_conf()
}

/// The `chassis_control` program: `get NAME…` prints `NAME:VALUE` lines, `set
/// NAME VALUE…` acts. Power is whether the node's QEMU runs (its pid in
/// `pid_file`); on starts `qemu` detached, with no pipe back to ipmi_sim (which
/// reads the program's output to its end); off ends QEMU and waits for it, so a
/// cycle's "on" starts a fresh machine.
pub fn chassis_script(pid_file: &Path, state_dir: &Path, qemu: &[String], log: &Path) -> String {
    let quoted: Vec<String> = qemu.iter().map(|a| shell_quote(a)).collect();
    format!(
        r#"#!/bin/sh
# ipmi_sim's chassis program for one lab node (written by vm-harness).
pid_file={pid}
state={state}
running() {{
  p=$(cat "$pid_file" 2>/dev/null) || return 1
  [ -n "$p" ] && [ -e "/proc/$p" ] && ! grep -q '^[^)]*) Z' "/proc/$p/stat" 2>/dev/null
}}
power_on() {{
  running && return 0
  setsid {qemu} </dev/null >>{log} 2>&1 &
  echo $! > "$pid_file"
}}
power_off() {{
  running || return 0
  p=$(cat "$pid_file")
  kill "$p" 2>/dev/null
  i=0
  while running && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
  running && kill -9 "$p" 2>/dev/null
  while running; do sleep 0.1; done
  return 0
}}
op=$1; shift
echo "$op $*" >> "$state/calls"
if [ "$op" = get ]; then
  for n in "$@"; do
    case $n in
      power) if running; then echo power:1; else echo power:0; fi ;;
      *) echo "$n:$(cat "$state/$n" 2>/dev/null || echo 0)" ;;
    esac
  done
else
  while [ $# -ge 2 ]; do
    case $1 in
      power) if [ "$2" = 1 ]; then power_on; else power_off; fi ;;
      reset) [ "$2" = 1 ] && running && power_off && power_on ;;
      *) printf '%s' "$2" > "$state/$1" ;;
    esac
    shift 2
  done
fi
"#,
        pid = shell_quote(&pid_file.display().to_string()),
        state = shell_quote(&state_dir.display().to_string()),
        qemu = quoted.join(" "),
        log = shell_quote(&log.display().to_string()),
    )
}

/// A running `ipmi_sim` for one node; stopped when dropped.
#[derive(Debug)]
pub struct Bmc {
    node: String,
    lan_port: u16,
    password_file: PathBuf,
    state_dir: PathBuf,
    _proc: ProcessGroup,
}

impl Bmc {
    /// Writes the BMC's files under `dir` and starts ipmi_sim in `netns`.
    /// `qemu` is the node's full command line (program first).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        netns: &str,
        node: &str,
        index: usize,
        dir: &Path,
        qemu: &[String],
        qemu_log: &Path,
        pid_file: &Path,
        run_pid_file: &Path,
    ) -> Result<Bmc> {
        if !have_program("ipmi_sim") {
            return Err(Error::MissingTool {
                tool: "ipmi_sim".into(),
                hint: "install the Debian package openipmi (scripts/setup.sh does)".into(),
            });
        }
        fs::create_dir_all(dir).ctx("creating the BMC directory", dir)?;
        let state_dir = dir.join("chassis");
        fs::create_dir_all(&state_dir).ctx("creating the BMC state", &state_dir)?;
        // A fresh password per lab: the server reads it from a 0600 file.
        let password = format!("lab-{}-{}", std::process::id(), index);
        let password_file = dir.join("password");
        fs::write(&password_file, format!("{password}\n"))
            .ctx("writing the BMC password", &password_file)?;
        fs::set_permissions(&password_file, fs::Permissions::from_mode(0o600))
            .ctx("restricting the BMC password", &password_file)?;
        let chassis = dir.join("chassis.sh");
        fs::write(
            &chassis,
            chassis_script(pid_file, &state_dir, qemu, qemu_log),
        )
        .ctx("writing the chassis program", &chassis)?;
        fs::set_permissions(&chassis, fs::Permissions::from_mode(0o755))
            .ctx("making the chassis program executable", &chassis)?;
        let (lan, vm) = (lan_port(index), vm_port(index));
        let conf = dir.join("lan.conf");
        fs::write(&conf, lan_conf(lan, vm, &chassis, &password))
            .ctx("writing the BMC config", &conf)?;
        let emu = dir.join("sim.emu");
        fs::write(&emu, testkit::ipmi_sim::SIM_EMU).ctx("writing the BMC command file", &emu)?;
        let sdr = dir.join("sdr");
        fs::create_dir_all(&sdr).ctx("creating the BMC's persistent state", &sdr)?;
        let log = dir.join("ipmi_sim.log");
        let out = fs::File::create(&log).ctx("creating the BMC log", &log)?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns, "ipmi_sim", "-n", "-c"])
            .arg(&conf)
            .arg("-f")
            .arg(&emu)
            .arg("-s")
            .arg(&sdr)
            .stdout(out.try_clone().ctx("opening the BMC log", &log)?)
            .stderr(Stdio::from(out));
        let mut proc = ProcessGroup::spawn(&format!("ipmi_sim of {node}"), &mut cmd)?;
        proc.write_pid_file(run_pid_file)?;
        let bmc = Bmc {
            node: node.into(),
            lan_port: lan,
            password_file,
            state_dir,
            _proc: proc,
        };
        bmc.wait_listening(netns, Duration::from_secs(10))?;
        Ok(bmc)
    }

    /// Waits until the BMC's LAN port is bound in the namespace.
    fn wait_listening(&self, netns: &str, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        let want = format!(":{}", self.lan_port);
        while start.elapsed() < timeout {
            let out = Command::new("ip")
                .args(["netns", "exec", netns, "ss", "-Hlun"])
                .output()
                .ctx("listing the BMC's sockets", Path::new("ss"))?;
            if String::from_utf8_lossy(&out.stdout).contains(&want) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(Error::Timeout {
            what: format!("the BMC of {} on UDP {}", self.node, self.lan_port),
            after: timeout,
        })
    }

    pub fn address(&self) -> String {
        ADDRESS.to_string()
    }
    pub fn port(&self) -> u16 {
        self.lan_port
    }
    pub fn password_file(&self) -> &Path {
        &self.password_file
    }

    /// Every call the BMC made to its chassis program (`set power 0`, `set boot pxe`…).
    pub fn chassis_calls(&self) -> Vec<String> {
        fs::read_to_string(self.state_dir.join("calls"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_reaches_its_bmc_over_the_vm_port() {
        let a = qemu_args(9101).join(" ");
        assert_eq!(
            a,
            "-chardev socket,id=ipmi0,host=127.0.0.1,port=9101,reconnect=1 \
             -device ipmi-bmc-extern,id=bmc0,chardev=ipmi0 -device isa-ipmi-kcs,bmc=bmc0"
        );
    }

    #[test]
    fn lan_conf_serves_rmcp_and_the_vm_and_names_the_chassis_program() {
        let c = lan_conf(6231, 9101, Path::new("/lab/bmc/chassis.sh"), "pw");
        assert!(c.contains("addr 127.0.0.1 6231"), "{c}");
        assert!(c.contains("serial 15 127.0.0.1 9101 codec VM"), "{c}");
        assert!(c.contains("chassis_control \"/lab/bmc/chassis.sh\""), "{c}");
        assert!(c.contains("user 2 true \"admin\" \"pw\" admin"), "{c}");
    }

    #[test]
    fn chassis_program_starts_qemu_detached_and_quotes_its_arguments() {
        let qemu: Vec<String> = ["qemu-system-x86_64", "-name", "node 1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let s = chassis_script(
            Path::new("/run/n.pid"),
            Path::new("/lab/state"),
            &qemu,
            Path::new("/lab/qemu.log"),
        );
        assert!(
            s.contains(
                "setsid qemu-system-x86_64 -name 'node 1' </dev/null >>/lab/qemu.log 2>&1 &"
            ),
            "{s}"
        );
        assert!(s.contains("pid_file=/run/n.pid"));
    }
}
