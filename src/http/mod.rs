//! HTTP: iPXE scripts, the installer's kernel and initramfs (with Range support),
//! the installer's API and health.

mod api;
mod boot;

use crate::config::Config;
use crate::inventory::Inventory;
use axum::routing::{get, post};
use axum::Router;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tower_http::services::ServeDir;

pub struct AppState {
    pub config: Config,
    pub inventory: Inventory,
}

pub type Shared = Arc<AppState>;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen for HTTP on {addr}: {source}; another web server may hold the port (set server.http_port), or run as root for port 80")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
}

pub fn router(state: Shared) -> Router {
    let boot_dir = state.config.state_dir.join("boot");
    let ipxe_dir = state.config.server.tftp_root.clone();
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/boot.ipxe", get(boot::script))
        .route(&format!("{}/{{mac}}", crate::wire::paths::PLAN), get(api::plan))
        .route(&format!("{}/{{id}}/events", crate::wire::paths::INSTALLS), post(api::event))
        .route(crate::wire::paths::PHONE_HOME, post(api::phone_home))
        .route("/api/v1/nodes", get(api::list_nodes))
        .route("/api/v1/nodes/{mac}", get(api::get_node))
        .route("/api/v1/nodes/{mac}/reinstall", post(api::reinstall))
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
pub async fn run(listener: tokio::net::TcpListener, state: Shared, cancel: CancellationToken) -> Result<(), HttpError> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
        .map_err(HttpError::Serve)
}
