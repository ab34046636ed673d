//! The PostgreSQL backing of [`NodeStore`]: node records and their history in
//! the database several rollout servers share (`[store] url`), so every
//! server's dashboard, API and CLI show and steer every node.
//!
//! Two things only a shared store needs:
//! - **One writer at a time across servers.** The inventory reads a record,
//!   changes it and writes it back; [`NodeStore::lock_writes`] takes a
//!   PostgreSQL advisory lock on a connection of its own for that cycle, so a
//!   report arriving at server A and a reinstall made on server B cannot
//!   overwrite each other.
//! - **Live views.** Every write sends `NOTIFY rollout_nodes` in its
//!   transaction (delivered on commit); [`NodeStore::watch`] listens on a
//!   connection of its own and tells the inventory which records another
//!   server changed, so its dashboards and `rollout watch` see them at once.

use super::limits::{merge_repeat, HISTORY_KEEP};
use super::{HistoryEntry, NodeRecord, NodeStore, Remote, WriteGuard};
use crate::config::PgTarget;
use crate::store::pg::{self, PgConn};
use crate::store::StoreError;
use postgres::{Client, Transaction};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// The channel node changes are announced on; the payload is "ORIGIN MAC",
/// followed by " RECORD" (its JSON, without secrets) when that fits.
const CHANNEL: &str = "rollout_nodes";

/// PostgreSQL's limit on a payload is 8000 bytes; a record with a long
/// console tail or a large hardware report is read back instead.
const MAX_PAYLOAD: usize = 7900;

/// The advisory lock held for one read-modify-write cycle of the inventory
/// ("nodes" in ASCII; any constant every server agrees on).
const WRITE_LOCK: i64 = 0x006e_6f64_6573;

/// How long a cycle waits for another server's before it fails: a server
/// stopped mid-cycle (SIGSTOP, a hung disk) must not hold every other up forever.
const LOCK_TIMEOUT: &str = "10s";

pub struct PgNodeStore {
    target: PgTarget,
    conn: Mutex<PgConn>,
    /// The connection the write lock is held on (see [`NodeStore::lock_writes`]).
    lock: Mutex<PgConn>,
    /// Names this store in its notifications, so its own writes are not
    /// reported back to it as another server's.
    origin: String,
    /// Set when the store is dropped: the listener thread ends.
    stop: Arc<AtomicBool>,
    /// Each call's outcome, for `/healthz`.
    health: crate::store::health::StoreHealth,
}

impl PgNodeStore {
    pub fn open(target: &PgTarget) -> Result<PgNodeStore, StoreError> {
        Ok(PgNodeStore {
            target: target.clone(),
            conn: Mutex::new(PgConn::open(target)?),
            lock: Mutex::new(PgConn::open(target)?),
            origin: super::random_hex(8),
            stop: Arc::default(),
            health: Default::default(),
        })
    }

    fn with<T: Send>(
        &self,
        f: impl Fn(&mut Client) -> Result<T, postgres::Error> + Send + Sync,
    ) -> Result<T, StoreError> {
        self.observed(self.conn.lock().unwrap_or_else(|p| p.into_inner()).with(f))
    }

    /// Records a call's outcome for `/healthz` and passes it on.
    fn observed<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        let outcome = result.as_ref().map(drop).map_err(ToString::to_string);
        self.health.record(outcome, crate::clock::now_unix());
        result
    }
}

impl Drop for PgNodeStore {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn decode(json: String) -> Result<NodeRecord, StoreError> {
    serde_json::from_str(&json).map_err(|_| StoreError::Corrupt {
        what: "nodes.record",
        value: json,
    })
}

/// As the SQLite store does: a repeat of the newest row updates it, else a
/// new row, keeping the newest [`HISTORY_KEEP`].
fn append_history(
    tx: &mut Transaction<'_>,
    mac: &str,
    at: u64,
    ev: &serde_json::Value,
) -> Result<(), postgres::Error> {
    let last = tx.query_opt(
        "SELECT id, event FROM history WHERE mac = $1 ORDER BY id DESC LIMIT 1",
        &[&mac],
    )?;
    let merged = last.and_then(|row| {
        let (id, text): (i64, String) = (row.get(0), row.get(1));
        Some((
            id,
            merge_repeat(&serde_json::from_str(&text).ok()?, ev, at)?,
        ))
    });
    if let Some((id, merged)) = merged {
        tx.execute(
            "UPDATE history SET event = $2 WHERE id = $1",
            &[&id, &merged.to_string()],
        )?;
        return Ok(());
    }
    tx.execute(
        "INSERT INTO history (mac, at, event) VALUES ($1, $2, $3)",
        &[&mac, &(at.min(i64::MAX as u64) as i64), &ev.to_string()],
    )?;
    tx.execute(
        "DELETE FROM history WHERE mac = $1 AND id <= (
             SELECT id FROM history WHERE mac = $1 ORDER BY id DESC LIMIT 1 OFFSET $2)",
        &[&mac, &(HISTORY_KEEP as i64)],
    )?;
    Ok(())
}

