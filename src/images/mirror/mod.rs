//! Mirroring images from a primary server (`[images] mirror_from`).
//!
//! Every `mirror_interval` the mirror copies the primary's index (each image's
//! `published` link and serials' meta.json) and, for each serial it lacks, pulls
//! `{image}/serials/{N}/` into `{image}/mirror-staging/{N}/` here. Only when rsync
//! finished, the primary still lists the serial, and the copy matches its
//! meta.json (size and file count), is the copy flushed to disk and renamed into
//! `serials/N`: a serial is complete here (served, handed out in install plans)
//! exactly when it is complete, never half. A copy that is stopped (server killed,
//! network gone) keeps its staging directory and resumes from it (`--partial`).
//!
//! The mirror follows the primary: its published serial, its rollbacks and its
//! prunes. A serial the primary prunes while it is being copied is discarded.

pub mod export;
pub mod plan;
pub mod rsync;
pub mod status;

use super::store::Images;
use super::ImageError;
use crate::config::MirrorUrl;
use plan::{Local, Primary, Stats};
use status::{MirrorState, MirrorStatus};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("cannot reach the primary {url}: {detail}; check that it runs `rollout serve` with server.address set and that its rsync port {port} is reachable from here")]
    Unreachable {
        url: String,
        port: u16,
        detail: String,
    },
    #[error("the primary {url} refused the mirror password: [images] mirror_password_file here must hold the same password as mirror_password_file on the primary")]
    AuthFailed { url: String },
    #[error("the primary {url} does not let mirrors copy images: set [images] mirror_password_file on it")]
    NotExported { url: String },
    #[error("the primary {url} refused this server's address: add it to [images] mirror_hosts on the primary")]
    HostDenied { url: String },
    #[error("files vanished on the primary {url} during the copy (a prune?): {detail}")]
    Vanished { url: String, detail: String },
    #[error("rsync from {url} failed ({}): {detail}", exit(.code))]
    Rsync {
        url: String,
        code: Option<i32>,
        detail: String,
    },
    #[error("the mirror password: {0}")]
    Password(String),
    #[error("serial {serial} of {image} as copied does not match its meta.json: {problem}")]
    Incomplete {
        image: String,
        serial: u64,
        problem: String,
    },
    #[error("`rsync` not found; install it with: apt-get install rsync")]
    ToolMissing,
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("stopped")]
    Cancelled,
}

fn exit(code: &Option<i32>) -> String {
    match code {
        Some(c) => format!("exit code {c}"),
        None => "killed by a signal".into(),
    }
}

impl MirrorError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        MirrorError::Image(ImageError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// Serials nodes here are installing right now, per image (the inventory's, in
/// `rollout serve`): a prune that reaches the mirror keeps them. `None`: not
/// known now, so every serial is kept.
pub type InUse = Arc<dyn Fn(&str) -> Option<Vec<u64>> + Send + Sync>;

pub struct Mirror {
    pub state_dir: PathBuf,
    pub client: rsync::Client,
    pub interval: Duration,
    pub in_use: InUse,
}

/// How one serial's pull ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pulled {
    /// Complete and now in `serials/N`.
    Complete(Stats),
    /// The primary pruned it meanwhile; the staging copy is gone.
    Vanished,
}

impl Mirror {
    pub fn new(state_dir: &Path, url: MirrorUrl, password_file: PathBuf) -> Self {
        Mirror {
            state_dir: state_dir.to_path_buf(),
            client: rsync::Client {
                url,
                password_file,
                rsync: PathBuf::from("rsync"),
                bwlimit: 0,
                io_timeout: Duration::from_secs(120),
            },
            interval: Duration::from_secs(30),
            in_use: Arc::new(|_| Some(Vec::new())),
        }
    }

    fn images(&self) -> Images {
        Images::new(&self.state_dir)
    }

    /// The primary's index, as an image store of metadata only.
    fn index(&self) -> Images {
        Images::new(&self.state_dir.join("mirror-index"))
    }

    pub fn staging_dir(&self, image: &str, serial: u64) -> PathBuf {
        self.images()
            .image_dir(image)
            .join("mirror-staging")
            .join(serial.to_string())
    }

