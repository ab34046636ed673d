//! A reinstall keeps the node's identity: its SSH host keys and machine-id are
//! read from the previous install on the disk BEFORE the disk is repartitioned,
//! held in memory, and written into the new root instead of fresh ones. So the
//! key the server's known_hosts holds for the node stays valid, and operators
//! see no "host key changed" after a reinstall.
//!
//! Only this node's own previous install counts: its `/etc/rollout/node.toml`
//! (written by [`crate::configure`]) must name the plan's MAC and hostname
//! ([`is_previous_install`]). Anything else, or a disk that cannot be read,
//! means fresh keys, and the console says why.

use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use rollout::wire::InstallPlan;

use crate::{disk, paths, render, sys};

/// Host key files larger than this are not keys (RSA 16384 is ~13 KiB).
const MAX_KEY_FILE: u64 = 64 * 1024;

/// One `/etc/ssh/ssh_host_*` file of the previous install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFile {
    /// The file name, e.g. `ssh_host_ed25519_key.pub`.
    pub name: String,
    pub contents: Vec<u8>,
    pub mode: u32,
}

/// What a reinstall carries over.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Identity {
    /// 32 hex digits, without the newline.
    pub machine_id: Option<String>,
    pub host_keys: Vec<KeyFile>,
}

impl Identity {
    pub fn is_empty(&self) -> bool {
        self.machine_id.is_none() && self.host_keys.is_empty()
    }
}

fn same_mac(a: &str, b: &str) -> bool {
    let norm = |s: &str| s.trim().to_ascii_lowercase().replace('-', ":");
    norm(a) == norm(b)
}

/// The pure decision: is the install that wrote `node_toml` this node's? Both
/// its MAC and its hostname must be the plan's; the error says whose it is.
pub fn is_previous_install(node_toml: &str, plan: &InstallPlan) -> Result<(), String> {
    let m = render::parse_node_toml(node_toml);
    let (Some(mac), Some(hostname)) = (m.get("mac"), m.get("hostname")) else {
        return Err("its /etc/rollout/node.toml names no MAC and hostname".into());
    };
    if !same_mac(mac, &plan.mac) {
        return Err(format!(
            "it belongs to another node ({hostname}, MAC {mac}), not to {} ({})",
            plan.hostname, plan.mac
        ));
    }
    if hostname != &plan.hostname {
        return Err(format!(
            "it was installed as {hostname}, and this node is now {}: a renamed node gets a new identity",
            plan.hostname
        ));
    }
    Ok(())
}

/// Reads the identity out of a previous install's root at `root` (mounted).
pub fn read_from(root: &Path, plan: &InstallPlan) -> Result<Identity, String> {
    let node_toml = root.join(paths::NODE_CONFIG.trim_start_matches('/'));
    let text = std::fs::read_to_string(&node_toml)
        .map_err(|e| format!("it holds no rollout install ({}: {e})", paths::NODE_CONFIG))?;
    is_previous_install(&text, plan)?;
    let machine_id = std::fs::read_to_string(root.join("etc/machine-id"))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| s.len() == 32 && s.chars().all(|c| c.is_ascii_hexdigit()));
    let mut host_keys = Vec::new();
    let dir = root.join("etc/ssh");
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for e in rd.filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().to_string();
            // Regular files only: a symlink could point anywhere in the initramfs.
            let Ok(meta) = e.path().symlink_metadata() else {
                continue;
            };
            if !name.starts_with("ssh_host_") || !meta.is_file() || meta.len() > MAX_KEY_FILE {
                continue;
            }
            let contents = std::fs::read(e.path())
                .map_err(|err| format!("reading {}: {err}", e.path().display()))?;
            let mode = if name.ends_with(".pub") { 0o644 } else { 0o600 };
            host_keys.push(KeyFile {
                name,
                contents,
                mode,
            });
        }
    }
    host_keys.sort_by(|a, b| a.name.cmp(&b.name));
    // A private key without its public half (or the reverse) is not usable as is.
    let names: Vec<String> = host_keys.iter().map(|k| k.name.clone()).collect();
    host_keys.retain(|k| {
        let pair = match k.name.strip_suffix(".pub") {
            Some(private) => private.to_string(),
            None => format!("{}.pub", k.name),
        };
        names.contains(&pair)
    });
    Ok(Identity {
        machine_id,
        host_keys,
    })
}

/// The device of the root partition a previous install left on `disk`: the GPT
/// partition the installer names `root` with the Linux file system type.
pub fn old_root_partition(disk: &Path) -> Result<PathBuf, String> {
    use gpt::disk::LogicalBlockSize;
    let open = |lb| {
        gpt::GptConfig::new()
            .writable(false)
            .logical_block_size(lb)
            .open(disk)
    };
    let table = open(LogicalBlockSize::Lb512)
        .or_else(|_| open(LogicalBlockSize::Lb4096))
        .map_err(|e| format!("no GPT on {} ({e})", disk.display()))?;
    let number = table
        .partitions()
        .iter()
        .find(|(_, p)| {
            p.name == crate::layout::GPT_ROOT_NAME
                && p.part_type_guid == gpt::partition_types::LINUX_FS
        })
        .map(|(n, _)| *n)
        .ok_or_else(|| format!("no `root` partition on {}", disk.display()))?;
    Ok(disk::partition_path(disk, number))
}

