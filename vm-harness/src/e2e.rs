//! What the end-to-end installs need, prepared once and cached under
//! `target/`: the `rollout` binary, the installer initramfs, the tiny busybox
//! image and (on demand) the real Debian image. Shared by the e2e tests, the
//! demo and the benchmark.
//!
//! Cache layout (`<target>/e2e/`): `boot/{vmlinuz,initramfs.img}` (rebuilt when
//! the installer binary is newer), `tiny/` (the tiny image tree), and
//! `<target>/e2e-images/state/images/debian` (built by `rollout image build`).

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use crate::config::{DhcpMode, RolloutConfig, SERVER_ADDR};
use crate::error::{Error, IoContext, Result};
use crate::lab::Lab;
use crate::proc::{have_program, is_root, run};
use crate::qemu::QEMU;

/// Where the fixture keeps what it builds and which binaries it uses.
#[derive(Debug, Clone)]
pub struct Artifacts {
    pub workspace: PathBuf,
    pub target: PathBuf,
    pub rollout: PathBuf,
    pub installer: PathBuf,
    /// `vmlinuz` and `initramfs.img` for the lab's `state_dir/boot`.
    pub boot_dir: PathBuf,
    /// The tiny image tree (`scripts/make-tiny-image.sh` plus fake SSH keys).
    pub tiny_dir: PathBuf,
}

/// Which golden image a lab serves as `default`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    /// Busybox + the host kernel: boots from disk in seconds.
    Tiny,
    /// Debian bookworm minbase built by `rollout image build` (systemd, sshd).
    Debian,
}

impl std::str::FromStr for ImageKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "tiny" => Ok(ImageKind::Tiny),
            "debian" => Ok(ImageKind::Debian),
            _ => Err(format!("unknown image {s:?}: use debian or tiny")),
        }
    }
}

/// What a lab serves as its image: one of the fixture's, or a directory
/// holding a root filesystem (imported with `rollout image import`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    Kind(ImageKind),
    Dir(PathBuf),
}

/// The fake SSH host key files put into the tiny image: an install must never
/// carry them onto a node.
pub const FAKE_HOST_KEYS: &[&str] = &["ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"];
/// Content marker of the fake keys.
pub const FAKE_KEY_MARK: &str = "rollout-e2e fake image host key";

/// Why the e2e tests cannot run here, if they cannot (not root, no QEMU…).
pub fn skip_reason() -> Option<String> {
    if !is_root() {
        return Some("needs root (network namespaces, tap devices, loop devices)".into());
    }
    for (tool, package) in [
        (QEMU, "qemu-system-x86"),
        ("qemu-img", "qemu-utils"),
        ("ip", "iproute2"),
        ("losetup", "mount"),
        ("sgdisk", "gdisk"),
        ("blkid", "util-linux"),
        ("rsync", "rsync"),
        ("dnsmasq", "dnsmasq-base"),
    ] {
        if !have_program(tool) {
            return Some(format!(
                "{tool} not installed (Debian package {package}; scripts/setup.sh installs it)"
            ));
        }
    }
    let kernel = crate::initrd::host_kernel();
    if kernel.is_err() {
        return Some("no /boot/vmlinuz-* (install linux-image-amd64)".into());
    }
    None
}

/// The workspace root (the directory holding `vm-harness/`).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("vm-harness sits in the workspace")
        .to_path_buf()
}

fn target_dir(ws: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| if p.is_absolute() { p } else { ws.join(p) })
        .unwrap_or_else(|| ws.join("target"))
}

fn mtime(p: &Path) -> Option<SystemTime> {
    fs::metadata(p).and_then(|m| m.modified()).ok()
}

fn cargo(ws: &Path, args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("e2e: cargo {}", args.join(" "));
    run(Command::new(cargo).args(args).current_dir(ws)).map(|_| ())
}

/// A config whose only use is to tell `rollout image …`/`initramfs …` where a
/// state dir is (no server runs with it).
fn offline_config(dir: &Path) -> Result<PathBuf> {
    let mut cfg = RolloutConfig::lab(dir.join("state"));
    cfg.dhcp.mode = DhcpMode::Off;
    let path = dir.join("rollout.toml");
    fs::create_dir_all(dir).ctx("creating the cache directory", dir)?;
    cfg.write(&path)?;
    Ok(path)
}

