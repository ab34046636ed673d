//! `[[image.mount]]` while a command runs in an image. Everything that can fail with a
//! useful message (targets, sources, the mount binary) is checked in the parent; the
//! mounts themselves are made by mount(8) — NFS needs its helper — from inside the
//! command's private mount namespace, so they vanish with the command and nothing on
//! them ever becomes part of a serial.
//!
//! mount(8) runs between fork and exec of the command, where only async-signal-safe
//! calls are allowed: its argv is built beforehand and the failing mount is reported
//! back through a close-on-exec pipe as its index and exit code.

use super::ImageError;
use crate::config::ImageMount;
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

const MOUNT_BINARIES: &[&str] = &["/usr/bin/mount", "/bin/mount"];

/// Creates `root/rel` directory by directory, refusing anything that is not a real
/// directory on the way (a symlink would aim the mount outside the image). Directories
/// that had to be created are recorded so they can be removed again afterwards.
pub(crate) fn make_dirs(
    root: &Path,
    rel: &str,
    created: &mut Vec<PathBuf>,
) -> Result<PathBuf, ImageError> {
    let mut path = root.to_path_buf();
    for comp in rel.split('/').filter(|c| !c.is_empty()) {
        path.push(comp);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(ImageError::Unsafe(format!(
                    "/{} in the image is not a directory (a symlink or a file), so nothing can be mounted on /{}; mount the real path instead",
                    path.strip_prefix(root).unwrap_or(&path).display(),
                    rel.trim_start_matches('/')
                )))
            }
            Err(_) => {
                std::fs::create_dir(&path).map_err(|source| ImageError::Io {
                    path: path.clone(),
                    source,
                })?;
                created.push(path.clone());
            }
        }
    }
    Ok(path)
}

/// What the forked child needs: argv as C strings and room for the pointer array,
/// so nothing is allocated after the fork.
struct Argv {
    args: Vec<CString>,
    pointers: Vec<usize>,
}

pub(crate) struct ExtraMounts {
    specs: Vec<ImageMount>,
    binary: CString,
    argvs: Vec<Argv>,
    report: Option<(OwnedFd, OwnedFd)>,
}

fn cstring(s: impl AsRef<[u8]>) -> Result<CString, ImageError> {
    CString::new(s.as_ref().to_vec())
        .map_err(|_| ImageError::Unsafe("a mount argument contains a NUL byte".into()))
}

impl ExtraMounts {
    /// Checks and prepares `specs` for an image rooted at `root`.
    pub fn prepare(
        root: &Path,
        specs: &[ImageMount],
        created: &mut Vec<PathBuf>,
    ) -> Result<Self, ImageError> {
        let mut argvs = Vec::new();
        let binary = MOUNT_BINARIES
            .iter()
            .find(|b| Path::new(b).exists())
            .copied();
        if !specs.is_empty() && binary.is_none() {
            return Err(ImageError::ToolMissing("mount", "mount"));
        }
        for m in specs {
            if m.fstype == "bind" && !Path::new(&m.source).is_dir() {
                return Err(ImageError::Unsafe(format!(
                    "the bind mount for {} needs the directory {} on this host, which does not exist; create it or fix [[image.mount]] in the config",
                    m.target, m.source
                )));
            }
            let target = make_dirs(root, &m.target, created)?;
            // -n: no mtab/utab records on the host for mounts that only this namespace sees.
            let mut args = vec![cstring("mount")?, cstring("-n")?];
            if m.fstype == "bind" {
                args.push(cstring("--rbind")?);
            } else {
                args.push(cstring("-t")?);
                args.push(cstring(&m.fstype)?);
            }
            if !m.options.is_empty() {
                args.push(cstring("-o")?);
                args.push(cstring(&m.options)?);
            }
            args.push(cstring(&m.source)?);
            args.push(cstring(target.as_os_str().as_bytes())?);
            let pointers = Vec::with_capacity(args.len() + 1);
            argvs.push(Argv { args, pointers });
        }
        let report = if specs.is_empty() {
            None
        } else {
            Some(
                nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| ImageError::Io {
                    path: PathBuf::from("pipe"),
                    source: std::io::Error::from_raw_os_error(e as i32),
                })?,
            )
        };
        Ok(ExtraMounts {
            specs: specs.to_vec(),
            binary: cstring(binary.unwrap_or("/bin/mount"))?,
            argvs,
            report,
        })
    }

    /// The half that moves into the child.
    pub fn child_part(&mut self) -> MountInChild {
        MountInChild {
            binary: self.binary.clone(),
            argvs: std::mem::take(&mut self.argvs),
            report_fd: self.report.as_ref().map(|(_, w)| w.as_raw_fd()),
        }
    }

    /// After the child is gone: which mount failed, if one did, as an error.
    pub fn failure(&mut self) -> Option<ImageError> {
        let (read, write) = self.report.take()?;
        drop(write);
        let mut buf = [0u8; 2];
        let n = nix::unistd::read(read.as_raw_fd(), &mut buf).unwrap_or(0);
        if n < 2 {
            return None;
        }
        let m = self.specs.get(buf[0] as usize)?;
        let how = match buf[1] {
            255 => "could not be started".to_string(),
            code => format!("exited with {code} (its message is above)"),
        };
        let options = if m.options.is_empty() {
            String::new()
        } else {
            format!(" -o {}", m.options)
        };
        Some(ImageError::Command {
            command: format!("mount -t {}{options} {} {}", m.fstype, m.source, m.target),
            detail: format!(
                "mount {how}; the image was not changed. Check that the source is reachable from this host, or fix the [[image.mount]] for {} in the config",
                m.target
            ),
        })
    }
}

pub(crate) struct MountInChild {
    binary: CString,
    argvs: Vec<Argv>,
    report_fd: Option<RawFd>,
}

impl MountInChild {
    /// Runs mount(8) for each prepared mount, in order. Only async-signal-safe calls.
    pub fn mount_all(&mut self) -> std::io::Result<()> {
        for (index, argv) in self.argvs.iter_mut().enumerate() {
            argv.pointers.clear();
            argv.pointers
                .extend(argv.args.iter().map(|a| a.as_ptr() as usize));
            argv.pointers.push(0);
            // SAFETY: fork/execv/_exit/waitpid/write are async-signal-safe; the argv
            // pointers point into CStrings that outlive the exec.
            let code = unsafe {
                match libc::fork() {
                    -1 => return Err(std::io::Error::last_os_error()),
                    0 => {
                        libc::execv(
                            self.binary.as_ptr(),
                            argv.pointers.as_ptr() as *const *const libc::c_char,
                        );
                        libc::_exit(255)
                    }
                    pid => {
                        let mut status = 0;
                        while libc::waitpid(pid, &mut status, 0) == -1 {
                            if *libc::__errno_location() != libc::EINTR {
                                return Err(std::io::Error::last_os_error());
                            }
                        }
                        if libc::WIFEXITED(status) {
                            libc::WEXITSTATUS(status)
                        } else {
                            254
                        }
                    }
                }
            };
            if code != 0 {
                if let Some(fd) = self.report_fd {
                    let msg = [index.min(255) as u8, code as u8];
                    // SAFETY: a plain write of a stack buffer to our own pipe.
                    unsafe { libc::write(fd, msg.as_ptr().cast(), msg.len()) };
                }
                return Err(std::io::Error::from_raw_os_error(libc::EIO));
            }
        }
        Ok(())
    }
}
