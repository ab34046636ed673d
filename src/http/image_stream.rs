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
use crate::images::block;

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

/// Which filesystem the node's root is and its device's size in bytes
/// (`?fs=ext3&bytes=1073741824`): the image is made as that, that size.
#[derive(Debug, serde::Deserialize)]
pub struct RootImageQuery {
    fs: crate::wire::Fs,
    bytes: u64,
}

#[utoipa::path(
    get,
    path = "/api/v1/installs/{id}/root.img",
    tag = "installer",
    params(
        ("id" = String, Path, description = "The install_id from the plan"),
        ("fs" = String, Query, description = "The root's filesystem: ext3 or ext4"),
        ("bytes" = u64, Query, description = "The root device's size in bytes (a multiple of 4096, 16 MiB to 16 TiB)")
    ),
    security(("install" = [])),
    responses(
        (status = 200, description = "The serial's block image stream (`wire::block_image`): made on first use, then kept", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, description = "No `fs` or `bytes`, a filesystem that is not ext3/ext4, or a size out of range", body = super::openapi::ErrorBody),
        (status = 401, description = "No `Authorization: Bearer` install token", body = super::openapi::ErrorBody),
        (status = 403, description = "The token is not this install's", body = super::openapi::ErrorBody),
        (status = 404, description = "No such install, or `[install] block_image` is off", body = super::openapi::ErrorBody),
        (status = 409, description = "The install is not running, or has no serial yet", body = super::openapi::ErrorBody),
        (status = 503, description = "The image could not be made (the node copies with rsync)", body = super::openapi::ErrorBody)
    )
)]
pub async fn root_image(
    State(state): State<Shared>,
    Path(id): Path<String>,
    query: Result<axum::extract::Query<RootImageQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let cfg = &state.config;
    if !cfg.install.block_image {
        return error(
            StatusCode::NOT_FOUND,
            "this server makes no block images ([install] block_image is off); copy with rsync",
        );
    }
    let (fs, bytes) = match query {
        Ok(axum::extract::Query(q)) if q.fs != crate::wire::Fs::Xfs => (q.fs, q.bytes),
        Ok(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "only ext3 and ext4 roots come as block images; copy xfs with rsync",
            )
        }
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("{e}: ask with ?fs=ext3&bytes=<the root device's size>"),
            )
        }
    };
    if let Err(e) = block::check_size(bytes) {
        return error(StatusCode::BAD_REQUEST, e.to_string());
    }
    let (rec, serial) = match running_install_serial(&state, &id, &headers) {
        Ok(r) => r,
        Err(refused) => return *refused,
    };
    let want = block::Wanted::new(
        &cfg.state_dir,
        cfg.excludes_for(&rec.image),
        &rec.image,
        serial,
        fs,
        bytes,
    );
    let live = crate::images::Images::new(&cfg.state_dir)
        .serials(&rec.image)
        .unwrap_or_default();
    let (state_dir, image) = (cfg.state_dir.clone(), rec.image.clone());
    info!(install = %id, host = %rec.hostname, image = %rec.image, serial, fs = fs.as_str(), "sending the block image");
    let made = tokio::task::spawn_blocking(move || {
        let made = want.ensure();
        block::forget_pruned(&state_dir, &image, &live);
        made
    })
    .await;
    let img = match made {
        Ok(Ok(img)) => img,
        Ok(Err(e)) => {
            warn!(install = %id, error = %e, "no block image");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the block image could not be made ({e}); the node copies with rsync"),
            );
        }
        Err(e) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the block image builder died ({e}); the node copies with rsync"),
            )
        }
    };
    let len = img.stream_len();
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(8);
    let host = rec.hostname.clone();
    tokio::task::spawn_blocking(move || {
        let mut w = ChannelWriter {
            tx: tx.clone(),
            buf: Vec::with_capacity(CHUNK),
        };
        // A node that hangs up closes the channel: the write fails, we stop.
        if let Err(e) = block::write_stream(&img, &mut w) {
            warn!(host = %host, error = %e, "the block image stream ended early");
            let _ = tx.blocking_send(Err(e));
        }
    });
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
        .into_response()
}

/// Starts making the block image a plan will ask for, so it is ready by the
/// node's copy step (a first build takes seconds: rsync, mke2fs -d, e2fsck).
/// `bytes`: the root partition's size as the layout gives it; a node whose
/// device differs (RAID metadata, a rest-of-disk root) gets its own image
/// when it asks.
pub fn make_block_image_ahead(
    cfg: &crate::config::Config,
    image: &str,
    serial: u64,
    fs: crate::wire::Fs,
    bytes: u64,
) {
    if block::check_size(bytes).is_err() {
        return;
    }
    let want = block::Wanted::new(
        &cfg.state_dir,
        cfg.excludes_for(image),
        image,
        serial,
        fs,
        bytes,
    );
    if want.path.exists() {
        return;
    }
    let image = image.to_string();
    tokio::task::spawn_blocking(move || {
        if let Err(e) = want.ensure() {
            warn!(%image, serial, error = %e, "the block image could not be made ahead; nodes will copy with rsync");
        }
    });
}

/// Hands what it is given to the response body in [`CHUNK`]s.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<std::io::Result<bytes::Bytes>>,
    buf: Vec<u8>,
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = bytes::Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::other("the node hung up"))
    }
}
