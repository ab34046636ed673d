//! Thin wrappers over mount, chroot'ed commands and reboot.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use nix::mount::{MntFlags, MsFlags};

#[derive(Debug, thiserror::Error)]
pub enum SysError {
    #[error("mount {what} on {target} ({fstype}): {source}")]
    Mount {
        what: String,
        target: String,
        fstype: String,
        #[source]
        source: nix::Error,
    },
    #[error("{0} could not be started: {1}")]
    Spawn(String, #[source] std::io::Error),
    #[error("{cmd} failed ({status}): {output}")]
    Failed {
        cmd: String,
        status: String,
        output: String,
    },
}

pub fn mount(
    what: &str,
    target: &Path,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), SysError> {
    let _ = std::fs::create_dir_all(target);
    nix::mount::mount(Some(what), target, Some(fstype), flags, data).map_err(|source| {
        SysError::Mount {
            what: what.to_string(),
            target: target.display().to_string(),
            fstype: fstype.to_string(),
            source,
        }
    })
}

pub fn bind(src: &Path, target: &Path) -> Result<(), SysError> {
    let _ = std::fs::create_dir_all(target);
    nix::mount::mount(
        Some(src),
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|source| SysError::Mount {
        what: src.display().to_string(),
        target: target.display().to_string(),
        fstype: "bind".into(),
        source,
    })
}

/// A mount the installer made on the target. Dropping it unmounts it with
/// everything below it, so an early return or a panic in a later phase leaves
/// nothing of the target disk mounted. Guards drop in reverse order of creation
/// (locals do; [`Mounts`] does for a list), deepest mount first.
#[must_use = "dropping the guard unmounts at once"]
#[derive(Debug)]
pub struct Mounted {
    at: std::path::PathBuf,
    armed: bool,
}

impl Mounted {
    pub fn at(&self) -> &Path {
        &self.at
    }

    /// Unmounts now; returns what could not be unmounted.
    pub fn unmount(mut self) -> Vec<String> {
        self.armed = false;
        umount_tree(&self.at)
    }

