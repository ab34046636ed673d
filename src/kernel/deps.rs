//! `modules.dep` resolved into a load order: every module after its hard and
//! soft pre-dependencies, each once. The builder uses it to choose what the
//! initramfs ships, the installer to load what a device asks for. Pure.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::{module_name, normalize_module_name, plain_ko_path, SoftDeps};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModulesDep {
    /// module name → (path relative to /lib/modules/<ver>, dependency paths in file order)
    entries: BTreeMap<String, (String, Vec<String>)>,
    by_path: HashMap<String, String>,
}

impl ModulesDep {
    pub fn parse(text: &str) -> Self {
        let mut dep = ModulesDep::default();
        for (path, deps) in crate::kernel::dep_lines(text) {
            let deps: Vec<String> = deps.into_iter().map(String::from).collect();
            let name = module_name(path);
            dep.by_path.insert(path.to_string(), name.clone());
            dep.entries.insert(name, (path.to_string(), deps));
        }
        dep
    }

    /// (name, path) of every module, by name.
    pub fn modules(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries
            .iter()
            .map(|(n, (p, _))| (n.as_str(), p.as_str()))
    }

    pub fn path_of(&self, name: &str) -> Option<&str> {
        self.entries
            .get(&normalize_module_name(name))
            .map(|(p, _)| p.as_str())
    }

    pub fn deps_of(&self, path: &str) -> &[String] {
        self.by_path
            .get(path)
            .and_then(|n| self.entries.get(n))
            .map(|(_, d)| d.as_slice())
            .unwrap_or(&[])
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolution {
    /// Module paths (relative to the modules dir) in load order: every module after its
    /// hard and soft pre-dependencies.
    pub load_order: Vec<String>,
    /// Requested names compiled into the kernel.
    pub builtin: Vec<String>,
    /// Requested names found neither as modules nor built in.
    pub missing: Vec<String>,
}

pub struct Tables<'a> {
    pub dep: &'a ModulesDep,
    pub builtin: &'a HashSet<String>,
    pub softdeps: &'a HashMap<String, SoftDeps>,
    pub aliases: &'a HashMap<String, Vec<String>>,
}

impl Tables<'_> {
    /// Soft dependencies are optional by definition: a name that resolves to nothing is dropped.
    fn soft_targets(&self, names: &[String]) -> Vec<String> {
        let mut out = Vec::new();
        for n in names {
            let norm = normalize_module_name(n);
            if let Some(p) = self.dep.path_of(&norm) {
                out.push(p.to_string());
            } else if let Some(mods) = self.aliases.get(n) {
                out.extend(
                    mods.iter()
                        .filter_map(|m| self.dep.path_of(m).map(String::from)),
                );
            }
        }
        out
    }

    fn visit(&self, path: &str, seen: &mut BTreeSet<String>, order: &mut Vec<String>) {
        if !seen.insert(path.to_string()) {
            return;
        }
        let soft = self.softdeps.get(&module_name(path));
        if let Some(s) = soft {
            for p in self.soft_targets(&s.pre) {
                self.visit(&p, seen, order);
            }
        }
        // modules.dep lists the transitive closure with the deepest dependency last;
        // visiting in reverse loads leaves first, which also is what modprobe does.
        for d in self.dep.deps_of(path).iter().rev() {
            self.visit(d, seen, order);
        }
        order.push(path.to_string());
        if let Some(s) = soft {
            for p in self.soft_targets(&s.post) {
                self.visit(&p, seen, order);
            }
        }
    }
}

/// Resolves `wanted` module names to the full set of files to ship, in load order.
pub fn resolve(tables: &Tables, wanted: &[&str]) -> Resolution {
    let mut res = Resolution::default();
    let mut seen = BTreeSet::new();
    for name in wanted {
        let norm = normalize_module_name(name);
        if let Some(path) = tables.dep.path_of(&norm) {
            tables.visit(path, &mut seen, &mut res.load_order);
        } else if tables.builtin.contains(&norm) {
            res.builtin.push(norm);
        } else {
            res.missing.push(norm);
        }
    }
    res
}

