//! Nodes and their install state. Declared nodes come from the config file or the
//! API; the server learns the rest (discovered MACs, firmware, installs, boots).
//! Every change goes through the state machine in [`state`] and is stored with a
//! history line in one transaction, then broadcast to dashboards.

pub mod hwquery;
mod installs;
pub mod limits;
pub mod live;
pub mod postgres;
pub mod progress;
mod record;
pub mod secrets;
pub mod sqlite;
pub mod state;
pub mod stuck;

// The inventory's clock; `now` keeps its call sites short.
use crate::clock::now_unix as now;
use crate::db::StoreError;
use crate::wire::{EventKind, PhoneHome, ProgressEvent};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::Mutex;
use tokio::sync::broadcast;

pub use installs::timeout_sweeper;
pub use live::{NodeChange, Remote};
pub use record::{HistoryEntry, NodeRecord, OperatorAction, Source};
pub use state::{boot_action, next, BootAction, NodeState, Transition, TransitionError};

/// Held for one read-modify-write cycle of the inventory (see
/// [`NodeStore::lock_writes`]); whatever it holds is released when dropped.
pub type WriteGuard<'a> = Box<dyn Held + 'a>;

/// Anything kept alive for its `Drop`: the guard of a store's write lock.
pub trait Held {}
impl<T> Held for T {}

/// Storage behind the inventory: SQLite in the state_dir (one server) or the
/// PostgreSQL database several servers share (`[store] url`).
pub trait NodeStore: Send + Sync {
    fn get(&self, mac: &str) -> Result<Option<NodeRecord>, StoreError>;
    fn by_install(&self, install_id: &str) -> Result<Option<NodeRecord>, StoreError>;
    fn list(&self) -> Result<Vec<NodeRecord>, StoreError>;
    /// Writes the record and, if given, one history line, atomically.
    fn save(&self, rec: &NodeRecord, history: Option<&serde_json::Value>)
        -> Result<(), StoreError>;
    fn delete(&self, mac: &str) -> Result<bool, StoreError>;
    fn history(&self, mac: &str) -> Result<Vec<HistoryEntry>, StoreError>;

    /// Keeps every other writer of this store out until the guard drops. The
    /// inventory's own mutex orders this server's cycles; a store other
    /// servers share must order theirs too. SQLite: nobody else writes.
    fn lock_writes(&self) -> Result<WriteGuard<'_>, StoreError> {
        Ok(Box::new(()))
    }

    /// Whether this store answers, when that can change (a database over the
    /// network): for `/healthz`.
    fn health(&self) -> Option<crate::store::health::StoreHealth> {
        None
    }

    /// Starts telling `changed` what other servers write or remove. Nothing
    /// to tell when no other server writes here.
    fn watch(&self, changed: Box<dyn Fn(Remote) + Send>) -> Result<(), StoreError> {
        drop(changed);
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no install {0}; the node must fetch a new plan")]
    UnknownInstall(String),
    #[error("bad token for install {0}: a node can only report for its own install")]
    BadToken(String),
    #[error("no node with MAC {0}; it appears after its first PXE boot, or add it with `rollout node add`")]
    UnknownNode(String),
    #[error("node {mac}: {source}")]
    Transition {
        mac: String,
        source: TransitionError,
    },
    #[error("{0}")]
    Conflict(String),
    /// A stranger was not recorded ([`limits::DiscoveryLimiter`]).
    #[error("not recording undeclared machine {mac}: {reason}")]
    Refused {
        mac: String,
        reason: limits::DiscoveryRefusal,
    },
}

/// Serials of `image` that nodes are installing right now, with those nodes'
/// hostnames: an install rsyncs from its serial's module until it finishes.
pub fn serials_being_installed(records: &[NodeRecord], image: &str) -> Vec<(u64, String)> {
    let mut out: Vec<(u64, String)> = records
        .iter()
        .filter(|r| r.image == image && r.state == NodeState::Installing)
        .filter_map(|r| Some((r.serial?, r.hostname.clone())))
        .collect();
    out.sort();
    out
}

pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("/dev/urandom is readable");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hostname for a machine nobody declared: stable, derived from its MAC (the last
/// three octets, which tell apart the NICs of one vendor). `mac` is normalized.
pub fn generated_hostname(mac: &str) -> String {
    format!("node-{}", mac.replace(':', "")[6..].to_ascii_lowercase())
}

#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub unknown: crate::config::UnknownPolicy,
    pub retry: crate::config::RetryPolicy,
    /// An install with no report for this long is marked failed.
    pub install_timeout_secs: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy::from(&crate::config::InstallConfig::default())
    }
}

