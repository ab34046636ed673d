//! `GET /boot.ipxe`: the per-node iPXE script, decided from the node's record.

use super::Shared;
use crate::config::normalize_mac;
use crate::inventory::{boot_action, generated_hostname, BootAction};
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
    /// One-time: the installer presents it with its plan request.
    pub boot_secret: &'a str,
}

#[derive(Template)]
#[template(path = "local.ipxe", escape = "none")]
pub struct LocalScript<'a> {
    pub mac: &'a str,
    pub hostname: &'a str,
    pub image: &'a str,
    pub serial: u64,
}

#[derive(Template)]
#[template(path = "chain.ipxe", escape = "none")]
pub struct ChainScript<'a> {
    pub base: &'a str,
}

#[derive(Template)]
#[template(path = "wait.ipxe", escape = "none")]
pub struct WaitScript<'a> {
    pub base: &'a str,
    pub mac: &'a str,
    pub reason: &'a str,
    pub seconds: u32,
}

#[derive(Deserialize)]
pub struct BootQuery {
    mac: Option<String>,
    platform: Option<String>,
}

/// A rendered iPXE script, or a 500 naming the template: an empty 200 would
/// leave iPXE with nothing to run and no hint why.
fn ipxe(rendered: Result<String, askama::Error>, template: &str) -> Response {
    match rendered {
        Ok(body) => ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response(),
        Err(e) => {
            warn!(template, error = %e, "cannot render an iPXE script");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("#!ipxe\necho rollout: cannot render {template}: {e}\n"),
            )
                .into_response()
        }
    }
}

/// The node's record could not be read or written: iPXE's `chain` fails and
/// its script retries.
fn unavailable(mac: &str, e: crate::inventory::InventoryError) -> Response {
    warn!(%mac, error = %e, "cannot read or update node state");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("node state unavailable: {e}\n"),
    )
        .into_response()
}

/// The node's record cannot be read (a shared database that is down): a
/// node this server last knew as installed boots its disk, which needs no
/// write; anything else is told to ask again, since an install starts with
/// writes (its boot secret, its install id) that cannot be made now.
fn without_store(
    state: &Shared,
    base: &str,
    mac: &str,
    e: crate::inventory::InventoryError,
) -> Response {
    let inv = &state.inventory;
    let known = inv.last_known(mac).filter(|r| {
        boot_action(r.state, inv.policy.unknown, inv.policy.retry) == BootAction::LocalDisk
    });
    if let Some(rec) = known {
        warn!(%mac, hostname = %rec.hostname, error = %e, "node state unavailable: boot.ipxe → boot from local disk, as last known");
        let script = LocalScript {
            mac,
            hostname: &rec.hostname,
            image: &rec.image,
            serial: rec.serial.unwrap_or(0),
        };
        return ipxe(script.render(), "local.ipxe");
    }
    warn!(%mac, error = %e, "node state unavailable: boot.ipxe → wait");
    let script = WaitScript {
        base,
        mac,
        reason: "the node database cannot be read now",
        seconds: 30,
    };
    ipxe(script.render(), "wait.ipxe")
}

