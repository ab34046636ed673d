//! The lease store against both backends: the same conformance bodies run on
//! SQLite and on a real PostgreSQL server the test starts (`testkit::postgres`),
//! then what only a shared database does: two "servers" allocating from one
//! small range at once, and PostgreSQL going away and coming back mid-way.

mod common;

use common::backends::{conformance, Fixture};

use rollout::config::{PgTarget, StoreConfig};
use rollout::dhcp::commit::{BatchStore, GroupCommit};
use rollout::dhcp::leases::{Lease, LeaseState, LeaseStore, LeaseTable, Range};
use rollout::store::{Backend, StoreError};
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::mpsc;

/// What the lease suite asks of a backend.
impl Fixture {
    fn store(&self) -> Box<dyn LeaseStore> {
        self.backend.lease_store().unwrap()
    }

    fn batch(&self) -> Box<dyn BatchStore> {
        self.backend.batch_store().unwrap()
    }
}

fn now() -> u64 {
    rollout::clock::now_unix()
}

fn ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 9, 0, n)
}

fn lease(n: u8, mac: &str, expires: u64, state: LeaseState) -> Lease {
    Lease {
        ip: ip(n),
        mac: mac.into(),
        expires,
        state,
    }
}

fn bound(n: u8, mac: &str) -> Lease {
    lease(n, mac, now() + 3600, LeaseState::Bound)
}

fn sorted(mut v: Vec<Lease>) -> Vec<Lease> {
    v.sort_by_key(|l| u32::from(l.ip));
    v
}

conformance!(
    save_then_load,
    batch_save,
    a_lease_held_by_another_mac,
    expiry_or_release_frees_an_address,
    restart_keeps_everything,
    newest_bound_address_of_a_mac,
);

fn save_then_load(f: &Fixture) {
    let mut s = f.store();
    assert_eq!(s.load_all().unwrap(), vec![]);
    let a = bound(1, "52:54:00:00:00:01");
    let declined = lease(2, "", now() + 600, LeaseState::Declined);
    s.save(&a).unwrap();
    s.save(&declined).unwrap();
    // The same MAC renewing overwrites its own lease.
    let renewed = Lease {
        expires: a.expires + 100,
        ..a.clone()
    };
    s.save(&renewed).unwrap();
    assert_eq!(
        sorted(s.load_all().unwrap()),
        vec![renewed.clone(), declined]
    );
    assert_eq!(f.backend.lease_of(ip(1)).unwrap(), Some(renewed));
    assert_eq!(f.backend.lease_of(ip(9)).unwrap(), None);
}

fn batch_save(f: &Fixture) {
    let mut b = f.batch();
    let leases: Vec<Lease> = (1..=5)
        .map(|n| bound(n, &format!("52:54:00:00:00:0{n}")))
        .collect();
    let refs: Vec<&Lease> = leases.iter().collect();
    assert_eq!(b.save_batch(&refs).unwrap(), vec![]);
    // A second connection (the DHCP table's) reads what the writer's wrote.
    assert_eq!(sorted(f.store().load_all().unwrap()), leases);
}

fn a_lease_held_by_another_mac(f: &Fixture) {
    let mut s = f.store();
    let mut b = f.batch();
    let mine = bound(1, "52:54:00:00:00:01");
    s.save(&mine).unwrap();
    let theirs = bound(1, "52:54:00:00:00:02");
    let free = bound(2, "52:54:00:00:00:03");
    if !f.shared() {
        // One server owns its SQLite file: its table already decided, the write stands.
        assert_eq!(b.save_batch(&[&theirs, &free]).unwrap(), vec![]);
        assert_eq!(f.backend.lease_of(ip(1)).unwrap(), Some(theirs));
        return;
    }
    let refused = b.save_batch(&[&theirs, &free]).unwrap();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(
        (refused[0].ip, refused[0].holder.as_str()),
        (ip(1), "52:54:00:00:00:01")
    );
    let e = s.save(&theirs).unwrap_err();
    assert!(
        matches!(&e, StoreError::Taken { ip: i, holder } if *i == ip(1) && holder == "52:54:00:00:00:01"),
        "{e:?}"
    );
    assert!(e.to_string().contains("10.9.0.1 is held"), "{e}");
    // Nothing was overwritten; the batch's other lease was written.
    assert_eq!(f.backend.lease_of(ip(1)).unwrap(), Some(mine));
    assert_eq!(f.backend.lease_of(ip(2)).unwrap(), Some(free));
}

