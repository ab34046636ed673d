//! `rollout image build`: a fresh Debian root with debootstrap.

use super::enter::{private_mount_namespace, run_in_root};
use super::store::{Images, SerialMeta};
use super::ImageError;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

/// What every image needs to boot from disk, be reached and be kept in sync.
/// Networking is systemd-networkd (part of `systemd`); the installer writes its config.
pub const BASE_PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "udev",
    "kmod",
    "initramfs-tools",
    "openssh-server",
    "rsync",
    "iproute2",
    "e2fsprogs",
    "ca-certificates",
];

pub const FALLBACK_MIRROR: &str = "http://deb.debian.org/debian";

#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub suite: String,
    /// `None`: the host's configured Debian mirror ([`host_mirror`]).
    pub mirror: Option<String>,
    pub kernel: String,
    pub include: Vec<String>,
    pub note: String,
    pub extra_strip: Vec<String>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            suite: "bookworm".into(),
            mirror: None,
            kernel: "linux-image-amd64".into(),
            include: Vec::new(),
            note: String::new(),
            extra_strip: Vec::new(),
        }
    }
}

/// The first Debian archive URL (path ending in `/debian`, so not security or
/// third-party repositories) in one-line or deb822 apt sources.
pub fn mirror_from_sources(texts: &[String]) -> Option<String> {
    for text in texts {
        for line in text.lines() {
            let line = line.trim();
            let urls: Vec<&str> = if let Some(rest) = line.strip_prefix("deb ") {
                // `deb [arch=amd64 signed-by=…] URL suite components`
                let rest = match rest.trim_start().strip_prefix('[') {
                    Some(r) => r.split_once(']').map(|(_, r)| r).unwrap_or(""),
                    None => rest,
                };
                rest.split_whitespace().take(1).collect()
            } else if let Some(rest) = line.strip_prefix("URIs:") {
                rest.split_whitespace().collect()
            } else {
                continue;
            };
            if let Some(u) = urls
                .into_iter()
                .map(|u| u.trim_end_matches('/'))
                .find(|u| u.ends_with("/debian") && u.contains("://"))
            {
                return Some(u.to_string());
            }
        }
    }
    None
}

/// The mirror this host's apt uses, else [`FALLBACK_MIRROR`].
pub fn host_mirror() -> String {
    let mut texts = Vec::new();
    if let Ok(t) = std::fs::read_to_string("/etc/apt/sources.list") {
        texts.push(t);
    }
    if let Ok(rd) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut files: Vec<_> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        files.sort();
        texts.extend(files.iter().filter_map(|f| std::fs::read_to_string(f).ok()));
    }
    mirror_from_sources(&texts).unwrap_or_else(|| FALLBACK_MIRROR.to_string())
}

