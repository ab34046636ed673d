//! The installer's API: plan, progress events, phone-home.

use super::{error, inventory_error, Shared};
use crate::config::normalize_mac;
use crate::inventory::{boot_action, BootAction};
use crate::wire::{EventKind, PhoneHome, PlanRequest, ProgressEvent};
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

/// rollout's lease of the requester's address, if it has one.
fn lease_at(
    state: &super::AppState,
    peer: std::net::IpAddr,
) -> Result<Option<crate::dhcp::leases::Lease>, crate::db::StoreError> {
    let ip = match peer {
        std::net::IpAddr::V4(a) => Some(a),
        std::net::IpAddr::V6(a) => a.to_ipv4_mapped(),
    };
    let Some(ip) = ip else { return Ok(None) };
    let backend = crate::store::Backend::new(&state.config.state_dir, state.config.store.as_ref());
    tokio::task::block_in_place(|| backend.lease_of(ip))
}

/// `POST /api/v1/plan/{mac}`: hands the plan only to the node (see
/// [`crate::plan_auth`]); a refused request changes nothing, so an install in
/// progress keeps its id and token. Then refuses what the node's state says
/// must wait, starts the install (new id, token and credentials, the boot
/// secret consumed) and hands out [`crate::plan::install_plan`]. A node that
/// asks again (it rebooted, it lost the answer) and is still the lease holder,
/// or has a new boot secret from its new iPXE script, starts a new install.
#[utoipa::path(
    post,
    path = "/api/v1/plan/{mac}",
    tag = "installer",
    params(("mac" = String, Path, description = "The machine's MAC address", pattern = r"^(01[:-])?[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5}$", example = "52:54:00:00:00:01")),
    request_body(content = Option<crate::wire::PlanRequest>, description = "`{\"boot_secret\": \"…\"}` from the kernel command line, or an empty body where rollout's lease identifies the node"),
    security(()),
    responses(
        (status = 200, description = "The install plan; a new install attempt has started", body = crate::wire::InstallPlan),
        (status = 400, description = "Not a MAC address, or the body is not a plan request", body = super::openapi::ErrorBody),
        (status = 403, description = "The requester holds neither the node's lease or reservation nor its current boot secret", body = super::openapi::ErrorBody),
        (status = 409, description = "The node must wait (its state, an install still reporting, or an image with no published serial)", body = super::openapi::ErrorBody),
        (status = 413, description = "The body is over this path's limit", content_type = "text/plain", body = String),
        (status = 429, description = "Too many undeclared machines", body = super::openapi::ErrorBody),
        (status = 503, description = "The state database cannot be read or written", body = super::openapi::ErrorBody)
    )
)]
pub async fn plan(
    State(state): State<Shared>,
    Path(mac): Path<String>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    body: axum::body::Bytes,
) -> Response {
    let Some(mac) = normalize_mac(&mac) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{mac:?} is not a MAC address"),
        );
    };
    let request: PlanRequest = if body.iter().all(u8::is_ascii_whitespace) {
        PlanRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("the body is not a plan request ({e}); send {{\"boot_secret\": \"…\"}} or nothing"),
                )
            }
        }
    };
    let cfg = &state.config;
    let inv = &state.inventory;
    let existing = match tokio::task::block_in_place(|| inv.get(&mac)) {
        Ok(r) => r,
        Err(e) => return inventory_error(e),
    };
    let rollout_leases = cfg
        .dhcp_plan
        .as_ref()
        .is_some_and(|p| p.mode == crate::config::DhcpMode::Full);
    // Only where rollout hands out addresses does its lease table say who is who.
    let lease = match rollout_leases
        .then(|| lease_at(&state, peer.ip()))
        .transpose()
        .map(Option::flatten)
    {
        Ok(l) => l,
        Err(e) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot read the leases to check the requester: {e}"),
            )
        }
    };
    let facts = crate::plan_auth::PlanRequestFacts {
        mac: &mac,
        peer: peer.ip(),
        rollout_leases,
        lease_at_peer: lease.as_ref(),
        reservation: existing
            .as_ref()
            .and_then(|r| r.ip.as_deref())
            .and_then(|ip| ip.parse().ok()),
        presented_secret: request.boot_secret.as_deref(),
        stored_secret: existing.as_ref().and_then(|r| r.boot_secret.as_deref()),
        now: crate::clock::now_unix(),
    };
    let granted = match crate::plan_auth::authorize(&facts) {
        Ok(g) => g,
        Err(why) => {
            warn!(%mac, peer = %peer.ip(), "plan refused: {why}");
            return error(StatusCode::FORBIDDEN, why);
        }
    };
    if granted == crate::plan_auth::Granted::BootSecret {
        if let Some(r) = &existing {
            let quiet = crate::plan_auth::quiet_secs(inv.policy.install_timeout_secs);
            if let Err(why) = crate::plan_auth::secret_may_restart(
                r.state,
                r.reported_at.unwrap_or(0),
                facts.now,
                quiet,
            ) {
                warn!(%mac, peer = %peer.ip(), "plan deferred: {why}");
                return error(StatusCode::CONFLICT, why);
            }
        }
    }
    let record = match existing {
        Some(r) => r,
        None => {
            let hostname = crate::inventory::generated_hostname(&mac);
            match tokio::task::block_in_place(|| {
                inv.seen(&mac, &hostname, &cfg.install.image, None)
            }) {
                Ok(r) => r,
                Err(e) => return inventory_error(e),
            }
        }
    };
    // The request was granted: its hardware report is the node's own, kept
    // even when the install must wait (an operator deciding on an approval
    // sees the machine).
    if let Some(hw) = &request.hardware {
        if let Err(e) = tokio::task::block_in_place(|| inv.record_hardware(&mac, hw)) {
            warn!(%mac, "hardware report not stored: {e}");
        }
    }
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
    let (record, node) = match tokio::task::block_in_place(|| inv.start_install(&mac, serial)) {
        Ok(r) => r,
        Err(e) => return inventory_error(e),
    };
    state.metrics.installs_started.inc();
    // The install's rsync user must be in the secrets file before the
    // installer tries it.
    if let Some(modules) = &state.rsync_modules {
        modules.reload().await;
    }
    let mut plan = crate::plan::install_plan(&record, cfg, serial, &state.ssh_keys);
    plan.node = node;
    plan.image.rsync_checksums = state.rsync_checksums.clone();
    plan.image.sparse_files = tokio::task::block_in_place(|| {
        crate::images::Images::new(&cfg.state_dir).meta(&image, serial)
    })
    .ok()
    .and_then(|m| m.sparse_files);
    if plan.block_image {
        if let (Some(fs), Some(mib)) = (
            plan.layout.block_image_fs(),
            plan.layout.root_partition_mib(),
        ) {
            super::image_stream::make_block_image_ahead(cfg, &image, serial, fs, mib << 20);
        }
    }
    info!(%mac, hostname = %plan.hostname, %image, serial, install_id = %plan.install_id, peer = %peer.ip(), ?granted, "plan handed out");
    Json(plan).into_response()
}

pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

/// The running install `id` whose token the request carries, or the answer
/// that refuses it (no token 401, another install's 403, not running 409).
pub(super) fn running_install(
    state: &Shared,
    id: &str,
    headers: &HeaderMap,
) -> Result<crate::inventory::NodeRecord, Box<Response>> {
    let Some(token) = bearer(headers) else {
        return Err(Box::new(error(
            StatusCode::UNAUTHORIZED,
            "missing `Authorization: Bearer <token>` (the token is in the install plan)",
        )));
    };
    let inv = &state.inventory;
    tokio::task::block_in_place(|| inv.running_install(id, token))
        .map_err(|e| Box::new(inventory_error(e)))
}

/// [`running_install`] for the routes that serve the install's image
/// (multicast, image.tar): its record and the serial its plan named.
pub(super) fn running_install_serial(
    state: &Shared,
    id: &str,
    headers: &HeaderMap,
) -> Result<(crate::inventory::NodeRecord, u64), Box<Response>> {
    let rec = running_install(state, id, headers)?;
    match rec.serial {
        Some(serial) => Ok((rec, serial)),
        None => Err(Box::new(error(
            StatusCode::CONFLICT,
            format!(
                "install {id} of {} has no serial: fetch the plan again",
                rec.hostname
            ),
        ))),
    }
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

#[utoipa::path(
    post,
    path = "/api/v1/installs/{id}/events",
    tag = "installer",
    params(("id" = String, Path, description = "The install_id from the plan")),
    request_body = crate::wire::ProgressEvent,
    security(("install" = [])),
    responses(
        (status = 204, description = "Recorded"),
        (status = 400, description = "The body is not valid JSON of the documented shape", body = super::openapi::ErrorBody),
        (status = 401, description = "No `Authorization: Bearer` install token", body = super::openapi::ErrorBody),
        (status = 403, description = "The token is not this install's", body = super::openapi::ErrorBody),
        (status = 404, description = "No such install", body = super::openapi::ErrorBody),
        (status = 409, description = "The event does not fit the install's state", body = super::openapi::ErrorBody),
        (status = 413, description = "The body is over this path's limit", content_type = "text/plain", body = String),
        (status = 503, description = "The state database cannot be read or written", body = super::openapi::ErrorBody)
    )
)]
pub async fn event(
    State(state): State<Shared>,
    Path(id): Path<String>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    // Parsed here, not by axum's Json extractor, so a bad report gets the JSON
    // error body the API documents (the extractor answers in plain text).
    let ev: ProgressEvent = match super::admin::json_body(
        &body,
        "an install event",
        r#"{"step": "copy", "kind": "started", "message": "…", "elapsed_ms": 0}"#,
    ) {
        Ok(ev) => ev,
        Err(r) => return r,
    };
    let Some(token) = bearer(&headers) else {
        return error(
            StatusCode::UNAUTHORIZED,
            "missing `Authorization: Bearer <token>` (the token is in the install plan)",
        );
    };
    let inv = &state.inventory;
    match tokio::task::block_in_place(|| inv.record_event(&id, token, &ev)) {
        Ok(rec) => {
            count_event(&state.metrics, &ev, &rec);
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
            drop(_g);
            admit_event(&state, &id, &ev);
            if matches!(
                ev.kind,
                EventKind::Installed { .. } | EventKind::Failed { .. }
            ) {
                // The install's rsync credential ends with it.
                if let Some(modules) = &state.rsync_modules {
                    modules.reload().await;
                }
            }
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => inventory_error(e),
    }
}

/// An accepted event's effect on the copy slots: the copy's end, the install's
/// end or failure frees the install's slot (or its place in the queue); any
/// other event renews its lease, so a slot outlives only a silent node.
fn admit_event(state: &super::AppState, id: &str, ev: &ProgressEvent) {
    let mut q = state.admission.lock().unwrap_or_else(|p| p.into_inner());
    let ended = matches!(
        ev.kind,
        EventKind::Installed { .. } | EventKind::Failed { .. }
    ) || (ev.step == crate::wire::Step::Copy && ev.kind == EventKind::Done);
    if ended {
        q.release(id);
        state.slot_freed.notify_waiters();
    } else {
        q.renew(id, crate::clock::now_unix());
    }
}

/// `POST /api/v1/installs/{id}/slot`: may this install start its copy now?
/// Up to `[install] max_copies` installs copy at once ([`crate::admission`]);
/// the others are told their place in the queue and when to ask again. Asking
/// again keeps the place; a holder asking again keeps (renews) its slot.
#[utoipa::path(
    post,
    path = "/api/v1/installs/{id}/slot",
    tag = "installer",
    params(("id" = String, Path, description = "The install_id from the plan")),
    security(("install" = [])),
    responses(
        (status = 200, description = "Granted (copy now) or wait (the queue place and when to ask again)", body = crate::wire::SlotAnswer),
        (status = 401, description = "No `Authorization: Bearer` install token", body = super::openapi::ErrorBody),
        (status = 403, description = "The token is not this install's", body = super::openapi::ErrorBody),
        (status = 404, description = "No such install", body = super::openapi::ErrorBody),
        (status = 409, description = "The install is not running (installed, failed or timed out)", body = super::openapi::ErrorBody),
        (status = 413, description = "The body is over this path's limit", content_type = "text/plain", body = String),
        (status = 503, description = "The state database cannot be read", body = super::openapi::ErrorBody)
    )
)]
pub async fn slot(
    State(state): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let rec = match running_install(&state, &id, &headers) {
        Ok(r) => r,
        Err(refused) => return *refused,
    };
    // A waiter near the head of the queue is held here until a slot frees
    // (or SLOT_HOLD passes) rather than told to ask again in a second: a slot
    // that frees between two asks would sit idle for the rest of that second,
    // a large part of a copy on a fast network. Its first ask is answered at
    // once (the node shows its place) with "ask again now".
    let held_until = tokio::time::Instant::now() + SLOT_HOLD;
    let answer = loop {
        let freed = state.slot_freed.notified();
        tokio::pin!(freed);
        // Registered before asking, so a release between the ask and the wait is seen.
        freed.as_mut().enable();
        let (answer, near_head, first_ask) = {
            let mut q = state.admission.lock().unwrap_or_else(|p| p.into_inner());
            let first_ask = !q.is_waiting(&id);
            let answer = slot_answer(&mut q, &id, crate::clock::now_unix());
            let near = matches!(answer, crate::wire::SlotAnswer::Wait { position, .. } if position as usize <= q.max());
            (answer, near, first_ask)
        };
        let crate::wire::SlotAnswer::Wait {
            position, queued, ..
        } = answer
        else {
            break answer;
        };
        if !near_head {
            break answer;
        }
        if first_ask || tokio::time::timeout_at(held_until, freed).await.is_err() {
            break crate::wire::SlotAnswer::Wait {
                position,
                queued,
                retry_secs: 0,
            };
        }
    };
    if let crate::wire::SlotAnswer::Granted { active, max, .. } = answer {
        tracing::debug!(mac = %rec.mac, hostname = %rec.hostname, active, max, "copy slot granted");
    }
    Json(answer).into_response()
}

