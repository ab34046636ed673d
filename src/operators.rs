//! Named operator credentials with a role, as sudo delegated root: `read` sees
//! everything, `maintain` also reinstalls, `admin` also manages nodes and
//! operators. Kept in the state database (`operators` table) as SHA-256 hashes
//! only: a token is shown once, when it is made. The server looks the hash up on
//! every request, so `rollout operator revoke` takes effect at once.

use crate::db::StoreError;
use rusqlite::{Connection, OptionalExtension};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Mutex;

/// What a credential may do; each role includes the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
#[derive(utoipa::ToSchema)]
pub enum Role {
    /// See everything: dashboard, nodes, history, images, live events.
    Read,
    /// Also act on nodes: reinstall (the operations that keep the fleet running).
    Maintain,
    /// Also change what the fleet is: add, remove, approve and ignore nodes; operators.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Read, Role::Maintain, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Maintain => "maintain",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name the admin token acts under (in history rows and the log); no operator may take it.
pub const ADMIN_NAME: &str = "admin";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Operator {
    pub name: String,
    pub role: Role,
    /// Unix seconds.
    pub created: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("operator {0:?} already exists; revoke it first (`rollout operator revoke {0}`) to issue a new token")]
    Exists(String),
    #[error("no operator {0:?}; `rollout operator list` shows them")]
    Unknown(String),
    #[error("operator name {0:?} is not valid; use 1-64 letters, digits, '.', '_' or '-', and not \"admin\" (the admin token's name)")]
    BadName(String),
}

impl From<rusqlite::Error> for OperatorError {
    fn from(e: rusqlite::Error) -> Self {
        OperatorError::Store(StoreError::Sql(e))
    }
}

