//! The `rollout serve` config the lab writes (format owned by the server; see
//! the shared contract). Only the keys the lab needs are modelled.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{IoContext, Result};

/// The bridge inside the lab namespace that DHCP binds to.
pub const BRIDGE: &str = "rbr0";
pub const SERVER_ADDR: Ipv4Addr = Ipv4Addr::new(10, 44, 0, 1);
pub const PREFIX_LEN: u8 = 24;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutConfig {
    pub state_dir: PathBuf,
    pub server: ServerSection,
    pub dhcp: DhcpSection,
    pub install: InstallSection,
    #[serde(rename = "node", default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeEntry>,
    #[serde(rename = "image", default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<ImageEntry>,
}

/// `[[image]]`: an image's own node-local paths and its mounts during `image enter`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageEntry {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excludes: Vec<String>,
    #[serde(rename = "mount", default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<MountEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountEntry {
    pub source: String,
    pub target: String,
    #[serde(rename = "type")]
    pub fstype: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerSection {
    pub interface: String,
    pub address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tftp_root: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DhcpSection {
    pub mode: String,
    /// The dynamic pool (full mode; a proxy hands out no addresses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<[String; 2]>,
    pub netmask: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub router: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
    pub lease_time: u32,
    /// `[[dhcp.relay]]`: subnets whose requests arrive through a DHCP relay.
    #[serde(rename = "relay", default, skip_serializing_if = "Vec::is_empty")]
    pub relays: Vec<RelayEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayEntry {
    pub range: [String; 2],
    pub netmask: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallSection {
    pub image: String,
    pub kernel_cmdline: String,
    /// Seconds between an installed node's own rollout-sync runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_interval: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    pub mac: String,
    pub hostname: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
}

impl RolloutConfig {
    /// Full-mode DHCP on [`BRIDGE`] at [`SERVER_ADDR`], leases 10.44.0.100–199,
    /// HTTP on port 80, iPXE binaries from `/usr/lib/ipxe`.
    pub fn lab(state_dir: impl Into<PathBuf>) -> RolloutConfig {
        let addr = SERVER_ADDR.to_string();
        RolloutConfig {
            state_dir: state_dir.into(),
            server: ServerSection {
                interface: BRIDGE.into(),
                address: addr.clone(),
                http_port: Some(80),
                tftp_root: Some("/usr/lib/ipxe".into()),
            },
            dhcp: DhcpSection {
                mode: "full".into(),
                range: Some(["10.44.0.100".into(), "10.44.0.199".into()]),
                netmask: "255.255.255.0".into(),
                router: Some(addr.clone()),
                dns: vec![addr],
                lease_time: 3600,
                relays: Vec::new(),
            },
            install: InstallSection {
                image: "default".into(),
                kernel_cmdline: "console=ttyS0".into(),
                sync_interval: None,
            },
            nodes: Vec::new(),
            images: Vec::new(),
        }
    }

    /// Proxy mode: another DHCP server hands out addresses, rollout adds only
    /// the PXE boot information (and answers port 4011).
    pub fn proxy(mut self) -> Self {
        self.dhcp.mode = "proxy".into();
        self.dhcp.range = None;
        self.dhcp.router = None;
        self.dhcp.dns.clear();
        self
    }

    /// Adds a `[[dhcp.relay]]` subnet with the pool `first`–`last` (a /24).
    pub fn with_relay(mut self, first: Ipv4Addr, last: Ipv4Addr) -> Self {
        self.dhcp.relays.push(RelayEntry {
            range: [first.to_string(), last.to_string()],
            netmask: "255.255.255.0".into(),
        });
        self
    }

    /// Adds a `[[node]]` entry.
    pub fn with_node(mut self, mac: &str, hostname: &str, ip: Option<Ipv4Addr>) -> Self {
        self.nodes.push(NodeEntry {
            mac: mac.into(),
            hostname: hostname.into(),
            ip: ip.map(|i| i.to_string()),
        });
        self
    }

    pub fn http_port(&self) -> u16 {
        self.server.http_port.unwrap_or(80)
    }

    pub fn to_toml(&self) -> Result<String> {
        Ok(toml::to_string(self)?)
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.to_toml()?).ctx("writing the rollout config", path)
    }
}

/// The reserved address of lab node number `index` (1-based): 10.44.0.10+index.
pub fn node_ip(index: usize) -> Option<Ipv4Addr> {
    let last = 10 + index;
    (last < 100).then(|| Ipv4Addr::new(10, 44, 0, last as u8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_config_has_the_contract_shape() {
        let cfg = RolloutConfig::lab("/tmp/lab/state").with_node(
            "52:54:00:00:00:01",
            "node1",
            node_ip(1),
        );
        let text = cfg.to_toml().unwrap();
        let v: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(v["state_dir"].as_str(), Some("/tmp/lab/state"));
        assert_eq!(v["server"]["interface"].as_str(), Some("rbr0"));
        assert_eq!(v["server"]["address"].as_str(), Some("10.44.0.1"));
        assert_eq!(v["dhcp"]["mode"].as_str(), Some("full"));
        assert_eq!(v["dhcp"]["range"][0].as_str(), Some("10.44.0.100"));
        assert_eq!(v["dhcp"]["range"][1].as_str(), Some("10.44.0.199"));
        let node = &v["node"][0];
        assert_eq!(node["mac"].as_str(), Some("52:54:00:00:00:01"));
        assert_eq!(node["hostname"].as_str(), Some("node1"));
        assert_eq!(node["ip"].as_str(), Some("10.44.0.11"));
        let back: RolloutConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, cfg);
    }

    #[test]
    fn reservations_stay_below_the_dynamic_range() {
        assert_eq!(node_ip(89), Some(Ipv4Addr::new(10, 44, 0, 99)));
        assert_eq!(node_ip(90), None);
    }
}
