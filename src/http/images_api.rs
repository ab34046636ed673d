//! The image routes of the operator API: the images and their serials (any
//! operator role), and an image's published serial and excludes, which
//! rollout-sync on an installed node asks with the node's own credential.

// Handlers return a ready Response as the error, as axum handlers do.
#![allow(clippy::result_large_err)]

use super::admin::blocking;
use super::auth::require_read;
use super::{error, inventory_error, route, ApiRoute, Shared};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

pub fn routes() -> Vec<ApiRoute> {
    vec![
        route(Method::GET, "/api/v1/images", images),
        route(Method::GET, "/api/v1/images/{name}/serial", image_serial),
        route(
            Method::GET,
            "/api/v1/images/{name}/excludes",
            image_excludes,
        ),
    ]
}

/// Images and their complete serials with metadata, as the image store sees them
/// (`{state_dir}/images`). A serial whose meta.json cannot be read is still listed,
/// by number, so the operator sees it exists.
pub fn image_list(state_dir: &std::path::Path) -> Vec<serde_json::Value> {
    let store = crate::images::Images::new(state_dir);
    let names = store.names().unwrap_or_default();
    names
        .into_iter()
        .map(|name| {
            let metas: Vec<serde_json::Value> = store
                .serials(&name)
                .unwrap_or_default()
                .into_iter()
                .map(|s| match store.meta(&name, s) {
                    Ok(m) => json!(m),
                    Err(_) => json!({ "serial": s }),
                })
                .collect();
            json!({
                "name": name,
                "published": store.published(&name).ok().flatten(),
                "serials": metas,
            })
        })
        .collect()
}

#[utoipa::path(
    get,
    path = "/api/v1/images",
    tag = "images",
    security(("operator" = []), ("session" = [])),
    responses(
        (status = 200, description = "Images, their serials and the published one (needs role read)", body = Vec<super::openapi::ImageEntry>),
        super::openapi::OperatorRefusals,
        (status = 503, description = "The state database cannot be read or written", body = super::openapi::ErrorBody)
    )
)]
async fn images(State(state): State<Shared>, headers: HeaderMap) -> Response {
    if let Err(r) = require_read(&state, &headers) {
        return r;
    }
    Json(image_list(&state.config.state_dir)).into_response()
}

/// An operator (any role: these are reads, also the dashboard's session) or an
/// installed node with its own credential (rollout-sync). Never anonymous, even
/// with `server.anonymous_read`: a node's view of its image is not public.
fn require_operator_or_node(state: &Shared, headers: &HeaderMap) -> Result<(), Response> {
    use crate::inventory::secrets::NodeAuthError;
    let Some(secret) = super::api::bearer(headers) else {
        return match super::auth::authenticate(state, headers) {
            Ok(Some(_)) => Ok(()),
            _ => Err(super::api::node_auth_error(NodeAuthError::Missing)),
        };
    };
    match blocking(|| state.inventory.node_by_secret(secret)) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => match super::auth::authenticate(state, headers) {
            Ok(Some(_)) => Ok(()),
            _ => Err(super::api::node_auth_error(NodeAuthError::Wrong)),
        },
        Err(e) => Err(inventory_error(e)),
    }
}

/// The serial rollout-sync should be on; for nodes (their secret) and the admin.
#[utoipa::path(
    get,
    path = "/api/v1/images/{name}/serial",
    tag = "images",
    params(("name" = String, Path, description = "The image's name", example = "default")),
    security(("node" = []), ("operator" = []), ("session" = [])),
    responses(
        (status = 200, description = "The published serial, one line", content_type = "text/plain", body = String),
        (status = 401, description = "No credential", body = super::openapi::ErrorBody),
        (status = 403, description = "Neither a node secret nor an operator credential", body = super::openapi::ErrorBody),
        (status = 404, description = "The image has no published serial", body = super::openapi::ErrorBody),
        (status = 503, description = "The state database cannot be read or written", body = super::openapi::ErrorBody)
    )
)]
async fn image_serial(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    if let Err(r) = require_operator_or_node(&state, &headers) {
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
#[utoipa::path(
    get,
    path = "/api/v1/images/{name}/excludes",
    tag = "images",
    params(("name" = String, Path, description = "The image's name", example = "default")),
    security(("node" = []), ("operator" = []), ("session" = [])),
    responses(
        (status = 200, description = "The image's node-local paths (rsync exclude patterns), one per line: the defaults, then its [[image]] excludes", content_type = "text/plain", body = String),
        (status = 401, description = "No credential", body = super::openapi::ErrorBody),
        (status = 403, description = "Neither a node secret nor an operator credential", body = super::openapi::ErrorBody),
        (status = 404, description = "The image has no published serial", body = super::openapi::ErrorBody),
        (status = 503, description = "The state database cannot be read or written", body = super::openapi::ErrorBody)
    )
)]
async fn image_excludes(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    if let Err(r) = require_operator_or_node(&state, &headers) {
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
