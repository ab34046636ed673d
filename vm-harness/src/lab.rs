//! The lab: a namespace with a bridge, a boot server and QEMU nodes on taps.

use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::config::{node_ip, BmcConfig, RolloutConfig, BRIDGE, PREFIX_LEN, SERVER_ADDR};
use crate::devices::Hardware;
use crate::error::{Error, IoContext, Result};
use crate::hosts::{Host, SUBNET_BRIDGE};
use crate::netns::{self, Netns};
use crate::proc::{have_program, is_root, kill_stale_pid_file};
use crate::qemu::{mac_for, Accel, Firmware, Node, NodeSpec, QEMU};
use crate::server::Server;

/// Which firmware the nodes get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirmwareChoice {
    Bios,
    Uefi,
    /// Odd-numbered nodes BIOS, even-numbered UEFI.
    Mixed,
}

impl FirmwareChoice {
    /// Firmware of node number `index` (1-based).
    pub fn for_node(self, index: usize) -> Firmware {
        match self {
            FirmwareChoice::Bios => Firmware::Bios,
            FirmwareChoice::Uefi => Firmware::Uefi,
            FirmwareChoice::Mixed if index % 2 == 1 => Firmware::Bios,
            FirmwareChoice::Mixed => Firmware::Uefi,
        }
    }
}

impl std::fmt::Display for FirmwareChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FirmwareChoice::Bios => "bios",
            FirmwareChoice::Uefi => "uefi",
            FirmwareChoice::Mixed => "mixed",
        })
    }
}

impl FromStr for FirmwareChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "bios" => Ok(FirmwareChoice::Bios),
            "uefi" => Ok(FirmwareChoice::Uefi),
            "mixed" => Ok(FirmwareChoice::Mixed),
            _ => Err(format!("unknown firmware {s:?}: use bios, uefi or mixed")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct LabOptions {
    /// Lab name; the namespace is `rollout-lab-<name>`.
    pub name: String,
    /// Nodes created with the lab (more can be added with [`Lab::add_node`]).
    pub nodes: usize,
    pub firmware: FirmwareChoice,
    pub disk_bytes: u64,
    pub memory_mib: u32,
    /// Keep disks, logs and config here after the lab is gone; `None` uses a
    /// scratch directory that is removed on drop.
    pub keep_dir: Option<PathBuf>,
    pub accel: Accel,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            name: "default".into(),
            nodes: 0,
            firmware: FirmwareChoice::Bios,
            disk_bytes: 8 << 30,
            memory_mib: 1024,
            keep_dir: None,
            accel: Accel::Tcg,
        }
    }
}

/// A running lab. Dropping it kills every node and the server and deletes the
/// namespace (and with it the bridge and taps).
#[derive(Debug)]
pub struct Lab {
    opts: LabOptions,
    nodes: Vec<Node>,
    server: Option<Server>,
    /// Other machines on the lab network (site DHCP server, routers).
    hosts: Vec<Host>,
    dir: PathBuf,
    run_dir: PathBuf,
    // Declared last so it is dropped after everything running inside it.
    netns: Netns,
}

/// Where pid files and QMP sockets live: short paths, wiped by reboots.
pub fn run_dir(name: &str) -> PathBuf {
    Path::new("/run/vm-harness").join(name)
}

/// Removes what a crashed run of lab `name` left behind: processes named in its
/// pid files, processes in its namespace, and the namespace itself.
pub fn cleanup(name: &str) -> Result<()> {
    let ns = netns::ns_name(name)?;
    let rd = run_dir(name);
    if let Ok(entries) = fs::read_dir(&rd) {
        for e in entries.filter_map(|e| e.ok()) {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "pid") {
                // Server pid files are named server.pid, node ones <node>.pid and
                // a node's BMC <node>.bmc.pid.
                let stem = p.file_stem().unwrap_or_default().to_string_lossy();
                let expect: &[&str] = if stem == "server" {
                    &["serve", "dnsmasq"]
                } else if stem.ends_with(".bmc") {
                    &["ipmi_sim"]
                } else {
                    &[QEMU]
                };
                kill_stale_pid_file(&p, expect);
            }
        }
    }
    // Hosts of the lab (`<ns>-<host>`) first: their veths end in the lab bridge.
    for host_ns in netns::list_lab_namespaces() {
        if host_ns.starts_with(&format!("{ns}-")) {
            netns::remove_namespace(&host_ns)?;
        }
    }
    netns::remove_namespace(&ns)?;
    let _ = fs::remove_dir_all(&rd);
    Ok(())
}

