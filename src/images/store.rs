//! The on-disk image store: serials, their metadata, publishing and pruning.

use super::lock::{self, ImageLock};
use super::tree::{self, Changes};
use super::ImageError;
use crate::config::ImageConfig;
use crate::durable;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SerialMeta {
    pub serial: u64,
    /// RFC 3339, UTC.
    pub created: String,
    pub size_bytes: u64,
    pub file_count: u64,
    pub note: String,
    /// The serial this one was made from (`None` for a fresh build or first import).
    pub parent: Option<u64>,
    /// Differences from `parent`.
    pub changes: Option<Changes>,
    /// The serial's sparse files ([`crate::wire::ImageRef::sparse_files`]);
    /// absent for a serial published before rollout listed them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sparse_files: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageSummary {
    pub name: String,
    pub published: Option<u64>,
    pub serials: Vec<u64>,
    pub published_meta: Option<SerialMeta>,
    pub locked_by: Option<super::LockHolder>,
}

/// Handle on `{state_dir}/images`, with the operator's `[[image]]` settings.
#[derive(Debug, Clone)]
pub struct Images {
    root: PathBuf,
    configs: Vec<ImageConfig>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub fn validate_name(name: &str) -> Result<(), ImageError> {
    if crate::config::valid_image_name(name) {
        Ok(())
    } else {
        Err(ImageError::BadName(name.to_string()))
    }
}

impl Images {
    pub fn new(state_dir: &Path) -> Self {
        Images {
            root: state_dir.join("images"),
            configs: Vec::new(),
        }
    }

    /// Applies `[[image]]` settings: their excludes are stripped from every serial
    /// published from now on, their mounts are made during `enter`.
    pub fn configured(mut self, configs: Vec<ImageConfig>) -> Self {
        self.configs = configs;
        self
    }

