//! The installer's API: plan, progress events, phone-home.

use super::{error, inventory_error, Shared};
use crate::config::normalize_mac;
use crate::inventory::{boot_action, BootAction};
use crate::wire::{self, EventKind, InstallPlan, PhoneHome, ProgressEvent};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use tracing::{info, warn};

/// The serial to hand out for `image`: the published one, after making sure the
/// rsync daemon serves its module. The supervisor picks up a serial published by
/// the CLI within seconds; a node asking in between must not get a module that
/// does not exist yet.
pub fn served_serial(state: &super::AppState, image: &str) -> Option<u64> {
    let serial = published_serial(&state.config.state_dir, image)?;
    if let Some(settings) = &state.rsyncd {
        let module = format!("[{}]", crate::images::rsyncd::serial_module(image, serial));
        let listed = std::fs::read_to_string(settings.config_path())
            .is_ok_and(|conf| conf.lines().any(|l| l.trim() == module));
        if !listed {
            if let Err(e) = crate::images::rsyncd::write_config(settings) {
                warn!(%image, serial, "could not add the rsync module: {e}");
            }
        }
    }
    Some(serial)
}

/// The serial an image currently publishes (none for an unknown or bad name).
pub fn published_serial(state_dir: &std::path::Path, image: &str) -> Option<u64> {
    crate::images::store::validate_name(image).ok()?;
    crate::images::Images::new(state_dir)
        .published(image)
        .ok()
        .flatten()
}

/// A reinstalled node comes back with fresh SSH host keys: forget its old one so
/// `rollout exec` does not refuse it as an impostor.
fn forget_host_key(state_dir: &std::path::Path, ip: std::net::IpAddr) {
    let known = state_dir.join("ssh/known_hosts");
    if known.exists() {
        let _ = std::process::Command::new("ssh-keygen")
            .arg("-R")
            .arg(ip.to_string())
            .arg("-f")
            .arg(&known)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

pub async fn plan(
    State(state): State<Shared>,
    Path(mac): Path<String>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
) -> Response {
    let Some(mac) = normalize_mac(&mac) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{mac:?} is not a MAC address"),
        );
    };
    let cfg = &state.config;
    let inv = &state.inventory;
    let record = match tokio::task::block_in_place(|| inv.get(&mac)) {
        Ok(Some(r)) => r,
        Ok(None) => {
            let hostname = super::boot::generated_hostname(&mac);
            match tokio::task::block_in_place(|| {
                inv.seen(&mac, &hostname, &cfg.install.image, None)
            }) {
                Ok(r) => r,
                Err(e) => return inventory_error(e),
            }
        }
        Err(e) => return inventory_error(e),
    };
    if let BootAction::Wait(reason) =
        boot_action(record.state, inv.policy.unknown, inv.policy.retry)
    {
        return error(StatusCode::CONFLICT, format!("{mac}: {reason}"));
    }
    let image = record.image.clone();
    let Some(serial) = tokio::task::block_in_place(|| served_serial(&state, &image)) else {
        warn!(%mac, %image, "plan refused: image not published");
        return error(
            StatusCode::CONFLICT,
            format!("image {image:?} has no published serial; build or import it with `rollout image build {image}` / `rollout image import {image} DIR`"),
        );
    };
    let record = match tokio::task::block_in_place(|| inv.begin_install(&mac, serial)) {
        Ok(r) => r,
        Err(e) => return inventory_error(e),
    };
    tokio::task::block_in_place(|| forget_host_key(&cfg.state_dir, peer.ip()));
    let mut layout = wire::Layout::default();
    layout.root_mib = record.root_mib.unwrap_or(layout.root_mib);
    layout.swap_mib = record.swap_mib.unwrap_or(layout.swap_mib);
    let address = cfg
        .server
        .address
        .map(|a| a.to_string())
        .unwrap_or_else(|| "127.0.0.1".into());
    let reboot_after = cfg.install.reboot_after_failure;
    let plan = InstallPlan {
        install_id: record.install_id.clone().unwrap_or_default(),
        token: record.token.clone().unwrap_or_default(),
        mac: mac.clone(),
        hostname: record.hostname.clone(),
        server_url: cfg.http_base_url(),
        network: wire::NetworkPlan::Dhcp,
        image: wire::ImageRef {
            name: image.clone(),
            serial,
            rsync_url: format!(
                "rsync://{address}:{}/{}/",
                cfg.server.rsync_port,
                crate::images::rsyncd::serial_module(&image, serial)
            ),
        },
        disk: wire::DiskSelector {
            path: record.disk.clone(),
        },
        layout,
        bootloader: wire::Bootloader::Auto,
        excludes: cfg.excludes_for(&image),
        files: vec![],
        ssh_authorized_keys: state.ssh_keys.clone(),
        kernel_cmdline: cfg.install.kernel_cmdline.clone(),
        on_failure: wire::FailurePolicy {
            reboot_after_secs: (reboot_after > 0).then_some(reboot_after),
        },
        sync_interval_secs: cfg.install.sync_interval,
    };
    info!(%mac, hostname = %plan.hostname, %image, serial, install_id = %plan.install_id, "plan handed out");
    Json(plan).into_response()
}

pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

pub async fn event(
    State(state): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(ev): Json<ProgressEvent>,
) -> Response {
    let Some(token) = bearer(&headers) else {
        return error(
            StatusCode::UNAUTHORIZED,
            "missing `Authorization: Bearer <token>` (the token is in the install plan)",
        );
    };
    let inv = &state.inventory;
    match tokio::task::block_in_place(|| inv.record_event(&id, token, &ev)) {
        Ok(rec) => {
            let span = tracing::info_span!("install", mac = %rec.mac, hostname = %rec.hostname);
            let _g = span.enter();
            match &ev.kind {
                EventKind::Progress { .. } => tracing::debug!("{}", ev.message),
                EventKind::Failed { error, .. } => {
                    warn!(step = %ev.step, "install failed: {error}")
                }
                _ => info!(step = %ev.step, "{}", ev.message),
            }
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => inventory_error(e),
    }
}

pub async fn phone_home(State(state): State<Shared>, Json(ph): Json<PhoneHome>) -> Response {
    let Some(mac) = normalize_mac(&ph.mac) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{:?} is not a MAC address", ph.mac),
        );
    };
    let ph = PhoneHome { mac, ..ph };
    match tokio::task::block_in_place(|| state.inventory.phone_home(&ph)) {
        Ok(rec) => {
            info!(mac = %rec.mac, hostname = %ph.hostname, serial = ph.serial, "phoned home from its installed OS");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => inventory_error(e),
    }
}
