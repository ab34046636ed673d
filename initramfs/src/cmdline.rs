//! Parses the kernel command line the iPXE script wrote (`rollout.*` keys).

use std::collections::{HashMap, HashSet};

use rollout::mac::MacAddr;
use rollout::wire::cmdline as keys;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CmdlineError {
    #[error("kernel command line has no {0}=...; the iPXE script from `rollout serve` sets it — boot through the rollout server")]
    Missing(&'static str),
    #[error("kernel command line has neither rollout.mac=... nor BOOTIF=01-...; the iPXE script from `rollout serve` sets rollout.mac (pxelinux sets BOOTIF with IPAPPEND 2) — boot through the rollout server")]
    NoMac,
    #[error("{key}={value:?} is not valid: {why}")]
    Invalid {
        key: &'static str,
        value: String,
        why: &'static str,
    },
    #[error(
        "{0}; the iPXE script from `rollout serve` writes it from the node's [[node]] vlan/bond"
    )]
    Link(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelArgs {
    /// Base URL without a trailing slash, e.g. `http://10.44.0.1:8080`.
    pub server: String,
    /// Lower-case, colon-separated MAC of the boot NIC.
    pub mac: String,
    pub debug: bool,
    /// The one-time boot secret of the iPXE script, sent with the plan request.
    pub boot_secret: Option<String>,
    /// The node's bond and VLAN (`rollout.bond=`, `rollout.vlan=`): the installer
    /// runs DHCP on them.
    pub link: rollout::wire::LinkPlan,
}

/// Splits a command line into `key[=value]` words, honouring double quotes the way
/// the kernel does (`key="a b"` is one word, quotes removed).
pub fn split(line: &str) -> Vec<(String, Option<String>)> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_quotes = false;
    let mut any = false;
    for c in line.chars() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                any = true;
            }
            c if c.is_whitespace() && !in_quotes => {
                if any {
                    words.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        words.push(cur);
    }
    words
        .into_iter()
        .map(|w| match w.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (w, None),
        })
        .collect()
}

/// What the command line says about modules, read as modprobe reads
/// /proc/cmdline: the installer loads its modules itself, so it has to as well,
/// or an operator's fix for a quirky device would not reach the installer.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ModuleOptions {
    /// `nvme_core.io_timeout=600`, by module name with `-` folded to `_`: each
    /// module's parameters as one `finit_module` argument string.
    pub params: HashMap<String, String>,
    /// `modprobe.blacklist=nouveau,floppy`: modules never loaded because a
    /// device's modalias asks for them (by name they still load, as with modprobe).
    pub blacklist: HashSet<String>,
}

/// The [`ModuleOptions`] of a command line. The installer's own `rollout.*` keys
/// and modprobe's are not module parameters.
pub fn module_options(line: &str) -> ModuleOptions {
    let mut out = ModuleOptions::default();
    for (key, value) in split(line) {
        let Some((module, param)) = key.split_once('.') else {
            continue;
        };
        if key == "modprobe.blacklist" {
            let names = value.unwrap_or_default();
            out.blacklist.extend(
                names
                    .split(',')
                    .filter(|n| !n.is_empty())
                    .map(rollout::kernel::normalize_module_name),
            );
            continue;
        }
        if module.is_empty() || param.is_empty() || module == "rollout" || module == "modprobe" {
            continue;
        }
        let word = match value {
            // The kernel's own parser takes a quoted value with blanks in it.
            Some(v) if v.contains(char::is_whitespace) => format!("{param}=\"{v}\""),
            Some(v) => format!("{param}={v}"),
            None => param.to_string(),
        };
        let args = out
            .params
            .entry(rollout::kernel::normalize_module_name(module))
            .or_default();
        if !args.is_empty() {
            args.push(' ');
        }
        args.push_str(&word);
    }
    out
}

/// MAC string (any form [`MacAddr`] accepts, including the pxelinux
/// `01-52-54-00-ab-cd-ef`) to bytes.
pub fn mac_bytes(s: &str) -> Option<[u8; 6]> {
    s.parse::<MacAddr>().ok().map(|m| m.octets())
}

