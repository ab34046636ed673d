//! Nodes and their install state. Declared nodes come from the config file or the
//! API; the server learns the rest (discovered MACs, firmware, installs, boots).
//! Every change goes through the state machine in [`state`] and is stored with a
//! history line in one transaction, then broadcast to dashboards.

pub mod hwquery;
pub mod limits;
pub mod live;
pub mod postgres;
pub mod progress;
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

pub use live::{NodeChange, Remote};
pub use state::{boot_action, next, BootAction, NodeState, Transition, TransitionError};

/// Where a node's declaration comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[derive(utoipa::ToSchema)]
pub enum Source {
    Config,
    Api,
    Discovered,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeRecord {
    pub mac: String,
    pub hostname: String,
    pub ip: Option<String>,
    pub image: String,
    pub disk: Option<String>,
    pub root_mib: Option<u64>,
    pub swap_mib: Option<u64>,
    pub source: Source,
    pub state: NodeState,
    /// `pcbios` or `efi`, as iPXE reported it.
    pub firmware: Option<String>,
    pub serial: Option<u64>,
    pub install_id: Option<String>,
    /// Never leaves the server except inside the node's own plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(ignore)]
    pub token: Option<String>,
    pub stage: Option<String>,
    pub done_bytes: u64,
    pub total_bytes: u64,
    /// Seconds left in the copy at its current rate (a moving average of the
    /// installer's reports, [`progress`]); absent until there are enough
    /// reports, and outside the copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_secs: Option<u64>,
    /// Bytes per second: the copy's current rate while it runs, its average
    /// over the whole copy once done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_rate: Option<u64>,
    /// Waiting for a copy slot: `[position, queued]` as the installer last
    /// reported it (`queued` event); cleared by its next other event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<[u32; 2]>,
    pub last_error: Option<String>,
    pub console_tail: Vec<String>,
    pub installs: u64,
    pub install_started: Option<u64>,
    pub installed_at: Option<u64>,
    pub booted_at: Option<u64>,
    pub boot_id: Option<String>,
    pub last_seen: Option<u64>,
    pub updated: u64,
    /// An operator approved this discovered machine (or asked for its reinstall):
    /// it may be installed over a disk that holds data, like a declared node.
    #[serde(default)]
    pub approved: bool,
    /// The node's SSH host public keys (`ALGORITHM BASE64`), as its installer
    /// reported them in its authenticated `installed` event: what known_hosts
    /// is written from and what `rollout exec` requires. Empty: unknown.
    #[serde(default)]
    pub host_keys: Vec<String>,
    /// `ED25519 SHA256:…` for each of `host_keys`, for operators to compare.
    #[serde(default)]
    pub host_key_fingerprints: Vec<String>,
    /// When the running install last reported (its plan counts): a boot
    /// secret may not start a new install over one that is still talking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_at: Option<u64>,
    /// SHA-256 of the boot secret in the last install script served for this
    /// node; cleared when a plan request consumes it ([`secrets`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(ignore)]
    pub boot_secret: Option<String>,
    /// The running install's rsync password, in clear text because rsyncd's
    /// secrets file needs it; dropped when the install ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(ignore)]
    pub install_rsync: Option<String>,
    /// SHA-256 of the node's secret (its Bearer after the install): the server
    /// only ever compares it, so it keeps no copy it could leak.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(ignore)]
    pub node_key: Option<String>,
    /// The node's rsync password (clear text, for rsyncd's secrets file). A
    /// different value from the node's secret, so the secrets file and the
    /// database give image reads, never the node's HTTP identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(ignore)]
    pub node_rsync: Option<String>,
    /// Install scripts served since the installer last fetched a plan ([`stuck`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreported_boots: Option<stuck::UnreportedBoots>,
    /// From the third of them on: "installer booted 3× since 10:02 UTC, never
    /// reached the server: check its NIC driver"; cleared by a plan fetch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stuck_before_network: Option<String>,
    /// What the node's installer found on the machine (its last granted plan
    /// request). Records stored before inventories read back as `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware: Option<crate::wire::Hardware>,
    /// When `hardware` was reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware_at: Option<u64>,
}

impl NodeRecord {
    pub fn new(
        mac: &str,
        hostname: &str,
        image: &str,
        source: Source,
        state: NodeState,
    ) -> NodeRecord {
        NodeRecord {
            mac: mac.into(),
            hostname: hostname.into(),
            ip: None,
            image: image.into(),
            disk: None,
            root_mib: None,
            swap_mib: None,
            source,
            state,
            firmware: None,
            serial: None,
            install_id: None,
            token: None,
            stage: None,
            done_bytes: 0,
            total_bytes: 0,
            eta_secs: None,
            copy_rate: None,
            queue: None,
            last_error: None,
            console_tail: vec![],
            installs: 0,
            install_started: None,
            installed_at: None,
            booted_at: None,
            boot_id: None,
            last_seen: None,
            updated: 0,
            approved: false,
            host_keys: vec![],
            host_key_fingerprints: vec![],
            reported_at: None,
            boot_secret: None,
            install_rsync: None,
            node_key: None,
            node_rsync: None,
            unreported_boots: None,
            stuck_before_network: None,
            hardware: None,
            hardware_at: None,
        }
    }