fn expiry_or_release_frees_an_address(f: &Fixture) {
    let mut s = f.store();
    s.save(&lease(
        1,
        "52:54:00:00:00:01",
        now() - 10,
        LeaseState::Bound,
    ))
    .unwrap();
    s.save(&lease(
        2,
        "52:54:00:00:00:01",
        now() + 3600,
        LeaseState::Released,
    ))
    .unwrap();
    let b1 = bound(1, "52:54:00:00:00:02");
    let b2 = bound(2, "52:54:00:00:00:03");
    s.save(&b1).unwrap();
    s.save(&b2).unwrap();
    assert_eq!(sorted(s.load_all().unwrap()), vec![b1, b2]);
}

fn restart_keeps_everything(f: &Fixture) {
    let leases = vec![
        bound(1, "52:54:00:00:00:01"),
        lease(2, "", now() + 600, LeaseState::Declined),
        lease(3, "52:54:00:00:00:03", now() + 60, LeaseState::Released),
    ];
    f.batch()
        .save_batch(&leases.iter().collect::<Vec<_>>())
        .unwrap();
    f.restart();
    assert_eq!(sorted(f.store().load_all().unwrap()), leases);
    let table = LeaseTable::load(f.store(), HashMap::new()).unwrap();
    assert_eq!(table.by_mac("52:54:00:00:00:01"), Some(&leases[0]));
}

/// What `rollout exec` reaches a node without a fixed address at.
fn newest_bound_address_of_a_mac(f: &Fixture) {
    let mac = "52:54:00:00:00:01";
    assert_eq!(f.backend.bound_ip_of(mac).unwrap(), None);
    let mut s = f.store();
    s.save(&lease(1, mac, now() + 100, LeaseState::Bound))
        .unwrap();
    s.save(&lease(2, mac, now() + 200, LeaseState::Bound))
        .unwrap();
    s.save(&lease(3, mac, now() + 300, LeaseState::Released))
        .unwrap();
    s.save(&lease(
        4,
        "52:54:00:00:00:02",
        now() + 400,
        LeaseState::Bound,
    ))
    .unwrap();
    assert_eq!(f.backend.bound_ip_of(mac).unwrap(), Some("10.9.0.2".into()));
}

/// Writes `lease` through `table`'s group commit and waits: `Ok` once it is
/// durable, the store's error otherwise.
fn commit(table: &mut LeaseTable, lease: Lease) -> Result<(), String> {
    table.record(lease).unwrap();
    let (tx, rx) = mpsc::channel();
    let writes = table.take_pending();
    table.writer().unwrap().submit(
        writes,
        Box::new(move |r| tx.send(r.map_err(|e| e.to_string())).unwrap()),
    );
    rx.recv().unwrap()
}

fn server_table(f: &Fixture) -> LeaseTable {
    let mut t = LeaseTable::load(f.store(), HashMap::new()).unwrap();
    t.group_commit(GroupCommit::start(f.batch(), Default::default()).unwrap());
    t
}

