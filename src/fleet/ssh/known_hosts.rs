//! The server's `{state_dir}/ssh/known_hosts`: written only from the host keys a
//! node's installer reported in its authenticated `installed` event, never
//! learned on first contact. This module is its only writer.

use std::path::Path;
use std::sync::Mutex;

use base64::Engine;
use sha2::Digest;

/// Key types an OpenSSH server may present as its host key.
const ALGORITHMS: &[&str] = &[
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// One host public key: its algorithm and its base64 blob (no comment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKey {
    pub algorithm: String,
    pub blob: String,
}

impl HostKey {
    /// Parses `algorithm base64 [comment]` (a `.pub` file's line). Anything else
    /// is refused, so a report cannot smuggle a second line or a marker such as
    /// `@cert-authority` into known_hosts.
    pub fn parse(line: &str) -> Result<HostKey, String> {
        let line = line.trim();
        let mut fields = line.split_ascii_whitespace();
        let (Some(algorithm), Some(blob)) = (fields.next(), fields.next()) else {
            return Err(format!("{line:?} is not `ALGORITHM BASE64 [COMMENT]`"));
        };
        if line.chars().any(|c| c.is_control() && c != '\t') {
            return Err(format!("{line:?} has control characters"));
        }
        if !ALGORITHMS.contains(&algorithm) {
            return Err(format!("unknown host key type {algorithm:?}"));
        }
        let raw = base64::engine::general_purpose::STANDARD
            .decode(blob)
            .map_err(|e| format!("{algorithm} key is not base64: {e}"))?;
        // The blob starts with the algorithm name again (RFC 4253 string).
        let named = raw
            .get(4..)
            .zip(raw.get(..4))
            .map(|(rest, len)| {
                let n = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
                rest.get(..n) == Some(algorithm.as_bytes())
            })
            .unwrap_or(false);
        if !named {
            return Err(format!("{algorithm} key blob does not name {algorithm}"));
        }
        Ok(HostKey {
            algorithm: algorithm.to_string(),
            blob: blob.to_string(),
        })
    }

    /// `ALGORITHM BASE64`, as stored in the record and in known_hosts.
    pub fn line(&self) -> String {
        format!("{} {}", self.algorithm, self.blob)
    }

    /// `SHA256:…`, as `ssh-keygen -l` and ssh's own prompts show it.
    pub fn fingerprint(&self) -> String {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&self.blob)
            .unwrap_or_default();
        let digest = sha2::Sha256::digest(raw);
        format!(
            "SHA256:{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
        )
    }

    /// `ED25519 SHA256:…`: type and fingerprint, for `rollout node show`.
    pub fn describe(&self) -> String {
        let kind = match self.algorithm.as_str() {
            "ssh-ed25519" => "ED25519",
            "ssh-rsa" => "RSA",
            a if a.starts_with("ecdsa-") => "ECDSA",
            a => a,
        };
        format!("{kind} {}", self.fingerprint())
    }
}

/// The valid keys of a report, normalized (comments dropped), and a note per
/// line refused.
pub fn parse_all(lines: &[String]) -> (Vec<HostKey>, Vec<String>) {
    let mut keys: Vec<HostKey> = Vec::new();
    let mut refused = Vec::new();
    for l in lines {
        match HostKey::parse(l) {
            Ok(k) if !keys.contains(&k) => keys.push(k),
            Ok(_) => {}
            Err(e) => refused.push(e),
        }
    }
    (keys, refused)
}

