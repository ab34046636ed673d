//! `{image}/dirty.lock`: one writer per image. The file names its holder so a refused
//! user knows whom to ask; a holder whose process is gone is treated as stale.

use super::ImageError;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockHolder {
    pub pid: u32,
    pub user: String,
    pub since: String,
    pub command: String,
}

impl fmt::Display for LockHolder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pid {} (user {}, since {}, running `{}`)",
            self.pid, self.user, self.since, self.command
        )
    }
}

/// Held while an image is being changed; removes the lock file when dropped.
#[derive(Debug)]
pub struct ImageLock {
    path: PathBuf,
}

impl Drop for ImageLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

pub fn current_user() -> String {
    let uid = nix::unistd::getuid();
    let name = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string());
    // Under sudo, the person matters more than "root".
    match std::env::var("SUDO_USER") {
        Ok(s) if !s.is_empty() && s != name => format!("{s} (as {name})"),
        _ => name,
    }
}

fn alive(pid: u32) -> bool {
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None) {
        Ok(()) => true,
        Err(nix::errno::Errno::ESRCH) => false,
        // EPERM: it exists but belongs to someone else.
        Err(_) => true,
    }
}

pub fn read_holder(path: &Path) -> Option<LockHolder> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Takes the lock for `image` (named in errors) at `path`, naming this process as holder.
pub fn acquire(image: &str, path: &Path, command: &str) -> Result<ImageLock, ImageError> {
    let holder = LockHolder {
        pid: std::process::id(),
        user: current_user(),
        since: crate::clock::now_rfc3339(),
        command: command.to_string(),
    };
    let body = serde_json::to_vec_pretty(&holder).expect("serializable");
    for _ in 0..2 {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
        {
            Ok(mut f) => {
                f.write_all(&body)
                    .and_then(|_| f.sync_all())
                    .map_err(|source| ImageError::Io {
                        path: path.to_path_buf(),
                        source,
                    })?;
                return Ok(ImageLock {
                    path: path.to_path_buf(),
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                match read_holder(path) {
                    Some(h) if alive(h.pid) => {
                        return Err(ImageError::Locked {
                            image: image.to_string(),
                            holder: Box::new(h),
                            lock_file: path.to_path_buf(),
                        })
                    }
                    // Dead holder, or a half-written file from a crash: stale.
                    _ => {
                        tracing::warn!(lock = %path.display(), "removing stale image lock");
                        let _ = std::fs::remove_file(path);
                    }
                }
            }
            Err(source) => {
                return Err(ImageError::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
    }
    Err(ImageError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other("lock file keeps reappearing"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_acquire_names_the_holder_and_stale_locks_are_taken_over() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("dirty.lock");
        let first = acquire("img", &path, "rollout image enter img").unwrap();
        let err = acquire("img", &path, "rollout image rollback img 1").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        assert!(msg.contains("rollout image enter img"), "{msg}");
        drop(first);
        assert!(!path.exists());

        // A holder that no longer exists (pid_max is far below this).
        let stale = LockHolder {
            pid: 0x7fff_fff0,
            user: "ghost".into(),
            since: "then".into(),
            command: "x".into(),
        };
        std::fs::write(&path, serde_json::to_vec(&stale).unwrap()).unwrap();
        let _l = acquire("img", &path, "y").unwrap();
        assert_eq!(read_holder(&path).unwrap().command, "y");
    }
}