/// Two servers, each with its own table (and memory of who has what), take
/// addresses for their own clients from one range of 6 at once; 10 clients.
/// The database refuses every address the other server got first: no address
/// is ever granted to two MACs, and every grant is what the database holds.
#[test]
fn two_servers_on_one_database_never_grant_one_address_twice() {
    let Some(f) = Fixture::postgres() else { return };
    let range = Range {
        first: ip(10),
        last: ip(15),
    };
    let start = std::sync::Barrier::new(2);
    let granted: Vec<Vec<(Ipv4Addr, String)>> = std::thread::scope(|s| {
        let servers: Vec<_> = (0..2u8)
            .map(|server| {
                let (f, start) = (&f, &start);
                s.spawn(move || {
                    let mut table = server_table(f);
                    let mut mine = vec![];
                    start.wait();
                    for client in 0..5u8 {
                        let mac = format!("52:54:00:00:{server:02x}:{client:02x}");
                        // The client retries as DHCP clients do, each time offered anew.
                        for _ in 0..20 {
                            let Some(addr) = table.choose(&mac, Some(&range), None, now()) else {
                                break;
                            };
                            let lease = Lease {
                                ip: addr,
                                mac: mac.clone(),
                                expires: now() + 3600,
                                state: LeaseState::Bound,
                            };
                            match commit(&mut table, lease) {
                                Ok(()) => {
                                    mine.push((addr, mac.clone()));
                                    break;
                                }
                                Err(e) => {
                                    assert!(
                                        e.contains("is held in the shared lease database"),
                                        "{e}"
                                    );
                                    // What the handler does after a refused batch.
                                    assert!(table.writer().unwrap().take_failed());
                                    table.reload().unwrap();
                                }
                            }
                        }
                    }
                    mine
                })
            })
            .collect();
        servers.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut holder: HashMap<Ipv4Addr, String> = HashMap::new();
    for (addr, mac) in granted.iter().flatten() {
        if let Some(other) = holder.insert(*addr, mac.clone()) {
            panic!("{addr} granted to both {other} and {mac}: {granted:?}");
        }
        assert_eq!(
            f.backend.lease_of(*addr).unwrap().map(|l| l.mac),
            Some(mac.clone())
        );
    }
    assert_eq!(holder.len(), 6, "the whole range is granted: {granted:?}");
    assert!(
        granted.iter().all(|g| !g.is_empty()),
        "both servers granted some: {granted:?}"
    );
}

/// PostgreSQL stops under a serving table: the write fails with an error
/// naming the database, nothing is reported durable; once it is back the
/// writer reconnects, and the leases from before are all there.
#[test]
fn postgres_going_away_fails_writes_until_it_returns() {
    let Some(f) = Fixture::postgres() else { return };
    let pg = f.pg.as_ref().unwrap();
    let mut table = server_table(&f);
    commit(&mut table, bound(1, "52:54:00:00:00:01")).unwrap();
    commit(&mut table, bound(2, "52:54:00:00:00:02")).unwrap();

    pg.stop();
    for n in 3..5 {
        let e = commit(&mut table, bound(n, &format!("52:54:00:00:00:0{n}"))).unwrap_err();
        assert!(
            e.contains("lease database postgres://postgres@/postgres"),
            "{e}"
        );
        assert!(e.contains("PostgreSQL"), "says what to check: {e}");
    }
    assert!(table.writer().unwrap().take_failed());
    assert!(table.reload().is_err(), "nothing to read back from");

    pg.resume();
    table.reload().unwrap();
    let macs: Vec<(Ipv4Addr, String)> = sorted(table.leases().cloned().collect())
        .into_iter()
        .map(|l| (l.ip, l.mac))
        .collect();
    assert_eq!(
        macs,
        vec![
            (ip(1), "52:54:00:00:00:01".to_string()),
            (ip(2), "52:54:00:00:00:02".to_string())
        ],
        "the leases from before, and none of the failed ones"
    );
    let third = bound(3, "52:54:00:00:00:03");
    commit(&mut table, third.clone()).unwrap();
    let held: Vec<Ipv4Addr> = sorted(f.store().load_all().unwrap())
        .into_iter()
        .map(|l| l.ip)
        .collect();
    assert_eq!(
        held,
        vec![ip(1), ip(2), ip(3)],
        "the failed 10.9.0.4 was never written"
    );
    assert_eq!(f.backend.lease_of(ip(3)).unwrap(), Some(third));
}

/// Servers starting together migrate one at a time: every opener succeeds
/// and the schema is recorded once.
#[test]
fn concurrent_startups_migrate_once() {
    let Some(f) = Fixture::postgres() else { return };
    std::thread::scope(|s| {
        let openers: Vec<_> = (0..4).map(|_| s.spawn(|| f.store())).collect();
        for o in openers {
            o.join().unwrap();
        }
    });
    f.store().save(&bound(1, "52:54:00:00:00:01")).unwrap();
    let mut client =
        postgres::Client::connect(&f.pg.as_ref().unwrap().url(), postgres::NoTls).unwrap();
    let versions: Vec<i32> = client
        .query("SELECT version FROM schema_version ORDER BY version", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, vec![1, 2, 3], "each migration applied once");
}

/// A database a newer rollout migrated further is not written by this one:
/// it stops, saying to upgrade, instead of writing a schema it does not know.
#[test]
fn a_newer_schema_is_refused() {
    let Some(f) = Fixture::postgres() else { return };
    f.store();
    let mut admin =
        postgres::Client::connect(&f.pg.as_ref().unwrap().url(), postgres::NoTls).unwrap();
    admin
        .batch_execute("INSERT INTO schema_version (version) VALUES (99)")
        .unwrap();
    let e = f.backend.lease_store().err().unwrap();
    assert!(
        matches!(
            e,
            StoreError::SchemaTooNew {
                found: 99,
                known: 3,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(
        e.to_string().contains("upgrade rollout on this server"),
        "{e}"
    );
}

/// `rollout serve` with a `[store]` nobody answers at: refuses to start, the
/// error naming the url (not its password) and what to check.
#[test]
fn serve_refuses_to_start_without_its_database() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::loopback::write_config(dir.path(), testkit::ports::free_port());
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(
        "[store]\nurl = \"postgresql://rollout:hunter2@/rollout?host=/nonexistent-rollout-sock\"\n",
    );
    std::fs::write(&cfg, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rollout"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("cannot connect to the lease database postgresql://rollout:***@/rollout?host=/nonexistent-rollout-sock"),
        "{stderr}"
    );
    assert!(
        stderr.contains("check that PostgreSQL runs there"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "the password leaked: {stderr}");
}

/// `rollout check-config` (the checks `serve` makes) refuses a `[store]`
/// whose password file is missing or readable by everyone, naming the key.
#[test]
fn check_config_refuses_a_bad_password_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::loopback::write_config(dir.path(), testkit::ports::free_port());
    let base = std::fs::read_to_string(&cfg).unwrap();
    let secret = dir.path().join("db.password");
    let check = |store: String| {
        std::fs::write(&cfg, format!("{base}[store]\n{store}")).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_rollout"))
            .args(["check-config", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        (out.status.success(), text)
    };
    let url = "url = \"postgres://rollout@db1/rollout\"\n";
    let with_file = format!("{url}password_file = {:?}\n", secret);
    let (ok, text) = check(with_file.clone());
    assert!(
        !ok && text.contains("store.password_file") && text.contains("cannot read"),
        "{text}"
    );
    assert!(
        text.contains("the lease database user's password"),
        "{text}"
    );
    std::fs::write(&secret, "s3cret\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, text) = check(with_file.clone());
    assert!(!ok && text.contains("readable by every user"), "{text}");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (ok, text) = check(with_file);
    assert!(ok, "{text}");
    let (ok, text) = check("url = \"postgres://db1/rollout\"\n".into());
    assert!(
        !ok && text.contains("store.url") && text.contains("names no user"),
        "{text}"
    );
}

/// `password_file` is what authenticates a user that needs a password: the
/// right one connects, a wrong one is refused with PostgreSQL's reason, and
/// neither shows up in the error.
#[test]
fn password_file_authenticates() {
    let Some(f) = Fixture::postgres() else { return };
    let pg = f.pg.as_ref().unwrap();
    let mut admin = postgres::Client::connect(&pg.url(), postgres::NoTls).unwrap();
    admin
        .batch_execute("CREATE ROLE rollout LOGIN PASSWORD 'right-horse'; GRANT ALL ON SCHEMA public TO rollout")
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("db.password");
    let as_rollout = |password: &str| {
        std::fs::write(&secret, format!("{password}\n")).unwrap();
        let target = PgTarget::try_from(&StoreConfig {
            url: pg.url_for("rollout"),
            password_file: Some(secret.clone()),
        })
        .unwrap();
        Backend::new(dir.path(), Some(&target)).lease_store()
    };
    let mut s = as_rollout("right-horse").unwrap();
    s.save(&bound(1, "52:54:00:00:00:01")).unwrap();
    let e = as_rollout("wrong-horse").err().unwrap().to_string();
    assert!(e.contains("password authentication failed"), "{e}");
    assert!(
        e.contains("cannot connect to the lease database postgres://rollout@/postgres"),
        "{e}"
    );
    assert!(!e.contains("horse"), "the password leaked: {e}");
}
