//! `modules.alias` and device modaliases: which module a device asks for, matched
//! the way modprobe (kmod) does, with fnmatch(3) glob patterns (`*`, `?`,
//! `[...]`, `\` escapes). Pure; the installer runs it against /sys at boot.

use std::collections::HashMap;

/// fnmatch(3) with no flags: `*` matches any run (`/` included), `?` any one
/// byte, `[a-f0-9]`/`[!x]`/`[^x]` a set, `\c` the byte `c`. A `[` without its
/// `]` is a literal `[`, as glibc has it.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was and the text position it is currently taken to end at.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if p.get(pi) == Some(&b'*') {
            star = Some((pi, ti));
            pi += 1;
            continue;
        }
        if let Some(next) = single(p, pi, t[ti]) {
            pi = next;
            ti += 1;
            continue;
        }
        match star {
            // Let the last `*` swallow one more byte and retry from there.
            Some((sp, st)) => {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// If the one-byte token at `pi` (literal, `?`, set, escape) matches `c`, the
/// index after it.
fn single(p: &[u8], pi: usize, c: u8) -> Option<usize> {
    match *p.get(pi)? {
        b'?' => Some(pi + 1),
        b'[' => match bracket(p, pi) {
            Some((matched_by, end)) => matched_by(c).then_some(end),
            None => (c == b'[').then_some(pi + 1),
        },
        b'\\' if pi + 1 < p.len() => (p[pi + 1] == c).then_some(pi + 2),
        lit => (lit == c).then_some(pi + 1),
    }
}

/// The set starting at `p[start] == b'['`: a predicate and the index after its
/// `]`, or `None` when it is not closed.
fn bracket(p: &[u8], start: usize) -> Option<(impl Fn(u8) -> bool, usize)> {
    let mut i = start + 1;
    let negate = matches!(p.get(i), Some(b'!' | b'^'));
    if negate {
        i += 1;
    }
    let mut ranges: Vec<(u8, u8)> = Vec::new();
    let mut first = true;
    loop {
        let mut c = *p.get(i)?;
        if c == b']' && !first {
            break;
        }
        first = false;
        if c == b'\\' && i + 1 < p.len() {
            i += 1;
            c = p[i];
        }
        if p.get(i + 1) == Some(&b'-') && p.get(i + 2).is_some_and(|&h| h != b']') {
            ranges.push((c, p[i + 2]));
            i += 3;
        } else {
            ranges.push((c, c));
            i += 1;
        }
    }
    let matches = move |c: u8| ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != negate;
    Some((matches, i + 1))
}

/// `modules.alias` indexed by the bus prefix before the first `:` (`pci`,
/// `virtio`, `scsi`, …), so a device is matched against its own bus's patterns
/// only; patterns whose prefix has a wildcard (`acpi*:…`) are tried on every device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AliasTable {
    by_bus: HashMap<String, Vec<(String, String)>>,
    wild: Vec<(String, String)>,
}

fn bus_of(s: &str) -> &str {
    s.split(':').next().unwrap_or(s)
}

impl AliasTable {
    /// `alias PATTERN MODULE` lines; module names folded (`-` = `_`).
    pub fn parse(text: &str) -> Self {
        let mut t = AliasTable::default();
        for (pattern, module) in alias_lines(text) {
            let entry = (pattern.to_string(), super::normalize_module_name(module));
            let bus = bus_of(pattern);
            if bus.contains(['*', '?', '[', '\\']) {
                t.wild.push(entry);
            } else {
                t.by_bus.entry(bus.to_string()).or_default().push(entry);
            }
        }
        t
    }

    /// The modules whose alias patterns match `modalias`, each once, in file order.
    pub fn modules_for(&self, modalias: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let own = self.by_bus.get(bus_of(modalias)).into_iter().flatten();
        for (pattern, module) in own.chain(self.wild.iter()) {
            if !out.contains(module) && glob_match(pattern, modalias) {
                out.push(module.clone());
            }
        }
        out
    }
}

/// (pattern, module) of each `alias` line.
pub fn alias_lines(text: &str) -> impl Iterator<Item = (&str, &str)> {
    super::data_lines(text).filter_map(|line| {
        let mut tokens = line.split_whitespace();
        if tokens.next() != Some("alias") {
            return None;
        }
        Some((tokens.next()?, tokens.next()?))
    })
}

/// The `alias` lines of `text` whose module `keep` accepts, in their order: the
/// table shipped with the modules that are shipped.
pub fn filter_aliases(text: &str, keep: impl Fn(&str) -> bool) -> String {
    let mut out = String::new();
    for (pattern, module) in alias_lines(text) {
        if keep(&super::normalize_module_name(module)) {
            out.push_str(&format!("alias {pattern} {module}\n"));
        }
    }
    out
}

/// One device that asks for a driver: its sysfs name and modalias.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Device {
    pub name: String,
    pub modalias: String,
}

