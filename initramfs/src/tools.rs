//! The storage tools (mdadm, lvm, mkfs.xfs, the xfs module) only when a plan
//! asks for them: the server builds them into a second archive beside the
//! installer initramfs (`/boot/storage-tools.img`), and [`ensure`] fetches and
//! unpacks it into the installer's own root, then loads the md/dm/xfs modules
//! by name. A plain ext3 install never downloads it, and the initramfs every
//! node boots stays as small as before.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rollout::cpio::{self, Archive, EntryKind};
use rollout::wire::initramfs::STORAGE_TOOLS_IMG;

use crate::http_client::{self, HttpError};
use crate::{modules, paths};

/// What a layout needs beyond the initramfs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    pub xfs: bool,
    pub raid: bool,
    pub lvm: bool,
}

/// The layout's filesystem types (as written in the config: `ext3`, `xfs`,
/// `swap`, …) and whether it has a RAID or an LVM section. The layout's own
/// types call this with what they hold.
pub fn needs<'a>(filesystems: impl IntoIterator<Item = &'a str>, raid: bool, lvm: bool) -> Needs {
    Needs {
        xfs: filesystems
            .into_iter()
            .any(|f| f.eq_ignore_ascii_case("xfs")),
        raid,
        lvm,
    }
}

impl Needs {
    pub fn any(&self) -> bool {
        self.xfs || self.raid || self.lvm
    }

    /// The programs these needs run, at their initramfs paths.
    pub fn programs(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.raid {
            v.push(paths::MDADM);
        }
        if self.lvm {
            v.push(paths::LVM);
        }
        if self.xfs {
            v.push(paths::MKFS_XFS);
        }
        v
    }

    /// The kernel modules to load by name: no device asks for them by modalias.
    pub fn modules(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.raid {
            v.extend(["md_mod", "raid1"]);
        }
        if self.lvm {
            v.push("dm_mod");
        }
        if self.xfs {
            v.push("xfs");
        }
        v
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ToolsError {
    #[error("fetching {url}: {source}; the layout needs {what}, which come from that archive")]
    Fetch {
        url: String,
        what: String,
        #[source]
        source: HttpError,
    },
    #[error("{url} answered {status}; the layout needs {what}: build the boot files again on the server (rollout initramfs build makes {STORAGE_TOOLS_IMG} beside initramfs.img)")]
    Status {
        url: String,
        status: u16,
        what: String,
    },
    #[error("{url} is not a gzipped cpio archive: {detail}")]
    Corrupt { url: String, detail: String },
    #[error("unpacking {path}: {source}")]
    Unpack {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is still missing after unpacking the storage tools; the server's {STORAGE_TOOLS_IMG} was built without it (apt-get install mdadm lvm2 xfsprogs on the server, then rollout initramfs build)")]
    StillMissing(String),
}

/// The URL of the archive on `server` (`http://10.44.0.1:8080`).
pub fn archive_url(server: &str) -> String {
    format!("{}/boot/{STORAGE_TOOLS_IMG}", server.trim_end_matches('/'))
}

/// Decompresses and reads a fetched archive.
pub fn parse(gz: &[u8]) -> Result<Archive, String> {
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_end(&mut raw)
        .map_err(|e| format!("gunzip: {e}"))?;
    cpio::read(&raw).map_err(|e| e.to_string())
}

/// Writes `archive` under `root`. Files go through a temporary name and a
/// rename, so a library a running program has mapped keeps its old inode;
/// a symlink or directory already there as the same thing is left alone.
/// Returns how many files were written.
pub fn unpack(archive: &Archive, root: &Path) -> Result<usize, ToolsError> {
    let mut files = 0;
    for (path, entry) in archive.iter() {
        let dest = root.join(path);
        let err = |source| ToolsError::Unpack {
            path: dest.display().to_string(),
            source,
        };
        match &entry.kind {
            EntryKind::Dir => {
                if !dest.is_dir() {
                    std::fs::create_dir_all(&dest).map_err(err)?;
                    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(entry.perm))
                        .map_err(err)?;
                }
            }
            EntryKind::File(data) => {
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent).map_err(err)?;
                }
                let tmp = tmp_name(&dest);
                std::fs::write(&tmp, data).map_err(err)?;
                std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(entry.perm))
                    .map_err(err)?;
                std::fs::rename(&tmp, &dest).map_err(err)?;
                files += 1;
            }
            EntryKind::Symlink(target) => {
                if std::fs::read_link(&dest).is_ok_and(|t| t == Path::new(target)) {
                    continue;
                }
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent).map_err(err)?;
                }
                if std::fs::symlink_metadata(&dest).is_ok() {
                    std::fs::remove_file(&dest).map_err(err)?;
                }
                std::os::unix::fs::symlink(target, &dest).map_err(err)?;
            }
            // The tools archive holds none; device nodes come from devtmpfs.
            EntryKind::CharDev { .. } => {}
        }
    }
    Ok(files)
}

