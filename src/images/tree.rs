//! Walking an image root: inventory (size, file count), change detection between two
//! serials, and stripping what must not leave the build host.
//!
//! Nothing here follows symlinks: an image is a foreign root, and `/root -> /` inside it
//! must not make us read or delete the host's files.

use super::ImageError;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// File type bits plus permissions (`st_mode`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime_ns: i128,
    pub link: Option<PathBuf>,
    pub dev_ino: (u64, u64),
}

impl Node {
    fn is_file(&self) -> bool {
        self.mode & 0o170000 == 0o100000
    }
}

/// Every path under `root` (as `/etc/hosts`), not crossing into other filesystems.
pub type Inventory = BTreeMap<String, Node>;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub fn scan(root: &Path) -> Result<Inventory, ImageError> {
    let root_dev = std::fs::symlink_metadata(root).map_err(io_err(root))?.dev();
    let mut inv = Inventory::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).map_err(io_err(&path))?;
            let name = format!("{rel}/{}", entry.file_name().to_string_lossy());
            let link = if meta.file_type().is_symlink() {
                Some(std::fs::read_link(&path).map_err(io_err(&path))?)
            } else {
                None
            };
            if meta.is_dir() && meta.dev() == root_dev {
                stack.push((path, name.clone()));
            }
            inv.insert(
                name,
                Node {
                    mode: meta.mode(),
                    uid: meta.uid(),
                    gid: meta.gid(),
                    size: meta.size(),
                    mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
                    link,
                    dev_ino: (meta.dev(), meta.ino()),
                },
            );
        }
    }
    Ok(inv)
}

/// (bytes in regular files, hard links counted once; number of entries)
pub fn totals(inv: &Inventory) -> (u64, u64) {
    let mut seen = HashSet::new();
    let mut bytes = 0;
    for n in inv.values() {
        if n.is_file() && seen.insert(n.dev_ino) {
            bytes += n.size;
        }
    }
    (bytes, inv.len() as u64)
}

/// At most this many sparse files are listed; an image with more is copied
/// with `--sparse` throughout ([`crate::wire::ImageRef::sparse_files`]).
pub const MAX_SPARSE_LISTED: usize = 1000;

/// The regular files under `root` with at least [`crate::wire::SPARSE_HOLES`]
/// bytes of holes (apparent size beyond the allocated blocks), hard links
/// listed once. `None` when that cannot be known exactly: a file that cannot
/// be looked at again (a name `scan` could only keep lossily), or more than
/// [`MAX_SPARSE_LISTED`] of them.
pub fn sparse_files(root: &Path, inv: &Inventory) -> Option<Vec<String>> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (path, n) in inv {
        if !n.is_file() || n.size < crate::wire::SPARSE_HOLES || !seen.insert(n.dev_ino) {
            continue;
        }
        let meta = std::fs::symlink_metadata(root.join(path.trim_start_matches('/'))).ok()?;
        if meta.size().saturating_sub(meta.blocks() * 512) >= crate::wire::SPARSE_HOLES {
            if out.len() == MAX_SPARSE_LISTED {
                return None;
            }
            out.push(path.clone());
        }
    }
    Some(out)
}

/// At most this many paths per kind are stored in a serial's meta; counts are exact.
pub const MAX_LISTED: usize = 2000;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Changes {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    pub added_count: u64,
    pub changed_count: u64,
    pub removed_count: u64,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.added_count + self.changed_count + self.removed_count == 0
    }

    pub fn summary(&self) -> String {
        format!(
            "+{} ~{} -{}",
            self.added_count, self.changed_count, self.removed_count
        )
    }

    fn push(list: &mut Vec<String>, count: &mut u64, path: &str) {
        *count += 1;
        if list.len() < MAX_LISTED {
            list.push(path.to_string());
        }
    }
}

