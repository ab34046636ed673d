use super::*;
use crate::wire::Step;
use std::sync::Arc;

const MAC: &str = "52:54:00:00:00:01";

fn ev(step: Step, kind: EventKind) -> ProgressEvent {
    ProgressEvent {
        step,
        kind,
        message: String::new(),
        elapsed_ms: 0,
    }
}

fn declared(mac: &str, hostname: &str) -> NodeRecord {
    NodeRecord::new(mac, hostname, "default", Source::Config, NodeState::Pending)
}

/// A whole install of `serial` whose `installed` report carries `host_keys`.
fn install(inv: &Inventory, mac: &str, serial: u64, host_keys: Vec<String>) -> NodeRecord {
    let rec = inv.begin_install(mac, serial).unwrap();
    inv.record_event(
        rec.install_id.as_deref().unwrap(),
        rec.token.as_deref().unwrap(),
        &ev(Step::Finish, EventKind::Installed { serial, host_keys }),
    )
    .unwrap()
}

/// The JSON of MAC's row, as the database holds it.
fn stored_record(conn: &rusqlite::Connection) -> String {
    conn.query_row("SELECT record FROM nodes WHERE mac = ?1", [MAC], |r| {
        r.get(0)
    })
    .unwrap()
}

fn open(dir: &std::path::Path) -> Inventory {
    Inventory::open(&dir.join("rollout.db"), Policy::default()).unwrap()
}

#[test]
fn install_lifecycle_with_token_check_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let inv = open(dir.path());
    inv.declare(declared(MAC, "node1")).unwrap();
    let rec = inv.begin_install(MAC, 3).unwrap();
    let (id, token) = (rec.install_id.clone().unwrap(), rec.token.clone().unwrap());
    assert!(matches!(
        inv.record_event(&id, "wrong", &ev(Step::Copy, EventKind::Done)),
        Err(InventoryError::BadToken(_))
    ));
    assert!(matches!(
        inv.record_event("nope", &token, &ev(Step::Copy, EventKind::Done)),
        Err(InventoryError::UnknownInstall(_))
    ));
    let rec = inv
        .record_event(
            &id,
            &token,
            &ev(
                Step::Copy,
                EventKind::Progress {
                    done_bytes: 5,
                    total_bytes: 10,
                },
            ),
        )
        .unwrap();
    assert_eq!(
        (rec.state, rec.stage.as_deref(), rec.done_bytes),
        (NodeState::Installing, Some("copy"), 5)
    );
    inv.record_event(
        &id,
        &token,
        &ev(
            Step::Finish,
            EventKind::Installed {
                serial: 3,
                host_keys: vec![],
            },
        ),
    )
    .unwrap();
    drop(inv);

    // As after a crash: a fresh process sees exactly what was acknowledged.
    let inv = open(dir.path());
    let rec = inv.get(MAC).unwrap().unwrap();
    assert_eq!((rec.state, rec.serial), (NodeState::Installed, Some(3)));
    let kinds: Vec<String> = inv
        .history(MAC)
        .unwrap()
        .iter()
        .map(|h| h.event["kind"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(kinds, ["declared", "install_started", "installed"]);
    // A stale report after the install ended is refused by the state machine.
    let e = inv
        .record_event(&id, &token, &ev(Step::Copy, EventKind::Done))
        .unwrap_err()
        .to_string();
    assert!(e.contains("install that is over"), "{e}");
    // Reinstall: pending again, and the old token is dead.
    inv.request_reinstall(MAC).unwrap();
    assert!(matches!(
        inv.record_event(&id, &token, &ev(Step::Copy, EventKind::Done)),
        Err(InventoryError::UnknownInstall(_))
    ));
    assert_eq!(inv.get(MAC).unwrap().unwrap().state, NodeState::Pending);
}

#[test]
fn installed_nodes_refuse_a_new_install_until_reinstall_is_requested() {
    let dir = tempfile::tempdir().unwrap();
    let inv = open(dir.path());
    inv.declare(declared(MAC, "node1")).unwrap();
    install(&inv, MAC, 1, vec![]);
    let e = inv.begin_install(MAC, 1).unwrap_err().to_string();
    assert!(e.contains("request a reinstall first"), "{e}");
}

#[test]
fn failure_keeps_error_and_console_tail() {
    let dir = tempfile::tempdir().unwrap();
    let inv = open(dir.path());
    inv.seen("aa:bb:cc:dd:ee:ff", "node-ddeeff", "img", Some("efi"))
        .unwrap();
    let rec = inv.begin_install("aa:bb:cc:dd:ee:ff", 1).unwrap();
    let failed = EventKind::Failed {
        error: "disk too small".into(),
        console_tail: vec!["line".into()],
    };
    let rec = inv
        .record_event(
            rec.install_id.as_ref().unwrap(),
            rec.token.as_ref().unwrap(),
            &ev(Step::ChooseDisk, failed),
        )
        .unwrap();
    assert_eq!(rec.state, NodeState::Failed);
    assert_eq!(rec.stage.as_deref(), Some("choose_disk"));
    assert_eq!(rec.last_error.as_deref(), Some("disk too small"));
    assert_eq!(rec.console_tail, vec!["line".to_string()]);
    assert_eq!(rec.firmware.as_deref(), Some("efi"));
}

#[test]
fn discovered_machines_are_approved_or_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let inv = open(dir.path());
    let rec = inv
        .seen(
            "aa:00:00:00:00:01",
            "node-000001",
            "default",
            Some("pcbios"),
        )
        .unwrap();
    assert_eq!(
        (rec.state, rec.source),
        (NodeState::Discovered, Source::Discovered)
    );
    assert!(!rec.declared_or_approved(), "nobody vouched for a stranger");
    let approved = inv.approve("aa:00:00:00:00:01").unwrap();
    assert_eq!(approved.state, NodeState::Pending);
    assert!(approved.declared_or_approved());
    // The approval is stored, and lasts through the install it allowed.
    let started = inv.begin_install("aa:00:00:00:00:01", 1).unwrap();
    assert!(started.declared_or_approved());
    inv.seen("aa:00:00:00:00:02", "node-000002", "default", None)
        .unwrap();
    let ignored = inv.ignore("aa:00:00:00:00:02").unwrap();
    assert_eq!(ignored.state, NodeState::Ignored);
    assert!(!ignored.declared_or_approved());
    let e = inv
        .begin_install("aa:00:00:00:00:02", 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("approve it first"), "{e}");
    assert!(matches!(
        inv.approve("ff:ff:ff:ff:ff:ff"),
        Err(InventoryError::UnknownNode(_))
    ));
}

