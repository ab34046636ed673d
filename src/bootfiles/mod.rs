//! Builds the installer's initramfs: the `rollout-installer` static binary as `/init`,
//! the kernel modules for common NICs, disks and filesystems, and the host programs the
//! installer runs (mke2fs, rsync, extlinux, …) with their shared libraries.
//!
//! The archive is written by our own deterministic newc writer ([`crate::cpio`]), so the same
//! inputs always give the same `initramfs.img` bytes.

pub mod cli;
pub mod collect;
pub mod elf;
pub mod firmware;
pub mod modules;
pub mod tools;

pub use cli::{run, BuildArgs, InitramfsCmd};

use collect::{Category, Collector};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Programs the installer may exec and data files it copies onto the target disk,
/// at their host (and therefore initramfs) paths: the list the installer shares.
pub use crate::wire::initramfs::{FILES as HELPER_FILES, PROGRAMS as HELPER_PROGRAMS};

/// Modules requested by name (the installer loads them whatever the hardware);
/// their hard and soft dependencies come along.
pub use crate::wire::INSTALLER_MODULES as DEFAULT_MODULES;
/// Driver trees shipped whole, loaded by the installer when a device's modalias asks.
pub use modules::DRIVER_TREES;

/// Budget for the compressed archive: iPXE fetches it over HTTP into the node's
/// RAM, where the kernel unpacks it beside itself. Every NIC and storage driver
/// tree fits in it with room for the firmware Debian's packages add.
pub const SIZE_BUDGET: u64 = 60 * 1024 * 1024;

const BUILD_HINT: &str =
    "build it with: cargo build -p rollout-installer --release --target x86_64-unknown-linux-musl";

/// Which Debian package provides a host file, for error messages.
fn package_for(path: &str) -> &'static str {
    match path {
        p if p.contains("mke2fs") || p.contains("mkfs.ext") => "e2fsprogs",
        p if p.contains("mkswap") => "util-linux",
        p if p.contains("vfat") => "dosfstools",
        p if p.contains("rsync") => "rsync",
        p if p.contains("extlinux") => "extlinux",
        p if p.contains("busybox") => "busybox-static",
        p if p.contains("udp-receiver") => "udpcast",
        p if p.contains("syslinux") => "syslinux-common",
        p if p.contains("systemd-boot") => "systemd-boot-efi",
        p if p.contains("mdadm") => "mdadm",
        p if p.ends_with("/lvm") => "lvm2",
        p if p.contains("xfs") => "xfsprogs",
        _ => "the package that provides it",
    }
}