    pub fn config(&self, name: &str) -> Option<&ImageConfig> {
        self.configs.iter().find(|c| c.name == name)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn image_dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub fn serial_dir(&self, name: &str, serial: u64) -> PathBuf {
        self.image_dir(name)
            .join("serials")
            .join(serial.to_string())
    }

    /// The tree of one serial.
    pub fn serial_root(&self, name: &str, serial: u64) -> PathBuf {
        self.serial_dir(name, serial).join("root")
    }

    /// `{image}/published/root`: follows publishes without anyone re-reading config.
    pub fn published_root(&self, name: &str) -> PathBuf {
        self.image_dir(name).join("published").join("root")
    }

    pub fn lock_path(&self, name: &str) -> PathBuf {
        self.image_dir(name).join("dirty.lock")
    }

    pub fn work_dir(&self, name: &str) -> PathBuf {
        self.image_dir(name).join("work")
    }

    /// Image names (directories with a `serials/` inside), sorted.
    pub fn names(&self) -> Result<Vec<String>, ImageError> {
        let rd = match std::fs::read_dir(&self.root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&self.root)(e)),
        };
        let mut names: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("serials").is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| validate_name(n).is_ok())
            .collect();
        names.sort();
        Ok(names)
    }

    fn require(&self, name: &str) -> Result<(), ImageError> {
        validate_name(name)?;
        if self.image_dir(name).join("serials").is_dir() {
            Ok(())
        } else {
            Err(ImageError::NoSuchImage(name.to_string()))
        }
    }

    /// Complete serials (those with a meta.json), ascending.
    pub fn serials(&self, name: &str) -> Result<Vec<u64>, ImageError> {
        let dir = self.image_dir(name).join("serials");
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&dir)(e)),
        };
        let mut out: Vec<u64> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .filter(|n: &u64| self.serial_dir(name, *n).join("meta.json").is_file())
            .collect();
        out.sort_unstable();
        Ok(out)
    }

    pub fn published(&self, name: &str) -> Result<Option<u64>, ImageError> {
        let link = self.image_dir(name).join("published");
        match std::fs::read_link(&link) {
            Ok(target) => Ok(target
                .file_name()
                .and_then(|f| f.to_str())
                .and_then(|s| s.parse().ok())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&link)(e)),
        }
    }

    pub fn meta(&self, name: &str, serial: u64) -> Result<SerialMeta, ImageError> {
        let path = self.serial_dir(name, serial).join("meta.json");
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ImageError::NoSuchSerial {
                    image: name.to_string(),
                    serial,
                })
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        serde_json::from_slice(&bytes).map_err(|source| ImageError::Meta { path, source })
    }

    pub fn summary(&self, name: &str) -> Result<ImageSummary, ImageError> {
        self.require(name)?;
        let published = self.published(name)?;
        Ok(ImageSummary {
            name: name.to_string(),
            published,
            serials: self.serials(name)?,
            published_meta: published.map(|s| self.meta(name, s)).transpose()?,
            locked_by: lock::read_holder(&self.lock_path(name)),
        })
    }

    pub fn list(&self) -> Result<Vec<ImageSummary>, ImageError> {
        self.names()?.iter().map(|n| self.summary(n)).collect()
    }

    /// Every serial's metadata, oldest first.
    pub fn history(&self, name: &str) -> Result<Vec<SerialMeta>, ImageError> {
        self.require(name)?;
        self.serials(name)?
            .into_iter()
            .map(|s| self.meta(name, s))
            .collect()
    }

    pub(crate) fn lock(&self, name: &str, command: &str) -> Result<ImageLock, ImageError> {
        validate_name(name)?;
        let dir = self.image_dir(name);
        std::fs::create_dir_all(dir.join("serials")).map_err(io_err(&dir))?;
        lock::acquire(name, &self.lock_path(name), command)
    }

    /// Points `published` at `serial`: a new symlink under a temporary name renamed over
    /// the old one, so readers see either the old or the new serial, never neither.
    /// The serial's tree and meta.json are flushed to disk first, so a power loss
    /// right after cannot leave `published` naming files that never reached the disk.
    pub(crate) fn publish_locked(&self, name: &str, serial: u64) -> Result<(), ImageError> {
        let serial_dir = self.serial_dir(name, serial);
        let meta = serial_dir.join("meta.json");
        if !meta.is_file() {
            return Err(ImageError::NoSuchSerial {
                image: name.to_string(),
                serial,
            });
        }
        let root = self.serial_root(name, serial);
        if root.is_dir() {
            durable::sync_tree(&root).map_err(io_err(&root))?;
        }
        std::fs::File::open(&meta)
            .and_then(|f| f.sync_all())
            .map_err(io_err(&meta))?;
        durable::fsync_dir(&serial_dir).map_err(io_err(&serial_dir))?;
        let serials = self.image_dir(name).join("serials");
        durable::fsync_dir(&serials).map_err(io_err(&serials))?;
        let dir = self.image_dir(name);
        let tmp = dir.join(format!(".published.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(format!("serials/{serial}"), &tmp).map_err(io_err(&tmp))?;
        let link = dir.join("published");
        std::fs::rename(&tmp, &link).map_err(io_err(&link))?;
        durable::fsync_dir(&dir).map_err(io_err(&dir))
    }

    /// Republishes an older (or any existing) serial.
    pub fn rollback(&self, name: &str, serial: u64) -> Result<(), ImageError> {
        self.require(name)?;
        let _lock = self.lock(name, &format!("rollout image rollback {name} {serial}"))?;
        self.publish_locked(name, serial)
    }

    /// Deletes all but the newest `keep` serials, never the published one. Returns the
    /// serials removed.
    /// `in_use`: serials nodes are installing right now (their rsync module must stay).
    pub fn prune(&self, name: &str, keep: usize, in_use: &[u64]) -> Result<Vec<u64>, ImageError> {
        self.require(name)?;
        let _lock = self.lock(name, &format!("rollout image prune {name} --keep {keep}"))?;
        let published = self.published(name)?;
        let serials = self.serials(name)?;
        let cutoff = serials.len().saturating_sub(keep);
        let mut removed = Vec::new();
        for &s in &serials[..cutoff] {
            if Some(s) == published || in_use.contains(&s) {
                continue;
            }
            let dir = self.serial_dir(name, s);
            // meta.json first: a half-deleted serial then no longer counts as complete.
            std::fs::remove_file(dir.join("meta.json")).map_err(io_err(&dir))?;
            std::fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
            removed.push(s);
        }
        Ok(removed)
    }

    /// Next serial number: one past the highest ever written (including incomplete ones),
    /// so a number is never reused for different contents.
    pub(crate) fn next_serial(&self, name: &str) -> Result<u64, ImageError> {
        let dir = self.image_dir(name).join("serials");
        let max = std::fs::read_dir(&dir)
            .map_err(io_err(&dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        Ok(max + 1)
    }

    /// Turns `work_root` into the next serial: strip, inventory, diff against `parent`,
    /// move into place, write meta, publish. Call with the image lock held.
    pub(crate) fn commit_locked(
        &self,
        name: &str,
        work_root: &Path,
        parent: Option<u64>,
        note: &str,
        extra_strip: &[String],
    ) -> Result<Option<SerialMeta>, ImageError> {
        let configured = self
            .config(name)
            .map(|c| c.excludes.as_slice())
            .unwrap_or(&[]);
        let patterns: Vec<String> = configured.iter().chain(extra_strip).cloned().collect();
        let stripped = tree::strip(work_root, &patterns)?;
        if !stripped.is_empty() {
            let shown: Vec<&str> = stripped.iter().take(8).map(String::as_str).collect();
            let more = stripped.len() - shown.len();
            let more = if more > 0 {
                format!(" … and {more} more")
            } else {
                String::new()
            };
            tracing::info!(
                "stripped {} host-only paths: {}{more}",
                stripped.len(),
                shown.join(" ")
            );
            tracing::debug!("stripped: {}", stripped.join(" "));
        }
        let inv = tree::scan(work_root)?;
        let changes = match parent {
            Some(p) => {
                let old_root = self.serial_root(name, p);
                let old = tree::scan(&old_root)?;
                let c = tree::diff(&old_root, &old, work_root, &inv);
                if c.is_empty() {
                    return Ok(None);
                }
                Some(c)
            }
            None => None,
        };
        let (size_bytes, file_count) = tree::totals(&inv);
        let serial = self.next_serial(name)?;
        let meta = SerialMeta {
            serial,
            created: crate::clock::now_rfc3339(),
            size_bytes,
            file_count,
            note: note.to_string(),
            parent,
            changes,
            sparse_files: tree::sparse_files(work_root, &inv),
        };
        let dir = self.serial_dir(name, serial);
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let root = dir.join("root");
        std::fs::rename(work_root, &root).map_err(io_err(&root))?;
        // The [[image]] excludes this serial was stripped with, which a mirror's
        // nodes keep too (`Config::excludes_for`). Before meta.json: a serial is
        // complete (and mirrored) with its excludes.
        let excludes_path = dir.join("excludes");
        let mut excludes = configured.join("\n");
        if !excludes.is_empty() {
            excludes.push('\n');
        }
        durable::write_atomic(&excludes_path, excludes.as_bytes(), 0o644)
            .map_err(io_err(&excludes_path))?;
        let meta_path = dir.join("meta.json");
        let body = serde_json::to_vec_pretty(&meta).expect("serializable");
        durable::write_atomic(&meta_path, &body, 0o644).map_err(io_err(&meta_path))?;
        self.publish_locked(name, serial)?;
        Ok(Some(meta))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["default", "web", "debian12", "a.b_c", "x-y2"] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-x",
            "web-2",
            "debian-12",
            "a/b",
            "..",
            ".hidden",
            "a b",
            "x\ny",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    fn make_tree(root: &Path, files: &[(&str, &str)]) {
        for (p, data) in files {
            let p = root.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, data).unwrap();
        }
    }

    #[test]
    fn commit_publish_rollback_prune() {
        let t = tempfile::tempdir().unwrap();
        let images = Images::new(t.path());
        let work = t.path().join("w1");
        make_tree(&work, &[("etc/a", "1"), ("etc/ssh/ssh_host_rsa_key", "k")]);
        let lock = images.lock("img", "test").unwrap();
        let m1 = images
            .commit_locked("img", &work, None, "first", &[])
            .unwrap()
            .unwrap();
        assert_eq!(m1.serial, 1);
        assert_eq!(images.published("img").unwrap(), Some(1));
        assert!(!images
            .serial_root("img", 1)
            .join("etc/ssh/ssh_host_rsa_key")
            .exists());

        for (i, data) in ["2", "3"].iter().enumerate() {
            let work = t.path().join(format!("w{}", i + 2));
            make_tree(&work, &[("etc/a", data)]);
            let m = images
                .commit_locked("img", &work, images.published("img").unwrap(), "", &[])
                .unwrap()
                .unwrap();
            assert_eq!(m.changes.unwrap().changed, ["/etc/a"]);
        }
        // Identical tree: no new serial.
        let work = t.path().join("w4");
        make_tree(&work, &[("etc/a", "3")]);
        assert!(images
            .commit_locked("img", &work, Some(3), "", &[])
            .unwrap()
            .is_none());
        drop(lock);

        assert_eq!(images.serials("img").unwrap(), [1, 2, 3]);
        images.rollback("img", 1).unwrap();
        assert_eq!(images.published("img").unwrap(), Some(1));
        assert_eq!(
            std::fs::read_to_string(images.published_root("img").join("etc/a")).unwrap(),
            "1"
        );
        assert!(images.rollback("img", 9).is_err());

        assert!(
            images.prune("img", 1, &[2]).unwrap().is_empty(),
            "a node is installing serial 2"
        );
        let removed = images.prune("img", 1, &[]).unwrap();
        assert_eq!(removed, [2], "published serial 1 and newest serial 3 stay");
        assert_eq!(images.serials("img").unwrap(), [1, 3]);
        assert_eq!(images.next_serial("img").unwrap(), 4);
        let list = images.list().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].published, Some(1));
    }
}