/// How long a slot request near the head of the queue is held waiting for a
/// slot to free: well within the installer's 10 s request timeout.
const SLOT_HOLD: std::time::Duration = std::time::Duration::from_secs(4);

/// The admission's answer in the wire's terms.
fn slot_answer(q: &mut crate::admission::Admission, id: &str, now: u64) -> crate::wire::SlotAnswer {
    match q.ask(id, now) {
        crate::admission::Answer::Granted { lease_secs } => crate::wire::SlotAnswer::Granted {
            lease_secs,
            active: q.active(now) as u32,
            max: q.max() as u32,
        },
        crate::admission::Answer::Wait {
            position,
            queued,
            retry_secs,
        } => crate::wire::SlotAnswer::Wait {
            position,
            queued,
            retry_secs,
        },
    }
}

/// An install's end (outcome, duration) and its copy's throughput, in the metrics.
fn count_event(
    m: &crate::metrics::Metrics,
    ev: &ProgressEvent,
    rec: &crate::inventory::NodeRecord,
) {
    match &ev.kind {
        EventKind::Installed { .. } => {
            m.install_finished("installed");
            if let (Some(start), Some(end)) = (rec.install_started, rec.installed_at) {
                m.install_duration.observe(end.saturating_sub(start) as f64);
            }
        }
        EventKind::Failed { .. } => m.install_finished("failed"),
        EventKind::Done if ev.step == crate::wire::Step::Copy => {
            if let Some(rate) = rec.copy_rate {
                m.copy_throughput.observe(rate as f64);
            }
        }
        _ => {}
    }
}

