//! The `rollout serve` config the lab writes: the server's own schema
//! (`rollout::config::Config`), filled in for the lab's network.

use std::net::Ipv4Addr;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};

pub use rollout::config::{
    BmcConfig, Config, DhcpConfig, DhcpMode, ImageConfig, ImageMount, InstallConfig, NodeConfig,
    RelaySubnet, ServerConfig, StoreConfig, UnknownPolicy,
};

use crate::error::{IoContext, Result};

/// The bridge inside the lab namespace that DHCP binds to.
pub const BRIDGE: &str = "rbr0";
pub const SERVER_ADDR: Ipv4Addr = Ipv4Addr::new(10, 44, 0, 1);
pub const PREFIX_LEN: u8 = 24;

/// The lab's builder around the server's own schema, [`Config`]: the lab sets
/// fields on the real type (through `Deref`), so a renamed or retyped key fails
/// to compile here instead of failing when the server reads the file.
#[derive(Debug, Clone)]
pub struct RolloutConfig(Config);

impl Deref for RolloutConfig {
    type Target = Config;
    fn deref(&self) -> &Config {
        &self.0
    }
}

impl DerefMut for RolloutConfig {
    fn deref_mut(&mut self) -> &mut Config {
        &mut self.0
    }
}

/// The lab's `[install] kernel_cmdline`, for its installers and installed OSes.
/// Emulated disks under TCG on a loaded host answer far slower than real ones:
/// an NVMe command gets 10 minutes, not Linux's 30 s, before the driver aborts
/// it and resets the controller (which under load can end with the disk gone).
/// The installer passes module parameters on as modprobe does.
pub const LAB_KERNEL_CMDLINE: &str = "console=ttyS0 nvme_core.io_timeout=600";
const NETMASK: Ipv4Addr = Ipv4Addr::new(255, 255, 255, 0);

impl RolloutConfig {
    /// Full-mode DHCP on [`BRIDGE`] at [`SERVER_ADDR`], leases 10.44.0.100–199,
    /// HTTP on port 80, iPXE binaries from `/usr/lib/ipxe`.
    pub fn lab(state_dir: impl Into<PathBuf>) -> RolloutConfig {
        RolloutConfig(Config {
            state_dir: state_dir.into(),
            server: ServerConfig {
                interface: Some(BRIDGE.into()),
                address: Some(SERVER_ADDR),
                http_port: 80,
                tftp_root: "/usr/lib/ipxe".into(),
                ..ServerConfig::default()
            },
            dhcp: DhcpConfig {
                mode: DhcpMode::Full,
                range: Some([Ipv4Addr::new(10, 44, 0, 100), Ipv4Addr::new(10, 44, 0, 199)]),
                netmask: Some(NETMASK),
                router: Some(SERVER_ADDR),
                dns: vec![SERVER_ADDR],
                lease_time: 3600,
                ..DhcpConfig::default()
            },
            install: InstallConfig {
                image: "default".into(),
                kernel_cmdline: LAB_KERNEL_CMDLINE.into(),
                ..InstallConfig::default()
            },
            nodes: Vec::new(),
            images: Vec::new(),
            power: Default::default(),
            layouts: Vec::new(),
            store: None,
            mirroring: Default::default(),
        })
    }

    /// Proxy mode: another DHCP server hands out addresses, rollout adds only
    /// the PXE boot information (and answers port 4011).
    pub fn proxy(mut self) -> Self {
        self.dhcp.mode = DhcpMode::Proxy;
        self.dhcp.range = None;
        self.dhcp.router = None;
        self.dhcp.dns.clear();
        self
    }

    /// Adds a `[[dhcp.relay]]` subnet with the pool `first`–`last` (a /24).
    pub fn with_relay(mut self, first: Ipv4Addr, last: Ipv4Addr) -> Self {
        self.dhcp.relays.push(RelaySubnet {
            range: [first, last],
            netmask: NETMASK,
            router: None,
        });
        self
    }

    /// This config moved to the subnet of `gateway` (a /24) on `interface`, as
    /// the server of a rack behind a router: it answers at `gateway`, hands
    /// out `.100`–`.199` of that subnet itself (full DHCP, no relays) and
    /// keeps its state in `state_dir`.
    pub fn on_subnet(
        mut self,
        state_dir: impl Into<PathBuf>,
        interface: &str,
        gateway: Ipv4Addr,
    ) -> Self {
        let [a, b, c, _] = gateway.octets();
        self.state_dir = state_dir.into();
        self.server.interface = Some(interface.into());
        self.server.address = Some(gateway);
        self.dhcp.mode = DhcpMode::Full;
        self.dhcp.range = Some([Ipv4Addr::new(a, b, c, 100), Ipv4Addr::new(a, b, c, 199)]);
        self.dhcp.netmask = Some(NETMASK);
        self.dhcp.router = Some(gateway);
        self.dhcp.dns = vec![gateway];
        self.dhcp.relays.clear();
        self
    }

