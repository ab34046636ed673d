//! The checks of the config against this machine, shared by `rollout serve` and
//! `rollout check-config` so the two cannot disagree: the TFTP root and its iPXE
//! loaders, the provisioning interface's address (and so the DHCP plan).

use crate::config::{Config, DhcpMode, MachineFacts, ValidConfig};

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Netif(#[from] crate::netif::NetifError),
    #[error(transparent)]
    Tftp(#[from] crate::tftp::TftpError),
}

/// Looks up what validation needs from the machine (in the order `serve` always
/// did: the TFTP root, then the interface), then validates.
impl TryFrom<Config> for ValidConfig {
    type Error = PreflightError;

    fn try_from(config: Config) -> Result<ValidConfig, PreflightError> {
        crate::config::check_password_files(&config.nodes)?;
        if let Some(path) = config.store.as_ref().and_then(|s| s.password_file.as_ref()) {
            crate::config::check_secret_file(
                "store.password_file",
                path,
                "the lease database user's password",
            )?;
        }
        crate::config::check_mirror_password_file(&config.mirroring)?;
        let tftp_root = crate::tftp::check_root(&config.server.tftp_root)?;
        let interface_addr = match &config.server.interface {
            Some(iface) if config.dhcp.mode != DhcpMode::Off => crate::netif::ipv4_of(iface)?,
            _ => None,
        };
        let facts = MachineFacts {
            interface_addr,
            tftp_root,
        };
        Ok(ValidConfig::new(config, facts)?)
    }
}
