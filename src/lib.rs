//! rollout: network-boot provisioning for racks of blank machines.
//!
//! The library owns the logic; `main.rs` only parses the command line. Each
//! protocol or concern is its own module and owns its types.
//!
//! The modules before the `server` ones are the shared layer: std/serde/thiserror
//! only, imported by the installer (`default-features = false`) and the lab too.

pub mod clock;
pub mod cpio;
pub mod kernel;
pub mod layout;
pub mod mac;
pub mod rsync_caps;
pub mod wire;

#[cfg(feature = "server")]
pub mod admission;
#[cfg(feature = "server")]
pub mod api_client;
#[cfg(feature = "server")]
pub mod bootfiles;
#[cfg(feature = "server")]
pub mod cli;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod db;
#[cfg(feature = "server")]
pub mod dhcp;
#[cfg(feature = "server")]
pub mod durable;
#[cfg(feature = "server")]
pub mod fleet;
#[cfg(feature = "server")]
pub mod http;
#[cfg(feature = "server")]
pub mod images;
#[cfg(feature = "server")]
pub mod inventory;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod multicast;
#[cfg(feature = "server")]
pub mod netif;
#[cfg(feature = "server")]
pub mod operators;
#[cfg(feature = "server")]
pub mod plan;
#[cfg(feature = "server")]
pub mod plan_auth;
#[cfg(feature = "server")]
pub mod power;
#[cfg(feature = "server")]
pub mod preflight;
#[cfg(feature = "server")]
pub mod sdnotify;
#[cfg(feature = "server")]
pub mod serve;
#[cfg(feature = "server")]
pub mod store;
#[cfg(feature = "server")]
pub mod tftp;