#[test]
fn declarations_refuse_duplicate_hostnames_and_addresses_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let inv = open(dir.path());
    let mut a = declared("aa:00:00:00:00:01", "a");
    a.ip = Some("10.44.0.11".into());
    inv.declare(a).unwrap();
    let e = inv
        .declare(declared("aa:00:00:00:00:02", "a"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("hostname a is already used"), "{e}");
    let mut b = declared("aa:00:00:00:00:02", "b");
    b.ip = Some("10.44.0.11".into());
    let e = inv.declare(b).unwrap_err().to_string();
    assert!(e.contains("10.44.0.11 is already reserved"), "{e}");
    assert_eq!(inv.list().unwrap().len(), 1);
}

#[tokio::test]
async fn stalled_installs_time_out_and_reporting_ones_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let policy = Policy {
        install_timeout_secs: 600,
        ..Policy::default()
    };
    let inv = Arc::new(Inventory::open(&dir.path().join("db"), policy).unwrap());
    inv.declare(declared("aa:00:00:00:00:01", "stalled"))
        .unwrap();
    inv.declare(declared("aa:00:00:00:00:02", "busy")).unwrap();
    inv.begin_install("aa:00:00:00:00:01", 1).unwrap();
    let busy = inv.begin_install("aa:00:00:00:00:02", 1).unwrap();

    // Time is virtual: a clock that follows tokio's (paused) time from the real start.
    let start_wall = now();
    let start = tokio::time::Instant::now();
    let clock = move || start_wall + start.elapsed().as_secs();
    assert!(
        inv.sweep_timeouts(clock()).unwrap().is_empty(),
        "nothing is stale yet"
    );
    tokio::time::pause();
    tokio::time::advance(std::time::Duration::from_secs(599)).await;
    assert!(inv.sweep_timeouts(clock()).unwrap().is_empty());
    tokio::time::advance(std::time::Duration::from_secs(2)).await;
    // The busy node reports just in time (its record's clock is the wall clock,
    // so report at the virtual "now").
    let mut rec = inv.get("aa:00:00:00:00:02").unwrap().unwrap();
    rec.updated = clock();
    inv.store.save(&rec, None).unwrap();
    let failed = inv.sweep_timeouts(clock()).unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].hostname, "stalled");
    assert!(failed[0]
        .last_error
        .as_deref()
        .unwrap()
        .contains("timed out: no report for 600 s during fetch_plan"));
    assert_eq!(
        inv.get("aa:00:00:00:00:02").unwrap().unwrap().state,
        NodeState::Installing
    );
    let _ = busy;

    // The sweeper task does the same on its own.
    let cancel = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(timeout_sweeper(
        inv.clone(),
        std::time::Duration::from_secs(10),
        clock,
        cancel.clone(),
    ));
    tokio::time::advance(std::time::Duration::from_secs(700)).await;
    let mut state = NodeState::Installing;
    for _ in 0..200 {
        tokio::time::advance(std::time::Duration::from_secs(10)).await;
        // The sweep itself runs on a blocking thread in real time.
        std::thread::sleep(std::time::Duration::from_millis(5));
        tokio::task::yield_now().await;
        state = inv.get("aa:00:00:00:00:02").unwrap().unwrap().state;
        if state == NodeState::Failed {
            break;
        }
    }
    assert_eq!(
        state,
        NodeState::Failed,
        "the sweeper task did not time the install out"
    );
    cancel.cancel();
    task.await.unwrap();
}