fn tmp_name(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".rollout-tmp");
    dest.with_file_name(name)
}

/// Makes sure the programs and modules `needs` asks for are here: fetches and
/// unpacks the archive from `server` unless every program already is, then
/// loads the modules. Returns the console line.
pub fn ensure(needs: Needs, server: &str) -> Result<String, ToolsError> {
    ensure_in(needs, server, Path::new("/"))
}

/// [`ensure`] with the installer's root at `root` (a temporary directory in tests).
pub fn ensure_in(needs: Needs, server: &str, root: &Path) -> Result<String, ToolsError> {
    if !needs.any() {
        return Ok("layout needs no storage tools".into());
    }
    let what = needs.programs().join(", ");
    let present = |p: &str| root.join(p.trim_start_matches('/')).exists();
    let mut msg = String::new();
    if needs.programs().iter().any(|p| !present(p)) {
        let url = archive_url(server);
        let resp = http_client::get(&url, Duration::from_secs(120)).map_err(|source| {
            ToolsError::Fetch {
                url: url.clone(),
                what: what.clone(),
                source,
            }
        })?;
        if !resp.is_success() {
            return Err(ToolsError::Status {
                url,
                status: resp.status,
                what,
            });
        }
        let archive = parse(&resp.body).map_err(|detail| ToolsError::Corrupt {
            url: url.clone(),
            detail,
        })?;
        let files = unpack(&archive, root)?;
        msg = format!(
            "unpacked {files} files ({} KiB) from {url}; ",
            resp.body.len() / 1024
        );
    }
    if let Some(p) = needs.programs().into_iter().find(|p| !present(p)) {
        return Err(ToolsError::StillMissing(p.to_string()));
    }
    msg.push_str(&format!("{what} ready"));
    // The archive brought a modules.dep that names its modules too: reopen the
    // tables, then load what no device asks for.
    let dir = modules::modules_dir(&root.join(paths::MODULES_DIR.trim_start_matches('/')));
    match modules::start(&dir, &needs.modules()) {
        Ok(report) => {
            msg.push_str(&format!(
                "; modules loaded: {}",
                if report.loaded.is_empty() {
                    "none new".to_string()
                } else {
                    report.loaded.join(" ")
                }
            ));
            for n in report.notes.iter().chain(&report.missing) {
                msg.push_str(&format!("; {n}"));
            }
        }
        Err(e) => msg.push_str(&format!("; modules not loaded: {e}")),
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_xfs_raid_or_lvm_need_the_tools() {
        let plain = needs(["ext3", "swap", "vfat"], false, false);
        assert!(!plain.any());
        assert!(plain.programs().is_empty() && plain.modules().is_empty());
        let xfs = needs(["ext3", "XFS"], false, false);
        assert_eq!(xfs.programs(), [paths::MKFS_XFS]);
        assert_eq!(xfs.modules(), ["xfs"]);
        let raid = needs(["ext3"], true, false);
        assert_eq!(raid.programs(), [paths::MDADM]);
        assert_eq!(raid.modules(), ["md_mod", "raid1"]);
        let all = needs(["xfs"], true, true);
        assert_eq!(all.programs(), [paths::MDADM, paths::LVM, paths::MKFS_XFS]);
        assert_eq!(all.modules(), ["md_mod", "raid1", "dm_mod", "xfs"]);
        assert_eq!(
            ensure(Needs::default(), "http://127.0.0.1:1").unwrap(),
            "layout needs no storage tools"
        );
    }

    #[test]
    fn url_is_beside_the_initramfs() {
        assert_eq!(
            archive_url("http://10.44.0.1:8080/"),
            "http://10.44.0.1:8080/boot/storage-tools.img"
        );
    }

    #[test]
    fn unpack_writes_files_links_and_keeps_what_is_there() {
        let d = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("usr/lib", d.path().join("lib")).unwrap();
        std::fs::create_dir_all(d.path().join("usr/lib/modules/6.1")).unwrap();
        std::fs::write(d.path().join("usr/lib/modules/6.1/modules.dep"), "old\n").unwrap();
        let mut a = Archive::new();
        a.add_symlink("lib", "usr/lib");
        a.add_file("usr/sbin/mdadm", 0o755, b"\x7fELF mdadm".to_vec());
        a.add_file("usr/lib/modules/6.1/modules.dep", 0o644, b"new\n".to_vec());
        a.add_symlink("usr/sbin/lvcreate", "lvm");
        let gz = {
            use std::io::Write;
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&a.to_bytes()).unwrap();
            e.finish().unwrap()
        };
        let back = parse(&gz).unwrap();
        assert_eq!(unpack(&back, d.path()).unwrap(), 2);
        let mdadm = d.path().join("usr/sbin/mdadm");
        assert_eq!(std::fs::read(&mdadm).unwrap(), b"\x7fELF mdadm");
        assert_eq!(
            std::fs::metadata(&mdadm).unwrap().permissions().mode() & 0o777,
            0o755
        );
        assert_eq!(
            std::fs::read_to_string(d.path().join("lib/modules/6.1/modules.dep")).unwrap(),
            "new\n"
        );
        assert_eq!(
            std::fs::read_link(d.path().join("usr/sbin/lvcreate")).unwrap(),
            Path::new("lvm")
        );
        assert!(std::fs::symlink_metadata(d.path().join("lib"))
            .unwrap()
            .file_type()
            .is_symlink());
        // Twice is the same.
        assert_eq!(unpack(&back, d.path()).unwrap(), 2);
        assert!(parse(b"not gzip").unwrap_err().contains("gunzip"));
    }

    /// One-request HTTP server on loopback answering `response`; returns the
    /// server URL and a handle giving the request line back.
    fn serve_once(response: Vec<u8>) -> (String, std::thread::JoinHandle<String>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let t = std::thread::spawn(move || {
            use std::io::{Read, Write};
            let (mut c, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let n = c.read(&mut buf).unwrap();
            c.write_all(&response).unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        (format!("http://127.0.0.1:{port}"), t)
    }

    #[test]
    fn a_missing_archive_is_reported_with_its_url_and_remedy() {
        let root = tempfile::tempdir().unwrap();
        let (url, t) = serve_once(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec());
        let e = ensure_in(needs(["xfs"], true, false), &url, root.path()).unwrap_err();
        let req = t.join().unwrap();
        assert!(
            req.starts_with("GET /boot/storage-tools.img HTTP/1.1"),
            "{req}"
        );
        assert!(e.to_string().contains("answered 404"), "{e}");
        assert!(e.to_string().contains("rollout initramfs build"), "{e}");
    }

    #[test]
    fn fetched_tools_land_in_the_root_once() {
        let root = tempfile::tempdir().unwrap();
        let mut a = Archive::new();
        a.add_file(paths::MDADM, 0o755, b"mdadm".to_vec());
        let gz = {
            use std::io::Write;
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&a.to_bytes()).unwrap();
            e.finish().unwrap()
        };
        let mut resp =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", gz.len()).into_bytes();
        resp.extend(gz);
        let (url, t) = serve_once(resp);
        let raid = needs([], true, false);
        let msg = ensure_in(raid, &url, root.path()).unwrap();
        t.join().unwrap();
        assert!(msg.starts_with("unpacked 1 files"), "{msg}");
        assert!(root.path().join("usr/sbin/mdadm").is_file());
        // Present now: no second fetch (nothing listens at this URL any more).
        let msg = ensure_in(raid, &url, root.path()).unwrap();
        assert!(msg.starts_with("/usr/sbin/mdadm ready"), "{msg}");
        // An archive without the program asked for is refused by name.
        let e = ensure_in(
            needs(["xfs"], false, false),
            "http://127.0.0.1:1",
            root.path(),
        );
        assert!(e.is_err());
    }
}
