//! Wake-on-LAN: the magic packet (6 × 0xff, then the MAC 16 times) as a UDP
//! broadcast to port 9 out of the provisioning interface. It can only power a
//! node on, and nothing answers, so the state is unknown.

use super::{PowerDriver, PowerError, PowerState, Target};
use crate::mac::MacAddr;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};

/// The port magic packets go to (discard; NICs look at every frame anyway).
pub const PORT: u16 = 9;

/// The 102-byte magic packet for `mac`.
pub fn magic_packet(mac: [u8; 6]) -> [u8; 102] {
    let mut p = [0xffu8; 102];
    for chunk in p[6..].chunks_exact_mut(6) {
        chunk.copy_from_slice(&mac);
    }
    p
}

pub struct Wol {
    node: String,
    mac: [u8; 6],
    broadcast: Ipv4Addr,
    interface: Option<String>,
}

impl Wol {
    pub fn new(t: &Target) -> Result<Wol, PowerError> {
        let mac: MacAddr = t.mac.parse().map_err(|_| PowerError::Tool {
            node: t.node.into(),
            detail: format!("{:?} is not a MAC address", t.mac),
        })?;
        Ok(Wol {
            node: t.node.into(),
            mac: mac.octets(),
            broadcast: t.bmc.broadcast.unwrap_or(Ipv4Addr::BROADCAST),
            interface: t.interface.map(str::to_string),
        })
    }

    fn send(&self) -> std::io::Result<()> {
        let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        sock.set_broadcast(true)?;
        if let Some(iface) = &self.interface {
            // Out of the provisioning interface only, never the host's others.
            socket2::SockRef::from(&sock).bind_device(Some(iface.as_bytes()))?;
        }
        sock.send_to(
            &magic_packet(self.mac),
            SocketAddrV4::new(self.broadcast, PORT),
        )?;
        Ok(())
    }

    fn unsupported(&self, operation: &'static str) -> PowerError {
        PowerError::Unsupported {
            node: self.node.clone(),
            driver: "wol",
            operation,
            why: "Wake-on-LAN can only power a node on; give the node a BMC (ipmi or redfish) to power it off or cycle it",
        }
    }
}

impl PowerDriver for Wol {
    fn status(&self) -> Result<PowerState, PowerError> {
        Ok(PowerState::Unknown)
    }
    fn on(&self) -> Result<(), PowerError> {
        self.send().map_err(|e| PowerError::Tool {
            node: self.node.clone(),
            detail: format!(
                "cannot send the Wake-on-LAN packet to {}:{PORT}{}: {e}; check server.interface and bmc.broadcast",
                self.broadcast,
                self.interface.as_deref().map(|i| format!(" on {i}")).unwrap_or_default()
            ),
        })
    }
    fn off(&self) -> Result<(), PowerError> {
        Err(self.unsupported("power off"))
    }
    fn cycle(&self) -> Result<(), PowerError> {
        Err(self.unsupported("power cycle"))
    }
    /// Nothing to send: a Wake-on-LAN node network-boots by its firmware's boot
    /// order, and rollout's iPXE script decides between install and local disk.
    fn boot_once_pxe(&self, _efi: bool) -> Result<(), PowerError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_packet_byte_for_byte() {
        let mac = [0x52, 0x54, 0x00, 0xaa, 0x00, 0x01];
        let p = magic_packet(mac);
        assert_eq!(p.len(), 102);
        assert_eq!(&p[..6], &[0xff; 6]);
        for i in 0..16 {
            assert_eq!(&p[6 + i * 6..12 + i * 6], &mac, "repetition {i}");
        }
    }
}