impl From<&crate::config::InstallConfig> for Policy {
    fn from(install: &crate::config::InstallConfig) -> Self {
        Policy {
            unknown: install.unknown_policy(),
            retry: install.on_failure,
            install_timeout_secs: install.install_timeout,
        }
    }
}

pub struct Inventory {
    store: Box<dyn NodeStore>,
    /// Serializes read-modify-write cycles so two reports cannot interleave.
    write: Mutex<()>,
    changes: broadcast::Sender<NodeChange>,
    discovery: Mutex<limits::DiscoveryLimiter>,
    /// The copy rate of each running install, by install id (in memory: after
    /// a restart the estimate starts over from the next reports).
    rates: Mutex<std::collections::HashMap<String, progress::CopyRate>>,
    /// The newest record this server read, wrote or was told of, by MAC
    /// (without secrets): what a boot falls back on while the store cannot be
    /// read (a shared database that is down), so installed nodes still boot.
    known: Mutex<std::collections::HashMap<String, NodeRecord>>,
    pub policy: Policy,
}

impl Inventory {
    pub fn new(store: Box<dyn NodeStore>, policy: Policy) -> Inventory {
        let (changes, _) = broadcast::channel(256);
        Inventory {
            store,
            write: Mutex::new(()),
            changes,
            discovery: Mutex::default(),
            rates: Mutex::default(),
            known: Mutex::default(),
            policy,
        }
    }

    pub fn open(db: &std::path::Path, policy: Policy) -> Result<Inventory, InventoryError> {
        Ok(Inventory::new(
            Box::new(sqlite::SqliteNodeStore::open(db)?),
            policy,
        ))
    }

    /// This server's and (through the store) every other server's cycles
    /// one at a time; held for one read-modify-write.
    pub(crate) fn write_lock(
        &self,
    ) -> Result<(std::sync::MutexGuard<'_, ()>, WriteGuard<'_>), InventoryError> {
        let local = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let shared = self.store.lock_writes()?;
        Ok((local, shared))
    }

    pub fn get(&self, mac: &str) -> Result<Option<NodeRecord>, InventoryError> {
        let rec = self.store.get(mac)?;
        self.remember(&rec);
        Ok(rec)
    }

    pub fn list(&self) -> Result<Vec<NodeRecord>, InventoryError> {
        let all = self.store.list()?;
        self.remember(&all);
        Ok(all)
    }

    pub fn history(&self, mac: &str) -> Result<Vec<HistoryEntry>, InventoryError> {
        Ok(self.store.history(mac)?)
    }

    pub fn find(&self, name_or_mac: &str) -> Result<Option<NodeRecord>, InventoryError> {
        if let Some(mac) = crate::config::normalize_mac(name_or_mac) {
            return self.get(&mac);
        }
        Ok(self.list()?.into_iter().find(|n| n.hostname == name_or_mac))
    }

    fn commit(
        &self,
        mut rec: NodeRecord,
        history: serde_json::Value,
    ) -> Result<NodeRecord, InventoryError> {
        rec.updated = now();
        self.store.save(&rec, Some(&history))?;
        self.remember([&rec]);
        let _ = self.changes.send(NodeChange::Saved(Box::new(rec.public())));
        Ok(rec)
    }

    fn transition(rec: &mut NodeRecord, t: Transition) -> Result<(), InventoryError> {
        rec.state = next(rec.state, t).map_err(|source| InventoryError::Transition {
            mac: rec.mac.clone(),
            source,
        })?;
        Ok(())
    }

    /// Creates or updates a declared node. Its install state is kept.
    pub fn declare(&self, decl: NodeRecord) -> Result<NodeRecord, InventoryError> {
        self.declare_by(decl, None)
    }

