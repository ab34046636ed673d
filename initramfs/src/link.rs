//! The installer's own bond and VLAN (`rollout.bond=`, `rollout.vlan=`): made
//! before DHCP, so the installer reaches the server the way the installed OS
//! will. The bond through the bonding driver's sysfs files
//! (`/sys/class/net/bonding_masters`), the VLAN through the 8021q ioctl
//! (`SIOCSIFVLAN`, what vconfig used): no `ip` binary and no netlink library in
//! the initramfs. [`actions`] decides what to do (pure, tested); [`apply`] does it.

use rollout::wire::{BondMode, LinkPlan, BOND_NAME};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LinkError {
    #[error("bond member {mac} is not a NIC of this machine (present: {present}); fix the node's bond.interfaces or load its driver")]
    NoMember { mac: String, present: String },
    #[error("{what}: {why}")]
    Failed { what: String, why: String },
}

/// One thing to do to the kernel's interfaces, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create the bond (unless the bonding driver made it at load) in `mode`.
    CreateBond {
        name: String,
        mode: BondMode,
    },
    /// Take `iface` down (the driver enslaves only interfaces that are down).
    Down(String),
    Enslave {
        bond: String,
        iface: String,
    },
    /// The active-backup bond prefers this member.
    Primary {
        bond: String,
        iface: String,
    },
    Up(String),
    /// 802.1Q device `PARENT.ID` on `parent`.
    AddVlan {
        parent: String,
        id: u16,
    },
}

