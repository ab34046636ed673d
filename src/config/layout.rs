//! `[[layout]]` tables: a node's disks, partitions, RAID1, LVM and mounts, as
//! the operator writes them (sizes and disk rules as strings, one table per
//! partition with `mount`/`fs`, `swap = true` or `lvm = true`). Turned into
//! [`wire::Layout`] and checked by `crate::layout::check` at load time, so
//! everything that can be refused without a disk is refused with the layout's
//! name before a node boots.

use super::{invalid, Config, ConfigError};
use crate::layout;
use crate::wire::layout as wire;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LayoutConfig {
    pub name: String,
    /// `first`, a `/dev/…` path, `size>=100GiB`; two for RAID1. Default: `first`.
    #[serde(default)]
    pub disks: Vec<String>,
    pub partitions: Vec<PartitionConfig>,
    #[serde(default)]
    pub mounts: Vec<MountConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raid: Option<RaidConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lvm: Option<LvmConfig>,
}

/// `{ mount = "/", size = "1GiB", fs = "ext3" }`, `{ swap = true, size = "2GiB" }`,
/// `{ lvm = true, size = "rest" }`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionConfig {
    pub size: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap: Option<bool>,
    /// A physical volume of the layout's `lvm` volume group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lvm: Option<bool>,
}

/// `{ mount = "/usr", type = "nfs", source = "nfs1:/export/usr", options = "ro" }`
/// or `{ mount = "/tmp", type = "tmpfs" }`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MountConfig {
    pub mount: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RaidConfig {
    pub level: u8,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LvmConfig {
    pub vg: String,
    pub volumes: Vec<VolumeConfig>,
}

/// `{ name = "root", mount = "/", size = "4GiB", fs = "ext4" }` or
/// `{ name = "swap", swap = true, size = "1GiB" }`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeConfig {
    pub name: String,
    pub size: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap: Option<bool>,
}

impl VolumeConfig {
    /// The same keys as a partition's (`lvm = true` is refused by the check).
    fn as_partition(&self) -> PartitionConfig {
        PartitionConfig {
            size: self.size.clone(),
            mount: self.mount.clone(),
            fs: self.fs.clone(),
            label: self.label.clone(),
            options: self.options.clone(),
            swap: self.swap,
            lvm: None,
        }
    }
}

fn content(p: &PartitionConfig) -> Result<wire::Content, String> {
    let swap = p.swap.unwrap_or(false);
    let pv = p.lvm.unwrap_or(false);
    match (&p.mount, swap, pv) {
        (Some(mount), false, false) => {
            let fs =
                p.fs.as_deref()
                    .ok_or_else(|| {
                        format!("{mount} has no fs: add fs = \"ext3\", \"ext4\" or \"xfs\"")
                    })?
                    .parse::<wire::Fs>()?;
            Ok(wire::Content::Filesystem(wire::Filesystem {
                mount: mount.clone(),
                fs,
                label: p.label.clone(),
                options: p.options.clone(),
            }))
        }
        (None, true, false) | (None, false, true) => {
            if p.fs.is_some() || p.label.is_some() || p.options.is_some() {
                return Err("swap and lvm entries take no fs, label or options".into());
            }
            Ok(if swap {
                wire::Content::Swap
            } else {
                wire::Content::LvmPv
            })
        }
        _ => {
            Err("give exactly one of mount = \"/path\" (with fs), swap = true or lvm = true".into())
        }
    }
}

