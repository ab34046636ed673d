//! Where leases, node records (with their history) and operators are kept:
//! SQLite in `{state_dir}/rollout.db` (the default, one server) or a
//! PostgreSQL database several servers share (`[store] url`).
//!
//! Both implement the DHCP side's two traits, [`LeaseStore`] (load, single
//! write) and [`BatchStore`] (one transaction per group commit), so `dhcp`
//! decides what to write and this module only how. With PostgreSQL the database
//! is also the arbiter between servers: a write that would take an address
//! another MAC holds unexpired is refused ([`StoreError::Taken`]), not applied.

pub mod health;
pub mod pg;
pub mod postgres;
pub mod sqlite;

use crate::config::PgTarget;
use crate::dhcp::commit::BatchStore;
use crate::dhcp::leases::LeaseStore;
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
    /// `url` is shown without its password.
    #[error("cannot connect to the lease database {url}: {cause}; check that PostgreSQL runs there and accepts connections from this host, that the user and database in the url exist (pg_hba.conf allows them), and that [store] password_file holds the user's password")]
    Connect { url: String, cause: String },
    #[error("cannot read [store] password_file {path}: {source}; create it holding the database user's password (one line), mode 0600")]
    PasswordFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("lease database {url} failed: {source}; rollout reconnects on the next write, check that PostgreSQL is up")]
    Postgres {
        url: String,
        source: ::postgres::Error,
    },
    #[error("cannot apply schema migration {version} to the lease database {url}: {source}; check that the user may create tables in the database")]
    Migrate {
        url: String,
        version: i32,
        source: ::postgres::Error,
    },
    #[error("the lease database {url} has schema version {found}, newer than this rollout knows ({known}); upgrade rollout on this server to the version the other servers run")]
    SchemaTooNew { url: String, found: i32, known: i32 },
    /// Another server (or another of this server's clients, known only to the
    /// database) holds `ip`: nothing was written for it and nothing is acknowledged.
    #[error("address {ip} is held in the shared lease database by {holder}; not granted (the client is offered another address when it asks again)")]
    Taken { ip: Ipv4Addr, holder: String },
    #[error("the lease writer thread is gone; restart rollout serve")]
    WriterGone,
}

/// An address a batch did not write because another MAC holds it in the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub ip: Ipv4Addr,
    pub holder: String,
}

impl Refusal {
    pub fn error(&self) -> StoreError {
        StoreError::Taken {
            ip: self.ip,
            holder: self.holder.clone(),
        }
    }
}

/// Which backend holds the leases: chosen from the validated config.
#[derive(Debug, Clone)]
pub enum Backend {
    /// `{state_dir}/rollout.db`.
    Sqlite(PathBuf),
    /// Boxed: a parsed url is some 300 bytes, a path a few dozen.
    Postgres(Box<PgTarget>),
}

impl Backend {
    pub fn new(state_dir: &Path, shared: Option<&PgTarget>) -> Backend {
        match shared {
            Some(pg) => Backend::Postgres(Box::new(pg.clone())),
            None => Backend::Sqlite(state_dir.join("rollout.db")),
        }
    }

    /// A connection for loading and single writes. With PostgreSQL this also
    /// applies the schema migrations, so it fails (naming the url) when the
    /// database cannot be reached: `serve` then refuses to start.
    pub fn lease_store(&self) -> Result<Box<dyn LeaseStore>, StoreError> {
        Ok(match self {
            Backend::Sqlite(path) => Box::new(sqlite::SqliteLeaseStore::open(path)?),
            Backend::Postgres(pg) => Box::new(postgres::PgLeaseStore::open(pg)?),
        })
    }

    /// A second connection, for the group-commit writer thread. Every opener
    /// migrates (checking the version costs one query), so a reader such as
    /// `rollout exec` finds the tables even before any server ran.
    pub fn batch_store(&self) -> Result<Box<dyn BatchStore>, StoreError> {
        Ok(match self {
            Backend::Sqlite(path) => Box::new(sqlite::SqliteLeaseStore::open(path)?),
            Backend::Postgres(pg) => Box::new(postgres::PgLeaseStore::open(pg)?),
        })
    }

    /// Node records and their history: the state database, or the shared one.
    pub fn node_store(&self) -> Result<Box<dyn crate::inventory::NodeStore>, StoreError> {
        Ok(match self {
            Backend::Sqlite(path) => {
                Box::new(crate::inventory::sqlite::SqliteNodeStore::open(path)?)
            }
            Backend::Postgres(pg) => Box::new(crate::inventory::postgres::PgNodeStore::open(pg)?),
        })
    }

    /// The operators' credentials, wherever the node records are.
    pub fn operators(
        &self,
    ) -> Result<crate::operators::Operators, crate::operators::OperatorError> {
        match self {
            Backend::Sqlite(path) => crate::operators::Operators::open(path),
            Backend::Postgres(pg) => crate::operators::Operators::open_shared(pg),
        }
    }

    /// The lease rollout holds for `ip`, any state (what the HTTP side checks a
    /// requester against).
    pub fn lease_of(&self, ip: Ipv4Addr) -> Result<Option<crate::dhcp::leases::Lease>, StoreError> {
        match self {
            Backend::Sqlite(path) => sqlite::lease_of(path, ip),
            Backend::Postgres(pg) => postgres::PgLeaseStore::open(pg)?.lease_of(ip),
        }
    }

    /// The address of the newest bound lease of `mac` (normalized): how
    /// `rollout exec` reaches a node without a fixed address.
    pub fn bound_ip_of(&self, mac: &str) -> Result<Option<String>, StoreError> {
        match self {
            Backend::Sqlite(path) => sqlite::bound_ip_of(path, mac),
            Backend::Postgres(pg) => postgres::PgLeaseStore::open(pg)?.bound_ip_of(mac),
        }
    }

    /// Where the leases are, for messages: the file, or the url without its password.
    pub fn describe(&self) -> String {
        match self {
            Backend::Sqlite(path) => path.display().to_string(),
            Backend::Postgres(pg) => pg.shown.clone(),
        }
    }
}

/// Runs `f` on a thread of its own when called from a thread of `serve`'s
/// runtime. The blocking PostgreSQL client drives its own small tokio runtime,
/// which must not be entered (or dropped) there; callers of the store need not
/// know. The lease writer, a plain thread, runs `f` in place.
pub(crate) fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    if tokio::runtime::Handle::try_current().is_err() {
        return f();
    }
    std::thread::scope(|s| match s.spawn(f).join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}
