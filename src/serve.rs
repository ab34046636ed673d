//! `rollout serve`: DHCP, TFTP and HTTP together, stopped by one cancellation token.

use crate::config::{DhcpMode, ValidConfig};
use crate::dhcp::{
    self,
    leases::{LeaseTable, Range},
    pxe::BootTargets,
    CoreConfig, DhcpCore, Subnet,
};
use crate::http::{self, AppState};
use crate::inventory::Inventory;
use crate::store::Backend;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Preflight(#[from] crate::preflight::PreflightError),
    #[error(transparent)]
    Store(#[from] crate::db::StoreError),
    #[error(transparent)]
    Inventory(#[from] crate::inventory::InventoryError),
    #[error(transparent)]
    Dhcp(#[from] dhcp::server::DhcpServerError),
    #[error(transparent)]
    Http(#[from] http::HttpError),
    #[error("cannot create state directory {path}: {source}")]
    StateDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Secrets(#[from] crate::durable::StateDirError),
    #[error("admin token file {path}: {problem}; {fix}", fix = crate::config::ADMIN_TOKEN_FIX)]
    AdminToken {
        path: std::path::PathBuf,
        problem: String,
    },
    #[error(transparent)]
    Operators(#[from] crate::operators::OperatorError),
    #[error("a service stopped unexpectedly: {0}")]
    Task(String),
}

fn dhcp_core(
    config: &ValidConfig,
    plan: &crate::config::DhcpPlan,
    store: Box<dyn crate::dhcp::leases::LeaseStore>,
    backend: &Backend,
    health: crate::store::health::StoreHealth,
    nodes: &[crate::inventory::NodeRecord],
) -> Result<DhcpCore, ServeError> {
    let d = &config.dhcp;
    let mut reservations = HashMap::new();
    let mut hostnames = HashMap::new();
    for n in nodes {
        let (ip, hostname) = dhcp_view(n);
        if let Some(ip) = ip {
            reservations.insert(n.mac.clone(), ip);
        }
        if let Some(hostname) = hostname {
            hostnames.insert(n.mac.clone(), hostname);
        }
    }
    let mut leases = LeaseTable::load(store, reservations)?;
    // Lease writes of concurrent packets share one transaction: a rack powering
    // on costs a few fsyncs, and each ACK still waits for its lease on disk.
    let writer = dhcp::commit::GroupCommit::start(backend.batch_store()?, health)
        .map_err(|e| ServeError::Task(format!("cannot start the DHCP lease writer thread: {e}")))?;
    leases.group_commit(writer);
    let relays = d
        .relays
        .iter()
        .map(|r| Subnet {
            range: Some(Range {
                first: r.range[0],
                last: r.range[1],
            }),
            netmask: r.netmask,
            router: r.router,
            dns: d.dns.clone(),
        })
        .collect();
    let cfg = CoreConfig {
        mode: plan.mode,
        server_ip: plan.server_ip,
        local: Subnet {
            range: plan.range.map(|(first, last)| Range { first, last }),
            netmask: plan.netmask,
            router: d.router,
            dns: d.dns.clone(),
        },
        relays,
        lease_time: d.lease_time,
        quarantine_time: d.quarantine_time,
        targets: BootTargets::new(&config.http_base_url()),
        hostnames,
    };
    Ok(DhcpCore::new(cfg, leases).with_rate_limit(dhcp::limits::RateLimit::from(d)))
}

/// What DHCP needs of a node record: its reserved address and, for a node
/// someone declared or approved, the hostname it is sent. Reservations are
/// the records', so a node declared on any server sharing the database (config
/// file, API or CLI) is reserved on every one.
fn dhcp_view(n: &crate::inventory::NodeRecord) -> (Option<std::net::Ipv4Addr>, Option<String>) {
    let ip = n.ip.as_deref().and_then(|ip| ip.parse().ok());
    let hostname = n.declared_or_approved().then(|| n.hostname.clone());
    (ip, hostname)
}

/// Keeps the DHCP core's reservations and hostnames in step with the node
/// records, whichever server changed them.
async fn follow_reservations(
    inventory: Arc<Inventory>,
    core: Arc<Mutex<DhcpCore>>,
    mut changes: tokio::sync::broadcast::Receiver<crate::inventory::NodeChange>,
    cancel: CancellationToken,
) {
    use crate::inventory::NodeChange;
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let change = tokio::select! {
            _ = cancel.cancelled() => return,
            c = changes.recv() => c,
        };
        let updates = match change {
            Ok(NodeChange::Saved(n)) => vec![(n.mac.clone(), dhcp_view(&n))],
            Ok(NodeChange::Removed { mac }) => vec![(mac, (None, None))],
            // Missed some: read them all again.
            Err(RecvError::Lagged(_)) => match inventory.list() {
                Ok(all) => all.iter().map(|n| (n.mac.clone(), dhcp_view(n))).collect(),
                Err(e) => {
                    warn!("cannot read the nodes to refresh DHCP reservations: {e}");
                    continue;
                }
            },
            Err(RecvError::Closed) => return,
        };
        let mut core = core.lock().unwrap_or_else(|p| p.into_inner());
        for (mac, (ip, hostname)) in updates {
            core.set_node(&mac, ip, hostname);
        }
    }
}

/// Config-file nodes become declared records (their install state is kept).
fn declare_config_nodes(config: &ValidConfig, inventory: &Inventory) -> Result<(), ServeError> {
    use crate::inventory::{NodeRecord, NodeState, Source};
    for declared in &config.nodes {
        let (mac, n) = (&declared.mac, &declared.node);
        let image = n
            .image
            .clone()
            .unwrap_or_else(|| config.install.image.clone());
        let mut rec = NodeRecord::new(mac, &n.hostname, &image, Source::Config, NodeState::Pending);
        rec.ip = n.ip.map(|ip| ip.to_string());
        rec.disk = n.disk.clone();
        rec.root_mib = n.root_mib;
        rec.swap_mib = n.swap_mib;
        inventory.declare(rec)?;
    }
    Ok(())
}

/// The admin token: from the config, or generated once into `state_dir/admin.token` (0600).
fn admin_token(config: &ValidConfig) -> Result<String, ServeError> {
    if let Some(t) = &config.server.admin_token {
        return Ok(t.clone());
    }
    let path = config.state_dir.join("admin.token");
    if let Ok(t) = std::fs::read_to_string(&path) {
        // An empty file is refused too: rollout never regenerates over an
        // operator's file, which may be a mistake they should see.
        if let Some(problem) = crate::config::admin_token_problem(&t) {
            return Err(ServeError::AdminToken { path, problem });
        }
        return Ok(t.trim().to_string());
    }
    let token = crate::inventory::random_hex(24);
    crate::durable::write_atomic(&path, format!("{token}\n").as_bytes(), 0o600).map_err(
        |source| ServeError::StateDir {
            path: path.clone(),
            source,
        },
    )?;
    info!(path = %path.display(), "generated the admin token");
    Ok(token)
}

/// The server's SSH key (for `rollout exec`), made once with ssh-keygen. Its public
/// half goes into every node's authorized_keys.
fn server_ssh_key(state_dir: &std::path::Path) -> Option<String> {
    let key = state_dir.join("ssh/id_ed25519");
    if !key.exists() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(key.parent()?)
            .ok()?;
        let made = std::process::Command::new("ssh-keygen")
            .args([
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "rollout-server",
                "-f",
            ])
            .arg(&key)
            .status();
        if !made.map(|s| s.success()).unwrap_or(false) {
            warn!("ssh-keygen is missing or failed: nodes get no server key, so `rollout exec` cannot reach them (apt-get install openssh-client)");
            return None;
        }
    }
    std::fs::read_to_string(key.with_extension("pub"))
        .ok()
        .map(|k| k.trim().to_string())
}

/// Raises the soft open-files limit to the hard one: every TFTP transfer and HTTP
/// connection holds a descriptor, and the usual soft limit (1024) is below what the
/// caps (`tftp::MAX_TRANSFERS`, `http::listen::Limits`) allow together.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    let raised = unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && {
            let before = lim.rlim_cur;
            lim.rlim_cur = lim.rlim_max;
            before == lim.rlim_max || libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0
        }
    };
    if raised {
        info!(open_files = lim.rlim_cur, "open-files limit");
    } else {
        warn!(
            "cannot raise the open-files limit (RLIMIT_NOFILE): {}; many concurrent TFTP/HTTP clients may be refused",
            std::io::Error::last_os_error()
        );
    }
}

/// The state directory 0700 and its secrets 0600 ([`crate::durable::secure_state_dir`]),
/// saying what it narrowed.
fn secure_state_dir(state_dir: &std::path::Path) -> Result<(), ServeError> {
    for change in crate::durable::secure_state_dir(state_dir)? {
        warn!("narrowed permissions of {change}: it holds secrets");
    }
    Ok(())
}

/// The state `/metrics` reads at each scrape: the leases (through the DHCP
/// core's lock, held for one pass over the ranges), the nodes and rsync's port.
fn scrape_sources(
    metrics: &crate::metrics::Metrics,
    dhcp: Option<Arc<Mutex<DhcpCore>>>,
    inventory: &Arc<Inventory>,
    config: &ValidConfig,
) {
    let leases: crate::metrics::LeaseSource = Box::new(move || match &dhcp {
        Some(core) => {
            let core = core.lock().unwrap_or_else(|p| p.into_inner());
            core.lease_usage(crate::clock::now_unix())
        }
        None => vec![],
    });
    let inv = inventory.clone();
    let nodes: crate::metrics::NodeSource = Box::new(move || {
        let records = inv.list().unwrap_or_else(|e| {
            warn!("metrics: cannot read the nodes: {e}");
            vec![]
        });
        crate::metrics::count_by_state(records.iter().map(|r| r.state))
    });
    let rsync = config.server.address.map(|_| config.server.rsync_port);
    metrics.set_sources(leases, nodes, rsync);
}

/// Binds everything first (so a taken port or a missing interface is an error at
/// startup, with a non-zero exit), then serves until `cancel` fires. The machine
/// checks are `ValidConfig::try_from` (`crate::preflight`), which `check-config`
/// runs too.
pub async fn serve(config: ValidConfig, cancel: CancellationToken) -> Result<(), ServeError> {
    raise_fd_limit();
    secure_state_dir(&config.state_dir)?;
    std::fs::create_dir_all(config.state_dir.join("boot")).map_err(|source| {
        ServeError::StateDir {
            path: config.state_dir.clone(),
            source,
        }
    })?;
    // Before any port is bound: a refused token stops startup at once, and the
    // file exists by the time clients can connect and read it.
    let admin_token = admin_token(&config)?;
    let backend = Backend::new(&config.state_dir, config.store.as_ref());
    // Opened with DHCP off too: a shared store that cannot be reached (or
    // migrated) stops startup here, its error naming the url and what to check.
    let lease_store = backend.lease_store()?;
    if let Some(pg) = &config.store {
        info!(url = %pg.shown, "leases in the shared PostgreSQL database");
    }
    let policy = crate::inventory::Policy::from(&config.install);
    let inventory = Arc::new(Inventory::new(backend.node_store()?, policy));
    declare_config_nodes(&config, &inventory)?;
    inventory.follow_other_servers()?;
    let tftp_root = config.tftp_root.clone();
    let mut tasks = JoinSet::new();
    // Failures the services survive, counted for /healthz.
    let mut metrics = crate::metrics::Metrics::default();
    if let Some(health) = inventory.store_health() {
        metrics.node_store_health = health;
    }
    let metrics = Arc::new(metrics);
    let mut dhcp_handle = None;
    match &config.dhcp_plan {
        None => warn!("DHCP is off (dhcp.mode = \"off\" or no interface): nodes need another DHCP server pointing at this one"),
        Some(plan) => {
            // Subscribed before the list is read: a change made in between is seen.
            let node_changes = inventory.subscribe();
            let nodes = inventory.list()?;
            let mut core = dhcp_core(
                &config,
                plan,
                lease_store,
                &backend,
                metrics.store_health.clone(),
                &nodes,
            )?
            .with_metrics(metrics.clone());
            if config.dhcp.ping_before_offer {
                core = core.with_probe(&plan.interface);
            }
            let core = Arc::new(Mutex::new(core));
            tasks.spawn({
                let (inventory, core, cancel) = (inventory.clone(), core.clone(), cancel.clone());
                async move {
                    follow_reservations(inventory, core, node_changes, cancel).await;
                    Ok(())
                }
            });
            dhcp_handle = Some(core.clone());
            let sock = dhcp::server::bind_on_interface(&plan.interface, dhcp::core::SERVER_PORT)?;
            info!(interface = %plan.interface, mode = ?plan.mode, range = ?plan.range, "DHCP listening on port 67");
            tasks.spawn(dhcp::server::run(sock, core.clone(), false, cancel.clone()));
            if plan.mode == DhcpMode::Proxy {
                if config.install.unknown_policy() == crate::config::UnknownPolicy::Install {
                    warn!("proxy mode with install.unknown = \"install\": every machine on this LAN that network-boots will be installed; only the disks of declared or approved nodes are repartitioned if they hold data");
                }
                let sock = dhcp::server::bind_on_interface(&plan.interface, dhcp::core::PROXY_PORT)?;
                info!("proxyDHCP listening on port 4011");
                tasks.spawn(dhcp::server::run(sock, core, true, cancel.clone()));
            }
        }
    }
    let listen = config.listen_addr();
    let http_addr = SocketAddr::from((listen, config.server.http_port));
    let listener = http::bind(http_addr).await?;
    info!(addr = %http_addr, base = %config.http_base_url(), "HTTP listening");
    let tftp_addr = SocketAddr::from((listen, config.server.tftp_port));
    // Bind TFTP now so a taken port fails startup instead of a later boot.
    std::net::UdpSocket::bind(tftp_addr).map_err(|source| http::HttpError::Bind {
        addr: tftp_addr,
        source,
    })?;
    let operators = Arc::new(backend.operators()?);
    scrape_sources(&metrics, dhcp_handle, &inventory, &config);
    let sessions = http::Sessions::new(config.server.session_lifetime);
    let ssh_keys = server_ssh_key(&config.state_dir).into_iter().collect();
    // Again, now that the secrets exist (an older ssh-keygen may leave its
    // directory 0755).
    secure_state_dir(&config.state_dir)?;
    let c = cancel.clone();
    let sweeper_inventory = inventory.clone();
    tasks.spawn(async move {
        crate::inventory::timeout_sweeper(
            sweeper_inventory,
            std::time::Duration::from_secs(10),
            crate::clock::now_unix,
            c,
        )
        .await;
        Ok(())
    });
    let polled: Vec<crate::power::poller::PolledNode> = config
        .nodes
        .iter()
        .filter_map(|d| Some((d.node.hostname.clone(), d.mac.clone(), d.node.bmc.clone()?)))
        .collect();
    let power_seen = Arc::new(crate::power::known::Known::new());
    let poll = crate::power::poller::run(
        polled,
        config.power.clone(),
        config.server.interface.clone(),
        inventory.clone(),
        metrics.clone(),
        power_seen.clone(),
        cancel.clone(),
    );
    tasks.spawn(async move {
        poll.await;
        Ok(())
    });
    let mut rsync_modules = None;
    let max_copies = crate::admission::max_copies(config.install.max_copies);
    info!(max_copies, "copy slots (install.max_copies)");
    if let Some(address) = config.server.address {
        let mask = config.provisioning_netmask();
        // Relayed subnets install over rsync too: without them a relayed node
        // gets its address and installer, then has its copy refused.
        let allow = crate::images::rsyncd::hosts_allow(address, mask, &config.dhcp.relays);
        let mut settings =
            crate::images::rsyncd::RsyncdSettings::new(&config.state_dir, address.into(), allow);
        settings.port = config.server.rsync_port;
        // Above the admitted copies: a node granted a slot never meets it.
        settings.max_connections = crate::admission::rsync_max_connections(max_copies);
        let mut supervisor = crate::images::rsyncd::Supervisor::new(settings);
        supervisor.metrics = metrics.clone();
        let users_inventory = inventory.clone();
        let mirror_password = mirror_export(&config, &mut supervisor.settings);
        supervisor.users = Arc::new(move || {
            let mut users = match users_inventory.list() {
                Ok(records) => crate::inventory::secrets::rsync_users(&records),
                Err(e) => {
                    // Nobody in: the secrets file is rewritten empty rather than stale.
                    warn!("cannot read the nodes for rsync's users: {e}");
                    vec![]
                }
            };
            users.extend(mirror_password.as_deref().and_then(mirror_user));
            users
        });
        rsync_modules = Some(supervisor.modules());
        let c = cancel.clone();
        tasks.spawn(async move { supervisor.run(c).await.map_err(std::io::Error::other) });
    } else {
        warn!("server.address is not set: no rsync daemon, so nodes cannot install");
    }
    if let Some(source) = config.mirror_from.clone() {
        let mut mirror =
            crate::images::mirror::Mirror::new(&config.state_dir, source.url, source.password_file);
        mirror.interval = source.interval;
        mirror.client.bwlimit = source.bwlimit;
        let in_use_inventory = inventory.clone();
        mirror.in_use = Arc::new(move |image| match in_use_inventory.list() {
            Ok(records) => Some(
                crate::inventory::serials_being_installed(&records, image)
                    .into_iter()
                    .map(|(serial, _)| serial)
                    .collect(),
            ),
            Err(e) => {
                warn!("mirror: cannot read the nodes being installed: {e}");
                None
            }
        });
        let c = cancel.clone();
        tasks.spawn(async move {
            mirror.run(c).await;
            Ok(())
        });
    }
    let tftp_metrics = metrics.clone();
    let multicast = Arc::new(crate::multicast::Multicast::new(
        config.install.multicast,
        config.server.interface.clone(),
        metrics.clone(),
    ));
    if multicast.enabled() {
        info!(interface = ?config.server.interface, "multicast first install on ([install] multicast)");
    }
    // With a shared database, power requests cross servers: this one runs
    // those for nodes whose BMC its config holds, and relays the others.
    let (relayed_tx, relayed_rx) = tokio::sync::mpsc::unbounded_channel();
    let power_relay = match &config.store {
        None => None,
        Some(pg) => {
            let relay = Arc::new(crate::power::relay::PowerRelay::open(
                pg,
                &config.http_base_url(),
            )?);
            let with_bmc: std::collections::HashSet<String> = config
                .nodes
                .iter()
                .filter(|n| n.node.bmc.is_some())
                .map(|n| n.mac.clone())
                .collect();
            relay
                .serve(move |mac| with_bmc.contains(mac), relayed_tx)
                .map_err(|e| {
                    ServeError::Task(format!("cannot start the power relay thread: {e}"))
                })?;
            Some(relay)
        }
    };
    let state = Arc::new(AppState {
        power_relay,
        config,
        inventory,
        admin_token,
        operators,
        sessions,
        ssh_keys,
        rsync_modules,
        metrics,
        power_seen,
        shutdown: cancel.clone(),
        admission: std::sync::Mutex::new(crate::admission::Admission::new(max_copies as usize)),
        slot_freed: tokio::sync::Notify::new(),
        rsync_checksums: rsync_checksums(),
        multicast,
    });

    if state.power_relay.is_some() {
        let state = state.clone();
        tasks.spawn(async move {
            http::run_relayed(state, relayed_rx).await;
            Ok(())
        });
    }
    let c = cancel.clone();
    tasks.spawn(async move {
        http::run(listener, state, c)
            .await
            .map_err(std::io::Error::other)
    });
    let c = cancel.clone();
    tasks.spawn(async move {
        crate::tftp::run(tftp_root, tftp_addr, tftp_metrics, c)
            .await
            .map_err(std::io::Error::other)
    });

    // Every socket is bound and every service spawned: tell systemd (Type=notify).
    match crate::sdnotify::notify("READY=1") {
        Ok(true) => info!("told the service manager we are ready"),
        Ok(false) => {}
        Err(e) => warn!("cannot notify the service manager (NOTIFY_SOCKET): {e}"),
    }
    let mut first_error = None;
    while let Some(done) = tasks.join_next().await {
        let failure = match done {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(e) => Some(e.to_string()),
        };
        if let Some(f) = failure {
            warn!("service stopped: {f}; shutting down the others");
            first_error.get_or_insert(f);
            cancel.cancel();
        } else if !cancel.is_cancelled() {
            first_error.get_or_insert("a service exited on its own".into());
            cancel.cancel();
        }
    }
    info!("all services stopped");
    match first_error {
        Some(e) => Err(ServeError::Task(e)),
        None => Ok(()),
    }
}

/// On a primary (`[images] mirror_password_file` without `mirror_from`): exports
/// the image store to mirrors from `mirror_hosts`, else from the subnets nodes
/// copy from. Returns the password file the mirror user's password is read from.
fn mirror_export(
    config: &ValidConfig,
    settings: &mut crate::images::rsyncd::RsyncdSettings,
) -> Option<std::path::PathBuf> {
    let m = &config.mirroring;
    if m.is_mirror() {
        return None;
    }
    let password_file = m.mirror_password_file.clone()?;
    let hosts = if m.mirror_hosts.is_empty() {
        settings.hosts_allow.clone()
    } else {
        m.mirror_hosts.clone()
    };
    info!(hosts = ?hosts, "mirrors may copy images ([images] mirror_password_file)");
    settings.mirror_hosts = Some(hosts);
    Some(password_file)
}

/// The mirror user with the password as the file holds it now (read at every
/// rewrite of the secrets, so a new password needs no restart).
fn mirror_user(password_file: &std::path::Path) -> Option<crate::images::rsyncd::RsyncUser> {
    match crate::config::read_mirror_password(password_file) {
        Ok(password) => Some(crate::images::rsyncd::RsyncUser {
            user: crate::config::MIRROR_USER.into(),
            password,
            image: crate::config::MIRROR_MODULE.into(),
        }),
        Err(e) => {
            warn!("[images] mirror_password_file: {e}; mirrors cannot log in until it is fixed");
            None
        }
    }
}

/// The local rsync's transfer checksums (`rsync --version`), which the
/// daemon serving the images offers; empty when rsync cannot say.
fn rsync_checksums() -> Vec<String> {
    match std::process::Command::new("rsync")
        .arg("--version")
        .output()
    {
        Ok(o) => crate::rsync_caps::checksum_list(&String::from_utf8_lossy(&o.stdout)),
        Err(e) => {
            warn!("rsync --version: {e}; installers will use rsync's default checksum");
            vec![]
        }
    }
}
