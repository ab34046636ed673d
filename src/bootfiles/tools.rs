//! The storage tools archive (`storage-tools.img`), built beside the installer
//! initramfs from the same kernel: mdadm, lvm and mkfs.xfs with their shared
//! libraries, the modules the initramfs lacks for them (xfs), and a
//! `modules.dep` naming the initramfs's modules and these. The installer
//! fetches it only for a layout with RAID, LVM or XFS (`initramfs/src/tools.rs`)
//! and unpacks it over its own root, so nothing the initramfs already holds
//! is shipped twice.

use super::collect::{Category, Collector};
use super::{io_err, modules, read_module, read_opt, require_host_file, InitramfsError};
use crate::cpio::Archive;
use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

pub use crate::wire::initramfs::{STORAGE_MODULES, STORAGE_PROGRAMS, STORAGE_TOOLS_IMG};

#[derive(Debug, Clone)]
pub struct ToolsReport {
    pub path: PathBuf,
    pub compressed_bytes: u64,
    pub uncompressed_bytes: u64,
    pub entries: usize,
    /// Archive paths of the programs shipped.
    pub programs: Vec<String>,
    /// Module files shipped (relative to the modules directory), in load order.
    pub modules: Vec<String>,
}

impl fmt::Display for ToolsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "storage tools: {} ({} compressed, {} uncompressed, {} entries; fetched only by layouts with RAID, LVM or XFS)",
            self.path.display(),
            super::mib(self.compressed_bytes),
            super::mib(self.uncompressed_bytes),
            self.entries
        )?;
        writeln!(
            f,
            "  programs {}; modules {}",
            self.programs.join(" "),
            if self.modules.is_empty() {
                "none beyond the initramfs".to_string()
            } else {
                self.modules.join(" ")
            }
        )
    }
}

/// Whether this host can build the archive: every storage program is here.
/// `Err` names the first one missing and its package.
pub fn host_has_tools(programs: &[String]) -> Result<(), InitramfsError> {
    programs.iter().try_for_each(|p| require_host_file(p))
}

/// Builds the archive's content: what `programs` and `wanted_modules` need that
/// `main` (the initramfs, whose modules are `main_modules` in load order, paths
/// as in modules.dep) does not already hold byte for byte.
pub fn archive(
    version: &str,
    main: &Archive,
    main_modules: &[String],
    programs: &[String],
    wanted_modules: &[String],
) -> Result<(Archive, Vec<String>, Vec<String>), InitramfsError> {
    let mut c = Collector::new();
    for p in programs {
        require_host_file(p)?;
        c.add_program(Path::new(p), Category::Helpers)?;
    }
    let dir = PathBuf::from("/lib/modules").join(version);
    let dep_text = std::fs::read_to_string(dir.join("modules.dep"))
        .map_err(io_err(&dir.join("modules.dep")))?;
    let dep = modules::ModulesDep::parse(&dep_text);
    let builtin = modules::parse_builtin(&read_opt(&dir.join("modules.builtin"))?);
    let softdeps = modules::parse_softdeps(&read_opt(&dir.join("modules.softdep"))?);
    let aliases = modules::parse_exact_aliases(&read_opt(&dir.join("modules.alias"))?);
    let tables = modules::Tables {
        dep: &dep,
        builtin: &builtin,
        softdeps: &softdeps,
        aliases: &aliases,
    };
    let wanted: Vec<&str> = wanted_modules.iter().map(String::as_str).collect();
    let res = modules::resolve(&tables, &wanted);
    let real_dir = c.add_host_path(&dir, Category::Other)?;
    let real_rel = real_dir
        .to_string_lossy()
        .trim_start_matches('/')
        .to_string();
    let in_main: HashSet<&str> = main_modules.iter().map(String::as_str).collect();
    let mut shipped = Vec::new();
    for m in &res.load_order {
        if in_main.contains(m.as_str()) {
            continue;
        }
        let data = read_module(&dir.join(m))?;
        let dest = format!("{real_rel}/{}", modules::plain_ko_path(m));
        c.add_bytes(&dest, 0o644, data, Category::Modules);
        shipped.push(modules::plain_ko_path(m));
    }
    // One modules.dep for both archives' modules, replacing the initramfs's
    // when unpacked: the installer's loader finds xfs and its dependencies.
    let mut all: Vec<String> = main_modules.to_vec();
    all.extend(
        res.load_order
            .iter()
            .filter(|m| !in_main.contains(m.as_str()))
            .cloned(),
    );
    c.add_bytes(
        &format!("{real_rel}/modules.dep"),
        0o644,
        modules::render_trimmed(&dep, &all).into_bytes(),
        Category::Modules,
    );
    // Only what the initramfs does not have the same already.
    let mut out = Archive::new();
    for (path, entry) in c.archive.iter() {
        if main.get(path) != Some(entry) {
            out.insert(path, entry.clone());
        }
    }
    let programs = programs
        .iter()
        .map(|p| p.trim_start_matches('/').to_string())
        .collect();
    Ok((out, programs, shipped))
}

/// Writes `{output_dir}/storage-tools.img` (gzip, deterministic).
pub fn write(
    output_dir: &Path,
    archive: &Archive,
    programs: Vec<String>,
    modules: Vec<String>,
) -> Result<ToolsReport, InitramfsError> {
    let cpio = archive.to_bytes();
    let gz = super::gzip(&cpio);
    let path = output_dir.join(STORAGE_TOOLS_IMG);
    super::write_atomic(&path, &gz)?;
    Ok(ToolsReport {
        path,
        compressed_bytes: gz.len() as u64,
        uncompressed_bytes: cpio.len() as u64,
        entries: archive.len(),
        programs,
        modules,
    })
}
