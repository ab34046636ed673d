//! Changing an image: `enter` (a shell or command chrooted into a copy of the published
//! serial) and `import` (a directory or tarball becomes a serial).
//!
//! Commands run in a child that first unshares its mount namespace and makes every
//! mount private, so the /proc, /sys and /dev bind mounts exist only for that child and
//! vanish with it — even if this process is killed, nothing is left mounted on the host.

use super::mounts::{make_dirs, ExtraMounts};
use super::store::{Images, SerialMeta};
use super::ImageError;
use crate::config::ImageMount;
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn errno(e: nix::errno::Errno) -> std::io::Error {
    std::io::Error::from_raw_os_error(e as i32)
}

/// For `pre_exec`: the child gets its own mount namespace and `/` becomes private
/// (recursively) in it, so nothing it mounts propagates to the host and its mounts
/// vanish with it. Only syscalls, as the time between fork and exec requires.
pub(crate) fn private_mount_namespace() -> std::io::Result<()> {
    unshare(CloneFlags::CLONE_NEWNS).map_err(errno)?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(errno)
}

pub(crate) fn run_tool(cmd: &mut Command) -> Result<(), ImageError> {
    let shown = format!("{cmd:?}").replace('"', "");
    let out = cmd.output().map_err(|e| ImageError::Command {
        command: shown.clone(),
        detail: e.to_string(),
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ImageError::Command {
            command: shown,
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }
}

/// Paths under `root` that are mount points in *this* namespace. Must be empty before
/// anything under `root` is deleted or moved, or we would reach into /proc or /dev.
fn mounts_under(root: &Path) -> Vec<String> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let prefix = root.to_string_lossy().to_string();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| *m == prefix || m.starts_with(&format!("{prefix}/")))
        .map(String::from)
        .collect()
}

/// `PATH` for commands inside an image.
const IMAGE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Runs `argv` chrooted into `root` with /proc, /sys, /dev and /dev/pts mounted, plus
/// `extra` mounts, in a private mount namespace. Stdio is inherited (interactive shells work).
pub fn run_in_root(
    root: &Path,
    argv: &[String],
    prompt: &str,
    extra: &[ImageMount],
) -> Result<ExitStatus, ImageError> {
    let mut created = Vec::new();
    let status = run_in_root_inner(root, argv, prompt, extra, &mut created);
    // Deepest first; remove_dir only succeeds on an empty directory, so anything the
    // command put there stays.
    for dir in created.iter().rev() {
        let _ = std::fs::remove_dir(dir);
    }
    status
}

