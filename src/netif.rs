//! Facts about local network interfaces, read with getifaddrs(3).

use std::net::Ipv4Addr;

#[derive(Debug, thiserror::Error)]
pub enum NetifError {
    #[error("interface {0} does not exist; check server.interface against `ip link` (rollout only serves DHCP on an interface named explicitly)")]
    NoSuchInterface(String),
    #[error("cannot list network interfaces: {0}")]
    List(nix::Error),
}

/// The first IPv4 address and netmask of `name`, or None if it has no IPv4 address.
pub fn ipv4_of(name: &str) -> Result<Option<(Ipv4Addr, Ipv4Addr)>, NetifError> {
    let mut exists = false;
    let mut found = None;
    for ifa in nix::ifaddrs::getifaddrs().map_err(NetifError::List)? {
        if ifa.interface_name != name {
            continue;
        }
        exists = true;
        let addr = ifa
            .address
            .as_ref()
            .and_then(|a| a.as_sockaddr_in())
            .map(|s| s.ip());
        let mask = ifa
            .netmask
            .as_ref()
            .and_then(|a| a.as_sockaddr_in())
            .map(|s| s.ip());
        if let (Some(a), Some(m), None) = (addr, mask, found) {
            found = Some((a, m));
        }
    }
    if !exists {
        return Err(NetifError::NoSuchInterface(name.to_string()));
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_its_address_and_missing_interfaces_are_named() {
        let (ip, mask) = ipv4_of("lo").unwrap().unwrap();
        assert_eq!(ip, Ipv4Addr::LOCALHOST);
        assert_eq!(mask, Ipv4Addr::new(255, 0, 0, 0));
        let e = ipv4_of("nosuchif0").unwrap_err().to_string();
        assert!(e.contains("nosuchif0"));
    }
}
