//! `/api/v1/operators` (admin only): issue, list and revoke named operator
//! credentials; `/api/v1/whoami`: the name and role a credential stands for.

use super::auth::{require_api, require_read};
use super::{error, route, ApiRoute, Shared};
use crate::operators::{OperatorError, Role};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

pub fn routes() -> Vec<ApiRoute> {
    vec![
        route(Method::GET, "/api/v1/whoami", whoami),
        route(Method::GET, "/api/v1/operators", list),
        route(Method::POST, "/api/v1/operators", add),
        route(Method::DELETE, "/api/v1/operators/{name}", revoke),
    ]
}

fn store_error(e: OperatorError) -> Response {
    let status = match e {
        OperatorError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        OperatorError::Exists(_) => StatusCode::CONFLICT,
        OperatorError::Unknown(_) => StatusCode::NOT_FOUND,
        OperatorError::BadName(_) => StatusCode::UNPROCESSABLE_ENTITY,
    };
    error(status, e.to_string())
}

#[utoipa::path(
    get,
    path = "/api/v1/whoami",
    tag = "operators",
    security(("operator" = []), ("session" = [])),
    responses(
        (status = 200, description = "The name and role the credential stands for", body = super::openapi::Whoami),
        (status = 401, description = "No credential, or one nobody holds", body = super::openapi::ErrorBody),
        (status = 503, description = "The state database cannot be read or written", body = super::openapi::ErrorBody)
    )
)]
async fn whoami(State(state): State<Shared>, headers: HeaderMap) -> Response {
    match require_read(&state, &headers) {
        Ok(Some(p)) => Json(json!({"name": p.name, "role": p.role})).into_response(),
        Ok(None) => Json(json!({"name": null, "role": "read"})).into_response(),
        Err(r) => r,
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/operators",
    tag = "operators",
    security(("operator" = []), ("session" = [])),
    responses(
        (status = 200, description = "Operator credentials: name, role, created; never tokens (needs role admin)", body = Vec<crate::operators::Operator>),
        super::openapi::OperatorRefusals,
        (status = 503, description = "The state database cannot be read or written", body = super::openapi::ErrorBody)
    )
)]
async fn list(State(state): State<Shared>, headers: HeaderMap) -> Response {
    if let Err(r) = require_api(&state, &headers, Role::Admin) {
        return r;
    }
    match tokio::task::block_in_place(|| state.operators.list()) {
        Ok(ops) => Json(ops).into_response(),
        Err(e) => store_error(e),
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewOperator {
    /// Letters, digits, `.`, `_`, `-`; not `admin`.
    #[schema(pattern = r"^[A-Za-z0-9._-]{1,64}$", example = "alice")]
    name: String,
    #[schema(value_type = crate::operators::Role)]
    role: String,
}

#[utoipa::path(
    post,
    path = "/api/v1/operators",
    tag = "operators",
    request_body = NewOperator,
    security(("operator" = []), ("session" = [])),
    responses(
        (status = 200, description = "The new credential; its token is shown only this once (needs role admin)", body = super::openapi::IssuedOperator),
        (status = 400, description = "The body is not valid JSON of the documented shape", body = super::openapi::ErrorBody),
        super::openapi::OperatorRefusals,
        (status = 409, description = "An operator of that name exists", body = super::openapi::ErrorBody),
        (status = 413, description = "The body is over this path's limit", content_type = "text/plain", body = String),
        (status = 422, description = "The name or role is not valid", body = super::openapi::ErrorBody),
        (status = 503, description = "The state database cannot be read or written", body = super::openapi::ErrorBody)
    )
)]
async fn add(State(state): State<Shared>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let who = match require_api(&state, &headers, Role::Admin) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let input: NewOperator = match super::admin::json_body(
        &body,
        "an operator",
        r#"{"name": "alice", "role": "maintain"}"#,
    ) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let Some(role) = Role::parse(&input.role) else {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "role {:?} does not exist; use read (see everything), maintain (also reinstall) or admin (also nodes and operators)",
                input.role
            ),
        );
    };
    let now = crate::clock::now_unix();
    match tokio::task::block_in_place(|| state.operators.add(&input.name, role, now)) {
        Ok(token) => {
            tracing::info!(operator = %who.name, added = %input.name, %role, "operator added");
            Json(json!({"name": input.name, "role": role, "token": token})).into_response()
        }
        Err(e) => store_error(e),
    }
}

#[utoipa::path(
    delete,
    path = "/api/v1/operators/{name}",
    tag = "operators",
    params(("name" = String, Path, description = "The operator's name", example = "alice")),
    security(("operator" = []), ("session" = [])),
    responses(
        (status = 204, description = "Revoked: its next request is refused, its sessions end (needs role admin)"),
        super::openapi::OperatorRefusals,
        (status = 404, description = "No operator of that name", body = super::openapi::ErrorBody),
        (status = 422, description = "The name is not valid", body = super::openapi::ErrorBody),
        (status = 503, description = "The state database cannot be read or written", body = super::openapi::ErrorBody)
    )
)]
async fn revoke(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let who = match require_api(&state, &headers, Role::Admin) {
        Ok(p) => p,
        Err(r) => return r,
    };
    match tokio::task::block_in_place(|| state.operators.revoke(&name)) {
        Ok(()) => {
            tracing::info!(operator = %who.name, revoked = %name, "operator revoked");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => store_error(e),
    }
}
