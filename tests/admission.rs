//! Copy admission against a real `rollout serve` and its rsync daemon on
//! loopback: with `[install] max_copies = 2`, six installers that reach their
//! copy at the same moment all finish, the rsync daemon never serves more
//! than two copies at once (counted from its own process tree, not from what
//! the server claims), and the four that had to wait were told their queue
//! place, which the node record (the dashboard's and `rollout watch`'s data)
//! showed while they waited.

mod common;
use common::loopback::{event, Server};
use serde_json::{json, Value};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const NODES: usize = 6;

fn mac(i: usize) -> String {
    format!("52:54:00:00:01:{:02x}", i + 1)
}

/// `POST path` with the install token: (status, JSON body).
fn post(s: &Server, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    let r = ureq::post(&s.url(path)).set("Authorization", &format!("Bearer {token}"));
    let res = match body {
        Some(b) => r.send_json(b),
        None => r.call(),
    };
    let resp = match res {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("POST {path}: {e}"),
    };
    let status = resp.status();
    let text = resp.into_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The pid of the rsync daemon serving `conf`, once it runs.
fn rsync_daemon(conf: &str) -> Option<i32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains("--daemon") && cmdline.contains(conf) {
            return Some(pid);
        }
    }
    None
}

#[test]
fn six_installers_two_slots_all_finish_never_more_than_two_copies() {
    if !testkit::prereq::require_known_tools(&["rsync"])
        || !testkit::prereq::require_root("rsyncd reads the image as uid 0")
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::loopback::write_config(dir.path(), common::loopback::free_port());
    let mut text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("[install]\n", "[install]\nmax_copies = 2\n");
    for i in 0..NODES {
        text.push_str(&format!(
            "[[node]]\nmac = \"{}\"\nhostname = \"a{i}\"\n",
            mac(i)
        ));
    }
    std::fs::write(&cfg, text).unwrap();
    // 3 MiB per copy, which each installer reads at 3 MB/s: about a second
    // of copying, long enough for overlapping copies to show in the daemon.
    let root = dir.path().join("state/images/default/serials/1/root");
    for f in 0..3u8 {
        let data: Vec<u8> = (0..1u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 ^ f)
            .collect();
        std::fs::write(root.join(format!("blob{f}")), data).unwrap();
    }
    let s = Server::start(dir.path());
    let rsync_port: u16 = std::fs::read_to_string(&cfg)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("rsync_port = "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let conf_path = dir.path().join("state/rsyncd.conf");
    let conf = conf_path.to_string_lossy().to_string();
    let deadline = Instant::now() + Duration::from_secs(15);
    let daemon = loop {
        if let Some(pid) = rsync_daemon(&conf) {
            break pid;
        }
        assert!(Instant::now() < deadline, "the rsync daemon never started");
        std::thread::sleep(Duration::from_millis(100));
    };
    let rsyncd_conf = std::fs::read_to_string(&conf_path).unwrap();
    assert!(
        rsyncd_conf.contains("max connections = 34"),
        "the daemon's limit is not above the 2 slots: {rsyncd_conf}"
    );

    let plans: Vec<Value> = (0..NODES)
        .map(|i| {
            let (st, plan) = s.plan(&mac(i));
            assert_eq!(st, 200, "plan of {}: {plan}", mac(i));
            plan
        })
        .collect();

    // The daemon's connections, sampled while the installers run.
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicUsize::new(0));
    let watcher = {
        let (stop, peak) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                // The daemon forks one child per connection.
                peak.fetch_max(
                    testkit::process::children(daemon as u32).len(),
                    Ordering::Relaxed,
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };

    let s = Arc::new(s);
    let start = Arc::new(Barrier::new(NODES));
    let workers: Vec<_> = plans
        .into_iter()
        .enumerate()
        .map(|(i, plan)| {
            let (s, start, dir) = (s.clone(), start.clone(), dir.path().to_owned());
            std::thread::spawn(move || {
                let id = plan["install_id"].as_str().unwrap().to_string();
                let token = plan["token"].as_str().unwrap().to_string();
                let events = format!("/api/v1/installs/{id}/events");
                let slot = format!("/api/v1/installs/{id}/slot");
                let copy_started = event("copy", json!({"kind": "started"}));
                assert_eq!(post(&s, &events, &token, Some(copy_started)).0, 204);
                start.wait();
                // What the installer does (initramfs/src/slot.rs): ask until granted.
                let mut positions = vec![];
                let mut record_queue = Value::Null;
                loop {
                    let (st, answer) = post(&s, &slot, &token, None);
                    assert_eq!(st, 200, "slot for a{i}: {answer}");
                    match answer["slot"].as_str() {
                        Some("granted") => break,
                        Some("wait") => {
                            let (position, queued) = (
                                answer["position"].as_u64().unwrap(),
                                answer["queued"].as_u64().unwrap(),
                            );
                            if positions.is_empty() {
                                let queued_event = event(
                                    "copy",
                                    json!({"kind": "queued", "position": position, "queued": queued}),
                                );
                                assert_eq!(post(&s, &events, &token, Some(queued_event)).0, 204);
                                let (_, rec) =
                                    s.req("GET", &format!("/api/v1/nodes/a{i}"), None, true);
                                record_queue = rec["queue"].clone();
                                assert_eq!(record_queue, json!([position, queued]), "{rec}");
                            }
                            positions.push(position);
                            std::thread::sleep(Duration::from_secs(
                                answer["retry_secs"].as_u64().unwrap(),
                            ));
                        }
                        other => panic!("slot answer {other:?}: {answer}"),
                    }
                }
                let dest = dir.join(format!("target-{i}"));
                let out = Command::new("rsync")
                    .env("RSYNC_PASSWORD", plan["rsync"]["password"].as_str().unwrap())
                    .args(["-a", "--whole-file", "--no-compress", "--bwlimit=3000"])
                    .arg(format!(
                        "rsync://{}@127.0.0.1:{rsync_port}/default-1/",
                        plan["rsync"]["user"].as_str().unwrap()
                    ))
                    .arg(format!("{}/", dest.display()))
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "a{i}'s copy: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let done = event("copy", json!({"kind": "done"}));
                assert_eq!(post(&s, &events, &token, Some(done)).0, 204);
                let installed = event("finish", json!({"kind": "installed", "serial": 1}));
                assert_eq!(post(&s, &events, &token, Some(installed)).0, 204);
                (positions, record_queue, dest)
            })
        })
        .collect();
    let results: Vec<_> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    stop.store(true, Ordering::Relaxed);
    watcher.join().unwrap();

    let peak = peak.load(Ordering::Relaxed);
    assert!(
        peak <= 2,
        "the rsync daemon served {peak} copies at once with max_copies = 2"
    );
    assert!(peak >= 1, "the watcher never saw a copy: it proves nothing");
    // All six asked at once: two copied, four waited at places 1 to 4.
    let mut first: Vec<u64> = results
        .iter()
        .filter_map(|(p, _, _)| p.first().copied())
        .collect();
    first.sort();
    assert_eq!(first, [1, 2, 3, 4], "first queue places seen");
    for (positions, _, _) in &results {
        // A waiter's place only ever improves.
        assert!(positions.windows(2).all(|w| w[1] <= w[0]), "{positions:?}");
    }
    for (i, (_, _, dest)) in results.iter().enumerate() {
        for f in 0..3 {
            let got = std::fs::read(dest.join(format!("blob{f}"))).unwrap();
            let want = std::fs::read(root.join(format!("blob{f}"))).unwrap();
            assert!(got == want, "a{i}'s blob{f} differs from the image");
        }
        let (_, rec) = s.req("GET", &format!("/api/v1/nodes/a{i}"), None, true);
        assert_eq!(rec["state"], "installed", "{rec}");
        assert!(rec.get("queue").is_none(), "queue place left behind: {rec}");
    }
}

/// A waiter at the head of the queue asking again is held until the slot
/// frees and answered "granted" by that same request, so no slot sits idle
/// between two asks; its first ask is answered at once with its place and
/// "ask again now".
#[test]
fn the_next_waiter_gets_the_freed_slot_in_the_request_it_is_holding() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::loopback::write_config(dir.path(), common::loopback::free_port());
    let mut text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("[install]\n", "[install]\nmax_copies = 1\n");
    for i in 0..2 {
        text.push_str(&format!(
            "[[node]]\nmac = \"{}\"\nhostname = \"h{i}\"\n",
            mac(i)
        ));
    }
    std::fs::write(&cfg, text).unwrap();
    let s = Server::start(dir.path());
    let plans: Vec<Value> = (0..2).map(|i| s.plan(&mac(i)).1).collect();
    let id = |i: usize| plans[i]["install_id"].as_str().unwrap().to_string();
    let token = |i: usize| plans[i]["token"].as_str().unwrap().to_string();
    let slot = |i: usize| format!("/api/v1/installs/{}/slot", id(i));

    let (_, a) = post(&s, &slot(0), &token(0), None);
    assert_eq!(a["slot"], "granted", "{a}");
    let asked = Instant::now();
    let (_, b) = post(&s, &slot(1), &token(1), None);
    assert_eq!(
        (
            b["slot"].as_str(),
            b["position"].as_u64(),
            b["retry_secs"].as_u64()
        ),
        (Some("wait"), Some(1), Some(0)),
        "{b}"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "a first ask was held"
    );

    let s = Arc::new(s);
    let held = {
        let (s, path, tok) = (s.clone(), slot(1), token(1));
        std::thread::spawn(move || post(&s, &path, &tok, None).1)
    };
    std::thread::sleep(Duration::from_millis(800));
    assert!(!held.is_finished(), "the second ask was not held");
    let done = event("copy", json!({"kind": "done"}));
    let events = format!("/api/v1/installs/{}/events", id(0));
    assert_eq!(post(&s, &events, &token(0), Some(done)).0, 204);
    let b = held.join().unwrap();
    assert_eq!(b["slot"], "granted", "the held request: {b}");
}
