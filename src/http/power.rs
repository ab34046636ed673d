//! `GET|POST /api/v1/nodes/{id}/power` and the power half of
//! `POST /api/v1/nodes/{id}/reinstall?now=true`. Reading a node's power state
//! needs any role; changing it `maintain`. Every change, and every failure, is a
//! row in the node's history with who asked (`by`). BMC calls run on blocking
//! threads, at most `power.concurrency` at once, each bounded by `power.timeout`.

#![allow(clippy::result_large_err)]

use super::admin::{json_body, lookup, readable_node};
use super::auth::{require_api, Principal};
use super::{error, inventory_error, route, ApiRoute, Shared};
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

/// Runs `f` with the node's driver on a blocking thread, within the bounds.
async fn with_driver<T: Send + 'static>(
    state: &Shared,
    node: &NodeRecord,
    f: impl FnOnce(&dyn power::PowerDriver, bool) -> Result<T, PowerError> + Send + 'static,
) -> Result<T, Response> {
    let Some(bmc) = state
        .config
        .node_by_mac(&node.mac)
        .and_then(|n| n.bmc.clone())
    else {
        return Err(error(
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
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is shutting down",
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
        Ok(Err(e)) => Err(power_error(e)),
        Err(e) => Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the power call crashed: {e}"),
        )),
    }
}

fn power_error(e: PowerError) -> Response {
    let status = match e {
        PowerError::Unsupported { .. } => StatusCode::CONFLICT,
        _ => StatusCode::BAD_GATEWAY,
    };
    error(status, e.to_string())
}

/// A history row about a power action (the record itself is unchanged).
fn record(state: &Shared, node: &NodeRecord, who: &Principal, event: Value) {
    let mut event = event;
    event["by"] = who.name.clone().into();
    tracing::info!(operator = %who.name, role = %who.role, mac = %node.mac, hostname = %node.hostname, %event, "power");
    if let Err(e) = tokio::task::block_in_place(|| state.inventory.note(&node.mac, event)) {
        tracing::warn!(hostname = %node.hostname, "recording a power action: {e}");
    }
}

/// The message of an error response (for the history row).
async fn message_of(r: Response) -> (StatusCode, String) {
    let status = r.status();
    let body = axum::body::to_bytes(r.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (
        status,
        v["error"].as_str().unwrap_or("unknown error").to_string(),
    )
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
    match with_driver(&state, &node, |d, _| d.status()).await {
        Ok(s) => Json(json!({"node": node.hostname, "state": s})).into_response(),
        Err(r) => r,
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
    match with_driver(&state, &node, move |d, _| power::run(d, action)).await {
        Ok(s) => {
            if action != PowerAction::Status {
                record(
                    &state,
                    &node,
                    &who,
                    json!({"kind": "power", "action": action.as_str(), "result": "ok"}),
                );
            }
            Json(json!({"node": node.hostname, "action": action, "state": s.unwrap_or(PowerState::Unknown), "result": "ok"}))
                .into_response()
        }
        Err(r) => {
            let (status, message) = message_of(r).await;
            if action != PowerAction::Status {
                record(
                    &state,
                    &node,
                    &who,
                    json!({"kind": "power", "action": action.as_str(), "result": "failed", "error": message}),
                );
            }
            error(status, message)
        }
    }
}

/// `reinstall?now=true`: mark the node (as a plain reinstall does), then PXE
/// once and cycle (or power on). A failed power step leaves the node marked,
/// records the error in its history and answers it.
pub(super) async fn reinstall_now(state: Shared, who: Principal, node: NodeRecord) -> Response {
    let marked = match tokio::task::block_in_place(|| {
        state
            .inventory
            .operator_action(&node.mac, OperatorAction::Reinstall, &who.name)
    }) {
        Ok(n) => n,
        Err(e) => return inventory_error(e),
    };
    match with_driver(&state, &marked, |d, efi| power::reinstall_now(d, efi)).await {
        Ok(steps) => {
            record(
                &state,
                &marked,
                &who,
                json!({"kind": "power", "action": "reinstall_now", "steps": steps, "result": "ok"}),
            );
            Json(json!({"node": marked.public(), "power": steps, "result": "ok"})).into_response()
        }
        Err(r) => {
            let (status, message) = message_of(r).await;
            record(
                &state,
                &marked,
                &who,
                json!({"kind": "power", "action": "reinstall_now", "result": "failed", "error": message}),
            );
            error(
                status,
                format!(
                    "{} is marked for reinstall, but its power step failed: {message}",
                    marked.hostname
                ),
            )
        }
    }
}
