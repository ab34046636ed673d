//! Both store backends for conformance suites: SQLite in a temp dir and a real
//! PostgreSQL server the test starts (`testkit::postgres`). A body written
//! once runs on each through [`conformance!`].
// Not every test file that includes `common` runs a conformance suite.
#![allow(unused_macros, unused_imports)]

use rollout::config::{PgTarget, StoreConfig};
use rollout::store::Backend;
use testkit::postgres::TempPostgres;

/// One backend and what keeps it alive (its temp dir, its server).
pub struct Fixture {
    pub backend: Backend,
    pub pg: Option<TempPostgres>,
    pub dir: tempfile::TempDir,
}

impl Fixture {
    pub fn sqlite() -> Option<Fixture> {
        let dir = tempfile::tempdir().unwrap();
        Some(Fixture {
            backend: Backend::new(dir.path(), None),
            pg: None,
            dir,
        })
    }

    /// `None` (skipped, said so) when not strict and PostgreSQL is missing;
    /// under CI a failure (`TempPostgres::available`).
    pub fn postgres() -> Option<Fixture> {
        if !TempPostgres::available() {
            return None;
        }
        let pg = TempPostgres::start();
        let dir = tempfile::tempdir().unwrap();
        Some(Fixture {
            backend: Backend::new(dir.path(), Some(&target(&pg.url()))),
            pg: Some(pg),
            dir,
        })
    }

    /// Whether several servers share this store.
    pub fn shared(&self) -> bool {
        self.pg.is_some()
    }

    /// The database process restarted (PostgreSQL) or the file closed and
    /// reopened (SQLite): what a server restart sees.
    pub fn restart(&self) {
        if let Some(pg) = &self.pg {
            pg.stop();
            pg.resume();
        }
    }
}

pub fn target(url: &str) -> PgTarget {
    PgTarget::try_from(&StoreConfig {
        url: url.into(),
        password_file: None,
    })
    .unwrap()
}

/// Each body once per backend: `$name::sqlite` and `$name::postgres`. The
/// test file must have `Fixture` in scope.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn sqlite() {
                if let Some(f) = super::Fixture::sqlite() {
                    super::$name(&f);
                }
            }
            #[test]
            fn postgres() {
                if let Some(f) = super::Fixture::postgres() {
                    super::$name(&f);
                }
            }
        }
    )*};
}
pub(crate) use conformance;
