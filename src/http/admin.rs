//! The operator API under `/api/v1`: nodes, discovered machines, history and the
//! live event stream (images: `images_api`). Reads need a credential of any role
//! (unless `server.anonymous_read`); reinstall needs `maintain`, node changes
//! `admin` (see `auth`). Each change is logged and recorded with who made it.

// Handlers return a ready Response as the error, as axum handlers do; boxing it
// would only add noise at every call site.
#![allow(clippy::result_large_err)]

use super::auth::{require_api, require_read, Principal};
use super::{error, inventory_error, route, ApiRoute, Shared};
use crate::config::{normalize_mac, valid_hostname};
use crate::inventory::{NodeChange, NodeRecord, NodeState, OperatorAction, Source};
use crate::operators::Role;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use std::net::Ipv4Addr;
use tokio_stream::StreamExt;

pub fn routes() -> Vec<ApiRoute> {
    vec![
        route(Method::GET, "/api/v1/nodes", list_nodes),
        route(Method::POST, "/api/v1/nodes", upsert_node),
        route(Method::GET, "/api/v1/nodes/{id}", get_node),
        route(Method::DELETE, "/api/v1/nodes/{id}", delete_node),
        route(Method::POST, "/api/v1/nodes/{id}/reinstall", reinstall),
        route(Method::POST, "/api/v1/nodes/{id}/runs", run),
        route(Method::GET, "/api/v1/nodes/{id}/history", history),
        route(Method::GET, "/api/v1/discovered", discovered),
        route(Method::POST, "/api/v1/discovered/{mac}/approve", approve),
        route(Method::POST, "/api/v1/discovered/{mac}/ignore", ignore),
        route(Method::GET, "/api/v1/events", events),
    ]
    .into_iter()
    .chain(super::images_api::routes())
    .chain(super::operators::routes())
    .collect()
}

/// A change as the server log shows it: who, what, which node.
fn audit(p: &Principal, action: &str, node: &NodeRecord) {
    tracing::info!(operator = %p.name, role = %p.role, action, mac = %node.mac, hostname = %node.hostname, "operator change");
}

/// A JSON body of type `T`, or a 400 that names `what` it should be and an example.
pub(super) fn json_body<T: serde::de::DeserializeOwned>(
    body: &[u8],
    what: &str,
    example: &str,
) -> Result<T, Response> {
    serde_json::from_slice(body).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            format!("body is not {what}: {e}; send JSON like {example}"),
        )
    })
}

pub(super) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Finds a node by MAC or hostname, or answers 404.
pub(super) fn lookup(state: &Shared, id: &str) -> Result<NodeRecord, Response> {
    match blocking(|| state.inventory.find(id)) {
        Ok(Some(n)) => Ok(n),
        Ok(None) => Err(error(
            StatusCode::NOT_FOUND,
            format!(
                "no node {id:?} (give a MAC address or a hostname; `rollout node list` shows them)"
            ),
        )),
        Err(e) => Err(inventory_error(e)),
    }
}

/// A read of one node: any role (or anonymous where allowed), then the lookup.
pub(super) fn readable_node(
    state: &Shared,
    headers: &HeaderMap,
    id: &str,
) -> Result<NodeRecord, Response> {
    require_read(state, headers)?;
    lookup(state, id)
}

