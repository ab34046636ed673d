//! Read-only TFTP for the iPXE first stages. Everything a client names is resolved
//! inside the TFTP root; `..`, absolute paths elsewhere and symlinks that lead out
//! are refused with a TFTP access-violation error, not just "not found".

use async_tftp::packet;
use async_tftp::server::{Handler, TftpServerBuilder};
use futures_lite::io::{AsyncRead, Cursor};
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// First stages that must be present for PXE clients to boot.
pub const REQUIRED_LOADERS: &[&str] = &["undionly.kpxe", "snponly.efi", "ipxe.efi"];
/// Files larger than this are not served over TFTP (kernels belong on HTTP).
const MAX_TFTP_FILE: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TftpError {
    #[error("TFTP root {0} does not exist; install Debian's `ipxe` package (apt-get install ipxe) or set server.tftp_root")]
    MissingRoot(PathBuf),
    #[error("TFTP root {root} lacks {file}; install Debian's `ipxe` package (apt-get install ipxe) or copy the iPXE binaries there")]
    MissingLoader { root: PathBuf, file: String },
    #[error(
        "cannot start TFTP on {addr}: {source}; is another TFTP server running, and are you root?"
    )]
    Bind {
        addr: SocketAddr,
        source: async_tftp::Error,
    },
}

/// Why a path was refused; becomes a TFTP error packet.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    OutsideRoot,
    NotFound,
}

/// Resolves a client-supplied path inside `root` (which must be canonical).
/// Pure apart from reading the file system to follow symlinks.
pub fn resolve(root: &Path, requested: &Path) -> Result<PathBuf, Refusal> {
    let relative = if requested.is_absolute() {
        // Some firmwares send "/undionly.kpxe" or the full server path; both are
        // fine as long as they name something under the root.
        match requested.strip_prefix(root) {
            Ok(rest) => rest.to_path_buf(),
            Err(_) if requested.components().count() == 2 => requested
                .strip_prefix("/")
                .map_err(|_| Refusal::OutsideRoot)?
                .to_path_buf(),
            Err(_) => return Err(Refusal::OutsideRoot),
        }
    } else {
        requested.to_path_buf()
    };
    if relative
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(Refusal::OutsideRoot);
    }
    let joined = root.join(&relative);
    let real = joined.canonicalize().map_err(|_| Refusal::NotFound)?;
    if !real.starts_with(root) {
        return Err(Refusal::OutsideRoot);
    }
    if !real.is_file() {
        return Err(Refusal::NotFound);
    }
    Ok(real)
}

/// Checks the root and the loaders at startup, so a missing package is an error
/// at `rollout serve` and not a mystery at the first PXE boot.
pub fn check_root(root: &Path) -> Result<PathBuf, TftpError> {
    let root = root
        .canonicalize()
        .map_err(|_| TftpError::MissingRoot(root.to_owned()))?;
    for file in REQUIRED_LOADERS {
        if !root.join(file).is_file() {
            return Err(TftpError::MissingLoader {
                root: root.clone(),
                file: file.to_string(),
            });
        }
    }
    Ok(root)
}

pub struct ConfinedHandler {
    root: PathBuf,
}

/// Logs the transfer when the server drops the reader, with how much was sent.
pub struct LoggedReader {
    inner: Cursor<Vec<u8>>,
    client: SocketAddr,
    name: String,
}

impl AsyncRead for LoggedReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl Drop for LoggedReader {
    fn drop(&mut self) {
        let sent = self.inner.position();
        let size = self.inner.get_ref().len() as u64;
        let span = tracing::info_span!("tftp", client = %self.client, file = %self.name);
        let _g = span.enter();
        if sent >= size {
            info!("sent {} ({size} bytes)", self.name);
        } else {
            warn!(
                "transfer of {} ended after {sent} of {size} bytes",
                self.name
            );
        }
    }
}

impl Handler for ConfinedHandler {
    type Reader = LoggedReader;
    type Writer = futures_lite::io::Sink;

