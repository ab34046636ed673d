//! DHCP for PXE: full server, proxyDHCP and relayed subnets, with persistent leases.

pub mod commit;
pub mod core;
pub mod decode;
pub mod inbox;
pub mod leases;
pub mod limits;
pub mod probe;
pub mod pxe;
pub mod server;

#[cfg(test)]
mod core_tests;

pub use self::core::{CoreConfig, DhcpCore, Outcome, Reply, Subnet, Via};
