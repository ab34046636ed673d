//! Stopping a server a test started together with what it started.
//!
//! `rollout serve` runs an rsync daemon (and udp-senders); killed alone with
//! SIGKILL, as a test does to play a crash or when it ends, the server leaves
//! them behind, re-parented to init, holding their ports for the rest of the
//! machine's life. In production systemd stops the whole control group; here
//! [`kill_tree`] does: it finds the descendants first, then kills the server
//! (so nothing restarts them) and them.

use std::process::Child;

/// The processes `pid` started, from `/proc/PID/task/*/children` (empty
/// once `pid` is gone).
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .flat_map(|task| {
            let text = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            text.split_whitespace()
                .filter_map(|c| c.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// Every process below `pid`, children before their own children.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut next = vec![pid];
    while let Some(p) = next.pop() {
        for c in children(p) {
            out.push(c);
            next.push(c);
        }
    }
    out
}

/// SIGKILLs `child` and every process it started, and reaps `child`.
pub fn kill_tree(child: &mut Child) {
    let below = descendants(child.id());
    let _ = child.kill();
    let _ = child.wait();
    kill_all(&below);
}

/// SIGKILLs `pids` (from [`descendants`]), for a test that kills a server
/// alone first, to see what its children do on their own, and then must not
/// leave the rest running.
pub fn kill_all(pids: &[u32]) {
    for &pid in pids {
        // SAFETY: kill(2) with a pid read from /proc moments ago; a pid
        // reused since then would belong to this test's own machine, and the
        // window is a few waits long.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn kill_tree_takes_the_grandchildren_too() {
        // A shell that starts a sleep in the background and waits: the sleep
        // outlives a plain kill of the shell.
        let mut sh = Command::new("sh")
            .args(["-c", "sleep 300 & echo $! ; wait"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(sh.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let sleep: u32 = line.trim().parse().unwrap();
        assert!(descendants(sh.id()).contains(&sleep));
        kill_tree(&mut sh);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        // Killed: gone, or a zombie until whoever adopted it reaps it.
        let alive = || {
            std::fs::read_to_string(format!("/proc/{sleep}/stat")).is_ok_and(|s| {
                s.rsplit(") ")
                    .next()
                    .is_some_and(|rest| !rest.starts_with('Z'))
            })
        };
        while alive() {
            assert!(
                std::time::Instant::now() < deadline,
                "the sleep outlived kill_tree"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}
