//! HTTP: iPXE scripts, the installer's kernel and initramfs (with Range support),
//! the installer's API, the operator API and the dashboard.

mod admin;
mod api;
mod auth;
mod boot;
mod dashboard;
mod dashboard_power;
mod image_stream;
mod images_api;
pub mod listen;
mod mirror;
mod multicast;
mod openapi;
mod operators;
mod power;

pub use api::published_serial;
pub use auth::Sessions;
pub use dashboard::{human_bytes, percent};
pub use openapi::{documented_operations, spec_mismatches};
pub use power::run_relayed;

use crate::config::ValidConfig;
use crate::inventory::{Inventory, InventoryError};
use axum::extract::{DefaultBodyLimit, State};
use axum::handler::Handler;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, on, MethodFilter, MethodRouter};
use axum::{Json, Router};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tower_http::services::ServeDir;

pub struct AppState {
    pub config: ValidConfig,
    pub inventory: Arc<Inventory>,
    /// The admin's token: every role (see `auth`). Operators' are in `operators`.
    pub admin_token: String,
    /// Named operator credentials with their roles, looked up per request.
    pub operators: Arc<crate::operators::Operators>,
    /// The dashboard's sign-ins (in memory).
    pub sessions: auth::Sessions,
    /// Put in root's authorized_keys on every node (for `rollout exec`).
    pub ssh_keys: Vec<String>,
    /// The rsync supervisor, when it runs: a serial is only handed out once it
    /// says the serial's module is in rsyncd.conf.
    pub rsync_modules: Option<crate::images::rsyncd::RsyncModules>,
    /// Failures the services survived, printed by `/healthz`.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Each node's last known power state (poller, power calls), for the dashboard.
    pub power_seen: Arc<crate::power::known::Known>,
    /// Fires when the server shuts down: live streams (SSE) end on it.
    pub shutdown: CancellationToken,
    /// Who may copy the image now, who waits (`POST /api/v1/installs/{id}/slot`).
    pub admission: std::sync::Mutex<crate::admission::Admission>,
    /// Wakes the slot requests held near the head of the queue when a slot frees.
    pub slot_freed: tokio::sync::Notify,
    /// The server rsync's transfer checksums, for the plan (`rsync_caps`).
    pub rsync_checksums: Vec<String>,
    /// Multicast first-install sessions (`POST /api/v1/installs/{id}/multicast`).
    pub multicast: Arc<crate::multicast::Multicast>,
    /// With a shared database: power requests for nodes whose BMC another
    /// server's config holds go through it (`power::relay`).
    pub power_relay: Option<Arc<crate::power::relay::PowerRelay>>,
}

pub type Shared = Arc<AppState>;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen on {addr}: {source}; another server may hold the port (set server.http_port), or run as root for ports below 1024")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
}

/// JSON error with a message that says what to fix.
pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

pub(crate) fn inventory_error(e: InventoryError) -> Response {
    error(inventory_status(&e), e.to_string())
}

/// The HTTP status of an inventory failure.
pub(crate) fn inventory_status(e: &InventoryError) -> StatusCode {
    match e {
        InventoryError::BadToken(_) => StatusCode::FORBIDDEN,
        InventoryError::UnknownInstall(_) | InventoryError::UnknownNode(_) => StatusCode::NOT_FOUND,
        InventoryError::Transition { .. } | InventoryError::Conflict(_) => StatusCode::CONFLICT,
        InventoryError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        InventoryError::Refused { .. } => StatusCode::TOO_MANY_REQUESTS,
    }
}

/// One route under `/api/v1`: the method and path it answers (axum's `{param}`
/// syntax, which is also OpenAPI's) and its handler.
pub(crate) struct ApiRoute {
    method: Method,
    path: String,
    handler: MethodRouter<Shared>,
}

/// A route answering `method` only, so the table cannot say one method and serve another.
pub(crate) fn route<H, T>(method: Method, path: impl Into<String>, handler: H) -> ApiRoute
where
    H: Handler<T, Shared>,
    T: 'static,
{
    let filter = MethodFilter::try_from(method.clone()).expect("a method axum routes");
    ApiRoute {
        method,
        path: path.into(),
        handler: on(filter, handler),
    }
}

/// Every route under `/api/v1`, in one list: [`router`] serves exactly these, and
/// the OpenAPI document is checked against [`api_routes`]. Add API routes here,
/// not to the router directly.
fn api_table() -> Vec<ApiRoute> {
    use crate::wire::paths;
    let mut table = vec![
        route(Method::POST, format!("{}/{{mac}}", paths::PLAN), api::plan),
        route(
            Method::POST,
            format!("{}/{{id}}/events", paths::INSTALLS),
            api::event,
        ),
        route(
            Method::POST,
            format!("{}/{{id}}/slot", paths::INSTALLS),
            api::slot,
        ),
        route(
            Method::POST,
            format!("{}/{{id}}/multicast", paths::INSTALLS),
            multicast::join,
        ),
        route(
            Method::GET,
            format!("{}/{{id}}/image.tar", paths::INSTALLS),
            image_stream::image_tar,
        ),
        route(
            Method::GET,
            format!("{}/{{id}}/root.img", paths::INSTALLS),
            image_stream::root_image,
        ),
        route(Method::POST, paths::PHONE_HOME, api::phone_home),
        route(Method::GET, "/api/v1/openapi.json", openapi::spec),
    ];
    table.extend(admin::routes());
    table.extend(power::routes());
    table.extend(mirror::routes());
    table
}

