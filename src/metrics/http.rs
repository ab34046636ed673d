//! The HTTP middleware behind `rollout_http_requests_total`.

use super::{HttpLabels, Metrics};
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use std::sync::Arc;

/// The label for a request's route: the template axum matched
/// (`/api/v1/nodes/{id}`), `unmatched` when nothing did (a 404 from the
/// fallback). Never the raw path: every scanner's guess would be a new series.
pub fn route_label(matched: Option<&str>) -> String {
    match matched {
        Some(p) => p.to_string(),
        None => "unmatched".into(),
    }
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
    let route = route_label(req.extensions().get::<MatchedPath>().map(|p| p.as_str()));
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
