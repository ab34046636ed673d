//! The installer's console: timestamped lines on /dev/console, plus a ring of the
//! last lines for failure reports.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::Mutex;

/// How many console lines a failure report carries.
pub const TAIL_LINES: usize = 30;

static TAIL: Mutex<VecDeque<String>> = Mutex::new(VecDeque::new());

/// Seconds since boot, as the kernel stamps its own messages, so installer lines
/// sort naturally between kernel lines on the serial console.
pub fn uptime() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes into the timespec we pass.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if rc != 0 {
        return std::time::Duration::ZERO;
    }
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// `[   12.345] rollout: {msg}`.
pub fn format_line(at: std::time::Duration, msg: &str) -> String {
    format!(
        "[{:5}.{:03}] rollout: {}",
        at.as_secs(),
        at.subsec_millis(),
        msg
    )
}

/// Prints one timestamped line and remembers it for [`tail`].
pub fn line(msg: &str) {
    let text = format_line(uptime(), msg);
    raw(&text);
    let mut tail = TAIL.lock().unwrap_or_else(|p| p.into_inner());
    if tail.len() == TAIL_LINES {
        tail.pop_front();
    }
    tail.push_back(text);
}

/// Prints a line as is (used for the very first `rollout-installer: starting`).
pub fn raw(text: &str) {
    if cfg!(test) {
        return;
    }
    let mut out = std::io::stdout().lock();
    // The console may be missing early in boot; losing a line must not kill PID 1.
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

/// The last [`TAIL_LINES`] lines printed with [`line`].
pub fn tail() -> Vec<String> {
    let tail = TAIL.lock().unwrap_or_else(|p| p.into_inner());
    tail.iter().cloned().collect()
}

/// Points fds 0-2 at /dev/console when the kernel could not (no /dev/console in
/// the initramfs): after devtmpfs is mounted the node exists.
pub fn ensure_console_fds() {
    // SAFETY: fcntl(F_GETFD) only queries the descriptor.
    let stdout_ok = unsafe { libc::fcntl(1, libc::F_GETFD) } != -1;
    if stdout_ok {
        return;
    }
    let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(crate::paths::CONSOLE)
    else {
        return;
    };
    use std::os::fd::AsRawFd;
    for fd in 0..3 {
        // SAFETY: dup2 onto the standard descriptors, which we own as PID 1.
        unsafe { libc::dup2(f.as_raw_fd(), fd) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn line_format_matches_kernel_style() {
        assert_eq!(
            format_line(Duration::from_millis(12_345), "partition: /dev/vda"),
            "[   12.345] rollout: partition: /dev/vda"
        );
        assert_eq!(
            format_line(Duration::from_millis(123_456_789), "x"),
            "[123456.789] rollout: x"
        );
    }

    #[test]
    fn tail_keeps_only_the_last_lines() {
        for i in 0..(TAIL_LINES + 5) {
            line(&format!("tail-test {i}"));
        }
        let t = tail();
        assert_eq!(t.len(), TAIL_LINES);
        assert!(t
            .last()
            .unwrap()
            .ends_with(&format!("tail-test {}", TAIL_LINES + 4)));
    }
}
