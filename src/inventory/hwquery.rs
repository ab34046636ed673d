//! The node filter of `rollout node list --where EXPR`, and the hardware lines
//! `rollout node show` and the node's dashboard page print. Pure.
//!
//! Syntax: conditions joined by `,` (or ` and `), all of which must hold:
//! `KEY OP VALUE`, OP one of `=` `!=` `<` `<=` `>` `>=` and `~` (contains).
//! Text compares without regard to case; numbers are whole numbers. A node
//! without a hardware report matches no hardware condition. Keys:
//!
//! | key | what |
//! | --- | --- |
//! | `memory_mib`, `memory_gib` | installed memory |
//! | `cpus` | logical CPUs |
//! | `disk_gib` | the largest disk, GiB |
//! | `disks`, `nics` | how many |
//! | `nic_speed` | the fastest NIC with link, Mbit/s |
//! | `cpu` | CPU model |
//! | `vendor`, `product`, `serial` | DMI system vendor, product and serial |
//! | `firmware` | `bios` or `uefi`, as the installer found it |
//! | `disk_model`, `nic_driver` | any disk's model, any NIC's driver |
//! | `hostname`, `state`, `image`, `mac` | the node's record |

use super::NodeRecord;
use crate::wire::Hardware;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Contains,
}

/// Longest first, so `>=` is not read as `>` and a value `=…`.
const OPS: [(&str, Op); 7] = [
    ("!=", Op::Ne),
    ("<=", Op::Le),
    (">=", Op::Ge),
    ("=", Op::Eq),
    ("<", Op::Lt),
    (">", Op::Gt),
    ("~", Op::Contains),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Number,
    Text,
}

