//! `[[image]]`: what an operator configures per golden image — its own node-local
//! paths and the mounts `rollout image enter` adds (a site's shared /usr over NFS, a
//! scratch tmpfs). Images that are not listed get the defaults.

use super::{invalid, ConfigError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ImageConfig {
    pub name: String,
    /// Node-local paths on top of [`crate::wire::DEFAULT_EXCLUDES`]: stripped when a
    /// serial is published, and never installed or synced over a node's own copy.
    #[serde(default)]
    pub excludes: Vec<String>,
    /// Mounted inside the image only while `rollout image enter` runs; what is on them
    /// never becomes part of a serial.
    #[serde(default, rename = "mount")]
    pub mounts: Vec<ImageMount>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ImageMount {
    /// A host directory for `bind`; otherwise what mount(8) takes (`nfs1:/export/usr`, `tmpfs`).
    pub source: String,
    /// Absolute path inside the image.
    pub target: String,
    /// `bind` (recursive) or a filesystem type mount(8) knows (`nfs`, `tmpfs`, …).
    #[serde(default = "default_mount_type", rename = "type")]
    pub fstype: String,
    /// mount(8) options, e.g. `ro` or `ro,nolock`.
    #[serde(default)]
    pub options: String,
}

fn default_mount_type() -> String {
    "bind".into()
}

/// Mounted by `enter` itself; a configured mount there would hide or shadow them.
const RESERVED_TARGETS: &[&str] = &["/proc", "/sys", "/dev", "/etc/resolv.conf"];

fn components(path: &str) -> Vec<&str> {
    path.split('/').filter(|c| !c.is_empty()).collect()
}

/// An absolute path without `.`/`..`, other than `/` itself.
fn check_absolute(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("{path:?} is not absolute"));
    }
    if path.chars().any(|c| c.is_control()) {
        return Err(format!("{path:?} contains a control character"));
    }
    let comps = components(path);
    if comps.is_empty() {
        return Err("\"/\" is the whole image".into());
    }
    if comps.iter().any(|c| *c == "." || *c == "..") {
        return Err(format!("{path:?} contains . or .."));
    }
    Ok(())
}

/// Excludes are rsync patterns on the node and strip patterns on the server: only the
/// part of the language both read the same way is accepted.
fn check_exclude(pattern: &str) -> Result<(), String> {
    check_absolute(pattern)?;
    if pattern.contains("**") || pattern.contains(['[', ']', '\\']) {
        return Err(format!(
            "{pattern:?} uses **, [ ] or \\, which image stripping does not read like rsync"
        ));
    }
    if components(pattern)[0].chars().all(|c| c == '*') {
        return Err(format!("{pattern:?} matches every top-level directory"));
    }
    Ok(())
}

fn check_mount(m: &ImageMount) -> Result<(), (&'static str, String)> {
    check_absolute(&m.target).map_err(|e| ("target", e))?;
    let target = format!("/{}", components(&m.target).join("/"));
    if let Some(r) = RESERVED_TARGETS
        .iter()
        .find(|r| target == **r || target.starts_with(&format!("{r}/")))
    {
        return Err(("target", format!("{r} is mounted by `image enter` itself")));
    }
    // Leading '-' would make mount(8) read an argument as an option.
    if m.source.is_empty() || m.source.starts_with('-') || m.source.chars().any(char::is_control) {
        return Err(("source", format!("{:?} is not a mount source", m.source)));
    }
    if m.fstype == "bind" {
        check_absolute(&m.source).map_err(|e| ("source", e))?;
    } else if m.fstype.is_empty()
        || !m
            .fstype
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        || m.fstype.starts_with('-')
    {
        return Err(("type", format!("{:?} is not a filesystem type", m.fstype)));
    }
    if m.options.starts_with('-') || m.options.chars().any(|c| c.is_whitespace()) {
        return Err((
            "options",
            format!("{:?} is not a mount option list", m.options),
        ));
    }
    Ok(())
}

pub(super) fn validate(images: &[ImageConfig]) -> Result<(), ConfigError> {
    let mut names = std::collections::HashSet::new();
    for (i, image) in images.iter().enumerate() {
        let key = format!("image[{i}]");
        if !super::valid_image_name(&image.name) {
            return Err(invalid(
                &format!("{key}.name"),
                format!("{:?} is not an image name", image.name),
                "use letters, digits, '.', '_' and '-', not ending in -<digits>",
            ));
        }
        if !names.insert(image.name.as_str()) {
            return Err(invalid(
                &format!("{key}.name"),
                format!("image {} is configured twice", image.name),
                "merge the two [[image]] tables",
            ));
        }
        for (j, pattern) in image.excludes.iter().enumerate() {
            check_exclude(pattern).map_err(|problem| {
                invalid(
                    &format!("{key}.excludes[{j}]"),
                    problem,
                    "write an absolute path inside the image; * and ? match within one component, a trailing / means a directory",
                )
            })?;
        }
        let mut targets = std::collections::HashSet::new();
        for (j, m) in image.mounts.iter().enumerate() {
            let mkey = format!("{key}.mount[{j}]");
            check_mount(m).map_err(|(field, problem)| {
                invalid(
                    &format!("{mkey}.{field}"),
                    problem,
                    "see the [[image.mount]] example in README.md",
                )
            })?;
            if !targets.insert(components(&m.target).join("/")) {
                return Err(invalid(
                    &format!("{mkey}.target"),
                    format!("{} is mounted twice", m.target),
                    "give every mount its own target",
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(source: &str, target: &str, fstype: &str, options: &str) -> ImageMount {
        ImageMount {
            source: source.into(),
            target: target.into(),
            fstype: fstype.into(),
            options: options.into(),
        }
    }

    #[test]
    fn excludes_must_mean_the_same_to_rsync_and_to_stripping() {
        for ok in [
            "/var/lib/slurm/",
            "/etc/munge/munge.key",
            "/opt/site/*.conf",
        ] {
            assert_eq!(check_exclude(ok), Ok(()), "{ok}");
        }
        for bad in [
            "var/lib",
            "/",
            "/*",
            "/var/../etc",
            "/var/**/x",
            "/etc/[ab]",
            "/etc/a\nb",
        ] {
            assert!(check_exclude(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn mounts_are_checked_field_by_field() {
        assert_eq!(
            check_mount(&mount("/srv/tools", "/opt/tools", "bind", "ro")),
            Ok(())
        );
        assert_eq!(
            check_mount(&mount("nfs1:/export/usr", "/usr", "nfs", "ro,nolock")),
            Ok(())
        );
        let field = |m: ImageMount| check_mount(&m).unwrap_err().0;
        assert_eq!(field(mount("/srv", "opt", "bind", "")), "target");
        assert_eq!(field(mount("/srv", "/dev/shm", "bind", "")), "target");
        assert_eq!(field(mount("/srv", "/", "bind", "")), "target");
        assert_eq!(field(mount("srv", "/opt", "bind", "")), "source");
        assert_eq!(field(mount("--bind", "/opt", "tmpfs", "")), "source");
        assert_eq!(field(mount("tmpfs", "/opt", "tmp fs", "")), "type");
        assert_eq!(
            field(mount("tmpfs", "/opt", "tmpfs", "ro size=1")),
            "options"
        );
    }
}
