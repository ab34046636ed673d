//! A node's link layer: an optional bond of named NICs and an optional 802.1Q
//! VLAN on top (of the bond, or of the boot NIC). The same value reaches the
//! installer twice: on its kernel command line (`rollout.vlan=`, `rollout.bond=`),
//! so it is on the right network before it asks for its plan, and in the plan
//! ([`super::InstallPlan::link`]), which the installed OS's network files are
//! rendered from. [`LinkPlan::cmdline_args`] and [`LinkPlan::from_cmdline`] are
//! the one encoding of the first.

use serde::{Deserialize, Serialize};

/// How a bond spreads traffic over its members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub enum BondMode {
    /// IEEE 802.3ad dynamic link aggregation (LACP): the switch ports form a LAG.
    #[serde(rename = "802.3ad")]
    Lacp,
    /// One member carries traffic, another takes over when its link drops; no
    /// switch configuration needed.
    #[serde(rename = "active-backup")]
    ActiveBackup,
}

impl BondMode {
    pub const ALL: [BondMode; 2] = [BondMode::Lacp, BondMode::ActiveBackup];

    /// The kernel's (and systemd-networkd's, and ifenslave's) name of the mode.
    pub fn as_str(self) -> &'static str {
        match self {
            BondMode::Lacp => "802.3ad",
            BondMode::ActiveBackup => "active-backup",
        }
    }

    pub fn parse(s: &str) -> Option<BondMode> {
        BondMode::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

/// A bond of the NICs with these MACs (lower-case colon form). The bond takes
/// the boot NIC's MAC, so DHCP reservations and leases keep working.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct BondPlan {
    pub mode: BondMode,
    pub interfaces: Vec<String>,
}

/// The node's link layer; the default (no bond, no VLAN) is the boot NIC itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct LinkPlan {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bond: Option<BondPlan>,
    /// 802.1Q VLAN id, 1..=4094.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
}

/// Kernel device name of the bond the installer and the installed OS create.
pub const BOND_NAME: &str = "bond0";

/// The valid VLAN ids (0 and 4095 are reserved by 802.1Q).
pub const VLAN_IDS: std::ops::RangeInclusive<u16> = 1..=4094;

impl LinkPlan {
    /// The boot NIC as it is: nothing to create.
    pub fn is_plain(&self) -> bool {
        self.bond.is_none() && self.vlan.is_none()
    }

    /// The words appended to the installer's kernel command line, e.g.
    /// `rollout.bond=802.3ad,52:54:00:00:00:01,52:54:00:00:00:02 rollout.vlan=100`
    /// (empty for a plain link).
    pub fn cmdline_args(&self) -> String {
        let mut words = vec![];
        if let Some(b) = &self.bond {
            let mut v = vec![b.mode.as_str().to_string()];
            v.extend(b.interfaces.iter().cloned());
            words.push(format!("{}={}", super::cmdline::BOND, v.join(",")));
        }
        if let Some(id) = self.vlan {
            words.push(format!("{}={id}", super::cmdline::VLAN));
        }
        words.join(" ")
    }

    /// Reads back the values of `rollout.bond=` and `rollout.vlan=` (each `None`
    /// when the command line lacks it). MACs are normalized.
    pub fn from_cmdline(bond: Option<&str>, vlan: Option<&str>) -> Result<LinkPlan, String> {
        let vlan = match vlan {
            None => None,
            Some(v) => match v.parse::<u16>() {
                Ok(id) if VLAN_IDS.contains(&id) => Some(id),
                _ => {
                    return Err(format!(
                        "{}={v:?}: expected a VLAN id from 1 to 4094",
                        super::cmdline::VLAN
                    ))
                }
            },
        };
        let bond = match bond {
            None => None,
            Some(v) => {
                let mut parts = v.split(',');
                let mode = parts.next().unwrap_or("");
                let mode = BondMode::parse(mode).ok_or_else(|| {
                    format!(
                        "{}={v:?}: unknown bond mode {mode:?} (known: 802.3ad, active-backup)",
                        super::cmdline::BOND
                    )
                })?;
                let interfaces = parts
                    .map(|m| {
                        crate::mac::normalize(m).ok_or_else(|| {
                            format!("{}={v:?}: {m:?} is not a MAC address", super::cmdline::BOND)
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                if interfaces.is_empty() {
                    return Err(format!(
                        "{}={v:?}: names no interface (MODE,MAC[,MAC…])",
                        super::cmdline::BOND
                    ));
                }
                Some(BondPlan { mode, interfaces })
            }
        };
        Ok(LinkPlan { bond, vlan })
    }

    /// The name of the VLAN device on `parent` (the kernel's default naming,
    /// `PARENT.ID`), or `None` without a VLAN.
    pub fn vlan_name(&self, parent: &str) -> Option<String> {
        self.vlan.map(|id| format!("{parent}.{id}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both() -> LinkPlan {
        LinkPlan {
            bond: Some(BondPlan {
                mode: BondMode::Lacp,
                interfaces: vec!["52:54:00:00:00:01".into(), "52:54:00:00:00:02".into()],
            }),
            vlan: Some(100),
        }
    }

    #[test]
    fn the_command_line_round_trips() {
        let l = both();
        let args = l.cmdline_args();
        assert_eq!(
            args,
            "rollout.bond=802.3ad,52:54:00:00:00:01,52:54:00:00:00:02 rollout.vlan=100"
        );
        assert_eq!(
            LinkPlan::from_cmdline(
                Some("802.3ad,52-54-00-00-00-01,52:54:00:00:00:02"),
                Some("100")
            ),
            Ok(l)
        );
        assert_eq!(LinkPlan::default().cmdline_args(), "");
        assert_eq!(LinkPlan::from_cmdline(None, None), Ok(LinkPlan::default()));
        let ab = LinkPlan::from_cmdline(Some("active-backup,52:54:00:00:00:09"), None).unwrap();
        assert_eq!(ab.bond.unwrap().mode, BondMode::ActiveBackup);
    }

    #[test]
    fn bad_command_line_values_are_named() {
        for (bond, vlan, needle) in [
            (None, Some("0"), "1 to 4094"),
            (None, Some("4095"), "1 to 4094"),
            (None, Some("x"), "1 to 4094"),
            (
                Some("balance-rr,52:54:00:00:00:01"),
                None,
                "unknown bond mode",
            ),
            (Some("802.3ad"), None, "names no interface"),
            (Some("802.3ad,zz"), None, "not a MAC"),
        ] {
            let e = LinkPlan::from_cmdline(bond, vlan).unwrap_err();
            assert!(e.contains(needle), "{e}");
        }
    }

    #[test]
    fn plan_json_names_the_mode_as_the_kernel_does() {
        let json = serde_json::to_value(both()).unwrap();
        assert_eq!(json["bond"]["mode"], "802.3ad");
        assert_eq!(json["vlan"], 100);
        assert_eq!(
            serde_json::to_value(LinkPlan::default()).unwrap(),
            serde_json::json!({})
        );
    }
}