#[test]
fn serials_being_installed_are_those_of_installing_nodes_of_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let inv = open(dir.path());
    inv.declare(declared(MAC, "node1")).unwrap();
    inv.declare(declared("52:54:00:00:00:02", "node2")).unwrap();
    inv.declare(declared("52:54:00:00:00:03", "node3")).unwrap();
    inv.begin_install(MAC, 3).unwrap();
    // node2 finished installing serial 2: it syncs from the published serial now.
    install(&inv, "52:54:00:00:00:02", 2, vec![]);
    let mut other = declared("52:54:00:00:00:04", "node4");
    other.image = "web".into();
    inv.declare(other).unwrap();
    inv.begin_install("52:54:00:00:00:04", 7).unwrap();

    let records = inv.list().unwrap();
    assert_eq!(
        serials_being_installed(&records, "default"),
        [(3, "node1".to_string())]
    );
    assert_eq!(
        serials_being_installed(&records, "web"),
        [(7, "node4".to_string())]
    );
}

#[test]
fn generated_hostnames_are_stable() {
    assert_eq!(generated_hostname("52:54:00:ab:cd:ef"), "node-abcdef");
}

/// The file's default, the inventory's default and the enum's agree: one constant.
#[test]
fn unknown_machines_have_one_default() {
    use crate::config::{Config, UnknownPolicy};
    let from_file = Config::parse("state_dir = \"/tmp/x\"\n").unwrap();
    assert_eq!(from_file.install.unknown, None, "not written");
    assert_eq!(from_file.install.unknown_policy(), UnknownPolicy::DEFAULT);
    assert_eq!(Policy::default().unknown, UnknownPolicy::DEFAULT);
    assert_eq!(UnknownPolicy::default(), UnknownPolicy::DEFAULT);
    // Strangers on the network wait for an operator; nothing installs unasked.
    assert_eq!(UnknownPolicy::DEFAULT, UnknownPolicy::Approve);
}

/// A rollout.db from before host keys were recorded: its records (JSON in the
/// `record` column) lack the fields; they read as "no keys known", and the next
/// installed report stores the keys, which survive a reopen.
#[test]
fn records_from_before_host_keys_upgrade_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("rollout.db");
    {
        let inv = open(dir.path());
        inv.declare(declared(MAC, "node1")).unwrap();
    }
    let conn = rusqlite::Connection::open(&db).unwrap();
    let json = stored_record(&conn);
    let mut old: serde_json::Value = serde_json::from_str(&json).unwrap();
    old.as_object_mut().unwrap().remove("host_keys");
    old.as_object_mut().unwrap().remove("host_key_fingerprints");
    conn.execute(
        "UPDATE nodes SET record = ?1 WHERE mac = ?2",
        rusqlite::params![old.to_string(), MAC],
    )
    .unwrap();
    drop(conn);

    let inv = open(dir.path());
    let rec = inv.get(MAC).unwrap().unwrap();
    assert!(rec.host_keys.is_empty() && rec.host_key_fingerprints.is_empty());
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJeUcRgfF2JHTkbvqH7RMf6SDu4vRPuuW38K2lsZz5Ju root@node1";
    install(&inv, MAC, 1, vec![key.into(), "not a key".into()]);
    drop(inv);
    let rec = open(dir.path()).get(MAC).unwrap().unwrap();
    assert_eq!(
        rec.host_keys,
        [key.rsplit_once(' ').unwrap().0],
        "stored without the comment, the bad line dropped"
    );
    assert_eq!(
        rec.host_key_fingerprints,
        ["ED25519 SHA256:MrydBtaqk8twABHRd3eXgIipDi0WMRHXxWrxKMZYiy8"]
    );
}

