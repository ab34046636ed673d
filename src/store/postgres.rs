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

use super::{Refusal, StoreError};
use crate::config::PgTarget;
use crate::dhcp::commit::BatchStore;
use crate::dhcp::leases::{Lease, LeaseState, LeaseStore};
use postgres::{Client, NoTls, Row};
use std::net::Ipv4Addr;
use std::time::Duration;

/// The schema, one entry per version, applied in order and recorded in
/// `schema_version`. Never edit an entry that shipped: add the next one.
const MIGRATIONS: &[(i32, &str)] = &[(
    1,
    "CREATE TABLE leases (
        ip      TEXT PRIMARY KEY,
        mac     TEXT NOT NULL,
        expires BIGINT NOT NULL,
        state   TEXT NOT NULL
    )",
)];

/// The advisory lock every server takes while it migrates (any constant both
/// sides agree on; this one spells "rollout" in ASCII).
const MIGRATION_LOCK: i64 = 0x0072_6f6c_6c6f_7574;

/// Writes `$1..$4` unless another MAC holds the address unexpired at `$5`
/// (Unix seconds): then no row is affected.
const UPSERT: &str = "INSERT INTO leases (ip, mac, expires, state) VALUES ($1, $2, $3, $4)
     ON CONFLICT (ip) DO UPDATE
        SET mac = EXCLUDED.mac, expires = EXCLUDED.expires, state = EXCLUDED.state
      WHERE leases.mac = EXCLUDED.mac OR leases.expires <= $5 OR leases.state = 'released'";

/// How long a connection attempt may take before the write fails (a batch
/// waiting on a dead host would hold every ACK behind it).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct PgLeaseStore {
    target: PgTarget,
    /// `None` after a failure: the next call connects again.
    client: Option<Client>,
}

impl PgLeaseStore {
    /// Connects and brings the schema up to date (under an advisory lock, so
    /// servers starting together migrate one after the other).
    pub fn open(target: &PgTarget) -> Result<PgLeaseStore, StoreError> {
        let mut store = PgLeaseStore {
            target: target.clone(),
            client: None,
        };
        let shown = target.shown.clone();
        super::off_runtime(|| migrate(store.client()?, &shown))?;
        Ok(store)
    }

    fn client(&mut self) -> Result<&mut Client, StoreError> {
        if !matches!(&self.client, Some(c) if !c.is_closed()) {
            self.client = Some(connect(&self.target)?);
        }
        Ok(self.client.as_mut().expect("connected just above"))
    }

    /// Runs `f` on the connection; a database error drops it (reconnect next
    /// time). Off `serve`'s runtime, whichever thread calls (see `off_runtime`).
    fn with<T: Send>(
        &mut self,
        f: impl FnOnce(&mut Client) -> Result<T, postgres::Error> + Send,
    ) -> Result<T, StoreError> {
        super::off_runtime(|| {
            let result = f(self.client()?);
            result.map_err(|source| {
                self.client = None;
                StoreError::Postgres {
                    url: self.target.shown.clone(),
                    source,
                }
            })
        })
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

impl Drop for PgLeaseStore {
    /// Defensive: the client's runtime must not be dropped on a thread of
    /// `serve`'s runtime (tokio refuses to block there), and the DHCP core
    /// holding this store may be dropped wherever its last handle goes.
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            super::off_runtime(move || drop(client));
        }
    }
}

fn connect(target: &PgTarget) -> Result<Client, StoreError> {
    let mut config = target.config.clone();
    if let Some(path) = &target.password_file {
        let password =
            std::fs::read_to_string(path).map_err(|source| StoreError::PasswordFile {
                path: path.clone(),
                source,
            })?;
        config.password(password.trim_end_matches(['\r', '\n']));
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    config.connect(NoTls).map_err(|e| StoreError::Connect {
        url: target.shown.clone(),
        cause: cause_chain(&e),
    })
}

/// `e` and its sources: the client's own message is often just "error connecting to server".
fn cause_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let msg = s.to_string();
        if !text.contains(&msg) {
            text = format!("{text}: {msg}");
        }
        source = s.source();
    }
    text
}

/// The schema version recorded in the database (0: none yet).
fn version_of(client: &mut impl postgres::GenericClient) -> Result<i32, postgres::Error> {
    let exists: bool = client
        .query_one("SELECT to_regclass('schema_version') IS NOT NULL", &[])?
        .get(0);
    if !exists {
        return Ok(0);
    }
    Ok(client
        .query_one("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[])?
        .get(0))
}

fn migrate(client: &mut Client, shown: &str) -> Result<(), StoreError> {
    let known = MIGRATIONS.last().map_or(0, |(v, _)| *v);
    let err = |version| {
        move |source| StoreError::Migrate {
            url: shown.to_string(),
            version,
            source,
        }
    };
    let too_new = |found| StoreError::SchemaTooNew {
        url: shown.to_string(),
        found,
        known,
    };
    // Up to date (every opener but the first): no lock, no transaction.
    match version_of(client).map_err(err(0))? {
        current if current == known => return Ok(()),
        current if current > known => return Err(too_new(current)),
        _ => {}
    }
    let mut tx = client.transaction().map_err(err(0))?;
    // Held until commit: a second server waits here, then finds the work done.
    tx.query("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(err(0))?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY)")
        .map_err(err(0))?;
    let current = version_of(&mut tx).map_err(err(0))?;
    if current > known {
        return Err(too_new(current));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tx.batch_execute(sql).map_err(err(*version))?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES ($1)",
            &[version],
        )
        .map_err(err(*version))?;
        tracing::info!("lease database {shown}: schema migrated to version {version}");
    }
    tx.commit().map_err(err(known))
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