#[utoipa::path(
    get,
    path = "/api/v1/nodes",
    tag = "nodes",
    security(("operator" = []), ("session" = [])),
    responses(
        (status = 200, description = "Every node (needs role read)", body = Vec<crate::inventory::NodeRecord>),
        super::openapi::OperatorRefusals,
        (status = 503, description = "The state database cannot be read or written", body = super::openapi::ErrorBody)
    )
)]
async fn list_nodes(State(state): State<Shared>, headers: HeaderMap) -> Response {
    if let Err(r) = require_read(&state, &headers) {
        return r;
    }
    match blocking(|| state.inventory.list()) {
        Ok(nodes) => Json(nodes.iter().map(NodeRecord::public).collect::<Vec<_>>()).into_response(),
        Err(e) => inventory_error(e),
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/nodes/{id}",
    tag = "nodes",
    params(("id" = String, Path, description = "The node's MAC address or hostname", example = "node1")),
    security(("operator" = []), ("session" = [])),
    responses(
        (status = 200, description = "The node (needs role read)", body = crate::inventory::NodeRecord),
        super::openapi::OperatorRefusals,
        (status = 404, description = "No node with that MAC or hostname", body = super::openapi::ErrorBody),
        (status = 503, description = "The state database cannot be read or written", body = super::openapi::ErrorBody)
    )
)]
async fn get_node(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    match readable_node(&state, &headers, &id) {
        Ok(n) => Json(n.public()).into_response(),
        Err(r) => r,
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/nodes/{id}/history",
    tag = "nodes",
    params(("id" = String, Path, description = "The node's MAC address or hostname", example = "node1")),
    security(("operator" = []), ("session" = [])),
    responses(
        (status = 200, description = "The node's history, oldest first (needs role read)", body = Vec<crate::inventory::HistoryEntry>),
        super::openapi::OperatorRefusals,
        (status = 404, description = "No node with that MAC or hostname", body = super::openapi::ErrorBody),
        (status = 503, description = "The state database cannot be read or written", body = super::openapi::ErrorBody)
    )
)]
async fn history(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let node = match readable_node(&state, &headers, &id) {
        Ok(n) => n,
        Err(r) => return r,
    };
    match blocking(|| state.inventory.history(&node.mac)) {
        Ok(h) => Json(h).into_response(),
        Err(e) => inventory_error(e),
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeInput {
    #[schema(
        pattern = r"^(01[:-])?[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5}$",
        example = "52:54:00:12:34:56"
    )]
    pub mac: String,
    #[schema(
        pattern = r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$",
        example = "node7"
    )]
    pub hostname: String,
    /// An IPv4 address on the provisioning subnet (not the server's own).
    #[schema(example = "10.44.0.17")]
    pub ip: Option<String>,
    /// An existing image (`rollout image list`); default: `[install] image`.
    #[schema(example = "default")]
    pub image: Option<String>,
    pub disk: Option<String>,
    #[schema(minimum = 256)]
    pub root_mib: Option<u64>,
    pub swap_mib: Option<u64>,
}

/// Checks a node declaration against the config and the images; the message says what to fix.
fn validate(state: &Shared, input: &NodeInput) -> Result<NodeRecord, String> {
    let mac = normalize_mac(&input.mac).ok_or_else(|| {
        format!(
            "mac {:?} is not a MAC address; write six hex pairs such as 52:54:00:12:34:56",
            input.mac
        )
    })?;
    if !valid_hostname(&input.hostname) {
        return Err(format!(
            "hostname {:?} is not valid; use letters, digits and '-', up to 63 characters",
            input.hostname
        ));
    }
    let cfg = &state.config;
    if let Some(ip) = &input.ip {
        let addr: Ipv4Addr = ip
            .parse()
            .map_err(|_| format!("ip {ip:?} is not an IPv4 address"))?;
        if let Some(server) = cfg.server.address {
            let mask = cfg.dhcp.netmask.unwrap_or(Ipv4Addr::new(255, 255, 255, 0));
            if !crate::config::same_subnet(addr, server, mask) {
                return Err(format!(
                    "ip {addr} is outside the provisioning subnet {}/{}; reserve an address on it",
                    crate::config::network(server, mask),
                    u32::from(mask).count_ones()
                ));
            }
            if addr == server {
                return Err(format!("ip {addr} is the server's own address"));
            }
        }
    }
    let image = input
        .image
        .clone()
        .unwrap_or_else(|| cfg.install.image.clone());
    if !cfg.state_dir.join("images").join(&image).is_dir() {
        return Err(format!("image {image:?} does not exist; `rollout image list` shows the images, `rollout image build {image}` makes one"));
    }
    if let Some(root) = input.root_mib {
        if root < 256 {
            return Err(format!(
                "root_mib {root} is too small; give at least 256 MiB"
            ));
        }
    }
    let mut rec = NodeRecord::new(
        &mac,
        &input.hostname,
        &image,
        Source::Api,
        NodeState::Pending,
    );
    rec.ip = input.ip.clone();
    rec.disk = input.disk.clone();
    rec.root_mib = input.root_mib;
    rec.swap_mib = input.swap_mib;
    Ok(rec)
}