impl Lab {
    /// A lab with default options and no nodes yet.
    pub fn create(name: &str) -> Result<Lab> {
        Lab::create_with(LabOptions {
            name: name.into(),
            ..LabOptions::default()
        })
    }

    pub fn create_with(opts: LabOptions) -> Result<Lab> {
        if !is_root() {
            return Err(Error::NotRoot);
        }
        for (tool, pkg) in [
            ("ip", "iproute2"),
            (QEMU, "qemu-system-x86"),
            ("qemu-img", "qemu-utils"),
        ] {
            if !have_program(tool) {
                return Err(Error::MissingTool {
                    tool: tool.into(),
                    hint: format!("install the Debian package {pkg} (scripts/setup.sh does)"),
                });
            }
        }
        let ns_name = netns::ns_name(&opts.name)?;
        cleanup(&opts.name)?;
        let rd = run_dir(&opts.name);
        fs::create_dir_all(&rd).ctx("creating the run directory", &rd)?;
        let dir = match &opts.keep_dir {
            Some(d) => d.clone(),
            None => {
                let d = std::env::temp_dir().join(format!("vm-harness-{}", opts.name));
                let _ = fs::remove_dir_all(&d);
                d
            }
        };
        fs::create_dir_all(dir.join("state")).ctx("creating the lab directory", &dir)?;
        let netns = Netns::create(&ns_name)?;
        netns.add_bridge(BRIDGE, &format!("{SERVER_ADDR}/{PREFIX_LEN}"))?;
        let n = opts.nodes;
        let mut lab = Lab {
            opts,
            nodes: Vec::new(),
            server: None,
            hosts: Vec::new(),
            dir,
            run_dir: rd,
            netns,
        };
        for i in 1..=n {
            let fw = lab.opts.firmware.for_node(i);
            lab.add_node(fw)?;
        }
        Ok(lab)
    }

    pub fn name(&self) -> &str {
        &self.opts.name
    }
    pub fn options(&self) -> &LabOptions {
        &self.opts
    }
    pub fn netns(&self) -> &Netns {
        &self.netns
    }
    /// Disks, logs and config live here.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// The server's `state_dir` (boot files go in `boot/`).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// Adds a blank node (not started) on a new tap: `node<N>`, MAC
    /// `52:54:00:00:00:<N>`.
    pub fn add_node(&mut self, firmware: Firmware) -> Result<&mut Node> {
        self.add_node_spec(firmware, None)
    }

    /// Adds a blank node on the subnet behind router `router` (see
    /// [`Lab::add_router`]) instead of the lab bridge.
    pub fn add_node_behind(&mut self, router: &str, firmware: Firmware) -> Result<&mut Node> {
        self.add_node_spec(firmware, Some(router))
    }

    fn add_node_spec(&mut self, firmware: Firmware, router: Option<&str>) -> Result<&mut Node> {
        let index = self.nodes.len() + 1;
        let tap = format!("tap{index}");
        let ns = match router {
            None => {
                self.netns.add_tap(&tap, BRIDGE)?;
                self.netns.name().to_string()
            }
            Some(r) => {
                let host = self.host(r).ok_or_else(|| Error::Netns {
                    ns: self.netns.name().into(),
                    message: format!("no router {r:?} in the lab (add it with add_router)"),
                })?;
                host.netns().add_tap(&tap, SUBNET_BRIDGE)?;
                host.netns().name().to_string()
            }
        };
        let spec = NodeSpec {
            name: format!("node{index}"),
            mac: mac_for(index),
            firmware,
            memory_mib: self.opts.memory_mib,
            disk_bytes: self.opts.disk_bytes,
            accel: self.opts.accel,
            boot: crate::qemu::NetBoot::IpxeRom,
            hardware: Hardware::default(),
        };
        let dir = self.dir.join(&spec.name);
        let node = Node::prepare(spec, &ns, &tap, dir, &self.run_dir)?;
        self.nodes.push(node);
        Ok(self.nodes.last_mut().expect("just pushed"))
    }

    /// Adds another machine on the lab bridge at `address` (in namespace
    /// `rollout-lab-<lab>-<name>`), e.g. a site DHCP server.
    pub fn add_host(&mut self, name: &str, address: std::net::Ipv4Addr) -> Result<&mut Host> {
        let ns = format!("{}-{name}", self.netns.name());
        let host = Host::create(&self.netns, &ns, name, address)?;
        self.hosts.push(host);
        Ok(self.hosts.last_mut().expect("just pushed"))
    }

