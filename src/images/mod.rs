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

pub mod build;
pub mod cli;
pub mod enter;
pub mod lock;
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
}

/// Seconds since the epoch as RFC 3339 UTC (`2026-11-25T22:12:20Z`).
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (H. Hinnant), valid for all dates after 1970.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn now_rfc3339() -> String {
    rfc3339(now_unix())
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_dates() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(super::rfc3339(1_798_236_740), "2026-12-25T22:12:20Z");
    }
}