fn run_in_root_inner(
    root: &Path,
    argv: &[String],
    prompt: &str,
    extra: &[ImageMount],
    created: &mut Vec<PathBuf>,
) -> Result<ExitStatus, ImageError> {
    let proc_dir = make_dirs(root, "proc", created)?;
    let sys_dir = make_dirs(root, "sys", created)?;
    let dev_dir = make_dirs(root, "dev", created)?;
    let mut extra_mounts = ExtraMounts::prepare(root, extra, created)?;
    let mut in_child = extra_mounts.child_part();
    let resolv = root.join("etc/resolv.conf");
    // Name resolution for apt inside the image, without writing the host's resolver
    // config into the image: bind it over the image's file only if that is a plain file.
    let bind_resolv = std::fs::symlink_metadata(&resolv).is_ok_and(|m| m.is_file())
        && Path::new("/etc/resolv.conf").exists();
    let root_owned = root.to_path_buf();

    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .env("PATH", IMAGE_PATH)
        .env("HOME", "/root")
        .env(
            "TERM",
            std::env::var("TERM").unwrap_or_else(|_| "dumb".into()),
        )
        .env("LANG", "C.UTF-8")
        .env("PS1", prompt);
    if let Ok(v) = std::env::var("DEBIAN_FRONTEND") {
        cmd.env("DEBIAN_FRONTEND", v);
    }
    // SAFETY: the closure runs between fork and exec and only makes syscalls through nix
    // on paths prepared above (short paths use nix's stack buffers, no allocation).
    unsafe {
        cmd.pre_exec(move || {
            private_mount_namespace()?;
            mount(
                Some("proc"),
                &proc_dir,
                Some("proc"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                None::<&str>,
            )
            .map_err(errno)?;
            let rbind = MsFlags::MS_BIND | MsFlags::MS_REC;
            mount(Some("/sys"), &sys_dir, None::<&str>, rbind, None::<&str>).map_err(errno)?;
            // Recursive, so /dev/pts (terminals for the shell) and /dev/shm come along.
            mount(Some("/dev"), &dev_dir, None::<&str>, rbind, None::<&str>).map_err(errno)?;
            if bind_resolv {
                mount(
                    Some("/etc/resolv.conf"),
                    &resolv,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(errno)?;
            }
            in_child.mount_all()?;
            nix::unistd::chroot(&root_owned).map_err(errno)?;
            nix::unistd::chdir("/").map_err(errno)?;
            // The parent ignores these while it waits; the command gets them back.
            for sig in [nix::sys::signal::SIGINT, nix::sys::signal::SIGQUIT] {
                nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigDfl)
                    .map_err(errno)?;
            }
            Ok(())
        });
    }
    // Like system(3): Ctrl-C is for the command in the image, not for us, so the
    // cleanup below always runs.
    let old_int = unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::SIGINT,
            nix::sys::signal::SigHandler::SigIgn,
        )
    };
    let old_quit = unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::SIGQUIT,
            nix::sys::signal::SigHandler::SigIgn,
        )
    };
    let status = cmd.status();
    unsafe {
        if let Ok(h) = old_int {
            let _ = nix::sys::signal::signal(nix::sys::signal::SIGINT, h);
        }
        if let Ok(h) = old_quit {
            let _ = nix::sys::signal::signal(nix::sys::signal::SIGQUIT, h);
        }
    }
    if let Some(e) = extra_mounts.failure() {
        return Err(e);
    }
    status.map_err(|e| ImageError::Command {
        command: argv.join(" "),
        detail: format!("{e} (inside the image at {})", root.display()),
    })
}

/// Keeps package installs in the image from starting services on the build host.
struct PolicyRcD(Option<PathBuf>);

impl PolicyRcD {
    fn install(root: &Path) -> Self {
        let sbin = root.join("usr/sbin");
        let path = sbin.join("policy-rc.d");
        if !std::fs::symlink_metadata(&sbin).is_ok_and(|m| m.is_dir())
            || std::fs::symlink_metadata(&path).is_ok()
        {
            return PolicyRcD(None);
        }
        use std::os::unix::fs::PermissionsExt;
        let ok = std::fs::write(
            &path,
            "#!/bin/sh\n# rollout: no services while building\nexit 101\n",
        )
        .and_then(|_| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)));
        PolicyRcD(ok.is_ok().then_some(path))
    }
}

impl Drop for PolicyRcD {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct EnterOptions {
    /// Empty: an interactive shell.
    pub command: Vec<String>,
    pub note: String,
    /// Extra strip patterns (see [`super::tree::STRIP_PATTERNS`]).
    pub extra_strip: Vec<String>,
}

/// Removes the work directory on every exit path, after checking nothing is mounted in it.
struct WorkDir(PathBuf);

impl WorkDir {
    fn fresh(path: PathBuf) -> Result<Self, ImageError> {
        let w = WorkDir(path);
        w.clear()?;
        std::fs::create_dir_all(&w.0).map_err(io_err(&w.0))?;
        Ok(w)
    }

