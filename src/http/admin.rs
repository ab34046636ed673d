//! The operator API under `/api/v1`: nodes, discovered machines, images, history
//! and the live event stream. Reads are open on the provisioning network
//! (except an image's serial and excludes, rollout-sync's calls, which need a
//! node's credential or the admin token); changes need the admin token.

// Handlers return a ready Response as the error, as axum handlers do; boxing it
// would only add noise at every call site.
#![allow(clippy::result_large_err)]

use super::{error, inventory_error, route, ApiRoute, Shared};
use crate::config::{normalize_mac, valid_hostname};
use crate::inventory::{NodeRecord, NodeState, Source};
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
        route(Method::GET, "/api/v1/nodes/{id}/history", history),
        route(Method::GET, "/api/v1/discovered", discovered),
        route(Method::POST, "/api/v1/discovered/{mac}/approve", approve),
        route(Method::POST, "/api/v1/discovered/{mac}/ignore", ignore),
        route(Method::GET, "/api/v1/images", images),
        route(Method::GET, "/api/v1/images/{name}/serial", image_serial),
        route(
            Method::GET,
            "/api/v1/images/{name}/excludes",
            image_excludes,
        ),
        route(Method::GET, "/api/v1/events", events),
    ]
}

/// The admin token from `Authorization: Bearer` or the dashboard's cookie.
pub fn is_admin(state: &Shared, headers: &HeaderMap) -> bool {
    let bearer = super::api::bearer(headers);
    let cookie = headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().strip_prefix("rollout_admin="))
        .next();
    let given = bearer.or(cookie).unwrap_or("");
    // Same length and every byte compared, so timing says nothing about the token.
    given.len() == state.admin_token.len()
        && given
            .bytes()
            .zip(state.admin_token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

fn require_admin(state: &Shared, headers: &HeaderMap) -> Result<(), Response> {
    if is_admin(state, headers) {
        Ok(())
    } else {
        Err(error(
            StatusCode::UNAUTHORIZED,
            format!(
                "this call changes state and needs `Authorization: Bearer <token>`; the token is in {}/admin.token on the server",
                state.config.state_dir.display()
            ),
        ))
    }
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Finds a node by MAC or hostname, or answers 404.
fn lookup(state: &Shared, id: &str) -> Result<NodeRecord, Response> {
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

async fn list_nodes(State(state): State<Shared>) -> Response {
    match blocking(|| state.inventory.list()) {
        Ok(nodes) => Json(nodes.iter().map(NodeRecord::public).collect::<Vec<_>>()).into_response(),
        Err(e) => inventory_error(e),
    }
}

async fn get_node(State(state): State<Shared>, Path(id): Path<String>) -> Response {
    match lookup(&state, &id) {
        Ok(n) => Json(n.public()).into_response(),
        Err(r) => r,
    }
}

async fn history(State(state): State<Shared>, Path(id): Path<String>) -> Response {
    let node = match lookup(&state, &id) {
        Ok(n) => n,
        Err(r) => return r,
    };
    match blocking(|| state.inventory.history(&node.mac)) {
        Ok(h) => Json(h).into_response(),
        Err(e) => inventory_error(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeInput {
    pub mac: String,
    pub hostname: String,
    pub ip: Option<String>,
    pub image: Option<String>,
    pub disk: Option<String>,
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

async fn upsert_node(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = require_admin(&state, &headers) {
        return r;
    }
    let input: NodeInput = match serde_json::from_slice(&body) {
        Ok(i) => i,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("body is not a node: {e}; send JSON like {{\"mac\": \"52:54:00:12:34:56\", \"hostname\": \"node7\"}}")),
    };
    let rec = match validate(&state, &input) {
        Ok(r) => r,
        Err(msg) => return error(StatusCode::UNPROCESSABLE_ENTITY, msg),
    };
    match blocking(|| state.inventory.declare(rec)) {
        Ok(n) => (StatusCode::OK, Json(n.public())).into_response(),
        Err(e) => inventory_error(e),
    }
}

async fn delete_node(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = require_admin(&state, &headers) {
        return r;
    }
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
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => inventory_error(e),
    }
}

async fn transition(
    state: Shared,
    headers: HeaderMap,
    id: String,
    f: fn(
        &crate::inventory::Inventory,
        &str,
    ) -> Result<NodeRecord, crate::inventory::InventoryError>,
) -> Response {
    if let Err(r) = require_admin(&state, &headers) {
        return r;
    }
    let node = match lookup(&state, &id) {
        Ok(n) => n,
        Err(r) => return r,
    };
    match blocking(|| f(&state.inventory, &node.mac)) {
        Ok(n) => Json(n.public()).into_response(),
        Err(e) => inventory_error(e),
    }
}

async fn reinstall(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    transition(state, headers, id, |i, m| i.request_reinstall(m)).await
}

async fn approve(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(mac): Path<String>,
) -> Response {
    transition(state, headers, mac, |i, m| i.approve(m)).await
}

async fn ignore(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(mac): Path<String>,
) -> Response {
    transition(state, headers, mac, |i, m| i.ignore(m)).await
}

async fn discovered(State(state): State<Shared>) -> Response {
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

/// Images and their serials, read from the state directory.
pub fn image_list(state_dir: &std::path::Path) -> Vec<serde_json::Value> {
    let mut out = vec![];
    let Ok(dir) = std::fs::read_dir(state_dir.join("images")) else {
        return out;
    };
    let mut names: Vec<String> = dir
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    for name in names {
        let serials_dir = state_dir.join("images").join(&name).join("serials");
        let mut serials: Vec<u64> = std::fs::read_dir(&serials_dir)
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        serials.sort_unstable();
        let metas: Vec<serde_json::Value> = serials
            .iter()
            .map(|s| {
                std::fs::read_to_string(serials_dir.join(s.to_string()).join("meta.json"))
                    .ok()
                    .and_then(|t| serde_json::from_str(&t).ok())
                    .unwrap_or_else(|| json!({ "serial": s }))
            })
            .collect();
        out.push(json!({
            "name": name,
            "published": super::published_serial(state_dir, &name),
            "serials": metas,
        }));
    }
    out
}

async fn images(State(state): State<Shared>) -> Response {
    Json(image_list(&state.config.state_dir)).into_response()
}

/// The admin, or an installed node with its own credential (rollout-sync).
fn require_admin_or_node(state: &Shared, headers: &HeaderMap) -> Result<(), Response> {
    if is_admin(state, headers) {
        return Ok(());
    }
    let Some(secret) = super::api::bearer(headers) else {
        return Err(super::api::node_auth_error(
            crate::inventory::secrets::NodeAuthError::Missing,
        ));
    };
    match blocking(|| state.inventory.node_by_secret(secret)) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(super::api::node_auth_error(
            crate::inventory::secrets::NodeAuthError::Wrong,
        )),
        Err(e) => Err(inventory_error(e)),
    }
}

/// The serial rollout-sync should be on; for nodes (their secret) and the admin.
async fn image_serial(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    if let Err(r) = require_admin_or_node(&state, &headers) {
        return r;
    }
    match super::api::served_serial(&state, &name).await {
        Some(s) => format!("{s}\n").into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("image {name:?} has no published serial"),
        ),
    }
}

/// The image's node-local paths, one per line: what `rollout-sync` must not touch.
/// Asked at every sync, so a path the operator adds protects nodes already installed.
async fn image_excludes(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    if let Err(r) = require_admin_or_node(&state, &headers) {
        return r;
    }
    if super::published_serial(&state.config.state_dir, &name).is_none() {
        return error(
            StatusCode::NOT_FOUND,
            format!("image {name:?} has no published serial"),
        );
    }
    let mut body = state.config.excludes_for(&name).join("\n");
    body.push('\n');
    body.into_response()
}

/// Server-Sent Events: one `node` event with the full public record per change.
async fn events(State(state): State<Shared>) -> impl IntoResponse {
    let rx = state.inventory.subscribe();
    let stream = tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(|r| {
        let node = r.ok()?;
        Some(Ok::<_, std::convert::Infallible>(
            Event::default().event("node").json_data(node).ok()?,
        ))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
