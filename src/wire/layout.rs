//! A node's declarative layout: which disks, their partitions, RAID1 and LVM
//! over them, the filesystems and where they mount, and the network and tmpfs
//! mounts beside them. The server resolves it per node (config `[[layout]]`,
//! `layout = "name"`, the built-in default) into the install plan; the
//! installer turns it into GPTs, md arrays, volumes, filesystems and an fstab
//! through the pure arithmetic of `crate::layout`.
//!
//! Sizes and disk rules travel as the strings a user writes in the config
//! (`"1GiB"`, `"rest"`, `"first"`, `"size>=100GiB"`, `"/dev/disk/by-id/…"`),
//! so the plan reads like the config it came from.

use serde::{Deserialize, Serialize};

pub const MIB: u64 = 1024 * 1024;

/// The whole layout of one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct Layout {
    /// The `[[layout]]` name, `default` for the built-in one.
    pub name: String,
    /// One rule per disk used, in order (two for RAID1). Empty: one disk, the first.
    #[serde(default)]
    #[cfg_attr(feature = "server", schema(value_type = Vec<String>))]
    pub disks: Vec<DiskRule>,
    /// In on-disk order, after the BIOS-boot partition or ESP the installer adds.
    /// With RAID1 every partition is made on each disk.
    pub partitions: Vec<Partition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raid: Option<Raid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lvm: Option<Lvm>,
    /// Network and tmpfs mounts (nothing on the disks).
    #[serde(default)]
    pub mounts: Vec<Mount>,
}

/// The label of the root filesystem in the built-in layout.
pub const ROOT_LABEL: &str = "rollout-root";

impl Default for Layout {
    /// 1 GiB ext3 root and 2 GiB swap on the first disk.
    fn default() -> Self {
        Layout {
            name: "default".into(),
            disks: vec![DiskRule::First],
            partitions: vec![
                Partition {
                    size: Size::Mib(1024),
                    content: Content::Filesystem(Filesystem {
                        mount: "/".into(),
                        fs: Fs::Ext3,
                        label: Some(ROOT_LABEL.into()),
                        options: None,
                    }),
                },
                Partition {
                    size: Size::Mib(2048),
                    content: Content::Swap,
                },
            ],
            raid: None,
            lvm: None,
            mounts: vec![],
        }
    }
}

impl Layout {
    /// The node's own `root_mib`/`swap_mib` (config `[[node]]` or the API) over
    /// this layout, as they worked before layouts existed: the `/` partition gets
    /// `root_mib` (0: the rest of the disk, placed last), every swap partition
    /// `swap_mib` (0: none). A `/` on RAID or LVM keeps its layout's size.
    pub fn with_sizes(mut self, root_mib: Option<u64>, swap_mib: Option<u64>) -> Layout {
        if let Some(root) = root_mib {
            if let Some(i) = self
                .partitions
                .iter()
                .position(|p| p.content.mount() == Some("/"))
            {
                if root == 0 {
                    let mut p = self.partitions.remove(i);
                    p.size = Size::Rest;
                    for other in &mut self.partitions {
                        // Only one partition can take the rest.
                        if other.size == Size::Rest {
                            other.size = Size::Mib(1024);
                        }
                    }
                    self.partitions.push(p);
                } else {
                    self.partitions[i].size = Size::Mib(root);
                }
            }
        }
        if let Some(swap) = swap_mib {
            if swap == 0 {
                self.partitions.retain(|p| p.content != Content::Swap);
            } else {
                for p in &mut self.partitions {
                    if p.content == Content::Swap {
                        p.size = Size::Mib(swap);
                    }
                }
            }
        }
        self
    }

    /// Every filesystem and swap area, wherever it lives (partition or volume).
    pub fn contents(&self) -> impl Iterator<Item = (&Size, &Content)> {
        let volumes = self.lvm.iter().flat_map(|l| l.volumes.iter());
        self.partitions
            .iter()
            .map(|p| (&p.size, &p.content))
            .chain(volumes.map(|v| (&v.size, &v.content)))
    }

