//! The boot server inside the lab: `rollout serve`, or dnsmasq as a reference
//! to tell a lab problem from a server problem.

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::config::BRIDGE;
use crate::console;
use crate::error::{Error, IoContext, Result};
use crate::netns::Netns;
use crate::proc::ProcessGroup;

/// A server process in the lab namespace, killed on drop.
#[derive(Debug)]
pub struct Server {
    proc: ProcessGroup,
    log: PathBuf,
    address: Ipv4Addr,
    port: u16,
}

impl Server {
    /// Starts `rollout serve --config CONFIG` inside `ns`, output to `log`.
    pub(crate) fn spawn_rollout(
        ns: &Netns,
        rollout: &Path,
        config: &Path,
        log: &Path,
        address: Ipv4Addr,
        port: u16,
    ) -> Result<Server> {
        if !rollout.is_file() {
            return Err(Error::MissingTool {
                tool: rollout.display().to_string(),
                hint: "build it with `cargo build --bin rollout` or set ROLLOUT_BIN".into(),
            });
        }
        let mut cmd = ns.command(&rollout.to_string_lossy());
        cmd.arg("serve").arg("--config").arg(config);
        cmd.env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or("info".into()),
        );
        Self::spawn(cmd, "rollout serve", log, address, port)
    }

    /// Starts dnsmasq inside `ns` as DHCP + TFTP server. iPXE gets `boot.ipxe`
    /// from `tftp_root`, which must also hold what that script loads.
    pub(crate) fn spawn_dnsmasq(
        ns: &Netns,
        tftp_root: &Path,
        log: &Path,
        address: Ipv4Addr,
    ) -> Result<Server> {
        let leases = tftp_root.join("dnsmasq.leases");
        let mut cmd = ns.command("dnsmasq");
        cmd.args([
            "--no-daemon",
            "--conf-file=/dev/null",
            "--port=0",
            "--user=root",
        ])
        .arg(format!("--interface={BRIDGE}"))
        .args(["--bind-interfaces", "--log-dhcp"])
        .arg("--dhcp-range=10.44.0.100,10.44.0.199,255.255.255.0,1h")
        .arg(format!("--dhcp-leasefile={}", leases.display()))
        .arg("--dhcp-userclass=set:ipxe,iPXE")
        .arg("--dhcp-boot=tag:ipxe,boot.ipxe")
        .arg("--dhcp-match=set:efi64,option:client-arch,7")
        .arg("--dhcp-boot=tag:!ipxe,tag:efi64,ipxe.efi")
        .arg("--dhcp-boot=tag:!ipxe,tag:!efi64,undionly.kpxe")
        .arg("--enable-tftp")
        .arg(format!("--tftp-root={}", tftp_root.display()));
        Self::spawn(cmd, "dnsmasq", log, address, 69)
    }

    fn spawn(
        mut cmd: Command,
        label: &str,
        log: &Path,
        address: Ipv4Addr,
        port: u16,
    ) -> Result<Server> {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .ctx("opening the server log", log)?;
        cmd.stdout(out.try_clone().ctx("opening the server log", log)?)
            .stderr(out);
        let proc = ProcessGroup::spawn(label, &mut cmd)?;
        Ok(Server {
            proc,
            log: log.to_path_buf(),
            address,
            port,
        })
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn log_tail(&self, n: usize) -> Vec<String> {
        console::tail(&self.log, n)
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn address(&self) -> Ipv4Addr {
        self.address
    }

    pub fn http_port(&self) -> u16 {
        self.port
    }

    /// Base URL as nodes see it, e.g. `http://10.44.0.1:80`.
    pub fn url(&self) -> String {
        format!("http://{}:{}", self.address, self.port)
    }

    pub(crate) fn write_pid_file(&mut self, path: &Path) -> Result<()> {
        self.proc.write_pid_file(path)
    }

    /// Waits until the server accepts TCP connections on its HTTP port inside
    /// `ns`; fails at once if it exits (a config error, a port in use).
    pub fn wait_ready(&mut self, ns: &Netns, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        let addr = SocketAddr::from((self.address, self.port));
        loop {
            if let Some(st) = self.proc.try_wait() {
                return Err(Error::Exited {
                    what: self.proc.label().to_string(),
                    status: st.to_string(),
                    waiting_for: format!("it listened on {addr}"),
                    log: self.log.clone(),
                });
            }
            let up = ns.run_in(move || {
                TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
            })?;
            if up {
                return Ok(start.elapsed());
            }
            if start.elapsed() >= timeout {
                return Err(Error::Timeout {
                    what: format!("{} to listen on {addr}", self.proc.label()),
                    after: timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// A plain HTTP/1.0 GET from inside `ns`; returns (status, body). Enough for the
/// lab's own checks without an HTTP client dependency.
pub fn http_get(ns: &Netns, addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    http_get_as(ns, addr, path, None)
}

/// [`http_get`] with `Authorization: Bearer {bearer}` (the admin token, say).
pub fn http_get_as(
    ns: &Netns,
    addr: SocketAddr,
    path: &str,
    bearer: Option<&str>,
) -> Result<(u16, String)> {
    let url = format!("http://{addr}{path}");
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n");
    let res = ns.run_in(move || -> std::io::Result<Vec<u8>> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(req.as_bytes())?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)?;
        Ok(buf)
    })?;
    let raw = res.map_err(|e| Error::Http {
        url: url.clone(),
        message: e.to_string(),
    })?;
    parse_response(&raw).ok_or_else(|| Error::Http {
        url,
        message: "malformed HTTP response".into(),
    })
}

fn parse_response(raw: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_parse() {
        let raw = b"HTTP/1.1 404 Not Found\r\ncontent-length: 3\r\n\r\nno\n";
        assert_eq!(parse_response(raw), Some((404, "no\n".to_string())));
        assert_eq!(parse_response(b"garbage"), None);
    }
}
