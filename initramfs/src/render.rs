//! Text of every file the installer writes into the new root. Pure functions, so
//! each rendering is tested against the exact expected text.

use rollout::wire::{Content, Fs, InstallPlan, Mount, MountKind, NetworkPlan, PhoneHome};

use crate::paths;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RenderError {
    #[error("plan.network.address {0:?} is not IPv4 CIDR like 10.44.0.20/24")]
    BadAddress(String),
    #[error("bond member {0} is not a NIC of this machine (the installer saw no interface with that MAC); fix the node's bond.interfaces")]
    NoNic(String),
}

pub fn hostname(name: &str) -> String {
    format!("{name}\n")
}

pub fn hosts(name: &str) -> String {
    let short = name.split('.').next().unwrap_or(name);
    let names = if short == name {
        name.to_string()
    } else {
        format!("{name} {short}")
    };
    format!(
        "127.0.0.1\tlocalhost\n127.0.1.1\t{names}\n\n::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n"
    )
}

/// One line of the installed fstab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FstabEntry {
    pub spec: String,
    pub file: String,
    pub vfstype: String,
    pub options: String,
    pub pass: u8,
}

/// The fstab lines of a layout: each filesystem and swap area made on the
/// disks by the UUID it got (`made`, in the plan's mount order), then the
/// network and tmpfs mounts by source, each with its options.
pub fn fstab_entries(made: &[(&Content, &str)], mounts: &[Mount]) -> Vec<FstabEntry> {
    let mut local = Vec::new();
    let mut swap = Vec::new();
    for (content, uuid) in made {
        match content {
            Content::Filesystem(f) => {
                let default = match (f.mount.as_str(), f.fs) {
                    ("/", Fs::Ext3 | Fs::Ext4) => "errors=remount-ro",
                    _ => "defaults",
                };
                local.push(FstabEntry {
                    spec: format!("UUID={uuid}"),
                    file: f.mount.clone(),
                    vfstype: f.fs.as_str().into(),
                    options: f.options.clone().unwrap_or_else(|| default.into()),
                    // xfs checks itself at mount; fsck.xfs does nothing.
                    pass: match (f.mount.as_str(), f.fs) {
                        (_, Fs::Xfs) => 0,
                        ("/", _) => 1,
                        _ => 2,
                    },
                })
            }
            Content::Swap => swap.push(FstabEntry {
                spec: format!("UUID={uuid}"),
                file: "none".into(),
                vfstype: "swap".into(),
                options: "sw".into(),
                pass: 0,
            }),
            Content::LvmPv => {}
        }
    }
    let mut others: Vec<&Mount> = mounts.iter().collect();
    others.sort_by_key(|m| rollout::layout::mount_order(Some(&m.mount)));
    for m in others {
        let (spec, vfstype) = match &m.kind {
            MountKind::Nfs { source } => (source.clone(), "nfs"),
            MountKind::Tmpfs => ("tmpfs".to_string(), "tmpfs"),
        };
        local.push(FstabEntry {
            spec,
            file: m.mount.clone(),
            vfstype: vfstype.into(),
            options: m.options.clone().unwrap_or_else(|| "defaults".into()),
            pass: 0,
        });
    }
    local.extend(swap);
    local
}

pub fn fstab(entries: &[FstabEntry]) -> String {
    let mut s = String::from("# /etc/fstab: written by rollout-installer.\n");
    s.push_str("# <file system>\t<mount point>\t<type>\t<options>\t<dump>\t<pass>\n");
    for e in entries {
        s.push_str(&format!(
            "{}\t{}\t{}\t{}\t0\t{}\n",
            e.spec, e.file, e.vfstype, e.options, e.pass
        ));
    }
    s
}

fn check_cidr(a: &str) -> Result<(), RenderError> {
    let bad = || RenderError::BadAddress(a.to_string());
    let (ip, prefix) = a.split_once('/').ok_or_else(bad)?;
    ip.parse::<std::net::Ipv4Addr>().map_err(|_| bad())?;
    match prefix.parse::<u8>() {
        Ok(p) if p <= 32 => Ok(()),
        _ => Err(bad()),
    }
}

/// systemd-networkd unit for the boot NIC, matched by MAC so the installed OS's
/// interface naming does not matter.
pub fn networkd(mac: &str, net: &NetworkPlan) -> Result<String, RenderError> {
    Ok(format!(
        "# Written by rollout-installer: the NIC this node was installed through.\n[Match]\nMACAddress={mac}\n\n[Network]\n{}",
        networkd_addressing(net)?
    ))
}

