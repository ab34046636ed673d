//! QEMU's machine protocol (QMP) over its unix socket: the one QMP client of the
//! workspace (the lab's `vm-harness` powers its nodes through it too), and the
//! `qmp` power driver for the lab's virtual nodes.
//!
//! A virtual node's "off" keeps its QEMU process: the VM is stopped and reset,
//! so it sits at its reset vector like a machine with the power cut, and "on"
//! resets and continues it (booting its firmware from the start). Quitting
//! QEMU instead would leave nothing to power on again.

use super::{PowerDriver, PowerError, PowerState, Target};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("QMP on {socket}: {message}")]
pub struct QmpError {
    pub socket: PathBuf,
    pub message: String,
}

/// Runs `commands` (no arguments) in one session after `qmp_capabilities` and
/// returns the raw reply line of the last one ("" when QEMU closed the socket
/// first, as `quit` may).
pub fn execute(socket: &Path, commands: &[&str], timeout: Duration) -> Result<String, QmpError> {
    let err = |message: String| QmpError {
        socket: socket.to_owned(),
        message,
    };
    let stream = UnixStream::connect(socket).map_err(|e| err(format!("connect: {e}")))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| err(e.to_string()))?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(|e| err(e.to_string()))?;
    let mut w = stream.try_clone().map_err(|e| err(e.to_string()))?;
    let mut r = BufReader::new(stream);
    let mut greeting = String::new();
    r.read_line(&mut greeting)
        .map_err(|e| err(format!("greeting: {e}")))?;
    let mut reply = |cmd: &str| -> Result<String, QmpError> {
        writeln!(w, "{{\"execute\":\"{cmd}\"}}").map_err(|e| err(format!("send: {e}")))?;
        loop {
            let mut line = String::new();
            let n = r
                .read_line(&mut line)
                .map_err(|e| err(format!("read: {e}")))?;
            // `quit` may close the socket before or after replying.
            if n == 0 {
                return Ok(String::new());
            }
            if line.contains("\"error\"") {
                return Err(err(format!("{cmd}: {}", line.trim())));
            }
            if line.contains("\"return\"") {
                return Ok(line.trim().to_string());
            }
            // Anything else is an asynchronous event: keep reading.
        }
    };
    reply("qmp_capabilities")?;
    let mut last = String::new();
    for cmd in commands {
        last = reply(cmd)?;
    }
    Ok(last)
}

/// `query-status`'s reply → the power state: running is on; paused, shut down
/// or waiting at the reset vector is off.
pub fn parse_status(reply: &str) -> Option<PowerState> {
    let v: serde_json::Value = serde_json::from_str(reply).ok()?;
    v["return"]["running"].as_bool().map(|running| {
        if running {
            PowerState::On
        } else {
            PowerState::Off
        }
    })
}

/// The QMP commands of each operation (see the module comment for "off").
pub fn commands(action: super::PowerAction) -> &'static [&'static str] {
    use super::PowerAction as A;
    match action {
        A::Status => &["query-status"],
        A::On | A::Cycle => &["system_reset", "cont"],
        A::Off => &["stop", "system_reset"],
    }
}

pub struct QmpPower {
    node: String,
    socket: PathBuf,
    timeout: Duration,
}

impl QmpPower {
    pub fn new(t: &Target) -> Result<QmpPower, PowerError> {
        Ok(QmpPower {
            node: t.node.into(),
            socket: t.bmc.socket.clone().ok_or_else(|| PowerError::Tool {
                node: t.node.into(),
                detail: "bmc.socket is not set for the qmp driver".into(),
            })?,
            timeout: t.timeout,
        })
    }

    fn run(&self, action: super::PowerAction) -> Result<String, PowerError> {
        execute(&self.socket, commands(action), self.timeout).map_err(|e| {
            if e.message.starts_with("connect") {
                PowerError::Unreachable {
                    node: self.node.clone(),
                    bmc: self.socket.display().to_string(),
                    detail: format!(
                        "{}; is the node's QEMU running with -qmp unix:{},server=on?",
                        e.message,
                        self.socket.display()
                    ),
                }
            } else {
                PowerError::Rejected {
                    node: self.node.clone(),
                    bmc: self.socket.display().to_string(),
                    operation: action.as_str().into(),
                    detail: e.message,
                }
            }
        })
    }
}

impl PowerDriver for QmpPower {
    fn status(&self) -> Result<PowerState, PowerError> {
        let reply = self.run(super::PowerAction::Status)?;
        parse_status(&reply).ok_or_else(|| PowerError::Tool {
            node: self.node.clone(),
            detail: format!("QMP query-status answered {reply:?}"),
        })
    }
    fn on(&self) -> Result<(), PowerError> {
        self.run(super::PowerAction::On).map(drop)
    }
    fn off(&self) -> Result<(), PowerError> {
        self.run(super::PowerAction::Off).map(drop)
    }
    fn cycle(&self) -> Result<(), PowerError> {
        self.run(super::PowerAction::Cycle).map(drop)
    }
    /// The lab's nodes boot the network first (their NIC leads the boot order)
    /// and rollout's iPXE script decides between install and local disk, so
    /// there is nothing to set.
    fn boot_once_pxe(&self, _efi: bool) -> Result<(), PowerError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::power::PowerAction;

    #[test]
    fn status_and_command_sequences() {
        assert_eq!(
            parse_status(
                r#"{"return": {"status": "running", "singlestep": false, "running": true}}"#
            ),
            Some(PowerState::On)
        );
        assert_eq!(
            parse_status(r#"{"return": {"status": "paused", "running": false}}"#),
            Some(PowerState::Off)
        );
        assert_eq!(parse_status("{}"), None);
        assert_eq!(commands(PowerAction::Off), ["stop", "system_reset"]);
        assert_eq!(commands(PowerAction::On), ["system_reset", "cont"]);
    }

    /// A fake QMP server on a socketpair-backed listener: greeting, then one
    /// reply per command, checking what the client sends.
    #[test]
    fn speaks_qmp_over_a_unix_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            let mut r = BufReader::new(s);
            writeln!(w, r#"{{"QMP": {{"version": {{}}, "capabilities": []}}}}"#).unwrap();
            let mut got = vec![];
            for reply in [
                r#"{"return": {}}"#,
                r#"{"timestamp": {}, "event": "STOP"}"#,
                r#"{"return": {"status": "paused", "running": false}}"#,
            ] {
                if !reply.contains("event") {
                    let mut line = String::new();
                    r.read_line(&mut line).unwrap();
                    got.push(line.trim().to_string());
                }
                writeln!(w, "{reply}").unwrap();
            }
            got
        });
        let reply = execute(&path, &["query-status"], Duration::from_secs(5)).unwrap();
        assert_eq!(parse_status(&reply), Some(PowerState::Off));
        assert_eq!(
            server.join().unwrap(),
            [
                r#"{"execute":"qmp_capabilities"}"#,
                r#"{"execute":"query-status"}"#
            ]
        );
    }
}
