//! HTTP: iPXE scripts, the installer's kernel and initramfs (with Range support),
//! the installer's API, the operator API and the dashboard.

mod admin;
mod api;
mod boot;
mod dashboard;
mod openapi;

pub use api::published_serial;
pub use boot::generated_hostname;
pub use dashboard::percent;

use crate::config::Config;
use crate::inventory::{Inventory, InventoryError};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tower_http::services::ServeDir;

pub struct AppState {
    pub config: Config,
    pub inventory: Arc<Inventory>,
    /// Mutating API calls need `Authorization: Bearer <admin_token>`.
    pub admin_token: String,
    /// Put in root's authorized_keys on every node (for `rollout exec`).
    pub ssh_keys: Vec<String>,
    /// The rsync daemon's settings, when it runs: a serial is only handed out
    /// once its module is in rsyncd.conf.
    pub rsyncd: Option<crate::images::rsyncd::RsyncdSettings>,
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
    let status = match e {
        InventoryError::BadToken(_) => StatusCode::FORBIDDEN,
        InventoryError::UnknownInstall(_) | InventoryError::UnknownNode(_) => StatusCode::NOT_FOUND,
        InventoryError::Transition { .. } | InventoryError::Conflict(_) => StatusCode::CONFLICT,
        InventoryError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(status, e.to_string())
}

pub fn router(state: Shared) -> Router {
    use crate::wire::paths;
    let boot_dir = state.config.state_dir.join("boot");
    let ipxe_dir = state.config.server.tftp_root.clone();
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/boot.ipxe", get(boot::script))
        .route(&format!("{}/{{mac}}", paths::PLAN), get(api::plan))
        .route(
            &format!("{}/{{id}}/events", paths::INSTALLS),
            post(api::event),
        )
        .route(paths::PHONE_HOME, post(api::phone_home))
        .merge(admin::routes())
        .merge(dashboard::routes())
        .route("/api/v1/openapi.json", get(openapi::spec))
        .nest_service("/boot", ServeDir::new(boot_dir))
        // UEFI HTTP boot clients fetch ipxe.efi by URL instead of TFTP.
        .nest_service("/ipxe", ServeDir::new(ipxe_dir))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, HttpError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind { addr, source })
}

/// Serves until cancelled; requests in flight are finished first.
pub async fn run(
    listener: tokio::net::TcpListener,
    state: Shared,
    cancel: CancellationToken,
) -> Result<(), HttpError> {
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
        .map_err(HttpError::Serve)
}