    /// Declared in the config or the API, or approved by an operator: someone who
    /// owns the machine said to install it, so its disk may be repartitioned even
    /// when it holds data. A stranger installed under `unknown = "install"` is not.
    pub fn declared_or_approved(&self) -> bool {
        self.source != Source::Discovered || self.approved
    }

    /// What needs a person's attention, for the node list of the dashboard and
    /// `rollout watch`: an installer stuck before the network, the last error.
    pub fn trouble(&self) -> String {
        [&self.stuck_before_network, &self.last_error]
            .into_iter()
            .flatten()
            .cloned()
            .collect::<Vec<_>>()
            .join(" · ")
    }

    /// `queued, position K of N` while the install waits for a copy slot.
    pub fn queue_text(&self) -> Option<String> {
        let [position, queued] = self.queue?;
        Some(format!("queued, position {position} of {queued}"))
    }

    /// The stage column of `rollout node list` and `rollout watch`: the queue
    /// place while waiting for a copy slot, else the running step.
    pub fn stage_text(&self) -> String {
        self.queue_text()
            .or_else(|| self.stage.clone())
            .unwrap_or_else(|| "-".into())
    }

    /// The copy shown to API readers and browsers: without the install token
    /// and the credentials.
    pub fn public(&self) -> NodeRecord {
        NodeRecord {
            token: None,
            boot_secret: None,
            install_rsync: None,
            node_key: None,
            node_rsync: None,
            ..self.clone()
        }
    }
}

/// What an operator can ask of one node through the API or the dashboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperatorAction {
    Reinstall,
    Approve,
    Ignore,
}

impl OperatorAction {
    pub fn as_str(self) -> &'static str {
        match self {
            OperatorAction::Reinstall => "reinstall",
            OperatorAction::Approve => "approve",
            OperatorAction::Ignore => "ignore",
        }
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HistoryEntry {
    pub at: u64,
    pub event: serde_json::Value,
}

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

    /// A new install attempt: fresh id and token (see [`Inventory::start_install`]
    /// for the credentials that come with it).
    pub fn begin_install(&self, mac: &str, serial: u64) -> Result<NodeRecord, InventoryError> {
        self.start_install(mac, serial).map(|(rec, _)| rec)
    }

