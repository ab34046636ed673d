//! Nodes and their install state, kept in the SQLite store. What the boot
//! services answer (install, or boot from disk) is decided from this record.

use crate::store::{self, StoreError};
use crate::wire::{EventKind, PhoneHome, ProgressEvent};
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Serialize;
use std::path::Path;
use std::sync::Mutex;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// PXE-booted but not declared in the config.
    Discovered,
    /// Will install on its next boot.
    Pending,
    Installing,
    Installed,
    Failed,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Discovered => "discovered",
            NodeState::Pending => "pending",
            NodeState::Installing => "installing",
            NodeState::Installed => "installed",
            NodeState::Failed => "failed",
        }
    }
    fn parse(s: &str) -> NodeState {
        match s {
            "pending" => NodeState::Pending,
            "installing" => NodeState::Installing,
            "installed" => NodeState::Installed,
            "failed" => NodeState::Failed,
            _ => NodeState::Discovered,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeRecord {
    pub mac: String,
    pub hostname: String,
    pub state: NodeState,
    pub image: String,
    pub serial: Option<u64>,
    pub install_id: Option<String>,
    #[serde(skip)]
    pub token: Option<String>,
    pub stage: Option<String>,
    pub done_bytes: u64,
    pub total_bytes: u64,
    pub last_error: Option<String>,
    pub console_tail: Vec<String>,
    pub installs: u64,
    pub install_started: Option<u64>,
    pub installed_at: Option<u64>,
    pub booted_at: Option<u64>,
    pub boot_id: Option<String>,
    pub updated: u64,
}

/// What a node that asks for its iPXE script should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootAction {
    Install,
    LocalDisk,
}

/// Installed nodes boot their disk until someone asks for a reinstall; everything
/// else (new, pending, interrupted or failed installs) gets the installer.
pub fn boot_action(state: NodeState) -> BootAction {
    match state {
        NodeState::Installed => BootAction::LocalDisk,
        _ => BootAction::Install,
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
    #[error("no node with MAC {0}")]
    UnknownNode(String),
}

impl From<rusqlite::Error> for InventoryError {
    fn from(e: rusqlite::Error) -> Self {
        InventoryError::Store(StoreError::Sql(e))
    }
}

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS nodes (
    mac TEXT PRIMARY KEY, hostname TEXT NOT NULL, state TEXT NOT NULL, image TEXT NOT NULL,
    serial INTEGER, install_id TEXT, token TEXT, stage TEXT,
    done_bytes INTEGER NOT NULL DEFAULT 0, total_bytes INTEGER NOT NULL DEFAULT 0,
    last_error TEXT, console_tail TEXT NOT NULL DEFAULT '[]', installs INTEGER NOT NULL DEFAULT 0,
    install_started INTEGER, installed_at INTEGER, booted_at INTEGER, boot_id TEXT,
    updated INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, mac TEXT NOT NULL, install_id TEXT,
    at INTEGER NOT NULL, event TEXT NOT NULL
);
"#;

pub struct Inventory {
    conn: Mutex<Connection>,
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn from_row(r: &Row) -> rusqlite::Result<NodeRecord> {
    let tail: String = r.get("console_tail")?;
    Ok(NodeRecord {
        mac: r.get("mac")?,
        hostname: r.get("hostname")?,
        state: NodeState::parse(&r.get::<_, String>("state")?),
        image: r.get("image")?,
        serial: r.get::<_, Option<i64>>("serial")?.map(|v| v as u64),
        install_id: r.get("install_id")?,
        token: r.get("token")?,
        stage: r.get("stage")?,
        done_bytes: r.get::<_, i64>("done_bytes")? as u64,
        total_bytes: r.get::<_, i64>("total_bytes")? as u64,
        last_error: r.get("last_error")?,
        console_tail: serde_json::from_str(&tail).unwrap_or_default(),
        installs: r.get::<_, i64>("installs")? as u64,
        install_started: r.get::<_, Option<i64>>("install_started")?.map(|v| v as u64),
        installed_at: r.get::<_, Option<i64>>("installed_at")?.map(|v| v as u64),
        booted_at: r.get::<_, Option<i64>>("booted_at")?.map(|v| v as u64),
        boot_id: r.get("boot_id")?,
        updated: r.get::<_, i64>("updated")? as u64,
    })
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    // /dev/urandom never blocks once the system booted; a server without it is broken.
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut buf);
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

impl Inventory {
    pub fn open(db: &Path) -> Result<Inventory, InventoryError> {
        let conn = store::open(db)?;
        conn.execute_batch(SCHEMA)?;
        Ok(Inventory {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, mac: &str) -> Result<Option<NodeRecord>, InventoryError> {
        Ok(self
            .conn()
            .query_row("SELECT * FROM nodes WHERE mac = ?1", [mac], from_row)
            .optional()?)
    }

    pub fn list(&self) -> Result<Vec<NodeRecord>, InventoryError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT * FROM nodes ORDER BY hostname")?;
        let rows = stmt.query_map([], from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Makes sure a record exists for a MAC that just asked for its boot script.
    pub fn ensure(&self, mac: &str, hostname: &str, image: &str, declared: bool) -> Result<NodeRecord, InventoryError> {
        if let Some(rec) = self.get(mac)? {
            return Ok(rec);
        }
        let state = if declared { NodeState::Pending } else { NodeState::Discovered };
        self.conn().execute(
            "INSERT INTO nodes (mac, hostname, state, image, updated) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![mac, hostname, state.as_str(), image, now() as i64],
        )?;
        self.log(mac, None, &serde_json::json!({"kind": "discovered", "state": state.as_str()}))?;
        Ok(self.get(mac)?.expect("just inserted"))
    }

    /// A new install attempt: fresh id and token, state installing.
    pub fn begin_install(&self, mac: &str, image: &str, serial: u64) -> Result<(String, String), InventoryError> {
        let install_id = format!("{}-{}", now(), &random_hex(4));
        let token = random_hex(16);
        let n = self.conn().execute(
            "UPDATE nodes SET state = 'installing', image = ?2, serial = ?3, install_id = ?4, token = ?5,
             stage = 'fetch_plan', done_bytes = 0, total_bytes = 0, last_error = NULL, console_tail = '[]',
             installs = installs + 1, install_started = ?6, updated = ?6 WHERE mac = ?1",
            params![mac, image, serial as i64, install_id, token, now() as i64],
        )?;
        if n == 0 {
            return Err(InventoryError::UnknownNode(mac.into()));
        }
        self.log(mac, Some(&install_id), &serde_json::json!({"kind": "install_started", "image": image, "serial": serial}))?;
        Ok((install_id, token))
    }

    /// Applies one progress event from the installer, after checking its token.
    pub fn record_event(&self, install_id: &str, token: &str, ev: &ProgressEvent) -> Result<NodeRecord, InventoryError> {
        let rec = self
            .conn()
            .query_row("SELECT * FROM nodes WHERE install_id = ?1", [install_id], from_row)
            .optional()?
            .ok_or_else(|| InventoryError::UnknownInstall(install_id.into()))?;
        if rec.token.as_deref() != Some(token) {
            return Err(InventoryError::BadToken(install_id.into()));
        }
        let t = now() as i64;
        {
            let conn = self.conn();
            let step = ev.step.as_str();
            match &ev.kind {
                EventKind::Started | EventKind::Done => {
                    conn.execute("UPDATE nodes SET stage = ?2, updated = ?3 WHERE mac = ?1", params![rec.mac, step, t])?;
                }
                EventKind::Progress { done_bytes, total_bytes } => {
                    conn.execute(
                        "UPDATE nodes SET stage = ?2, done_bytes = ?3, total_bytes = ?4, updated = ?5 WHERE mac = ?1",
                        params![rec.mac, step, *done_bytes as i64, *total_bytes as i64, t],
                    )?;
                }
                EventKind::Installed { serial } => {
                    conn.execute(
                        "UPDATE nodes SET state = 'installed', stage = 'finish', serial = ?2, installed_at = ?3, updated = ?3 WHERE mac = ?1",
                        params![rec.mac, *serial as i64, t],
                    )?;
                }
                EventKind::Failed { error, console_tail } => {
                    conn.execute(
                        "UPDATE nodes SET state = 'failed', stage = ?2, last_error = ?3, console_tail = ?4, updated = ?5 WHERE mac = ?1",
                        params![rec.mac, step, error, serde_json::to_string(console_tail).unwrap_or_default(), t],
                    )?;
                }
            }
        }
        self.log(&rec.mac, Some(install_id), &serde_json::to_value(ev).unwrap_or_default())?;
        Ok(self.get(&rec.mac)?.expect("exists"))
    }

    pub fn phone_home(&self, ph: &PhoneHome) -> Result<NodeRecord, InventoryError> {
        let n = self.conn().execute(
            "UPDATE nodes SET booted_at = ?2, boot_id = ?3, serial = ?4, updated = ?2 WHERE mac = ?1",
            params![ph.mac, now() as i64, ph.boot_id, ph.serial as i64],
        )?;
        if n == 0 {
            return Err(InventoryError::UnknownNode(ph.mac.clone()));
        }
        self.log(&ph.mac, None, &serde_json::to_value(ph).unwrap_or_default())?;
        Ok(self.get(&ph.mac)?.expect("exists"))
    }

    /// The node installs again on its next boot.
    pub fn request_reinstall(&self, mac: &str) -> Result<NodeRecord, InventoryError> {
        let n = self.conn().execute(
            "UPDATE nodes SET state = 'pending', stage = NULL, updated = ?2 WHERE mac = ?1",
            params![mac, now() as i64],
        )?;
        if n == 0 {
            return Err(InventoryError::UnknownNode(mac.into()));
        }
        self.log(mac, None, &serde_json::json!({"kind": "reinstall_requested"}))?;
        Ok(self.get(mac)?.expect("exists"))
    }

    fn log(&self, mac: &str, install_id: Option<&str>, event: &serde_json::Value) -> Result<(), InventoryError> {
        self.conn().execute(
            "INSERT INTO events (mac, install_id, at, event) VALUES (?1, ?2, ?3, ?4)",
            params![mac, install_id, now() as i64, event.to_string()],
        )?;
        Ok(())
    }

    /// The node's history, oldest first: (unix time, event JSON).
    pub fn events(&self, mac: &str) -> Result<Vec<(u64, serde_json::Value)>, InventoryError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT at, event FROM events WHERE mac = ?1 ORDER BY id")?;
        let rows = stmt.query_map([mac], |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?)))?;
        let mut out = vec![];
        for row in rows {
            let (at, ev) = row?;
            out.push((at, serde_json::from_str(&ev).unwrap_or(serde_json::Value::Null)));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Step;

    fn ev(kind: EventKind) -> ProgressEvent {
        ProgressEvent {
            step: Step::Copy,
            kind,
            message: String::new(),
            elapsed_ms: 0,
        }
    }

    #[test]
    fn install_lifecycle_and_token_check_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("rollout.db");
        let inv = Inventory::open(&db).unwrap();
        inv.ensure("52:54:00:00:00:01", "node1", "default", true).unwrap();
        assert_eq!(boot_action(inv.get("52:54:00:00:00:01").unwrap().unwrap().state), BootAction::Install);
        let (id, token) = inv.begin_install("52:54:00:00:00:01", "default", 3).unwrap();
        assert!(matches!(
            inv.record_event(&id, "wrong", &ev(EventKind::Done)),
            Err(InventoryError::BadToken(_))
        ));
        let rec = inv
            .record_event(&id, &token, &ev(EventKind::Progress { done_bytes: 5, total_bytes: 10 }))
            .unwrap();
        assert_eq!((rec.stage.as_deref(), rec.done_bytes), (Some("copy"), 5));
        inv.record_event(&id, &token, &ev(EventKind::Installed { serial: 3 })).unwrap();
        drop(inv);
        let inv = Inventory::open(&db).unwrap();
        let rec = inv.get("52:54:00:00:00:01").unwrap().unwrap();
        assert_eq!(rec.state, NodeState::Installed);
        assert_eq!(boot_action(rec.state), BootAction::LocalDisk);
        inv.request_reinstall("52:54:00:00:00:01").unwrap();
        assert_eq!(
            boot_action(inv.get("52:54:00:00:00:01").unwrap().unwrap().state),
            BootAction::Install
        );
        assert!(inv.events("52:54:00:00:00:01").unwrap().len() >= 5);
    }

    #[test]
    fn failure_keeps_error_and_console_tail() {
        let dir = tempfile::tempdir().unwrap();
        let inv = Inventory::open(&dir.path().join("db")).unwrap();
        inv.ensure("aa:bb:cc:dd:ee:ff", "n", "img", false).unwrap();
        let (id, token) = inv.begin_install("aa:bb:cc:dd:ee:ff", "img", 1).unwrap();
        let rec = inv
            .record_event(
                &id,
                &token,
                &ev(EventKind::Failed {
                    error: "disk too small".into(),
                    console_tail: vec!["line".into()],
                }),
            )
            .unwrap();
        assert_eq!(rec.state, NodeState::Failed);
        assert_eq!(rec.last_error.as_deref(), Some("disk too small"));
        assert_eq!(rec.console_tail, vec!["line".to_string()]);
    }
}