/// A `modules.dep` holding only the shipped modules, lines in load order, with
/// compressed paths renamed to the plain `.ko` files we ship.
pub fn render_trimmed(dep: &ModulesDep, load_order: &[String]) -> String {
    let mut out = String::new();
    for path in load_order {
        out.push_str(&plain_ko_path(path));
        out.push(':');
        for d in dep.deps_of(path) {
            out.push(' ');
            out.push_str(&plain_ko_path(d));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::{parse_builtin, parse_exact_aliases, parse_softdeps};

    const DEP: &str = "\
kernel/fs/ext4/ext4.ko.xz: kernel/lib/crc16.ko.xz kernel/fs/mbcache.ko.xz kernel/fs/jbd2/jbd2.ko.xz
kernel/fs/jbd2/jbd2.ko.xz:
kernel/fs/mbcache.ko.xz:
kernel/lib/crc16.ko.xz:
kernel/crypto/crc32c_generic.ko.xz:
kernel/arch/x86/crypto/crc32c-intel.ko.xz:
kernel/drivers/net/virtio_net.ko.xz: kernel/drivers/net/net_failover.ko.xz kernel/net/core/failover.ko.xz kernel/drivers/virtio/virtio.ko.xz kernel/drivers/virtio/virtio_ring.ko.xz
kernel/drivers/net/net_failover.ko.xz: kernel/net/core/failover.ko.xz
kernel/net/core/failover.ko.xz:
kernel/drivers/virtio/virtio.ko.xz: kernel/drivers/virtio/virtio_ring.ko.xz
kernel/drivers/virtio/virtio_ring.ko.xz:
kernel/drivers/block/virtio_blk.ko.xz: kernel/drivers/virtio/virtio.ko.xz kernel/drivers/virtio/virtio_ring.ko.xz
kernel/fs/nls/nls_iso8859-1.ko.xz:
kernel/drivers/unrelated.ko.xz: kernel/fs/mbcache.ko.xz
";
    const SOFTDEP: &str =
        "# comment\nsoftdep ext4 pre: crypto-crc32c\nsoftdep jbd2 pre: crypto-crc32c\n";
    const ALIAS: &str = "alias crypto-crc32c crc32c_intel\nalias crypto-crc32c crc32c_generic\nalias pci:v00001AF4d* virtio_pci\n";
    const BUILTIN: &str = "kernel/drivers/virtio/virtio_pci.ko\nkernel/fs/fat/vfat.ko\n";

    fn resolve_fixture(wanted: &[&str]) -> (ModulesDep, Resolution) {
        let dep = ModulesDep::parse(DEP);
        let builtin = parse_builtin(BUILTIN);
        let soft = parse_softdeps(SOFTDEP);
        let aliases = parse_exact_aliases(ALIAS);
        let t = Tables {
            dep: &dep,
            builtin: &builtin,
            softdeps: &soft,
            aliases: &aliases,
        };
        let r = resolve(&t, wanted);
        (dep, r)
    }

    fn pos(order: &[String], needle: &str) -> usize {
        order
            .iter()
            .position(|p| p.contains(needle))
            .unwrap_or_else(|| panic!("{needle} missing from {order:?}"))
    }

    #[test]
    fn dependencies_load_before_dependents() {
        let (_, r) = resolve_fixture(&["virtio_net", "virtio_blk", "ext4"]);
        let o = &r.load_order;
        assert!(pos(o, "virtio_ring") < pos(o, "/virtio.ko"));
        assert!(pos(o, "/virtio.ko") < pos(o, "virtio_net"));
        assert!(pos(o, "/failover") < pos(o, "net_failover"));
        assert!(pos(o, "net_failover") < pos(o, "virtio_net"));
        assert!(pos(o, "jbd2") < pos(o, "ext4"));
        assert!(pos(o, "crc16") < pos(o, "ext4"));
        // shared deps appear once
        assert_eq!(o.iter().filter(|p| p.ends_with("/virtio.ko.xz")).count(), 1);
        assert!(!o.iter().any(|p| p.contains("unrelated")));
    }

    #[test]
    fn soft_dependencies_resolve_through_aliases() {
        let (_, r) = resolve_fixture(&["ext4"]);
        let o = &r.load_order;
        assert!(pos(o, "crc32c-intel") < pos(o, "ext4"));
        assert!(pos(o, "crc32c_generic") < pos(o, "ext4"));
    }

    #[test]
    fn builtin_and_missing_are_reported() {
        let (_, r) = resolve_fixture(&["virtio_pci", "vfat", "nls_iso8859_1", "nope"]);
        assert_eq!(r.builtin, ["virtio_pci", "vfat"]);
        assert_eq!(r.missing, ["nope"]);
        assert_eq!(r.load_order, ["kernel/fs/nls/nls_iso8859-1.ko.xz"]);
    }

    #[test]
    fn trimmed_dep_uses_plain_paths_in_load_order() {
        let (dep, r) = resolve_fixture(&["virtio_blk"]);
        let text = render_trimmed(&dep, &r.load_order);
        assert_eq!(
            text,
            "kernel/drivers/virtio/virtio_ring.ko:\n\
             kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko\n\
             kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n"
        );
        // and it parses back
        let back = ModulesDep::parse(&text);
        assert_eq!(
            back.path_of("virtio_blk"),
            Some("kernel/drivers/block/virtio_blk.ko")
        );
    }
}
