//! The policies `[install]` names, and the rule that ties one to the DHCP mode.

use super::{invalid, ConfigError, DhcpMode};
use serde::{Deserialize, Serialize};

/// `[install] unknown`: what rollout does with machines that PXE-boot undeclared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownPolicy {
    /// Listed as discovered and left alone (they boot their next device).
    Ignore,
    /// Listed as discovered; installed once an operator approves them.
    Approve,
    /// Installed right away with the default image under a generated hostname.
    Install,
}

impl UnknownPolicy {
    /// The one default, for the config file and everything that starts without one:
    /// strangers are listed and wait for an operator (`rollout discovered approve
    /// MAC`). A provisioning network is rarely private, and "install" would
    /// repartition any machine that happens to network-boot there.
    pub const DEFAULT: UnknownPolicy = UnknownPolicy::Approve;
}

impl Default for UnknownPolicy {
    fn default() -> Self {
        UnknownPolicy::DEFAULT
    }
}

/// `[install] on_failure`: what a failed node does on its next boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RetryPolicy {
    /// Install again.
    #[default]
    Retry,
    /// Stay failed until an operator requests a reinstall.
    Hold,
}

/// Proxy mode is for LANs where another server hands out addresses, so every
/// machine there that network-boots (a desk PC whose BIOS tries PXE first, a
/// colleague's server) gets rollout's boot offer: with "install" it would be
/// repartitioned. That policy is accepted there only when the file says so;
/// `default` is what applies when it does not (a parameter, so the rule is tested
/// even while the default is safe).
pub(super) fn check_unknown_policy(
    mode: DhcpMode,
    written: Option<UnknownPolicy>,
    default: UnknownPolicy,
) -> Result<(), ConfigError> {
    if mode == DhcpMode::Proxy && written.is_none() && default == UnknownPolicy::Install {
        return Err(invalid(
            "install.unknown",
            "is not set and would default to \"install\" in proxy mode: on a shared LAN every machine that network-boots gets rollout's offer, and \"install\" repartitions its disk",
            "set install.unknown = \"approve\" (strangers wait for `rollout discovered approve MAC`), or write unknown = \"install\" explicitly if every machine on this LAN may be wiped",
        ));
    }
    Ok(())
}