impl Artifacts {
    /// Builds what is missing or stale. Cargo builds only run when a binary is
    /// missing (scripts/test.sh and scripts/demo.sh build everything first), so
    /// a test never waits on a second cargo holding the build lock.
    pub fn prepare() -> Result<Artifacts> {
        let ws = workspace();
        let target = target_dir(&ws);
        let rollout = std::env::var_os("ROLLOUT_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| target.join("debug/rollout"));
        if !rollout.is_file() {
            cargo(&ws, &["build", "-p", "rollout", "--bin", "rollout"])?;
        }
        let installer = target.join("x86_64-unknown-linux-musl/release/rollout-installer");
        if !installer.is_file() {
            cargo(
                &ws,
                &[
                    "build",
                    "--release",
                    "-p",
                    "rollout-installer",
                    "--target",
                    "x86_64-unknown-linux-musl",
                ],
            )?;
        }
        let cache = target.join("e2e");
        let boot_dir = cache.join("boot");
        let img = boot_dir.join("initramfs.img");
        let stale = match (mtime(&img), mtime(&installer), mtime(&rollout)) {
            (Some(i), Some(a), Some(b)) => i < a || i < b,
            _ => true,
        };
        if stale || !boot_dir.join("vmlinuz").is_file() {
            let cfg = offline_config(&cache)?;
            eprintln!(
                "e2e: building the installer initramfs into {}",
                boot_dir.display()
            );
            run(Command::new(&rollout)
                .arg("-c")
                .arg(&cfg)
                .args(["initramfs", "build", "--installer"])
                .arg(&installer)
                .arg("--output")
                .arg(&boot_dir))?;
        }
        let tiny_dir = cache.join("tiny");
        let script = ws.join("scripts/make-tiny-image.sh");
        let marker = tiny_dir.join("etc/ssh").join(FAKE_HOST_KEYS[0]);
        let tiny_stale = match (mtime(&marker), mtime(&script)) {
            (Some(m), Some(s)) => m < s,
            _ => true,
        };
        if tiny_stale {
            run(Command::new("bash").arg(&script).arg(&tiny_dir))?;
            let ssh = tiny_dir.join("etc/ssh");
            fs::create_dir_all(&ssh).ctx("creating etc/ssh in the tiny image", &ssh)?;
            for k in FAKE_HOST_KEYS {
                fs::write(ssh.join(k), format!("{FAKE_KEY_MARK} {k}\n"))
                    .ctx("writing a fake host key", ssh.join(k))?;
            }
            add_program(&tiny_dir, Path::new("/usr/bin/ssh-keygen"))?;
        }
        Ok(Artifacts {
            workspace: ws,
            target,
            rollout,
            installer,
            boot_dir,
            tiny_dir,
        })
    }

    /// The tiny image tree, for `rollout image import`.
    pub fn tiny_image(&self) -> &Path {
        &self.tiny_dir
    }

    /// The cached Debian image (`…/images/debian`), built with `rollout image
    /// build` on first use (~2 min, needs the Debian mirror). `ROLLOUT_E2E_DEBIAN`
    /// may name an existing image directory instead.
    pub fn debian_image(&self) -> Result<PathBuf> {
        if let Some(p) = std::env::var_os("ROLLOUT_E2E_DEBIAN") {
            return Ok(PathBuf::from(p));
        }
        let cache = self.target.join("e2e-images");
        let image = cache.join("state/images/debian");
        if image.join("published").exists() {
            return Ok(image);
        }
        let cfg = offline_config(&cache)?;
        eprintln!(
            "e2e: building the Debian image (once; cached in {})",
            image.display()
        );
        let st = Command::new(&self.rollout)
            .arg("-c")
            .arg(&cfg)
            .args(["image", "build", "debian"])
            .status()
            .map_err(|source| Error::Spawn {
                cmd: "rollout image build debian".into(),
                source,
            })?;
        if !st.success() || !image.join("published").exists() {
            return Err(Error::Command {
                cmd: format!("rollout -c {} image build debian", cfg.display()),
                status: st.to_string(),
                stderr: "see its output above (it needs the Debian mirror)".into(),
            });
        }
        Ok(image)
    }

    /// Puts the boot files and `image` (as `default`) into the lab's state dir,
    /// writes the config, starts `rollout serve` and waits until it listens.
    /// Returns the server's HTTP address inside the lab.
    pub fn serve(&self, lab: &mut Lab, image: ImageKind) -> Result<SocketAddr> {
        let cfg = lab.config();
        self.serve_with(lab, image, cfg)
    }

    /// [`Artifacts::serve`] with a config of the caller's.
    pub fn serve_with(
        &self,
        lab: &mut Lab,
        image: ImageKind,
        config: RolloutConfig,
    ) -> Result<SocketAddr> {
        self.serve_source(lab, &ImageSource::Kind(image), config)
    }

    /// [`Artifacts::serve_with`] for any [`ImageSource`].
    pub fn serve_source(
        &self,
        lab: &mut Lab,
        image: &ImageSource,
        config: RolloutConfig,
    ) -> Result<SocketAddr> {
        let state = lab.state_dir();
        crate::boottest::stage_boot_files(
            &state,
            &self.boot_dir.join("vmlinuz"),
            Some(&self.boot_dir.join("initramfs.img")),
        )?;
        let path = lab.write_config(&config)?;
        let dest = state.join("images").join(&config.install.image);
        let _ = fs::remove_dir_all(&dest);
        let import = |dir: &Path| {
            run(Command::new(&self.rollout)
                .arg("-c")
                .arg(&path)
                .args(["image", "import", &config.install.image])
                .arg(dir))
        };
        match image {
            ImageSource::Kind(ImageKind::Tiny) => {
                import(&self.tiny_dir)?;
            }
            ImageSource::Dir(dir) => {
                import(dir)?;
            }
            ImageSource::Kind(ImageKind::Debian) => {
                let src = self.debian_image()?;
                fs::create_dir_all(state.join("images")).ctx("creating images/", &state)?;
                run(Command::new("cp").arg("-a").arg(&src).arg(&dest))?;
            }
        }
        lab.spawn_server(&path, &self.rollout)?;
        if let Err(e) = lab.wait_server_ready(Duration::from_secs(30)) {
            let tail = lab.server().map(|s| s.log_tail(30)).unwrap_or_default();
            return Err(Error::ServerNotReady {
                cause: e.to_string(),
                log_tail: tail.join("\n"),
            });
        }
        Ok(SocketAddr::from((SERVER_ADDR, config.http_port())))
    }

    /// Starts a second `rollout serve` inside lab host `host` (a router: the
    /// server of the rack behind it) with `config`, which names its own
    /// `state_dir` and address: the boot files go into that state dir and the
    /// config into `<lab dir>/<host>.toml`, output into `<lab dir>/<host>-server.log`.
    /// No image is imported (a mirror copies its own from the primary).
    /// Returns the server's HTTP address.
    pub fn serve_on_host(
        &self,
        lab: &mut Lab,
        host: &str,
        config: RolloutConfig,
    ) -> Result<SocketAddr> {
        crate::boottest::stage_boot_files(
            &config.state_dir,
            &self.boot_dir.join("vmlinuz"),
            Some(&self.boot_dir.join("initramfs.img")),
        )?;
        let path = lab.dir().join(format!("{host}.toml"));
        let log = lab.dir().join(format!("{host}-server.log"));
        config.write(&path)?;
        let address = config.server.address.unwrap_or(SERVER_ADDR);
        let addr = SocketAddr::from((address, config.http_port()));
        let h = lab.host_mut(host).ok_or_else(|| Error::Netns {
            ns: host.into(),
            message: format!("no host {host:?} in the lab"),
        })?;
        match h.spawn_rollout(
            &self.rollout,
            &path,
            &log,
            (address, config.http_port()),
            Duration::from_secs(30),
        ) {
            Ok(_) => Ok(addr),
            Err(e) => Err(Error::ServerNotReady {
                cause: e.to_string(),
                log_tail: crate::console::tail(&log, 30).join("\n"),
            }),
        }
    }
}

/// Copies a dynamically linked host program and the libraries `ldd` names into
/// `root`, at the same paths. The tiny image gets `ssh-keygen` this way, so the
/// installer generates real host keys in it as it does in a Debian image.
fn add_program(root: &Path, program: &Path) -> Result<()> {
    if !program.is_file() {
        return Err(Error::MissingTool {
            tool: program.display().to_string(),
            hint: "install openssh-client (scripts/setup.sh does)".into(),
        });
    }
    let ldd = run(Command::new("ldd").arg(program))?;
    let libs = ldd.lines().filter_map(|l| {
        let path = match l.split_once("=>") {
            Some((_, r)) => r.split_whitespace().next()?,
            None => l.split_whitespace().next()?,
        };
        path.starts_with('/').then(|| PathBuf::from(path))
    });
    for src in std::iter::once(program.to_path_buf()).chain(libs) {
        let dest = root.join(src.strip_prefix("/").unwrap_or(&src));
        if let Some(p) = dest.parent() {
            fs::create_dir_all(p).ctx("creating a directory in the tiny image", p)?;
        }
        fs::copy(&src, &dest).ctx("copying into the tiny image", &src)?;
    }
    Ok(())
}
