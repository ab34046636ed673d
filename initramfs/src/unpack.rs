//! The tar unpacker both first-install prefills share (`crate::multicast`'s
//! udpcast stream and `crate::tar_stream`'s HTTP stream), and the clean-up
//! of a new root whose stream failed: the rsync copy that follows either
//! finds almost nothing to send or copies everything.

use std::io::{self, Read};
use std::path::Path;

/// Unpacks the archive in `stream` under `root` (ownership, modes, mtimes,
/// symlinks, hard links; device nodes and FIFOs are left to rsync), up to the
/// archive's end marker. Members below the layout's `network_paths` stay on
/// the server's export; a member that would land outside `root` is an error.
pub fn unpack_tar(stream: impl Read, root: &Path, network_paths: &[String]) -> Result<(), String> {
    {
        let mut archive = tar::Archive::new(stream);
        archive.set_preserve_permissions(true);
        archive.set_preserve_ownerships(true);
        archive.set_preserve_mtime(true);
        archive.set_overwrite(true);
        let entries = archive.entries().map_err(|e| format!("tar: {e}"))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| format!("tar: {e}"))?;
            let t = entry.header().entry_type();
            if t.is_character_special() || t.is_block_special() || t.is_fifo() {
                continue;
            }
            let path = entry
                .path()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            // One stream serves every layout: what this node mounts over the
            // network stays on the server's export, as the rsync copy's
            // excludes keep it (the mount point itself is made).
            if under_network_mount(&path, network_paths) {
                continue;
            }
            let inside = entry.unpack_in(root).map_err(|e| {
                // The tar crate's error says "failed to unpack"; the cause is beneath.
                let cause = std::error::Error::source(&e)
                    .map(|c| format!(": {c}"))
                    .unwrap_or_default();
                format!("tar: unpacking {path}: {e}{cause}")
            })?;
            if !inside {
                return Err(format!("tar: {path} points outside the new root"));
            }
        }
    }
    Ok(())
}

/// Whether a tar member (`usr/bin/ls`, `./usr/bin/ls`) lies below one of the
/// layout's network mount points (`/usr`).
pub(crate) fn under_network_mount(member: &str, network_paths: &[String]) -> bool {
    let member = format!(
        "/{}",
        member.trim_start_matches("./").trim_start_matches('/')
    );
    network_paths.iter().any(|m| {
        let m = m.trim_end_matches('/');
        member.len() > m.len() + 1 && member.starts_with(m) && member[m.len()..].starts_with('/')
    })
}

/// Removes everything under `root` but `lost+found` (the freshly made
/// filesystem's), so a stream that failed its check leaves nothing behind.
pub fn clear(root: &Path) -> io::Result<()> {
    for e in std::fs::read_dir(root)? {
        let e = e?;
        if e.file_name() == "lost+found" {
            continue;
        }
        let p = e.path();
        if e.file_type()?.is_dir() {
            match std::fs::remove_dir_all(&p) {
                // A layout's own filesystem mounted there (`/boot`, `/scratch`):
                // its contents are gone, the mount point stays.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                r => r?,
            }
        } else {
            std::fs::remove_file(&p)?;
        }
    }
    Ok(())
}
