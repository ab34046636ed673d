//! The PostgreSQL backing of [`LeaseStore`] and [`BatchStore`]: leases in a
//! database several rollout servers share (`[store] url`).
//!
//! The `leases` table's primary key is the address, and a write goes through
//! only if the row is free, expired, released or already this MAC's: the
//! database, not any one server's memory, decides who holds an address, so two
//! servers answering on one L2 never ACK one address to two MACs. A refused
//! write is reported (never applied); its packet goes unacknowledged and the
//! server reads the table back, learning the other server's lease.
//!
//! A connection that fails is dropped and made again on the next write: while
//! PostgreSQL is away every batch fails (nothing is ACKed), and once it is
//! back the next batch goes through.

use super::pg::PgConn;
use super::{Refusal, StoreError};
use crate::config::PgTarget;
use crate::dhcp::commit::BatchStore;
use crate::dhcp::leases::{Lease, LeaseState, LeaseStore};
use postgres::{Client, Row};
use std::net::Ipv4Addr;

/// Writes `$1..$4` unless another MAC holds the address unexpired at `$5`
/// (Unix seconds): then no row is affected.
const UPSERT: &str = "INSERT INTO leases (ip, mac, expires, state) VALUES ($1, $2, $3, $4)
     ON CONFLICT (ip) DO UPDATE
        SET mac = EXCLUDED.mac, expires = EXCLUDED.expires, state = EXCLUDED.state
      WHERE leases.mac = EXCLUDED.mac OR leases.expires <= $5 OR leases.state = 'released'";

pub struct PgLeaseStore {
    conn: PgConn,
}

impl PgLeaseStore {
    /// Connects and brings the schema up to date (see [`PgConn::open`]).
    pub fn open(target: &PgTarget) -> Result<PgLeaseStore, StoreError> {
        Ok(PgLeaseStore {
            conn: PgConn::open(target)?,
        })
    }

    fn with<T: Send>(
        &mut self,
        f: impl Fn(&mut Client) -> Result<T, postgres::Error> + Send + Sync,
    ) -> Result<T, StoreError> {
        self.conn.with(f)
    }

    /// The lease held for `ip` (any state), if any.
    pub fn lease_of(&mut self, ip: Ipv4Addr) -> Result<Option<Lease>, StoreError> {
        let row = self.with(|c| {
            c.query_opt(
                "SELECT ip, mac, expires, state FROM leases WHERE ip = $1",
                &[&ip.to_string()],
            )
        })?;
        row.as_ref().map(lease).transpose()
    }

    /// The address of the newest bound lease of `mac` (normalized), any server's.
    pub fn bound_ip_of(&mut self, mac: &str) -> Result<Option<String>, StoreError> {
        let row = self.with(|c| {
            c.query_opt(
                "SELECT ip FROM leases WHERE mac = $1 AND state = 'bound'
                 ORDER BY expires DESC LIMIT 1",
                &[&mac],
            )
        })?;
        Ok(row.map(|r| r.get(0)))
    }
}

fn lease(row: &Row) -> Result<Lease, StoreError> {
    let ip: String = row.get(0);
    let state: String = row.get(3);
    Ok(Lease {
        ip: ip.parse().map_err(|_| StoreError::Corrupt {
            what: "leases.ip",
            value: ip.clone(),
        })?,
        mac: row.get(1),
        expires: row.get::<_, i64>(2).max(0) as u64,
        state: LeaseState::parse(&state).ok_or(StoreError::Corrupt {
            what: "leases.state",
            value: state.clone(),
        })?,
    })
}

/// Writes each of `leases` in `tx` (sorted by address, so two servers'
/// batches lock rows in one order and cannot deadlock); returns those the
/// database refused, with who holds them.
fn write_all(
    tx: &mut postgres::Transaction<'_>,
    leases: &[&Lease],
    now: i64,
) -> Result<Vec<Refusal>, postgres::Error> {
    let upsert = tx.prepare(UPSERT)?;
    let mut sorted = leases.to_vec();
    // Stable: two writes of one address keep their order, the last one wins.
    sorted.sort_by_key(|l| u32::from(l.ip));
    let mut refused = vec![];
    for l in sorted {
        let ip = l.ip.to_string();
        let expires = l.expires.min(i64::MAX as u64) as i64;
        let params: [&(dyn postgres::types::ToSql + Sync); 5] =
            [&ip, &l.mac, &expires, &l.state.as_str(), &now];
        if tx.execute(&upsert, &params)? == 0 {
            let holder: String = tx
                .query_one("SELECT mac FROM leases WHERE ip = $1", &[&ip])?
                .get(0);
            refused.push(Refusal {
                ip: l.ip,
                holder: if holder.is_empty() {
                    "a quarantine (a client declined it)".into()
                } else {
                    holder
                },
            });
        }
    }
    Ok(refused)
}

fn now() -> i64 {
    crate::clock::now_unix().min(i64::MAX as u64) as i64
}

impl BatchStore for PgLeaseStore {
    /// One transaction: every lease not refused is durable once it commits
    /// (PostgreSQL's own synchronous commit), or none is.
    fn save_batch(&mut self, leases: &[&Lease]) -> Result<Vec<Refusal>, StoreError> {
        let now = now();
        self.with(|c| {
            let mut tx = c.transaction()?;
            let refused = write_all(&mut tx, leases, now)?;
            tx.commit()?;
            Ok(refused)
        })
    }
}

impl LeaseStore for PgLeaseStore {
    fn save(&mut self, lease: &Lease) -> Result<(), StoreError> {
        match self.save_batch(&[lease])?.first() {
            Some(refusal) => Err(refusal.error()),
            None => Ok(()),
        }
    }

    fn load_all(&mut self) -> Result<Vec<Lease>, StoreError> {
        let rows = self.with(|c| c.query("SELECT ip, mac, expires, state FROM leases", &[]))?;
        rows.iter().map(lease).collect()
    }
}
