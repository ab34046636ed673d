//! `GET|POST /api/v1/nodes/{id}/power` and the power half of
//! `POST /api/v1/nodes/{id}/reinstall?now=true`. Reading a node's power state
//! needs any role; changing it `maintain`. Every change, and every failure, is a
//! row in the node's history with who asked (`by`). BMC calls run on blocking
//! threads, at most `power.concurrency` at once, each bounded by `power.timeout`.

#![allow(clippy::result_large_err)]

use super::admin::{json_body, lookup, readable_node};
use super::auth::{require_api, Principal};
use super::{error, inventory_status, route, ApiRoute, Shared};
use crate::inventory::{NodeRecord, OperatorAction};
use crate::operators::Role;
use crate::power::{self, PowerAction, PowerError, PowerState};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Duration;

pub fn routes() -> Vec<ApiRoute> {
    vec![
        route(Method::GET, "/api/v1/nodes/{id}/power", get_power),
        route(Method::POST, "/api/v1/nodes/{id}/power", post_power),
    ]
}

/// A refused or failed power request: the status to answer and the message
/// (which names the node, the BMC and what to check, never a credential).
pub(super) type Failure = (StatusCode, String);

/// Runs `f` with the node's driver on a blocking thread, within the bounds.
async fn with_driver<T: Send + 'static>(
    state: &Shared,
    node: &NodeRecord,
    f: impl FnOnce(&dyn power::PowerDriver, bool) -> Result<T, PowerError> + Send + 'static,
) -> Result<T, Failure> {
    let Some(bmc) = state
        .config
        .node_by_mac(&node.mac)
        .and_then(|n| n.bmc.clone())
    else {
        return Err((
            StatusCode::CONFLICT,
            format!(
                "{} has no BMC configured; add bmc = {{ driver = \"ipmi\", address = …, username = …, password_file = … }} to its [[node]] in the config",
                node.hostname
            ),
        ));
    };
    let _permit = power::poller::permits(state.config.power.concurrency)
        .acquire_owned()
        .await
        .map_err(|_| {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is shutting down".to_string(),
            )
        })?;
    let hostname = node.hostname.clone();
    let mac = node.mac.clone();
    let efi = power::wants_efi(bmc.boot_mode, node.firmware.as_deref());
    let interface = state.config.server.interface.clone();
    let timeout = Duration::from_secs(state.config.power.timeout);
    let metrics = state.metrics.clone();
    let joined = tokio::task::spawn_blocking(move || {
        let target = power::Target {
            node: &hostname,
            mac: &mac,
            bmc: &bmc,
            interface: interface.as_deref(),
            timeout,
        };
        let driver = power::metered::metered(&target, metrics)?;
        f(driver.as_ref(), efi)
    })
    .await;
    match joined {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            let status = match e {
                PowerError::Unsupported { .. } => StatusCode::CONFLICT,
                _ => StatusCode::BAD_GATEWAY,
            };
            Err((status, e.to_string()))
        }
        Err(e) => Err((
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the power call crashed: {e}"),
        )),
    }
}

