//! Golden images: serialized root trees that nodes rsync onto their disks.
//!
//! Layout under `{state_dir}/images/{name}/`:
//! - `serials/{N}/root/` — the tree; `serials/{N}/meta.json` — [`SerialMeta`]
//! - `published` → `serials/{N}` — switched atomically (symlink to a temp name + rename)
//! - `dirty.lock` — present while someone changes the image ([`lock`])
//! - `work/` — scratch space of the change in progress
//!
//! Serials are immutable once written, so a node that started installing serial 3 keeps
//! getting serial 3 (its own rsync module) while serial 4 is published.

pub mod block;
pub mod build;
pub mod cli;
pub mod enter;
pub mod lock;
pub mod mirror;
pub mod mounts;
pub mod rsyncd;
pub mod store;
pub mod tree;

pub use cli::{run, ImageCmd};
pub use lock::LockHolder;
pub use store::{ImageSummary, Images, SerialMeta};

use std::path::PathBuf;

/// Node-local paths (one list for install, update and image stripping).
pub use crate::wire::DEFAULT_EXCLUDES;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("invalid image name {0:?}: use letters, digits, '.', '_' and '-', not ending in -<digits> (that is how serial modules are named)")]
    BadName(String),
    #[error("no image named {0:?}; see `rollout image list`")]
    NoSuchImage(String),
    #[error("image {image} has no serial {serial}; see `rollout image history {image}`")]
    NoSuchSerial { image: String, serial: u64 },
    #[error("image {0} has no published serial yet; build or import one first")]
    NothingPublished(String),
    #[error("image {image} is being changed by {holder}; wait for it to finish (if that process is gone, remove {lock_file})")]
    Locked {
        image: String,
        holder: Box<LockHolder>,
        lock_file: PathBuf,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: corrupt metadata: {source}")]
    Meta {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
    #[error("{0} is not a directory or a tarball")]
    BadSource(PathBuf),
    #[error("{0}")]
    Unsafe(String),
    #[error("the command in the image exited with {status}; changes discarded, serial {serial} stays published")]
    Discarded { status: String, serial: u64 },
    #[error("`{0}` not found; install it with: apt-get install {1}")]
    ToolMissing(&'static str, &'static str),
    #[error("invalid rsync daemon setting {0}")]
    BadSetting(String),
    #[error("this server mirrors its images from {0} ([images] mirror_from): build, import, enter, roll back and prune them on the primary; this server copies every serial from there within [images] mirror_interval")]
    IsMirror(String),
}
