//! Read-only TFTP for the iPXE first stages. Everything a client names is resolved
//! inside the TFTP root; `..`, absolute paths elsewhere and symlinks that lead out
//! are refused with a TFTP access-violation error, not just "not found".

use async_tftp::packet;
use async_tftp::server::{Handler, TftpServerBuilder};
use futures_lite::io::{AsyncRead, Cursor};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};
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

/// Transfers served at once, from all clients together. Each holds a UDP socket
/// (one file descriptor) for at most [`TIMEOUT`] × ([`MAX_SEND_RETRIES`] + 1)
/// when its client stops acknowledging.
pub const MAX_TRANSFERS: usize = 256;
/// Transfers one client address may have at once: a PXE client fetches one
/// file at a time, so a flood from one address cannot take every slot.
pub const MAX_TRANSFERS_PER_CLIENT: usize = 16;
/// The server's retransmission timeout. Clients' `timeout` option (RFC 2349, up
/// to 255 s) is ignored, so this is what every transfer uses.
pub const TIMEOUT: Duration = Duration::from_secs(2);
/// Resends of an unacknowledged window before the transfer is dropped
/// (async-tftp's default is 100: 5 minutes per dead transfer).
pub const MAX_SEND_RETRIES: u32 = 5;
/// Bytes of file contents kept in memory for all clients (files are at most
/// [`MAX_TFTP_FILE`]); beyond it the cache starts afresh.
const MAX_CACHE: u64 = 256 << 20;

/// Who may start a transfer now: a global and a per-client count. Pure
/// bookkeeping; a [`Slot`] gives its place back when dropped.
#[derive(Debug, Default)]
pub struct Admission {
    active: Mutex<HashMap<IpAddr, usize>>,
}

/// Why a transfer was not started.
#[derive(Debug, PartialEq, Eq)]
pub enum Busy {
    Server,
    Client,
}

impl Admission {
    pub fn admit(self: &Arc<Self>, client: IpAddr) -> Result<Slot, Busy> {
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        if active.values().sum::<usize>() >= MAX_TRANSFERS {
            return Err(Busy::Server);
        }
        let n = active.entry(client).or_default();
        if *n >= MAX_TRANSFERS_PER_CLIENT {
            return Err(Busy::Client);
        }
        *n += 1;
        Ok(Slot {
            admission: self.clone(),
            client,
        })
    }

    pub fn active(&self) -> usize {
        let active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        active.values().sum()
    }
}

/// One admitted transfer.
#[derive(Debug)]
pub struct Slot {
    admission: Arc<Admission>,
    client: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut active = self
            .admission
            .active
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = active.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                active.remove(&self.client);
            }
        }
    }
}

/// One shared in-memory copy of each served file, keyed by path and replaced when
/// the file's modification time or size changes.
#[derive(Default)]
struct FileCache {
    files: HashMap<PathBuf, (SystemTime, u64, Arc<[u8]>)>,
    bytes: u64,
}

impl FileCache {
    fn get(&mut self, path: &Path) -> std::io::Result<Arc<[u8]>> {
        let meta = std::fs::metadata(path)?;
        let (mtime, len) = (meta.modified()?, meta.len());
        if let Some((m, l, data)) = self.files.get(path) {
            if (*m, *l) == (mtime, len) {
                return Ok(data.clone());
            }
        }
        let data: Arc<[u8]> = std::fs::read(path)?.into();
        if self.bytes + len > MAX_CACHE {
            self.files.clear();
            self.bytes = 0;
        }
        if let Some((_, old, _)) = self
            .files
            .insert(path.to_owned(), (mtime, len, data.clone()))
        {
            self.bytes -= old;
        }
        self.bytes += len;
        Ok(data)
    }
}

pub struct ConfinedHandler {
    root: PathBuf,
    admission: Arc<Admission>,
    cache: FileCache,
    /// Requests turned away since the last warning, and when that was.
    refused: u64,
    warned: Option<Instant>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl ConfinedHandler {
    pub fn new(root: PathBuf) -> ConfinedHandler {
        ConfinedHandler {
            root,
            admission: Arc::default(),
            cache: FileCache::default(),
            refused: 0,
            warned: None,
            metrics: Arc::default(),
        }
    }

    /// Counts transfers and bytes into the server's metrics.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> ConfinedHandler {
        self.metrics = metrics;
        self
    }