    /// Polls the primary until cancelled. Failures are logged, shown in the
    /// status and retried with backoff; they never end the task (and so never
    /// stop the server).
    pub async fn run(self, cancel: CancellationToken) {
        let mut status = MirrorStatus::new(self.client.url.to_string());
        status.set(&self.state_dir, MirrorState::Starting);
        info!(from = %self.client.url, interval = ?self.interval, "mirroring images");
        let mut failures = 0u32;
        loop {
            let wait = match self.sync_once(&cancel, &mut status).await {
                Ok(()) => {
                    if failures > 0 {
                        info!(from = %self.client.url, "mirror: in step with the primary again");
                    }
                    failures = 0;
                    status.set(&self.state_dir, MirrorState::Idle);
                    self.interval
                }
                Err(MirrorError::Cancelled) => {
                    status.set(&self.state_dir, MirrorState::Stopped);
                    return;
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let wait = plan::backoff(failures, self.interval);
                    warn!(failures, retry_in = ?wait, "mirror: {e}");
                    status.set(
                        &self.state_dir,
                        MirrorState::Error {
                            cause: e.to_string(),
                            retry_in_secs: wait.as_secs(),
                        },
                    );
                    wait
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => {
                    status.set(&self.state_dir, MirrorState::Stopped);
                    return;
                }
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// The primary's view of every image, fresh.
    async fn primary(
        &self,
        cancel: &CancellationToken,
    ) -> Result<Vec<(String, Primary)>, MirrorError> {
        let index = self.index();
        self.client.index(index.root(), cancel).await?;
        let mut out = Vec::new();
        for name in index.names()? {
            out.push((
                name.clone(),
                Primary {
                    serials: index.serials(&name)?,
                    published: index.published(&name)?,
                },
            ));
        }
        Ok(out)
    }

    fn local(&self, image: &str) -> Result<Local, MirrorError> {
        let images = self.images();
        let staging_root = images.image_dir(image).join("mirror-staging");
        let mut staging: Vec<u64> = std::fs::read_dir(&staging_root)
            .map(|rd| {
                rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        staging.sort_unstable();
        let serials = images.serials(image)?;
        Ok(Local {
            in_use: (self.in_use)(image).unwrap_or_else(|| serials.clone()),
            serials,
            published: images.published(image)?,
            staging,
        })
    }

    /// One look at the primary: copy what is missing, then publish and delete as
    /// the primary did. Stops at the first failure (retried by [`Mirror::run`]).
    pub async fn sync_once(
        &self,
        cancel: &CancellationToken,
        status: &mut MirrorStatus,
    ) -> Result<(), MirrorError> {
        let primary = self.primary(cancel).await?;
        for (image, p) in &primary {
            let actions = plan::plan(p, &self.local(image)?);
            self.discard(image, &actions.discard)?;
            for &serial in &actions.fetch {
                self.pull(image, serial, cancel, status).await?;
                // Publish as soon as the primary's serial is here: nodes need not
                // wait for older serials.
                self.publish_as_primary(image, p)?;
            }
            self.publish_as_primary(image, p)?;
            let actions = plan::plan(p, &self.local(image)?);
            self.delete(image, &actions.delete)?;
        }
        Ok(())
    }

    fn publish_as_primary(&self, image: &str, p: &Primary) -> Result<(), MirrorError> {
        if let Some(serial) = plan::plan(p, &self.local(image)?).publish {
            let images = self.images();
            let _lock = images.lock(
                image,
                &format!("rollout serve: mirror publishes {image} serial {serial}"),
            )?;
            images.publish_locked(image, serial)?;
            info!(
                image,
                serial, "mirror: published serial {serial} of {image}, as the primary does"
            );
        }
        Ok(())
    }

    fn discard(&self, image: &str, serials: &[u64]) -> Result<(), MirrorError> {
        for &s in serials {
            let dir = self.staging_dir(image, s);
            std::fs::remove_dir_all(&dir).map_err(|e| MirrorError::io(&dir, e))?;
            info!(image, serial = s, "mirror: discarded the staging copy of serial {s} of {image}: the primary no longer has it, or it is complete here");
        }
        Ok(())
    }

    fn delete(&self, image: &str, serials: &[u64]) -> Result<(), MirrorError> {
        if serials.is_empty() {
            return Ok(());
        }
        let images = self.images();
        let _lock = images.lock(image, &format!("rollout serve: mirror prunes {image}"))?;
        for &s in serials {
            let dir = images.serial_dir(image, s);
            // meta.json first, as `prune` does: a half-deleted serial is incomplete.
            let meta = dir.join("meta.json");
            std::fs::remove_file(&meta).map_err(|e| MirrorError::io(&meta, e))?;
            std::fs::remove_dir_all(&dir).map_err(|e| MirrorError::io(&dir, e))?;
            info!(
                image,
                serial = s,
                "mirror: deleted serial {s} of {image}: pruned on the primary"
            );
        }
        Ok(())
    }

    /// Copies one serial into staging and, once it is complete and checked, into
    /// `serials/N`. A serial the primary pruned meanwhile (whether rsync noticed
    /// or not) is discarded, not an error.
    pub async fn pull(
        &self,
        image: &str,
        serial: u64,
        cancel: &CancellationToken,
        status: &mut MirrorStatus,
    ) -> Result<Pulled, MirrorError> {
        use tracing::Instrument;
        self.pull_in_span(image, serial, cancel, status)
            .instrument(tracing::info_span!("mirror", image, serial))
            .await
    }

    async fn pull_in_span(
        &self,
        image: &str,
        serial: u64,
        cancel: &CancellationToken,
        status: &mut MirrorStatus,
    ) -> Result<Pulled, MirrorError> {
        let staging = self.staging_dir(image, serial);
        std::fs::create_dir_all(&staging).map_err(|e| MirrorError::io(&staging, e))?;
        let images = self.images();
        let basis = images
            .serials(image)?
            .into_iter()
            .filter(|s| *s < serial)
            .max()
            .map(|s| images.serial_dir(image, s));
        info!(
            image,
            serial,
            resume = staging.join("meta.json").exists() || staging.join("root").exists(),
            "mirror: copying serial {serial} of {image}"
        );
        let state_dir = self.state_dir.clone();
        let mut logged = None;
        let mut shown = None;
        let mut on_progress = |p: plan::Progress| {
            if plan::log_step(logged, p.percent) {
                logged = Some(p.percent);
                info!(
                    image,
                    serial,
                    bytes = p.bytes,
                    percent = p.percent,
                    "mirror: serial {serial} of {image}: {}% ({} bytes)",
                    p.percent,
                    p.bytes
                );
            }
            if shown != Some(p.percent) {
                shown = Some(p.percent);
                status.set(
                    &state_dir,
                    MirrorState::Copying {
                        image: image.to_string(),
                        serial,
                        bytes: p.bytes,
                        percent: p.percent,
                    },
                );
            }
        };
        let copied = self
            .client
            .serial(
                image,
                serial,
                &staging,
                basis.as_deref(),
                cancel,
                &mut on_progress,
            )
            .await;
        if matches!(copied, Err(MirrorError::Cancelled)) {
            return Err(MirrorError::Cancelled);
        }
        // Whatever rsync said: a serial the primary no longer lists is not copied
        // (rsync may finish without error when files vanish before it lists them).
        let still_there = self
            .primary(cancel)
            .await?
            .iter()
            .any(|(n, p)| n == image && p.serials.contains(&serial));
        if !still_there {
            warn!(image, serial, "mirror: serial {serial} of {image} was pruned on the primary while it was being copied; discarded the partial copy, moving on");
            std::fs::remove_dir_all(&staging).map_err(|e| MirrorError::io(&staging, e))?;
            return Ok(Pulled::Vanished);
        }
        let stats = copied?;
        let (image_owned, staging2, images2) = (image.to_string(), staging.clone(), images.clone());
        tokio::task::spawn_blocking(move || adopt(&images2, &image_owned, serial, &staging2))
            .await
            .map_err(|e| MirrorError::Rsync {
                url: self.client.url.to_string(),
                code: None,
                detail: format!("the check of the copy panicked: {e}"),
            })??;
        info!(
            image,
            serial,
            literal_bytes = stats.literal,
            matched_bytes = stats.matched,
            total_bytes = stats.total_size,
            "mirror: serial {serial} of {image} complete ({} bytes, {} over the network)",
            stats.total_size,
            stats.literal
        );
        Ok(Pulled::Complete(stats))
    }
}

/// Checks a finished staging copy against its meta.json, flushes it to disk and
/// renames it into `serials/N`: the serial is complete from that moment on.
fn adopt(images: &Images, image: &str, serial: u64, staging: &Path) -> Result<(), MirrorError> {
    let incomplete = |problem: String| MirrorError::Incomplete {
        image: image.to_string(),
        serial,
        problem,
    };
    let meta_path = staging.join("meta.json");
    let meta: super::SerialMeta = serde_json::from_slice(
        &std::fs::read(&meta_path).map_err(|e| incomplete(format!("meta.json: {e}")))?,
    )
    .map_err(|e| incomplete(format!("meta.json: {e}")))?;
    if meta.serial != serial {
        return Err(incomplete(format!(
            "meta.json names serial {}",
            meta.serial
        )));
    }
    let root = staging.join("root");
    let inv = super::tree::scan(&root)?;
    let (bytes, files) = super::tree::totals(&inv);
    if (bytes, files) != (meta.size_bytes, meta.file_count) {
        return Err(incomplete(format!(
            "{files} files, {bytes} bytes here; meta.json says {} files, {} bytes",
            meta.file_count, meta.size_bytes
        )));
    }
    crate::durable::sync_tree(staging).map_err(|e| MirrorError::io(staging, e))?;
    let _lock = images.lock(
        image,
        &format!("rollout serve: mirror adds {image} serial {serial}"),
    )?;
    let dest = images.serial_dir(image, serial);
    if dest.exists() {
        // Left by a crash between a mkdir and a rename elsewhere: no meta.json,
        // so not a serial; the checked copy replaces it.
        std::fs::remove_dir_all(&dest).map_err(|e| MirrorError::io(&dest, e))?;
    }
    std::fs::rename(staging, &dest).map_err(|e| MirrorError::io(&dest, e))?;
    let serials = dest.parent().expect("serials dir");
    crate::durable::fsync_dir(serials).map_err(|e| MirrorError::io(serials, e))?;
    Ok(())
}