fn same_contents(a: &Path, b: &Path) -> bool {
    let (Ok(mut fa), Ok(mut fb)) = (std::fs::File::open(a), std::fs::File::open(b)) else {
        return false;
    };
    let (mut ba, mut bb) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        let (Ok(na), Ok(nb)) = (read_full(&mut fa, &mut ba), read_full(&mut fb, &mut bb)) else {
            return false;
        };
        if na != nb || ba[..na] != bb[..nb] {
            return false;
        }
        if na == 0 {
            return true;
        }
    }
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// What changed from `old` to `new`. Metadata decides; a regular file whose only
/// difference is its mtime is compared by content, so rewriting a file with the same
/// bytes (ldconfig's cache, a re-run config step) is not reported as a change.
pub fn diff(old_root: &Path, old: &Inventory, new_root: &Path, new: &Inventory) -> Changes {
    let mut c = Changes::default();
    for (path, n) in new {
        match old.get(path) {
            None => Changes::push(&mut c.added, &mut c.added_count, path),
            Some(o) => {
                let meta_differs = o.mode != n.mode
                    || o.uid != n.uid
                    || o.gid != n.gid
                    || o.link != n.link
                    || (n.is_file() && o.size != n.size);
                let content_differs = n.is_file()
                    && o.mtime_ns != n.mtime_ns
                    && !same_contents(
                        &old_root.join(path.trim_start_matches('/')),
                        &new_root.join(path.trim_start_matches('/')),
                    );
                if meta_differs || content_differs {
                    Changes::push(&mut c.changed, &mut c.changed_count, path);
                }
            }
        }
    }
    for path in old.keys() {
        if !new.contains_key(path) {
            Changes::push(&mut c.removed, &mut c.removed_count, path);
        }
    }
    c
}

/// Removed from every new serial: host identity, secrets and caches that must not be
/// copied to nodes. `*` and `?` match within one path component.
pub const STRIP_PATTERNS: &[&str] = &[
    "/etc/ssh/ssh_host_*",
    "/tmp/*",
    "/var/tmp/*",
    "/root/.*history",
    "/root/.lesshst",
    "/root/.viminfo",
    "/home/*/.*history",
    "/var/cache/apt/archives/*.deb",
    "/var/cache/apt/*.bin",
    // Rewritten by every ldconfig run; only noise in change lists.
    "/var/cache/ldconfig/aux-cache",
    // List files all contain `_`; `lock` and `partial/` stay so apt works unchanged.
    "/var/lib/apt/lists/*_*",
];

/// `*` and `?` wildcards within one component.
pub fn wildcard_match(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

/// Paths under `root` matching `pattern` (absolute, image-relative). Only real
/// directories are descended into.
pub fn expand(root: &Path, pattern: &str) -> Vec<PathBuf> {
    let mut current = vec![root.to_path_buf()];
    let comps: Vec<&str> = pattern.split('/').filter(|c| !c.is_empty()).collect();
    for (i, comp) in comps.iter().enumerate() {
        let last = i + 1 == comps.len();
        let mut next = Vec::new();
        for dir in &current {
            if !std::fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir()) {
                continue;
            }
            if *comp == ".." || *comp == "." {
                continue;
            }
            if comp.contains(['*', '?']) {
                let Ok(rd) = std::fs::read_dir(dir) else {
                    continue;
                };
                let mut names: Vec<_> = rd
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| wildcard_match(comp, n))
                    .collect();
                names.sort();
                next.extend(names.into_iter().map(|n| dir.join(n)));
            } else {
                let p = dir.join(comp);
                if std::fs::symlink_metadata(&p).is_ok() {
                    next.push(p);
                }
            }
        }
        current = next;
        if last {
            return current;
        }
    }
    Vec::new()
}