/// What to do for `link`, given the boot NIC (`boot_iface`, `boot_mac`) and the
/// machine's (name, MAC) pairs; and the interface DHCP then runs on. The boot
/// NIC is enslaved first: a bond takes its first member's MAC, so the bond (and
/// a VLAN on it) keeps the node's MAC and with it its DHCP reservation.
pub fn actions(
    link: &LinkPlan,
    boot_iface: &str,
    boot_mac: &str,
    nics: &[(String, String)],
) -> Result<(Vec<Action>, String), LinkError> {
    let mut out = vec![];
    let mut top = boot_iface.to_string();
    if let Some(bond) = &link.bond {
        let mut members = vec![boot_iface.to_string()];
        for mac in bond.interfaces.iter().filter(|m| *m != boot_mac) {
            let name = crate::net::find_by_mac(nics, mac).ok_or_else(|| LinkError::NoMember {
                mac: mac.clone(),
                present: nics
                    .iter()
                    .map(|(n, m)| format!("{n} {m}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
            members.push(name);
        }
        out.push(Action::CreateBond {
            name: BOND_NAME.into(),
            mode: bond.mode,
        });
        for m in &members {
            out.push(Action::Down(m.clone()));
            out.push(Action::Enslave {
                bond: BOND_NAME.into(),
                iface: m.clone(),
            });
        }
        if bond.mode == BondMode::ActiveBackup {
            out.push(Action::Primary {
                bond: BOND_NAME.into(),
                iface: boot_iface.into(),
            });
        }
        out.push(Action::Up(BOND_NAME.into()));
        top = BOND_NAME.into();
    }
    if let Some(id) = link.vlan {
        out.push(Action::AddVlan {
            parent: top.clone(),
            id,
        });
        top = link.vlan_name(&top).unwrap_or(top);
        out.push(Action::Up(top.clone()));
    }
    Ok((out, top))
}

fn failed(what: impl Into<String>, why: impl std::fmt::Display) -> LinkError {
    LinkError::Failed {
        what: what.into(),
        why: why.to_string(),
    }
}

fn write(path: PathBuf, value: &str) -> Result<(), LinkError> {
    std::fs::write(&path, value)
        .map_err(|e| failed(format!("writing {value:?} to {}", path.display()), e))
}

/// Runs `actions` against the kernel, `sys_class_net` being `/sys/class/net`.
pub fn apply(actions: &[Action], sys_class_net: &Path) -> Result<(), LinkError> {
    for a in actions {
        match a {
            Action::CreateBond { name, mode } => {
                let masters = sys_class_net.join("bonding_masters");
                if !masters.exists() {
                    return Err(failed(
                        format!("creating bond {name}"),
                        format!("{} is missing: the bonding driver is not loaded (is it among the initramfs modules?)", masters.display()),
                    ));
                }
                // Loading the driver makes bond0 already (max_bonds=1).
                if !sys_class_net.join(name).exists() {
                    write(masters, &format!("+{name}"))?;
                }
                // The mode can only change while the bond is down and empty.
                set_flags(name, false)?;
                write(sys_class_net.join(name).join("bonding/mode"), mode.as_str())?;
                write(sys_class_net.join(name).join("bonding/miimon"), "100")?;
            }
            Action::Down(iface) => set_flags(iface, false)?,
            Action::Up(iface) => set_flags(iface, true)?,
            // Already its member (a second bring-up): the driver would refuse.
            Action::Enslave { bond, iface }
                if std::fs::read_link(sys_class_net.join(iface).join("master"))
                    .is_ok_and(|m| m.file_name() == Some(std::ffi::OsStr::new(bond))) => {}
            Action::Enslave { bond, iface } => write(
                sys_class_net.join(bond).join("bonding/slaves"),
                &format!("+{iface}"),
            )?,
            Action::Primary { bond, iface } => {
                write(sys_class_net.join(bond).join("bonding/primary"), iface)?
            }
            Action::AddVlan { parent, id } => add_vlan(parent, *id)?,
        }
    }
    Ok(())
}

fn set_flags(iface: &str, up: bool) -> Result<(), LinkError> {
    let r = if up {
        crate::net::set_up(iface)
    } else {
        crate::net::set_down(iface)
    };
    r.map_err(|e| {
        failed(
            format!("{} {iface}", if up { "bringing up" } else { "taking down" }),
            e,
        )
    })
}

// struct vlan_ioctl_args from <linux/if_vlan.h>.
#[repr(C)]
struct VlanIoctlArgs {
    cmd: libc::c_int,
    device1: [u8; 24],
    // union { char device2[24]; int VID; … }
    u: [u8; 24],
    vlan_qos: libc::c_short,
}

const SIOCSIFVLAN: libc::c_ulong = 0x8983;
const ADD_VLAN_CMD: libc::c_int = 0;

fn add_vlan(parent: &str, id: u16) -> Result<(), LinkError> {
    let what = || format!("adding VLAN {id} on {parent}");
    let mut args = VlanIoctlArgs {
        cmd: ADD_VLAN_CMD,
        device1: [0; 24],
        u: [0; 24],
        vlan_qos: 0,
    };
    let b = parent.as_bytes();
    args.device1[..b.len().min(23)].copy_from_slice(&b[..b.len().min(23)]);
    args.u[..4].copy_from_slice(&(id as libc::c_int).to_ne_bytes());
    let fd = crate::net::ctl_socket(parent).map_err(|e| failed(what(), e))?;
    // SAFETY: args is a vlan_ioctl_args as SIOCSIFVLAN expects.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), SIOCSIFVLAN as _, &mut args as *mut _) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        let hint = match e.raw_os_error() {
            Some(libc::ENOPKG) | Some(libc::ENOSYS) | Some(libc::EINVAL) => {
                " (is the 8021q module among the initramfs modules?)"
            }
            Some(libc::EEXIST) => return Ok(()),
            _ => "",
        };
        return Err(failed(what(), format!("{e}{hint}")));
    }
    Ok(())
}

/// Brings up `link` on top of the boot NIC and returns the interface to run
/// DHCP on, with a line for the console.
pub fn bring_up(
    link: &LinkPlan,
    boot_iface: &str,
    boot_mac: &str,
) -> Result<(String, String), LinkError> {
    let sys = Path::new("/sys/class/net");
    let nics = crate::net::physical_interfaces(sys);
    let (todo, top) = actions(link, boot_iface, boot_mac, &nics)?;
    apply(&todo, sys)?;
    let carrier = crate::net::wait_for_carrier(&top, std::time::Duration::from_secs(30));
    let mut what = vec![];
    if let Some(b) = &link.bond {
        what.push(format!(
            "bond {} ({}, {} members)",
            BOND_NAME,
            b.mode.as_str(),
            b.interfaces.len()
        ));
    }
    if let Some(id) = link.vlan {
        what.push(format!("VLAN {id}"));
    }
    Ok((
        top.clone(),
        format!(
            "{} up as {top}, carrier {}",
            what.join(" + "),
            if carrier { "yes" } else { "not yet" }
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollout::wire::BondPlan;

    fn nics() -> Vec<(String, String)> {
        vec![
            ("eth0".into(), "52:54:00:00:00:02".into()),
            ("eth1".into(), "52:54:00:00:00:01".into()),
            ("lo".into(), "00:00:00:00:00:00".into()),
        ]
    }

    #[test]
    fn a_bond_enslaves_the_boot_nic_first_then_carries_the_vlan() {
        let link = LinkPlan {
            bond: Some(BondPlan {
                mode: BondMode::ActiveBackup,
                interfaces: vec!["52:54:00:00:00:02".into(), "52:54:00:00:00:01".into()],
            }),
            vlan: Some(100),
        };
        let (todo, top) = actions(&link, "eth1", "52:54:00:00:00:01", &nics()).unwrap();
        assert_eq!(top, "bond0.100");
        let s = |x: &str| x.to_string();
        assert_eq!(
            todo,
            vec![
                Action::CreateBond {
                    name: s("bond0"),
                    mode: BondMode::ActiveBackup
                },
                Action::Down(s("eth1")),
                Action::Enslave {
                    bond: s("bond0"),
                    iface: s("eth1")
                },
                Action::Down(s("eth0")),
                Action::Enslave {
                    bond: s("bond0"),
                    iface: s("eth0")
                },
                Action::Primary {
                    bond: s("bond0"),
                    iface: s("eth1")
                },
                Action::Up(s("bond0")),
                Action::AddVlan {
                    parent: s("bond0"),
                    id: 100
                },
                Action::Up(s("bond0.100")),
            ]
        );
    }

    #[test]
    fn a_vlan_alone_sits_on_the_boot_nic_and_plain_does_nothing() {
        let link = LinkPlan {
            bond: None,
            vlan: Some(7),
        };
        let (todo, top) = actions(&link, "eth1", "52:54:00:00:00:01", &nics()).unwrap();
        assert_eq!(top, "eth1.7");
        assert_eq!(
            todo,
            vec![
                Action::AddVlan {
                    parent: "eth1".into(),
                    id: 7
                },
                Action::Up("eth1.7".into())
            ]
        );
        let (todo, top) =
            actions(&LinkPlan::default(), "eth1", "52:54:00:00:00:01", &nics()).unwrap();
        assert!(todo.is_empty());
        assert_eq!(top, "eth1");
    }

    #[test]
    fn a_missing_member_is_named_with_what_is_there() {
        let link = LinkPlan {
            bond: Some(BondPlan {
                mode: BondMode::Lacp,
                interfaces: vec!["52:54:00:00:00:01".into(), "52:54:00:00:00:09".into()],
            }),
            vlan: None,
        };
        let e = actions(&link, "eth1", "52:54:00:00:00:01", &nics()).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("52:54:00:00:00:09"), "{msg}");
        assert!(msg.contains("eth0 52:54:00:00:00:02"), "{msg}");
    }

    #[test]
    fn a_missing_bonding_driver_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let e = apply(
            &[Action::CreateBond {
                name: "bond0".into(),
                mode: BondMode::Lacp,
            }],
            dir.path(),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("bonding driver is not loaded"),
            "{e}"
        );
    }

    #[test]
    fn vlan_ioctl_args_match_the_kernel_layout() {
        // 4 + 24 + 24 + 2, padded to the int alignment.
        assert_eq!(std::mem::size_of::<VlanIoctlArgs>(), 56);
    }

    /// The sysfs writes, on a fake /sys/class/net: a member already in the
    /// bond is not enslaved again.
    #[test]
    fn enslaving_writes_the_bonding_files_once() {
        let dir = tempfile::tempdir().unwrap();
        let net = dir.path();
        std::fs::create_dir_all(net.join("bond0/bonding")).unwrap();
        std::fs::create_dir_all(net.join("eth1")).unwrap();
        std::os::unix::fs::symlink("../bond0", net.join("eth1/master")).unwrap();
        let s = |x: &str| x.to_string();
        apply(
            &[Action::Enslave {
                bond: s("bond0"),
                iface: s("eth1"),
            }],
            net,
        )
        .unwrap();
        assert!(!net.join("bond0/bonding/slaves").exists());
        apply(
            &[
                Action::Enslave {
                    bond: s("bond0"),
                    iface: s("eth2"),
                },
                Action::Primary {
                    bond: s("bond0"),
                    iface: s("eth2"),
                },
            ],
            net,
        )
        .unwrap();
        let read = |f: &str| std::fs::read_to_string(net.join(f)).unwrap();
        assert_eq!(read("bond0/bonding/slaves"), "+eth2");
        assert_eq!(read("bond0/bonding/primary"), "eth2");
    }
}