    /// A new install attempt: fresh id, token and per-install rsync password,
    /// and a new node credential (the old one, of the OS this install
    /// replaces, stops working). The node's secret is returned for its plan
    /// and kept here only as a hash.
    pub fn start_install(
        &self,
        mac: &str,
        serial: u64,
    ) -> Result<(NodeRecord, crate::wire::NodeCredential), InventoryError> {
        let _w = self.write_lock()?;
        let mut rec = self
            .store
            .get(mac)?
            .ok_or_else(|| InventoryError::UnknownNode(mac.into()))?;
        Self::transition(&mut rec, Transition::BeginInstall)?;
        let t = now();
        rec.install_id = Some(format!("{t}-{}", random_hex(4)));
        rec.token = Some(random_hex(16));
        rec.serial = Some(serial);
        rec.stage = Some(crate::wire::Step::FetchPlan.as_str().into());
        rec.done_bytes = 0;
        rec.total_bytes = 0;
        rec.eta_secs = None;
        rec.copy_rate = None;
        rec.last_error = None;
        rec.console_tail.clear();
        rec.installs += 1;
        rec.install_started = Some(t);
        rec.reported_at = Some(t);
        rec.boot_secret = None;
        // The installer reached the server: whatever looped before is over.
        rec.unreported_boots = None;
        rec.stuck_before_network = None;
        rec.install_rsync = Some(random_hex(16));
        let node = secrets::issue_node_credential(&mut rec);
        let event = json!({"kind": "install_started", "install_id": rec.install_id, "image": rec.image, "serial": serial});
        Ok((self.commit(rec, event)?, node))
    }

    /// The node running install `install_id`, if `token` is that install's
    /// (for calls that change no record, such as a copy slot request).
    pub fn running_install(
        &self,
        install_id: &str,
        token: &str,
    ) -> Result<NodeRecord, InventoryError> {
        let rec = self
            .store
            .by_install(install_id)?
            .ok_or_else(|| InventoryError::UnknownInstall(install_id.into()))?;
        if rec.token.as_deref() != Some(token) {
            return Err(InventoryError::BadToken(install_id.into()));
        }
        if rec.state != NodeState::Installing {
            return Err(InventoryError::Conflict(format!(
                "install {install_id} of {} is {}, not running",
                rec.hostname,
                rec.state.as_str()
            )));
        }
        Ok(rec)
    }

    /// Applies one progress event from the installer, after checking its token.
    pub fn record_event(
        &self,
        install_id: &str,
        token: &str,
        ev: &ProgressEvent,
    ) -> Result<NodeRecord, InventoryError> {
        let _w = self.write_lock()?;
        let mut rec = self
            .store
            .by_install(install_id)?
            .ok_or_else(|| InventoryError::UnknownInstall(install_id.into()))?;
        if rec.token.as_deref() != Some(token) {
            return Err(InventoryError::BadToken(install_id.into()));
        }
        let ev = &capped(ev);
        rec.stage = Some(ev.step.as_str().into());
        rec.reported_at = Some(now());
        self.track_copy(&mut rec, install_id, ev);
        rec.queue = match ev.kind {
            EventKind::Queued { position, queued } => Some([position, queued]),
            _ => None,
        };
        match &ev.kind {
            EventKind::Queued { .. } => Self::transition(&mut rec, Transition::Progress)?,
            EventKind::Started | EventKind::Done => {
                Self::transition(&mut rec, Transition::Progress)?
            }
            EventKind::Progress {
                done_bytes,
                total_bytes,
            } => {
                Self::transition(&mut rec, Transition::Progress)?;
                rec.done_bytes = *done_bytes;
                rec.total_bytes = *total_bytes;
            }
            EventKind::Installed { serial, host_keys } => {
                Self::transition(&mut rec, Transition::Installed)?;
                rec.serial = Some(*serial);
                rec.installed_at = Some(now());
                rec.install_rsync = None;
                // The new install's keys replace the old ones, also when it
                // reported none: whatever the disk held before is gone.
                let (keys, refused) = crate::fleet::ssh::known_hosts::parse_all(host_keys);
                rec.host_keys = keys.iter().map(|k| k.line()).collect();
                rec.host_key_fingerprints = keys.iter().map(|k| k.describe()).collect();
                for why in refused {
                    tracing::warn!(mac = %rec.mac, hostname = %rec.hostname, "host key in the installed report ignored: {why}");
                }
            }
            EventKind::Failed {
                error,
                console_tail,
            } => {
                Self::transition(&mut rec, Transition::Failed)?;
                rec.install_rsync = None;
                rec.last_error = Some(error.clone());
                rec.console_tail = console_tail.clone();
            }
        }
        let mut event = serde_json::to_value(ev).unwrap_or_default();
        event["install_id"] = json!(install_id);
        // Byte counters tick every few seconds: keep them out of the history table.
        // So is a queue place, which changes whenever a copy ends.
        if matches!(
            ev.kind,
            EventKind::Progress { .. } | EventKind::Queued { .. }
        ) {
            rec.updated = now();
            self.store.save(&rec, None)?;
            let _ = self.changes.send(NodeChange::Saved(Box::new(rec.public())));
            return Ok(rec);
        }
        self.commit(rec, event)
    }