/// `existing` with every entry for any of `names` removed and one line per key
/// for all of them added. Hashed entries (`|1|…`) go too: only `ssh` with
/// `StrictHostKeyChecking=accept-new` wrote those, and what it learned on first
/// contact is exactly what this file must no longer trust.
pub fn updated(existing: &str, names: &[String], keys: &[HostKey]) -> String {
    let mut out = String::new();
    for line in existing.lines() {
        let t = line.trim();
        let hosts = t.split_ascii_whitespace().next().unwrap_or("");
        let ours = hosts
            .split(',')
            .any(|h| names.iter().any(|n| n.eq_ignore_ascii_case(h)));
        if t.is_empty() || hosts.starts_with("|1|") || ours {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    let names: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| !n.is_empty())
        .collect();
    if !names.is_empty() {
        for k in keys {
            out.push_str(&format!("{} {}\n", names.join(","), k.line()));
        }
    }
    out
}

/// One read-modify-write at a time (two nodes can finish together).
static WRITER: Mutex<()> = Mutex::new(());

/// Replaces whatever `path` says about `names` (the node's hostname and
/// address) with `keys`; empty `keys` only forget the node. Written atomically
/// and durably (`durable::write_atomic`), 0600.
pub fn record(path: &Path, names: &[String], keys: &[HostKey]) -> std::io::Result<()> {
    let _w = WRITER.lock().unwrap_or_else(|p| p.into_inner());
    let existing = match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let text = updated(&existing, names, keys);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    crate::durable::write_atomic(path, text.as_bytes(), 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real ed25519 public key (`ssh-keygen -t ed25519`).
    pub const ED: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJeUcRgfF2JHTkbvqH7RMf6SDu4vRPuuW38K2lsZz5Ju root@node1";

    #[test]
    fn a_public_key_line_parses_and_has_sshs_fingerprint() {
        let k = HostKey::parse(ED).unwrap();
        assert_eq!(k.algorithm, "ssh-ed25519");
        assert_eq!(
            k.line(),
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJeUcRgfF2JHTkbvqH7RMf6SDu4vRPuuW38K2lsZz5Ju"
        );
        // What `ssh-keygen -lf` printed for this key.
        assert_eq!(
            k.describe(),
            "ED25519 SHA256:MrydBtaqk8twABHRd3eXgIipDi0WMRHXxWrxKMZYiy8"
        );
    }

    #[test]
    fn smuggled_lines_and_wrong_types_are_refused() {
        for bad in [
            "",
            "ssh-ed25519",
            "@cert-authority * ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl x\n* ssh-rsa AAAA",
            "ssh-ed25519 not-base64!",
            // An RSA blob claimed to be ed25519.
            "ssh-ed25519 AAAAB3NzaC1yc2EAAAADAQABAAABAQ",
        ] {
            assert!(HostKey::parse(bad).is_err(), "{bad:?} accepted");
        }
        let (keys, refused) = parse_all(&[ED.into(), ED.into(), "junk".into()]);
        assert_eq!(keys.len(), 1, "duplicates collapse");
        assert_eq!(refused.len(), 1);
    }

    #[test]
    fn recording_a_node_replaces_its_entries_and_keeps_the_others() {
        let k = HostKey::parse(ED).unwrap();
        let existing = "\
|1|abc=|def= ssh-ed25519 AAAAold
node1,10.44.0.11 ssh-ed25519 AAAAstale
node2,10.44.0.12 ssh-ed25519 AAAAother
10.44.0.13 ssh-rsa AAAAaddress-now-node1s
";
        let names = vec!["node1".to_string(), "10.44.0.13".to_string()];
        let text = updated(existing, &names, std::slice::from_ref(&k));
        assert_eq!(
            text,
            format!(
                "node2,10.44.0.12 ssh-ed25519 AAAAother\nnode1,10.44.0.13 {}\n",
                k.line()
            )
        );
        // No keys: the node is only forgotten.
        assert_eq!(
            updated(&text, &names, &[]),
            "node2,10.44.0.12 ssh-ed25519 AAAAother\n"
        );
    }

    #[test]
    fn record_writes_a_private_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ssh/known_hosts");
        let k = HostKey::parse(ED).unwrap();
        record(
            &path,
            &["n1".into(), "10.0.0.1".into()],
            std::slice::from_ref(&k),
        )
        .unwrap();
        record(&path, &["n2".into()], std::slice::from_ref(&k)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("n1,10.0.0.1 {}\nn2 {}\n", k.line(), k.line()));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
