//! The installed OS's network files for a node with a bond and/or a VLAN
//! ([`LinkPlan`]), in both renderers: systemd-networkd `.netdev`/`.network`
//! files, and ifupdown's `/etc/network/interfaces` (bonds through ifenslave's
//! `bond-*` options, VLANs through ifupdown's `PARENT.ID` naming). Pure, so each
//! is tested against the exact text. A plain link keeps `render`'s one file.

use rollout::wire::{BondMode, LinkPlan, NetworkPlan, BOND_NAME};

use crate::render::{self, RenderError};

/// Directory of systemd-networkd's configuration in the installed root.
pub const NETWORKD_DIR: &str = "/etc/systemd/network";

/// networkd's MII link check interval, also ifenslave's `bond-miimon` (ms).
const MIIMON_MS: u32 = 100;

/// `(path, contents)` of each networkd file for `link` (see [`render::networkd`]
/// for a plain one). Members and the bare NIC are matched by their permanent
/// (hardware) MAC, so the installed OS's interface names do not matter, and
/// neither the bond nor the VLAN matches them: both carry the boot MAC as their
/// current address (so the node keeps its DHCP reservation), and the bond
/// gives its members that address too.
pub fn networkd_files(
    mac: &str,
    net: &NetworkPlan,
    link: &LinkPlan,
) -> Result<Vec<(String, String)>, RenderError> {
    const HEAD: &str = "# Written by rollout-installer";
    let mut files = vec![];
    // The device the VLAN (if any) sits on, as a [Match] section.
    let parent_match = match &link.bond {
        Some(bond) => {
            files.push((
                format!("{NETWORKD_DIR}/10-rollout-{BOND_NAME}.netdev"),
                format!(
                    "{HEAD}: the node's bond.\n[NetDev]\nName={BOND_NAME}\nKind=bond\nMACAddress={mac}\n\n[Bond]\nMode={}\nMIIMonitorSec={MIIMON_MS}ms\n",
                    bond.mode.as_str()
                ),
            ));
            for m in &bond.interfaces {
                let primary = if bond.mode == BondMode::ActiveBackup && m == mac {
                    "PrimarySlave=true\n"
                } else {
                    ""
                };
                files.push((
                    format!("{NETWORKD_DIR}/10-rollout-member-{}.network", m.replace(':', "")),
                    format!(
                        "{HEAD}: a member of {BOND_NAME}.\n[Match]\nPermanentMACAddress={m}\n\n[Network]\nBond={BOND_NAME}\n{primary}"
                    ),
                ));
            }
            format!("[Match]\nName={BOND_NAME}\n")
        }
        None => format!("[Match]\nPermanentMACAddress={mac}\n"),
    };
    let top = match link.vlan {
        Some(id) => {
            let name = match link.bond {
                Some(_) => format!("{BOND_NAME}.{id}"),
                None => format!("vlan{id}"),
            };
            files.push((
                format!("{NETWORKD_DIR}/10-rollout-vlan{id}.netdev"),
                format!(
                    "{HEAD}: the node's VLAN.\n[NetDev]\nName={name}\nKind=vlan\nMACAddress={mac}\n\n[VLAN]\nId={id}\n"
                ),
            ));
            let parent_file = match link.bond {
                Some(_) => format!("10-rollout-{BOND_NAME}.network"),
                None => "10-rollout-parent.network".to_string(),
            };
            files.push((
                format!("{NETWORKD_DIR}/{parent_file}"),
                format!(
                    "{HEAD}: carries VLAN {id}, no address of its own.\n{parent_match}\n[Network]\nVLAN={name}\nLinkLocalAddressing=no\n"
                ),
            ));
            format!("[Match]\nName={name}\n")
        }
        None => parent_match,
    };
    files.push((
        format!("{NETWORKD_DIR}/10-rollout.network"),
        format!(
            "{HEAD}: the node's address.\n{top}\n[Network]\n{}",
            render::networkd_addressing(net)?
        ),
    ));
    Ok(files)
}