/// A history row about a power action (the record itself is unchanged), and
/// the node's last known power state.
fn record(state: &Shared, node: &NodeRecord, who: &Principal, event: Value) {
    let mut event = event;
    event["by"] = who.name.clone().into();
    tracing::info!(operator = %who.name, role = %who.role, mac = %node.mac, hostname = %node.hostname, %event, "power");
    state
        .power_seen
        .observe(&node.mac, &event, crate::clock::now_unix());
    if let Err(e) = tokio::task::block_in_place(|| state.inventory.note(&node.mac, event)) {
        tracing::warn!(hostname = %node.hostname, "recording a power action: {e}");
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/nodes/{id}/power",
    tag = "power",
    params(("id" = String, Path, description = "The node's MAC address or hostname", example = "node1")),
    security(("operator" = []), ("session" = [])),
    responses(
        (status = 200, description = "The node's power state, asked of its BMC now (needs role read)", body = super::openapi::PowerStatus),
        super::openapi::OperatorRefusals,
        (status = 404, description = "No node with that MAC or hostname", body = super::openapi::ErrorBody),
        (status = 409, description = "The node has no BMC configured, or its driver cannot do this", body = super::openapi::ErrorBody),
        (status = 502, description = "The BMC failed or did not answer in power.timeout", body = super::openapi::ErrorBody),
        (status = 503, description = "The state database failed, or the server is shutting down", body = super::openapi::ErrorBody)
    )
)]
async fn get_power(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let node = match readable_node(&state, &headers, &id) {
        Ok(n) => n,
        Err(r) => return r,
    };
    let status = match relay_for(&state, &node) {
        Some(relay) => {
            let who = Principal {
                name: "status".into(),
                role: Role::Read,
                session: None,
            };
            relayed(&state, relay, &who, &node, PowerAction::Status.as_str())
                .await
                .and_then(|body| {
                    serde_json::from_value(body["state"].clone()).map_err(|e| {
                        (
                            StatusCode::BAD_GATEWAY,
                            format!(
                                "the server holding the BMC of {} answered no power state: {e}",
                                node.hostname
                            ),
                        )
                    })
                })
        }
        None => with_driver(&state, &node, |d, _| d.status()).await,
    };
    match status {
        Ok(s) => {
            // Known, not history: a status read changes nothing.
            let event = json!({"kind": "power", "action": "status", "state": s, "result": "ok"});
            state
                .power_seen
                .observe(&node.mac, &event, crate::clock::now_unix());
            Json(json!({"node": node.hostname, "state": s})).into_response()
        }
        Err((status, message)) => error(status, message),
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct PowerInput {
    action: PowerAction,
}

#[utoipa::path(
    post,
    path = "/api/v1/nodes/{id}/power",
    tag = "power",
    params(("id" = String, Path, description = "The node's MAC address or hostname", example = "node1")),
    request_body = PowerInput,
    security(("operator" = []), ("session" = [])),
    responses(
        (status = 200, description = "Done, recorded in the node's history (needs role maintain)", body = super::openapi::PowerResult),
        (status = 400, description = "The body is not valid JSON of the documented shape", body = super::openapi::ErrorBody),
        super::openapi::OperatorRefusals,
        (status = 404, description = "No node with that MAC or hostname", body = super::openapi::ErrorBody),
        (status = 413, description = "The body is over this path's limit", content_type = "text/plain", body = String),
        (status = 409, description = "The node has no BMC configured, or its driver cannot do this", body = super::openapi::ErrorBody),
        (status = 502, description = "The BMC failed or did not answer in power.timeout", body = super::openapi::ErrorBody),
        (status = 503, description = "The state database failed, or the server is shutting down", body = super::openapi::ErrorBody)
    )
)]
async fn post_power(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let who = match require_api(&state, &headers, Role::Maintain) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let input: PowerInput = match json_body(&body, "a power action", r#"{"action": "cycle"}"#) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let node = match lookup(&state, &id) {
        Ok(n) => n,
        Err(r) => return r,
    };
    let action = input.action;
    match act(&state, &who, &node, action).await {
        Ok(s) => Json(json!({"node": node.hostname, "action": action, "state": s.unwrap_or(PowerState::Unknown), "result": "ok"}))
            .into_response(),
        Err((status, message)) => error(status, message),
    }
}

/// Runs `action` on the node's BMC for `who`; a change (ok or failed) is a
/// history row naming them. The API and the dashboard's buttons both come here.
pub(super) async fn act(
    state: &Shared,
    who: &Principal,
    node: &NodeRecord,
    action: PowerAction,
) -> Result<Option<PowerState>, Failure> {
    if let Some(relay) = relay_for(state, node) {
        let body = relayed(state, relay, who, node, action.as_str()).await?;
        // What this server's dashboard shows until the next relayed call (the
        // server holding the BMC keeps its own view current).
        let event =
            json!({"kind": "power", "action": action.as_str(), "result": "ok", "by": who.name});
        state
            .power_seen
            .observe(&node.mac, &event, crate::clock::now_unix());
        return Ok(serde_json::from_value(body["state"].clone()).ok());
    }
    let result = with_driver(state, node, move |d, _| power::run(d, action)).await;
    if action != PowerAction::Status {
        let event = match &result {
            Ok(_) => json!({"kind": "power", "action": action.as_str(), "result": "ok"}),
            Err((_, message)) => {
                json!({"kind": "power", "action": action.as_str(), "result": "failed", "error": message})
            }
        };
        record(state, node, who, event);
    }
    result
}