/// The `[Network]` lines that address an interface as `net` says.
pub fn networkd_addressing(net: &NetworkPlan) -> Result<String, RenderError> {
    let mut s = String::new();
    match net {
        NetworkPlan::Dhcp => s.push_str("DHCP=ipv4\n"),
        NetworkPlan::Static {
            address,
            gateway,
            dns,
        } => {
            check_cidr(address)?;
            s.push_str(&format!("Address={address}\n"));
            if let Some(g) = gateway {
                s.push_str(&format!("Gateway={g}\n"));
            }
            for d in dns {
                s.push_str(&format!("DNS={d}\n"));
            }
        }
    }
    Ok(s)
}

/// ifupdown (or busybox ifup) config; `iface` is the kernel name the installer saw.
pub fn interfaces(iface: &str, net: &NetworkPlan) -> Result<String, RenderError> {
    Ok(format!(
        "{}{}",
        interfaces_header(),
        ifupdown_stanza(iface, net, "")?
    ))
}

/// The start of every `/etc/network/interfaces` the installer writes: loopback.
pub fn interfaces_header() -> &'static str {
    "# Written by rollout-installer.\nsource /etc/network/interfaces.d/*\n\nauto lo\niface lo inet loopback\n\n"
}

/// `auto IFACE` and its `iface` stanza addressed as `net`, then `extra` (option
/// lines such as `    bond-mode …\n`).
pub fn ifupdown_stanza(iface: &str, net: &NetworkPlan, extra: &str) -> Result<String, RenderError> {
    let mut s = String::new();
    match net {
        NetworkPlan::Dhcp => s.push_str(&format!("auto {iface}\niface {iface} inet dhcp\n")),
        NetworkPlan::Static {
            address,
            gateway,
            dns,
        } => {
            check_cidr(address)?;
            s.push_str(&format!(
                "auto {iface}\niface {iface} inet static\n    address {address}\n"
            ));
            if let Some(g) = gateway {
                s.push_str(&format!("    gateway {g}\n"));
            }
            if !dns.is_empty() {
                s.push_str(&format!("    dns-nameservers {}\n", dns.join(" ")));
            }
        }
    }
    s.push_str(extra);
    Ok(s)
}

/// ifupdown file when networkd manages the NIC: loopback only, so the two never
/// both run DHCP on the same link.
pub fn interfaces_loopback_only() -> String {
    "# Written by rollout-installer: the boot NIC is managed by systemd-networkd\n# (/etc/systemd/network/10-rollout.network).\nsource /etc/network/interfaces.d/*\n\nauto lo\niface lo inet loopback\n".into()
}

pub fn resolv_conf(dns: &[String]) -> String {
    let mut s = String::from("# Written by rollout-installer.\n");
    for d in dns {
        s.push_str(&format!("nameserver {d}\n"));
    }
    s
}

/// A TOML basic string.
pub fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `rsync://host[:port]` of a module URL such as `rsync://10.44.0.1:873/web-3/`.
pub fn rsync_base(url: &str) -> &str {
    let Some(rest) = url.strip_prefix("rsync://") else {
        return "";
    };
    match rest.find('/') {
        Some(i) => &url[..8 + i],
        None => url,
    }
}

pub fn node_toml(plan: &InstallPlan) -> String {
    format!(
        "# Written by rollout-installer; read by {bin}.\nserver = {}\nmac = {}\nhostname = {}\nimage = {}\nserial = {}\ninstall_id = {}\nrsync = {}\nrsync_user = {}\n",
        toml_str(&plan.server_url),
        toml_str(&plan.mac),
        toml_str(&plan.hostname),
        toml_str(&plan.image.name),
        plan.image.serial,
        toml_str(&plan.install_id),
        toml_str(rsync_base(&plan.image.rsync_url)),
        toml_str(&plan.node.rsync.user),
        bin = paths::NODE_SYNC_BINARY,
    )
}

/// Reads back the flat `key = value` file [`node_toml`] writes.
pub fn parse_node_toml(text: &str) -> std::collections::HashMap<String, String> {
    let mut m = std::collections::HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim();
        let value = if let Some(inner) = v.strip_prefix('"').and_then(|x| x.strip_suffix('"')) {
            let mut out = String::new();
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                if c != '\\' {
                    out.push(c);
                    continue;
                }
                match chars.next() {
                    Some('n') => out.push('\n'),
                    Some('u') => {
                        let hex: String = chars.by_ref().take(4).collect();
                        if let Some(ch) =
                            u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32)
                        {
                            out.push(ch);
                        }
                    }
                    Some(other) => out.push(other),
                    None => {}
                }
            }
            out
        } else {
            v.to_string()
        };
        m.insert(k.trim().to_string(), value);
    }
    m
}