fn pxe_boot_rows(inv: &Inventory, mac: &str) -> Vec<HistoryEntry> {
    inv.history(mac)
        .unwrap()
        .into_iter()
        .filter(|h| h.event["kind"] == "pxe_boot")
        .collect()
}

#[test]
fn repeated_boots_merge_into_one_row_and_history_is_a_ring() {
    let dir = tempfile::tempdir().unwrap();
    let inv = open(dir.path());
    inv.declare(declared(MAC, "node1")).unwrap();
    for _ in 0..5 {
        inv.seen(MAC, "x", "default", Some("efi")).unwrap();
    }
    let rows = pxe_boot_rows(&inv, MAC);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].event["count"], 5);
    // A different boot is a new row.
    inv.seen(MAC, "x", "default", Some("pcbios")).unwrap();
    assert_eq!(pxe_boot_rows(&inv, MAC).len(), 2);

    // Alternating boots never merge: the ring keeps the newest HISTORY_KEEP rows.
    for i in 0..limits::HISTORY_KEEP + 40 {
        let fw = if i % 2 == 0 { "efi" } else { "pcbios" };
        inv.seen(MAC, "x", "default", Some(fw)).unwrap();
    }
    let h = inv.history(MAC).unwrap();
    assert_eq!(h.len(), limits::HISTORY_KEEP);
    // The declaration (the oldest row) is gone, the newest boot is last.
    assert!(h.iter().all(|e| e.event["kind"] == "pxe_boot"));
    assert_eq!(h.last().unwrap().event["firmware"], "pcbios");
    // Other nodes' rows are untouched by this node's ring.
    inv.declare(declared("52:54:00:00:00:02", "node2")).unwrap();
    assert_eq!(inv.history("52:54:00:00:00:02").unwrap().len(), 1);
}

#[test]
fn messages_errors_and_console_tails_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let inv = open(dir.path());
    inv.declare(declared(MAC, "node1")).unwrap();
    let rec = inv.begin_install(MAC, 1).unwrap();
    let (id, token) = (rec.install_id.unwrap(), rec.token.unwrap());
    let mut started = ev(Step::Copy, EventKind::Started);
    started.message = "m".repeat(1 << 20);
    inv.record_event(&id, &token, &started).unwrap();
    let failed = EventKind::Failed {
        error: "e".repeat(1 << 20),
        console_tail: vec!["c".repeat(10_000); 10_000],
    };
    let rec = inv
        .record_event(&id, &token, &ev(Step::Copy, failed))
        .unwrap();
    assert!(rec.last_error.as_ref().unwrap().len() <= limits::MAX_TEXT);
    assert!(rec.last_error.unwrap().ends_with(limits::TRUNCATED));
    assert_eq!(rec.console_tail.len(), limits::MAX_CONSOLE_LINES);
    // What the database holds is capped too, history included.
    let stored = inv.get(MAC).unwrap().unwrap();
    assert_eq!(stored.console_tail.len(), limits::MAX_CONSOLE_LINES);
    let history = serde_json::to_string(&inv.history(MAC).unwrap()).unwrap();
    assert!(
        history.len() < 64 << 10,
        "history is {} bytes",
        history.len()
    );
    assert!(history.contains(limits::TRUNCATED));
}

