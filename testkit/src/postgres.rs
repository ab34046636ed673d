//! A throwaway PostgreSQL server for tests of the shared lease store: Debian's
//! PostgreSQL 15 initialized into a temp dir as the `postgres` user, listening
//! on a unix socket in that dir only (no TCP port, nothing another test or the
//! host's own cluster could collide with), stopped and removed on drop.
//!
//! ```no_run
//! if !testkit::postgres::TempPostgres::available() {
//!     return; // not strict, and PostgreSQL is not installed: skipped, and said so
//! }
//! let pg = testkit::postgres::TempPostgres::start();
//! let url = pg.url(); // postgres://postgres@/postgres?host=/tmp/…/sock
//! ```

use crate::prereq;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Where Debian's postgresql-15 puts the server programs (not on `PATH`).
pub const BIN: &str = "/usr/lib/postgresql/15/bin";
/// The Debian package that provides [`BIN`].
pub const PACKAGE: &str = "postgresql-15";

pub struct TempPostgres {
    dir: PathBuf,
}

impl TempPostgres {
    /// Whether this machine can run one: root (to run as `postgres`), runuser,
    /// and the server programs. Otherwise [`prereq::missing`] (a failure in
    /// strict mode) and false.
    #[track_caller]
    pub fn available() -> bool {
        prereq::require_root("PostgreSQL runs as the postgres user")
            && prereq::require_known_tools(&["runuser"])
            && prereq::require_file(Path::new(BIN).join("initdb"), PACKAGE)
            && prereq::require_file(Path::new(BIN).join("pg_ctl"), PACKAGE)
    }

    /// Initializes and starts a server. Panics, with its log, if it does not come up.
    pub fn start() -> TempPostgres {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "rollout-pg-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sock")).expect("create the PostgreSQL temp dir");
        let pg = TempPostgres { dir };
        run(Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&pg.dir));
        pg.as_postgres("initdb", |c| {
            c.args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
                .arg(pg.data());
        });
        // The superuser (what tests set up with) needs no password; every
        // other role must give its own, so a test can tell a password was sent.
        std::fs::write(
            pg.data().join("pg_hba.conf"),
            "local all postgres trust\nlocal all all scram-sha-256\n",
        )
        .expect("write pg_hba.conf");
        pg.resume();
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The directory of the server's unix socket.
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.join("sock")
    }

    /// A url for the superuser (no password) and its default database, through the socket.
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    /// A url for `user` (which must give its password) and the default database.
    pub fn url_for(&self, user: &str) -> String {
        format!(
            "postgres://{user}@/postgres?host={}",
            self.socket_dir().display()
        )
    }

    /// Stops the server (fast: open connections are cut, as when it crashes
    /// or is restarted under a running client). [`TempPostgres::resume`] starts it again.
    pub fn stop(&self) {
        self.as_postgres("pg_ctl", |c| {
            c.args(["stop", "-m", "fast", "-w", "-D"]).arg(self.data());
        });
    }

    /// Starts the (stopped) server again on the same data and socket.
    pub fn resume(&self) {
        let options = format!(
            "-c listen_addresses='' -c unix_socket_directories='{}' -c fsync=off",
            self.socket_dir().display()
        );
        self.as_postgres("pg_ctl", |c| {
            c.args(["start", "-w", "-t", "60", "-o", &options, "-l"])
                .arg(self.dir.join("log"))
                .arg("-D")
                .arg(self.data());
        });
    }

    /// Runs `program` of [`BIN`] as the postgres user; panics with its output
    /// and the server log if it fails.
    fn as_postgres(&self, program: &str, args: impl FnOnce(&mut Command)) {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"])
            .arg(Path::new(BIN).join(program));
        args(&mut cmd);
        if let Err(e) = try_run(&mut cmd) {
            let log = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
            panic!("{e}\nserver log:\n{log}");
        }
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"])
            .arg(Path::new(BIN).join("pg_ctl"))
            .args(["stop", "-m", "immediate", "-D"])
            .arg(self.data());
        // Already stopped is fine: the test may have stopped it.
        let _ = cmd.output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn try_run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

fn run(cmd: &mut Command) {
    if let Err(e) = try_run(cmd) {
        panic!("{e}");
    }
}