    /// `declare`, naming in the history row the operator who declared it.
    pub fn declare_by(
        &self,
        decl: NodeRecord,
        by: Option<&str>,
    ) -> Result<NodeRecord, InventoryError> {
        let _w = self.write_lock()?;
        for other in self.store.list()? {
            if other.mac == decl.mac {
                continue;
            }
            if other.hostname == decl.hostname {
                return Err(InventoryError::Conflict(format!(
                    "hostname {} is already used by {}; pick another hostname",
                    decl.hostname, other.mac
                )));
            }
            if decl.ip.is_some() && other.ip == decl.ip {
                return Err(InventoryError::Conflict(format!(
                    "address {} is already reserved for {} ({}); pick another address",
                    decl.ip.as_deref().unwrap_or(""),
                    other.hostname,
                    other.mac
                )));
            }
        }
        let rec = match self.store.get(&decl.mac)? {
            Some(existing) => {
                let unchanged = existing.hostname == decl.hostname
                    && existing.ip == decl.ip
                    && existing.image == decl.image
                    && existing.disk == decl.disk
                    && existing.root_mib == decl.root_mib
                    && existing.swap_mib == decl.swap_mib
                    && existing.source == decl.source;
                if unchanged {
                    return Ok(existing);
                }
                let mut rec = existing;
                if rec.state == NodeState::Discovered {
                    rec.state = NodeState::Pending;
                }
                rec.hostname = decl.hostname;
                rec.ip = decl.ip;
                rec.image = decl.image;
                rec.disk = decl.disk;
                rec.root_mib = decl.root_mib;
                rec.swap_mib = decl.swap_mib;
                rec.source = decl.source;
                rec
            }
            None => NodeRecord {
                state: NodeState::Pending,
                ..decl
            },
        };
        let mut event = json!({"kind": "declared", "hostname": rec.hostname, "image": rec.image, "source": rec.source});
        if let Some(by) = by {
            event["by"] = by.into();
        }
        self.commit(rec, event)
    }

    /// Records that a MAC asked for its boot script; creates a discovered node for
    /// strangers. `hostname` and `image` apply only to a node created here.
    pub fn seen(
        &self,
        mac: &str,
        hostname: &str,
        image: &str,
        firmware: Option<&str>,
    ) -> Result<NodeRecord, InventoryError> {
        let _w = self.write_lock()?;
        let (mut rec, event) = match self.store.get(mac)? {
            Some(rec) => (rec, json!({"kind": "pxe_boot", "firmware": firmware})),
            None => {
                self.admit_stranger(mac)?;
                (
                    NodeRecord::new(
                        mac,
                        hostname,
                        image,
                        Source::Discovered,
                        NodeState::Discovered,
                    ),
                    json!({"kind": "discovered", "firmware": firmware}),
                )
            }
        };
        rec.last_seen = Some(now());
        if let Some(fw) = firmware {
            rec.firmware = Some(fw.to_string());
        }
        self.commit(rec, event)
    }

    /// Lets a new discovered record in, or refuses it (too many, or too fast),
    /// warning at most once a minute with how many were refused.
    fn admit_stranger(&self, mac: &str) -> Result<(), InventoryError> {
        let mut failed = None;
        let total = || match self.store.list() {
            Ok(all) => all
                .iter()
                .filter(|r| r.source == Source::Discovered)
                .count(),
            Err(e) => {
                failed = Some(e);
                0
            }
        };
        let admitted = self
            .discovery
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .admit(now(), total);
        if let Some(e) = failed {
            return Err(e.into());
        }
        admitted.map_err(|report| {
            if let Some(n) = report.warn {
                tracing::warn!(%mac, refused = n, "not recording undeclared machines: {}", report.reason);
            }
            InventoryError::Refused {
                mac: mac.to_string(),
                reason: report.reason,
            }
        })
    }

    /// Keeps the hardware report of a granted plan request (bounded, see
    /// [`crate::wire::Hardware::bounded`]), with a history line when it
    /// changed: a new disk or more memory shows up in the node's history.
    pub fn record_hardware(
        &self,
        mac: &str,
        hw: &crate::wire::Hardware,
    ) -> Result<NodeRecord, InventoryError> {
        let _w = self.write_lock()?;
        let mut rec = self
            .store
            .get(mac)?
            .ok_or_else(|| InventoryError::UnknownNode(mac.into()))?;
        let hw = hw.bounded();
        let changed = rec.hardware.as_ref() != Some(&hw);
        rec.hardware_at = Some(now());
        let event = json!({
            "kind": "hardware",
            "cpus": hw.cpu.count,
            "memory_mib": hw.memory_mib,
            "disks": hw.disks.len(),
            "largest_disk_gib": hw.largest_disk_gib(),
            "nics": hw.nics.len(),
            "vendor": hw.system.vendor,
            "product": hw.system.product,
        });
        rec.hardware = Some(hw);
        if !changed {
            rec.updated = now();
            self.store.save(&rec, None)?;
            return Ok(rec);
        }
        self.commit(rec, event)
    }
}

#[cfg(test)]
mod tests;