#[test]
fn strangers_are_recorded_at_a_bounded_rate_and_declared_nodes_still_boot() {
    let dir = tempfile::tempdir().unwrap();
    let inv = open(dir.path());
    inv.declare(declared(MAC, "node1")).unwrap();
    let stranger = |i: usize| format!("aa:00:00:00:{:02x}:{:02x}", i / 256, i % 256);
    let mut refused = 0;
    for i in 0..limits::DISCOVERED_PER_MINUTE + 25 {
        match inv.seen(&stranger(i), &format!("s{i}"), "default", None) {
            Ok(r) => assert_eq!(r.state, NodeState::Discovered),
            Err(InventoryError::Refused { reason, .. }) => {
                assert_eq!(reason, limits::DiscoveryRefusal::TooFast);
                refused += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(refused, 25);
    let listed = inv.list().unwrap();
    assert_eq!(listed.len(), limits::DISCOVERED_PER_MINUTE + 1);
    // Known machines are not strangers: the declared one and an admitted one boot on.
    assert_eq!(
        inv.seen(MAC, "x", "default", None).unwrap().hostname,
        "node1"
    );
    inv.seen(&stranger(0), "x", "default", None).unwrap();
    let e = inv
        .seen("bb:00:00:00:00:01", "y", "default", None)
        .unwrap_err();
    assert!(e.to_string().contains("in the last minute"), "{e}");
}

/// The credentials' lives: the boot secret until a plan consumes it, the
/// install's rsync password while it runs, the node's credential until the
/// next install.
#[test]
fn credentials_are_issued_consumed_and_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let inv = open(dir.path());
    inv.declare(declared(MAC, "node1")).unwrap();
    let first = inv.issue_boot_secret(MAC).unwrap();
    let second = inv.issue_boot_secret(MAC).unwrap();
    let rec = inv.get(MAC).unwrap().unwrap();
    assert!(
        !secrets::matches(rec.boot_secret.as_deref(), &first),
        "a new script voids the last secret"
    );
    assert!(secrets::matches(rec.boot_secret.as_deref(), &second));
    assert!(rec.public().boot_secret.is_none());

    let (rec, node) = inv.start_install(MAC, 1).unwrap();
    assert_eq!(rec.boot_secret, None, "consumed");
    let users = secrets::rsync_users(std::slice::from_ref(&rec));
    assert_eq!(users.len(), 2, "{users:?}");
    assert!(secrets::check_node(&rec, Some(&node.secret)).is_ok());
    assert_eq!(
        inv.node_by_secret(&node.secret).unwrap().map(|r| r.mac),
        Some(MAC.to_string())
    );
    let (id, token) = (rec.install_id.clone().unwrap(), rec.token.clone().unwrap());
    let rec = inv
        .record_event(
            &id,
            &token,
            &ev(
                Step::Finish,
                EventKind::Installed {
                    serial: 1,
                    host_keys: vec![],
                },
            ),
        )
        .unwrap();
    assert_eq!(
        rec.install_rsync, None,
        "the install's credential ends with it"
    );
    assert_eq!(secrets::rsync_users(std::slice::from_ref(&rec)).len(), 1);
    assert!(
        secrets::check_node(&rec, Some(&node.secret)).is_ok(),
        "the node's outlives it"
    );

    inv.request_reinstall(MAC).unwrap();
    let (rec, again) = inv.start_install(MAC, 1).unwrap();
    assert!(
        secrets::check_node(&rec, Some(&node.secret)).is_err(),
        "a reinstall replaces it"
    );
    assert!(secrets::check_node(&rec, Some(&again.secret)).is_ok());
    assert_eq!(inv.node_by_secret(&node.secret).unwrap(), None);
}

#[test]
fn installer_boots_that_never_fetch_a_plan_make_the_node_stuck_until_one_does() {
    let dir = tempfile::tempdir().unwrap();
    let inv = open(dir.path());
    inv.declare(declared(MAC, "node1")).unwrap();
    let mut changes = inv.subscribe();
    inv.issue_boot_secret(MAC).unwrap();
    inv.issue_boot_secret(MAC).unwrap();
    let rec = inv.get(MAC).unwrap().unwrap();
    assert_eq!(rec.unreported_boots.map(|b| b.count), Some(2));
    assert_eq!(rec.stuck_before_network, None);
    inv.issue_boot_secret(MAC).unwrap();
    let rec = inv.get(MAC).unwrap().unwrap();
    let msg = rec
        .stuck_before_network
        .clone()
        .expect("stuck after the third boot");
    assert!(msg.starts_with("installer booted 3× since "), "{msg}");
    assert!(
        msg.ends_with("never reached the server: check its NIC driver"),
        "{msg}"
    );
    assert_eq!(rec.public().stuck_before_network.as_ref(), Some(&msg));
    assert_eq!(rec.trouble(), msg);
    // Dashboards and `rollout watch` hear of it, and the history keeps it.
    let NodeChange::Saved(heard) = changes.try_recv().unwrap() else {
        panic!("a change, not a removal");
    };
    assert_eq!(heard.stuck_before_network.as_ref(), Some(&msg));
    assert!(inv
        .history(MAC)
        .unwrap()
        .iter()
        .any(|h| h.event["kind"] == "stuck_before_network"));
    // Survives a restart; a plan fetch (the installer reached the server) clears it.
    drop(inv);
    let inv = open(dir.path());
    assert_eq!(
        inv.get(MAC).unwrap().unwrap().stuck_before_network,
        Some(msg)
    );
    let (rec, _) = inv.start_install(MAC, 1).unwrap();
    assert_eq!(
        (rec.unreported_boots, rec.stuck_before_network),
        (None, None)
    );
}

/// A database written before hardware reports (its record JSON lacks the
/// fields) opens as it is; a report is stored, survives a reopen, and adds a
/// history line only when it changes.
#[test]
fn records_from_before_hardware_reports_take_one_and_keep_it() {
    use crate::wire::hardware::{Cpu, Disk};
    let dir = tempfile::tempdir().unwrap();
    open(dir.path()).declare(declared(MAC, "node1")).unwrap();
    let conn = rusqlite::Connection::open(dir.path().join("rollout.db")).unwrap();
    assert!(
        !stored_record(&conn).contains("hardware"),
        "an empty report is not written"
    );
    drop(conn);

    let inv = open(dir.path());
    assert_eq!(inv.get(MAC).unwrap().unwrap().hardware, None);
    let hw = crate::wire::Hardware {
        cpu: Cpu {
            model: "QEMU Virtual CPU".into(),
            count: 2,
        },
        memory_mib: 4096,
        disks: vec![Disk {
            name: "vda".into(),
            size_bytes: 8 << 30,
            ..Default::default()
        }],
        firmware: "bios".into(),
        ..Default::default()
    };
    inv.record_hardware(MAC, &hw).unwrap();
    inv.record_hardware(MAC, &hw).unwrap();
    let rows: Vec<_> = inv
        .history(MAC)
        .unwrap()
        .into_iter()
        .filter(|h| h.event["kind"] == "hardware")
        .collect();
    assert_eq!(rows.len(), 1, "the same report again adds no line");
    assert_eq!(rows[0].event["memory_mib"], 4096);
    assert_eq!(rows[0].event["largest_disk_gib"], 8);
    drop(inv);
    let rec = open(dir.path()).get(MAC).unwrap().unwrap();
    assert_eq!(rec.hardware, Some(hw));
    assert!(rec.hardware_at.is_some());
    assert!(matches!(
        open(dir.path()).record_hardware("52:54:00:00:00:99", &Default::default()),
        Err(InventoryError::UnknownNode(_))
    ));
}

/// A queue place is on the record while the install waits for a copy slot
/// (no history row per place), gone with its next event; the slot check
/// takes only the running install's own token.
#[test]
fn queued_event_sets_the_place_until_the_next_event() {
    let dir = tempfile::tempdir().unwrap();
    let inv = open(dir.path());
    inv.declare(declared(MAC, "node1")).unwrap();
    let rec = inv.begin_install(MAC, 3).unwrap();
    let (id, token) = (rec.install_id.clone().unwrap(), rec.token.clone().unwrap());
    assert!(matches!(
        inv.running_install(&id, "wrong"),
        Err(InventoryError::BadToken(_))
    ));
    assert_eq!(inv.running_install(&id, &token).unwrap().mac, MAC);
    let before = inv.history(MAC).unwrap().len();
    let queued = EventKind::Queued {
        position: 4,
        queued: 9,
    };
    let rec = inv
        .record_event(&id, &token, &ev(Step::Copy, queued))
        .unwrap();
    assert_eq!(rec.queue, Some([4, 9]));
    assert_eq!(rec.state, NodeState::Installing);
    assert_eq!(inv.get(MAC).unwrap().unwrap().queue, Some([4, 9]));
    assert_eq!(inv.history(MAC).unwrap().len(), before);
    let progress = EventKind::Progress {
        done_bytes: 1,
        total_bytes: 2,
    };
    let rec = inv
        .record_event(&id, &token, &ev(Step::Copy, progress))
        .unwrap();
    assert_eq!(rec.queue, None);
    let rec = install(&inv, MAC, 3, vec![]);
    assert!(matches!(
        inv.running_install(
            rec.install_id.as_deref().unwrap(),
            rec.token.as_deref().unwrap()
        ),
        Err(InventoryError::Conflict(_))
    ));
}