    /// The filesystem mounted on `/` (a partition's or a volume's).
    pub fn root(&self) -> Option<&Filesystem> {
        self.contents().find_map(|(_, c)| match c {
            Content::Filesystem(f) if f.mount == "/" => Some(f),
            _ => None,
        })
    }

    /// Mount points served over the network: the installer copies nothing
    /// under them and `rollout-sync` leaves them alone.
    pub fn network_paths(&self) -> Vec<String> {
        self.mounts
            .iter()
            .filter(|m| matches!(m.kind, MountKind::Nfs { .. }))
            .map(|m| m.mount.clone())
            .collect()
    }

    /// The root's filesystem when a block image of the serial can make it
    /// ([`super::block_image`]): an ext root that is the layout's only
    /// filesystem, with nothing served over the network under it (the image
    /// holds the whole tree, so a second filesystem or an NFS `/usr` would be
    /// shadowed). None: the installer copies with rsync.
    pub fn block_image_fs(&self) -> Option<Fs> {
        let mut filesystems = self
            .contents()
            .filter(|(_, c)| matches!(c, Content::Filesystem(_)));
        let only = filesystems.next();
        if filesystems.next().is_some() || !self.network_paths().is_empty() {
            return None;
        }
        match only {
            Some((_, Content::Filesystem(f))) if f.mount == "/" && f.fs != Fs::Xfs => Some(f.fs),
            _ => None,
        }
    }

    /// The size of `/` when it is a plain partition of a fixed size (what its
    /// device will hold); None on RAID or LVM or for the rest of the disk.
    pub fn root_partition_mib(&self) -> Option<u64> {
        if self.raid.is_some() {
            return None;
        }
        self.partitions
            .iter()
            .find_map(|p| match (&p.content, &p.size) {
                (Content::Filesystem(f), Size::Mib(m)) if f.mount == "/" => Some(*m),
                _ => None,
            })
    }

    /// Whether the installer needs its storage tools (mkfs.xfs, mdadm, lvm).
    pub fn needs_storage_tools(&self) -> bool {
        self.raid.is_some()
            || self.lvm.is_some()
            || self
                .contents()
                .any(|(_, c)| matches!(c, Content::Filesystem(f) if f.fs == Fs::Xfs))
    }
}

/// Which disk a layout uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DiskRule {
    /// `first` (or `any`): the first non-removable disk not taken by an earlier rule.
    First,
    /// `/dev/vda`, `/dev/disk/by-path/…`, `/dev/disk/by-id/…`.
    Path(String),
    /// `size>=100GiB`: the first free disk at least this big (MiB).
    MinSize(u64),
}

impl std::str::FromStr for DiskRule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "first" || s == "any" {
            return Ok(DiskRule::First);
        }
        if s.starts_with("/dev/") {
            return Ok(DiskRule::Path(s.to_string()));
        }
        if let Some(size) = s.strip_prefix("size>=") {
            return match size.trim().parse::<Size>()? {
                Size::Mib(m) => Ok(DiskRule::MinSize(m)),
                Size::Rest => Err(format!("disk rule {s:?}: \"rest\" is not a size")),
            };
        }
        Err(format!(
            "disk rule {s:?}: use \"first\", a /dev/… path (by-path, by-id) or \"size>=100GiB\""
        ))
    }
}

impl std::fmt::Display for DiskRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DiskRule::First => f.write_str("first"),
            DiskRule::Path(p) => f.write_str(p),
            DiskRule::MinSize(m) => write!(f, "size>={}", Size::Mib(*m)),
        }
    }
}

impl TryFrom<String> for DiskRule {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<DiskRule> for String {
    fn from(r: DiskRule) -> String {
        r.to_string()
    }
}

/// A partition's or volume's size: whole MiB, or what is left (`rest`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Size {
    Mib(u64),
    Rest,
}