/// Runs debootstrap into `target`, calling `progress` with each output line prefixed by
/// the elapsed time. It runs in a private mount namespace so the /proc and /sys it
/// mounts inside the target cannot outlive it.
fn debootstrap(
    target: &Path,
    opts: &BuildOptions,
    mirror: &str,
    progress: &mut dyn FnMut(&str),
) -> Result<(), ImageError> {
    if Command::new("debootstrap")
        .arg("--version")
        .output()
        .is_err()
    {
        return Err(ImageError::ToolMissing("debootstrap", "debootstrap"));
    }
    let mut include: Vec<String> = BASE_PACKAGES.iter().map(|s| s.to_string()).collect();
    include.push(opts.kernel.clone());
    include.extend(opts.include.iter().cloned());
    let mut cmd = Command::new("debootstrap");
    cmd.arg("--variant=minbase")
        .arg(format!("--include={}", include.join(",")))
        .arg(&opts.suite)
        .arg(target)
        .arg(mirror)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: only syscalls between fork and exec.
    unsafe {
        cmd.pre_exec(private_mount_namespace);
    }
    let shown = format!(
        "debootstrap --variant=minbase --include={} {} {} {mirror}",
        include.join(","),
        opts.suite,
        target.display()
    );
    progress(&format!("running {shown}"));
    let mut child = cmd.spawn().map_err(|e| ImageError::Command {
        command: shown.clone(),
        detail: e.to_string(),
    })?;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let readers: Vec<_> = [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ]
    .into_iter()
    .map(|r| {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(r).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        })
    })
    .collect();
    drop(tx);
    let start = Instant::now();
    let mut tail: Vec<String> = Vec::new();
    for line in rx {
        progress(&format!("[{:>7.1}s] {line}", start.elapsed().as_secs_f64()));
        tail.push(line);
        if tail.len() > 15 {
            tail.remove(0);
        }
    }
    for r in readers {
        let _ = r.join();
    }
    let status = child.wait().map_err(|e| ImageError::Command {
        command: shown.clone(),
        detail: e.to_string(),
    })?;
    if !status.success() {
        return Err(ImageError::Command {
            command: shown,
            detail: format!(
                "{status} after {:.0}s; last output:\n{}\n(see {}/debootstrap/debootstrap.log if it exists)",
                start.elapsed().as_secs_f64(),
                tail.join("\n"),
                target.display()
            ),
        });
    }
    progress(&format!(
        "debootstrap finished in {:.0}s",
        start.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// debootstrap copies the build host's hostname and resolver into the target. Nodes get
/// their own from the installer; until then the image carries neutral placeholders.
fn forget_build_host(root: &Path) -> Result<(), ImageError> {
    for (rel, contents) in [
        ("etc/hostname", "localhost\n"),
        (
            "etc/hosts",
            "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n",
        ),
        ("etc/resolv.conf", ""),
    ] {
        let p = root.join(rel);
        // Only plain files: a symlink here would point the write outside the image.
        if std::fs::symlink_metadata(&p).is_ok_and(|m| !m.is_file()) {
            continue;
        }
        std::fs::write(&p, contents).map_err(|source| ImageError::Io { path: p, source })?;
    }
    Ok(())
}

impl Images {
    /// Builds a fresh root with debootstrap and publishes it as the next serial.
    pub fn build(
        &self,
        name: &str,
        opts: &BuildOptions,
        progress: &mut dyn FnMut(&str),
    ) -> Result<SerialMeta, ImageError> {
        let mirror = opts.mirror.clone().unwrap_or_else(host_mirror);
        let _lock = self.lock(
            name,
            &format!("rollout image build {name} --suite {}", opts.suite),
        )?;
        let work = self.work_dir(name);
        if work.exists() {
            std::fs::remove_dir_all(&work).map_err(|source| ImageError::Io {
                path: work.clone(),
                source,
            })?;
        }
        let root = work.join("root");
        let result = (|| {
            debootstrap(&root, opts, &mirror, progress)?;
            let enable = ["systemctl", "enable", "systemd-networkd"].map(String::from);
            let status = run_in_root(&root, &enable, "", &[])?;
            if !status.success() {
                return Err(ImageError::Command {
                    command: enable.join(" "),
                    detail: format!("{status} inside the new image"),
                });
            }
            forget_build_host(&root)?;
            let note = if opts.note.is_empty() {
                format!("debootstrap {} from {mirror}", opts.suite)
            } else {
                opts.note.clone()
            };
            // Base for change tracking is nothing: a build is a fresh start.
            self.commit_locked(name, &root, None, &note, &opts.extra_strip)
        })();
        let _ = std::fs::remove_dir_all(&work);
        let meta = result?.expect("a commit without a parent always makes a serial");
        progress(&format!(
            "image {name} serial {} published ({} files, {:.0} MiB)",
            meta.serial,
            meta.file_count,
            meta.size_bytes as f64 / 1048576.0
        ));
        Ok(meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_is_read_from_both_source_formats() {
        let deb822 = "Types: deb\n# http://snapshot.debian.org/archive/debian/2025\nURIs: http://mirror.example/debian/\nSuites: bookworm\n\nTypes: deb\nURIs: http://deb.debian.org/debian-security\n".to_string();
        assert_eq!(
            mirror_from_sources(&[deb822]).as_deref(),
            Some("http://mirror.example/debian")
        );
        let one_line = "# deb http://old/debian bookworm main\ndeb [signed-by=/x.gpg] https://packages.cloud.google.com/apt cloud-sdk main\ndeb http://ftp.de.debian.org/debian bookworm main\n".to_string();
        assert_eq!(
            mirror_from_sources(&[one_line]).as_deref(),
            Some("http://ftp.de.debian.org/debian")
        );
        assert_eq!(
            mirror_from_sources(&["deb https://deb.nodesource.com/node_20.x nodistro main".into()]),
            None
        );
    }
}
