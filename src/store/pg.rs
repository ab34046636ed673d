//! One connection to the shared PostgreSQL database (`[store] url`) and the
//! schema every server migrates to at startup. The lease store, the node store
//! and the operator table each hold a [`PgConn`] of their own: a failed query
//! drops that connection and the next call connects again, so a database that
//! went away and came back needs no restart.

use super::StoreError;
use crate::config::PgTarget;
use postgres::{Client, NoTls};
use std::time::Duration;

/// The schema, one entry per version, applied in order and recorded in
/// `schema_version`. Never edit an entry that shipped: add the next one.
const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        "CREATE TABLE leases (
            ip      TEXT PRIMARY KEY,
            mac     TEXT NOT NULL,
            expires BIGINT NOT NULL,
            state   TEXT NOT NULL
        )",
    ),
    // Node records, their history and the operators' token hashes: what every
    // server's dashboard, API and CLI show and steer (see `inventory::postgres`).
    (
        2,
        "CREATE TABLE nodes (
            mac        TEXT PRIMARY KEY,
            install_id TEXT,
            record     TEXT NOT NULL
        );
        CREATE INDEX nodes_install ON nodes (install_id);
        CREATE TABLE history (
            id    BIGSERIAL PRIMARY KEY,
            mac   TEXT NOT NULL,
            at    BIGINT NOT NULL,
            event TEXT NOT NULL
        );
        CREATE INDEX history_mac ON history (mac, id);
        CREATE TABLE operators (
            name       TEXT PRIMARY KEY,
            role       TEXT NOT NULL,
            token_hash TEXT NOT NULL UNIQUE,
            created    BIGINT NOT NULL
        )",
    ),
    // Power requests one server relays to the server holding the node's BMC
    // (see `power::relay`).
    (
        3,
        "CREATE TABLE power_requests (
            id         BIGSERIAL PRIMARY KEY,
            mac        TEXT NOT NULL,
            action     TEXT NOT NULL,
            by_name    TEXT NOT NULL,
            by_role    TEXT NOT NULL,
            asked      BIGINT NOT NULL,
            claimed_by TEXT,
            status     INTEGER,
            body       TEXT
        )",
    ),
];

/// The advisory lock every server takes while it migrates (any constant both
/// sides agree on; this one spells "rollout" in ASCII).
const MIGRATION_LOCK: i64 = 0x0072_6f6c_6c6f_7574;

/// How long a connection attempt may take before the call fails (a batch
/// waiting on a dead host would hold every ACK behind it).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection made on first use and again after any failure.
pub struct PgConn {
    target: PgTarget,
    client: Option<Client>,
}

impl PgConn {
    /// Connects and brings the schema up to date (under an advisory lock, so
    /// servers starting together migrate one after the other).
    pub fn open(target: &PgTarget) -> Result<PgConn, StoreError> {
        let mut conn = PgConn {
            target: target.clone(),
            client: None,
        };
        let shown = target.shown.clone();
        super::off_runtime(|| migrate(conn.client()?, &shown))?;
        Ok(conn)
    }

    /// The url without its password, for messages.
    pub fn shown(&self) -> &str {
        &self.target.shown
    }

    fn client(&mut self) -> Result<&mut Client, StoreError> {
        if !matches!(&self.client, Some(c) if !c.is_closed()) {
            self.client = Some(connect(&self.target)?);
        }
        Ok(self.client.as_mut().expect("connected just above"))
    }

    /// Runs `f` on the connection; a database error drops it (reconnect next
    /// time). A connection the database closed since its last use (it
    /// restarted) is replaced and `f` runs once more: what failed on a closed
    /// connection did not commit, and rollout's writes are whole rows (a lease,
    /// a record), so the one case where the commit went through and only its
    /// answer was lost writes the same row again (or one history line twice).
    /// Off `serve`'s runtime, whichever thread calls (see `off_runtime`).
    pub fn with<T: Send>(
        &mut self,
        f: impl Fn(&mut Client) -> Result<T, postgres::Error> + Send + Sync,
    ) -> Result<T, StoreError> {
        super::off_runtime(|| {
            let reused = self.client.as_ref().is_some_and(|c| !c.is_closed());
            let mut result = f(self.client()?);
            let closed = |e: &postgres::Error, c: &Option<Client>| {
                e.is_closed() || c.as_ref().is_none_or(Client::is_closed)
            };
            if matches!(&result, Err(e) if reused && closed(e, &self.client)) {
                self.client = None;
                result = f(self.client()?);
            }
            result.map_err(|source| {
                self.client = None;
                StoreError::Postgres {
                    url: self.target.shown.clone(),
                    source,
                }
            })
        })
    }

    /// Forgets the connection (the next call makes a new one).
    pub fn reset(&mut self) {
        if let Some(client) = self.client.take() {
            super::off_runtime(move || drop(client));
        }
    }
}

impl Drop for PgConn {
    /// Defensive: the client's runtime must not be dropped on a thread of
    /// `serve`'s runtime (tokio refuses to block there), and a store holding
    /// this connection may be dropped wherever its last handle goes.
    fn drop(&mut self) {
        self.reset();
    }
}

/// A new connection to `target`, its password read from the password file.
pub fn connect(target: &PgTarget) -> Result<Client, StoreError> {
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

/// Listens on `channel` until `stop` is set, on a connection of its own,
/// reconnecting after any failure: `connected` runs after each
/// (re)connection (to catch up on what was sent while not listening), `note`
/// for each notification's payload. A quiet connection is checked every few
/// seconds, so a database gone without closing the socket is noticed.
pub fn listen(
    target: &PgTarget,
    channel: &str,
    stop: &std::sync::atomic::AtomicBool,
    mut connected: impl FnMut(&mut Client),
    mut note: impl FnMut(&mut Client, &str),
) {
    use postgres::fallible_iterator::FallibleIterator;
    use std::sync::atomic::Ordering;
    use std::time::Instant;
    let mut warned = false;
    while !stop.load(Ordering::Relaxed) {
        let listening = connect(target).and_then(|mut c| {
            c.batch_execute(&format!("LISTEN {channel}"))
                .map(|_| c)
                .map_err(|source| StoreError::Postgres {
                    url: target.shown.clone(),
                    source,
                })
        });
        let mut client = match listening {
            Ok(c) => c,
            Err(e) => {
                if !warned {
                    tracing::warn!(
                        "not following {channel} from other servers: {e}; retrying every second"
                    );
                    warned = true;
                }
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        if warned {
            tracing::info!(url = %target.shown, "following {channel} from other servers again");
            warned = false;
        }
        connected(&mut client);
        let mut last_check = Instant::now();
        while !stop.load(Ordering::Relaxed) && !client.is_closed() {
            let payloads: Result<Vec<String>, _> = client
                .notifications()
                .timeout_iter(Duration::from_millis(250))
                .map(|n| Ok(n.payload().to_string()))
                .collect();
            let Ok(payloads) = payloads else { break };
            for payload in payloads {
                note(&mut client, &payload);
            }
            if last_check.elapsed() > Duration::from_secs(5) {
                last_check = Instant::now();
                if client.batch_execute("").is_err() {
                    break;
                }
            }
        }
    }
}
