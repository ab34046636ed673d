//! `rollout watch --until-done` in a real terminal: tmux runs it against a
//! server on loopback while the test reports two installs as their installers
//! would; capture-pane shows what a person sees: bars that move, an ETA from
//! the copy rate, then the final table once both installs have ended.

mod common;
use common::loopback::Server;
use serde_json::{json, Value};
use std::process::Command;
use std::time::{Duration, Instant};

const MB: u64 = 1_000_000;

/// A tmux server of the test's own (its own socket), killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .unwrap()
    }

    fn screen(&self) -> String {
        let out = self.cmd(&["capture-pane", "-p", "-t", "watch"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until the screen shows something `ok` accepts, and returns it.
    fn wait_for(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(4);
        loop {
            let screen = self.screen();
            if ok(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "the terminal never showed {what}; it shows:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

/// The screen line of `host`.
fn row<'a>(screen: &'a str, host: &str) -> &'a str {
    screen
        .lines()
        .find(|l| l.starts_with(host))
        .unwrap_or_else(|| panic!("no row for {host} in:\n{screen}"))
}

fn report(s: &Server, plan: &Value, step: &str, kind: Value, elapsed_ms: u64) {
    let mut ev = json!({"step": step, "message": step, "elapsed_ms": elapsed_ms});
    for (k, v) in kind.as_object().unwrap() {
        ev[k] = v.clone();
    }
    let path = format!(
        "/api/v1/installs/{}/events",
        plan["install_id"].as_str().unwrap()
    );
    ureq::post(&s.url(&path))
        .set(
            "Authorization",
            &format!("Bearer {}", plan["token"].as_str().unwrap()),
        )
        .send_json(ev)
        .unwrap_or_else(|e| panic!("report {step}: {e}"));
}

fn copied(s: &Server, plan: &Value, mb: u64, elapsed_ms: u64) {
    let kind = json!({"kind": "progress", "done_bytes": mb * MB, "total_bytes": 1000 * MB});
    report(s, plan, "copy", kind, elapsed_ms);
}

#[test]
fn watch_shows_moving_bars_an_eta_and_a_final_table() {
    if !testkit::prereq::require_known_tools(&["tmux"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let (st, n) = s.req(
        "POST",
        "/api/v1/nodes",
        Some(json!({"mac": "52:54:00:00:00:02", "hostname": "node2"})),
        true,
    );
    assert_eq!(st, 200, "{n}");

    let tmux = Tmux {
        socket: format!("rollout-watch-{}", std::process::id()),
    };
    let watch = format!(
        "RUST_BACKTRACE=0 {} --config {} watch --until-done; echo WATCH-EXIT=$?; sleep 600",
        env!("CARGO_BIN_EXE_rollout"),
        dir.path().join("rollout.toml").display()
    );
    let out = tmux.cmd(&[
        "new-session",
        "-d",
        "-s",
        "watch",
        "-x",
        "160",
        "-y",
        "30",
        &watch,
    ]);
    assert!(
        out.status.success(),
        "tmux: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    tmux.wait_for("both nodes pending", |t| {
        t.contains("HOSTNAME")
            && row(t, "node1").contains("pending")
            && row(t, "node2").contains("pending")
    });

    // Both installers fetch their plans; node1 copies 10 MB/s by its clock.
    let p1 = s.plan("52:54:00:00:00:01").1;
    let p2 = s.plan("52:54:00:00:00:02").1;
    report(&s, &p2, "partition", json!({"kind": "started"}), 1000);
    for i in 0..=4 {
        copied(&s, &p1, 10 * i, 1000 + 1000 * i);
    }
    let t = tmux.wait_for("node1's ETA", |t| row(t, "node1").contains("1m36s"));
    let first = row(&t, "node1").to_string();
    assert!(
        first.contains("installing")
            && first.contains("copy")
            && first.contains("[....................]   4%"),
        "960 MB left at 10 MB/s: {first}"
    );
    assert!(
        row(&t, "node2").contains("partition") && row(&t, "node2").trim_end().ends_with('-'),
        "no copy, no ETA for node2:\n{t}"
    );

    // Later in the copy: the bar has moved, the ETA has come down.
    for mb in [480, 490, 500] {
        copied(&s, &p1, mb, 1000 + 100 * mb);
    }
    let t = tmux.wait_for("node1 at half way", |t| row(t, "node1").contains(" 50%"));
    let half = row(&t, "node1");
    assert!(half.contains("[##########..........]  50%"), "{half}");
    assert!(half.contains(" 50s"), "500 MB left at 10 MB/s: {half}");

    // node2 fails, node1 finishes: the watch ends with a table of both.
    report(
        &s,
        &p2,
        "partition",
        json!({"kind": "failed", "error": "disk too small", "console_tail": []}),
        2000,
    );
    copied(&s, &p1, 1000, 101_000);
    report(&s, &p1, "copy", json!({"kind": "done"}), 101_000);
    let screen = tmux.wait_for("node2 failed, node1 still running", |t| {
        row(t, "node2").contains("failed") && !t.contains("all installs ended")
    });
    assert!(row(&screen, "node1").contains("installing"), "{screen}");
    report(
        &s,
        &p1,
        "finish",
        json!({"kind": "installed", "serial": 1}),
        105_000,
    );
    let done = tmux.wait_for("the final table", |t| t.contains("WATCH-EXIT="));
    let lines: Vec<&str> = done.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("all installs ended"))
        .unwrap_or_else(|| panic!("no final table:\n{done}"));
    assert!(
        lines[at + 1].starts_with("HOSTNAME") && lines[at + 1].contains("RESULT"),
        "{done}"
    );
    let node1 = row(&done, "node1");
    assert!(node1.contains("installed"), "{done}");
    assert!(
        node1.contains("9.5 MiB/s"),
        "the copy's average, 1000 MB in 100 s: {done}"
    );
    assert!(
        row(&done, "node2").contains("failed") && done.contains("disk too small"),
        "{done}"
    );
    assert!(
        done.contains("1 of 2 installs failed") && done.contains("WATCH-EXIT=1"),
        "a failed install makes the watch fail: {done}"
    );
}
