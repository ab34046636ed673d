//! The SQLite backing of [`NodeStore`]. A record and its history line are written
//! in one transaction, so a crash leaves either both or neither.

use super::limits::{merge_repeat, HISTORY_KEEP};
use super::{HistoryEntry, NodeRecord, NodeStore};
use crate::db::{self, StoreError};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
use std::sync::Mutex;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS nodes (
    mac TEXT PRIMARY KEY,
    install_id TEXT,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS nodes_install ON nodes (install_id);
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    mac TEXT NOT NULL,
    at INTEGER NOT NULL,
    event TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS history_mac ON history (mac, id);
"#;

pub struct SqliteNodeStore {
    conn: Mutex<Connection>,
}

impl SqliteNodeStore {
    pub fn open(path: &Path) -> Result<SqliteNodeStore, StoreError> {
        let conn = db::open(path)?;
        conn.execute_batch(SCHEMA)?;
        Ok(SqliteNodeStore {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Adds `ev` to the node's history: a repeat of the newest row (the same boot
/// again) updates that row's count and time; otherwise a new row is added and
/// rows beyond the newest [`HISTORY_KEEP`] are dropped.
fn append_history(
    tx: &rusqlite::Transaction<'_>,
    mac: &str,
    at: u64,
    ev: &serde_json::Value,
) -> Result<(), StoreError> {
    let last: Option<(i64, String)> = tx
        .query_row(
            "SELECT id, event FROM history WHERE mac = ?1 ORDER BY id DESC LIMIT 1",
            [mac],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let merged = last.and_then(|(id, text)| {
        let last = serde_json::from_str(&text).ok()?;
        Some((id, merge_repeat(&last, ev, at)?))
    });
    if let Some((id, merged)) = merged {
        tx.execute(
            "UPDATE history SET event = ?2 WHERE id = ?1",
            params![id, merged.to_string()],
        )?;
        return Ok(());
    }
    tx.execute(
        "INSERT INTO history (mac, at, event) VALUES (?1, ?2, ?3)",
        params![mac, at as i64, ev.to_string()],
    )?;
    tx.execute(
        "DELETE FROM history WHERE mac = ?1 AND id <= (
             SELECT id FROM history WHERE mac = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
        params![mac, HISTORY_KEEP as i64],
    )?;
    Ok(())
}

fn decode(json: String) -> Result<NodeRecord, StoreError> {
    serde_json::from_str(&json).map_err(|_| StoreError::Corrupt {
        what: "nodes.record",
        value: json,
    })
}

impl NodeStore for SqliteNodeStore {
    fn get(&self, mac: &str) -> Result<Option<NodeRecord>, StoreError> {
        let json: Option<String> = self
            .conn()
            .query_row("SELECT record FROM nodes WHERE mac = ?1", [mac], |r| {
                r.get(0)
            })
            .optional()?;
        json.map(decode).transpose()
    }

    fn by_install(&self, install_id: &str) -> Result<Option<NodeRecord>, StoreError> {
        let json: Option<String> = self
            .conn()
            .query_row(
                "SELECT record FROM nodes WHERE install_id = ?1",
                [install_id],
                |r| r.get(0),
            )
            .optional()?;
        json.map(decode).transpose()
    }

    fn list(&self) -> Result<Vec<NodeRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT record FROM nodes")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        let mut out = rows.map(|r| decode(r?)).collect::<Result<Vec<_>, _>>()?;
        out.sort_by(|a, b| a.hostname.cmp(&b.hostname));
        Ok(out)
    }

    fn save(
        &self,
        rec: &NodeRecord,
        history: Option<&serde_json::Value>,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let json = serde_json::to_string(rec).expect("records serialize");
        tx.execute(
            "INSERT INTO nodes (mac, install_id, record) VALUES (?1, ?2, ?3)
             ON CONFLICT(mac) DO UPDATE SET install_id = ?2, record = ?3",
            params![rec.mac, rec.install_id, json],
        )?;
        if let Some(ev) = history {
            append_history(&tx, &rec.mac, rec.updated, ev)?;
        }
        tx.commit()?;
        Ok(())
    }

    fn delete(&self, mac: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let n = tx.execute("DELETE FROM nodes WHERE mac = ?1", [mac])?;
        tx.execute("DELETE FROM history WHERE mac = ?1", [mac])?;
        tx.commit()?;
        Ok(n > 0)
    }

    fn history(&self, mac: &str) -> Result<Vec<HistoryEntry>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT at, event FROM history WHERE mac = ?1 ORDER BY id")?;
        let rows = stmt.query_map([mac], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = vec![];
        for row in rows {
            let (at, ev) = row?;
            out.push(HistoryEntry {
                at: at.max(0) as u64,
                event: serde_json::from_str(&ev).unwrap_or(serde_json::Value::String(ev)),
            });
        }
        Ok(out)
    }
}