/// A module to load because a device's modalias matched one of its aliases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub module: String,
    pub device: String,
    pub modalias: String,
}

/// The modules `devices` ask for that are not in `tried`, each once with the
/// first device (in the order given) that asked for it. What modprobe would
/// load for each uevent's MODALIAS, minus what is loaded already.
pub fn claims(
    table: &AliasTable,
    devices: &[Device],
    tried: &std::collections::HashSet<String>,
) -> Vec<Claim> {
    let mut out: Vec<Claim> = Vec::new();
    for d in devices {
        for module in table.modules_for(&d.modalias) {
            if tried.contains(&module) || out.iter().any(|c| c.module == module) {
                continue;
            }
            out.push(Claim {
                module,
                device: d.name.clone(),
                modalias: d.modalias.clone(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn globs_as_fnmatch() {
        assert!(glob_match(
            "pci:v00001AF4d*sv*sd*bc*sc*i*",
            "pci:v00001AF4d00001041sv00001AF4sd00001041bc02sc00i00"
        ));
        assert!(!glob_match(
            "pci:v00001AF4d*sv*sd*bc*sc*i*",
            "pci:v00008086d00001041sv00001AF4sd00001041bc02sc00i00"
        ));
        assert!(glob_match("a?c", "abc") && !glob_match("a?c", "ac"));
        assert!(glob_match("d0[0-2]x", "d01x") && !glob_match("d0[0-2]x", "d03x"));
        assert!(glob_match("[!0-9]z", "az") && !glob_match("[!0-9]z", "5z"));
        assert!(glob_match("[^0-9]z", "az") && !glob_match("[^0-9]z", "5z"));
        assert!(glob_match("[]]", "]") && glob_match("[a-]", "-"));
        assert!(glob_match("a\\*b", "a*b") && !glob_match("a\\*b", "axb"));
        assert!(glob_match("a[b", "a[b"), "an unclosed [ is literal");
        assert!(glob_match("*", "") && glob_match("**a**", "xay"));
        assert!(!glob_match("", "x") && glob_match("", ""));
        assert!(
            glob_match("*/x/*", "a/b/x/c"),
            "no FNM_PATHNAME: * crosses /"
        );
        assert!(!glob_match("abc*", "ab"));
    }

    // Real lines of this machine's /lib/modules/6.1.0-57-amd64/modules.alias.
    const ALIAS: &str = "\
alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci
alias virtio:d00000001v* virtio_net
alias virtio:d00000008v* virtio_scsi
alias pci:v000015ADd000007B0sv*sd*bc*sc*i* vmxnet3
alias pci:v00008086d0000158Bsv*sd*bc*sc*i* i40e
alias pci:v00008086d00001888sv*sd*bc*sc*i* ice
alias pci:v000015B3d0000A2DCsv*sd*bc*sc*i* mlx5_core
alias pci:v000014E4d00001809sv*sd*bc*sc*i* bnxt_en
alias pci:v000010CFd000011A2sv*sd*bc*sc*i* tg3
alias pci:v000010ECd00008125sv*sd*bc*sc*i* r8169
alias pci:v00001000d000000E7sv*sd*bc*sc*i* mpt3sas
alias pci:v00001000d000010E0sv*sd*bc*sc*i* megaraid_sas
alias pci:v00008086d00005845sv*sd*bc*sc*i* nvme
alias pci:v*d*sv*sd*bc01sc08i02* nvme
alias pci:v*d*sv*sd*bc01sc06i01* ahci
alias pci:v00001B4Bd00009123sv*sd*bc01sc06i01* ahci
alias scsi:t-0x00* sd_mod
alias block-major-8-* sd_mod
alias usb:v13FDp3940d0[0-2]*dc*dsc*dp*ic*isc*ip*in* uas
alias usb:v13FDp3940d0[0-2]*dc*dsc*dp*ic*isc*ip*in* usb_storage
alias acpi*:INTC1085:* pinctrl_alderlake
alias crypto-crc32c crc32c-intel
";

    #[test]
    fn devices_find_their_drivers() {
        let t = AliasTable::parse(ALIAS);
        let m = |s: &str| t.modules_for(s);
        // QEMU's virtio NIC: the PCI transport first, then the virtio device it exposes.
        assert_eq!(
            m("pci:v00001AF4d00001041sv00001AF4sd00001041bc02sc00i00"),
            ["virtio_pci"]
        );
        assert_eq!(m("virtio:d00000001v00001AF4"), ["virtio_net"]);
        assert_eq!(m("virtio:d00000008v00001AF4"), ["virtio_scsi"]);
        assert_eq!(
            m("pci:v000015ADd000007B0sv000015ADsd000007B0bc02sc00i00"),
            ["vmxnet3"]
        );
        assert_eq!(
            m("pci:v00008086d0000158Bsv00008086sd00000001bc02sc00i00"),
            ["i40e"]
        );
        assert_eq!(
            m("pci:v000010ECd00008125sv00001849sd00008125bc02sc00i00"),
            ["r8169"]
        );
        // Any AHCI-class controller (class 01 06 01), and a listed one once only.
        assert_eq!(
            m("pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01"),
            ["ahci"]
        );
        assert_eq!(
            m("pci:v00001B4Bd00009123sv00001B4Bsd00009123bc01sc06i01"),
            ["ahci"]
        );
        // An NVMe controller by class (01 08 02) when its ID is not listed.
        assert_eq!(
            m("pci:v0000144Dd0000A808sv0000144Dsd0000A801bc01sc08i02"),
            ["nvme"]
        );
        assert_eq!(m("scsi:t-0x00"), ["sd_mod"]);
        assert!(m("scsi:t-0x05").is_empty(), "a CD-ROM is not sd_mod's");
        assert_eq!(
            m("usb:v13FDp3940d0001dc00dsc00dp00ic08isc06ip50in00"),
            ["uas", "usb_storage"]
        );
        assert!(m("usb:v13FDp3940d0301dc00dsc00dp00ic08isc06ip50in00").is_empty());
        assert_eq!(m("acpi:INTC1085:"), ["pinctrl_alderlake"]);
        // Exact aliases are names, not devices.
        assert!(m("pci:v00001234d00001111sv00001AF4sd00001100bc03sc00i00").is_empty());
    }

    #[test]
    fn claims_skip_tried_modules_and_name_the_first_device() {
        let t = AliasTable::parse(ALIAS);
        let devices = vec![
            Device {
                name: "0000:00:03.0".into(),
                modalias: "pci:v00001AF4d00001041sv00001AF4sd00001041bc02sc00i00".into(),
            },
            Device {
                name: "0000:00:04.0".into(),
                modalias: "pci:v00001AF4d00001042sv00001AF4sd00001042bc01sc00i00".into(),
            },
            Device {
                name: "0000:00:05.0".into(),
                modalias: "pci:v000015ADd000007B0sv000015ADsd000007B0bc02sc00i00".into(),
            },
            Device {
                name: "0000:00:06.0".into(),
                modalias: "pci:v00001234d00001111sv00001AF4sd00001100bc03sc00i00".into(),
            },
        ];
        let c = claims(&t, &devices, &HashSet::new());
        let got: Vec<(&str, &str)> = c
            .iter()
            .map(|c| (c.module.as_str(), c.device.as_str()))
            .collect();
        assert_eq!(
            got,
            [("virtio_pci", "0000:00:03.0"), ("vmxnet3", "0000:00:05.0")]
        );
        let tried: HashSet<String> = ["virtio_pci".to_string()].into();
        let c = claims(&t, &devices, &tried);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].module, "vmxnet3");
        assert_eq!(c[0].modalias, devices[2].modalias);
    }

    #[test]
    fn the_shipped_table_keeps_only_shipped_modules() {
        let kept = filter_aliases(ALIAS, |m| m == "sd_mod" || m == "crc32c_intel");
        assert_eq!(
            kept,
            "alias scsi:t-0x00* sd_mod\nalias block-major-8-* sd_mod\nalias crypto-crc32c crc32c-intel\n"
        );
        assert_eq!(
            AliasTable::parse(&kept).modules_for("scsi:t-0x00"),
            ["sd_mod"]
        );
    }
}
