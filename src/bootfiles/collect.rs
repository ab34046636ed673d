//! Copies host files into the archive at the paths they have on the host, reproducing
//! every symlink met on the way (`/lib64/ld-linux-x86-64.so.2` → `/lib/x86_64-linux-gnu/…`,
//! merged-/usr `/sbin` → `usr/sbin`), so programs find their loader, libraries and
//! siblings exactly where they were built to look.

use super::elf;
use super::InitramfsError;
use crate::cpio::Archive;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Category {
    Installer,
    Modules,
    Firmware,
    Helpers,
    Libs,
    Other,
}

#[derive(Default)]
pub struct Collector {
    pub archive: Archive,
    owners: HashMap<String, (Category, u64)>,
    elf_done: BTreeSet<PathBuf>,
}

fn rel(p: &Path) -> String {
    p.to_string_lossy().trim_start_matches('/').to_string()
}

fn io_err(path: &Path, e: std::io::Error) -> InitramfsError {
    InitramfsError::Io {
        path: path.to_path_buf(),
        source: e,
    }
}

impl Collector {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds generated content (not from the host) at `path`, replacing what was there.
    pub fn add_bytes(&mut self, path: &str, perm: u32, data: Vec<u8>, cat: Category) {
        let key = path.trim_start_matches('/').to_string();
        self.owners.insert(key, (cat, data.len() as u64));
        self.archive.add_file(path, perm, data);
    }

    /// Uncompressed bytes per category.
    pub fn sizes(&self) -> BTreeMap<Category, u64> {
        let mut out = BTreeMap::new();
        for (cat, len) in self.owners.values() {
            *out.entry(*cat).or_default() += len;
        }
        out
    }

    /// Adds host `path` (file, directory or symlink chain) and returns the real path it
    /// resolved to. Directories are added empty.
    pub fn add_host_path(&mut self, path: &Path, cat: Category) -> Result<PathBuf, InitramfsError> {
        self.walk(path, path, cat, 0)
    }

    fn walk(
        &mut self,
        orig: &Path,
        path: &Path,
        cat: Category,
        hops: u32,
    ) -> Result<PathBuf, InitramfsError> {
        let mut pending: VecDeque<Component> = path.components().collect();
        let mut cur = PathBuf::from("/");
        while let Some(comp) = pending.pop_front() {
            let name = match comp {
                Component::Normal(name) => name,
                Component::ParentDir => {
                    cur.pop();
                    continue;
                }
                _ => continue,
            };
            let next = cur.join(name);
            let meta = std::fs::symlink_metadata(&next).map_err(|e| io_err(&next, e))?;
            if meta.file_type().is_symlink() {
                if hops >= 40 {
                    return Err(InitramfsError::SymlinkLoop(orig.to_path_buf()));
                }
                let target = std::fs::read_link(&next).map_err(|e| io_err(&next, e))?;
                if !self.archive.contains(&rel(&next)) {
                    self.archive
                        .add_symlink(&rel(&next), &target.to_string_lossy());
                }
                // Re-walk the link target followed by what was left of the path.
                let mut rest = cur.join(&target);
                for c in pending {
                    rest.push(c.as_os_str());
                }
                return self.walk(orig, &rest, cat, hops + 1);
            }
            if pending.is_empty() && !self.archive.contains(&rel(&next)) {
                let perm = meta.permissions().mode() & 0o7777;
                if meta.is_dir() {
                    self.archive.add_dir(&rel(&next), perm);
                } else if meta.is_file() {
                    let data = std::fs::read(&next).map_err(|e| io_err(&next, e))?;
                    self.add_bytes(&rel(&next), perm, data, cat);
                } else {
                    return Err(InitramfsError::NotARegularFile(next));
                }
            }
            cur = next;
        }
        Ok(cur)
    }

    /// Adds a host program and, transitively, its loader and shared libraries.
    pub fn add_program(&mut self, path: &Path, cat: Category) -> Result<(), InitramfsError> {
        let real = self.add_host_path(path, cat)?;
        self.add_elf_deps(&real)
    }

    /// Adds the loader and libraries `real` (already in the archive) needs, transitively.
    pub fn add_elf_deps(&mut self, real: &Path) -> Result<(), InitramfsError> {
        let mut queue = vec![real.to_path_buf()];
        while let Some(file) = queue.pop() {
            if !self.elf_done.insert(file.clone()) {
                continue;
            }
            let bytes = std::fs::read(&file).map_err(|e| io_err(&file, e))?;
            if !elf::is_elf(&bytes) {
                continue;
            }
            let deps = elf::parse(&bytes).map_err(|source| InitramfsError::Elf {
                path: file.clone(),
                source,
            })?;
            if let Some(interp) = &deps.interp {
                queue.push(self.add_host_path(Path::new(interp), Category::Libs)?);
            }
            for name in &deps.needed {
                let lib = elf::find_library(name, &file, &deps.runpath).ok_or_else(|| {
                    InitramfsError::LibraryNotFound {
                        library: name.clone(),
                        needed_by: file.clone(),
                    }
                })?;
                queue.push(self.add_host_path(&lib, Category::Libs)?);
            }
        }
        Ok(())
    }
}
