//! The demo's last act, the maintenance phase of a cluster: change the golden
//! image inside `rollout image enter`, publish serial N+1, bring every running
//! node to it in place with `rollout sync --all`, show what each node runs, and
//! reinstall one node keyboardless (`rollout node reinstall NODE --now`).
//! The CLI's own output goes straight to the terminal: this is what an
//! operator types and sees.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::demo::{fetch_node, NodeProgress};
use crate::error::{Error, Result};
use crate::lab::Lab;
use crate::proc::command_line;
use crate::server::http_get_as;

/// A Debian install and first boot take ~2 min under TCG.
const REINSTALL_TIMEOUT: Duration = Duration::from_secs(600);

/// What the demo changes in the image: a line every node shows at login.
pub const MOTD_LINE: &str = "rollout demo: this line was added in `rollout image enter`";

fn run_shown(mut cmd: Command, shown: &str, say: &mut dyn FnMut(&str)) -> Result<()> {
    say(&format!("\n$ {shown}"));
    let status = cmd
        .stdin(Stdio::null())
        .status()
        .map_err(|source| Error::Spawn {
            cmd: command_line(&cmd),
            source,
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::Command {
            cmd: shown.to_string(),
            status: status.to_string(),
            stderr: "see its output above".into(),
        })
    }
}

/// The serial the server hands out for `image`, as nodes ask for it (the server
/// adds the serial's rsync module before it answers). Nodes ask with their own
/// credential; the lab asks as the admin.
fn served_serial(lab: &Lab, server: SocketAddr, image: &str) -> Option<u64> {
    let token = std::fs::read_to_string(lab.state_dir().join("admin.token")).ok()?;
    let (status, body) = http_get_as(
        lab.netns(),
        server,
        &format!("/api/v1/images/{image}/serial"),
        Some(token.trim()),
    )
    .ok()?;
    (status == 200).then(|| body.trim().parse().ok()).flatten()
}

/// Runs the phase against the lab's running server; returns the new serial.
pub fn maintain(
    lab: &Lab,
    server: SocketAddr,
    rollout: &Path,
    image: &str,
    say: &mut dyn FnMut(&str),
) -> Result<u64> {
    let config = lab.dir().join("rollout.toml");
    let before = served_serial(lab, server, image);
    say(&format!(
        "\n== maintenance: change image {image} (serial {}), publish, update the running nodes in place",
        before.map_or("none".into(), |s| s.to_string())
    ));
    // On the host, not in the lab namespace: apt in the image may need the mirror.
    let script = format!("echo '{MOTD_LINE}' >> /etc/motd");
    let mut enter = Command::new(rollout);
    enter.arg("-c").arg(&config).args([
        "image",
        "enter",
        image,
        "--note",
        "demo: motd line",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    run_shown(
        enter,
        &format!("rollout image enter {image} -- sh -c \"{script}\""),
        say,
    )?;
    let serial = served_serial(lab, server, image)
        .filter(|s| Some(*s) != before)
        .ok_or_else(|| Error::Command {
            cmd: "rollout image enter".into(),
            status: "no new serial".into(),
            stderr: format!("image {image} still publishes {before:?}"),
        })?;
    let in_lab = |args: &[&str]| {
        let mut cmd = lab.netns().command(&rollout.to_string_lossy());
        cmd.arg("-c").arg(&config).args(args);
        cmd
    };
    run_shown(in_lab(&["sync", "--all"]), "rollout sync --all", say)?;
    run_shown(
        in_lab(&[
            "exec",
            "--all",
            "--",
            "cat /etc/rollout/serial; tail -n 1 /etc/motd",
        ]),
        "rollout exec --all -- 'cat /etc/rollout/serial; tail -n 1 /etc/motd'",
        say,
    )?;
    reinstall_now(lab, server, &in_lab, say)?;
    Ok(serial)
}

/// The act's end: one node reinstalled with no hands on it. The server sets
/// its next boot to the network and power-cycles it through its BMC (the lab's
/// nodes have `driver = "qmp"`); the node installs the new serial and phones
/// home, shown live.
fn reinstall_now(
    lab: &Lab,
    server: SocketAddr,
    in_lab: &dyn Fn(&[&str]) -> Command,
    say: &mut dyn FnMut(&str),
) -> Result<()> {
    // node2 (the second BIOS node of the demo), or the only node there is.
    let Some(node) = lab.nodes().get(1).or(lab.nodes().first()) else {
        return Ok(());
    };
    let name = node.name().to_string();
    let before = fetch_node(lab, server, &name)?.installs;
    run_shown(
        in_lab(&["node", "reinstall", &name, "--now"]),
        &format!("rollout node reinstall {name} --now"),
        say,
    )?;
    let start = Instant::now();
    let mut last = String::new();
    loop {
        let rec = fetch_node(lab, server, &name)?;
        let line = rec.line();
        if line != last {
            say(&format!("[{:>5}s] {line}", start.elapsed().as_secs()));
            last = line;
        }
        if rec.installs > before && rec.is_done() {
            say(&format!(
                "{name} reinstalled (install #{}) and phoned home, {} s after the command",
                rec.installs,
                start.elapsed().as_secs()
            ));
            return Ok(());
        }
        if rec.is_failed() {
            return Err(Error::InstallFailed {
                node: name,
                detail: rec.line(),
            });
        }
        if start.elapsed() >= REINSTALL_TIMEOUT {
            return Err(Error::Timeout {
                what: format!("{name} to reinstall and phone home"),
                after: REINSTALL_TIMEOUT,
            });
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}
