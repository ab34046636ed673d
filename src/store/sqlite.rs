//! The SQLite backing of [`LeaseStore`]: leases in `{state_dir}/rollout.db`, the
//! `leases` table that `crate::db` creates on open. One server owns the file,
//! so a write simply replaces the row: nobody else can hold the address.

use super::{Refusal, StoreError};
use crate::db;
use crate::dhcp::commit::BatchStore;
use crate::dhcp::leases::{Lease, LeaseState, LeaseStore};
use rusqlite::{params, Connection};
use std::net::Ipv4Addr;
use std::path::Path;

pub struct SqliteLeaseStore {
    conn: Connection,
}

impl SqliteLeaseStore {
    pub fn open(path: &Path) -> Result<SqliteLeaseStore, StoreError> {
        Ok(SqliteLeaseStore {
            conn: db::open(path)?,
        })
    }
}

/// The lease rollout holds for `ip` (any state), read from the database the DHCP
/// server writes before each ACK: what the HTTP side checks a requester against.
pub fn lease_of(db: &Path, ip: Ipv4Addr) -> Result<Option<Lease>, StoreError> {
    use rusqlite::OptionalExtension;
    let row = db::open(db)?
        .query_row(
            "SELECT mac, expires, state FROM leases WHERE ip = ?1",
            [ip.to_string()],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                ))
            },
        )
        .optional()?;
    let Some((mac, expires, state)) = row else {
        return Ok(None);
    };
    let state = LeaseState::parse(&state).ok_or(StoreError::Corrupt {
        what: "leases.state",
        value: state.clone(),
    })?;
    Ok(Some(Lease {
        ip,
        mac,
        expires: expires.max(0) as u64,
        state,
    }))
}

/// The address of the newest bound lease of `mac` (normalized) in `db`,
/// opened read-only: `None` without a database (`rollout exec` on a server
/// that never ran DHCP creates nothing).
pub fn bound_ip_of(db: &Path, mac: &str) -> Result<Option<String>, StoreError> {
    use rusqlite::OptionalExtension;
    if !db.exists() {
        return Ok(None);
    }
    let conn = Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|source| StoreError::Open {
            path: db.to_owned(),
            source,
        })?;
    Ok(conn
        .query_row(
            "SELECT ip FROM leases WHERE lower(replace(mac, '-', ':')) = ?1 AND state = 'bound'
             ORDER BY expires DESC LIMIT 1",
            [mac],
            |r| r.get::<_, String>(0),
        )
        .optional()?)
}

/// The upsert of one lease (cached: prepared once per connection).
const UPSERT: &str = "INSERT INTO leases (ip, mac, expires, state) VALUES (?1, ?2, ?3, ?4)
     ON CONFLICT(ip) DO UPDATE SET mac = ?2, expires = ?3, state = ?4";

fn upsert(conn: &Connection, lease: &Lease) -> Result<(), StoreError> {
    conn.prepare_cached(UPSERT)?.execute(params![
        lease.ip.to_string(),
        lease.mac,
        lease.expires as i64,
        lease.state.as_str()
    ])?;
    Ok(())
}

impl BatchStore for SqliteLeaseStore {
    /// All of `leases` in one transaction: one fsync (WAL, synchronous=FULL)
    /// makes the whole batch durable, or none of it is.
    fn save_batch(&mut self, leases: &[&Lease]) -> Result<Vec<Refusal>, StoreError> {
        let tx = self.conn.transaction()?;
        for lease in leases {
            upsert(&tx, lease)?;
        }
        tx.commit()?;
        Ok(vec![])
    }
}

impl LeaseStore for SqliteLeaseStore {
    fn save(&mut self, lease: &Lease) -> Result<(), StoreError> {
        upsert(&self.conn, lease)
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
        assert_eq!(
            lease_of(&db, lease.ip).unwrap().map(|l| l.expires),
            Some(99999)
        );
        assert_eq!(lease_of(&db, "10.0.0.6".parse().unwrap()).unwrap(), None);
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