impl TryFrom<&LayoutConfig> for wire::Layout {
    type Error = String;
    fn try_from(c: &LayoutConfig) -> Result<wire::Layout, String> {
        let disks = c
            .disks
            .iter()
            .map(|d| d.parse())
            .collect::<Result<Vec<wire::DiskRule>, _>>()?;
        let partitions = c
            .partitions
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let at = |e: String| format!("partitions[{i}]: {e}");
                Ok(wire::Partition {
                    size: p.size.parse().map_err(at)?,
                    content: content(p).map_err(at)?,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let mounts = c
            .mounts
            .iter()
            .map(|m| {
                let kind = match (m.kind.as_str(), &m.source) {
                    ("nfs", Some(source)) => wire::MountKind::Nfs {
                        source: source.clone(),
                    },
                    ("nfs", None) => {
                        return Err(format!(
                            "the nfs mount {} has no source: add source = \"server:/export\"",
                            m.mount
                        ))
                    }
                    ("tmpfs", None) => wire::MountKind::Tmpfs,
                    ("tmpfs", Some(_)) => {
                        return Err(format!("the tmpfs on {} takes no source", m.mount))
                    }
                    (other, _) => {
                        return Err(format!(
                            "mount {} has type {other:?}: use \"nfs\" or \"tmpfs\"",
                            m.mount
                        ))
                    }
                };
                Ok(wire::Mount {
                    mount: m.mount.clone(),
                    kind,
                    options: m.options.clone(),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let lvm = match &c.lvm {
            None => None,
            Some(l) => Some(wire::Lvm {
                vg: l.vg.clone(),
                volumes: l
                    .volumes
                    .iter()
                    .map(|v| {
                        let at = |e: String| format!("lvm volume {}: {e}", v.name);
                        Ok(wire::Volume {
                            name: v.name.clone(),
                            size: v.size.parse().map_err(at)?,
                            content: content(&v.as_partition()).map_err(at)?,
                        })
                    })
                    .collect::<Result<Vec<_>, String>>()?,
            }),
        };
        Ok(wire::Layout {
            name: c.name.clone(),
            disks,
            partitions,
            raid: c.raid.as_ref().map(|r| wire::Raid { level: r.level }),
            lvm,
            mounts,
        })
    }
}

/// Every `[[layout]]` as a checked [`wire::Layout`], and every layout name a
/// node or `[install]` uses resolved.
pub(super) fn validate(config: &Config) -> Result<Vec<wire::Layout>, ConfigError> {
    let mut out: Vec<wire::Layout> = Vec::new();
    for (i, c) in config.layouts.iter().enumerate() {
        let key = format!("layout[{i}]");
        let l = wire::Layout::try_from(c).map_err(|e| {
            invalid(
                &key,
                format!("layout {:?}: {e}", c.name),
                "see the [[layout]] examples in README.md (Layouts)",
            )
        })?;
        if out.iter().any(|o| o.name == l.name) {
            return Err(invalid(
                &format!("{key}.name"),
                format!("{:?} names two layouts", l.name),
                "give every [[layout]] its own name",
            ));
        }
        layout::check(&l, None).map_err(|e| {
            invalid(
                &key,
                e.to_string(),
                "fix the layout; sizes are whole MiB, GiB or TiB, one partition may be \"rest\"",
            )
        })?;
        out.push(l);
    }
    let known = |name: &str| name == "default" || out.iter().any(|l| l.name == name);
    let unknown = |key: &str, name: &str| {
        invalid(
            key,
            format!("names the layout {name:?}, which no [[layout]] defines"),
            "add a [[layout]] with that name, or use \"default\" (1 GiB ext3 root + 2 GiB swap)",
        )
    };
    if let Some(name) = &config.install.layout {
        if !known(name) {
            return Err(unknown("install.layout", name));
        }
    }
    for (i, n) in config.nodes.iter().enumerate() {
        if let Some(name) = &n.layout {
            if !known(name) {
                return Err(unknown(&format!("node[{i}].layout"), name));
            }
        }
    }
    Ok(out)
}

impl Config {
    /// The layout a node gets: its own `layout`, else `[install] layout`, else
    /// the built-in default; `root_mib`/`swap_mib` (its `[[node]]` or the API)
    /// resize its `/` and swap partitions as they always did.
    pub fn layout_for(
        &self,
        mac: &str,
        root_mib: Option<u64>,
        swap_mib: Option<u64>,
    ) -> wire::Layout {
        let name = self
            .node_by_mac(mac)
            .and_then(|n| n.layout.clone())
            .or_else(|| self.install.layout.clone());
        let base = name
            .and_then(|name| self.layouts.iter().find(|l| l.name == name))
            .and_then(|c| wire::Layout::try_from(c).ok())
            .unwrap_or_default();
        base.with_sizes(root_mib, swap_mib)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::wire::layout::{Content, DiskRule, Fs, MountKind, Size};

    const BASE: &str = "state_dir = \"/x\"\n";

    const COMPUTE: &str = r#"
[[layout]]
name = "compute"
disks = ["first"]
partitions = [
  { mount = "/",        size = "1GiB", fs = "ext3" },
  { swap = true,        size = "2GiB" },
  { mount = "/scratch", size = "rest", fs = "xfs" },
]
mounts = [
  { mount = "/usr", source = "nfs1:/export/usr", type = "nfs", options = "ro,nolock" },
  { mount = "/tmp", type = "tmpfs" }, { mount = "/var/tmp", type = "tmpfs" }, { mount = "/var/lock", type = "tmpfs" },
]
"#;

    fn parse(extra: &str) -> Result<Config, String> {
        Config::parse(&format!("{BASE}{extra}")).map_err(|e| e.to_string())
    }

    #[test]
    fn the_issue_example_parses_into_the_wire_layout() {
        let c = parse(&format!(
            "{COMPUTE}[[node]]\nmac = \"52:54:00:00:00:01\"\nhostname = \"rack1-node1\"\nlayout = \"compute\"\n"
        ))
        .unwrap();
        let l = c.layout_for("52:54:00:00:00:01", None, None);
        assert_eq!(l.name, "compute");
        assert_eq!(l.disks, vec![DiskRule::First]);
        assert_eq!(l.partitions[0].size, Size::Mib(1024));
        assert_eq!(l.partitions[1].content, Content::Swap);
        assert_eq!(l.partitions[2].size, Size::Rest);
        assert_eq!(l.root().unwrap().fs, Fs::Ext3);
        assert_eq!(l.mounts.len(), 4);
        assert_eq!(
            l.mounts[0].kind,
            MountKind::Nfs {
                source: "nfs1:/export/usr".into()
            }
        );
        assert_eq!(l.mounts[0].options.as_deref(), Some("ro,nolock"));
        assert_eq!(l.network_paths(), vec!["/usr".to_string()]);
        // A node without its own layout gets the default, or [install] layout.
        assert_eq!(
            c.layout_for("52:54:00:00:00:02", None, None).name,
            "default"
        );
        let c = parse(&format!("{COMPUTE}[install]\nlayout = \"compute\"\n")).unwrap();
        assert_eq!(
            c.layout_for("52:54:00:00:00:02", None, None).name,
            "compute"
        );
        // root_mib/swap_mib still resize.
        let l = c.layout_for("52:54:00:00:00:02", Some(2048), Some(0));
        assert_eq!(l.partitions.len(), 2);
        assert_eq!(l.partitions[0].size, Size::Mib(2048));
    }

    #[test]
    fn raid_and_lvm_tables_parse() {
        let c = parse(
            r#"
[[layout]]
name = "mirror-lvm"
disks = ["/dev/disk/by-path/pci-0000:00:05.0", "size>=8GiB"]
raid = { level = 1 }
partitions = [
  { mount = "/boot", size = "512MiB", fs = "ext3", label = "boot" },
  { lvm = true, size = "rest" },
]
lvm = { vg = "vg0", volumes = [
  { name = "root", mount = "/", size = "4GiB", fs = "ext4", options = "noatime" },
  { name = "swap", swap = true, size = "1GiB" },
] }
"#,
        )
        .unwrap();
        let l = crate::wire::Layout::try_from(&c.layouts[0]).unwrap();
        assert_eq!(l.raid.unwrap().level, 1);
        assert_eq!(l.disks[1], DiskRule::MinSize(8192));
        let lvm = l.lvm.unwrap();
        assert_eq!(lvm.volumes[0].size, Size::Mib(4096));
        assert_eq!(lvm.volumes[1].content, Content::Swap);
    }

    #[test]
    fn load_refuses_with_the_layout_name_and_sizes() {
        let cases = [
            (
                COMPUTE.replace("fs = \"xfs\"", "fs = \"btrfs\""),
                "unknown filesystem \"btrfs\"",
            ),
            (
                COMPUTE.replace("mount = \"/usr\"", "mount = \"/\""),
                "/ cannot be an nfs mount",
            ),
            (
                COMPUTE.replace("size = \"2GiB\"", "size = \"rest\""),
                "2 partitions have size \"rest\"",
            ),
            (
                COMPUTE.replace("mount = \"/scratch\"", "mount = \"/\""),
                "/ is mounted twice",
            ),
            (
                COMPUTE.replace("\"1GiB\"", "\"1.5GiB\""),
                "size \"1.5GiB\"",
            ),
            (
                COMPUTE.replace("disks = [\"first\"]", "disks = [\"size>=2GiB\"]"),
                "size>=2048MiB allows disks smaller than the 3375 MiB",
            ),
            (
                COMPUTE.replace("type = \"nfs\"", "type = \"cifs\""),
                "use \"nfs\" or \"tmpfs\"",
            ),
            (
                COMPUTE.replace("{ swap = true,", "{ swap = true, mount = \"/x\","),
                "exactly one of mount",
            ),
            (
                format!("{COMPUTE}[[node]]\nmac = \"52:54:00:00:00:01\"\nhostname = \"n\"\nlayout = \"gpu\"\n"),
                "node[0].layout",
            ),
            (format!("{COMPUTE}{COMPUTE}"), "\"compute\" names two layouts"),
        ];
        for (text, want) in cases {
            let e = parse(&text).unwrap_err();
            assert!(e.contains(want), "{want}: {e}");
            assert!(e.contains("layout"), "{e}");
        }
        let e = parse(&COMPUTE.replace("fs = \"xfs\"", "fs = \"btrfs\"")).unwrap_err();
        assert!(e.contains("layout \"compute\""), "{e}");
    }
}