    fn clear(&self) -> Result<(), ImageError> {
        let mounts = mounts_under(&self.0);
        if !mounts.is_empty() {
            return Err(ImageError::Unsafe(format!(
                "{} still has mounts ({}); unmount them (umount -R) before retrying",
                self.0.display(),
                mounts.join(", ")
            )));
        }
        match std::fs::remove_dir_all(&self.0) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&self.0)(e)),
        }
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Err(e) = self.clear() {
            tracing::warn!("leaving work directory behind: {e}");
        }
    }
}

fn copy_tree(src: &Path, dst: &Path) -> Result<(), ImageError> {
    // A real copy: hard links would let edits in the work tree change published serials.
    run_tool(
        Command::new("cp")
            .arg("-a")
            .arg("--reflink=auto")
            .arg(src)
            .arg(dst),
    )
}

fn ldconfig(root: &Path) {
    if root.join("etc/ld.so.conf").exists() && Path::new("/sbin/ldconfig").exists() {
        if let Err(e) = run_tool(Command::new("/sbin/ldconfig").arg("-r").arg(root)) {
            tracing::warn!("ldconfig in the image failed: {e}");
        }
    }
}

impl Images {
    /// Copies the published serial, runs `opts.command` (or a shell) in it, and publishes
    /// the result as a new serial. Returns `None` when nothing changed.
    pub fn enter(&self, name: &str, opts: &EnterOptions) -> Result<Option<SerialMeta>, ImageError> {
        let what = if opts.command.is_empty() {
            format!("rollout image enter {name}")
        } else {
            format!("rollout image enter {name} -- {}", opts.command.join(" "))
        };
        if !self.image_dir(name).join("serials").is_dir() {
            return Err(ImageError::NoSuchImage(name.to_string()));
        }
        let _lock = self.lock(name, &what)?;
        let parent = self
            .published(name)?
            .ok_or_else(|| ImageError::NothingPublished(name.to_string()))?;
        let work = WorkDir::fresh(self.work_dir(name))?;
        let root = work.0.join("root");
        copy_tree(&self.serial_root(name, parent), &root)?;

        let argv = if opts.command.is_empty() {
            let shell = if root.join("bin/bash").exists() {
                "/bin/bash"
            } else {
                "/bin/sh"
            };
            vec![shell.to_string(), "-i".to_string()]
        } else {
            opts.command.clone()
        };
        let status = {
            let _policy = PolicyRcD::install(&root);
            let mounts = self
                .config(name)
                .map(|c| c.mounts.as_slice())
                .unwrap_or(&[]);
            run_in_root(&root, &argv, &format!("(image {name}) \\w # "), mounts)?
        };
        if !status.success() {
            return Err(ImageError::Discarded {
                status: status.to_string(),
                serial: parent,
            });
        }
        ldconfig(&root);
        let meta = self.commit_locked(name, &root, Some(parent), &opts.note, &opts.extra_strip)?;
        Ok(meta)
    }

    /// Makes a new serial from a directory or a tarball (any compression GNU tar reads).
    pub fn import(
        &self,
        name: &str,
        source: &Path,
        note: &str,
        extra_strip: &[String],
    ) -> Result<Option<SerialMeta>, ImageError> {
        let meta = std::fs::metadata(source).map_err(io_err(source))?;
        let _lock = self.lock(
            name,
            &format!("rollout image import {name} {}", source.display()),
        )?;
        let parent = self.published(name)?;
        let work = WorkDir::fresh(self.work_dir(name))?;
        let root = work.0.join("root");
        if meta.is_dir() {
            copy_tree(source, &root)?;
        } else if meta.is_file() {
            std::fs::create_dir_all(&root).map_err(io_err(&root))?;
            run_tool(
                Command::new("tar")
                    .args([
                        "--numeric-owner",
                        "--xattrs",
                        "--xattrs-include=*",
                        "--acls",
                        "-xpf",
                    ])
                    .arg(source)
                    .arg("-C")
                    .arg(&root),
            )?;
        } else {
            return Err(ImageError::BadSource(source.to_path_buf()));
        }
        self.commit_locked(name, &root, parent, note, extra_strip)
    }
}