    /// Feeds the copy's reports to its rate estimate and puts the ETA and rate
    /// on the record; the copy's end leaves its average rate there.
    fn track_copy(&self, rec: &mut NodeRecord, install_id: &str, ev: &ProgressEvent) {
        let mut rates = self.rates.lock().unwrap_or_else(|p| p.into_inner());
        match (&ev.kind, ev.step) {
            (
                EventKind::Progress {
                    done_bytes,
                    total_bytes,
                },
                crate::wire::Step::Copy,
            ) => {
                let rate = rates.entry(install_id.to_string()).or_default();
                rate.add(ev.elapsed_ms, *done_bytes);
                let current = rate.rate();
                rec.copy_rate = current.map(|r| r as u64);
                rec.eta_secs = match progress::eta(current, *done_bytes, *total_bytes) {
                    progress::Eta::Remaining(s) => Some(s),
                    progress::Eta::Finished => Some(0),
                    progress::Eta::Unknown => None,
                };
            }
            (EventKind::Done, crate::wire::Step::Copy) => {
                if let Some(rate) = rates.remove(install_id) {
                    rec.copy_rate = rate.average().map(|r| r as u64);
                }
                rec.eta_secs = None;
            }
            (EventKind::Installed { .. } | EventKind::Failed { .. }, _) => {
                rates.remove(install_id);
                rec.eta_secs = None;
            }
            _ => {}
        }
    }

    pub fn phone_home(&self, ph: &PhoneHome) -> Result<NodeRecord, InventoryError> {
        let _w = self.write_lock()?;
        let mut rec = self
            .store
            .get(&ph.mac)?
            .ok_or_else(|| InventoryError::UnknownNode(ph.mac.clone()))?;
        let boot_id = limits::truncate(&ph.boot_id, limits::MAX_TEXT);
        let hostname = limits::truncate(&ph.hostname, limits::MAX_TEXT);
        rec.booted_at = Some(now());
        rec.boot_id = Some(boot_id.clone());
        rec.serial = Some(ph.serial);
        let event = json!({"kind": "booted", "hostname": hostname, "serial": ph.serial, "boot_id": boot_id});
        self.commit(rec, event)
    }

    /// Applies an operator's request; the history row names who asked (`by`), if known.
    fn apply(
        &self,
        mac: &str,
        action: OperatorAction,
        by: Option<&str>,
    ) -> Result<NodeRecord, InventoryError> {
        let (t, kind) = match action {
            OperatorAction::Reinstall => (Transition::RequestReinstall, "reinstall_requested"),
            OperatorAction::Approve => (Transition::Approve, "approved"),
            OperatorAction::Ignore => (Transition::Ignore, "ignored"),
        };
        let _w = self.write_lock()?;
        let mut rec = self
            .store
            .get(mac)?
            .ok_or_else(|| InventoryError::UnknownNode(mac.into()))?;
        Self::transition(&mut rec, t)?;
        match t {
            Transition::Approve | Transition::RequestReinstall => rec.approved = true,
            Transition::Ignore => rec.approved = false,
            _ => {}
        }
        if t == Transition::RequestReinstall {
            // The running install (if any) can no longer report.
            rec.install_id = None;
            rec.token = None;
            rec.stage = None;
            rec.install_rsync = None;
        }
        let mut event = json!({"kind": kind});
        if let Some(by) = by {
            event["by"] = by.into();
        }
        self.commit(rec, event)
    }

    /// An operator's request (reinstall, approve, ignore), recorded in the
    /// node's history with their name.
    pub fn operator_action(
        &self,
        mac: &str,
        action: OperatorAction,
        by: &str,
    ) -> Result<NodeRecord, InventoryError> {
        self.apply(mac, action, Some(by))
    }