impl NodeStore for PgNodeStore {
    fn get(&self, mac: &str) -> Result<Option<NodeRecord>, StoreError> {
        let row = self.with(|c| c.query_opt("SELECT record FROM nodes WHERE mac = $1", &[&mac]))?;
        row.map(|r| decode(r.get(0))).transpose()
    }

    fn by_install(&self, install_id: &str) -> Result<Option<NodeRecord>, StoreError> {
        let row = self.with(|c| {
            c.query_opt(
                "SELECT record FROM nodes WHERE install_id = $1",
                &[&install_id],
            )
        })?;
        row.map(|r| decode(r.get(0))).transpose()
    }

    fn list(&self) -> Result<Vec<NodeRecord>, StoreError> {
        let rows = self.with(|c| c.query("SELECT record FROM nodes", &[]))?;
        let mut out = rows
            .into_iter()
            .map(|r| decode(r.get(0)))
            .collect::<Result<Vec<_>, _>>()?;
        out.sort_by(|a, b| a.hostname.cmp(&b.hostname));
        Ok(out)
    }

    fn save(
        &self,
        rec: &NodeRecord,
        history: Option<&serde_json::Value>,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(rec).expect("records serialize");
        let mut note = format!("{} {}", self.origin, rec.mac);
        let public = serde_json::to_string(&rec.public()).expect("records serialize");
        if note.len() + 1 + public.len() <= MAX_PAYLOAD {
            note = format!("{note} {public}");
        }
        self.with(|c| {
            let mut tx = c.transaction()?;
            tx.execute(
                "INSERT INTO nodes (mac, install_id, record) VALUES ($1, $2, $3)
                 ON CONFLICT (mac) DO UPDATE SET install_id = $2, record = $3",
                &[&rec.mac, &rec.install_id, &json],
            )?;
            if let Some(ev) = history {
                append_history(&mut tx, &rec.mac, rec.updated, ev)?;
            }
            tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &note])?;
            tx.commit()
        })
    }

    fn delete(&self, mac: &str) -> Result<bool, StoreError> {
        let note = format!("{} {}", self.origin, mac);
        self.with(|c| {
            let mut tx = c.transaction()?;
            let n = tx.execute("DELETE FROM nodes WHERE mac = $1", &[&mac])?;
            tx.execute("DELETE FROM history WHERE mac = $1", &[&mac])?;
            tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &note])?;
            tx.commit()?;
            Ok(n > 0)
        })
    }

    fn history(&self, mac: &str) -> Result<Vec<HistoryEntry>, StoreError> {
        let rows = self.with(|c| {
            c.query(
                "SELECT at, event FROM history WHERE mac = $1 ORDER BY id",
                &[&mac],
            )
        })?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let ev: String = r.get(1);
                HistoryEntry {
                    at: r.get::<_, i64>(0).max(0) as u64,
                    event: serde_json::from_str(&ev).unwrap_or(serde_json::Value::String(ev)),
                }
            })
            .collect())
    }

    fn health(&self) -> Option<crate::store::health::StoreHealth> {
        Some(self.health.clone())
    }

    fn lock_writes(&self) -> Result<WriteGuard<'_>, StoreError> {
        let mut conn = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.observed(conn.with(|c| {
            c.batch_execute(&format!("SET lock_timeout = '{LOCK_TIMEOUT}'"))?;
            c.execute("SELECT pg_advisory_lock($1)", &[&WRITE_LOCK])
        }))?;
        Ok(Box::new(Held(conn)))
    }

    fn watch(&self, changed: Box<dyn Fn(Remote) + Send>) -> Result<(), StoreError> {
        let (target, origin, stop) = (self.target.clone(), self.origin.clone(), self.stop.clone());
        std::thread::Builder::new()
            .name("rollout-node-listen".into())
            .spawn(move || listen(&target, &origin, &stop, &*changed))
            .map(drop)
            .map_err(|e| StoreError::Connect {
                url: self.target.shown.clone(),
                cause: format!("cannot start the listener thread: {e}"),
            })
    }
}

/// The write lock of one cycle; released when dropped. If the unlock fails the
/// connection is dropped, which releases it too.
struct Held<'a>(MutexGuard<'a, PgConn>);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if self
            .0
            .with(|c| c.execute("SELECT pg_advisory_unlock($1)", &[&WRITE_LOCK]))
            .is_err()
        {
            self.0.reset();
        }
    }
}

/// Tells `changed` of each record another server wrote or removed, and that
/// anything may have changed after every (re)connection (whatever changed
/// while this server was not listening was missed).
fn listen(target: &PgTarget, origin: &str, stop: &AtomicBool, changed: &dyn Fn(Remote)) {
    pg::listen(
        target,
        CHANNEL,
        stop,
        |_| changed(Remote::Missed),
        |_, payload| {
            let mut parts = payload.splitn(3, ' ');
            let (Some(from), Some(mac)) = (parts.next(), parts.next()) else {
                return;
            };
            if from == origin {
                return;
            }
            match parts
                .next()
                .and_then(|json| serde_json::from_str(json).ok())
            {
                Some(rec) => changed(Remote::Saved(Box::new(rec))),
                None => changed(Remote::Changed(mac.to_string())),
            }
        },
    )
}
