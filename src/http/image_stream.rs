//! `GET /api/v1/installs/{id}/image.tar`: the install's serial as one tar
//! stream (`[install] tar_prefill`). The installer unpacks it onto the empty
//! root, then runs its rsync copy as always, which finds almost nothing left
//! to send: a first install pays rsync's per-file protocol and checksums only
//! for what the stream missed, and a stream cut short costs a bigger rsync,
//! never a broken install.

use std::process::Stdio;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::io::AsyncReadExt;
use tracing::{info, warn};

use super::api::running_install_serial;
use super::{error, Shared};

/// Bytes read from tar per chunk sent.
const CHUNK: usize = 256 * 1024;

#[utoipa::path(
    get,
    path = "/api/v1/installs/{id}/image.tar",
    tag = "installer",
    params(("id" = String, Path, description = "The install_id from the plan")),
    security(("install" = [])),
    responses(
        (status = 200, description = "The serial's tree as a GNU tar stream (the image's excludes left out)", content_type = "application/x-tar", body = Vec<u8>),
        (status = 401, description = "No `Authorization: Bearer` install token", body = super::openapi::ErrorBody),
        (status = 403, description = "The token is not this install's", body = super::openapi::ErrorBody),
        (status = 404, description = "No such install, or `[install] tar_prefill` is off", body = super::openapi::ErrorBody),
        (status = 409, description = "The install is not running, or has no serial yet", body = super::openapi::ErrorBody),
        (status = 503, description = "The state database cannot be read, or tar could not start", body = super::openapi::ErrorBody)
    )
)]
pub async fn image_tar(
    State(state): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let cfg = &state.config;
    if !cfg.install.tar_prefill {
        return error(
            StatusCode::NOT_FOUND,
            "this server does not stream images ([install] tar_prefill is off); copy with rsync",
        );
    }
    let (rec, serial) = match running_install_serial(&state, &id, &headers) {
        Ok(r) => r,
        Err(refused) => return *refused,
    };
    let root = crate::images::Images::new(&cfg.state_dir).serial_root(&rec.image, serial);
    let args = crate::multicast::sender::image_tar_args(&root, &cfg.excludes_for(&rec.image));
    let mut child = match tokio::process::Command::new("tar")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        // A node that goes away mid-stream ends its tar with it.
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            warn!(install = %id, error = %e, "tar for the image stream did not start");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("tar did not start ({e}); the node copies with rsync"),
            );
        }
    };
    let stdout = child.stdout.take().expect("piped");
    info!(install = %id, host = %rec.hostname, image = %rec.image, serial, "streaming the image as tar");
    let hostname = rec.hostname.clone();
    // The child rides along in the stream's state, so it lives (and is
    // reaped, or killed when the node hangs up) exactly as long as the body.
    let chunks = futures_lite::stream::unfold(Some((stdout, child, hostname)), |st| async move {
        let (mut out, mut child, host) = st?;
        let mut buf = vec![0u8; CHUNK];
        match out.read(&mut buf).await {
            Ok(0) => {
                let status = child.wait().await;
                match status {
                    Ok(s) if s.success() => None,
                    other => {
                        warn!(host = %host, status = ?other, "tar of the image ended badly: the stream is cut short");
                        Some((Err(std::io::Error::other("tar failed")), None))
                    }
                }
            }
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), Some((out, child, host))))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    (
        [(header::CONTENT_TYPE, "application/x-tar")],
        Body::from_stream(chunks),
    )
        .into_response()
}