    /// Adds a history row about something done to the node outside the server
    /// (an operator's `rollout exec` or `sync` over SSH); the record is unchanged.
    pub fn note(&self, mac: &str, event: serde_json::Value) -> Result<(), InventoryError> {
        let _w = self.write_lock()?;
        let rec = self
            .store
            .get(mac)?
            .ok_or_else(|| InventoryError::UnknownNode(mac.into()))?;
        self.store.save(&rec, Some(&event))?;
        Ok(())
    }

    /// The node installs again on its next boot.
    pub fn request_reinstall(&self, mac: &str) -> Result<NodeRecord, InventoryError> {
        self.apply(mac, OperatorAction::Reinstall, None)
    }

    pub fn approve(&self, mac: &str) -> Result<NodeRecord, InventoryError> {
        self.apply(mac, OperatorAction::Approve, None)
    }

    pub fn ignore(&self, mac: &str) -> Result<NodeRecord, InventoryError> {
        self.apply(mac, OperatorAction::Ignore, None)
    }

    pub fn remove(&self, mac: &str) -> Result<(), InventoryError> {
        let _w = self.write_lock()?;
        if !self.store.delete(mac)? {
            return Err(InventoryError::UnknownNode(mac.into()));
        }
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(mac);
        let _ = self.changes.send(NodeChange::Removed { mac: mac.into() });
        Ok(())
    }

    /// Marks installs that stopped reporting as failed. Returns the nodes it failed.
    pub fn sweep_timeouts(&self, now: u64) -> Result<Vec<NodeRecord>, InventoryError> {
        let limit = self.policy.install_timeout_secs;
        let stale: Vec<NodeRecord> = self
            .store
            .list()?
            .into_iter()
            .filter(|n| n.state == NodeState::Installing && now.saturating_sub(n.updated) >= limit)
            .collect();
        let mut failed = vec![];
        for n in stale {
            let _w = self.write_lock()?;
            // Re-read under the lock: a report may have arrived meanwhile.
            let Some(mut rec) = self.store.get(&n.mac)? else {
                continue;
            };
            if rec.state != NodeState::Installing || now.saturating_sub(rec.updated) < limit {
                continue;
            }
            Self::transition(&mut rec, Transition::TimedOut)?;
            let stage = rec.stage.clone().unwrap_or_default();
            rec.last_error = Some(format!(
                "timed out: no report for {limit} s during {stage}; check the node's console, then `rollout node reinstall {}`",
                rec.hostname
            ));
            rec.token = None;
            rec.install_rsync = None;
            let event = json!({"kind": "timed_out", "stage": stage});
            failed.push(self.commit(rec, event)?);
        }
        Ok(failed)
    }
}

/// `ev` with its free text (message, error, console tail) cut to the store's limits.
fn capped(ev: &ProgressEvent) -> ProgressEvent {
    let kind = match &ev.kind {
        EventKind::Failed {
            error,
            console_tail,
        } => EventKind::Failed {
            error: limits::truncate(error, limits::MAX_TEXT),
            console_tail: limits::cap_console(console_tail),
        },
        k => k.clone(),
    };
    ProgressEvent {
        step: ev.step,
        kind,
        message: limits::truncate(&ev.message, limits::MAX_TEXT),
        elapsed_ms: ev.elapsed_ms,
    }
}

/// Runs [`Inventory::sweep_timeouts`] every `period` until cancelled.
pub async fn timeout_sweeper(
    inventory: std::sync::Arc<Inventory>,
    period: std::time::Duration,
    clock: impl Fn() -> u64 + Send + 'static,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (inv, now) = (inventory.clone(), clock());
        let swept = tokio::task::spawn_blocking(move || inv.sweep_timeouts(now)).await;
        match swept
            .unwrap_or_else(|e| Err(InventoryError::Conflict(format!("sweep task failed: {e}"))))
        {
            Ok(failed) => {
                for n in failed {
                    tracing::warn!(mac = %n.mac, hostname = %n.hostname, "{}", n.last_error.as_deref().unwrap_or("install timed out"));
                }
            }
            Err(e) => tracing::warn!("timeout sweep failed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests;