/// `reinstall?now=true`: mark the node (as a plain reinstall does), then PXE
/// once and cycle (or power on). A failed power step leaves the node marked,
/// records the error in its history and answers it.
pub(super) async fn reinstall_now(state: Shared, who: Principal, node: NodeRecord) -> Response {
    match reinstall_now_steps(&state, &who, &node).await {
        Ok((marked, steps)) => {
            Json(json!({"node": marked.public(), "power": steps, "result": "ok"})).into_response()
        }
        Err((status, message)) => error(status, message),
    }
}

/// [`reinstall_now`]'s work, for the API and the dashboard: the marked record
/// and the power steps run.
pub(super) async fn reinstall_now_steps(
    state: &Shared,
    who: &Principal,
    node: &NodeRecord,
) -> Result<(NodeRecord, Vec<&'static str>), Failure> {
    let marked = tokio::task::block_in_place(|| {
        state
            .inventory
            .operator_action(&node.mac, OperatorAction::Reinstall, &who.name)
    })
    .map_err(|e| (inventory_status(&e), e.to_string()))?;
    if let Some(relay) = relay_for(state, &marked) {
        let body = relayed(state, relay, who, &marked, REINSTALL_NOW)
            .await
            .map_err(|(status, message)| {
                (
                    status,
                    format!(
                        "{} is marked for reinstall, but its power step failed: {message}",
                        marked.hostname
                    ),
                )
            })?;
        let steps = body["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| step_name(s.as_str()?))
            .collect();
        return Ok((marked, steps));
    }
    let steps = reinstall_power_steps(state, who, &marked).await?;
    Ok((marked, steps))
}

/// The power half of a reinstall-now, on the server holding the BMC (asked
/// directly, or relayed from another server), recorded in the node's history.
async fn reinstall_power_steps(
    state: &Shared,
    who: &Principal,
    marked: &NodeRecord,
) -> Result<Vec<&'static str>, Failure> {
    match with_driver(state, marked, |d, efi| power::reinstall_now(d, efi)).await {
        Ok(steps) => {
            record(
                state,
                marked,
                who,
                json!({"kind": "power", "action": REINSTALL_NOW, "steps": steps, "result": "ok"}),
            );
            Ok(steps)
        }
        Err((status, message)) => {
            record(
                state,
                marked,
                who,
                json!({"kind": "power", "action": REINSTALL_NOW, "result": "failed", "error": message}),
            );
            Err((
                status,
                format!(
                    "{} is marked for reinstall, but its power step failed: {message}",
                    marked.hostname
                ),
            ))
        }
    }
}

/// The relayed name of the power half of a reinstall-now.
const REINSTALL_NOW: &str = "reinstall_now";

/// The step names [`power::reinstall_now`] reports, as the static strings it uses.
fn step_name(s: &str) -> Option<&'static str> {
    match s {
        "boot_once_pxe" => Some("boot_once_pxe"),
        other => PowerAction::parse(other).map(PowerAction::as_str),
    }
}

/// The relay to use for `node`: with a shared database, when this server's
/// config holds no BMC for it (another server's may).
fn relay_for<'a>(
    state: &'a Shared,
    node: &NodeRecord,
) -> Option<&'a std::sync::Arc<power::relay::PowerRelay>> {
    let local = state
        .config
        .node_by_mac(&node.mac)
        .is_some_and(|n| n.bmc.is_some());
    state.power_relay.as_ref().filter(|_| !local)
}

