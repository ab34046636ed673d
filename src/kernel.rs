//! What the server (building the initramfs) and the installer (loading modules,
//! picking the installed kernel) both read from a kernel tree: module names, the
//! `modules.*` tables line by line, and the order of kernel versions. Pure text
//! functions, no `server` feature: the installer links this.

pub mod alias;
pub mod deps;

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};

/// A module name as the kernel compares it: `-` and `_` are the same to it, so
/// names are folded to `_` (`crc32c-intel` is `crc32c_intel`).
pub fn normalize_module_name(name: &str) -> String {
    name.replace('-', "_")
}

/// Module name from a path: basename without `.ko[.xz|.zst|.gz]`, folded
/// (`kernel/fs/nls/nls_iso8859-1.ko.xz` → `nls_iso8859_1`).
pub fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let stem = base.split(".ko").next().unwrap_or(base);
    normalize_module_name(stem)
}

/// `path` with a compression suffix removed, so it names the plain `.ko` file.
pub fn plain_ko_path(path: &str) -> String {
    for ext in [".xz", ".zst", ".gz"] {
        if let Some(p) = path.strip_suffix(ext) {
            if p.ends_with(".ko") {
                return p.to_string();
            }
        }
    }
    path.to_string()
}

/// The lines of a `modules.*` file that carry data: blank lines and `#` comments
/// are skipped. depmod writes neither into modules.dep or modules.builtin, but
/// modules.softdep/alias have comments and hand-edited or trimmed tables (ours:
/// `bootfiles`) may have either; a comment must never become a module.
fn data_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

/// `modules.dep` lines as (module path, dependency paths in file order). Lines
/// without a `:` are skipped.
pub fn dep_lines(text: &str) -> impl Iterator<Item = (&str, Vec<&str>)> {
    data_lines(text).filter_map(|line| {
        let (path, deps) = line.split_once(':')?;
        let path = path.trim();
        (!path.is_empty()).then(|| (path, deps.split_whitespace().collect()))
    })
}