/// A helper the initramfs must carry is on this host, or the error names its package.
fn require_host_file(path: &str) -> Result<(), InitramfsError> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => Ok(()),
        Err(_) => Err(InitramfsError::HostFileMissing {
            path: path.to_string(),
            package: package_for(path),
        }),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    #[error("installer binary {0} not found; {BUILD_HINT}")]
    InstallerMissing(PathBuf),
    #[error("no kernel found: need /lib/modules/<version> and /boot/vmlinuz-<version> (apt-get install linux-image-amd64), or pass --kernel-version")]
    NoKernel,
    #[error("kernel image {0} not found; install the matching linux-image package or pick another --kernel-version")]
    KernelMissing(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("host file {path} is missing; install it with: apt-get install {package}")]
    HostFileMissing { path: String, package: &'static str },
    #[error("{path}: {source}")]
    Elf {
        path: PathBuf,
        source: elf::ElfError,
    },
    #[error("shared library {library} needed by {needed_by} not found in the library directories")]
    LibraryNotFound { library: String, needed_by: PathBuf },
    #[error("too many levels of symbolic links resolving {0}")]
    SymlinkLoop(PathBuf),
    #[error("{0} is not a regular file, directory or symlink")]
    NotARegularFile(PathBuf),
    #[error("decompressing {path} with {tool} failed: {detail} (apt-get install xz-utils zstd)")]
    Decompress {
        path: PathBuf,
        tool: &'static str,
        detail: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> InitramfsError + '_ {
    move |source| InitramfsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// `None`: the newest `/lib/modules/*` that has a `/boot/vmlinuz-*`.
    pub kernel_version: Option<String>,
    /// `None`: [`default_installer_path`].
    pub installer: Option<PathBuf>,
    /// Where `initramfs.img` and `vmlinuz` go, normally `{state_dir}/boot`.
    pub output_dir: PathBuf,
    pub modules: Vec<String>,
    /// Globs over module paths shipped whole ([`DRIVER_TREES`]).
    pub driver_trees: Vec<String>,
    /// Where the firmware the shipped modules declare is looked for.
    pub firmware_dir: PathBuf,
    pub helper_programs: Vec<String>,
    pub helper_files: Vec<String>,
    /// The storage tools archive's programs and modules ([`tools`]); an empty
    /// program list builds no archive.
    pub storage_programs: Vec<String>,
    pub storage_modules: Vec<String>,
}

impl BuildOptions {
    pub fn new(output_dir: impl Into<PathBuf>) -> Self {
        BuildOptions {
            kernel_version: None,
            installer: None,
            output_dir: output_dir.into(),
            modules: DEFAULT_MODULES.iter().map(|s| s.to_string()).collect(),
            driver_trees: DRIVER_TREES.iter().map(|s| s.to_string()).collect(),
            firmware_dir: PathBuf::from("/lib/firmware"),
            helper_programs: HELPER_PROGRAMS.iter().map(|s| s.to_string()).collect(),
            helper_files: HELPER_FILES.iter().map(|s| s.to_string()).collect(),
            storage_programs: tools::STORAGE_PROGRAMS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            storage_modules: tools::STORAGE_MODULES
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct BuildReport {
    pub kernel_version: String,
    pub initramfs: PathBuf,
    pub kernel: PathBuf,
    pub compressed_bytes: u64,
    pub uncompressed_bytes: u64,
    pub entries: usize,
    pub installer_bytes: u64,
    pub modules_bytes: u64,
    pub helpers_bytes: u64,
    pub libs_bytes: u64,
    pub other_bytes: u64,
    pub firmware_bytes: u64,
    /// Firmware files shipped (relative to /lib/firmware).
    pub firmware: Vec<String>,
    /// Firmware the shipped modules declare that the build host does not have.
    pub firmware_missing: usize,
    /// Module files shipped, in load order (paths relative to the modules directory).
    pub modules: Vec<String>,
    pub builtin_modules: Vec<String>,
    pub missing_modules: Vec<String>,
    /// The storage tools archive, or why it was not built (this host lacks a
    /// program: the server then answers 404 and a RAID/LVM/XFS install fails
    /// naming the remedy; other installs never ask for it).
    pub storage_tools: Result<tools::ToolsReport, String>,
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

impl fmt::Display for BuildReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "initramfs: {}", self.initramfs.display())?;
        writeln!(
            f,
            "kernel:    {} ({})",
            self.kernel.display(),
            self.kernel_version
        )?;
        writeln!(
            f,
            "size:      {} compressed, {} uncompressed, {} entries{}",
            mib(self.compressed_bytes),
            mib(self.uncompressed_bytes),
            self.entries,
            if self.compressed_bytes > SIZE_BUDGET {
                format!(" — OVER the {} budget", mib(SIZE_BUDGET))
            } else {
                format!(" (budget {} compressed)", mib(SIZE_BUDGET))
            }
        )?;
        writeln!(f, "  installer {:>10}", mib(self.installer_bytes))?;
        writeln!(
            f,
            "  modules   {:>10}  ({} files)",
            mib(self.modules_bytes),
            self.modules.len()
        )?;
        writeln!(
            f,
            "  firmware  {:>10}  ({} files; {} more declared by the modules are not installed here)",
            mib(self.firmware_bytes),
            self.firmware.len(),
            self.firmware_missing
        )?;
        writeln!(f, "  helpers   {:>10}", mib(self.helpers_bytes))?;
        writeln!(f, "  libs      {:>10}", mib(self.libs_bytes))?;
        writeln!(f, "  other     {:>10}", mib(self.other_bytes))?;
        if !self.builtin_modules.is_empty() {
            writeln!(
                f,
                "built into the kernel: {}",
                self.builtin_modules.join(" ")
            )?;
        }
        if !self.missing_modules.is_empty() {
            writeln!(
                f,
                "warning: not available for this kernel: {}",
                self.missing_modules.join(" ")
            )?;
        }
        match &self.storage_tools {
            Ok(t) => write!(f, "{t}")?,
            Err(why) => writeln!(
                f,
                "warning: no storage tools archive ({why}); layouts with RAID, LVM or XFS cannot install"
            )?,
        }
        Ok(())
    }
}

/// Where the Debian package keeps the installer binary and the boot files built at
/// package time: `scripts/package.sh` compiles with `ROLLOUT_LIBDIR=/usr/lib/rollout`.
/// `None` in a build from a checkout, which uses the workspace's `target/` and
/// `state_dir/boot` only.
pub const PACKAGED_LIBDIR: Option<&str> = option_env!("ROLLOUT_LIBDIR");

/// The packaged `vmlinuz` and `initramfs.img`, served when `state_dir/boot` has
/// none (`rollout initramfs build` writes there and so takes precedence).
pub fn packaged_boot_dir() -> Option<PathBuf> {
    PACKAGED_LIBDIR.map(|dir| Path::new(dir).join("boot"))
}

/// `$CARGO_TARGET_DIR/…` when that is set at run time; else the packaged
/// `/usr/lib/rollout/rollout-installer`; else
/// `<workspace>/target/x86_64-unknown-linux-musl/release/rollout-installer`.
pub fn default_installer_path() -> PathBuf {
    const IN_TARGET: &str = "x86_64-unknown-linux-musl/release/rollout-installer";
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(target).join(IN_TARGET);
    }
    match PACKAGED_LIBDIR {
        Some(dir) => Path::new(dir).join("rollout-installer"),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target")
            .join(IN_TARGET),
    }
}

fn list_dir(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

pub fn default_kernel_version() -> Option<String> {
    modules::pick_kernel_version(
        &list_dir(Path::new("/lib/modules")),
        &list_dir(Path::new("/boot")),
    )
}

fn read_opt(path: &Path) -> Result<String, InitramfsError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Reads a module file, decompressing `.xz`/`.zst`/`.gz` so the installer can
/// `finit_module` it without a decompressor.
fn read_module(path: &Path) -> Result<Vec<u8>, InitramfsError> {
    let name = path.to_string_lossy();
    let tool: &'static str = if name.ends_with(".xz") {
        "xz"
    } else if name.ends_with(".zst") {
        "zstd"
    } else if name.ends_with(".gz") {
        "gzip"
    } else {
        return std::fs::read(path).map_err(io_err(path));
    };
    let out = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .output()
        .map_err(|e| InitramfsError::Decompress {
            path: path.to_path_buf(),
            tool,
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(InitramfsError::Decompress {
            path: path.to_path_buf(),
            tool,
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out.stdout)
}

/// What [`add_modules`] shipped.
struct ShippedModules {
    res: modules::Resolution,
    firmware: Vec<String>,
    firmware_missing: usize,
}

fn add_modules(
    c: &mut Collector,
    version: &str,
    opts: &BuildOptions,
) -> Result<ShippedModules, InitramfsError> {
    let dir = PathBuf::from("/lib/modules").join(version);
    let dep_text = std::fs::read_to_string(dir.join("modules.dep"))
        .map_err(io_err(&dir.join("modules.dep")))?;
    let dep = modules::ModulesDep::parse(&dep_text);
    let builtin_text = read_opt(&dir.join("modules.builtin"))?;
    let builtin: HashSet<String> = modules::parse_builtin(&builtin_text);
    let softdep_text = read_opt(&dir.join("modules.softdep"))?;
    let softdeps = modules::parse_softdeps(&softdep_text);
    let alias_text = read_opt(&dir.join("modules.alias"))?;
    let aliases: HashMap<String, Vec<String>> = modules::parse_exact_aliases(&alias_text);
    let tables = modules::Tables {
        dep: &dep,
        builtin: &builtin,
        softdeps: &softdeps,
        aliases: &aliases,
    };
    // The fallback names first (so they lead the load order), then the trees.
    let mut wanted: Vec<String> = opts.modules.clone();
    wanted.extend(modules::tree_modules(&dep, &opts.driver_trees));
    let wanted: Vec<&str> = wanted.iter().map(String::as_str).collect();
    let res = modules::resolve(&tables, &wanted);
    // Reproduce the /lib → usr/lib symlink and find the real directory to put files in.
    let real_dir = c.add_host_path(&dir, Category::Other)?;
    let real_rel = real_dir
        .to_string_lossy()
        .trim_start_matches('/')
        .to_string();
    let mut declared = std::collections::BTreeSet::new();
    for m in &res.load_order {
        let data = read_module(&dir.join(m))?;
        declared.extend(firmware::of_module(&data));
        let dest = format!("{real_rel}/{}", modules::plain_ko_path(m));
        c.add_bytes(&dest, 0o644, data, Category::Modules);
    }
    let trimmed = modules::render_trimmed(&dep, &res.load_order);
    c.add_bytes(
        &format!("{real_rel}/modules.dep"),
        0o644,
        trimmed.into_bytes(),
        Category::Modules,
    );
    // What the installer matches devices against, for the shipped modules only;
    // softdeps and the built-in list as they are (small, and names that are not
    // shipped resolve to nothing).
    let shipped: HashSet<String> = res
        .load_order
        .iter()
        .map(|p| modules::module_name(p))
        .collect();
    let aliases = crate::kernel::alias::filter_aliases(&alias_text, |m| shipped.contains(m));
    for (name, text) in [
        ("modules.alias", aliases),
        ("modules.softdep", softdep_text),
        ("modules.builtin", builtin_text),
    ] {
        c.add_bytes(
            &format!("{real_rel}/{name}"),
            0o644,
            text.into_bytes(),
            Category::Modules,
        );
    }
    // Firmware goes where the kernel's loader looks: /lib/firmware, beside modules/.
    let lib_rel = real_rel
        .strip_suffix(&format!("/modules/{version}"))
        .unwrap_or("lib");
    // A file two declarations lead to (a name and a glob) ships once.
    let mut shipped_fw = std::collections::BTreeSet::new();
    let mut firmware_missing = 0;
    for name in &declared {
        let files = firmware::provided(&opts.firmware_dir, name);
        if files.is_empty() {
            firmware_missing += 1;
        }
        for f in files {
            let src = opts.firmware_dir.join(&f);
            let data = std::fs::read(&src).map_err(io_err(&src))?;
            c.add_bytes(
                &format!("{lib_rel}/firmware/{f}"),
                0o644,
                data,
                Category::Firmware,
            );
            shipped_fw.insert(f);
        }
    }
    Ok(ShippedModules {
        res,
        firmware: shipped_fw.into_iter().collect(),
        firmware_missing,
    })
}

fn add_skeleton(c: &mut Collector) -> Result<(), InitramfsError> {
    for (dir, perm) in [
        ("dev", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        ("run", 0o755),
        ("tmp", 0o1777),
        ("mnt", 0o755),
        ("root", 0o700),
        ("etc", 0o755),
    ] {
        c.archive.add_dir(dir, perm);
    }
    // The kernel opens /dev/console for init's stdio before devtmpfs is mounted.
    c.archive.add_char_dev("dev/console", 0o600, 5, 1);
    c.archive.add_char_dev("dev/null", 0o666, 1, 3);
    // rsync and mke2fs look up names for uid 0 on some paths; give them one.
    c.add_bytes(
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\n".to_vec(),
        Category::Other,
    );
    c.add_bytes("etc/group", 0o644, b"root:x:0:\n".to_vec(), Category::Other);
    // Merged-/usr links, so both /sbin/x and /usr/sbin/x resolve as on the host.
    for top in ["bin", "sbin", "lib", "lib64"] {
        let p = Path::new("/").join(top);
        if let Ok(target) = std::fs::read_link(&p) {
            c.archive.add_symlink(top, &target.to_string_lossy());
        }
    }
    Ok(())
}

/// Builds `{output_dir}/initramfs.img` and copies the kernel to `{output_dir}/vmlinuz`.
pub fn build(opts: &BuildOptions) -> Result<BuildReport, InitramfsError> {
    let version = match &opts.kernel_version {
        Some(v) => v.clone(),
        None => default_kernel_version().ok_or(InitramfsError::NoKernel)?,
    };
    let kernel_src = PathBuf::from(format!("/boot/vmlinuz-{version}"));
    if !kernel_src.exists() {
        return Err(InitramfsError::KernelMissing(kernel_src));
    }
    let installer = opts
        .installer
        .clone()
        .unwrap_or_else(default_installer_path);
    let installer_bytes = match std::fs::read(&installer) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(InitramfsError::InstallerMissing(installer))
        }
        Err(e) => return Err(io_err(&installer)(e)),
    };

    let mut c = Collector::new();
    add_skeleton(&mut c)?;
    let is_dynamic = elf::is_elf(&installer_bytes)
        && elf::parse(&installer_bytes).is_ok_and(|d| d.interp.is_some());
    c.add_bytes("init", 0o755, installer_bytes, Category::Installer);
    if is_dynamic {
        // Not the intended static build, but it can still run if its libraries come along.
        tracing::warn!(path = %installer.display(), "installer is dynamically linked; shipping its libraries");
        c.add_elf_deps(&installer)?;
    }
    let shipped = add_modules(&mut c, &version, opts)?;
    let res = shipped.res;
    for prog in &opts.helper_programs {
        require_host_file(prog)?;
        c.add_program(Path::new(prog), Category::Helpers)?;
    }
    if opts
        .helper_programs
        .iter()
        .any(|p| p == crate::wire::initramfs::BUSYBOX)
    {
        c.archive.add_symlink("usr/bin/sh", "busybox");
    }
    for file in &opts.helper_files {
        require_host_file(file)?;
        c.add_host_path(Path::new(file), Category::Helpers)?;
    }

    let cpio = c.archive.to_bytes();
    std::fs::create_dir_all(&opts.output_dir).map_err(io_err(&opts.output_dir))?;
    let storage_tools = build_storage_tools(opts, &version, &c.archive, &res.load_order)?;
    let img = opts.output_dir.join("initramfs.img");
    let gz = gzip(&cpio);
    write_atomic(&img, &gz)?;
    let kernel = opts.output_dir.join("vmlinuz");
    let kernel_bytes = std::fs::read(&kernel_src).map_err(io_err(&kernel_src))?;
    write_atomic(&kernel, &kernel_bytes)?;

    let sizes = c.sizes();
    let get = |cat| sizes.get(&cat).copied().unwrap_or(0);
    Ok(BuildReport {
        kernel_version: version,
        initramfs: img,
        kernel,
        compressed_bytes: gz.len() as u64,
        uncompressed_bytes: cpio.len() as u64,
        entries: c.archive.len(),
        installer_bytes: get(Category::Installer),
        modules_bytes: get(Category::Modules),
        helpers_bytes: get(Category::Helpers),
        libs_bytes: get(Category::Libs),
        other_bytes: get(Category::Other),
        firmware_bytes: get(Category::Firmware),
        firmware: shipped.firmware,
        firmware_missing: shipped.firmware_missing,
        modules: res
            .load_order
            .iter()
            .map(|m| modules::plain_ko_path(m))
            .collect(),
        builtin_modules: res.builtin,
        missing_modules: res.missing,
        storage_tools,
    })
}

/// The storage tools archive beside the initramfs, when this host has the
/// programs; otherwise a stale archive (another kernel's modules) is removed.
fn build_storage_tools(
    opts: &BuildOptions,
    version: &str,
    main: &crate::cpio::Archive,
    main_modules: &[String],
) -> Result<Result<tools::ToolsReport, String>, InitramfsError> {
    let stale = opts.output_dir.join(tools::STORAGE_TOOLS_IMG);
    let why_not = if opts.storage_programs.is_empty() {
        Some("none asked for".to_string())
    } else {
        tools::host_has_tools(&opts.storage_programs)
            .err()
            .map(|e| e.to_string())
    };
    if let Some(why) = why_not {
        match std::fs::remove_file(&stale) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&stale)(e)),
        }
        return Ok(Err(why));
    }
    let (archive, programs, modules) = tools::archive(
        version,
        main,
        main_modules,
        &opts.storage_programs,
        &opts.storage_modules,
    )?;
    tools::write(&opts.output_dir, &archive, programs, modules).map(Ok)
}

/// gzip with no name and mtime 0 in the header, so output depends on content only.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    enc.write_all(data).expect("writing to a Vec cannot fail");
    enc.finish().expect("writing to a Vec cannot fail")
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<(), InitramfsError> {
    crate::durable::write_atomic(path, data, 0o644).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_helper_names_its_package() {
        let e = require_host_file("/usr/sbin/mkfs.ext4-not-installed").unwrap_err();
        assert_eq!(
            e.to_string(),
            "host file /usr/sbin/mkfs.ext4-not-installed is missing; install it with: apt-get install e2fsprogs"
        );
        let e = require_host_file("/nowhere/systemd-bootx64.efi").unwrap_err();
        assert!(
            e.to_string().ends_with("apt-get install systemd-boot-efi"),
            "{e}"
        );
        require_host_file("/").unwrap();
    }
}
