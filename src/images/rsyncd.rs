//! The rsync daemon that serves images to installing nodes.
//!
//! One read-only module per serial (`{name}-{serial}`), so a node keeps pulling the
//! serial its install plan named even if another is published meanwhile, plus `{name}`
//! for whatever is published now. rsync re-reads its config on every connection, so
//! publishing only has to rewrite the file: no signal, no restart.
//!
//! Nothing is served anonymously: every module has `auth users` (the running
//! installs and the installed nodes of its image, [`crate::inventory::secrets`])
//! checked against `rsyncd.secrets` (0600), and `list = no`. The supervisor is
//! the only writer of both files; it rewrites them when an install starts or
//! ends ([`RsyncModules::reload`]) and on its timer, and rsync reads both afresh
//! for every connection.

use super::store::Images;
use super::ImageError;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RsyncdSettings {
    /// `{state_dir}`: images are read from `{state_dir}/images`.
    pub state_dir: PathBuf,
    /// The provisioning address the daemon binds to (never 0.0.0.0).
    pub address: IpAddr,
    pub port: u16,
    /// rsync `hosts allow` entries, e.g. `10.44.0.0/24`.
    pub hosts_allow: Vec<String>,
    pub max_connections: u32,
    /// `Some(hosts allow)`: export the whole image store to mirrors as module
    /// [`MIRROR_MODULE`], read by [`MIRROR_USER`] only (see `images::mirror`).
    pub mirror_hosts: Option<Vec<String>>,
}

