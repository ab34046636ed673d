//! A deterministic writer for the "newc" cpio format the kernel unpacks as an initramfs:
//! the installer initramfs (`bootfiles`) and the lab's probe initramfs (vm-harness) both
//! use it. No `server` feature needed.
//!
//! Determinism matters because the archive is served to every node and compared across
//! builds: the same inputs must give the same bytes. So entries are sorted by path, every
//! timestamp is 0, owners are root, and inode numbers are assigned in output order.

use std::collections::BTreeMap;
use std::io::{self, Write};

/// What an archive entry is. File contents are held in memory: an initramfs is tens of
/// megabytes at most, and holding them lets the writer sort before emitting anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    CharDev { major: u32, minor: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: EntryKind,
    /// Permission bits only (e.g. 0o755); the file type bits come from `kind`.
    pub perm: u32,
}

/// An in-memory archive keyed by path (relative, no leading `/`).
#[derive(Debug, Default, Clone)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

fn normalize(path: &str) -> String {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

impl Archive {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `path` and creates any missing parent directories (mode 0755).
    /// A later insert at the same path replaces the earlier one.
    pub fn insert(&mut self, path: &str, entry: Entry) {
        let path = normalize(path);
        if path.is_empty() {
            return;
        }
        let mut parent = String::new();
        for comp in path.split('/').take(path.split('/').count() - 1) {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(comp);
            self.entries.entry(parent.clone()).or_insert(Entry {
                kind: EntryKind::Dir,
                perm: 0o755,
            });
        }
        self.entries.insert(path, entry);
    }

    pub fn add_dir(&mut self, path: &str, perm: u32) {
        self.insert(
            path,
            Entry {
                kind: EntryKind::Dir,
                perm,
            },
        );
    }

    pub fn add_file(&mut self, path: &str, perm: u32, data: Vec<u8>) {
        self.insert(
            path,
            Entry {
                kind: EntryKind::File(data),
                perm,
            },
        );
    }

    pub fn add_symlink(&mut self, path: &str, target: &str) {
        self.insert(
            path,
            Entry {
                kind: EntryKind::Symlink(target.to_string()),
                perm: 0o777,
            },
        );
    }

    pub fn add_char_dev(&mut self, path: &str, perm: u32, major: u32, minor: u32) {
        self.insert(
            path,
            Entry {
                kind: EntryKind::CharDev { major, minor },
                perm,
            },
        );
    }

    pub fn contains(&self, path: &str) -> bool {
        self.entries.contains_key(&normalize(path))
    }

    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries.get(&normalize(path))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Entry)> {
        self.entries.iter()
    }

    /// Writes the archive in newc format, including the trailer. Returns the bytes written.
    pub fn write_to<W: Write>(&self, out: &mut W) -> io::Result<u64> {
        let mut written = 0u64;
        // Sort by path components, not by raw string: "a-b" sorts before "a/b" bytewise,
        // which is harmless, but component order keeps each directory's children together.
        let mut paths: Vec<&String> = self.entries.keys().collect();
        paths.sort_by(|a, b| a.split('/').cmp(b.split('/')));
        for (index, path) in paths.into_iter().enumerate() {
            let entry = &self.entries[path];
            let (mode, data, rdev): (u32, &[u8], (u32, u32)) = match &entry.kind {
                EntryKind::Dir => (S_IFDIR | entry.perm, &[], (0, 0)),
                EntryKind::File(d) => (S_IFREG | entry.perm, d, (0, 0)),
                EntryKind::Symlink(t) => (S_IFLNK | 0o777, t.as_bytes(), (0, 0)),
                EntryKind::CharDev { major, minor } => {
                    (S_IFCHR | entry.perm, &[], (*major, *minor))
                }
            };
            let nlink = if matches!(entry.kind, EntryKind::Dir) {
                2
            } else {
                1
            };
            // Inode 0 is avoided: some unpackers treat it as "no inode".
            written += write_entry(out, index as u32 + 1, mode, nlink, rdev, path, data)?;
        }
        written += write_entry(out, 0, 0, 1, (0, 0), "TRAILER!!!", &[])?;
        Ok(written)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.write_to(&mut v).expect("writing to a Vec cannot fail");
        v
    }
}