impl std::str::FromStr for Size {
    type Err = String;
    /// `rest`, or a whole number with `MiB`, `GiB` or `TiB` (`M`, `G`, `T` too).
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if t == "rest" {
            return Ok(Size::Rest);
        }
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let factor = match unit.trim() {
            "MiB" | "M" => 1,
            "GiB" | "G" => 1024,
            "TiB" | "T" => 1024 * 1024,
            _ => {
                return Err(format!(
                    "size {s:?}: write a whole number of MiB, GiB or TiB (\"512MiB\", \"2GiB\") or \"rest\""
                ))
            }
        };
        let n: u64 = num
            .parse()
            .map_err(|_| format!("size {s:?}: no number before the unit"))?;
        match n.checked_mul(factor) {
            Some(0) => Err(format!("size {s:?}: must be more than 0")),
            Some(m) => Ok(Size::Mib(m)),
            None => Err(format!("size {s:?} is too large")),
        }
    }
}

impl std::fmt::Display for Size {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Size::Rest => f.write_str("rest"),
            Size::Mib(m) if m % (1024 * 1024) == 0 => write!(f, "{}TiB", m / 1024 / 1024),
            Size::Mib(m) if m % 1024 == 0 => write!(f, "{}GiB", m / 1024),
            Size::Mib(m) => write!(f, "{m}MiB"),
        }
    }
}

impl TryFrom<String> for Size {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Size> for String {
    fn from(s: Size) -> String {
        s.to_string()
    }
}

/// One partition (on each disk, with RAID1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct Partition {
    #[cfg_attr(feature = "server", schema(value_type = String))]
    pub size: Size,
    pub content: Content,
}

/// What a partition or logical volume holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub enum Content {
    Filesystem(Filesystem),
    Swap,
    /// An LVM physical volume of the layout's `lvm` volume group (partitions only).
    LvmPv,
}

impl Content {
    pub fn mount(&self) -> Option<&str> {
        match self {
            Content::Filesystem(f) => Some(&f.mount),
            _ => None,
        }
    }

    /// `/ ext3`, `swap`, `lvm pv`: for messages.
    pub fn describe(&self) -> String {
        match self {
            Content::Filesystem(f) => format!("{} {}", f.mount, f.fs.as_str()),
            Content::Swap => "swap".into(),
            Content::LvmPv => "lvm pv".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct Filesystem {
    /// Absolute mount point.
    pub mount: String,
    pub fs: Fs,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// fstab options; `defaults` when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<String>,
}

/// The filesystems a layout can make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub enum Fs {
    Ext3,
    Ext4,
    Xfs,
}

impl Fs {
    pub const ALL: [Fs; 3] = [Fs::Ext3, Fs::Ext4, Fs::Xfs];

    pub fn as_str(self) -> &'static str {
        match self {
            Fs::Ext3 => "ext3",
            Fs::Ext4 => "ext4",
            Fs::Xfs => "xfs",
        }
    }
}

impl std::str::FromStr for Fs {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Fs::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| format!("unknown filesystem {s:?}: use ext3, ext4 or xfs"))
    }
}

/// Mirror every partition over the layout's disks (one md array per partition).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct Raid {
    /// Only 1 (mirror).
    pub level: u8,
}

/// One volume group over the layout's `lvm_pv` partitions (or their md arrays).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct Lvm {
    pub vg: String,
    pub volumes: Vec<Volume>,
}

/// A logical volume: a filesystem or swap (never `lvm_pv`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct Volume {
    pub name: String,
    #[cfg_attr(feature = "server", schema(value_type = String))]
    pub size: Size,
    pub content: Content,
}

