//! Files that survive a crash or power loss whole: the one "write a file
//! atomically and durably" helper ([`write_atomic`]) that tokens, rsyncd.conf,
//! image metadata and boot files go through, the flush of a published image tree
//! ([`sync_tree`]), and the permissions of the state directory and its secrets
//! ([`secure_state_dir`]).

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Replaces `path` with `data` so that a reader, or the file system after a
/// crash, sees either the old content or the new, never a mix or an empty file:
/// a temporary file in the same directory, created with `mode`, is written and
/// fsynced, renamed over `path`, and the directory is fsynced so the rename
/// itself is on disk. Each call has its own temporary name, so two writers never
/// rename each other's half-written file.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    write_atomic_with(path, mode, |f| f.write_all(data))
}

/// [`write_atomic`] with the content written by `fill` (which may stream it).
/// When `fill` fails, `path` is left as it was.
pub fn write_atomic_with(
    path: &Path,
    mode: u32,
    fill: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> std::io::Result<()> {
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let n = WRITES.fetch_add(1, Ordering::Relaxed);
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other(format!("{} names no file", path.display())))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp.{}.{n}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        fill(&mut f)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    fsync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Makes a directory's entries (creations, renames) durable.
pub fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    std::fs::File::open(dir)?.sync_all()
}

/// Flushes everything written under `path` to disk: syncfs(2) of its file system
/// (one call for a tree of thousands of files, where an fsync each would take
/// minutes), then an fsync of `path` itself.
pub fn sync_tree(path: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path)?;
    // SAFETY: syncfs only takes a valid open descriptor, which `f` holds.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    f.sync_all()
}

/// The secrets kept in the state directory, relative to it: the admin token and
/// the server's SSH private key.
pub const SECRETS: &[&str] = &["admin.token", "ssh/id_ed25519"];
/// Directories under the state directory that hold secrets.
const SECRET_DIRS: &[&str] = &["ssh"];

#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    #[error("cannot create or secure {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} belongs to uid {owner}, not to this server (uid {me}); it holds secrets, so rollout will not use it: `chown -R {me} {path}` if it is this server's, or set state_dir to another directory")]
    Owner { path: PathBuf, owner: u32, me: u32 },
}

/// Creates the state directory 0700 if missing; checks that it and its secrets
/// ([`SECRETS`]) belong to this user and narrows their modes (0700 for
/// directories, 0600 for files) where they are wider. Returns what it changed,
/// for the log.
pub fn secure_state_dir(state_dir: &Path) -> Result<Vec<String>, StateDirError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| StateDirError::Io { path, source }
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .map_err(io(state_dir))?;
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    let mut fixed = vec![];
    let dirs = std::iter::once(state_dir.to_path_buf())
        .chain(SECRET_DIRS.iter().map(|d| state_dir.join(d)))
        .map(|p| (p, 0o700));
    let files = SECRETS.iter().map(|f| (state_dir.join(f), 0o600));
    for (path, mode) in dirs.chain(files) {
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(&path)(e)),
        };
        if meta.uid() != me {
            return Err(StateDirError::Owner {
                path,
                owner: meta.uid(),
                me,
            });
        }
        let current = meta.mode() & 0o7777;
        if current != mode {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .map_err(io(&path))?;
            fixed.push(format!("{} {current:o} → {mode:o}", path.display()));
        }
    }
    Ok(fixed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn a_write_replaces_the_whole_file_or_leaves_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        write_atomic(&path, b"old\n", 0o600).unwrap();
        assert_eq!(mode(&path), 0o600);
        write_atomic(&path, b"new\n", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new\n");
        // A write that fails midway (half the data written, then an error, as
        // on a full disk) leaves the old file whole.
        let half = write_atomic_with(&path, 0o600, |f| {
            f.write_all(b"ne")?;
            Err(std::io::Error::other("disk full"))
        });
        assert!(half.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"new\n");
        // So does a rename that fails (the target is a directory).
        let busy = dir.path().join("busy");
        std::fs::create_dir_all(busy.join("x")).unwrap();
        assert!(write_atomic(&busy, b"x", 0o600).is_err());
        assert!(busy.join("x").is_dir());
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.contains(".tmp."))
            .collect();
        assert!(left.is_empty(), "temporary files left: {left:?}");
    }

    #[test]
    fn the_state_dir_and_its_secrets_are_narrowed() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        assert!(secure_state_dir(&state).unwrap().is_empty());
        assert_eq!(mode(&state), 0o700);
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir(state.join("ssh")).unwrap();
        std::fs::write(state.join("ssh/id_ed25519"), b"key").unwrap();
        std::fs::set_permissions(
            state.join("ssh/id_ed25519"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        std::fs::write(state.join("admin.token"), b"t").unwrap();
        std::fs::set_permissions(
            state.join("admin.token"),
            std::fs::Permissions::from_mode(0o666),
        )
        .unwrap();
        let fixed = secure_state_dir(&state).unwrap();
        assert_eq!(fixed.len(), 4, "{fixed:?}");
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&state.join("admin.token")), 0o600);
        assert_eq!(mode(&state.join("ssh/id_ed25519")), 0o600);
        // Someone else's directory is refused, not taken over.
        if unsafe { libc::geteuid() } == 0 {
            std::os::unix::fs::chown(state.join("admin.token"), Some(65534), None).unwrap();
            let e = secure_state_dir(&state).unwrap_err().to_string();
            assert!(
                e.contains("belongs to uid 65534") && e.contains("chown"),
                "{e}"
            );
        }
    }
}