/// `(method, path)` of every route the server answers under `/api/v1`: the
/// table the router is built from.
pub fn api_routes() -> Vec<(String, String)> {
    api_table()
        .into_iter()
        .map(|r| (r.method.to_string(), r.path))
        .collect()
}

/// `ok`, then a `name count` line per kind of failure the server survived, if
/// any (lease writes, DHCP panics, rate-limited clients, rsyncd.conf writes): a
/// monitor that only checks the status still works, one that reads the body
/// sees trouble.
///
/// While lease writes fail (the store is unreachable) the first line is
/// `degraded`, then a line naming the store's error and since when. Still 200:
/// the server is up and serving (HTTP, TFTP, reserved nodes' DHCP), and a 503
/// would make every server sharing a down database look dead to a load
/// balancer or `curl -f` probe at once; the body is what says why.
async fn healthz(State(state): State<Shared>) -> String {
    let now = crate::clock::now_unix();
    let m = &state.metrics;
    // An outage is recorded by the call that failed; ask again now, so the
    // answer is current once the database is back even if nothing else has
    // touched a node since.
    if m.node_store_health.outage().is_some() {
        let _ = tokio::task::block_in_place(|| state.inventory.get(""));
    }
    format!(
        "{}{}",
        crate::store::health::healthz_head(&m.store_health, &m.node_store_health, now),
        m.healthz()
    )
}

/// `GET /metrics`: the Prometheus text exposition. A read like any other
/// (node names and states are in it): a credential of any role, or nobody with
/// `server.anonymous_read`; Prometheus sends a `read` operator's token with
/// `authorization: { credentials_file: … }`.
async fn metrics(State(state): State<Shared>, headers: axum::http::HeaderMap) -> Response {
    if let Err(refused) = auth::require_read(&state, &headers) {
        return refused;
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// Request bodies larger than this are refused with 413: node declarations and
/// dashboard forms are a few hundred bytes.
pub const BODY_LIMIT: usize = 64 << 10;
/// Phone-home carries a MAC, a hostname, a serial and a boot id.
pub const PHONE_HOME_LIMIT: usize = 4 << 10;
/// An installer event; a failure report carries the error (which may quote a
/// command's whole output) and 30 console lines. Generous, so a report is never
/// lost to the limit: the node store keeps only the first KiB of each text
/// (`inventory::limits`).
pub const EVENT_LIMIT: usize = 256 << 10;

/// The body limit of an API path: phone-home (sent by every installed node, no
/// install token) is the smallest, installer events the largest; everything
/// else gets [`BODY_LIMIT`].
pub fn body_limit(path: &str) -> usize {
    use crate::wire::paths;
    if path == paths::PHONE_HOME {
        PHONE_HOME_LIMIT
    } else if path.starts_with(paths::INSTALLS) && path.ends_with("/events") {
        EVENT_LIMIT
    } else {
        BODY_LIMIT
    }
}

pub fn router(state: Shared) -> Router {
    let boot_dir = state.config.state_dir.join("boot");
    let ipxe_dir = state.config.tftp_root.clone();
    let mut app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/boot.ipxe", get(boot::script));
    for r in api_table() {
        let limit = DefaultBodyLimit::max(body_limit(&r.path));
        // Two methods on one path merge into one method router.
        app = app.route(&r.path, r.handler.layer(limit));
    }
    app.merge(dashboard::routes())
        // Nested trees: list a new one in crate::metrics::http::NESTED too.
        // state_dir/boot (`rollout initramfs build`) first, then the packaged files.
        .nest_service(
            "/boot",
            ServeDir::new(&boot_dir).fallback(ServeDir::new(
                crate::bootfiles::packaged_boot_dir().unwrap_or(boot_dir),
            )),
        )
        // UEFI HTTP boot clients fetch their first stage by URL instead of TFTP.
        .nest_service("/ipxe", ServeDir::new(ipxe_dir))
        // Dashboard forms and anything not in the API table.
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        // After routing (Router::layer wraps each route): the route template is known.
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            crate::metrics::http::count,
        ))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, HttpError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind { addr, source })
}

/// Serves until cancelled; requests in flight get [`listen::Limits::drain`] to finish.
pub async fn run(
    listener: tokio::net::TcpListener,
    state: Shared,
    cancel: CancellationToken,
) -> Result<(), HttpError> {
    listen::serve(listener, router(state), listen::Limits::default(), cancel)
        .await
        .map_err(HttpError::Serve)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_api_path_has_a_body_limit_phone_home_the_smallest() {
        let limits: Vec<(String, usize)> = api_routes()
            .into_iter()
            .map(|(_, path)| {
                let limit = body_limit(&path);
                (path, limit)
            })
            .collect();
        let of = |p: &str| limits.iter().find(|(path, _)| path == p).unwrap().1;
        assert_eq!(of(crate::wire::paths::PHONE_HOME), PHONE_HOME_LIMIT);
        assert_eq!(of("/api/v1/installs/{id}/events"), EVENT_LIMIT);
        assert_eq!(of("/api/v1/nodes"), BODY_LIMIT);
        assert!(limits.iter().all(|(_, l)| *l <= EVENT_LIMIT));
    }
}