/// A mount that uses no local disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct Mount {
    pub mount: String,
    pub kind: MountKind,
    /// fstab options; `defaults` when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub enum MountKind {
    /// `server:/export/path`.
    Nfs {
        source: String,
    },
    Tmpfs,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_mib_gib_tib_and_rest() {
        assert_eq!("512MiB".parse(), Ok(Size::Mib(512)));
        assert_eq!("1GiB".parse(), Ok(Size::Mib(1024)));
        assert_eq!("2 G".parse(), Ok(Size::Mib(2048)));
        assert_eq!("1TiB".parse(), Ok(Size::Mib(1024 * 1024)));
        assert_eq!("rest".parse(), Ok(Size::Rest));
        for bad in ["", "GiB", "1.5GiB", "10", "10kB", "0MiB", "-1GiB"] {
            let err = bad.parse::<Size>().unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
        assert_eq!(Size::Mib(2048).to_string(), "2GiB");
        assert_eq!(Size::Mib(1500).to_string(), "1500MiB");
    }

    #[test]
    fn disk_rules_parse_and_print_as_written() {
        for s in [
            "first",
            "/dev/vda",
            "/dev/disk/by-path/pci-0000:00:05.0",
            "/dev/disk/by-id/virtio-abc",
            "size>=100GiB",
        ] {
            let r: DiskRule = s.parse().unwrap();
            assert_eq!(r.to_string(), s);
        }
        assert_eq!("any".parse(), Ok(DiskRule::First));
        assert_eq!("size>=2GiB".parse(), Ok(DiskRule::MinSize(2048)));
        assert!("sda".parse::<DiskRule>().unwrap_err().contains("\"sda\""));
        assert!("size>=rest".parse::<DiskRule>().is_err());
    }

    #[test]
    fn a_block_image_makes_only_a_lone_ext_root() {
        let l = Layout::default();
        assert_eq!(l.block_image_fs(), Some(Fs::Ext3));
        assert_eq!(l.root_partition_mib(), Some(1024));
        assert_eq!(
            l.clone().with_sizes(Some(0), None).root_partition_mib(),
            None
        );
        let with_root = |fs| {
            let mut l = Layout::default();
            l.partitions[0].content = Content::Filesystem(Filesystem {
                mount: "/".into(),
                fs,
                label: None,
                options: None,
            });
            l
        };
        assert_eq!(with_root(Fs::Ext4).block_image_fs(), Some(Fs::Ext4));
        assert_eq!(with_root(Fs::Xfs).block_image_fs(), None);
        let mut two = Layout::default();
        two.partitions.push(Partition {
            size: Size::Rest,
            content: Content::Filesystem(Filesystem {
                mount: "/scratch".into(),
                fs: Fs::Ext4,
                label: None,
                options: None,
            }),
        });
        assert_eq!(two.block_image_fs(), None, "/scratch would be empty");
        let mut nfs = Layout::default();
        nfs.mounts.push(Mount {
            mount: "/usr".into(),
            kind: MountKind::Nfs {
                source: "nfs1:/export/usr".into(),
            },
            options: None,
        });
        assert_eq!(nfs.block_image_fs(), None, "/usr comes over NFS");
    }

    #[test]
    fn the_layout_round_trips_through_json() {
        let mut l = Layout::default();
        l.mounts.push(Mount {
            mount: "/usr".into(),
            kind: MountKind::Nfs {
                source: "nfs1:/export/usr".into(),
            },
            options: Some("ro,nolock".into()),
        });
        l.lvm = Some(Lvm {
            vg: "vg0".into(),
            volumes: vec![Volume {
                name: "data".into(),
                size: Size::Rest,
                content: Content::Swap,
            }],
        });
        let json = serde_json::to_value(&l).unwrap();
        assert_eq!(json["disks"][0], "first");
        assert_eq!(json["partitions"][0]["size"], "1GiB");
        assert_eq!(json["partitions"][0]["content"]["type"], "filesystem");
        assert_eq!(json["partitions"][0]["content"]["fs"], "ext3");
        assert_eq!(json["mounts"][0]["kind"]["type"], "nfs");
        assert_eq!(serde_json::from_value::<Layout>(json).unwrap(), l);
        assert_eq!(l.network_paths(), vec!["/usr".to_string()]);
    }

    #[test]
    fn node_sizes_resize_root_and_swap_as_before_layouts() {
        let l = Layout::default().with_sizes(Some(12345), None);
        assert_eq!(l.partitions[0].size, Size::Mib(12345));
        assert_eq!(l.partitions[1].size, Size::Mib(2048));
        // root 0: the rest of the disk, after swap.
        let l = Layout::default().with_sizes(Some(0), Some(512));
        assert_eq!(l.partitions[0].content, Content::Swap);
        assert_eq!(l.partitions[0].size, Size::Mib(512));
        assert_eq!(l.partitions[1].size, Size::Rest);
        assert_eq!(l.root().unwrap().mount, "/");
        let l = Layout::default().with_sizes(None, Some(0));
        assert_eq!(l.partitions.len(), 1);
        assert!(!l.needs_storage_tools());
    }
}
