//! `GET /boot.ipxe`: the per-node iPXE script, decided from the node's record.

use super::Shared;
use crate::config::normalize_mac;
use crate::inventory::{boot_action, BootAction};
use askama::Template;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tracing::{info, warn};

#[derive(Template)]
#[template(path = "install.ipxe", escape = "none")]
pub struct InstallScript<'a> {
    pub base: &'a str,
    pub mac: &'a str,
    pub hostname: &'a str,
    pub image: &'a str,
    pub cmdline: &'a str,
}

#[derive(Template)]
#[template(path = "local.ipxe", escape = "none")]
pub struct LocalScript<'a> {
    pub mac: &'a str,
    pub hostname: &'a str,
    pub image: &'a str,
    pub serial: u64,
    pub sanboot: bool,
}

#[derive(Template)]
#[template(path = "chain.ipxe", escape = "none")]
pub struct ChainScript<'a> {
    pub base: &'a str,
}

#[derive(Deserialize)]
pub struct BootQuery {
    mac: Option<String>,
    platform: Option<String>,
}

/// Hostname for a machine nobody declared: stable, derived from its MAC.
pub fn generated_hostname(mac: &str) -> String {
    format!("node-{}", mac.replace(':', "")[6..].to_ascii_lowercase())
}

fn ipxe(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

pub async fn script(State(state): State<Shared>, Query(q): Query<BootQuery>) -> Response {
    let base = state.config.http_base_url();
    let Some(raw_mac) = q.mac else {
        // The DHCP filename carries no MAC; let iPXE fill it in and ask again.
        return ipxe(ChainScript { base: &base }.render().unwrap_or_default());
    };
    let Some(mac) = normalize_mac(&raw_mac) else {
        return (StatusCode::BAD_REQUEST, format!("mac={raw_mac:?} is not a MAC address\n")).into_response();
    };
    let declared = state.config.node_by_mac(&mac);
    let hostname = declared.map(|n| n.hostname.clone()).unwrap_or_else(|| generated_hostname(&mac));
    let image = declared
        .and_then(|n| n.image.clone())
        .unwrap_or_else(|| state.config.install.image.clone());
    let inv = &state.inventory;
    let record = match tokio::task::block_in_place(|| inv.ensure(&mac, &hostname, &image, declared.is_some())) {
        Ok(r) => r,
        Err(e) => {
            warn!(%mac, error = %e, "cannot read node state");
            return (StatusCode::SERVICE_UNAVAILABLE, format!("node state unavailable: {e}\n")).into_response();
        }
    };
    let platform = q.platform.unwrap_or_else(|| "unknown".into());
    match boot_action(record.state) {
        BootAction::LocalDisk => {
            info!(%mac, %hostname, %platform, "boot.ipxe → boot from local disk (installed)");
            ipxe(
                LocalScript {
                    mac: &mac,
                    hostname: &hostname,
                    image: &record.image,
                    serial: record.serial.unwrap_or(0),
                    sanboot: false,
                }
                .render()
                .unwrap_or_default(),
            )
        }
        BootAction::Install => {
            info!(%mac, %hostname, %platform, state = record.state.as_str(), "boot.ipxe → installer");
            ipxe(
                InstallScript {
                    base: &base,
                    mac: &mac,
                    hostname: &hostname,
                    image: &image,
                    cmdline: &state.config.install.kernel_cmdline,
                }
                .render()
                .unwrap_or_default(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_script_carries_server_mac_and_uefi_initrd_name() {
        let s = InstallScript {
            base: "http://10.44.0.1",
            mac: "52:54:00:00:00:01",
            hostname: "node1",
            image: "default",
            cmdline: "console=ttyS0",
        }
        .render()
        .unwrap();
        assert!(s.starts_with("#!ipxe\n"));
        assert!(s.contains(
            "kernel http://10.44.0.1/boot/vmlinuz initrd=initramfs.img rollout.server=http://10.44.0.1 rollout.mac=52:54:00:00:00:01 console=ttyS0"
        ));
        assert!(s.contains("initrd --name initramfs.img http://10.44.0.1/boot/initramfs.img"));
    }

    #[test]
    fn local_script_exits_to_the_next_boot_device() {
        let s = LocalScript {
            mac: "m",
            hostname: "h",
            image: "i",
            serial: 4,
            sanboot: false,
        }
        .render()
        .unwrap();
        assert!(s.contains("serial 4"));
        assert!(s.lines().any(|l| l == "exit"));
    }

    #[test]
    fn generated_hostnames_are_stable() {
        assert_eq!(generated_hostname("52:54:00:ab:cd:ef"), "node-abcdef");
    }
}
