//! Durable state in `{state_dir}/rollout.db` (SQLite, WAL, synchronous=FULL): a
//! write that returned is on disk, so a kill -9 right after an ACK loses nothing.

use crate::dhcp::leases::{Lease, LeaseState, LeaseStore};
use rusqlite::{params, Connection, OptionalExtension};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the state database {path}: {source}; check that the state_dir exists and is writable")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("state database error: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("state database holds a bad value in {what}: {value:?}")]
    Corrupt { what: &'static str, value: String },
}

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

pub struct SqliteLeaseStore {
    conn: Connection,
}

impl SqliteLeaseStore {
    pub fn open(path: &Path) -> Result<SqliteLeaseStore, StoreError> {
        Ok(SqliteLeaseStore { conn: open(path)? })
    }
}

impl LeaseStore for SqliteLeaseStore {
    fn save(&mut self, lease: &Lease) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO leases (ip, mac, expires, state) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(ip) DO UPDATE SET mac = ?2, expires = ?3, state = ?4",
            params![
                lease.ip.to_string(),
                lease.mac,
                lease.expires as i64,
                lease.state.as_str()
            ],
        )?;
        Ok(())
    }

    fn load_all(&mut self) -> Result<Vec<Lease>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT ip, mac, expires, state FROM leases")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, String>(3)?,
            ))
        })?;
        let mut out = vec![];
        for row in rows {
            let (ip, mac, expires, state) = row?;
            let ip: Ipv4Addr = ip.parse().map_err(|_| StoreError::Corrupt {
                what: "leases.ip",
                value: ip.clone(),
            })?;
            let state = LeaseState::parse(&state).ok_or(StoreError::Corrupt {
                what: "leases.state",
                value: state.clone(),
            })?;
            out.push(Lease {
                ip,
                mac,
                expires: expires.max(0) as u64,
                state,
            });
        }
        Ok(out)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("rollout.db");
        let lease = Lease {
            ip: "10.0.0.5".parse().unwrap(),
            mac: "52:54:00:00:00:01".into(),
            expires: 12345,
            state: LeaseState::Bound,
        };
        {
            let mut s = SqliteLeaseStore::open(&db).unwrap();
            s.save(&lease).unwrap();
            let mut changed = lease.clone();
            changed.expires = 99999;
            s.save(&changed).unwrap();
        }
        let mut s = SqliteLeaseStore::open(&db).unwrap();
        let all = s.load_all().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].expires, 99999);
        assert_eq!(all[0].mac, lease.mac);
    }

    #[test]
    fn unwritable_state_dir_names_the_path() {
        let e = SqliteLeaseStore::open(Path::new("/nonexistent-dir/rollout.db"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("/nonexistent-dir/rollout.db"), "{e}");
    }
}