    /// Adds a router at `address` on the lab bridge with a subnet of its own
    /// (`gateway/24` on its bridge); nodes go there with [`Lab::add_node_behind`].
    pub fn add_router(
        &mut self,
        name: &str,
        address: std::net::Ipv4Addr,
        gateway: std::net::Ipv4Addr,
    ) -> Result<&mut Host> {
        let ns = format!("{}-{name}", self.netns.name());
        let mut host = Host::create(&self.netns, &ns, name, address)?;
        host.route_subnet(&self.netns, gateway)?;
        self.hosts.push(host);
        Ok(self.hosts.last_mut().expect("just pushed"))
    }

    /// Adds a router at `address` on the lab bridge that serves VLAN `vid`
    /// of the bridge as the subnet of `gateway` (a /24): nodes whose plan puts
    /// them on that VLAN reach the server through it. Returns the router and
    /// the name of its VLAN interface (for a DHCP relay).
    pub fn add_vlan_router(
        &mut self,
        name: &str,
        address: std::net::Ipv4Addr,
        vid: u16,
        gateway: std::net::Ipv4Addr,
    ) -> Result<(&mut Host, String)> {
        let ns = format!("{}-{name}", self.netns.name());
        let mut host = Host::create(&self.netns, &ns, name, address)?;
        let tap = host.route_vlan(&self.netns, vid, gateway)?;
        self.hosts.push(host);
        Ok((self.hosts.last_mut().expect("just pushed"), tap))
    }

    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name() == name)
    }
    pub fn host_mut(&mut self, name: &str) -> Option<&mut Host> {
        self.hosts.iter_mut().find(|h| h.name() == name)
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }
    pub fn nodes_mut(&mut self) -> &mut [Node] {
        &mut self.nodes
    }
    /// Fails with the console log of the first node that has powered off while
    /// the caller was waiting for `waiting_for` (a node the caller expects to run).
    pub fn ensure_running(&mut self, waiting_for: &str) -> Result<()> {
        for node in &mut self.nodes {
            if !node.is_running() {
                return Err(Error::Exited {
                    what: format!("node {}", node.name()),
                    status: "powered off".into(),
                    waiting_for: waiting_for.into(),
                    log: node.console_log(),
                });
            }
        }
        Ok(())
    }
    pub fn node_mut(&mut self, name: &str) -> Option<&mut Node> {
        self.nodes.iter_mut().find(|n| n.name() == name)
    }

    pub fn start_all(&mut self) -> Result<()> {
        self.nodes.iter_mut().try_for_each(|n| n.start())
    }

    /// Builds node `name` from `hardware` (from its next start); a spare NIC
    /// gets a tap of its own on no bridge: a cable to nowhere.
    pub fn set_hardware(&mut self, name: &str, hardware: Hardware) -> Result<()> {
        let i = self.node_index(name)?;
        if hardware.spare_nic_first {
            let tap = self.nodes[i].spare_tap();
            self.netns
                .ip(&["tuntap", "add", "dev", &tap, "mode", "tap"])?;
            self.netns.ip(&["link", "set", &tap, "up"])?;
        }
        self.nodes[i].set_hardware(hardware);
        self.nodes[i].create_disks()
    }

    fn node_index(&self, name: &str) -> Result<usize> {
        self.nodes
            .iter()
            .position(|n| n.name() == name)
            .ok_or_else(|| Error::Netns {
                ns: self.netns.name().into(),
                message: format!("no node {name:?} in the lab"),
            })
    }

    /// Gives node `name` an IPMI BMC that owns its power from now on (see
    /// [`crate::bmc`]); [`Lab::config`] then points the server at it.
    pub fn add_bmc(&mut self, name: &str) -> Result<&crate::bmc::Bmc> {
        let i = self.node_index(name)?;
        self.nodes[i].attach_bmc(i + 1)
    }

    /// The lab's server config: DHCP full mode on the bridge and a `[[node]]`
    /// with a reserved address for every node, powered like a rack's machines:
    /// over IPMI where the node has a BMC, else over its QEMU monitor (`qmp`).
    pub fn config(&self) -> RolloutConfig {
        let mut config = RolloutConfig::lab(self.state_dir());
        for (i, n) in self.nodes.iter().enumerate() {
            let bmc = match n.bmc() {
                Some(b) => {
                    BmcConfig::ipmi(&b.address(), b.port(), crate::bmc::USER, b.password_file())
                }
                None => BmcConfig::qmp(&n.qmp_socket()),
            };
            config = config.with_node(n.mac(), n.name(), node_ip(i + 1));
            config.nodes.last_mut().expect("just added").bmc = Some(bmc);
        }
        config
    }

    /// Writes `config` (usually [`Lab::config`]) to `<dir>/rollout.toml`.
    pub fn write_config(&self, config: &RolloutConfig) -> Result<PathBuf> {
        let path = self.dir.join("rollout.toml");
        config.write(&path)?;
        Ok(path)
    }

    /// Runs `rollout serve --config CONFIG` in the namespace, output in
    /// `<dir>/server.log`. Address and port are read from the config.
    pub fn spawn_server(&mut self, config: &Path, rollout: &Path) -> Result<&mut Server> {
        let text = fs::read_to_string(config).ctx("reading the rollout config", config)?;
        let port = toml::from_str::<rollout::config::Config>(&text)
            .map(|c| c.server.http_port)
            .unwrap_or(80);
        self.server = None;
        let log = self.dir.join("server.log");
        let mut s = Server::spawn_rollout(&self.netns, rollout, config, &log, SERVER_ADDR, port)?;
        s.write_pid_file(&self.run_dir.join("server.pid"))?;
        Ok(self.server.insert(s))
    }

    /// Runs dnsmasq (DHCP + TFTP from `tftp_root`) instead of rollout, as a
    /// known-good reference server.
    pub fn spawn_dnsmasq(&mut self, tftp_root: &Path) -> Result<&mut Server> {
        self.server = None;
        let log = self.dir.join("server.log");
        let mut s = Server::spawn_dnsmasq(&self.netns, tftp_root, &log, SERVER_ADDR)?;
        s.write_pid_file(&self.run_dir.join("server.pid"))?;
        Ok(self.server.insert(s))
    }

    pub fn server(&mut self) -> Option<&mut Server> {
        self.server.as_mut()
    }

    /// Waits until the server accepts connections on its HTTP port.
    pub fn wait_server_ready(
        &mut self,
        timeout: std::time::Duration,
    ) -> Result<std::time::Duration> {
        match self.server.as_mut() {
            Some(s) => s.wait_ready(&self.netns, timeout),
            None => Err(Error::Netns {
                ns: self.netns.name().into(),
                message: "no server was started in the lab".into(),
            }),
        }
    }

    /// Log tails of the server and every node, for failure reports.
    pub fn diagnostics(&self, lines: usize) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            out.push_str(&format!(
                "--- {} ({}) console {}:\n",
                n.name(),
                n.firmware(),
                n.console_log().display()
            ));
            let console = crate::console::read_from(&n.console_log(), 0);
            let trouble = crate::console::first_trouble(&console, lines / 2);
            if !trouble.is_empty() {
                out.push_str("  first kernel trouble:\n");
                for l in trouble {
                    out.push_str(&format!("    {l}\n"));
                }
                out.push_str("  last lines:\n");
            }
            for l in crate::console::tail_of(&console, lines) {
                out.push_str(&format!("  {l}\n"));
            }
            let q = crate::console::tail(&n.qemu_log(), 5);
            if !q.is_empty() {
                out.push_str(&format!("  qemu stderr: {}\n", q.join(" | ")));
            }
        }
        let hosts = self
            .hosts
            .iter()
            .filter_map(|h| Some((format!("{}'s server", h.name()), h.server()?)));
        for (what, s) in std::iter::once(("server".to_string(), self.server.as_ref()))
            .filter_map(|(w, s)| Some((w, s?)))
            .chain(hosts)
        {
            out.push_str(&format!("--- {what} log {}:\n", s.log_path().display()));
            for l in s.log_tail(lines) {
                out.push_str(&format!("  {l}\n"));
            }
        }
        out
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.nodes.clear();
        self.server = None;
        self.hosts.clear();
        let _ = fs::remove_dir_all(&self.run_dir);
        if self.opts.keep_dir.is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
        // `netns` drops next and deletes the namespace.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixed_firmware_alternates() {
        let fws: Vec<_> = (1..=4).map(|i| FirmwareChoice::Mixed.for_node(i)).collect();
        assert_eq!(
            fws,
            [
                Firmware::Bios,
                Firmware::Uefi,
                Firmware::Bios,
                Firmware::Uefi
            ]
        );
        assert_eq!("uefi".parse(), Ok(FirmwareChoice::Uefi));
        assert!("efi".parse::<FirmwareChoice>().is_err());
    }
}