pub const PHONE_HOME_UNIT_NAME: &str = "rollout-phone-home.service";

/// "Booted" tells the operator the node takes `rollout exec` now, so the report
/// waits for sshd (ssh.service is Type=notify: ordered after it, sshd listens);
/// without this, a loaded node reported before sshd and exec met "connection
/// refused". `After=` on a unit the image lacks orders nothing and is harmless.
pub fn phone_home_unit() -> String {
    format!(
        "# Written by rollout-installer.\n[Unit]\nDescription=Report this boot to the rollout server\nWants=network-online.target\nAfter=network-online.target ssh.service sshd.service\n\n[Service]\n# simple, not oneshot: boot must not wait while the server is unreachable.\nType=simple\nExecStart={bin} phone-home\n\n[Install]\nWantedBy=multi-user.target\n",
        bin = paths::NODE_SYNC_BINARY
    )
}

pub const SYNC_UNIT_NAME: &str = "rollout-sync.service";
pub const SYNC_TIMER_NAME: &str = "rollout-sync.timer";

pub fn sync_unit() -> String {
    format!(
        "# Written by rollout-installer.\n[Unit]\nDescription=Bring this node to its image's published serial\nWants=network-online.target\nAfter=network-online.target\n\n[Service]\nType=oneshot\nExecStart={bin} sync\n",
        bin = paths::NODE_SYNC_BINARY
    )
}

/// Every `interval` seconds, spread by up to a tenth of it (at most 5 min) so a
/// rack that booted together does not ask the server all at once.
pub fn sync_timer(interval: u64) -> String {
    let spread = (interval / 10).min(300);
    format!(
        "# Written by rollout-installer.\n[Unit]\nDescription=Check for a new image serial every {interval} s\n\n[Timer]\nOnBootSec={interval}\nOnUnitActiveSec={interval}\nRandomizedDelaySec={spread}\n\n[Install]\nWantedBy=timers.target\n"
    )
}

/// The periodic sync where busybox init runs the image (its inittab starts
/// this once): what the systemd timer does, with the output on the console.
pub fn sync_loop_script(interval: u64) -> String {
    format!(
        "#!/bin/sh\n# Written by rollout-installer: check for a new image serial every {interval} s.\nwhile sleep {interval}; do\n  {bin} sync\ndone\n",
        bin = paths::NODE_SYNC_BINARY
    )
}

/// Fallback for images without systemd: prefers the installer binary, then curl,
/// wget or busybox wget, retrying for about five minutes.
pub fn phone_home_script() -> String {
    format!(
        r#"#!/bin/sh
# Written by rollout-installer: report this boot to the rollout server.
CONF={conf}
get() {{ sed -n "s/^$1 *= *\"\{{0,1\}}\([^\"]*\)\"\{{0,1\}} *$/\1/p" "$CONF" | head -n 1; }}
if [ -x {bin} ] && {bin} phone-home; then exit 0; fi
SERVER=$(get server)
MAC=$(get mac)
SERIAL=$(cat {serial} 2>/dev/null || get serial)
HOST=$(cat /proc/sys/kernel/hostname 2>/dev/null || hostname)
BOOT_ID=$(cat /proc/sys/kernel/random/boot_id 2>/dev/null)
# The node's credential (only root can read it); this fallback runs when
# rollout-sync cannot, and its HTTP clients take the header on their command line.
AUTH="Authorization: Bearer $(cat {secret} 2>/dev/null)"
BODY=$(printf '{{"mac":"%s","hostname":"%s","serial":%s,"boot_id":"%s"}}' "$MAC" "$HOST" "${{SERIAL:-0}}" "$BOOT_ID")
URL="$SERVER{path}"
i=0
while [ $i -lt 30 ]; do
  if command -v curl >/dev/null 2>&1; then
    curl -fsS -m 10 -H 'Content-Type: application/json' -H "$AUTH" -d "$BODY" "$URL" >/dev/null && exit 0
  elif command -v wget >/dev/null 2>&1; then
    wget -q -T 10 -O /dev/null --header='Content-Type: application/json' --header="$AUTH" --post-data="$BODY" "$URL" && exit 0
  elif command -v busybox >/dev/null 2>&1; then
    busybox wget -q -T 10 -O /dev/null --header='Content-Type: application/json' --header="$AUTH" --post-data="$BODY" "$URL" && exit 0
  else
    echo "rollout-phone-home: no HTTP client (curl, wget) on this system" >&2
    exit 1
  fi
  i=$((i + 1))
  sleep 10
done
exit 1
"#,
        conf = paths::NODE_CONFIG,
        bin = paths::NODE_SYNC_BINARY,
        serial = paths::NODE_SERIAL,
        secret = paths::NODE_SECRET,
        path = rollout::wire::paths::PHONE_HOME,
    )
}

