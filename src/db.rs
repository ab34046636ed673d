//! Durable state in `{state_dir}/rollout.db` (SQLite, WAL, synchronous=FULL): a
//! write that returned is on disk, so a kill -9 right after an ACK loses nothing.

use rusqlite::{Connection, OptionalExtension};
use std::path::Path;

pub use crate::store::StoreError;

/// The tables every opener needs. `leases` is written by the DHCP server
/// (`store::sqlite`) but created here, on every open, so readers such as
/// `rollout exec` find it even on a server that runs with DHCP off.
const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS leases (
    ip      TEXT PRIMARY KEY,
    mac     TEXT NOT NULL,
    expires INTEGER NOT NULL,
    state   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS kv (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"#;

/// Opens (creating if needed) the database with the durability settings rollout relies on.
pub fn open(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(|source| StoreError::Open {
        path: path.to_owned(),
        source,
    })?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
}

/// Small key/value settings that must survive restarts (e.g. the admin token).
pub fn kv_get(conn: &Connection, key: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row("SELECT value FROM kv WHERE key = ?1", [key], |r| r.get(0))
        .optional()?)
}

pub fn kv_set(conn: &Connection, key: &str, value: &str) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO kv (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = ?2",
        [key, value],
    )?;
    Ok(())
}