/// The refusal for a node Bearer that [`crate::inventory::secrets::check_node`]
/// did not accept: 401 when none was sent, 403 otherwise.
pub fn node_auth_error(e: crate::inventory::secrets::NodeAuthError) -> Response {
    use crate::inventory::secrets::NodeAuthError;
    let status = match e {
        NodeAuthError::Missing => StatusCode::UNAUTHORIZED,
        _ => StatusCode::FORBIDDEN,
    };
    error(status, e.to_string())
}

/// A boot report from the installed node, with its own credential: a forged or
/// missing one is refused and the record keeps its serial and boot time.
#[utoipa::path(
    post,
    path = "/api/v1/phone-home",
    tag = "installer",
    request_body = crate::wire::PhoneHome,
    security(("node" = [])),
    responses(
        (status = 204, description = "Recorded"),
        (status = 400, description = "The body is not a phone-home report, or its mac is not a MAC address", body = super::openapi::ErrorBody),
        (status = 401, description = "No `Authorization: Bearer` node secret", body = super::openapi::ErrorBody),
        (status = 403, description = "The secret is not this node's", body = super::openapi::ErrorBody),
        (status = 404, description = "No node with that MAC", body = super::openapi::ErrorBody),
        (status = 409, description = "The node is not installed", body = super::openapi::ErrorBody),
        (status = 413, description = "The body is over this path's limit", content_type = "text/plain", body = String),
        (status = 503, description = "The state database cannot be read or written", body = super::openapi::ErrorBody)
    )
)]
pub async fn phone_home(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let ph: PhoneHome = match super::admin::json_body(
        &body,
        "a phone-home report",
        r#"{"mac": "52:54:00:12:34:56", "hostname": "node7", "serial": 3, "boot_id": "…"}"#,
    ) {
        Ok(ph) => ph,
        Err(r) => return r,
    };
    let Some(mac) = normalize_mac(&ph.mac) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{:?} is not a MAC address", ph.mac),
        );
    };
    let ph = PhoneHome { mac, ..ph };
    let record = match tokio::task::block_in_place(|| state.inventory.get(&ph.mac)) {
        Ok(Some(r)) => r,
        Ok(None) => return inventory_error(crate::inventory::InventoryError::UnknownNode(ph.mac)),
        Err(e) => return inventory_error(e),
    };
    if let Err(e) = crate::inventory::secrets::check_node(&record, bearer(&headers)) {
        warn!(mac = %ph.mac, "phone-home refused: {e}");
        return node_auth_error(e);
    }
    match tokio::task::block_in_place(|| state.inventory.phone_home(&ph)) {
        Ok(rec) => {
            info!(mac = %rec.mac, hostname = %ph.hostname, serial = ph.serial, "phoned home from its installed OS");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => inventory_error(e),
    }
}
