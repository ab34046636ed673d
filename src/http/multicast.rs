//! `POST /api/v1/installs/{id}/multicast`: an installer joins its serial's
//! multicast session, or learns what was sent (`crate::multicast`).

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::api::running_install_serial;
use super::Shared;

/// Joins the install's serial's multicast session (the first asker opens
/// it; the server collects receivers for `[install] multicast.wait_secs`,
/// then streams), or, asked again by a receiver, says whether the stream is
/// still running and what it sent (bytes, SHA-256). A node that asks after
/// its serial's stream started gets `no_session` and copies with rsync.
#[utoipa::path(
    post,
    path = "/api/v1/installs/{id}/multicast",
    tag = "installer",
    params(("id" = String, Path, description = "The install_id from the plan")),
    security(("install" = [])),
    responses(
        (status = 200, description = "Joined (the port, when the stream starts), no session (why), streaming (ask again), sent (bytes and SHA-256) or failed", body = crate::wire::multicast::MulticastAnswer),
        (status = 401, description = "No `Authorization: Bearer` install token", body = super::openapi::ErrorBody),
        (status = 403, description = "The token is not this install's", body = super::openapi::ErrorBody),
        (status = 404, description = "No such install", body = super::openapi::ErrorBody),
        (status = 409, description = "The install is not running (installed, failed or timed out)", body = super::openapi::ErrorBody),
        (status = 413, description = "The body is over this path's limit", content_type = "text/plain", body = String),
        (status = 503, description = "The state database cannot be read", body = super::openapi::ErrorBody)
    )
)]
pub async fn join(
    State(state): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let (rec, serial) = match running_install_serial(&state, &id, &headers) {
        Ok(r) => r,
        Err(refused) => return *refused,
    };
    let cfg = &state.config;
    let request = crate::multicast::Request {
        install_id: &id,
        hostname: &rec.hostname,
        image: &rec.image,
        serial,
        root: crate::images::Images::new(&cfg.state_dir).serial_root(&rec.image, serial),
        excludes: cfg.excludes_for(&rec.image),
    };
    let mc = state.multicast.clone();
    Json(tokio::task::block_in_place(|| mc.ask(request))).into_response()
}
