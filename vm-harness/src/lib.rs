//! The virtual lab: blank QEMU nodes on a bridge inside a private network
//! namespace, PXE-booting from `rollout serve`.
//!
//! ```no_run
//! use std::time::Duration;
//! use vm_harness::{Lab, Firmware, Pattern};
//! let mut lab = Lab::create("demo")?;
//! lab.add_node(Firmware::Bios)?;
//! let cfg = lab.write_config(&lab.config())?;
//! lab.spawn_server(&cfg, "target/debug/rollout".as_ref())?;
//! lab.wait_server_ready(Duration::from_secs(30))?;
//! lab.start_all()?;
//! lab.nodes_mut()[0].wait_for_console(&Pattern::from("login:"), Duration::from_secs(600))?;
//! # Ok::<(), vm_harness::Error>(())
//! ```

pub mod bench;
pub mod bench_multicast;
pub mod bmc;
pub mod boottest;
pub mod ci;
pub mod config;
pub mod console;
pub mod demo;
pub mod devices;
pub mod disk;
pub mod e2e;
pub mod error;
pub mod hosts;
pub mod initrd;
pub mod lab;
pub mod maintain;
pub mod netns;
pub mod nfs;
pub mod proc;
pub mod progress;
pub mod qemu;
pub mod server;
pub mod vlan;

pub use config::RolloutConfig;
pub use console::Pattern;
pub use error::{Error, Result};
pub use lab::{cleanup, FirmwareChoice, Lab, LabOptions};
pub use netns::Netns;
pub use qemu::{Accel, Firmware, NetBoot, Node, NodeSpec};
pub use server::Server;
