//! Other machines on the lab's network, each in a namespace of its own with a
//! veth plugged into the lab bridge: a site DHCP server that knows nothing of
//! PXE (for proxy mode), and a router with a subnet of its own behind a real
//! DHCP relay (for relayed installs). Like the lab itself, nothing here touches
//! the host's interfaces.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

use crate::config::{BRIDGE, PREFIX_LEN};
use crate::error::{IoContext, Result};
use crate::netns::Netns;
use crate::proc::{run, ProcessGroup};
use crate::server::Server;
use crate::vlan::VlanPort;

/// The bridge of a routed subnet, inside its router's namespace.
pub const SUBNET_BRIDGE: &str = "rbr1";

/// A machine on the lab bridge. Its processes and namespace go on drop.
#[derive(Debug)]
pub struct Host {
    name: String,
    address: Ipv4Addr,
    /// The routed subnet's bridge address (`Some` for a router).
    subnet: Option<Ipv4Addr>,
    procs: Vec<ProcessGroup>,
    /// A `rollout serve` of its own (a rack's server on a router's subnet).
    server: Option<Server>,
    /// User-space VLAN ports; stopped before the namespace goes.
    vlans: Vec<VlanPort>,
    // Last: dropped after the processes running inside it.
    netns: Netns,
}

impl Host {
    /// Creates namespace `ns` as a host with `address` on the lab bridge of
    /// `lab_ns`, through a veth `vh-<name>` (lab side) / `eth0` (host side).
    pub(crate) fn create(lab_ns: &Netns, ns: &str, name: &str, address: Ipv4Addr) -> Result<Host> {
        let netns = Netns::create(ns)?;
        let lab_side = format!("vh-{name}");
        lab_ns.add_bridge_port(BRIDGE, &lab_side, ns, "eth0")?;
        netns.ip(&[
            "addr",
            "add",
            &format!("{address}/{PREFIX_LEN}"),
            "dev",
            "eth0",
        ])?;
        netns.ip(&["link", "set", "eth0", "up"])?;
        Ok(Host {
            name: name.into(),
            address,
            subnet: None,
            procs: Vec::new(),
            server: None,
            vlans: Vec::new(),
            netns,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn address(&self) -> Ipv4Addr {
        self.address
    }
    pub fn netns(&self) -> &Netns {
        &self.netns
    }
    /// The router's address on its own subnet (the relay's giaddr).
    pub fn subnet_address(&self) -> Option<Ipv4Addr> {
        self.subnet
    }

    /// Makes this host a router: bridge [`SUBNET_BRIDGE`] with `gateway/24`,
    /// IPv4 forwarding on, and a route to the subnet through this host on the
    /// lab side, so the boot server reaches the relayed nodes and they it.
    pub(crate) fn route_subnet(&mut self, lab_ns: &Netns, gateway: Ipv4Addr) -> Result<()> {
        self.netns
            .add_bridge(SUBNET_BRIDGE, &format!("{gateway}/{PREFIX_LEN}"))?;
        self.route_to_here(lab_ns, gateway)
    }

    /// Forwards between the lab and the subnet of `gateway` (a /24 this host
    /// has an address in), and routes that subnet from the lab to this host.
    fn route_to_here(&mut self, lab_ns: &Netns, gateway: Ipv4Addr) -> Result<()> {
        run(self
            .netns
            .command("sysctl")
            .args(["-q", "-w", "net.ipv4.ip_forward=1"]))?;
        let o = gateway.octets();
        let subnet = format!("{}.{}.{}.0/{PREFIX_LEN}", o[0], o[1], o[2]);
        lab_ns.ip(&["route", "add", &subnet, "via", &self.address.to_string()])?;
        self.subnet = Some(gateway);
        Ok(())
    }

    /// Puts this host on VLAN `vid` of the lab bridge at `address` (a /24):
    /// a user-space VLAN port ([`VlanPort`]) on its link into the bridge
    /// gives it the interface `vlan<vid>`, which it returns.
    pub fn join_vlan(&mut self, vid: u16, address: Ipv4Addr) -> Result<String> {
        let tap = format!("vlan{vid}");
        let port = VlanPort::start(self.netns.name(), "eth0", &tap, vid).map_err(|e| {
            crate::error::Error::Netns {
                ns: self.netns.name().into(),
                message: format!("starting the user-space port of VLAN {vid}: {e}"),
            }
        })?;
        self.vlans.push(port);
        self.netns.ip(&[
            "addr",
            "add",
            &format!("{address}/{PREFIX_LEN}"),
            "dev",
            &tap,
        ])?;
        self.netns.ip(&["link", "set", &tap, "up"])?;
        Ok(tap)
    }

    /// Makes this host the router of VLAN `vid`'s subnet at `gateway` (see
    /// [`Host::join_vlan`]): it forwards between the VLAN and the lab, and
    /// the lab routes the subnet here.
    pub(crate) fn route_vlan(
        &mut self,
        lab_ns: &Netns,
        vid: u16,
        gateway: Ipv4Addr,
    ) -> Result<String> {
        let tap = self.join_vlan(vid, gateway)?;
        self.route_to_here(lab_ns, gateway)?;
        Ok(tap)
    }

    /// Runs `program ARGS…` inside this host until the host is dropped, output
    /// appended to `log`.
    pub fn spawn(&mut self, label: &str, program: &str, args: &[String], log: &Path) -> Result<()> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .ctx("opening a host log", log)?;
        let mut cmd: Command = self.netns.command(program);
        cmd.args(args)
            .stdout(out.try_clone().ctx("opening a host log", log)?)
            .stderr(out);
        self.procs.push(ProcessGroup::spawn(label, &mut cmd)?);
        Ok(())
    }

    /// Whether every process started here is still running.
    pub fn all_running(&mut self) -> bool {
        self.procs.iter_mut().all(|p| p.is_running())
            && self.server.as_mut().is_none_or(|s| s.is_running())
    }

    /// Runs `rollout serve --config CONFIG` inside this host (e.g. the server
    /// of the rack behind a router), output in `log`, and waits until it
    /// listens on `address:port`. It stops when the host is dropped.
    pub fn spawn_rollout(
        &mut self,
        rollout: &Path,
        config: &Path,
        log: &Path,
        (address, port): (Ipv4Addr, u16),
        timeout: std::time::Duration,
    ) -> Result<&mut Server> {
        self.server = None;
        let mut s = Server::spawn_rollout(&self.netns, rollout, config, log, address, port)?;
        s.wait_ready(&self.netns, timeout)?;
        Ok(self.server.insert(s))
    }

    /// The `rollout serve` started with [`Host::spawn_rollout`].
    pub fn server(&self) -> Option<&Server> {
        self.server.as_ref()
    }
}

/// dnsmasq as a plain site DHCP server on `eth0`: addresses from `range`, the
/// lab server as router, and no PXE options at all (no boot file, no next
/// server, no vendor class): PXE clients must get those from a proxyDHCP.
pub fn site_dhcp_args(range: (Ipv4Addr, Ipv4Addr), router: Ipv4Addr, leases: &Path) -> Vec<String> {
    vec![
        "--no-daemon".into(),
        "--conf-file=/dev/null".into(),
        "--port=0".into(),
        "--user=root".into(),
        "--interface=eth0".into(),
        "--bind-interfaces".into(),
        "--log-dhcp".into(),
        format!("--dhcp-range={},{},255.255.255.0,1h", range.0, range.1),
        format!("--dhcp-option=option:router,{router}"),
        format!("--dhcp-leasefile={}", leases.display()),
    ]
}

/// dnsmasq as a DHCP relay (and nothing else): requests broadcast on the
/// router's subnet go to `server` with giaddr = `giaddr`, replies come back.
pub fn relay_args(giaddr: Ipv4Addr, server: Ipv4Addr) -> Vec<String> {
    relay_args_on(SUBNET_BRIDGE, giaddr, server)
}

/// [`relay_args`] for a subnet on interface `downlink` (e.g. a VLAN's tap).
pub fn relay_args_on(downlink: &str, giaddr: Ipv4Addr, server: Ipv4Addr) -> Vec<String> {
    vec![
        "--no-daemon".into(),
        "--conf-file=/dev/null".into(),
        "--port=0".into(),
        "--user=root".into(),
        "--log-dhcp".into(),
        format!("--interface={downlink}"),
        "--interface=eth0".into(),
        format!("--dhcp-relay={giaddr},{server}"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn site_dhcp_server_offers_no_pxe_options() {
        let a = site_dhcp_args(
            (Ipv4Addr::new(10, 44, 0, 150), Ipv4Addr::new(10, 44, 0, 199)),
            Ipv4Addr::new(10, 44, 0, 1),
            Path::new("/tmp/l"),
        )
        .join(" ");
        assert!(a.contains("--dhcp-range=10.44.0.150,10.44.0.199,"));
        for pxe in [
            "dhcp-boot",
            "enable-tftp",
            "pxe-service",
            "dhcp-vendorclass",
        ] {
            assert!(!a.contains(pxe), "{a}");
        }
    }

    #[test]
    fn relay_forwards_to_the_boot_server() {
        let a = relay_args(Ipv4Addr::new(10, 45, 0, 1), Ipv4Addr::new(10, 44, 0, 1)).join(" ");
        assert!(a.contains("--dhcp-relay=10.45.0.1,10.44.0.1"), "{a}");
        assert!(
            !a.contains("dhcp-range"),
            "a relay hands out nothing itself: {a}"
        );
    }
}