pub async fn script(State(state): State<Shared>, Query(q): Query<BootQuery>) -> Response {
    let base = state.config.http_base_url();
    let Some(raw_mac) = q.mac else {
        // The DHCP filename carries no MAC; let iPXE fill it in and ask again.
        return ipxe(ChainScript { base: &base }.render(), "chain.ipxe");
    };
    let Some(mac) = normalize_mac(&raw_mac) else {
        return (
            StatusCode::BAD_REQUEST,
            format!("mac={raw_mac:?} is not a MAC address\n"),
        )
            .into_response();
    };
    let inv = &state.inventory;
    let platform = q
        .platform
        .filter(|p| p.len() < 16 && p.chars().all(|c| c.is_ascii_alphanumeric()));
    let default_image = &state.config.install.image;
    let seen = tokio::task::block_in_place(|| {
        inv.seen(
            &mac,
            &generated_hostname(&mac),
            default_image,
            platform.as_deref(),
        )
    });
    let record = match seen {
        Ok(r) => r,
        // Refusals are logged (at most once a minute) by the inventory itself.
        Err(e @ crate::inventory::InventoryError::Refused { .. }) => {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "{e}
"
                ),
            )
                .into_response();
        }
        Err(e) => return without_store(&state, &base, &mac, e),
    };
    let platform = platform.as_deref().unwrap_or("unknown");
    let (hostname, image) = (&record.hostname, &record.image);
    match boot_action(record.state, inv.policy.unknown, inv.policy.retry) {
        BootAction::LocalDisk => {
            info!(%mac, %hostname, %platform, state = record.state.as_str(), "boot.ipxe → boot from local disk");
            let script = LocalScript {
                mac: &mac,
                hostname,
                image,
                serial: record.serial.unwrap_or(0),
            };
            ipxe(script.render(), "local.ipxe")
        }
        BootAction::Install => {
            info!(%mac, %hostname, %platform, state = record.state.as_str(), "boot.ipxe → installer");
            // The node's bond and VLAN: the installer is on them before it asks
            // for its plan.
            let link = state
                .config
                .node_by_mac(&mac)
                .map(|n| n.link())
                .unwrap_or_default();
            let cmdline = &installer_cmdline(&link, &state.config.install.kernel_cmdline);
            // Each install script carries a new secret and voids the last one.
            let boot_secret = match tokio::task::block_in_place(|| inv.issue_boot_secret(&mac)) {
                Ok(s) => s,
                Err(e) => return unavailable(&mac, e),
            };
            let script = InstallScript {
                base: &base,
                mac: &mac,
                hostname,
                image,
                cmdline,
                boot_secret: &boot_secret,
            };
            ipxe(script.render(), "install.ipxe")
        }
        BootAction::Wait(reason) => {
            info!(%mac, %hostname, %platform, "boot.ipxe → wait: {reason}");
            ipxe(
                WaitScript {
                    base: &base,
                    mac: &mac,
                    reason,
                    seconds: 30,
                }
                .render(),
                "wait.ipxe",
            )
        }
    }
}

/// The installer's extra kernel arguments: the node's link (bond, VLAN), then
/// `[install] kernel_cmdline`.
fn installer_cmdline(link: &crate::wire::LinkPlan, kernel_cmdline: &str) -> String {
    [link.cmdline_args().as_str(), kernel_cmdline]
        .iter()
        .filter(|w| !w.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_installer_hears_of_its_bond_and_vlan_on_its_command_line() {
        use crate::wire::{BondMode, BondPlan, LinkPlan};
        let link = LinkPlan {
            bond: Some(BondPlan {
                mode: BondMode::Lacp,
                interfaces: vec!["52:54:00:00:00:01".into()],
            }),
            vlan: Some(7),
        };
        assert_eq!(
            super::installer_cmdline(&link, "console=ttyS0"),
            "rollout.bond=802.3ad,52:54:00:00:00:01 rollout.vlan=7 console=ttyS0"
        );
        assert_eq!(
            super::installer_cmdline(&LinkPlan::default(), "console=ttyS0"),
            "console=ttyS0"
        );
        assert_eq!(super::installer_cmdline(&LinkPlan::default(), ""), "");
    }

    use super::*;

    #[test]
    fn install_script_carries_server_mac_and_uefi_initrd_name() {
        let s = InstallScript {
            base: "http://10.44.0.1",
            mac: "52:54:00:00:00:01",
            hostname: "node1",
            image: "default",
            cmdline: "console=ttyS0",
            boot_secret: "0123abcd",
        }
        .render()
        .unwrap();
        assert!(s.starts_with("#!ipxe\n"));
        assert!(s.contains(
            "kernel http://10.44.0.1/boot/vmlinuz initrd=initramfs.img rollout.server=http://10.44.0.1 rollout.mac=52:54:00:00:00:01 rollout.boot_secret=0123abcd console=ttyS0"
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
        }
        .render()
        .unwrap();
        assert!(s.contains("serial 4"));
        // Non-zero: UEFI firmware treats a successful return as "done" and opens its
        // setup menu instead of trying the next boot option (the disk).
        assert!(s.lines().any(|l| l == "exit 1"));
    }

    #[test]
    fn wait_script_asks_again() {
        let s = WaitScript {
            base: "http://x",
            mac: "m",
            reason: "why",
            seconds: 30,
        }
        .render()
        .unwrap();
        assert!(s.contains("sleep 30"));
        assert!(s.contains("chain --replace http://x/boot.ipxe?mac=m"));
    }
}
