//! `GET /api/v1/mirror`: what this server's image mirror is doing (`[images]
//! mirror_from`), as `rollout image list` shows it: idle, copying (which
//! serial, how far), or the error it retries after.

use super::auth::require_read;
use super::{error, route, ApiRoute, Shared};
use crate::images::mirror::status::MirrorStatus;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

pub fn routes() -> Vec<ApiRoute> {
    vec![route(Method::GET, "/api/v1/mirror", mirror)]
}

/// The mirror's status, or why there is none.
pub fn status(state: &Shared) -> Result<MirrorStatus, (StatusCode, String)> {
    if state.config.mirroring.mirror_from.is_none() {
        return Err((
            StatusCode::NOT_FOUND,
            "this server is not a mirror: it builds and publishes its own images (a mirror has [images] mirror_from)".into(),
        ));
    }
    MirrorStatus::read(&state.config.state_dir).ok_or((
        StatusCode::SERVICE_UNAVAILABLE,
        "the mirror has not reported yet: it writes its status once it first looks at the primary"
            .into(),
    ))
}

#[utoipa::path(
    get,
    path = "/api/v1/mirror",
    tag = "images",
    security(("operator" = []), ("session" = [])),
    responses(
        (status = 200, description = "The image mirror's state: starting, idle, copying (image, serial, bytes, percent), error (cause, retry_in_secs) or stopped; when it last was in step with the primary (needs role read)", body = MirrorStatus),
        super::openapi::OperatorRefusals,
        (status = 404, description = "This server is not a mirror (no [images] mirror_from)", body = super::openapi::ErrorBody),
        (status = 503, description = "The mirror has not reported yet", body = super::openapi::ErrorBody)
    )
)]
pub(super) async fn mirror(State(state): State<Shared>, headers: HeaderMap) -> Response {
    if let Err(r) = require_read(&state, &headers) {
        return r;
    }
    match status(&state) {
        Ok(s) => Json(s).into_response(),
        Err((code, message)) => error(code, message),
    }
}
