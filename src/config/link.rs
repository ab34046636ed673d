//! A `[[node]]`'s link layer: `vlan = 100` and/or
//! `bond = { mode = "802.3ad", interfaces = ["MAC", "MAC"] }`. Checked here,
//! turned into the [`LinkPlan`] the installer gets by [`NodeConfig::link`].

use super::{invalid, normalize_mac, ConfigError, NodeConfig};
use crate::wire::{BondMode, BondPlan, LinkPlan, VLAN_IDS};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BondConfig {
    /// `802.3ad` (LACP) or `active-backup`. A string here, not the enum, so a
    /// wrong mode is refused naming the key rather than as a TOML type error.
    pub mode: String,
    /// The members' MACs; the node's own `mac` (the NIC it PXE-boots from)
    /// among them.
    pub interfaces: Vec<String>,
}

pub(super) fn validate(key: &str, mac: &str, node: &NodeConfig) -> Result<(), ConfigError> {
    if let Some(id) = node.vlan {
        if !VLAN_IDS.contains(&id) {
            return Err(invalid(
                &format!("{key}.vlan"),
                format!("{id} is not a VLAN id"),
                "use an 802.1Q id from 1 to 4094, or remove the key for an untagged network",
            ));
        }
    }
    let Some(bond) = &node.bond else {
        return Ok(());
    };
    if BondMode::parse(&bond.mode).is_none() {
        return Err(invalid(
            &format!("{key}.bond.mode"),
            format!("{:?} is not a bond mode rollout sets up", bond.mode),
            "use \"802.3ad\" (LACP; the switch ports form a LAG) or \"active-backup\"",
        ));
    }
    if bond.interfaces.is_empty() {
        return Err(invalid(
            &format!("{key}.bond.interfaces"),
            "is empty",
            "list the MACs of the NICs to bond, the node's own mac among them",
        ));
    }
    let mut members = vec![];
    for (j, m) in bond.interfaces.iter().enumerate() {
        let Some(n) = normalize_mac(m) else {
            return Err(invalid(
                &format!("{key}.bond.interfaces[{j}]"),
                format!("{m:?} is not a MAC address"),
                "write it as six hex pairs, e.g. 52:54:00:12:34:56",
            ));
        };
        if members.contains(&n) {
            return Err(invalid(
                &format!("{key}.bond.interfaces[{j}]"),
                format!("{n} is listed twice"),
                "list each NIC once",
            ));
        }
        members.push(n);
    }
    if !members.iter().any(|m| m == mac) {
        return Err(invalid(
            &format!("{key}.bond.interfaces"),
            format!("does not include the node's mac {mac}"),
            "add the NIC the node PXE-boots from: the bond takes its MAC, so the node keeps its DHCP reservation",
        ));
    }
    Ok(())
}

impl NodeConfig {
    /// The node's bond and VLAN as the plan and the install script carry them
    /// (after [`validate`]: a wrong value here was refused at load).
    pub fn link(&self) -> LinkPlan {
        LinkPlan {
            bond: self.bond.as_ref().and_then(|b| {
                Some(BondPlan {
                    mode: BondMode::parse(&b.mode)?,
                    interfaces: b
                        .interfaces
                        .iter()
                        .filter_map(|m| normalize_mac(m))
                        .collect(),
                })
            }),
            vlan: self.vlan,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::wire::BondMode;

    fn parse(node_extra: &str) -> Result<Config, String> {
        Config::parse(&format!(
            "state_dir = \"/s\"\n[[node]]\nmac = \"52:54:00:aa:00:01\"\nhostname = \"n1\"\n{node_extra}\n"
        ))
        .map_err(|e| e.to_string())
    }

    #[test]
    fn vlan_and_bond_reach_the_link() {
        let c = parse(
            "vlan = 100\nbond = { mode = \"802.3ad\", interfaces = [\"52:54:00:AA:00:01\", \"52-54-00-aa-00-02\"] }",
        )
        .unwrap();
        let link = c.nodes[0].link();
        assert_eq!(link.vlan, Some(100));
        let bond = link.bond.unwrap();
        assert_eq!(bond.mode, BondMode::Lacp);
        assert_eq!(bond.interfaces, ["52:54:00:aa:00:01", "52:54:00:aa:00:02"]);
        let plain = parse("").unwrap();
        assert!(plain.nodes[0].link().is_plain());
        let ab = parse("bond = { mode = \"active-backup\", interfaces = [\"52:54:00:aa:00:01\"] }")
            .unwrap();
        assert_eq!(
            ab.nodes[0].link().bond.unwrap().mode,
            BondMode::ActiveBackup
        );
    }

    #[test]
    fn wrong_values_are_refused_naming_the_key() {
        for (extra, needle) in [
            ("vlan = 0", "config key `node[0].vlan`: 0 is not a VLAN id; use an 802.1Q id from 1 to 4094"),
            ("vlan = 4095", "`node[0].vlan`: 4095 is not a VLAN id"),
            (
                "bond = { mode = \"balance-rr\", interfaces = [\"52:54:00:aa:00:01\"] }",
                "`node[0].bond.mode`: \"balance-rr\" is not a bond mode rollout sets up; use \"802.3ad\"",
            ),
            (
                "bond = { mode = \"802.3ad\", interfaces = [] }",
                "`node[0].bond.interfaces`: is empty",
            ),
            (
                "bond = { mode = \"802.3ad\", interfaces = [\"52:54:00:aa:00:01\", \"zz\"] }",
                "`node[0].bond.interfaces[1]`: \"zz\" is not a MAC address",
            ),
            (
                "bond = { mode = \"802.3ad\", interfaces = [\"52:54:00:aa:00:01\", \"52:54:00:AA:00:01\"] }",
                "`node[0].bond.interfaces[1]`: 52:54:00:aa:00:01 is listed twice",
            ),
            (
                "bond = { mode = \"802.3ad\", interfaces = [\"52:54:00:aa:00:02\"] }",
                "`node[0].bond.interfaces`: does not include the node's mac 52:54:00:aa:00:01",
            ),
        ] {
            let e = parse(extra).unwrap_err();
            assert!(e.contains(needle), "{extra}: {e}");
        }
        // A negative or huge number is not even a u16: TOML's own error names the key.
        let e = parse("vlan = 70000").unwrap_err();
        assert!(e.contains("vlan"), "{e}");
    }
}