/// (key, kind, what it is, for error messages).
const KEYS: &[(&str, Kind, &str)] = &[
    ("memory_mib", Kind::Number, "MiB of memory"),
    ("memory_gib", Kind::Number, "GiB of memory"),
    ("cpus", Kind::Number, "logical CPUs"),
    ("disk_gib", Kind::Number, "GiB of the largest disk"),
    ("disks", Kind::Number, "number of disks"),
    ("nics", Kind::Number, "number of NICs"),
    ("nic_speed", Kind::Number, "Mbit/s of the fastest NIC"),
    ("cpu", Kind::Text, "CPU model"),
    ("vendor", Kind::Text, "system vendor"),
    ("product", Kind::Text, "system product"),
    ("serial", Kind::Text, "system serial"),
    ("firmware", Kind::Text, "firmware"),
    ("disk_model", Kind::Text, "disk model"),
    ("nic_driver", Kind::Text, "NIC driver"),
    ("hostname", Kind::Text, "hostname"),
    ("state", Kind::Text, "state"),
    ("image", Kind::Text, "image"),
    ("mac", Kind::Text, "MAC"),
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    Number(u64),
    Text(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Cond {
    key: &'static str,
    op: Op,
    value: Value,
}

/// A parsed `--where` expression.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Filter {
    conds: Vec<Cond>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--where {expr:?}: {problem}")]
pub struct FilterError {
    pub expr: String,
    pub problem: String,
}

fn known_keys() -> String {
    KEYS.iter().map(|k| k.0).collect::<Vec<_>>().join(", ")
}

impl Filter {
    /// Parses one expression; several `--where` are [`Filter::and`]ed.
    pub fn parse(expr: &str) -> Result<Filter, FilterError> {
        let err = |problem: String| FilterError {
            expr: expr.to_string(),
            problem,
        };
        let mut conds = vec![];
        for part in expr.split(',').flat_map(|p| p.split(" and ")) {
            let part = part.trim();
            if part.is_empty() {
                return Err(err(
                    "an empty condition; write KEY OP VALUE joined by commas, e.g. memory_mib>=4096,vendor=QEMU".into(),
                ));
            }
            let key_len = part
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(part.len());
            let key = &part[..key_len];
            let rest = part[key_len..].trim_start();
            let Some(&(name, kind, what)) = KEYS.iter().find(|k| k.0 == key) else {
                return Err(err(format!(
                    "unknown key {key:?} in {part:?}; known keys: {}",
                    known_keys()
                )));
            };
            let Some(&(sym, op)) = OPS.iter().find(|(s, _)| rest.starts_with(s)) else {
                return Err(err(format!(
                    "{part:?} has no operator after {key}; use one of = != < <= > >= ~ (contains)"
                )));
            };
            let raw = rest[sym.len()..].trim();
            if raw.is_empty() {
                return Err(err(format!("{part:?} has no value after {sym}")));
            }
            let value = match kind {
                Kind::Number => match raw.parse::<u64>() {
                    Ok(n) if op != Op::Contains => Value::Number(n),
                    Ok(_) => {
                        return Err(err(format!(
                            "{name} is a number ({what}); compare it with = != < <= > >=, not ~"
                        )))
                    }
                    Err(_) => {
                        return Err(err(format!(
                            "{name} is a whole number ({what}), and {raw:?} is not one"
                        )))
                    }
                },
                Kind::Text => {
                    if matches!(op, Op::Lt | Op::Le | Op::Gt | Op::Ge) {
                        return Err(err(format!(
                            "{name} is text ({what}); compare it with =, != or ~ (contains)"
                        )));
                    }
                    Value::Text(raw.trim_matches('"').to_lowercase())
                }
            };
            conds.push(Cond {
                key: name,
                op,
                value,
            });
        }
        Ok(Filter { conds })
    }

    /// Both this filter's conditions and `other`'s.
    pub fn and(mut self, other: Filter) -> Filter {
        self.conds.extend(other.conds);
        self
    }

    pub fn matches(&self, n: &NodeRecord) -> bool {
        self.conds.iter().all(|c| c.matches(n))
    }
}

fn cmp_num(op: Op, have: u64, want: u64) -> bool {
    match op {
        Op::Eq => have == want,
        Op::Ne => have != want,
        Op::Lt => have < want,
        Op::Le => have <= want,
        Op::Gt => have > want,
        Op::Ge => have >= want,
        Op::Contains => false,
    }
}

fn cmp_text(op: Op, have: &str, want: &str) -> bool {
    let have = have.to_lowercase();
    match op {
        Op::Eq => have == want,
        Op::Ne => have != want,
        Op::Contains => have.contains(want),
        _ => false,
    }
}

impl Cond {
    fn matches(&self, n: &NodeRecord) -> bool {
        let record_text = match self.key {
            "hostname" => Some(vec![n.hostname.clone()]),
            "state" => Some(vec![n.state.as_str().to_string()]),
            "image" => Some(vec![n.image.clone()]),
            "mac" => Some(vec![n.mac.clone()]),
            _ => None,
        };
        let texts = match (record_text, &n.hardware) {
            (Some(t), _) => t,
            (None, None) => return false,
            (None, Some(hw)) => match number(self.key, hw) {
                Some(have) => {
                    return matches!(self.value, Value::Number(want) if cmp_num(self.op, have, want))
                }
                None => texts(self.key, hw),
            },
        };
        let Value::Text(want) = &self.value else {
            return false;
        };
        // A multi-valued key (any disk, any NIC): `!=` means none is equal.
        match self.op {
            Op::Ne => texts.iter().all(|t| cmp_text(Op::Ne, t, want)),
            op => texts.iter().any(|t| cmp_text(op, t, want)),
        }
    }
}

fn number(key: &str, hw: &Hardware) -> Option<u64> {
    Some(match key {
        "memory_mib" => hw.memory_mib,
        "memory_gib" => hw.memory_mib / 1024,
        "cpus" => u64::from(hw.cpu.count),
        "disk_gib" => hw.largest_disk_gib(),
        "disks" => hw.disks.len() as u64,
        "nics" => hw.nics.len() as u64,
        "nic_speed" => hw
            .nics
            .iter()
            .filter(|n| n.link)
            .filter_map(|n| n.speed_mbps)
            .max()
            .map_or(0, u64::from),
        _ => return None,
    })
}

fn texts(key: &str, hw: &Hardware) -> Vec<String> {
    match key {
        "cpu" => vec![hw.cpu.model.clone()],
        "vendor" => vec![hw.system.vendor.clone()],
        "product" => vec![hw.system.product.clone()],
        "serial" => vec![hw.system.serial.clone()],
        "firmware" => vec![hw.firmware.clone()],
        "disk_model" => hw.disks.iter().map(|d| d.model.clone()).collect(),
        "nic_driver" => hw.nics.iter().map(|n| n.driver.clone()).collect(),
        _ => vec![],
    }
}

/// `(label, value)` lines describing `hw`, for `rollout node show` and the
/// node's dashboard page.
pub fn lines(hw: &Hardware) -> Vec<(String, String)> {
    let mut out = vec![
        ("CPU".to_string(), hw.cpu.describe()),
        (
            "Memory".into(),
            format!("{} MiB ({} GiB)", hw.memory_mib, hw.memory_mib / 1024),
        ),
        ("Firmware".into(), hw.firmware.clone()),
        (
            "System".into(),
            format!(
                "{} {} (serial {})",
                or_dash(&hw.system.vendor),
                or_dash(&hw.system.product),
                or_dash(&hw.system.serial)
            ),
        ),
    ];
    for d in &hw.disks {
        out.push((
            format!("Disk {}", d.name),
            format!(
                "{} GiB, {}, {} (serial {})",
                d.size_bytes >> 30,
                or_dash(&d.model),
                if d.rotational {
                    "rotational"
                } else {
                    "solid state"
                },
                or_dash(&d.serial)
            ),
        ));
    }
    for n in &hw.nics {
        out.push((
            format!("NIC {}", n.name),
            format!(
                "{}, driver {}, {}{}",
                n.mac,
                or_dash(&n.driver),
                if n.link { "link up" } else { "no link" },
                n.speed_mbps
                    .map(|s| format!(", {s} Mbit/s"))
                    .unwrap_or_default()
            ),
        ));
    }
    out
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::{NodeState, Source};
    use crate::wire::hardware::{Cpu, Disk, Nic, System};

    fn node(name: &str, mem: u64, disk_gib: u64, vendor: &str) -> NodeRecord {
        let mut n = NodeRecord::new(
            "52:54:00:00:00:01",
            name,
            "default",
            Source::Config,
            NodeState::Installed,
        );
        n.hardware = Some(Hardware {
            cpu: Cpu {
                model: "AMD EPYC 7763".into(),
                count: 8,
            },
            memory_mib: mem,
            disks: vec![Disk {
                name: "sda".into(),
                model: "QEMU HARDDISK".into(),
                serial: "s1".into(),
                size_bytes: disk_gib << 30,
                rotational: true,
            }],
            nics: vec![Nic {
                name: "eth0".into(),
                mac: "52:54:00:00:00:01".into(),
                driver: "e1000e".into(),
                speed_mbps: Some(1000),
                link: true,
            }],
            firmware: "uefi".into(),
            system: System {
                vendor: vendor.into(),
                product: "Standard PC".into(),
                serial: "SN1".into(),
            },
        });
        n
    }

    fn hits(expr: &str) -> Vec<String> {
        let f = Filter::parse(expr).unwrap();
        let mut bare = NodeRecord::new("m", "bare", "default", Source::Api, NodeState::Pending);
        bare.hardware = None;
        [
            node("small", 2048, 20, "QEMU"),
            node("big", 65536, 500, "Dell Inc."),
            bare,
        ]
        .iter()
        .filter(|n| f.matches(n))
        .map(|n| n.hostname.clone())
        .collect()
    }

    #[test]
    fn conditions_filter_on_the_report() {
        assert_eq!(hits("memory_mib>=4096"), ["big"]);
        assert_eq!(hits("memory_gib<4"), ["small"]);
        assert_eq!(hits("disk_gib>=100"), ["big"]);
        assert_eq!(hits("vendor=qemu"), ["small"]);
        assert_eq!(hits("vendor ~ dell"), ["big"]);
        assert_eq!(hits("vendor!=QEMU"), ["big"], "no report matches nothing");
        assert_eq!(
            hits("cpus=8, firmware=uefi and nic_driver=e1000e"),
            ["small", "big"]
        );
        assert_eq!(
            hits("nic_speed>=1000,disk_model~harddisk"),
            ["small", "big"]
        );
        assert_eq!(hits("memory_mib>=4096,vendor=QEMU"), Vec::<String>::new());
        assert_eq!(
            hits("state=pending"),
            ["bare"],
            "record keys need no report"
        );
        assert_eq!(hits("hostname=\"BIG\""), ["big"]);
        let two = Filter::parse("memory_mib>1000")
            .unwrap()
            .and(Filter::parse("disk_gib<100").unwrap());
        assert!(two.matches(&node("small", 2048, 20, "QEMU")));
        assert!(!two.matches(&node("big", 65536, 500, "QEMU")));
    }

    #[test]
    fn bad_expressions_say_what_to_write() {
        for (expr, needle) in [
            (
                "ram>=4096",
                "unknown key \"ram\" in \"ram>=4096\"; known keys: memory_mib, memory_gib",
            ),
            (
                "memory_mib 4096",
                "has no operator after memory_mib; use one of = != < <= > >= ~",
            ),
            (
                "memory_mib>=4G",
                "memory_mib is a whole number (MiB of memory), and \"4G\" is not one",
            ),
            (
                "memory_mib~4",
                "memory_mib is a number (MiB of memory); compare it with = != < <= > >=, not ~",
            ),
            (
                "vendor>QEMU",
                "vendor is text (system vendor); compare it with =, != or ~ (contains)",
            ),
            ("disk_gib>=", "\"disk_gib>=\" has no value after >="),
            ("cpus=2,,", "an empty condition"),
            ("", "an empty condition"),
        ] {
            let e = Filter::parse(expr).unwrap_err().to_string();
            assert!(e.starts_with(&format!("--where {expr:?}: ")), "{e}");
            assert!(e.contains(needle), "{expr}: {e}");
        }
    }

    #[test]
    fn lines_describe_every_device() {
        let n = node("small", 2048, 20, "QEMU");
        let l = lines(n.hardware.as_ref().unwrap());
        let text: Vec<String> = l.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        assert_eq!(
            text,
            [
                "CPU: 8 × AMD EPYC 7763",
                "Memory: 2048 MiB (2 GiB)",
                "Firmware: uefi",
                "System: QEMU Standard PC (serial SN1)",
                "Disk sda: 20 GiB, QEMU HARDDISK, rotational (serial s1)",
                "NIC eth0: 52:54:00:00:00:01, driver e1000e, link up, 1000 Mbit/s",
            ]
        );
    }
}
