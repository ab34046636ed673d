//! The HTTP middleware behind `rollout_http_requests_total`.

use super::{HttpLabels, Metrics};
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use std::sync::Arc;

/// The file trees the router serves with `nest_service` (src/http/mod.rs):
/// axum records no matched path inside them, so they are labelled here.
pub const NESTED: [&str; 2] = ["/boot", "/ipxe"];

/// The label for a request's route: the template axum matched
/// (`/api/v1/nodes/{id}`), `/boot/{*path}` or `/ipxe/{*path}` for the file
/// trees, `unmatched` when nothing did (a 404 from the fallback). Never the
/// raw path: every scanner's guess would be a new series.
pub fn route_label(matched: Option<&str>, path: &str) -> String {
    if let Some(p) = matched {
        return p.to_string();
    }
    NESTED
        .iter()
        .find(|prefix| {
            path.strip_prefix(**prefix)
                .is_some_and(|rest| rest.starts_with('/'))
        })
        .map_or_else(
            || "unmatched".into(),
            |prefix| format!("{prefix}/{{*path}}"),
        )
}

/// A method label from a closed set: anything unusual is `other`.
pub fn method_label(m: &axum::http::Method) -> String {
    use axum::http::Method;
    let known = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::OPTIONS,
    ];
    if known.contains(m) {
        m.as_str().to_string()
    } else {
        "other".into()
    }
}

/// Counts each request once its response is ready (added with
/// `Router::layer`, which runs after routing, so [`MatchedPath`] is known).
pub async fn count(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let matched = req.extensions().get::<MatchedPath>().map(|p| p.as_str());
    let route = route_label(matched, req.uri().path());
    let method = method_label(req.method());
    let response = next.run(req).await;
    metrics
        .http_requests
        .get_or_create(&HttpLabels {
            method,
            route,
            status: response.status().as_u16(),
        })
        .inc();
    response
}