    /// Counts a refusal; warns at most every 10 s, with the count.
    fn refused(&mut self, why: &Busy) {
        self.metrics.tftp("refused");
        self.refused += 1;
        if !matches!(self.warned, Some(t) if t.elapsed() < Duration::from_secs(10)) {
            let (n, active) = (std::mem::take(&mut self.refused), self.admission.active());
            match why {
                Busy::Server => warn!(refused = n, active, "TFTP busy: {MAX_TRANSFERS} transfers running; answering new requests with an error"),
                Busy::Client => warn!(refused = n, active, "TFTP: a client asked for more than {MAX_TRANSFERS_PER_CLIENT} transfers at once; answering the excess with an error"),
            }
            self.warned = Some(Instant::now());
        }
    }
}

/// Logs the transfer when the server drops the reader, with how much was sent.
pub struct LoggedReader {
    inner: Cursor<Arc<[u8]>>,
    client: SocketAddr,
    name: String,
    metrics: Arc<crate::metrics::Metrics>,
    _slot: Slot,
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
        self.metrics.tftp_bytes.inc_by(sent);
        self.metrics.tftp(if sent >= size {
            "complete"
        } else {
            "incomplete"
        });
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
        let slot = match self.admission.admit(client.ip()) {
            Ok(s) => s,
            Err(why) => {
                self.refused(&why);
                return Err(packet::Error::Msg(
                    "server busy; try again in a few seconds".into(),
                ));
            }
        };
        let real = match resolve(&self.root, path) {
            Ok(p) => p,
            Err(Refusal::OutsideRoot) => {
                self.metrics.tftp("refused");
                warn!("refused: path leaves the TFTP root");
                return Err(packet::Error::PermissionDenied);
            }
            Err(Refusal::NotFound) => {
                self.metrics.tftp("not_found");
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
        let data = self
            .cache
            .get(&real)
            .map_err(|_| packet::Error::FileNotFound)?;
        info!(bytes = data.len(), "RRQ");
        let len = data.len() as u64;
        Ok((
            LoggedReader {
                inner: Cursor::new(data),
                client: *client,
                name: path.display().to_string(),
                metrics: self.metrics.clone(),
                _slot: slot,
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
    metrics: Arc<crate::metrics::Metrics>,
    cancel: CancellationToken,
) -> Result<(), TftpError> {
    let handler = ConfinedHandler::new(root).with_metrics(metrics);
    let server = TftpServerBuilder::with_handler(handler)
        .timeout(TIMEOUT)
        .ignore_client_timeout()
        .max_send_retries(MAX_SEND_RETRIES)
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
    fn admission_caps_each_client_and_the_server_and_frees_on_drop() {
        let a = Arc::new(Admission::default());
        let ip = |i: u32| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        let mine: Vec<Slot> = (0..MAX_TRANSFERS_PER_CLIENT)
            .map(|_| a.admit(ip(1)).unwrap())
            .collect();
        assert_eq!(a.admit(ip(1)).unwrap_err(), Busy::Client);
        // Another client is not affected by the first one's flood.
        let other = a.admit(ip(2)).unwrap();
        drop(mine);
        drop(other);
        assert_eq!(a.active(), 0);
        let all: Vec<Slot> = (0..MAX_TRANSFERS as u32)
            .map(|i| a.admit(ip(i / 4)).unwrap())
            .collect();
        assert_eq!(a.admit(ip(9999)).unwrap_err(), Busy::Server);
        drop(all);
        a.admit(ip(9999)).unwrap();
    }

    #[test]
    fn the_cache_shares_one_copy_and_follows_changes() {
        let (_d, r) = root();
        let mut c = FileCache::default();
        let path = r.join("undionly.kpxe");
        let first = c.get(&path).unwrap();
        let second = c.get(&path).unwrap();
        assert!(Arc::ptr_eq(&first, &second), "a second copy was loaded");
        std::fs::write(&path, b"new contents").unwrap();
        let third = c.get(&path).unwrap();
        assert_eq!(&third[..], b"new contents");
        assert_eq!(c.bytes, 12);
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
