//! What the mirror is doing, in `{state_dir}/mirror.json`: written by `rollout
//! serve` at every change, read by `rollout image list` (which works whether the
//! server runs or not, so it shows the time of the last update).

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum MirrorState {
    /// Looking at the primary for the first time since the server started.
    Starting,
    /// In step with the primary as of its last look.
    Idle,
    Copying {
        image: String,
        serial: u64,
        bytes: u64,
        percent: u8,
    },
    Error {
        cause: String,
        retry_in_secs: u64,
    },
    /// `rollout serve` stopped; a copy it was making resumes when it starts.
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MirrorStatus {
    /// `mirror_from`.
    pub from: String,
    pub state: MirrorState,
    /// RFC 3339, UTC: when `state` was written.
    pub updated: String,
    /// When the mirror was last fully in step with the primary.
    pub last_synced: Option<String>,
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("mirror.json")
}

impl MirrorStatus {
    pub fn new(from: String) -> Self {
        MirrorStatus {
            from,
            state: MirrorState::Starting,
            updated: crate::clock::now_rfc3339(),
            last_synced: None,
        }
    }

    /// Replaces the state and writes the file. A failed write is logged, not
    /// returned: the status is for operators, the copy goes on without it.
    pub fn set(&mut self, state_dir: &Path, state: MirrorState) {
        if state == MirrorState::Idle {
            self.last_synced = Some(crate::clock::now_rfc3339());
        }
        self.state = state;
        self.updated = crate::clock::now_rfc3339();
        let body = serde_json::to_vec_pretty(self).expect("serializable");
        let file = path(state_dir);
        if let Err(e) = crate::durable::write_atomic(&file, &body, 0o644) {
            tracing::warn!("cannot write the mirror status {}: {e}", file.display());
        }
    }

    pub fn read(state_dir: &Path) -> Option<MirrorStatus> {
        serde_json::from_slice(&std::fs::read(path(state_dir)).ok()?).ok()
    }
}

impl std::fmt::Display for MirrorState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MirrorState::Starting => write!(f, "starting"),
            MirrorState::Idle => write!(f, "idle (in step with the primary)"),
            MirrorState::Copying {
                image,
                serial,
                bytes,
                percent,
            } => write!(
                f,
                "copying {image} serial {serial}: {percent}% ({:.1} MiB)",
                *bytes as f64 / 1048576.0
            ),
            MirrorState::Error {
                cause,
                retry_in_secs,
            } => write!(f, "error: {cause} (retrying in {retry_in_secs} s)"),
            MirrorState::Stopped => write!(f, "stopped (rollout serve is not running)"),
        }
    }
}

impl std::fmt::Display for MirrorStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "mirror of {}: {} (as of {}",
            self.from, self.state, self.updated
        )?;
        match &self.last_synced {
            Some(t) => write!(f, "; last in step {t})"),
            None => write!(f, "; not yet in step)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_and_read_back_and_shown() {
        let dir = tempfile::tempdir().unwrap();
        assert!(MirrorStatus::read(dir.path()).is_none());
        let mut s = MirrorStatus::new("rsync://p:873/".into());
        s.set(
            dir.path(),
            MirrorState::Copying {
                image: "web".into(),
                serial: 3,
                bytes: 3 * 1048576,
                percent: 42,
            },
        );
        let back = MirrorStatus::read(dir.path()).unwrap();
        assert_eq!(back, s);
        let shown = back.to_string();
        assert!(
            shown.contains("mirror of rsync://p:873/: copying web serial 3: 42% (3.0 MiB)")
                && shown.contains("not yet in step"),
            "{shown}"
        );
        s.set(dir.path(), MirrorState::Idle);
        assert!(s.last_synced.is_some());
        s.set(
            dir.path(),
            MirrorState::Error {
                cause: "the primary refused the mirror password".into(),
                retry_in_secs: 5,
            },
        );
        let shown = MirrorStatus::read(dir.path()).unwrap().to_string();
        assert!(
            shown.contains("error: the primary refused the mirror password (retrying in 5 s)")
                && shown.contains("last in step"),
            "{shown}"
        );
    }
}