/// Applies [`STRIP_PATTERNS`] plus `extra`, and empties `/etc/machine-id` (systemd
/// generates a fresh one on first boot when it is empty). Returns what was removed.
pub fn strip(root: &Path, extra: &[String]) -> Result<Vec<String>, ImageError> {
    let mut removed = Vec::new();
    let patterns = STRIP_PATTERNS
        .iter()
        .copied()
        .chain(extra.iter().map(String::as_str));
    for pattern in patterns {
        for path in expand(root, pattern) {
            let meta = std::fs::symlink_metadata(&path).map_err(io_err(&path))?;
            // remove_dir_all does not follow symlinks inside the tree.
            if meta.is_dir() {
                std::fs::remove_dir_all(&path).map_err(io_err(&path))?;
            } else {
                std::fs::remove_file(&path).map_err(io_err(&path))?;
            }
            removed.push(format!(
                "/{}",
                path.strip_prefix(root).unwrap_or(&path).display()
            ));
        }
    }
    let mid = root.join("etc/machine-id");
    if std::fs::symlink_metadata(&mid).is_ok_and(|m| m.is_file() && m.len() > 0) {
        std::fs::write(&mid, b"").map_err(io_err(&mid))?;
        removed.push("/etc/machine-id (contents)".into());
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_files_lists_files_with_a_mebibyte_of_holes_once_per_inode() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("log")).unwrap();
        // 64 MiB apparent, one 4 KiB block written at the end.
        let f = std::fs::File::create(root.join("log/lastlog")).unwrap();
        f.set_len(64 << 20).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &[1u8; 4096], (64 << 20) - 4096).unwrap();
        std::fs::hard_link(root.join("log/lastlog"), root.join("log/lastlog.link")).unwrap();
        // Zeros that were written are data, not holes; a small sparse file is
        // not worth a second pass.
        std::fs::write(root.join("zeros"), vec![0u8; 2 << 20]).unwrap();
        std::fs::File::create(root.join("small"))
            .unwrap()
            .set_len(512 << 10)
            .unwrap();
        let inv = scan(root).unwrap();
        assert_eq!(
            sparse_files(root, &inv),
            Some(vec!["/log/lastlog".to_string()])
        );

        // A name that no longer resolves (as a lossily kept one would not): unknown.
        let mut inv = inv;
        let node = inv["/log/lastlog"].clone();
        inv.insert(
            "/gone".into(),
            Node {
                dev_ino: (0, 0),
                ..node
            },
        );
        assert_eq!(sparse_files(root, &inv), None);
    }

    #[test]
    fn wildcards() {
        assert!(wildcard_match("ssh_host_*", "ssh_host_rsa_key.pub"));
        assert!(wildcard_match("*.deb", "a_1.0_amd64.deb"));
        assert!(!wildcard_match("*.deb", "a.deb.partial"));
        assert!(wildcard_match(".*history", ".bash_history"));
        assert!(wildcard_match("*_*", "deb.debian.org_dists_Release"));
        assert!(!wildcard_match("*_*", "lock"));
        assert!(wildcard_match("?", "x"));
        assert!(!wildcard_match("?", ""));
    }

    fn write(root: &Path, rel: &str, data: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }

    #[test]
    fn strip_removes_secrets_but_not_through_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let outside = t.path().join("outside");
        write(&root, "etc/ssh/ssh_host_ed25519_key", "secret");
        write(&root, "etc/ssh/sshd_config", "keep");
        write(&root, "etc/machine-id", "0123456789abcdef\n");
        write(&root, "tmp/junk/x", "x");
        write(&root, "home/alice/.bash_history", "ls");
        write(&root, "var/lib/apt/lists/deb_dists_bookworm_InRelease", "x");
        write(&root, "var/lib/apt/lists/lock", "");
        write(&outside, ".bash_history", "host history");
        std::os::unix::fs::symlink(&outside, root.join("home/bob")).unwrap();

        let removed = strip(&root, &["/etc/ssh/sshd_config".to_string()]).unwrap();
        assert!(!root.join("etc/ssh/ssh_host_ed25519_key").exists());
        assert!(
            !root.join("etc/ssh/sshd_config").exists(),
            "extra pattern applied"
        );
        assert!(!root.join("tmp/junk").exists());
        assert!(root.join("tmp").exists());
        assert!(!root.join("home/alice/.bash_history").exists());
        assert!(!root
            .join("var/lib/apt/lists/deb_dists_bookworm_InRelease")
            .exists());
        assert!(root.join("var/lib/apt/lists/lock").exists());
        assert_eq!(std::fs::read(root.join("etc/machine-id")).unwrap(), b"");
        assert!(
            outside.join(".bash_history").exists(),
            "followed a symlink out of the image"
        );
        assert!(
            removed.iter().any(|r| r == "/etc/ssh/ssh_host_ed25519_key"),
            "{removed:?}"
        );
    }

    #[test]
    fn diff_ignores_rewrites_with_same_bytes() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        for r in [&a, &b] {
            write(r, "etc/same", "same");
            write(r, "etc/edited", "v1");
            write(r, "etc/gone", "x");
        }
        let old = scan(&a).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        write(&b, "etc/same", "same"); // new mtime, same bytes
        write(&b, "etc/edited", "v2"); // same size, new bytes
        std::fs::remove_file(b.join("etc/gone")).unwrap();
        write(&b, "etc/new", "n");
        let new = scan(&b).unwrap();
        let c = diff(&a, &old, &b, &new);
        assert_eq!(c.added, ["/etc/new"]);
        assert_eq!(c.changed, ["/etc/edited"]);
        assert_eq!(c.removed, ["/etc/gone"]);
        assert_eq!(c.summary(), "+1 ~1 -1");
        let (bytes, count) = totals(&new);
        assert_eq!((bytes, count), (4 + 2 + 1, 4));
    }
}