fn pad4(n: u64) -> usize {
    ((4 - (n % 4)) % 4) as usize
}

fn write_entry<W: Write>(
    out: &mut W,
    ino: u32,
    mode: u32,
    nlink: u32,
    rdev: (u32, u32),
    name: &str,
    data: &[u8],
) -> io::Result<u64> {
    let namesize = name.len() + 1;
    let header = format!(
        "070701{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
        ino,
        mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime
        data.len(),
        0, // devmajor
        0, // devminor
        rdev.0,
        rdev.1,
        namesize,
        0, // check (only used by the "crc" variant)
    );
    out.write_all(header.as_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    let head_len = (header.len() + namesize) as u64;
    out.write_all(&[0u8; 3][..pad4(head_len)])?;
    out.write_all(data)?;
    out.write_all(&[0u8; 3][..pad4(data.len() as u64)])?;
    Ok(head_len + pad4(head_len) as u64 + data.len() as u64 + pad4(data.len() as u64) as u64)
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReadError {
    #[error("cpio archive truncated at byte {0}")]
    Truncated(usize),
    #[error("not a newc cpio record at byte {0} (magic 070701 expected)")]
    BadMagic(usize),
    #[error("bad header field at byte {0}")]
    BadField(usize),
    #[error("entry {0:?} has a file type this reader does not take (mode {1:o})")]
    Unsupported(String, u32),
}

/// Reads a newc archive (as [`Archive::write_to`] writes it) back: the
/// installer unpacks the storage tools archive with it. Hard links are not
/// supported (the writer makes none).
pub fn read(bytes: &[u8]) -> Result<Archive, ReadError> {
    const HEADER: usize = 110;
    let mut archive = Archive::new();
    let mut at = 0usize;
    loop {
        let head = bytes.get(at..at + HEADER).ok_or(ReadError::Truncated(at))?;
        if &head[..6] != b"070701" {
            return Err(ReadError::BadMagic(at));
        }
        let field = |i: usize| -> Result<u32, ReadError> {
            let f = &head[6 + 8 * i..14 + 8 * i];
            std::str::from_utf8(f)
                .ok()
                .and_then(|t| u32::from_str_radix(t, 16).ok())
                .ok_or(ReadError::BadField(at + 6 + 8 * i))
        };
        let (mode, filesize, rmaj, rmin, namesize) = (
            field(1)?,
            field(6)? as usize,
            field(9)?,
            field(10)?,
            field(11)? as usize,
        );
        let name_end = at + HEADER + namesize;
        let name = bytes
            .get(at + HEADER..name_end.saturating_sub(1))
            .ok_or(ReadError::Truncated(at))?;
        let name = String::from_utf8_lossy(name).into_owned();
        let data_start = name_end + pad4(name_end as u64);
        let data = bytes
            .get(data_start..data_start + filesize)
            .ok_or(ReadError::Truncated(data_start))?;
        at = data_start + filesize + pad4((data_start + filesize) as u64);
        if name == "TRAILER!!!" {
            return Ok(archive);
        }
        let perm = mode & 0o7777;
        let kind = match mode & 0o170000 {
            S_IFDIR => EntryKind::Dir,
            S_IFREG => EntryKind::File(data.to_vec()),
            S_IFLNK => EntryKind::Symlink(String::from_utf8_lossy(data).into_owned()),
            S_IFCHR => EntryKind::CharDev {
                major: rmaj,
                minor: rmin,
            },
            _ => return Err(ReadError::Unsupported(name, mode)),
        };
        archive.insert(&name, Entry { kind, perm });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn what_is_written_reads_back() {
        let a = sample();
        let back = read(&a.to_bytes()).unwrap();
        assert_eq!(
            back.iter().collect::<Vec<_>>(),
            a.iter().collect::<Vec<_>>()
        );
        let mut odd = Archive::new();
        odd.add_file("a/b", 0o600, b"abcde".to_vec());
        odd.add_file("c", 0o644, Vec::new());
        let bytes = odd.to_bytes();
        let back = read(&bytes).unwrap();
        assert_eq!(
            back.get("a/b").unwrap().kind,
            EntryKind::File(b"abcde".to_vec())
        );
        assert_eq!(back.get("a/b").unwrap().perm, 0o600);
        assert!(read(&bytes[..bytes.len() - 20]).is_err());
        let garbage = [b'x'; 200];
        assert_eq!(read(&garbage).unwrap_err(), ReadError::BadMagic(0));
        assert!(matches!(read(&[]), Err(ReadError::Truncated(0))));
    }

    fn sample() -> Archive {
        let mut a = Archive::new();
        a.add_file("/usr/bin/tool", 0o755, b"#!/bin/sh\necho hi\n".to_vec());
        a.add_symlink("bin", "usr/bin");
        a.add_file("init", 0o755, vec![0x7f, b'E', b'L', b'F', 1, 2, 3]);
        a.add_char_dev("dev/console", 0o600, 5, 1);
        a.add_dir("proc", 0o555);
        a
    }

    #[test]
    fn parents_are_created() {
        let a = sample();
        assert!(a.contains("usr"));
        assert!(a.contains("usr/bin"));
        assert!(a.contains("dev"));
        assert_eq!(a.get("usr").unwrap().kind, EntryKind::Dir);
    }

    #[test]
    fn output_is_deterministic_and_independent_of_insert_order() {
        let a = sample();
        let mut b = Archive::new();
        b.add_dir("proc", 0o555);
        b.add_char_dev("dev/console", 0o600, 5, 1);
        b.add_file("init", 0o755, vec![0x7f, b'E', b'L', b'F', 1, 2, 3]);
        b.add_symlink("bin", "usr/bin");
        b.add_file("usr/bin/tool", 0o755, b"#!/bin/sh\necho hi\n".to_vec());
        assert_eq!(a.to_bytes(), b.to_bytes());
        assert_eq!(a.to_bytes(), a.to_bytes());
    }

    #[test]
    fn records_are_aligned_and_end_with_trailer() {
        let bytes = sample().to_bytes();
        assert_eq!(bytes.len() % 4, 0);
        assert!(bytes.starts_with(b"070701"));
        let tail = String::from_utf8_lossy(&bytes[bytes.len() - 20..]).to_string();
        assert!(tail.contains("TRAILER!!!"), "{tail:?}");
    }

    fn cpio_list(bytes: &[u8], verbose: bool) -> String {
        let mut child = Command::new("cpio")
            .args(if verbose {
                vec!["-t", "-v", "--quiet"]
            } else {
                vec!["-t", "--quiet"]
            })
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(bytes).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    }

    /// GNU cpio is the reference reader; the kernel's unpacker is stricter about
    /// alignment than cpio, which `records_are_aligned_and_end_with_trailer` covers.
    #[test]
    fn gnu_cpio_lists_and_extracts_it() {
        if !testkit::prereq::require_tools(&[("cpio", "cpio")]) {
            return;
        }
        let bytes = sample().to_bytes();
        let names: Vec<String> = cpio_list(&bytes, false).lines().map(String::from).collect();
        assert_eq!(
            names,
            [
                "bin",
                "dev",
                "dev/console",
                "init",
                "proc",
                "usr",
                "usr/bin",
                "usr/bin/tool"
            ]
        );
        let listing = cpio_list(&bytes, true);
        assert!(listing.contains("bin -> usr/bin"), "{listing}");
        assert!(listing
            .lines()
            .any(|l| l.starts_with("crw-------") && l.contains("dev/console")));

        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new("cpio")
            .args(["-i", "-d", "--quiet", "--no-absolute-filenames"])
            .current_dir(dir.path())
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let mut a = Archive::new();
        a.add_file("usr/bin/tool", 0o755, b"#!/bin/sh\necho hi\n".to_vec());
        a.add_file("odd", 0o644, b"abcde".to_vec());
        child
            .stdin
            .take()
            .unwrap()
            .write_all(&a.to_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success());
        assert_eq!(
            std::fs::read(dir.path().join("usr/bin/tool")).unwrap(),
            b"#!/bin/sh\necho hi\n"
        );
        assert_eq!(std::fs::read(dir.path().join("odd")).unwrap(), b"abcde");
    }
}