    async fn read_req_open(
        &mut self,
        client: &SocketAddr,
        path: &Path,
    ) -> Result<(Self::Reader, Option<u64>), packet::Error> {
        let span = tracing::info_span!("tftp", client = %client, file = %path.display());
        let _g = span.enter();
        let real = match resolve(&self.root, path) {
            Ok(p) => p,
            Err(Refusal::OutsideRoot) => {
                warn!("refused: path leaves the TFTP root");
                return Err(packet::Error::PermissionDenied);
            }
            Err(Refusal::NotFound) => {
                info!("not found");
                return Err(packet::Error::FileNotFound);
            }
        };
        let len = std::fs::metadata(&real)
            .map(|m| m.len())
            .unwrap_or(u64::MAX);
        if len > MAX_TFTP_FILE {
            warn!(len, "refused: too large for TFTP, serve it over HTTP");
            return Err(packet::Error::Msg(
                "file too large for TFTP; use HTTP".into(),
            ));
        }
        let data = std::fs::read(&real).map_err(|_| packet::Error::FileNotFound)?;
        info!(bytes = data.len(), "RRQ");
        let len = data.len() as u64;
        Ok((
            LoggedReader {
                inner: Cursor::new(data),
                client: *client,
                name: path.display().to_string(),
            },
            Some(len),
        ))
    }

    async fn write_req_open(
        &mut self,
        client: &SocketAddr,
        path: &Path,
        _size: Option<u64>,
    ) -> Result<Self::Writer, packet::Error> {
        warn!(%client, file = %path.display(), "refused TFTP write: the server is read-only");
        Err(packet::Error::IllegalOperation)
    }
}

pub async fn run(
    root: PathBuf,
    addr: SocketAddr,
    cancel: CancellationToken,
) -> Result<(), TftpError> {
    let server = TftpServerBuilder::with_handler(ConfinedHandler { root })
        .bind(addr)
        .build()
        .await
        .map_err(|source| TftpError::Bind { addr, source })?;
    info!(%addr, "TFTP listening");
    tokio::select! {
        _ = cancel.cancelled() => Ok(()),
        r = server.serve() => r.map_err(|source| TftpError::Bind { addr, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("tftp");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("undionly.kpxe"), b"x").unwrap();
        std::fs::create_dir(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/a.efi"), b"y").unwrap();
        std::fs::write(dir.path().join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), root.join("escape")).unwrap();
        std::os::unix::fs::symlink("undionly.kpxe", root.join("alias")).unwrap();
        let canon = root.canonicalize().unwrap();
        (dir, canon)
    }

    #[test]
    fn serves_files_inside_the_root() {
        let (_d, r) = root();
        assert_eq!(
            resolve(&r, Path::new("undionly.kpxe")).unwrap(),
            r.join("undionly.kpxe")
        );
        assert_eq!(
            resolve(&r, Path::new("/undionly.kpxe")).unwrap(),
            r.join("undionly.kpxe")
        );
        assert_eq!(
            resolve(&r, Path::new("sub/a.efi")).unwrap(),
            r.join("sub/a.efi")
        );
        assert_eq!(
            resolve(&r, &r.join("sub/a.efi")).unwrap(),
            r.join("sub/a.efi")
        );
        assert_eq!(
            resolve(&r, Path::new("alias")).unwrap(),
            r.join("undionly.kpxe")
        );
    }

    #[test]
    fn refuses_every_way_out() {
        let (_d, r) = root();
        for bad in [
            "../secret",
            "sub/../../secret",
            "/etc/passwd",
            "escape",
            "/tmp/x/y",
        ] {
            assert_eq!(
                resolve(&r, Path::new(bad)),
                Err(Refusal::OutsideRoot),
                "{bad}"
            );
        }
        assert_eq!(resolve(&r, Path::new("missing")), Err(Refusal::NotFound));
        assert_eq!(resolve(&r, Path::new("sub")), Err(Refusal::NotFound));
    }
}
