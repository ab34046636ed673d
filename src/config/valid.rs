//! The config after every check `serve` makes, and what the checks derived: the
//! DHCP plan, the TFTP root as found on disk, the nodes' normalized MACs. Code that
//! runs the server takes a [`ValidConfig`], so it never re-checks or `expect`s.
//!
//! Building one is pure: what the checks need from the machine comes in as
//! [`MachineFacts`] (the `preflight` module looks them up, and is where
//! `TryFrom<Config>` lives), so this module stays a leaf and is tested without an
//! interface or a TFTP directory.

use super::{Config, ConfigError, DhcpPlan, NodeConfig};
use std::net::Ipv4Addr;
use std::path::PathBuf;

/// What this machine says about the config: looked up once, before serving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineFacts {
    /// Address and netmask of `server.interface`; `None` when DHCP is off or the
    /// interface has no IPv4 address.
    pub interface_addr: Option<(Ipv4Addr, Ipv4Addr)>,
    /// `server.tftp_root` resolved, with the iPXE loaders in it.
    pub tftp_root: PathBuf,
}

/// A `[[node]]` with its MAC in the one normalized form.
#[derive(Debug, Clone)]
pub struct DeclaredNode {
    pub mac: String,
    pub node: NodeConfig,
}

#[derive(Debug, Clone)]
pub struct ValidConfig {
    config: Config,
    /// `None` when DHCP is off.
    pub dhcp_plan: Option<DhcpPlan>,
    pub tftp_root: PathBuf,
    pub nodes: Vec<DeclaredNode>,
    /// `[store]` parsed: the shared lease database, or `None` for SQLite.
    pub store: Option<super::PgTarget>,
    /// `[images]` of a mirror: the primary it copies from, and how.
    pub mirror_from: Option<super::MirrorSource>,
}

impl ValidConfig {
    /// Every check of the file (again, so a `Config` built in code is held to the
    /// same rules as a parsed one) and every check against `facts`.
    pub fn new(config: Config, facts: MachineFacts) -> Result<ValidConfig, ConfigError> {
        let macs = config.validate()?;
        let dhcp_plan = config.dhcp_plan(facts.interface_addr)?;
        let nodes = macs
            .into_iter()
            .zip(&config.nodes)
            .map(|(mac, node)| DeclaredNode {
                mac,
                node: node.clone(),
            })
            .collect();
        let store = config
            .store
            .as_ref()
            .map(super::PgTarget::try_from)
            .transpose()?;
        let mirror_from = config.mirroring.mirror_source()?;
        Ok(ValidConfig {
            mirror_from,
            config,
            dhcp_plan,
            tftp_root: facts.tftp_root,
            nodes,
            store,
        })
    }

    /// The file as written (its defaults filled in).
    pub fn raw(&self) -> &Config {
        &self.config
    }

    /// The netmask of the provisioning subnet: the DHCP plan's, else a /24 (rsync's
    /// `hosts allow` when another server does DHCP).
    pub fn provisioning_netmask(&self) -> Ipv4Addr {
        self.dhcp_plan
            .as_ref()
            .map(|p| p.netmask)
            .unwrap_or(Ipv4Addr::new(255, 255, 255, 0))
    }
}

/// A `ValidConfig` reads as the file it was made from; what validation derived is
/// in its own fields.
impl std::ops::Deref for ValidConfig {
    type Target = Config;
    fn deref(&self) -> &Config {
        &self.config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> String {
        let node = "[[node]]\nmac = \"52-54-00-AA-00-01\"\nhostname = \"n1\"\n";
        format!("{}{node}", crate::config::tests::BASE)
    }

    fn facts(interface_addr: Option<(&str, &str)>) -> MachineFacts {
        MachineFacts {
            interface_addr: interface_addr.map(|(a, m)| (a.parse().unwrap(), m.parse().unwrap())),
            tftp_root: "/usr/lib/ipxe".into(),
        }
    }

    #[test]
    fn carries_the_dhcp_plan_and_normalized_macs() {
        let c = Config::parse(&full()).unwrap();
        let v = ValidConfig::new(c, facts(Some(("10.44.0.1", "255.255.255.0")))).unwrap();
        let plan = v.dhcp_plan.as_ref().unwrap();
        assert_eq!(plan.interface, "rbr0");
        assert_eq!(plan.netmask, Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(v.nodes[0].mac, "52:54:00:aa:00:01");
        assert_eq!(v.nodes[0].node.hostname, "n1");
        assert_eq!(v.provisioning_netmask(), Ipv4Addr::new(255, 255, 255, 0));
    }

    #[test]
    fn the_interface_checks_are_part_of_validation() {
        let c = Config::parse(&full()).unwrap();
        let e = ValidConfig::new(c.clone(), facts(Some(("10.45.0.1", "255.255.255.0"))))
            .unwrap_err()
            .to_string();
        assert!(e.contains("outside rbr0's subnet"), "{e}");
        let e = ValidConfig::new(c, facts(None)).unwrap_err().to_string();
        assert!(e.contains("has no IPv4 address"), "{e}");
    }

    #[test]
    fn a_config_built_in_code_is_checked_too() {
        let mut c = Config::parse(&full()).unwrap();
        c.nodes[0].mac = "not-a-mac".into();
        let e = ValidConfig::new(c, facts(Some(("10.44.0.1", "255.255.255.0"))))
            .unwrap_err()
            .to_string();
        assert!(e.contains("node[0].mac"), "{e}");
    }

    #[test]
    fn dhcp_off_needs_no_interface() {
        let c = Config::parse("state_dir = \"/x\"\n").unwrap();
        let v = ValidConfig::new(c, facts(None)).unwrap();
        assert!(v.dhcp_plan.is_none());
        assert_eq!(v.provisioning_netmask(), Ipv4Addr::new(255, 255, 255, 0));
    }
}
