//! An NFS server on the lab network, for layouts that mount `/usr` (or any
//! path) over NFS. This host's kernel has no nfsd, so it is nfs-ganesha, the
//! userspace server Debian packages, with its VFS backend exporting host
//! directories read-only, NFSv3 and v4. v3 matters: the installed OS's
//! initramfs (initramfs-tools) mounts a separate `/usr` with klibc's
//! `nfsmount`, which speaks v3 only, so rpcbind runs beside it.
//!
//! Both run in the host's namespace and in a mount namespace of their own
//! with a private `/run`: rpcbind's socket is `/run/rpcbind.sock` and must not
//! meet the real host's (or another lab's).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, IoContext, Result};
use crate::hosts::Host;
use crate::lab::Lab;

/// A host directory served at `pseudo` (the path clients mount, e.g. `/export/usr`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NfsExport {
    pub dir: PathBuf,
    pub pseudo: String,
}

/// ganesha.nfsd's configuration: read-only exports without root squashing
/// (the node's root reads root-owned files of its `/usr`), no grace period
/// (it would hold opens back for 90 s after every start), no NLM or rquota
/// (mounts use `nolock`).
pub fn ganesha_conf(bind: Ipv4Addr, exports: &[NfsExport], recovery: &Path) -> String {
    let mut c = format!(
        "NFS_CORE_PARAM {{ Protocols = 3, 4; Enable_NLM = false; Enable_RQUOTA = false; \
         Mount_Path_Pseudo = true; Bind_addr = {bind}; }}\n\
         NFSV4 {{ Graceless = true; RecoveryBackend = fs; RecoveryRoot = {}; }}\n\
         LOG {{ Default_Log_Level = EVENT; }}\n",
        recovery.display()
    );
    for (i, e) in exports.iter().enumerate() {
        c.push_str(&format!(
            "EXPORT {{ Export_Id = {}; Path = {}; Pseudo = {}; Protocols = 3, 4; \
             Transports = TCP, UDP; Access_Type = RO; Squash = No_Root_Squash; \
             SecType = sys; FSAL {{ Name = VFS; }} }}\n",
            i + 1,
            e.dir.display(),
            e.pseudo
        ));
    }
    c
}

/// What the host runs: rpcbind in the foreground (so it stays in the process
/// group the host kills) and ganesha in the foreground, after a private /run.
fn launch_script(conf: &Path, log: &Path, pid: &Path) -> String {
    format!(
        "mount -t tmpfs tmpfs /run && mkdir -p /run/rpcbind && \
         {{ rpcbind -f -w & }} && sleep 0.5 && \
         exec ganesha.nfsd -F -f {} -L {} -p {} -N NIV_EVENT",
        conf.display(),
        log.display(),
        pid.display()
    )
}

const READY: &str = "NFS SERVER INITIALIZED";

impl Lab {
    /// Adds host `name` at `address` on the lab bridge serving `exports` over
    /// NFS, and waits until it answers.
    pub fn add_nfs_server(
        &mut self,
        name: &str,
        address: Ipv4Addr,
        exports: &[NfsExport],
    ) -> Result<&mut Host> {
        let dir = self.dir().join(name);
        let recovery = dir.join("recovery");
        std::fs::create_dir_all(&recovery).ctx("creating the NFS server's directory", &dir)?;
        for e in exports {
            if !e.dir.is_dir() {
                return Err(Error::Netns {
                    ns: name.into(),
                    message: format!("NFS export {} is not a directory", e.dir.display()),
                });
            }
        }
        let conf = dir.join("ganesha.conf");
        std::fs::write(&conf, ganesha_conf(address, exports, &recovery))
            .ctx("writing the ganesha config", &conf)?;
        let ganesha_log = dir.join("ganesha.log");
        let script = launch_script(&conf, &ganesha_log, &dir.join("ganesha.pid"));
        let host = self.add_host(name, address)?;
        host.spawn(
            "nfs-ganesha",
            "unshare",
            &["--mount".into(), "sh".into(), "-c".into(), script],
            &dir.join("nfs.log"),
        )?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let log = std::fs::read_to_string(&ganesha_log).unwrap_or_default();
            if log.contains(READY) {
                break;
            }
            if Instant::now() > deadline || !host.all_running() {
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                return Err(Error::Netns {
                    ns: name.into(),
                    message: format!(
                        "nfs-ganesha did not start (see {}): {}",
                        ganesha_log.display(),
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_are_read_only_v3_and_v4_without_squash() {
        let c = ganesha_conf(
            Ipv4Addr::new(10, 44, 0, 5),
            &[NfsExport {
                dir: "/lab/usr".into(),
                pseudo: "/export/usr".into(),
            }],
            Path::new("/lab/nfs/recovery"),
        );
        assert!(c.contains("Bind_addr = 10.44.0.5;"));
        assert!(c.contains("Graceless = true;"));
        assert!(c.contains(
            "EXPORT { Export_Id = 1; Path = /lab/usr; Pseudo = /export/usr; Protocols = 3, 4;"
        ));
        assert!(c.contains("Access_Type = RO; Squash = No_Root_Squash;"));
        let s = launch_script(Path::new("/c"), Path::new("/l"), Path::new("/p"));
        assert!(s.starts_with("mount -t tmpfs tmpfs /run"));
        assert!(s.contains("rpcbind -f"));
        assert!(s.ends_with("ganesha.nfsd -F -f /c -L /l -p /p -N NIV_EVENT"));
    }
}
