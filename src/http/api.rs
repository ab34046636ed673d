//! The installer's API (plan, progress events, phone-home) and node reads.

use super::Shared;
use crate::config::normalize_mac;
use crate::inventory::InventoryError;
use crate::wire::{self, EventKind, InstallPlan, PhoneHome, ProgressEvent};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use tracing::{info, warn};

/// JSON error with a message that says what to fix.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

fn inventory_error(e: InventoryError) -> Response {
    let status = match e {
        InventoryError::BadToken(_) => StatusCode::FORBIDDEN,
        InventoryError::UnknownInstall(_) | InventoryError::UnknownNode(_) => StatusCode::NOT_FOUND,
        InventoryError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(status, e.to_string())
}

/// The serial an image currently publishes: `images/NAME/published` → `serials/N`.
pub fn published_serial(state_dir: &std::path::Path, image: &str) -> Option<u64> {
    let target = std::fs::read_link(state_dir.join("images").join(image).join("published")).ok()?;
    target.file_name()?.to_str()?.parse().ok()
}

pub async fn plan(State(state): State<Shared>, Path(mac): Path<String>) -> Response {
    let Some(mac) = normalize_mac(&mac) else {
        return error(StatusCode::BAD_REQUEST, format!("{mac:?} is not a MAC address"));
    };
    let cfg = &state.config;
    let declared = cfg.node_by_mac(&mac);
    let hostname = declared
        .map(|n| n.hostname.clone())
        .unwrap_or_else(|| super::boot::generated_hostname(&mac));
    let image = declared
        .and_then(|n| n.image.clone())
        .unwrap_or_else(|| cfg.install.image.clone());
    let Some(serial) = published_serial(&cfg.state_dir, &image) else {
        warn!(%mac, %image, "plan refused: image not published");
        return error(
            StatusCode::CONFLICT,
            format!("image {image:?} has no published serial; build or import it with `rollout image build {image}` / `rollout image import {image} DIR`"),
        );
    };
    let inv = &state.inventory;
    let started = tokio::task::block_in_place(|| {
        inv.ensure(&mac, &hostname, &image, declared.is_some())?;
        inv.begin_install(&mac, &image, serial)
    });
    let (install_id, token) = match started {
        Ok(v) => v,
        Err(e) => return inventory_error(e),
    };
    let mut layout = wire::Layout::default();
    if let Some(n) = declared {
        layout.root_mib = n.root_mib.unwrap_or(layout.root_mib);
        layout.swap_mib = n.swap_mib.unwrap_or(layout.swap_mib);
    }
    let address = cfg.server.address.map(|a| a.to_string()).unwrap_or_else(|| "127.0.0.1".into());
    let plan = InstallPlan {
        install_id: install_id.clone(),
        token,
        mac: mac.clone(),
        hostname: hostname.clone(),
        server_url: cfg.http_base_url(),
        network: wire::NetworkPlan::Dhcp,
        image: wire::ImageRef {
            name: image.clone(),
            serial,
            rsync_url: format!("rsync://{address}/{image}-{serial}/"),
        },
        disk: wire::DiskSelector {
            path: declared.and_then(|n| n.disk.clone()),
        },
        layout,
        bootloader: wire::Bootloader::Auto,
        excludes: wire::DEFAULT_EXCLUDES.iter().map(|s| s.to_string()).collect(),
        files: vec![],
        ssh_authorized_keys: vec![],
        kernel_cmdline: cfg.install.kernel_cmdline.clone(),
        on_failure: wire::FailurePolicy::default(),
    };
    info!(%mac, %hostname, %image, serial, %install_id, "plan handed out");
    Json(plan).into_response()
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
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
        return error(StatusCode::UNAUTHORIZED, "missing `Authorization: Bearer <token>` (the token is in the install plan)");
    };
    let inv = &state.inventory;
    match tokio::task::block_in_place(|| inv.record_event(&id, token, &ev)) {
        Ok(rec) => {
            match &ev.kind {
                EventKind::Progress { .. } => tracing::debug!(mac = %rec.mac, "{}", ev.message),
                EventKind::Failed { error, .. } => warn!(mac = %rec.mac, step = %ev.step, "install failed: {error}"),
                _ => info!(mac = %rec.mac, step = %ev.step, "{}", ev.message),
            }
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => inventory_error(e),
    }
}

pub async fn phone_home(State(state): State<Shared>, Json(ph): Json<PhoneHome>) -> Response {
    let Some(mac) = normalize_mac(&ph.mac) else {
        return error(StatusCode::BAD_REQUEST, format!("{:?} is not a MAC address", ph.mac));
    };
    let ph = PhoneHome { mac, ..ph };
    let inv = &state.inventory;
    match tokio::task::block_in_place(|| inv.phone_home(&ph)) {
        Ok(rec) => {
            info!(mac = %rec.mac, hostname = %ph.hostname, serial = ph.serial, "phoned home from its installed OS");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => inventory_error(e),
    }
}

pub async fn list_nodes(State(state): State<Shared>) -> Response {
    match tokio::task::block_in_place(|| state.inventory.list()) {
        Ok(nodes) => Json(nodes).into_response(),
        Err(e) => inventory_error(e),
    }
}

pub async fn get_node(State(state): State<Shared>, Path(mac): Path<String>) -> Response {
    let Some(mac) = normalize_mac(&mac) else {
        return error(StatusCode::BAD_REQUEST, format!("{mac:?} is not a MAC address"));
    };
    match tokio::task::block_in_place(|| state.inventory.get(&mac)) {
        Ok(Some(n)) => Json(n).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no node {mac}; it appears after its first PXE boot")),
        Err(e) => inventory_error(e),
    }
}

pub async fn reinstall(State(state): State<Shared>, Path(mac): Path<String>) -> Response {
    let Some(mac) = normalize_mac(&mac) else {
        return error(StatusCode::BAD_REQUEST, format!("{mac:?} is not a MAC address"));
    };
    match tokio::task::block_in_place(|| state.inventory.request_reinstall(&mac)) {
        Ok(n) => {
            info!(%mac, "reinstall requested");
            Json(n).into_response()
        }
        Err(e) => inventory_error(e),
    }
}