/// What the reinstall will do, and the console line that says so.
pub fn read_previous(disk: &Path, plan: &InstallPlan) -> (Option<Identity>, String) {
    let fresh = |why: String| {
        (
            None,
            format!("identity: fresh SSH host keys and machine-id: {why}"),
        )
    };
    let part = match old_root_partition(disk) {
        Ok(p) => p,
        Err(e) => return fresh(format!("no previous install found ({e})")),
    };
    // The kernel made the partition's node when the disk appeared; give udev-less
    // devtmpfs a moment.
    for _ in 0..20 {
        if part.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let at = Path::new(paths::OLD_ROOT);
    let dev = part.to_string_lossy().to_string();
    // Read-only and without replaying the journal: nothing on the old disk changes.
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let mounted = sys::mount_guarded(&dev, at, "ext4", flags, Some("noload"))
        .or_else(|_| sys::mount_guarded(&dev, at, "ext3", flags, Some("noload")));
    let mounted = match mounted {
        Ok(m) => m,
        Err(e) => return fresh(format!("the old root {dev} is unreadable ({e})")),
    };
    let read = read_from(at, plan);
    let stuck = mounted.unmount();
    if !stuck.is_empty() {
        crate::console::line(&format!(
            "identity: note: could not unmount {}",
            stuck.join(", ")
        ));
    }
    match read {
        Ok(id) if id.host_keys.is_empty() && id.machine_id.is_none() => fresh(format!(
            "the previous install on {dev} has no host keys or machine-id"
        )),
        Ok(id) => {
            let keys: Vec<&str> = id
                .host_keys
                .iter()
                .filter(|k| k.name.ends_with(".pub"))
                .map(|k| k.name.as_str())
                .collect();
            let msg = format!(
                "identity: keeping {}'s SSH host keys ({}) and machine-id {} from its previous install on {dev}",
                plan.hostname,
                if keys.is_empty() { "none".to_string() } else { keys.join(", ") },
                id.machine_id.as_deref().unwrap_or("(none: a fresh one)")
            );
            (Some(id), msg)
        }
        Err(why) => fresh(format!("the install on {dev} is not this node's: {why}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toml_for(mac: &str, hostname: &str) -> String {
        let mut plan = crate::testutil::plan();
        plan.mac = mac.into();
        plan.hostname = hostname.into();
        render::node_toml(&plan)
    }

    #[test]
    fn only_this_nodes_previous_install_counts() {
        let plan = crate::testutil::plan();
        assert_eq!(
            is_previous_install(&toml_for(&plan.mac, &plan.hostname), &plan),
            Ok(())
        );
        // MACs compare however they are written.
        let upper = toml_for(&plan.mac.to_uppercase().replace(':', "-"), &plan.hostname);
        assert_eq!(is_previous_install(&upper, &plan), Ok(()));
        let other = is_previous_install(&toml_for("52:54:00:99:99:99", "web9"), &plan).unwrap_err();
        assert!(
            other.contains("another node (web9, MAC 52:54:00:99:99:99)"),
            "{other}"
        );
        let renamed = is_previous_install(&toml_for(&plan.mac, "web1"), &plan).unwrap_err();
        assert!(renamed.contains("installed as web1"), "{renamed}");
        let none = is_previous_install("# nothing\n", &plan).unwrap_err();
        assert!(none.contains("names no MAC"), "{none}");
    }

    #[test]
    fn reads_keys_in_pairs_and_a_valid_machine_id() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        let plan = crate::testutil::plan();
        assert!(read_from(r, &plan)
            .unwrap_err()
            .contains("holds no rollout install"));
        std::fs::create_dir_all(r.join("etc/rollout")).unwrap();
        std::fs::create_dir_all(r.join("etc/ssh")).unwrap();
        std::fs::write(r.join("etc/rollout/node.toml"), render::node_toml(&plan)).unwrap();
        std::fs::write(
            r.join("etc/machine-id"),
            "0123456789abcdef0123456789abcdef\n",
        )
        .unwrap();
        for (f, c) in [
            ("ssh_host_ed25519_key", "PRIVATE"),
            ("ssh_host_ed25519_key.pub", "ssh-ed25519 AAAA root@n"),
            ("ssh_host_rsa_key", "ORPHAN PRIVATE"),
            ("sshd_config", "Port 22"),
        ] {
            std::fs::write(r.join("etc/ssh").join(f), c).unwrap();
        }
        std::os::unix::fs::symlink("/etc/shadow", r.join("etc/ssh/ssh_host_ecdsa_key")).unwrap();
        let id = read_from(r, &plan).unwrap();
        assert_eq!(
            id.machine_id.as_deref(),
            Some("0123456789abcdef0123456789abcdef")
        );
        let names: Vec<&str> = id.host_keys.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"]);
        assert_eq!(id.host_keys[0].mode, 0o600);
        assert_eq!(id.host_keys[1].mode, 0o644);
        assert_eq!(id.host_keys[0].contents, b"PRIVATE");

        std::fs::write(r.join("etc/machine-id"), "uninitialized\n").unwrap();
        assert_eq!(read_from(r, &plan).unwrap().machine_id, None);
        let mut other = plan.clone();
        other.mac = "52:54:00:99:99:99".into();
        assert!(read_from(r, &other).unwrap_err().contains("another node"));
    }
}
