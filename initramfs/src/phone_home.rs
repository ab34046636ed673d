//! `rollout-sync phone-home`: run on the installed node at boot, tells the server
//! which serial this node booted.

use std::path::Path;
use std::time::Duration;

use rollout::wire::{paths as api, PhoneHome};

use crate::nodetoml::{NodeToml, NodeTomlError};
use crate::{http_client, paths, render};

#[derive(Debug, thiserror::Error)]
pub enum PhoneHomeError {
    #[error(transparent)]
    NodeToml(#[from] NodeTomlError),
    #[error("phone-home to {url} failed after {attempts} attempts: {last}")]
    Failed {
        url: String,
        attempts: u32,
        last: String,
    },
}

/// Where to post, what, and with which Bearer.
pub struct Report {
    pub url: String,
    pub body: PhoneHome,
    pub secret: String,
}

/// Builds the report from the node's files (`root` is `/` on the node).
pub fn build(root: &Path) -> Result<Report, PhoneHomeError> {
    let conf = NodeToml::read(root)?;
    let server = conf.require("server")?;
    let serial = std::fs::read_to_string(root.join(paths::NODE_SERIAL.trim_start_matches('/')))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .or_else(|| conf.get("serial").and_then(|s| s.parse().ok()))
        .unwrap_or(0);
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_string())
            .ok()
    };
    let hostname = read("/proc/sys/kernel/hostname")
        .filter(|h| !h.is_empty() && h != "(none)")
        .or_else(|| conf.get("hostname").map(String::from))
        .unwrap_or_default();
    let report = PhoneHome {
        mac: conf.require("mac")?,
        hostname,
        serial,
        boot_id: read("/proc/sys/kernel/random/boot_id").unwrap_or_default(),
    };
    Ok(Report {
        url: format!("{}{}", server.trim_end_matches('/'), api::PHONE_HOME),
        body: report,
        secret: crate::nodetoml::node_secret(root)?,
    })
}

/// Posts it once.
pub fn post(report: &Report) -> Result<http_client::Response, http_client::HttpError> {
    let body = render::phone_home_json(&report.body);
    http_client::post_json(
        &report.url,
        Some(&report.secret),
        &body,
        Duration::from_secs(10),
    )
}

/// Posts the report, retrying every 10 s for about five minutes (the network may
/// come up after this starts).
pub fn run(root: &Path, attempts: u32) -> Result<(), PhoneHomeError> {
    let report = build(root)?;
    let mut last = String::new();
    for i in 1..=attempts {
        match post(&report) {
            Ok(r) if r.is_success() => {
                println!(
                    "rollout-sync: phone-home ok ({} serial {})",
                    report.body.hostname, report.body.serial
                );
                return Ok(());
            }
            // The server does not take this node's word: asking again cannot help.
            Ok(r) if r.status == 401 || r.status == 403 => {
                return Err(PhoneHomeError::Failed {
                    url: report.url,
                    attempts: i,
                    last: format!("server answered {}: {}", r.status, r.text().trim()),
                })
            }
            Ok(r) => last = format!("server answered {}: {}", r.status, r.text().trim()),
            Err(e) => last = e.to_string(),
        }
        if i < attempts {
            std::thread::sleep(Duration::from_secs(10));
        }
    }
    Err(PhoneHomeError::Failed {
        url: report.url,
        attempts,
        last,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_report_from_node_files() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        std::fs::create_dir_all(r.join("etc/rollout")).unwrap();
        std::fs::write(
            r.join("etc/rollout/node.toml"),
            render::node_toml(&crate::testutil::plan()),
        )
        .unwrap();
        std::fs::write(r.join("etc/rollout/serial"), "9\n").unwrap();
        let e = build(r).err().unwrap().to_string();
        assert!(
            e.contains("node.secret") && e.contains("rollout node reinstall"),
            "a node from before credentials is told what to do: {e}"
        );
        std::fs::write(r.join("etc/rollout/node.secret"), "abc123\n").unwrap();
        let Report {
            url,
            body: report,
            secret,
        } = build(r).unwrap();
        assert_eq!(secret, "abc123");
        assert_eq!(url, "http://10.44.0.1:8080/api/v1/phone-home");
        assert_eq!(report.mac, "52:54:00:00:00:01");
        assert_eq!(report.serial, 9, "serial file wins over node.toml");
        assert!(matches!(
            build(&r.join("nope")),
            Err(PhoneHomeError::NodeToml(NodeTomlError::Read { .. }))
        ));
    }
}