    /// A guard for a directory the test treats as mounted (nothing is mounted
    /// there, so dropping it unmounts nothing).
    #[cfg(test)]
    pub(crate) fn assume(at: &Path) -> Self {
        Mounted {
            at: at.to_path_buf(),
            armed: true,
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.armed {
            umount_tree(&self.at);
        }
    }
}

/// Guards unmounted in reverse order of mounting when dropped (a `Vec` alone
/// drops front to back).
#[derive(Debug, Default)]
pub struct Mounts(Vec<Mounted>);

impl Mounts {
    pub fn push(&mut self, m: Mounted) {
        self.0.push(m);
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        while let Some(m) = self.0.pop() {
            drop(m);
        }
    }
}

/// [`mount`], returning a guard that unmounts on drop.
pub fn mount_guarded(
    what: &str,
    target: &Path,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<Mounted, SysError> {
    mount(what, target, fstype, flags, data)?;
    Ok(Mounted {
        at: target.to_path_buf(),
        armed: true,
    })
}

/// [`bind`], returning a guard that unmounts on drop.
pub fn bind_guarded(src: &Path, target: &Path) -> Result<Mounted, SysError> {
    bind(src, target)?;
    Ok(Mounted {
        at: target.to_path_buf(),
        armed: true,
    })
}

/// True if `path` is a mount point listed in /proc/self/mounts.
pub fn is_mounted(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let found = mount_points(&mounts).any(|m| Path::new(m) == path);
    found
}

fn mount_points(mounts: &str) -> impl Iterator<Item = &str> {
    mounts.lines().filter_map(|l| l.split_whitespace().nth(1))
}

/// The mount points of a /proc/self/mounts text at or below `prefix`, deepest
/// first. Compared by path components: `/target/` (as `Path::join("")` makes
/// it) is the mount point `/target`.
pub fn mounts_under(mounts: &str, prefix: &Path) -> Vec<String> {
    let mut points: Vec<String> = mount_points(mounts)
        .filter(|m| Path::new(m).starts_with(prefix))
        .map(str::to_string)
        .collect();
    points.sort_by_key(|m| std::cmp::Reverse(m.len()));
    points.dedup();
    points
}

/// Unmounts everything at or below `prefix`, deepest first. Best-effort; returns
/// what could not be unmounted.
pub fn umount_tree(prefix: &Path) -> Vec<String> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let points = mounts_under(&mounts, prefix);
    let mut failed = Vec::new();
    for m in points {
        let Err(busy) = nix::mount::umount2(m.as_str(), MntFlags::empty()) else {
            continue;
        };
        // A lazy detach hides the mount but keeps the file system live (and its
        // journal dirty) until the holder lets go: say who holds it.
        let holders = holders_of(Path::new(&m), Path::new("/proc"));
        if nix::mount::umount2(m.as_str(), MntFlags::MNT_DETACH).is_err() {
            failed.push(m);
        } else {
            crate::console::line(&format!(
                "umount {m}: {busy}; detached lazily (held by {})",
                if holders.is_empty() {
                    "no process found".to_string()
                } else {
                    holders.join(", ")
                }
            ));
        }
    }
    failed
}

/// The processes (`pid name`) with a cwd, root or open file at or below `at`.
pub fn holders_of(at: &Path, proc: &Path) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(proc) else {
        return Vec::new();
    };
    let under = |p: &Path| p.starts_with(at);
    let mut found = Vec::new();
    for e in dir.flatten() {
        let pid = e.file_name().to_string_lossy().to_string();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let base = e.path();
        let links = ["cwd", "root", "exe"].iter().map(|l| base.join(l)).chain(
            std::fs::read_dir(base.join("fd"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|f| f.path()),
        );
        let holds = links
            .filter_map(|l| std::fs::read_link(l).ok())
            .find(|t| under(t));
        if let Some(t) = holds {
            let name = std::fs::read_to_string(base.join("comm")).unwrap_or_default();
            found.push(format!("{pid} {} ({})", name.trim(), t.display()));
        }
    }
    found.sort();
    found
}

fn finish(cmd: String, out: std::process::Output) -> Result<String, SysError> {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    if out.status.success() {
        return Ok(stdout);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    Err(SysError::Failed {
        cmd,
        status: out.status.to_string(),
        output: format!("{} {}", stderr.trim(), stdout.trim())
            .trim()
            .to_string(),
    })
}

pub fn run(program: &str, args: &[&str]) -> Result<String, SysError> {
    run_env(program, args, &[])
}

/// [`run`] with extra environment variables (the storage tools take their
/// no-udev switches that way).
pub fn run_env(program: &str, args: &[&str], env: &[(&str, &str)]) -> Result<String, SysError> {
    let out = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .map_err(|e| SysError::Spawn(program.to_string(), e))?;
    finish(format!("{program} {}", args.join(" ")), out)
}

/// Runs `program` (a path inside `root`) chrooted into `root`.
pub fn run_in_chroot(root: &Path, program: &str, args: &[&str]) -> Result<String, SysError> {
    let root_c = CString::new(root.as_os_str().as_bytes())
        .map_err(|e| SysError::Spawn(program.into(), e.into()))?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", "/root");
    // SAFETY: only async-signal-safe calls (chroot, chdir) between fork and exec;
    // the CStrings were built before forking.
    unsafe {
        cmd.pre_exec(move || {
            if libc::chroot(root_c.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd
        .output()
        .map_err(|e| SysError::Spawn(program.to_string(), e))?;
    finish(
        format!("chroot {} {program} {}", root.display(), args.join(" ")),
        out,
    )
}

pub fn sync() {
    nix::unistd::sync();
}

/// Reboots immediately; as PID 1 there is nobody else to do it.
pub fn reboot() -> ! {
    // Only as the installer, never as a test process on a developer's machine.
    if is_pid1() {
        crate::net::quiesce(Path::new("/sys/class/net"));
    }
    sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    // Only reached without CAP_SYS_BOOT (not PID 1 in a real boot).
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

pub fn is_pid1() -> bool {
    std::process::id() == 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// Guards unmount on drop (a list of them too), on an explicit unmount,
    /// and when a panic unwinds past them.
    #[test]
    fn mount_guards_unmount_on_drop_and_on_unwind() {
        if !testkit::prereq::require_root("mounting tmpfs") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let src = tempfile::tempdir().unwrap();
        let outer = dir.path().join("outer");
        let tmpfs = |at: &Path| mount_guarded("tmpfs", at, "tmpfs", MsFlags::empty(), None);
        {
            let mut ms = Mounts::default();
            ms.push(tmpfs(&outer).unwrap());
            // Inside the first, so the first can go only after it.
            ms.push(bind_guarded(src.path(), &outer.join("inner")).unwrap());
            assert!(is_mounted(&outer) && is_mounted(&outer.join("inner")));
        }
        assert!(!is_mounted(&outer.join("inner")) && !is_mounted(&outer));

        let m = tmpfs(&outer).unwrap();
        assert_eq!(m.unmount(), Vec::<String>::new());
        assert!(!is_mounted(&outer));
        // A panic unwinding past a guard unmounts too.
        let r = std::panic::catch_unwind(|| {
            let _m = tmpfs(&outer).unwrap();
            panic!("after mounting");
        });
        assert!(r.is_err());
        assert!(!is_mounted(&outer));

        // The root guard's path is `TARGET.join("")`, with a trailing slash:
        // it must still unmount (it once matched nothing, so every install
        // rebooted with its root mounted and its journal dirty).
        let slash = PathBuf::from(format!("{}/", outer.display()));
        let m = tmpfs(&slash).unwrap();
        assert!(is_mounted(&outer));
        assert_eq!(m.unmount(), Vec::<String>::new());
        assert!(!is_mounted(&outer), "{slash:?} is still mounted");
    }

    #[test]
    fn mounts_under_a_prefix_are_listed_deepest_first_by_path_component() {
        let mounts = "\
/dev/vda2 /target ext3 rw 0 0
proc /target/proc proc rw 0 0
/dev/vda4 /target/scratch xfs rw 0 0
tmpfs /target-other tmpfs rw 0 0
/dev/vda1 /run/rollout-esp vfat rw 0 0
";
        let want = vec!["/target/scratch", "/target/proc", "/target"];
        assert_eq!(mounts_under(mounts, Path::new("/target")), want);
        assert_eq!(mounts_under(mounts, Path::new("/target/")), want);
        assert!(mounts_under(mounts, Path::new("/tar")).is_empty());
    }

    /// A process with its cwd in a directory holds it; others do not.
    #[test]
    fn holders_of_names_the_process_with_its_cwd_inside() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new("sleep")
            .arg("30")
            .current_dir(dir.path())
            .spawn()
            .unwrap();
        let found = holders_of(dir.path(), Path::new("/proc"));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(
            found
                .iter()
                .any(|h| h.starts_with(&format!("{} sleep", child.id()))),
            "{found:?}"
        );
        let other = tempfile::tempdir().unwrap();
        assert!(holders_of(other.path(), Path::new("/proc")).is_empty());
    }
}