impl RsyncdSettings {
    pub fn new(state_dir: &Path, address: IpAddr, hosts_allow: Vec<String>) -> Self {
        RsyncdSettings {
            state_dir: state_dir.to_path_buf(),
            address,
            port: 873,
            hosts_allow,
            max_connections: 32,
            mirror_hosts: None,
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.state_dir.join("rsyncd.conf")
    }

    /// `user:password` per line, 0600: rsyncd refuses a secrets file others can read.
    pub fn secrets_path(&self) -> PathBuf {
        self.state_dir.join("rsyncd.secrets")
    }

    /// `rsync://{address}:{port}/{module}/` for an install plan's [`crate::wire::ImageRef`].
    pub fn url(&self, module: &str) -> String {
        match self.address {
            IpAddr::V6(a) => format!("rsync://[{a}]:{}/{module}/", self.port),
            IpAddr::V4(a) => format!("rsync://{a}:{}/{module}/", self.port),
        }
    }
}

/// Module name for one serial of an image.
pub fn serial_module(name: &str, serial: u64) -> String {
    format!("{name}-{serial}")
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleSpec {
    pub name: String,
    /// The image the module serves: its users may read it.
    pub image: String,
    pub path: PathBuf,
    pub comment: String,
}

pub use crate::inventory::secrets::RsyncUser;

/// No such user is ever in the secrets file: a module nobody may read yet
/// still gets an `auth users` line, because without one rsync serves it to anyone.
pub(crate) const NOBODY: &str = "rollout-nobody";

/// Where the daemon's users come from (the inventory, in `rollout serve`).
pub type UserSource = std::sync::Arc<dyn Fn() -> Vec<RsyncUser> + Send + Sync>;

/// Modules for every complete serial of every image, plus one per published image.
pub fn modules(images: &Images) -> Result<Vec<ModuleSpec>, ImageError> {
    let mut out = Vec::new();
    for name in images.names()? {
        if let Some(p) = images.published(&name)? {
            out.push(ModuleSpec {
                name: name.clone(),
                image: name.clone(),
                path: images.published_root(&name),
                comment: format!("{name}, published (serial {p} at config time)"),
            });
        }
        for s in images.serials(&name)? {
            out.push(ModuleSpec {
                name: serial_module(&name, s),
                image: name.clone(),
                path: images.serial_root(&name, s),
                comment: format!("{name} serial {s}"),
            });
        }
    }
    Ok(out)
}

pub(crate) fn check_value(what: &str, v: &str) -> Result<(), ImageError> {
    // rsyncd.conf has no quoting: a newline or bracket would start a new setting or module.
    if v.is_empty() || v.contains(['\n', '\r', '[', ']', '#', ';']) || v.trim() != v {
        return Err(ImageError::BadSetting(format!("{what} = {v:?}")));
    }
    Ok(())
}

pub fn render_config(
    s: &RsyncdSettings,
    modules: &[ModuleSpec],
    users: &[RsyncUser],
) -> Result<String, ImageError> {
    if s.address.is_unspecified() {
        return Err(ImageError::BadSetting(
            "address 0.0.0.0: bind the rsync daemon to the provisioning address only".into(),
        ));
    }
    if s.hosts_allow.is_empty() {
        return Err(ImageError::BadSetting("hosts allow is empty".into()));
    }
    for h in &s.hosts_allow {
        check_value("hosts allow", h)?;
    }
    let lock_file = s.state_dir.join("rsyncd.lock");
    check_value("lock file", &lock_file.to_string_lossy())?;
    let mut c = String::new();
    let _ = writeln!(
        c,
        "# Generated by rollout from {}; rewritten on every publish.",
        s.state_dir.display()
    );
    let _ = writeln!(c, "address = {}", s.address);
    let _ = writeln!(c, "port = {}", s.port);
    let _ = writeln!(c, "hosts allow = {}", s.hosts_allow.join(" "));
    let _ = writeln!(c, "hosts deny = *");
    let _ = writeln!(c, "max connections = {}", s.max_connections);
    let _ = writeln!(c, "lock file = {}", lock_file.display());
    let secrets = s.secrets_path();
    check_value("secrets file", &secrets.to_string_lossy())?;
    let _ = writeln!(c, "secrets file = {}", secrets.display());
    let _ = writeln!(c, "strict modes = yes");
    // The default for modules that would somehow lack their own line.
    let _ = writeln!(c, "auth users = {NOBODY}");
    let _ = writeln!(c, "use chroot = yes");
    let _ = writeln!(c, "numeric ids = yes");
    let _ = writeln!(c, "read only = yes");
    let _ = writeln!(c, "write only = no");
    let _ = writeln!(c, "list = no");
    // Images contain root-only files (/etc/shadow): the daemon must read them as root.
    let _ = writeln!(c, "uid = 0");
    let _ = writeln!(c, "gid = 0");
    let _ = writeln!(c, "timeout = 600");
    let _ = writeln!(c, "reverse lookup = no");
    // Cheap per-client work (every install walks the whole tree): no
    // compression whatever a client asks (a LAN is faster than zlib on the
    // server) and no per-file transfer log lines. Not `open noatime`: O_NOATIME
    // on a file root does not own needs CAP_FOWNER, which the unit drops.
    let _ = writeln!(c, "dont compress = *");
    let _ = writeln!(c, "transfer logging = no");
    for m in modules {
        check_value("module", &m.name)?;
        check_value("path", &m.path.to_string_lossy())?;
        let _ = writeln!(c, "\n[{}]", m.name);
        let _ = writeln!(c, "    path = {}", m.path.display());
        let _ = writeln!(c, "    comment = {}", m.comment.replace(['\n', '\r'], " "));
        let mut readers: Vec<&str> = users
            .iter()
            .filter(|u| u.image == m.image)
            .map(|u| u.user.as_str())
            .collect();
        if readers.is_empty() {
            readers.push(NOBODY);
        }
        let _ = writeln!(c, "    auth users = {}", readers.join(", "));
    }
    if let Some(hosts) = &s.mirror_hosts {
        super::mirror::export::render(&mut c, s, hosts, users)?;
    }
    Ok(c)
}

/// `user:password` lines for rsyncd's secrets file.
pub fn render_secrets(users: &[RsyncUser]) -> Result<String, ImageError> {
    let mut out = String::new();
    for u in users {
        let ok =
            |v: &str| !v.is_empty() && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !ok(&u.user) || !ok(&u.password) {
            return Err(ImageError::BadSetting(format!("rsync user {:?}", u.user)));
        }
        let _ = writeln!(out, "{}:{}", u.user, u.password);
    }
    Ok(out)
}

/// Writes `text` to `path` with `mode` if it differs
/// ([`crate::durable::write_atomic`]). Returns whether it wrote.
fn replace_file(path: &Path, text: &str, mode: u32) -> Result<bool, ImageError> {
    if std::fs::read_to_string(path).is_ok_and(|old| old == text) {
        return Ok(false);
    }
    let io = |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    // Its own temp file per write (two supervisors on one state_dir, as tests
    // run them), fsynced before the rename.
    crate::durable::write_atomic(path, text.as_bytes(), mode).map_err(io)?;
    Ok(true)
}

/// Renders and writes the secrets file, then the config, where they changed.
/// The secrets go first: a config naming a user whose password is not written
/// yet would refuse that user for a moment; the other order never lets anyone
/// in that should not be. Returns whether anything was written.
pub fn write_config(s: &RsyncdSettings, users: &[RsyncUser]) -> Result<bool, ImageError> {
    let text = render_config(s, &modules(&Images::new(&s.state_dir))?, users)?;
    let secrets = render_secrets(users)?;
    let wrote_secrets = replace_file(&s.secrets_path(), &secrets, 0o600)?;
    let wrote_config = replace_file(&s.config_path(), &text, 0o644)?;
    Ok(wrote_secrets || wrote_config)
}

/// The `hosts allow` entries of the daemon: the server's own subnet and every
/// subnet behind a DHCP relay (`[[dhcp.relay]]`), as `network/prefix`.
pub fn hosts_allow(
    address: std::net::Ipv4Addr,
    netmask: std::net::Ipv4Addr,
    relays: &[crate::config::RelaySubnet],
) -> Vec<String> {
    let cidr = |a, m: std::net::Ipv4Addr| {
        format!(
            "{}/{}",
            crate::config::network(a, m),
            u32::from(m).count_ones()
        )
    };
    let mut allow = vec![cidr(address, netmask)];
    for r in relays {
        let c = cidr(r.range[0], r.netmask);
        if !allow.contains(&c) {
            allow.push(c);
        }
    }
    allow
}

/// A request to the supervisor: rewrite rsyncd.conf now, then answer.
type Refresh = tokio::sync::oneshot::Sender<()>;

/// How the rest of the server gets a module served: it asks the [`Supervisor`],
/// which is the only writer of rsyncd.conf.
#[derive(Debug, Clone)]
pub struct RsyncModules {
    config_path: PathBuf,
    refresh: tokio::sync::mpsc::Sender<Refresh>,
}

impl RsyncModules {
    /// Whether rsyncd.conf lists the module of `serial` of `image`, after asking the
    /// supervisor to add it if it did not. The supervisor finds a serial published
    /// by the CLI within seconds on its own; a node asking in between must not be
    /// handed a module that does not exist yet.
    pub async fn ensure(&self, image: &str, serial: u64) -> bool {
        if self.lists(image, serial) {
            return true;
        }
        let (answer, answered) = tokio::sync::oneshot::channel();
        if self.refresh.send(answer).await.is_err() || answered.await.is_err() {
            return false;
        }
        self.lists(image, serial)
    }

    /// Has the supervisor rewrite rsyncd.conf and its secrets now (an install
    /// started or ended) and waits until it did; false with no supervisor.
    pub async fn reload(&self) -> bool {
        let (answer, answered) = tokio::sync::oneshot::channel();
        self.refresh.send(answer).await.is_ok() && answered.await.is_ok()
    }

    fn lists(&self, image: &str, serial: u64) -> bool {
        let module = format!("[{}]", serial_module(image, serial));
        std::fs::read_to_string(&self.config_path)
            .is_ok_and(|conf| conf.lines().any(|l| l.trim() == module))
    }
}

/// Runs `rsync --daemon` for as long as the token is not cancelled: restarts it with
/// backoff when it dies and keeps its module list in step with the image store.
pub struct Supervisor {
    pub settings: RsyncdSettings,
    /// How often to look for new serials. Publishing from another process (the CLI)
    /// shows up in the rsync module list within this time.
    pub refresh_every: Duration,
    pub rsync: PathBuf,
    /// Where failed rewrites of rsyncd.conf are counted (the server's, on /healthz).
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// Who may read which image (none by default: nothing is readable).
    pub users: UserSource,
    modules: RsyncModules,
    requests: tokio::sync::mpsc::Receiver<Refresh>,
}

impl Supervisor {
    pub fn new(settings: RsyncdSettings) -> Self {
        let (refresh, requests) = tokio::sync::mpsc::channel(16);
        Supervisor {
            modules: RsyncModules {
                config_path: settings.config_path(),
                refresh,
            },
            requests,
            settings,
            refresh_every: Duration::from_secs(2),
            rsync: PathBuf::from("rsync"),
            metrics: Default::default(),
            users: std::sync::Arc::new(Vec::new),
        }
    }

    /// The handle other tasks ask for modules with.
    pub fn modules(&self) -> RsyncModules {
        self.modules.clone()
    }

    pub async fn run(self, cancel: CancellationToken) -> Result<(), ImageError> {
        let Supervisor {
            settings,
            refresh_every,
            rsync,
            metrics,
            users,
            modules: _modules,
            requests,
        } = self;
        Daemon {
            settings,
            refresh_every,
            rsync,
            metrics,
            users,
        }
        .run(requests, cancel)
        .await
    }
}

/// The supervisor at work: its settings without the request channel it reads.
struct Daemon {
    settings: RsyncdSettings,
    refresh_every: Duration,
    rsync: PathBuf,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    users: UserSource,
}

impl Daemon {
    fn write(&self) -> Result<bool, ImageError> {
        write_config(&self.settings, &(self.users)())
    }

    /// Rewrites rsyncd.conf and its secrets if the images or the users changed.
    /// A failure is counted and logged, never fatal: the daemon keeps serving
    /// the modules it has, and DHCP and HTTP go on (an error returned from `run`
    /// would stop the server). Returns whether rsyncd.conf is up to date.
    fn refresh(&self) -> bool {
        match self.write() {
            Ok(true) => {
                tracing::info!("rsync modules updated");
                true
            }
            Ok(false) => true,
            Err(e) => {
                let total = crate::metrics::Metrics::bump(&self.metrics.rsyncd_config_failures);
                tracing::warn!(total, "could not update rsyncd.conf: {e}; the rsync daemon keeps its previous modules, new serials are not served until this is fixed");
                false
            }
        }
    }

    fn answer(&self, request: Refresh) {
        let _ = self.refresh();
        let _ = request.send(());
    }

    async fn run(
        self,
        mut requests: tokio::sync::mpsc::Receiver<Refresh>,
        cancel: CancellationToken,
    ) -> Result<(), ImageError> {
        if tokio::process::Command::new(&self.rsync)
            .arg("--version")
            .output()
            .await
            .is_err()
        {
            return Err(ImageError::ToolMissing("rsync", "rsync"));
        }
        let mut backoff = Duration::from_millis(500);
        loop {
            // Without a config file there is nothing to start: wait and retry
            // (with an old one, the daemon serves what it lists).
            let fresh = self.refresh();
            let started = Instant::now();
            if fresh || self.settings.config_path().is_file() {
                match self.run_once(&cancel, &mut requests).await {
                    Ok(true) => return Ok(()),
                    Ok(false) => {}
                    Err(e) => tracing::error!("rsync daemon: {e}"),
                }
            }
            if started.elapsed() > Duration::from_secs(60) {
                backoff = Duration::from_millis(500);
            }
            tracing::warn!(retry_in = ?backoff, "rsync daemon stopped; restarting");
            // Requests are answered while waiting too: the file is what the next
            // daemon reads.
            let restart = tokio::time::sleep(backoff);
            tokio::pin!(restart);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = &mut restart => break,
                    Some(request) = requests.recv() => self.answer(request),
                }
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }

    /// One daemon lifetime. `Ok(true)`: cancelled; `Ok(false)`: the daemon exited.
    async fn run_once(
        &self,
        cancel: &CancellationToken,
        requests: &mut tokio::sync::mpsc::Receiver<Refresh>,
    ) -> Result<bool, ImageError> {
        let config = self.settings.config_path();
        let mut child = tokio::process::Command::new(&self.rsync)
            .arg("--daemon")
            .arg("--no-detach")
            .arg(format!("--config={}", config.display()))
            .arg(format!("--port={}", self.settings.port))
            .arg("--log-file=/dev/stderr")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| ImageError::Command {
                command: "rsync --daemon".into(),
                detail: e.to_string(),
            })?;
        if let Some(err) = child.stderr.take() {
            tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(err).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    tracing::info!(target: "rsyncd", "{l}");
                }
            });
        }
        tracing::info!(address = %self.settings.address, port = self.settings.port, "rsync daemon started");
        let mut tick = tokio::time::interval(self.refresh_every);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => {
                    if let Some(pid) = child.id() {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid as i32),
                            nix::sys::signal::SIGTERM,
                        );
                    }
                    if tokio::time::timeout(Duration::from_secs(5), child.wait()).await.is_err() {
                        let _ = child.kill().await;
                    }
                    return Ok(true);
                }
                status = child.wait() => {
                    tracing::warn!(?status, "rsync daemon exited");
                    return Ok(false);
                }
                _ = tick.tick() => {
                    let _ = self.refresh();
                }
                Some(request) = requests.recv() => self.answer(request),
            }
        }
    }
}

/// The settings unit tests render: the lab's server on 10.44.0.1.
#[cfg(test)]
pub(crate) fn test_settings() -> RsyncdSettings {
    RsyncdSettings::new(
        Path::new("/var/lib/rollout"),
        "10.44.0.1".parse().unwrap(),
        vec!["10.44.0.0/24".into()],
    )
}

#[cfg(test)]
mod tests;