#[utoipa::path(
    post,
    path = "/api/v1/nodes",
    tag = "nodes",
    request_body = NodeInput,
    security(("operator" = []), ("session" = [])),
    responses(
        (status = 200, description = "The node as declared (needs role admin)", body = crate::inventory::NodeRecord),
        (status = 400, description = "The body is not valid JSON of the documented shape", body = super::openapi::ErrorBody),
        super::openapi::OperatorRefusals,
        (status = 409, description = "The node cannot change now", body = super::openapi::ErrorBody),
        (status = 413, description = "The body is over this path's limit", content_type = "text/plain", body = String),
        (status = 422, description = "A field is invalid (MAC, hostname, ip outside the subnet, unknown image, root_mib too small)", body = super::openapi::ErrorBody),
        (status = 503, description = "The state database cannot be read or written", body = super::openapi::ErrorBody)
    )
)]
async fn upsert_node(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let who = match require_api(&state, &headers, Role::Admin) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let input: NodeInput = match json_body(
        &body,
        "a node",
        r#"{"mac": "52:54:00:12:34:56", "hostname": "node7"}"#,
    ) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let rec = match validate(&state, &input) {
        Ok(r) => r,
        Err(msg) => return error(StatusCode::UNPROCESSABLE_ENTITY, msg),
    };
    match blocking(|| state.inventory.declare_by(rec, Some(&who.name))) {
        Ok(n) => {
            audit(&who, "declare", &n);
            (StatusCode::OK, Json(n.public())).into_response()
        }
        Err(e) => inventory_error(e),
    }
}

#[utoipa::path(
    delete,
    path = "/api/v1/nodes/{id}",
    tag = "nodes",
    params(("id" = String, Path, description = "The node's MAC address or hostname", example = "node1")),
    security(("operator" = []), ("session" = [])),
    responses(
        (status = 204, description = "Removed, with its host keys (needs role admin)"),
        super::openapi::OperatorRefusals,
        (status = 404, description = "No node with that MAC or hostname", body = super::openapi::ErrorBody),
        (status = 409, description = "The node is declared in the config file", body = super::openapi::ErrorBody),
        (status = 503, description = "The state database cannot be read or written", body = super::openapi::ErrorBody)
    )
)]
async fn delete_node(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let who = match require_api(&state, &headers, Role::Admin) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let node = match lookup(&state, &id) {
        Ok(n) => n,
        Err(r) => return r,
    };
    if node.source == Source::Config {
        return error(
            StatusCode::CONFLICT,
            format!(
                "{} is declared in the config file; remove its [[node]] there",
                node.hostname
            ),
        );
    }
    match blocking(|| state.inventory.remove(&node.mac)) {
        Ok(()) => {
            audit(&who, "remove", &node);
            // Its host keys go with it: a machine that later takes its name or
            // address starts unknown.
            let path =
                crate::fleet::ssh::SshSettings::for_state_dir(&state.config.state_dir).known_hosts;
            let names: Vec<String> = std::iter::once(node.hostname.clone())
                .chain(node.ip.clone())
                .collect();
            if let Err(e) = blocking(|| crate::fleet::ssh::known_hosts::record(&path, &names, &[]))
            {
                tracing::warn!(hostname = %node.hostname, "forgetting its host keys in {}: {e}", path.display());
            }
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => inventory_error(e),
    }
}

/// Reinstall, approve or ignore, by an operator with at least `needed`.
async fn transition(
    state: Shared,
    headers: HeaderMap,
    id: String,
    action: OperatorAction,
    needed: Role,
) -> Response {
    let who = match require_api(&state, &headers, needed) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let node = match lookup(&state, &id) {
        Ok(n) => n,
        Err(r) => return r,
    };
    match blocking(|| {
        state
            .inventory
            .operator_action(&node.mac, action, &who.name)
    }) {
        Ok(n) => {
            audit(&who, action.as_str(), &n);
            Json(n.public()).into_response()
        }
        Err(e) => inventory_error(e),
    }
}

#[derive(Deserialize)]
struct ReinstallQuery {
    #[serde(default)]
    now: bool,
}

/// `?now=true`: also set the next boot to PXE and power-cycle (see `power`).
#[utoipa::path(
    post,
    path = "/api/v1/nodes/{id}/reinstall",
    tag = "nodes",
    params(("id" = String, Path, description = "The node's MAC address or hostname", example = "node1"), ("now" = Option<bool>, Query, description = "Also set the next boot to PXE once and power-cycle the node (or power it on) through its BMC")),
    security(("operator" = []), ("session" = [])),
    responses(
        (status = 200, description = "The node, marked to install on its next boot; with now=true also the power steps taken (needs role maintain)", body = super::openapi::ReinstallAnswer),
        (status = 400, description = "now is not true or false", body = super::openapi::ErrorBody),
        super::openapi::OperatorRefusals,
        (status = 404, description = "No node with that MAC or hostname", body = super::openapi::ErrorBody),
        (status = 409, description = "The node cannot be reinstalled in its state, has no BMC, or its driver cannot do this", body = super::openapi::ErrorBody),
        (status = 502, description = "The BMC failed or did not answer (the node stays marked)", body = super::openapi::ErrorBody),
        (status = 503, description = "The state database cannot be read or written", body = super::openapi::ErrorBody)
    )
)]
async fn reinstall(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<axum::extract::Query<ReinstallQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    // axum's own rejection is plain text; the API answers errors in JSON.
    let q = match query {
        Ok(axum::extract::Query(q)) => q,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("{}; use ?now=true or ?now=false", e.body_text()),
            )
        }
    };
    if q.now {
        let who = match require_api(&state, &headers, Role::Maintain) {
            Ok(p) => p,
            Err(r) => return r,
        };
        return match lookup(&state, &id) {
            Ok(node) => super::power::reinstall_now(state, who, node).await,
            Err(r) => r,
        };
    }
    transition(
        state,
        headers,
        id,
        OperatorAction::Reinstall,
        Role::Maintain,
    )
    .await
}