/// SHA-256 of a token, in hex: what the store keeps instead of the token.
pub fn token_hash(token: &str) -> String {
    Sha256::digest(token.trim().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name != ADMIN_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS operators (
    name       TEXT PRIMARY KEY,
    role       TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created    INTEGER NOT NULL
);";

/// The operator table: in the state database, or in the PostgreSQL database
/// several servers share (`[store] url`), where a token made on one server
/// works on all and a revoke on one takes effect on all.
pub struct Operators {
    table: Table,
}

enum Table {
    Sqlite(Mutex<Connection>),
    Postgres(Box<Mutex<crate::store::pg::PgConn>>),
}

/// The columns every query reads, in this order.
const COLUMNS: &str = "name, role, created";

impl Operators {
    pub fn open(db: &Path) -> Result<Operators, OperatorError> {
        let conn = crate::db::open(db)?;
        conn.execute_batch(SCHEMA)?;
        Ok(Operators {
            table: Table::Sqlite(Mutex::new(conn)),
        })
    }

    /// The shared table (created by the schema migrations).
    pub fn open_shared(target: &crate::config::PgTarget) -> Result<Operators, OperatorError> {
        Ok(Operators {
            table: Table::Postgres(Box::new(Mutex::new(crate::store::pg::PgConn::open(
                target,
            )?))),
        })
    }

    /// Makes a credential and returns its token: the only time it is seen.
    pub fn add(&self, name: &str, role: Role, now: u64) -> Result<String, OperatorError> {
        if !valid_name(name) {
            return Err(OperatorError::BadName(name.into()));
        }
        let token = crate::inventory::random_hex(24);
        let hash = token_hash(&token);
        let inserted = match &self.table {
            Table::Sqlite(conn) => lock(conn).execute(
                "INSERT INTO operators (name, role, token_hash, created) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(name) DO NOTHING",
                rusqlite::params![name, role.as_str(), hash, now as i64],
            )? as u64,
            Table::Postgres(conn) => lock(conn).with(|c| {
                c.execute(
                    "INSERT INTO operators (name, role, token_hash, created) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (name) DO NOTHING",
                    &[&name, &role.as_str(), &hash, &(now.min(i64::MAX as u64) as i64)],
                )
            })?,
        };
        if inserted == 0 {
            return Err(OperatorError::Exists(name.into()));
        }
        Ok(token)
    }

    pub fn list(&self) -> Result<Vec<Operator>, OperatorError> {
        let query = format!("SELECT {COLUMNS} FROM operators ORDER BY name");
        let rows = match &self.table {
            Table::Sqlite(conn) => {
                let conn = lock(conn);
                let mut st = conn.prepare(&query)?;
                let rows = st.query_map([], sqlite_row)?;
                rows.collect::<Result<Vec<_>, _>>()?
            }
            Table::Postgres(conn) => lock(conn)
                .with(|c| c.query(&query, &[]))?
                .iter()
                .map(pg_row)
                .collect(),
        };
        rows.into_iter().map(operator).collect()
    }

    pub fn revoke(&self, name: &str) -> Result<(), OperatorError> {
        let n = match &self.table {
            Table::Sqlite(conn) => {
                lock(conn).execute("DELETE FROM operators WHERE name = ?1", [name])? as u64
            }
            Table::Postgres(conn) => {
                lock(conn).with(|c| c.execute("DELETE FROM operators WHERE name = $1", &[&name]))?
            }
        };
        if n == 0 {
            return Err(OperatorError::Unknown(name.into()));
        }
        Ok(())
    }

    /// The operator whose token hashes to `hash`, if it still exists.
    pub fn by_hash(&self, hash: &str) -> Result<Option<Operator>, OperatorError> {
        let found = match &self.table {
            Table::Sqlite(conn) => lock(conn)
                .query_row(
                    &format!("SELECT {COLUMNS} FROM operators WHERE token_hash = ?1"),
                    [hash],
                    sqlite_row,
                )
                .optional()?,
            Table::Postgres(conn) => lock(conn)
                .with(|c| {
                    c.query_opt(
                        &format!("SELECT {COLUMNS} FROM operators WHERE token_hash = $1"),
                        &[&hash],
                    )
                })?
                .as_ref()
                .map(pg_row),
        };
        found.map(operator).transpose()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A row as read: (name, role, created).
type Row = (String, String, i64);

fn sqlite_row(r: &rusqlite::Row) -> rusqlite::Result<Row> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
}

fn pg_row(r: &postgres::Row) -> Row {
    (r.get(0), r.get(1), r.get(2))
}

fn operator((name, role, created): Row) -> Result<Operator, OperatorError> {
    match Role::parse(&role) {
        Some(role) => Ok(Operator {
            name,
            role,
            created: created.max(0) as u64,
        }),
        None => Err(OperatorError::Store(StoreError::Corrupt {
            what: "operators.role",
            value: role,
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_include_the_ones_below() {
        assert!(Role::Admin > Role::Maintain && Role::Maintain > Role::Read);
        assert_eq!(Role::parse("maintain"), Some(Role::Maintain));
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn a_token_is_stored_as_its_hash_found_by_it_and_gone_once_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("rollout.db");
        let ops = Operators::open(&db).unwrap();
        let token = ops.add("alice", Role::Maintain, 7).unwrap();
        assert_eq!(token.len(), 48);
        let raw = std::fs::read(&db).unwrap_or_default();
        let wal = std::fs::read(dir.path().join("rollout.db-wal")).unwrap_or_default();
        for bytes in [raw, wal] {
            assert!(
                !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
                "the token itself is in the database"
            );
        }
        let alice = ops.by_hash(&token_hash(&token)).unwrap().unwrap();
        assert_eq!((alice.name.as_str(), alice.role), ("alice", Role::Maintain));
        assert!(matches!(
            ops.add("alice", Role::Admin, 8),
            Err(OperatorError::Exists(_))
        ));
        assert!(matches!(
            ops.add("admin", Role::Read, 8),
            Err(OperatorError::BadName(_))
        ));
        assert_eq!(ops.list().unwrap(), vec![alice]);
        ops.revoke("alice").unwrap();
        assert!(ops.by_hash(&token_hash(&token)).unwrap().is_none());
        assert!(matches!(
            ops.revoke("alice"),
            Err(OperatorError::Unknown(_))
        ));
    }
}