/// Asks the server holding the node's BMC to run `action` for `who`; its
/// answer's body, or its refusal as a failure of this request.
async fn relayed(
    state: &Shared,
    relay: &std::sync::Arc<power::relay::PowerRelay>,
    who: &Principal,
    node: &NodeRecord,
    action: &str,
) -> Result<Value, Failure> {
    // A reinstall-now is up to three BMC calls, each bounded by power.timeout.
    let answer_within = Duration::from_secs(3 * state.config.power.timeout + 5);
    let (relay, mac, hostname, action) = (
        relay.clone(),
        node.mac.clone(),
        node.hostname.clone(),
        action.to_string(),
    );
    let by = (who.name.clone(), who.role.as_str());
    let asked = tokio::task::spawn_blocking(move || {
        relay.ask(&mac, &hostname, &action, (&by.0, by.1), answer_within)
    })
    .await
    .map_err(|e| {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the power relay crashed: {e}"),
        )
    })?;
    match asked {
        Ok(outcome) if outcome.status == 200 => Ok(outcome.body),
        Ok(outcome) => Err((
            StatusCode::from_u16(outcome.status).unwrap_or(StatusCode::BAD_GATEWAY),
            outcome.body["error"]
                .as_str()
                .unwrap_or("the server holding the BMC refused")
                .to_string(),
        )),
        Err(e @ power::relay::RelayError::Unclaimed { .. }) => {
            Err((StatusCode::CONFLICT, e.to_string()))
        }
        Err(e) => Err((StatusCode::BAD_GATEWAY, e.to_string())),
    }
}

/// Runs the power requests other servers relay to this one (for nodes whose
/// BMC is in this server's config), each as if asked here by the same
/// operator, and answers them.
pub async fn run_relayed(
    state: Shared,
    mut requests: tokio::sync::mpsc::UnboundedReceiver<power::relay::Request>,
) {
    let Some(relay) = state.power_relay.clone() else {
        return;
    };
    loop {
        let req = tokio::select! {
            _ = state.shutdown.cancelled() => return,
            r = requests.recv() => match r { Some(r) => r, None => return },
        };
        let outcome = relayed_outcome(&state, &req).await;
        tracing::info!(mac = %req.mac, action = %req.action, by = %req.by, status = outcome.status, "ran a power request relayed by another server");
        let relay = relay.clone();
        let finished = tokio::task::spawn_blocking(move || relay.finish(req.id, &outcome)).await;
        if let Ok(Err(e)) = finished {
            tracing::warn!("cannot answer a relayed power request: {e}");
        }
    }
}

async fn relayed_outcome(state: &Shared, req: &power::relay::Request) -> power::relay::Outcome {
    let failed = |status: StatusCode, message: String| power::relay::Outcome {
        status: status.as_u16(),
        body: json!({ "error": message }),
    };
    let who = Principal {
        name: req.by.clone(),
        role: Role::parse(&req.role).unwrap_or(Role::Read),
        session: None,
    };
    let node = match tokio::task::block_in_place(|| state.inventory.get(&req.mac)) {
        Ok(Some(n)) => n,
        Ok(None) => {
            return failed(
                StatusCode::NOT_FOUND,
                format!("no node with MAC {}", req.mac),
            )
        }
        Err(e) => return failed(inventory_status(&e), e.to_string()),
    };
    let result = match (req.action.as_str(), PowerAction::parse(&req.action)) {
        (REINSTALL_NOW, _) => reinstall_power_steps(state, &who, &node)
            .await
            .map(|steps| json!({ "steps": steps })),
        (_, Some(action)) => act(state, &who, &node, action)
            .await
            .map(|s| json!({ "state": s })),
        (other, None) => Err((
            StatusCode::BAD_REQUEST,
            format!("unknown power action {other:?} (a newer server asked?)"),
        )),
    };
    match result {
        Ok(body) => power::relay::Outcome { status: 200, body },
        Err((status, message)) => failed(status, message),
    }
}