#[utoipa::path(
    post,
    path = "/api/v1/discovered/{mac}/approve",
    tag = "nodes",
    params(("mac" = String, Path, description = "The machine's MAC address or hostname", example = "52:54:00:00:00:01")),
    security(("operator" = []), ("session" = [])),
    responses(
        (status = 200, description = "Install this machine on its next boot (needs role admin); the record", body = crate::inventory::NodeRecord),
        super::openapi::OperatorRefusals,
        (status = 404, description = "No machine with that MAC or hostname", body = super::openapi::ErrorBody),
        (status = 409, description = "Not possible in the machine's state", body = super::openapi::ErrorBody),
        (status = 503, description = "The state database cannot be read or written", body = super::openapi::ErrorBody)
    )
)]
async fn approve(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(mac): Path<String>,
) -> Response {
    transition(state, headers, mac, OperatorAction::Approve, Role::Admin).await
}

#[utoipa::path(
    post,
    path = "/api/v1/discovered/{mac}/ignore",
    tag = "nodes",
    params(("mac" = String, Path, description = "The machine's MAC address or hostname", example = "52:54:00:00:00:01")),
    security(("operator" = []), ("session" = [])),
    responses(
        (status = 200, description = "Leave this machine alone (needs role admin); the record", body = crate::inventory::NodeRecord),
        super::openapi::OperatorRefusals,
        (status = 404, description = "No machine with that MAC or hostname", body = super::openapi::ErrorBody),
        (status = 409, description = "Not possible in the machine's state", body = super::openapi::ErrorBody),
        (status = 503, description = "The state database cannot be read or written", body = super::openapi::ErrorBody)
    )
)]
async fn ignore(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(mac): Path<String>,
) -> Response {
    transition(state, headers, mac, OperatorAction::Ignore, Role::Admin).await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RunInput {
    #[schema(pattern = "^(exec|sync)$", example = "exec")]
    action: String,
    command: Option<String>,
}

/// `rollout exec` and `rollout sync` run over SSH from the CLI, not through the
/// server; before starting on a node the CLI announces the run here, which needs
/// `maintain` and records who ran what in the node's history and the log.
#[utoipa::path(
    post,
    path = "/api/v1/nodes/{id}/runs",
    tag = "nodes",
    params(("id" = String, Path, description = "The node's MAC address or hostname", example = "node1")),
    request_body = RunInput,
    security(("operator" = []), ("session" = [])),
    responses(
        (status = 204, description = "Recorded in the node's history (needs role maintain)"),
        (status = 400, description = "The body is not valid JSON of the documented shape", body = super::openapi::ErrorBody),
        super::openapi::OperatorRefusals,
        (status = 404, description = "No node with that MAC or hostname", body = super::openapi::ErrorBody),
        (status = 413, description = "The body is over this path's limit", content_type = "text/plain", body = String),
        (status = 422, description = "action is not exec or sync", body = super::openapi::ErrorBody),
        (status = 503, description = "The state database cannot be read or written", body = super::openapi::ErrorBody)
    )
)]
async fn run(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let who = match require_api(&state, &headers, Role::Maintain) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let input: RunInput =
        match json_body(&body, "a run", r#"{"action": "exec", "command": "uptime"}"#) {
            Ok(i) => i,
            Err(r) => return r,
        };
    if !matches!(input.action.as_str(), "exec" | "sync") {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("action {:?} is not a run; use exec or sync", input.action),
        );
    }
    let node = match lookup(&state, &id) {
        Ok(n) => n,
        Err(r) => return r,
    };
    let mut event = json!({"kind": input.action, "by": who.name});
    if let Some(c) = &input.command {
        // Enough to tell runs apart; the history is no place for a whole script.
        event["command"] = c.chars().take(500).collect::<String>().into();
    }
    match blocking(|| state.inventory.note(&node.mac, event)) {
        Ok(()) => {
            audit(&who, &input.action, &node);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => inventory_error(e),
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/discovered",
    tag = "nodes",
    security(("operator" = []), ("session" = [])),
    responses(
        (status = 200, description = "Machines that PXE-booted without being declared (needs role read)", body = Vec<crate::inventory::NodeRecord>),
        super::openapi::OperatorRefusals,
        (status = 503, description = "The state database cannot be read or written", body = super::openapi::ErrorBody)
    )
)]
async fn discovered(State(state): State<Shared>, headers: HeaderMap) -> Response {
    if let Err(r) = require_read(&state, &headers) {
        return r;
    }
    match blocking(|| state.inventory.list()) {
        Ok(nodes) => Json(
            nodes
                .iter()
                .filter(|n| {
                    matches!(n.state, NodeState::Discovered | NodeState::Ignored)
                        || n.source == Source::Discovered
                })
                .map(NodeRecord::public)
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(e) => inventory_error(e),
    }
}

/// Server-Sent Events: one `node` event with the full public record per change.
#[utoipa::path(
    get,
    path = "/api/v1/events",
    tag = "nodes",
    security(("operator" = []), ("session" = [])),
    responses(
        (status = 200, description = "Server-Sent Events: a `node` event with the node's record (JSON) on every change, a `removed` event ({\"mac\": …}) when a node is removed, from this server and every server sharing its database; the stream does not end until the server stops (needs role read)", content_type = "text/event-stream", body = String),
        super::openapi::OperatorRefusals,
        (status = 503, description = "The state database cannot be read or written", body = super::openapi::ErrorBody)
    )
)]
async fn events(State(state): State<Shared>, headers: HeaderMap) -> Response {
    if let Err(r) = require_read(&state, &headers) {
        return r;
    }
    let rx = state.inventory.subscribe();
    let changes = tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(|r| {
        let event = match r.ok()? {
            NodeChange::Saved(node) => Event::default().event("node").json_data(node),
            NodeChange::Removed { mac } => Event::default()
                .event("removed")
                .json_data(serde_json::json!({ "mac": mac })),
        };
        Some(Some(event.ok()?))
    });
    // The stream ends at shutdown, so a watching browser cannot hold the server up.
    let shutdown =
        futures_lite::stream::once_future(state.shutdown.clone().cancelled_owned()).map(|_| None);
    let stream = changes
        .merge(shutdown)
        .take_while(Option::is_some)
        .filter_map(|e| e.map(Ok::<_, std::convert::Infallible>));
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}