pub fn phone_home_initd() -> String {
    format!(
        "#!/bin/sh\n### BEGIN INIT INFO\n# Provides:          rollout-phone-home\n# Required-Start:    $network $remote_fs\n# Should-Start:      ssh sshd dropbear\n# Required-Stop:\n# Default-Start:     2 3 4 5\n# Default-Stop:\n# Short-Description: Report this boot to the rollout server\n### END INIT INFO\ncase \"$1\" in\n  start) {script} >/dev/null 2>&1 & ;;\nesac\nexit 0\n",
        script = paths::NODE_PHONE_HOME_SCRIPT
    )
}

pub fn phone_home_json(p: &PhoneHome) -> Vec<u8> {
    serde_json::to_vec(p).expect("PhoneHome serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fs(mount: &str, fs: Fs, options: Option<&str>) -> Content {
        Content::Filesystem(rollout::wire::Filesystem {
            mount: mount.into(),
            fs,
            label: None,
            options: options.map(Into::into),
        })
    }

    #[test]
    fn fstab_by_uuid() {
        let root = fs("/", Fs::Ext3, None);
        assert_eq!(
            fstab(&fstab_entries(
                &[(&root, "1111-aa"), (&Content::Swap, "2222-bb")],
                &[]
            )),
            "# /etc/fstab: written by rollout-installer.\n\
             # <file system>\t<mount point>\t<type>\t<options>\t<dump>\t<pass>\n\
             UUID=1111-aa\t/\text3\terrors=remount-ro\t0\t1\n\
             UUID=2222-bb\tnone\tswap\tsw\t0\t0\n"
        );
        let root4 = fs("/", Fs::Ext4, None);
        assert!(!fstab(&fstab_entries(&[(&root4, "u")], &[])).contains("swap"));
    }

    #[test]
    fn fstab_lists_every_mount_with_its_options() {
        let root = fs("/", Fs::Ext4, Some("noatime"));
        let scratch = fs("/scratch", Fs::Xfs, None);
        let var = fs("/var", Fs::Ext3, None);
        let mounts = [
            Mount {
                mount: "/var/tmp".into(),
                kind: MountKind::Tmpfs,
                options: None,
            },
            Mount {
                mount: "/usr".into(),
                kind: MountKind::Nfs {
                    source: "nfs1:/export/usr".into(),
                },
                options: Some("ro,nolock".into()),
            },
        ];
        let text = fstab(&fstab_entries(
            &[
                (&root, "r"),
                (&scratch, "s"),
                (&var, "v"),
                (&Content::Swap, "w"),
            ],
            &mounts,
        ));
        let lines: Vec<&str> = text.lines().skip(2).collect();
        assert_eq!(
            lines,
            [
                "UUID=r\t/\text4\tnoatime\t0\t1",
                "UUID=s\t/scratch\txfs\tdefaults\t0\t0",
                "UUID=v\t/var\text3\tdefaults\t0\t2",
                "nfs1:/export/usr\t/usr\tnfs\tro,nolock\t0\t0",
                "tmpfs\t/var/tmp\ttmpfs\tdefaults\t0\t0",
                "UUID=w\tnone\tswap\tsw\t0\t0",
            ]
        );
    }

    #[test]
    fn hosts_has_fqdn_and_short_name() {
        assert!(hosts("node1").contains("127.0.1.1\tnode1\n"));
        assert!(hosts("node1.lab").contains("127.0.1.1\tnode1.lab node1\n"));
    }

    #[test]
    fn network_configs() {
        let dhcp = networkd("52:54:00:00:00:01", &NetworkPlan::Dhcp).unwrap();
        assert!(
            dhcp.contains("[Match]\nMACAddress=52:54:00:00:00:01\n\n[Network]\nDHCP=ipv4\n"),
            "{dhcp}"
        );
        let st = NetworkPlan::Static {
            address: "10.44.0.20/24".into(),
            gateway: Some("10.44.0.1".into()),
            dns: vec!["10.44.0.1".into(), "10.44.0.2".into()],
        };
        let n = networkd("m", &st).unwrap();
        assert!(
            n.ends_with("Address=10.44.0.20/24\nGateway=10.44.0.1\nDNS=10.44.0.1\nDNS=10.44.0.2\n"),
            "{n}"
        );
        let i = interfaces("eth0", &st).unwrap();
        assert!(i.ends_with("auto eth0\niface eth0 inet static\n    address 10.44.0.20/24\n    gateway 10.44.0.1\n    dns-nameservers 10.44.0.1 10.44.0.2\n"), "{i}");
        assert!(interfaces("ens3", &NetworkPlan::Dhcp)
            .unwrap()
            .ends_with("auto ens3\niface ens3 inet dhcp\n"));
        let bad = NetworkPlan::Static {
            address: "10.44.0.20".into(),
            gateway: None,
            dns: vec![],
        };
        assert_eq!(
            networkd("m", &bad),
            Err(RenderError::BadAddress("10.44.0.20".into()))
        );
        assert!(resolv_conf(&["1.1.1.1".into()]).ends_with("nameserver 1.1.1.1\n"));
    }

    #[test]
    fn node_toml_round_trips() {
        let plan = crate::testutil::plan();
        let text = node_toml(&plan);
        let m = parse_node_toml(&text);
        assert_eq!(m["server"], "http://10.44.0.1:8080");
        assert_eq!(m["mac"], "52:54:00:00:00:01");
        assert_eq!(m["hostname"], "node\"1\\");
        assert_eq!(m["serial"], "7");
        assert_eq!(m["image"], "default");
        assert_eq!(m["rsync"], rsync_base(&plan.image.rsync_url));
        assert_eq!(m["rsync_user"], "node-525400000001");
        assert_eq!(
            rsync_base("rsync://10.44.0.1:873/web-3/"),
            "rsync://10.44.0.1:873"
        );
        assert_eq!(rsync_base("rsync://h"), "rsync://h");
        assert_eq!(rsync_base("http://h/x"), "");
        assert_eq!(toml_str("a\u{1}b"), "\"a\\u0001b\"");
        assert_eq!(parse_node_toml("x = \"a\\u0001b\"")["x"], "a\u{1}b");
    }

    #[test]
    fn phone_home_files() {
        let unit = phone_home_unit();
        assert!(unit.contains("ExecStart=/var/lib/rollout/bin/rollout-sync phone-home\n"));
        assert!(unit.contains("WantedBy=multi-user.target"));
        assert!(unit.contains("After=network-online.target ssh.service sshd.service\n"));
        let script = phone_home_script();
        assert!(script.starts_with("#!/bin/sh\n"));
        assert!(script.contains("URL=\"$SERVER/api/v1/phone-home\""));
        assert!(script.contains("--post-data=\"$BODY\""));
        assert!(script.contains(
            "AUTH=\"Authorization: Bearer $(cat /etc/rollout/node.secret 2>/dev/null)\""
        ));
        assert_eq!(
            script.matches("\"$AUTH\"").count(),
            3,
            "every client sends it"
        );
        assert!(phone_home_initd()
            .contains("/var/lib/rollout/bin/rollout-phone-home >/dev/null 2>&1 &"));
        assert!(phone_home_initd().contains("# Should-Start:      ssh sshd dropbear\n"));
        let json = phone_home_json(&PhoneHome {
            mac: "m".into(),
            hostname: "h".into(),
            serial: 3,
            boot_id: "b".into(),
        });
        assert_eq!(
            json,
            br#"{"mac":"m","hostname":"h","serial":3,"boot_id":"b"}"#
        );
    }

    /// The fallback script must build the same JSON as the Rust side, through a real sh.
    #[test]
    fn phone_home_script_parses_node_toml() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("node.toml");
        std::fs::write(&conf, node_toml(&crate::testutil::plan())).unwrap();
        let script = phone_home_script();
        let get_line = script.lines().find(|l| l.starts_with("get()")).unwrap();
        let sh = format!(
            "CONF={}\n{get_line}\nget server; get serial; get mac",
            conf.display()
        );
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(sh)
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "http://10.44.0.1:8080\n7\n52:54:00:00:00:01\n"
        );
    }
}
