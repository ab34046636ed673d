//! The installer's API: plan, progress events, phone-home.

use super::{error, inventory_error, Shared};
use crate::config::normalize_mac;
use crate::inventory::{boot_action, BootAction};
use crate::wire::{EventKind, PhoneHome, ProgressEvent};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use tracing::{info, warn};

/// The serial to hand out for `image`: the published one, once the rsync
/// supervisor says its module is served.
pub async fn served_serial(state: &super::AppState, image: &str) -> Option<u64> {
    let serial = tokio::task::block_in_place(|| published_serial(&state.config.state_dir, image))?;
    if let Some(modules) = &state.rsync_modules {
        if !modules.ensure(image, serial).await {
            warn!(%image, serial, "the rsync daemon does not list the serial's module");
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

/// Looks the node up (a stranger becomes a discovered record), refuses what its
/// state says must wait, starts the install and hands out [`crate::plan::install_plan`].
pub async fn plan(State(state): State<Shared>, Path(mac): Path<String>) -> Response {
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
            let hostname = crate::inventory::generated_hostname(&mac);
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
    let Some(serial) = served_serial(&state, &image).await else {
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
    let plan = crate::plan::install_plan(&record, cfg, serial, &state.ssh_keys);
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

/// Writes the host keys an authenticated `installed` report carried into the
/// server's known_hosts, under the node's hostname and address (its inventory
/// address, else the one it reported from), replacing what was there for it.
fn record_host_keys(
    state_dir: &std::path::Path,
    rec: &crate::inventory::NodeRecord,
    peer: std::net::IpAddr,
) {
    use crate::fleet::ssh::{known_hosts, SshSettings};
    let path = SshSettings::for_state_dir(state_dir).known_hosts;
    let address = rec.ip.clone().unwrap_or_else(|| peer.to_string());
    let names = [rec.hostname.clone(), address];
    let (keys, _) = known_hosts::parse_all(&rec.host_keys);
    match known_hosts::record(&path, &names, &keys) {
        Ok(()) if keys.is_empty() => warn!(
            "no SSH host key reported: `rollout exec` and `rollout sync` will not contact this node until an install reports its keys"
        ),
        Ok(()) => info!(fingerprints = %rec.host_key_fingerprints.join(", "), "host keys recorded in {}", path.display()),
        Err(e) => warn!("writing {}: {e}; `rollout exec` will refuse this node's host key", path.display()),
    }
}

pub async fn event(
    State(state): State<Shared>,
    Path(id): Path<String>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
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
                EventKind::Installed { .. } => {
                    info!(step = %ev.step, "{}", ev.message);
                    tokio::task::block_in_place(|| {
                        record_host_keys(&state.config.state_dir, &rec, peer.ip())
                    });
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
