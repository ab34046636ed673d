//! `rollout serve`: DHCP, TFTP and HTTP together, stopped by one cancellation token.

use crate::config::{Config, DhcpMode};
use crate::dhcp::{self, leases::{LeaseTable, Range}, pxe::BootTargets, CoreConfig, DhcpCore, Subnet};
use crate::http::{self, AppState};
use crate::inventory::Inventory;
use crate::store::SqliteLeaseStore;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Netif(#[from] crate::netif::NetifError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Inventory(#[from] crate::inventory::InventoryError),
    #[error(transparent)]
    Dhcp(#[from] dhcp::server::DhcpServerError),
    #[error(transparent)]
    Tftp(#[from] crate::tftp::TftpError),
    #[error(transparent)]
    Http(#[from] http::HttpError),
    #[error("cannot create state directory {path}: {source}")]
    StateDir { path: std::path::PathBuf, source: std::io::Error },
    #[error("a service stopped unexpectedly: {0}")]
    Task(String),
}

fn dhcp_core(config: &Config, plan: &crate::config::DhcpPlan, db: &std::path::Path) -> Result<DhcpCore, ServeError> {
    let d = &config.dhcp;
    let mut reservations = HashMap::new();
    let mut hostnames = HashMap::new();
    for n in &config.nodes {
        let mac = crate::config::normalize_mac(&n.mac).expect("validated");
        if let Some(ip) = n.ip {
            reservations.insert(mac.clone(), ip);
        }
        hostnames.insert(mac, n.hostname.clone());
    }
    let leases = LeaseTable::load(Box::new(SqliteLeaseStore::open(db)?), reservations)?;
    let relays = d
        .relays
        .iter()
        .map(|r| Subnet {
            range: Some(Range { first: r.range[0], last: r.range[1] }),
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
    Ok(DhcpCore::new(cfg, leases))
}

/// Binds everything first (so a taken port or a missing interface is an error at
/// startup, with a non-zero exit), then serves until `cancel` fires.
pub async fn serve(config: Config, cancel: CancellationToken) -> Result<(), ServeError> {
    std::fs::create_dir_all(config.state_dir.join("boot")).map_err(|source| ServeError::StateDir {
        path: config.state_dir.clone(),
        source,
    })?;
    let db = config.state_dir.join("rollout.db");
    let tftp_root = crate::tftp::check_root(&config.server.tftp_root)?;

    let dhcp_plan = match &config.server.interface {
        Some(iface) if config.dhcp.mode != DhcpMode::Off => {
            let addr = crate::netif::ipv4_of(iface)?;
            config.dhcp_plan(addr)?
        }
        _ => None,
    };
    let mut tasks = JoinSet::new();
    match &dhcp_plan {
        None => warn!("DHCP is off (dhcp.mode = \"off\" or no interface): nodes need another DHCP server pointing at this one"),
        Some(plan) => {
            let core = Arc::new(Mutex::new(dhcp_core(&config, plan, &db)?));
            let sock = dhcp::server::bind_on_interface(&plan.interface, dhcp::core::SERVER_PORT)?;
            info!(interface = %plan.interface, mode = ?plan.mode, range = ?plan.range, "DHCP listening on port 67");
            tasks.spawn(dhcp::server::run(sock, core.clone(), false, cancel.clone()));
            if plan.mode == DhcpMode::Proxy {
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
    std::net::UdpSocket::bind(tftp_addr)
        .map_err(|source| http::HttpError::Bind { addr: tftp_addr, source })?;
    let inventory = Inventory::open(&db)?;
    let state = Arc::new(AppState { config, inventory });

    let c = cancel.clone();
    tasks.spawn(async move { http::run(listener, state, c).await.map_err(std::io::Error::other) });
    let c = cancel.clone();
    tasks.spawn(async move { crate::tftp::run(tftp_root, tftp_addr, c).await.map_err(std::io::Error::other) });

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