/// Names listed in `modules.builtin` (compiled into the kernel: nothing to load).
pub fn parse_builtin(text: &str) -> HashSet<String> {
    data_lines(text).map(module_name).collect()
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SoftDeps {
    pub pre: Vec<String>,
    pub post: Vec<String>,
}

/// `softdep ext4 pre: crypto-crc32c` lines of `modules.softdep`, by folded module
/// name. A bare name without `pre:`/`post:` counts as pre.
pub fn parse_softdeps(text: &str) -> HashMap<String, SoftDeps> {
    let mut map: HashMap<String, SoftDeps> = HashMap::new();
    for line in data_lines(text) {
        let mut tokens = line.split_whitespace();
        if tokens.next() != Some("softdep") {
            continue;
        }
        let Some(module) = tokens.next() else {
            continue;
        };
        let entry = map.entry(normalize_module_name(module)).or_default();
        let mut post = false;
        for t in tokens {
            match t {
                "pre:" => post = false,
                "post:" => post = true,
                name if post => entry.post.push(name.to_string()),
                name => entry.pre.push(name.to_string()),
            }
        }
    }
    map
}

/// Exact (wildcard-free) aliases from `modules.alias`: alias → folded module names.
/// Soft dependencies name crypto algorithms this way (`crypto-crc32c`).
pub fn parse_exact_aliases(text: &str) -> HashMap<String, Vec<String>> {
    let mut map: HashMap<String, Vec<String>> = HashMap::new();
    for line in data_lines(text) {
        let mut tokens = line.split_whitespace();
        if tokens.next() != Some("alias") {
            continue;
        }
        let (Some(alias), Some(module)) = (tokens.next(), tokens.next()) else {
            continue;
        };
        if alias.contains(['*', '?', '[']) {
            continue;
        }
        map.entry(alias.to_string())
            .or_default()
            .push(normalize_module_name(module));
    }
    map
}

/// Orders kernel versions like `sort -V`: runs of digits compare as numbers
/// (ignoring leading zeros), everything else bytewise, and a version that is a
/// prefix of another sorts first.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (ca, cb) = (chunks(a), chunks(b));
    for (x, y) in ca.iter().zip(cb.iter()) {
        let ord = match (x, y) {
            ((true, x), (true, y)) => {
                let (x, y) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
                x.len().cmp(&y.len()).then_with(|| x.cmp(y))
            }
            ((_, x), (_, y)) => x.cmp(y),
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    ca.len().cmp(&cb.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ordering::{Equal, Greater, Less};

    #[test]
    fn names_fold_dashes_and_drop_compression() {
        assert_eq!(
            module_name("kernel/fs/nls/nls_iso8859-1.ko.xz"),
            "nls_iso8859_1"
        );
        assert_eq!(module_name("crc32c-intel.ko"), "crc32c_intel");
        assert_eq!(
            module_name("kernel/lib/crc64-rocksoft.ko.zst"),
            "crc64_rocksoft"
        );
        assert_eq!(module_name("extra/foo.ko.gz"), "foo");
        assert_eq!(normalize_module_name("crc32c-intel"), "crc32c_intel");
        assert_eq!(normalize_module_name("virtio_net"), "virtio_net");
        assert_eq!(plain_ko_path("a/b.ko.zst"), "a/b.ko");
        assert_eq!(plain_ko_path("a/b.ko.xz"), "a/b.ko");
        assert_eq!(plain_ko_path("a/b.ko"), "a/b.ko");
        assert_eq!(plain_ko_path("a/b.gz"), "a/b.gz");
    }

    #[test]
    fn dep_lines_skip_blanks_comments_and_junk() {
        let text = "\
# written by hand
kernel/a/foo-bar.ko: kernel/a/baz.ko  kernel/a/qux.ko.xz

kernel/a/baz.ko:
  # indented comment
no colon here
: orphan.ko
kernel/a/qux.ko.xz:
";
        let lines: Vec<(&str, Vec<&str>)> = dep_lines(text).collect();
        assert_eq!(
            lines,
            [
                (
                    "kernel/a/foo-bar.ko",
                    vec!["kernel/a/baz.ko", "kernel/a/qux.ko.xz"]
                ),
                ("kernel/a/baz.ko", vec![]),
                ("kernel/a/qux.ko.xz", vec![]),
            ]
        );
    }

    #[test]
    fn builtin_skips_blank_lines_and_comments() {
        let b = parse_builtin(
            "kernel/drivers/virtio/virtio_pci.ko\n\n# note\n  kernel/fs/nls/nls_utf8.ko  \nkernel/crypto/crc32c-generic.ko\n",
        );
        let mut names: Vec<&str> = b.iter().map(String::as_str).collect();
        names.sort();
        assert_eq!(names, ["crc32c_generic", "nls_utf8", "virtio_pci"]);
    }

    #[test]
    fn softdeps_and_aliases() {
        let soft = parse_softdeps(
            "# comment\nsoftdep ext4 pre: crypto-crc32c\nsoftdep crc32c-intel pre: a post: b c\nsoftdep lonely\nalias x y\n",
        );
        assert_eq!(soft["ext4"].pre, ["crypto-crc32c"]);
        assert_eq!(soft["crc32c_intel"].pre, ["a"]);
        assert_eq!(soft["crc32c_intel"].post, ["b", "c"]);
        assert_eq!(soft["lonely"], SoftDeps::default());
        assert_eq!(soft.len(), 3);

        let aliases = parse_exact_aliases(
            "# Aliases extracted from modules themselves.\nalias crypto-crc32c crc32c-intel\nalias crypto-crc32c crc32c_generic\nalias pci:v00001AF4d* virtio_pci\nalias half\n",
        );
        assert_eq!(aliases["crypto-crc32c"], ["crc32c_intel", "crc32c_generic"]);
        assert_eq!(aliases.len(), 1);
    }

    #[test]
    fn kernel_versions_compare_numerically() {
        assert_eq!(compare_versions("6.1.0-28-amd64", "6.1.0-9-amd64"), Greater);
        assert_eq!(compare_versions("6.1.0-9-amd64", "6.1.0-28-amd64"), Less);
        assert_eq!(
            compare_versions("6.10.0-1-amd64", "6.9.12-1-amd64"),
            Greater
        );
        assert_eq!(compare_versions("6.1.0-09-amd64", "6.1.0-9-amd64"), Equal);
        assert_eq!(compare_versions("6.1.0-9-amd64", "6.1.0-9-amd64"), Equal);
        assert_eq!(compare_versions("6.1.0", "6.1.0-9-amd64"), Less);
        assert_eq!(compare_versions("6.1.0-9-amd64", "6.1.0-9-arm64"), Less);
        assert_eq!(compare_versions("", "6.1"), Less);
        let mut v = [
            "6.1.0-28-amd64",
            "5.10.0-30-amd64",
            "6.1.0-9-amd64",
            "6.1.0-10-amd64",
        ];
        v.sort_by(|a, b| compare_versions(a, b));
        assert_eq!(
            v,
            [
                "5.10.0-30-amd64",
                "6.1.0-9-amd64",
                "6.1.0-10-amd64",
                "6.1.0-28-amd64"
            ]
        );
    }
}