pub fn parse(line: &str) -> Result<KernelArgs, CmdlineError> {
    let mut server = None;
    let mut mac = None;
    let mut bootif = None;
    let mut debug = false;
    let mut boot_secret = None;
    let (mut bond, mut vlan) = (None, None);
    for (k, v) in split(line) {
        match (k.as_str(), v) {
            (keys::SERVER, Some(v)) => server = Some(v),
            (keys::MAC, Some(v)) => mac = Some(v),
            (keys::BOOTIF, Some(v)) => bootif = Some(v),
            (keys::BOOT_SECRET, Some(v)) if !v.is_empty() => boot_secret = Some(v),
            (keys::BOND, Some(v)) => bond = Some(v),
            (keys::VLAN, Some(v)) => vlan = Some(v),
            (keys::DEBUG, v) => debug = matches!(v.as_deref(), None | Some("1" | "yes" | "true")),
            _ => {}
        }
    }
    let server = server.ok_or(CmdlineError::Missing(keys::SERVER))?;
    let server = server.trim_end_matches('/').to_string();
    if !server.starts_with("http://") || server.len() <= "http://".len() {
        return Err(CmdlineError::Invalid {
            key: keys::SERVER,
            value: server,
            why: "expected http://HOST[:PORT] (the installer has no TLS)",
        });
    }
    // rollout.mac is what the server wrote; BOOTIF what another loader did.
    let (key, raw_mac) = match (mac, bootif) {
        (Some(m), _) => (keys::MAC, m),
        (None, Some(b)) => (keys::BOOTIF, b),
        (None, None) => return Err(CmdlineError::NoMac),
    };
    let mac =
        match raw_mac.parse::<MacAddr>() {
            Ok(m) => m.to_string(),
            Err(_) => return Err(CmdlineError::Invalid {
                key,
                value: raw_mac,
                why: "expected six hex bytes like 52:54:00:12:34:56 (BOOTIF: 01-52-54-00-12-34-56)",
            }),
        };
    let link = rollout::wire::LinkPlan::from_cmdline(bond.as_deref(), vlan.as_deref())
        .map_err(CmdlineError::Link)?;
    Ok(KernelArgs {
        server,
        mac,
        debug,
        boot_secret,
        link,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_ipxe_command_line() {
        let a = parse("initrd=initramfs.img rollout.server=http://10.44.0.1:8080/ rollout.mac=52:54:00:AB:cd:01 console=ttyS0").unwrap();
        assert_eq!(a.server, "http://10.44.0.1:8080");
        assert_eq!(a.mac, "52:54:00:ab:cd:01");
        assert!(!a.debug);
        assert_eq!(a.boot_secret, None);
        let a = parse(
            "rollout.server=http://s rollout.mac=52:54:00:00:00:01 rollout.boot_secret=0a1b2c",
        )
        .unwrap();
        assert_eq!(a.boot_secret.as_deref(), Some("0a1b2c"));
    }

    #[test]
    fn bond_and_vlan_come_from_the_command_line() {
        let base = "rollout.server=http://s rollout.mac=52:54:00:00:00:01";
        let a = parse(&format!(
            "{base} rollout.bond=active-backup,52:54:00:00:00:01,52:54:00:00:00:02 rollout.vlan=100"
        ))
        .unwrap();
        assert_eq!(a.link.vlan, Some(100));
        assert_eq!(
            a.link.bond.unwrap().interfaces,
            ["52:54:00:00:00:01", "52:54:00:00:00:02"]
        );
        assert!(parse(base).unwrap().link.is_plain());
        let e = parse(&format!("{base} rollout.vlan=5000")).unwrap_err();
        assert!(e.to_string().contains("1 to 4094"), "{e}");
    }

    #[test]
    fn debug_flag_forms() {
        let base = "rollout.server=http://s rollout.mac=52:54:00:00:00:01";
        assert!(parse(&format!("{base} rollout.debug=1")).unwrap().debug);
        assert!(parse(&format!("{base} rollout.debug")).unwrap().debug);
        assert!(!parse(&format!("{base} rollout.debug=0")).unwrap().debug);
    }

    #[test]
    fn quotes_group_words() {
        let w = split(r#"a="b c" d  e=f"#);
        assert_eq!(
            w,
            vec![
                ("a".into(), Some("b c".into())),
                ("d".into(), None),
                ("e".into(), Some("f".into()))
            ]
        );
    }

    #[test]
    fn missing_and_invalid_keys_are_named() {
        assert_eq!(
            parse("rollout.mac=52:54:00:00:00:01"),
            Err(CmdlineError::Missing("rollout.server"))
        );
        assert_eq!(parse("rollout.server=http://x"), Err(CmdlineError::NoMac));
        let e = parse("rollout.server=http://x").unwrap_err().to_string();
        assert!(e.contains("rollout.mac") && e.contains("BOOTIF"), "{e}");
        let e = parse("rollout.server=https://x rollout.mac=52:54:00:00:00:01").unwrap_err();
        assert!(e.to_string().contains("no TLS"), "{e}");
        let e = parse("rollout.server=http://x rollout.mac=zz").unwrap_err();
        assert!(e.to_string().contains("rollout.mac"), "{e}");
    }

    #[test]
    fn bootif_as_pxelinux_passes_it() {
        let a = parse("rollout.server=http://s BOOTIF=01-52-54-00-AA-00-02 console=ttyS0").unwrap();
        assert_eq!(a.mac, "52:54:00:aa:00:02");
        // The server's rollout.mac wins over a BOOTIF from elsewhere.
        let a = parse(
            "BOOTIF=01-52-54-00-aa-00-02 rollout.server=http://s rollout.mac=52:54:00:aa:00:01",
        )
        .unwrap();
        assert_eq!(a.mac, "52:54:00:aa:00:01");
        let e = parse("rollout.server=http://s BOOTIF=01-zz")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("BOOTIF=\"01-zz\" is not valid"), "{e}");
    }

    #[test]
    fn module_parameters_are_gathered_per_module_as_modprobe_does() {
        let o = module_options(
            "BOOT_IMAGE=/vmlinuz rollout.server=http://10.0.0.1 nvme_core.io_timeout=600 \
             console=ttyS0 e1000e.InterruptThrottleRate=1,1 nvme-core.admin_timeout=120 \
             mlx4_core.log_num_mgm_entry_size=-1 foo.flag dm_mod.opts=\"a b\" .x=1 y.=2",
        );
        let p = &o.params;
        assert_eq!(p["nvme_core"], "io_timeout=600 admin_timeout=120");
        assert_eq!(p["e1000e"], "InterruptThrottleRate=1,1");
        assert_eq!(p["mlx4_core"], "log_num_mgm_entry_size=-1");
        assert_eq!(p["foo"], "flag");
        assert_eq!(p["dm_mod"], "opts=\"a b\"");
        // The installer's keys, plain kernel keys and half keys are not modules'.
        let mut names: Vec<&str> = p.keys().map(String::as_str).collect();
        names.sort();
        assert_eq!(names, ["dm_mod", "e1000e", "foo", "mlx4_core", "nvme_core"]);
        assert!(o.blacklist.is_empty());
        assert_eq!(
            module_options("console=ttyS0 quiet"),
            ModuleOptions::default()
        );
    }

    #[test]
    fn the_modprobe_blacklist_is_a_list_not_a_parameter() {
        let o = module_options("modprobe.blacklist=nouveau,i2c-piix4 modprobe.blacklist=floppy,");
        let mut names: Vec<&str> = o.blacklist.iter().map(String::as_str).collect();
        names.sort();
        assert_eq!(names, ["floppy", "i2c_piix4", "nouveau"]);
        assert!(o.params.is_empty(), "{:?}", o.params);
    }

    #[test]
    fn mac_forms() {
        let mac =
            |m: &str| parse(&format!("rollout.server=http://s rollout.mac={m}")).map(|a| a.mac);
        assert_eq!(
            mac("01-52-54-00-0A-0b-0c").as_deref(),
            Ok("52:54:00:0a:0b:0c")
        );
        assert!(mac("52:54:00:0a:0b").is_err());
        assert!(mac("52:54:00:0a:0b:0g").is_err());
        assert_eq!(
            mac_bytes("01-52-54-00-0a-0b-0c"),
            mac_bytes("52:54:00:0a:0b:0c")
        );
        assert_eq!(mac_bytes("52:54:00:0a:0b"), None);
        assert_eq!(
            mac_bytes("52:54:00:0a:0b:ff"),
            Some([0x52, 0x54, 0, 0x0a, 0x0b, 0xff])
        );
    }
}