    /// Adds a `[[node]]` entry.
    pub fn with_node(mut self, mac: &str, hostname: &str, ip: Option<Ipv4Addr>) -> Self {
        self.nodes.push(NodeConfig {
            mac: mac.into(),
            hostname: hostname.into(),
            ip,
            image: None,
            disk: None,
            root_mib: None,
            swap_mib: None,
            layout: None,
            bmc: None,
            vlan: None,
            bond: None,
        });
        self
    }

    /// Puts the `[[node]]` with `mac` (added before) on 802.1Q VLAN `vlan`: its
    /// installer and installed OS then run DHCP on a VLAN device.
    pub fn with_vlan(mut self, mac: &str, vlan: u16) -> Self {
        if let Some(n) = self.nodes.iter_mut().find(|n| n.mac == mac) {
            n.vlan = Some(vlan);
        }
        self
    }

    pub fn http_port(&self) -> u16 {
        self.server.http_port
    }

    pub fn to_toml(&self) -> Result<String> {
        Ok(toml::to_string(&self.0)?)
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
    }

    /// Every variant the lab and its tests write, read back by the server's own
    /// loader (parse and validation): a schema change that the lab's output no
    /// longer satisfies fails here, not in a QEMU run.
    #[test]
    fn the_server_loads_every_config_the_lab_writes() {
        let lab = || {
            RolloutConfig::lab("/tmp/lab/state")
                .with_node("52:54:00:00:00:01", "node1", node_ip(1))
                .with_node("52:54:00:00:00:02", "node2", None)
        };
        let mut pull = lab();
        pull.install.sync_interval = 180;
        pull.images.push(ImageConfig {
            name: "default".into(),
            excludes: vec!["/var/lib/site/".into()],
            mounts: vec![ImageMount {
                source: "tmpfs".into(),
                target: "/var/cache/apt/archives".into(),
                fstype: "tmpfs".into(),
                options: String::new(),
            }],
        });
        let mut off = lab();
        off.dhcp.mode = DhcpMode::Off;
        // The undeclared-machine test installs strangers: the policy is written.
        let mut strangers = lab();
        strangers.install.unknown = Some(UnknownPolicy::Install);
        let relay = lab().with_relay(Ipv4Addr::new(10, 45, 0, 100), Ipv4Addr::new(10, 45, 0, 199));
        for (what, cfg) in [
            ("full", lab()),
            ("proxy", lab().proxy()),
            ("relay", relay),
            ("off", off),
            ("pull", pull),
            ("strangers", strangers),
            ("vlan", lab().with_vlan("52:54:00:00:00:02", 100)),
        ] {
            let text = cfg.to_toml().unwrap();
            let back = Config::parse(&text)
                .unwrap_or_else(|e| panic!("{what}: the server rejects\n{text}\n{e}"));
            assert_eq!(back.dhcp.mode, cfg.dhcp.mode, "{what}");
            assert_eq!(back.nodes.len(), 2, "{what}");
            assert_eq!(back.nodes[0].ip, node_ip(1), "{what}");
            assert_eq!(back.dhcp.relays.len(), cfg.dhcp.relays.len(), "{what}");
            assert_eq!(back.images, cfg.images, "{what}");
            assert_eq!(
                back.install.sync_interval, cfg.install.sync_interval,
                "{what}"
            );
            assert_eq!(back.server.http_port, 80, "{what}");
            assert_eq!(back.install.unknown, cfg.install.unknown, "{what}");
            assert_eq!(
                back.nodes[1].link().vlan,
                (what == "vlan").then_some(100),
                "{what}"
            );
        }
    }

    #[test]
    fn a_rack_behind_a_router_serves_its_own_subnet() {
        let gateway = Ipv4Addr::new(10, 45, 0, 1);
        let cfg = RolloutConfig::lab("/tmp/lab/state")
            .with_relay(Ipv4Addr::new(10, 46, 0, 100), Ipv4Addr::new(10, 46, 0, 199))
            .on_subnet("/tmp/lab/rack2", "rbr1", gateway)
            .with_node(
                "52:54:00:00:00:02",
                "node2",
                Some(Ipv4Addr::new(10, 45, 0, 12)),
            );
        let text = cfg.to_toml().unwrap();
        let back =
            Config::parse(&text).unwrap_or_else(|e| panic!("the server rejects\n{text}\n{e}"));
        assert_eq!(back.state_dir, Path::new("/tmp/lab/rack2"));
        assert_eq!(back.server.interface.as_deref(), Some("rbr1"));
        assert_eq!(back.server.address, Some(gateway));
        assert_eq!(
            back.dhcp.range,
            Some([Ipv4Addr::new(10, 45, 0, 100), Ipv4Addr::new(10, 45, 0, 199)])
        );
        assert_eq!(
            (back.dhcp.router, &back.dhcp.dns[..]),
            (Some(gateway), &[gateway][..])
        );
        assert!(back.dhcp.relays.is_empty());
    }

    #[test]
    fn reservations_stay_below_the_dynamic_range() {
        assert_eq!(node_ip(89), Some(Ipv4Addr::new(10, 44, 0, 99)));
        assert_eq!(node_ip(90), None);
    }
}
