//! Loading kernel modules without kmod: `modules.dep` resolved here, then
//! `finit_module(2)` in dependency order.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::path::{Path, PathBuf};

// Names and table parsing are shared with the server's initramfs builder.
pub use rollout::kernel::{module_name, normalize_module_name, parse_builtin};

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ModDep {
    /// Module name → (path relative to the modules dir, names it depends on).
    entries: HashMap<String, (String, Vec<String>)>,
}

pub fn parse_modules_dep(text: &str) -> ModDep {
    let entries = rollout::kernel::dep_lines(text)
        .map(|(path, deps)| {
            let deps = deps.into_iter().map(module_name).collect();
            (module_name(path), (path.to_string(), deps))
        })
        .collect();
    ModDep { entries }
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct LoadPlan {
    /// (name, relative path), dependencies before dependents, each once.
    pub order: Vec<(String, String)>,
    /// Requested modules not in modules.dep.
    pub missing: Vec<String>,
}

impl ModDep {
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(&normalize_module_name(name))
    }

    /// Dependency-first order for `wanted`. modules.dep lists each module's full
    /// dependency closure, but not in a usable order, so this sorts depth-first.
    pub fn load_order(&self, wanted: &[&str]) -> LoadPlan {
        let mut plan = LoadPlan::default();
        let mut done = HashSet::new();
        for w in wanted {
            let name = normalize_module_name(w);
            if !self.entries.contains_key(&name) {
                plan.missing.push(name);
                continue;
            }
            let mut visiting = HashSet::new();
            self.visit(&name, &mut done, &mut visiting, &mut plan.order);
        }
        plan
    }

    fn visit(
        &self,
        name: &str,
        done: &mut HashSet<String>,
        visiting: &mut HashSet<String>,
        out: &mut Vec<(String, String)>,
    ) {
        // `visiting` guards against a (broken) cyclic modules.dep.
        if done.contains(name) || !visiting.insert(name.to_string()) {
            return;
        }
        let Some((path, deps)) = self.entries.get(name) else {
            return;
        };
        for d in deps {
            self.visit(d, done, visiting, out);
        }
        done.insert(name.to_string());
        out.push((name.to_string(), path.clone()));
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("cannot read {path}: {source}; the initramfs must contain the kernel's modules")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The modules directory of the running kernel.
pub fn modules_dir(root: &Path) -> PathBuf {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let dir = root.join(&release);
    if !release.is_empty() && dir.join("modules.dep").exists() {
        return dir;
    }
    // A builder packing another kernel's version string still works if there is
    // exactly one modules tree.
    std::fs::read_dir(root)
        .ok()
        .and_then(|rd| {
            let dirs: Vec<PathBuf> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
            (dirs.len() == 1).then(|| dirs[0].clone())
        })
        .unwrap_or(dir)
}

#[derive(Debug, Default)]
pub struct LoadReport {
    pub loaded: Vec<String>,
    pub already: Vec<String>,
    pub builtin: Vec<String>,
    /// Modules (or dependencies) whose files are not in the initramfs.
    pub missing: Vec<String>,
    /// Human-readable notes for modules that failed to load.
    pub notes: Vec<String>,
}

/// Loads `wanted` and their dependencies from `dir`. Individual failures are
/// notes, not errors: a missing NIC driver shows up later as "NIC not found".
pub fn load(dir: &Path, wanted: &[&str]) -> Result<LoadReport, ModuleError> {
    let dep_path = dir.join("modules.dep");
    let text = std::fs::read_to_string(&dep_path).map_err(|source| ModuleError::Read {
        path: dep_path.display().to_string(),
        source,
    })?;
    let deps = parse_modules_dep(&text);
    let builtin = std::fs::read_to_string(dir.join("modules.builtin"))
        .map(|t| parse_builtin(&t))
        .unwrap_or_default();
    let plan = deps.load_order(wanted);
    let mut report = LoadReport::default();
    for m in plan.missing {
        if builtin.contains(&m) {
            report.builtin.push(m);
        } else {
            report
                .notes
                .push(format!("{m}: not in modules.dep, skipped"));
        }
    }
    let params = CString::default();
    for (name, rel) in plan.order {
        let mut path = dir.join(&rel);
        let mut flags = nix::kmod::ModuleInitFlags::empty();
        if !path.exists() {
            // The builder may have decompressed modules without rewriting modules.dep.
            let plain = dir.join(rollout::kernel::plain_ko_path(&rel));
            if plain.exists() {
                path = plain;
            } else {
                report.missing.push(name);
                continue;
            }
        } else if !rel.ends_with(".ko") {
            // Compressed: the kernel decompresses it if built with MODULE_DECOMPRESS.
            flags = nix::kmod::ModuleInitFlags::from_bits_retain(4);
        }
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                report
                    .notes
                    .push(format!("{name}: open {}: {e}", path.display()));
                continue;
            }
        };
        match nix::kmod::finit_module(&file, &params, flags) {
            Ok(()) => report.loaded.push(name),
            Err(nix::errno::Errno::EEXIST) => report.already.push(name),
            Err(e) => report.notes.push(format!("{name}: finit_module: {e}")),
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = include_str!("../tests/fixtures/modules.dep");

    fn pos(order: &[(String, String)], name: &str) -> usize {
        order
            .iter()
            .position(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{name} not in {order:?}"))
    }

    #[test]
    fn dependencies_come_first_and_only_once() {
        let deps = parse_modules_dep(FIXTURE);
        let plan = deps.load_order(&[
            "virtio_net",
            "sd_mod",
            "ahci",
            "ext4",
            "vfat",
            "no_such_mod",
        ]);
        assert_eq!(plan.missing, ["no_such_mod"]);
        let o = &plan.order;
        assert!(pos(o, "virtio_ring") < pos(o, "virtio"));
        assert!(pos(o, "virtio") < pos(o, "virtio_net"));
        assert!(pos(o, "failover") < pos(o, "net_failover"));
        assert!(pos(o, "net_failover") < pos(o, "virtio_net"));
        assert!(pos(o, "scsi_common") < pos(o, "scsi_mod"));
        assert!(pos(o, "scsi_mod") < pos(o, "sd_mod"));
        assert!(pos(o, "libata") < pos(o, "libahci"));
        assert!(pos(o, "libahci") < pos(o, "ahci"));
        assert!(pos(o, "jbd2") < pos(o, "ext4") && pos(o, "mbcache") < pos(o, "ext4"));
        assert!(pos(o, "fat") < pos(o, "vfat"));
        let mut names: Vec<&String> = o.iter().map(|(n, _)| n).collect();
        let before = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), before, "a module is loaded twice: {o:?}");
        assert_eq!(o[pos(o, "ext4")].1, "kernel/fs/ext4/ext4.ko");
    }

    #[test]
    fn dash_names_and_builtins() {
        let deps = parse_modules_dep("kernel/a/foo-bar.ko: kernel/a/baz.ko\nkernel/a/baz.ko:\n");
        assert!(deps.contains("foo-bar"));
        let plan = deps.load_order(&["foo-bar"]);
        assert_eq!(
            plan.order
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>(),
            ["baz", "foo_bar"]
        );
        let b = parse_builtin("kernel/drivers/virtio/virtio_pci.ko\nkernel/fs/nls/nls_utf8.ko\n");
        assert!(b.contains("virtio_pci") && b.contains("nls_utf8"));
    }

    #[test]
    fn cycles_do_not_hang() {
        let deps = parse_modules_dep("a.ko: b.ko\nb.ko: a.ko\n");
        let plan = deps.load_order(&["a"]);
        assert_eq!(plan.order.len(), 2);
    }
}
