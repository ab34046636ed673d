//! Reading a node's serial console log: matching, waiting and tails.

use std::fs;
use std::path::Path;

use regex::Regex;

use crate::error::Result;

/// What to wait for on a console.
#[derive(Debug, Clone)]
pub enum Pattern {
    Substring(String),
    Regex(Regex),
}

impl Pattern {
    pub fn substring(s: impl Into<String>) -> Pattern {
        Pattern::Substring(s.into())
    }

    pub fn regex(re: &str) -> Result<Pattern> {
        Ok(Pattern::Regex(Regex::new(re)?))
    }

    /// Byte offset just past the first match in `text`, if any.
    pub fn find_end(&self, text: &str) -> Option<usize> {
        match self {
            Pattern::Substring(s) => text.find(s.as_str()).map(|i| i + s.len()),
            Pattern::Regex(re) => re.find(text).map(|m| m.end()),
        }
    }
}

impl From<&str> for Pattern {
    fn from(s: &str) -> Pattern {
        Pattern::substring(s)
    }
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pattern::Substring(s) => write!(f, "{s:?}"),
            Pattern::Regex(r) => write!(f, "/{}/", r.as_str()),
        }
    }
}

/// The log from byte `from` on, as text with terminal escapes removed: firmware
/// (OVMF, iPXE) paints its screens with cursor moves and colours that would
/// otherwise split what a reader is looking for.
pub fn read_from(path: &Path, from: u64) -> String {
    let bytes = fs::read(path).unwrap_or_default();
    let start = (from as usize).min(bytes.len());
    strip_escapes(&String::from_utf8_lossy(&bytes[start..]))
}

/// Current length of the log, to wait for something printed after this point.
pub fn mark(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The last `n` non-empty lines of the log, cleaned of escapes and carriage returns.
pub fn tail(path: &Path, n: usize) -> Vec<String> {
    tail_of(&read_from(path, 0), n)
}

pub fn tail_of(text: &str, n: usize) -> Vec<String> {
    let lines: Vec<String> = text
        .split('\n')
        .map(|l| l.rsplit('\r').find(|s| !s.trim().is_empty()).unwrap_or(""))
        .map(|l| l.trim_end().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

/// Kernel messages that tell why a node went wrong long before its tail does:
/// a storage command timing out, a controller reset, I/O errors, a hung task.
const TROUBLE: &[&str] = &[
    "timeout",
    "timed out",
    "I/O error",
    "reset",
    "Call Trace",
    "BUG:",
    "Oops",
    "blocked for more than",
    "EXT4-fs error",
    "read-only",
    "capacity change",
];

/// The first `n` lines of `text` that look like kernel trouble ([`TROUBLE`]),
/// for the diagnostics of a failed test: the tail shows only the end of a
/// failure that may have started minutes earlier.
pub fn first_trouble(text: &str, n: usize) -> Vec<String> {
    tail_of(text, usize::MAX)
        .into_iter()
        .filter(|l| TROUBLE.iter().any(|t| l.contains(t)))
        .take(n)
        .collect()
}

/// Removes ANSI/VT100 escape sequences (CSI `ESC [ … final`, and two-byte `ESC x`).
pub fn strip_escapes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        if chars.next() == Some('[') {
            // Parameters and intermediates, then one final byte in @..~.
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_trouble_finds_the_start_of_a_storage_failure() {
        let log = "[   1.0] nvme nvme0: pci function 0000:00:04.0\n\
                   [  82.1] rollout: copy: 97% (596 of ~615 MiB)\n\
                   [ 113.2] nvme nvme0: I/O 97 QID 1 timeout, aborting\n\
                   [ 143.5] nvme nvme0: I/O 97 QID 1 timeout, reset controller\n\
                   [ 160.8] Buffer I/O error on device nvme0n1p2, logical block 7\n\
                   [ 160.9] rollout: copy: retrying\n";
        assert_eq!(
            first_trouble(log, 2),
            [
                "[ 113.2] nvme nvme0: I/O 97 QID 1 timeout, aborting",
                "[ 143.5] nvme nvme0: I/O 97 QID 1 timeout, reset controller"
            ]
        );
        assert_eq!(first_trouble(log, 10).len(), 3);
        assert!(first_trouble("[ 1.0] all well\n", 10).is_empty());
    }

    #[test]
    fn escapes_are_removed() {
        let s = "\u{1b}[2J\u{1b}[01;01H\u{1b}[=3h\u{1b}[2J\u{1b}[01;01HBdsDxe: loading\u{1b}[0m ok\u{1b}c";
        assert_eq!(strip_escapes(s), "BdsDxe: loading ok");
    }

    #[test]
    fn tail_keeps_the_last_visible_lines() {
        let text = "one\r\ntwo\r\n\r\nthree\rTHREE\n\nfour";
        assert_eq!(tail_of(text, 2), vec!["THREE", "four"]);
        assert_eq!(tail_of(text, 10).len(), 4);
    }

    #[test]
    fn patterns_match_substrings_and_regexes() {
        let text = "boot\nrollout-installer: starting\n";
        assert_eq!(
            Pattern::from("installer: starting").find_end(text),
            Some(text.len() - 1)
        );
        let re = Pattern::regex(r"rollout-installer: (\w+)").unwrap();
        assert!(re.find_end(text).is_some());
        assert!(Pattern::from("login:").find_end(text).is_none());
    }

    #[test]
    fn reading_from_a_mark_skips_older_output() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        fs::write(&log, "first boot: login:\n").unwrap();
        let m = mark(&log);
        let mut more = fs::read(&log).unwrap();
        more.extend_from_slice(b"second boot\n");
        fs::write(&log, more).unwrap();
        let after = read_from(&log, m);
        assert!(Pattern::from("login:").find_end(&after).is_none());
        assert_eq!(after, "second boot\n");
    }
}