/// `/etc/network/interfaces` for `link`. `nics` are the installer's (kernel
/// name, MAC) pairs, `boot_iface` the boot NIC's name: ifupdown names
/// interfaces, so the members are written under the names the installer saw.
pub fn interfaces(
    nics: &[(String, String)],
    boot_iface: &str,
    mac: &str,
    net: &NetworkPlan,
    link: &LinkPlan,
) -> Result<String, RenderError> {
    let mut s = render::interfaces_header().to_string();
    let parent = match &link.bond {
        Some(bond) => {
            let mut members = vec![];
            for m in &bond.interfaces {
                let name = crate::net::find_by_mac(nics, m)
                    .ok_or_else(|| RenderError::NoNic(m.clone()))?;
                members.push(name);
            }
            let mut opts = format!(
                "    bond-slaves {}\n    bond-mode {}\n    bond-miimon {MIIMON_MS}\n    hwaddress ether {mac}\n",
                members.join(" "),
                bond.mode.as_str()
            );
            if bond.mode == BondMode::ActiveBackup {
                opts.push_str(&format!("    bond-primary {boot_iface}\n"));
            }
            if link.vlan.is_some() {
                s.push_str(&format!(
                    "auto {BOND_NAME}\niface {BOND_NAME} inet manual\n{opts}\n"
                ));
            } else {
                s.push_str(&render::ifupdown_stanza(BOND_NAME, net, &opts)?);
            }
            BOND_NAME.to_string()
        }
        None => {
            s.push_str(&format!(
                "auto {boot_iface}\niface {boot_iface} inet manual\n\n"
            ));
            boot_iface.to_string()
        }
    };
    if let Some(name) = link.vlan_name(&parent) {
        s.push_str(&render::ifupdown_stanza(&name, net, "")?);
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollout::wire::BondPlan;

    const M1: &str = "52:54:00:00:00:01";
    const M2: &str = "52:54:00:00:00:02";

    fn bond(mode: BondMode) -> Option<BondPlan> {
        Some(BondPlan {
            mode,
            interfaces: vec![M1.into(), M2.into()],
        })
    }

    fn nics() -> Vec<(String, String)> {
        vec![("eth0".into(), M1.into()), ("eth1".into(), M2.into())]
    }

    #[test]
    fn networkd_bond_with_vlan() {
        let link = LinkPlan {
            bond: bond(BondMode::Lacp),
            vlan: Some(100),
        };
        let files = networkd_files(M1, &NetworkPlan::Dhcp, &link).unwrap();
        let expected: Vec<(String, String)> = [
            ("/etc/systemd/network/10-rollout-bond0.netdev", "# Written by rollout-installer: the node's bond.\n[NetDev]\nName=bond0\nKind=bond\nMACAddress=52:54:00:00:00:01\n\n[Bond]\nMode=802.3ad\nMIIMonitorSec=100ms\n"),
            ("/etc/systemd/network/10-rollout-member-525400000001.network", "# Written by rollout-installer: a member of bond0.\n[Match]\nPermanentMACAddress=52:54:00:00:00:01\n\n[Network]\nBond=bond0\n"),
            ("/etc/systemd/network/10-rollout-member-525400000002.network", "# Written by rollout-installer: a member of bond0.\n[Match]\nPermanentMACAddress=52:54:00:00:00:02\n\n[Network]\nBond=bond0\n"),
            ("/etc/systemd/network/10-rollout-vlan100.netdev", "# Written by rollout-installer: the node's VLAN.\n[NetDev]\nName=bond0.100\nKind=vlan\nMACAddress=52:54:00:00:00:01\n\n[VLAN]\nId=100\n"),
            ("/etc/systemd/network/10-rollout-bond0.network", "# Written by rollout-installer: carries VLAN 100, no address of its own.\n[Match]\nName=bond0\n\n[Network]\nVLAN=bond0.100\nLinkLocalAddressing=no\n"),
            ("/etc/systemd/network/10-rollout.network", "# Written by rollout-installer: the node's address.\n[Match]\nName=bond0.100\n\n[Network]\nDHCP=ipv4\n"),
        ]
        .iter()
        .map(|(p, c)| (p.to_string(), c.to_string()))
        .collect();
        assert_eq!(files, expected);
    }

    #[test]
    fn networkd_vlan_on_the_boot_nic_and_active_backup_bond() {
        let vlan = LinkPlan {
            bond: None,
            vlan: Some(7),
        };
        let files = networkd_files(M1, &NetworkPlan::Dhcp, &vlan).unwrap();
        let names: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            names,
            [
                "/etc/systemd/network/10-rollout-vlan7.netdev",
                "/etc/systemd/network/10-rollout-parent.network",
                "/etc/systemd/network/10-rollout.network"
            ]
        );
        assert_eq!(files[1].1, "# Written by rollout-installer: carries VLAN 7, no address of its own.\n[Match]\nPermanentMACAddress=52:54:00:00:00:01\n\n[Network]\nVLAN=vlan7\nLinkLocalAddressing=no\n");
        assert_eq!(
            files[2].1,
            "# Written by rollout-installer: the node's address.\n[Match]\nName=vlan7\n\n[Network]\nDHCP=ipv4\n"
        );
        let ab = LinkPlan {
            bond: bond(BondMode::ActiveBackup),
            vlan: None,
        };
        let st = NetworkPlan::Static {
            address: "10.44.0.20/24".into(),
            gateway: Some("10.44.0.1".into()),
            dns: vec![],
        };
        let files = networkd_files(M1, &st, &ab).unwrap();
        assert_eq!(files.len(), 4);
        assert!(files[0].1.contains("Mode=active-backup\n"));
        assert!(
            files[1].1.ends_with("Bond=bond0\nPrimarySlave=true\n"),
            "{}",
            files[1].1
        );
        assert!(files[2].1.ends_with("Bond=bond0\n"));
        assert_eq!(
            files[3].1,
            "# Written by rollout-installer: the node's address.\n[Match]\nName=bond0\n\n[Network]\nAddress=10.44.0.20/24\nGateway=10.44.0.1\n"
        );
    }

    #[test]
    fn ifupdown_bond_with_vlan() {
        let link = LinkPlan {
            bond: bond(BondMode::Lacp),
            vlan: Some(100),
        };
        assert_eq!(
            interfaces(&nics(), "eth0", M1, &NetworkPlan::Dhcp, &link).unwrap(),
            "# Written by rollout-installer.\nsource /etc/network/interfaces.d/*\n\nauto lo\niface lo inet loopback\n\n\
             auto bond0\niface bond0 inet manual\n    bond-slaves eth0 eth1\n    bond-mode 802.3ad\n    bond-miimon 100\n    hwaddress ether 52:54:00:00:00:01\n\n\
             auto bond0.100\niface bond0.100 inet dhcp\n"
        );
    }

    #[test]
    fn ifupdown_bond_alone_and_vlan_alone() {
        let ab = LinkPlan {
            bond: bond(BondMode::ActiveBackup),
            vlan: None,
        };
        assert_eq!(
            interfaces(&nics(), "eth0", M1, &NetworkPlan::Dhcp, &ab).unwrap(),
            "# Written by rollout-installer.\nsource /etc/network/interfaces.d/*\n\nauto lo\niface lo inet loopback\n\n\
             auto bond0\niface bond0 inet dhcp\n    bond-slaves eth0 eth1\n    bond-mode active-backup\n    bond-miimon 100\n    hwaddress ether 52:54:00:00:00:01\n    bond-primary eth0\n"
        );
        let vlan = LinkPlan {
            bond: None,
            vlan: Some(100),
        };
        assert_eq!(
            interfaces(&nics(), "eth0", M1, &NetworkPlan::Dhcp, &vlan).unwrap(),
            "# Written by rollout-installer.\nsource /etc/network/interfaces.d/*\n\nauto lo\niface lo inet loopback\n\n\
             auto eth0\niface eth0 inet manual\n\nauto eth0.100\niface eth0.100 inet dhcp\n"
        );
    }

    #[test]
    fn a_bond_member_the_installer_never_saw_is_named() {
        let link = LinkPlan {
            bond: bond(BondMode::Lacp),
            vlan: None,
        };
        let only_one = vec![("eth0".to_string(), M1.to_string())];
        let e = interfaces(&only_one, "eth0", M1, &NetworkPlan::Dhcp, &link).unwrap_err();
        assert_eq!(e, RenderError::NoNic(M2.into()));
        assert!(e.to_string().contains("52:54:00:00:00:02"), "{e}");
    }

    /// Through the configure step: a systemd image gets the netdev files, an
    /// ifupdown one the interfaces file under the installer's kernel names.
    #[test]
    fn the_configure_step_writes_them_per_image() {
        let link = LinkPlan {
            bond: bond(BondMode::Lacp),
            vlan: Some(100),
        };
        let mut plan = crate::testutil::plan();
        plan.mac = M1.into();
        plan.link = link.clone();
        for systemd in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let t = dir.path();
            if systemd {
                for f in [
                    "usr/lib/systemd/systemd",
                    "usr/lib/systemd/systemd-networkd",
                    "usr/lib/systemd/system/systemd-networkd.service",
                ] {
                    std::fs::create_dir_all(t.join(f).parent().unwrap()).unwrap();
                    std::fs::write(t.join(f), "x").unwrap();
                }
            }
            let exe = t.join("exe");
            std::fs::write(&exe, "b").unwrap();
            let facts = crate::configure::NodeFacts {
                plan: &plan,
                fstab: vec![],
                mdadm_conf: None,
                iface: "bond0.100".into(),
                nics: nics(),
                installer_exe: exe,
                identity: None,
            };
            let notes = crate::configure::apply(t, &facts).unwrap();
            let read =
                |p: &str| std::fs::read_to_string(t.join(p.trim_start_matches('/'))).unwrap();
            if systemd {
                for (path, text) in networkd_files(M1, &NetworkPlan::Dhcp, &link).unwrap() {
                    assert_eq!(read(&path), text, "{path}");
                }
            } else {
                assert_eq!(
                    read("/etc/network/interfaces"),
                    interfaces(&nics(), "eth0", M1, &NetworkPlan::Dhcp, &link).unwrap()
                );
                assert!(
                    notes.iter().any(|n| n
                        == "network: /etc/network/interfaces with eth0 (bond 802.3ad, vlan 100)"),
                    "{notes:?}"
                );
            }
        }
    }
}
