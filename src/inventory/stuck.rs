//! Installers that never reach the server. A node whose installer lacks its NIC
//! driver (or sits on a VLAN it cannot see) boots the installer, fails at
//! `pick_nic` or `dhcp`, reboots, and asks for its install script again, never
//! having said a word: the server only sees install scripts served and no plan
//! fetched. Counting those boots makes the loop visible on the dashboard, in the
//! API and in `rollout watch`. Pure; `Inventory` stores the result.

use serde::{Deserialize, Serialize};

/// Install scripts served to a node since its installer last fetched a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UnreportedBoots {
    pub count: u32,
    /// When the first of them was served (unix seconds).
    pub since: u64,
}

/// The node shows as stuck once this many installer boots never reached the
/// server: at the third script served, two earlier installers are known to
/// have died silently (the running one may still get through).
pub const STUCK_AT: u32 = 3;

/// An install script was served at `now`.
pub fn script_served(prev: Option<UnreportedBoots>, now: u64) -> UnreportedBoots {
    match prev {
        Some(p) => UnreportedBoots {
            count: p.count.saturating_add(1),
            since: p.since,
        },
        None => UnreportedBoots {
            count: 1,
            since: now,
        },
    }
}

/// What the node list says, or `None` while the node is not stuck.
pub fn message(boots: Option<UnreportedBoots>, now: u64) -> Option<String> {
    let b = boots.filter(|b| b.count >= STUCK_AT)?;
    let since = crate::clock::rfc3339(b.since);
    let today = crate::clock::rfc3339(now);
    // "10:02 UTC" on the same day, the date too otherwise.
    let when = if since.get(..10) == today.get(..10) {
        format!("{} UTC", &since[11..16])
    } else {
        format!("{} {} UTC", &since[..10], &since[11..16])
    };
    Some(format!(
        "installer booted {}× since {when}, never reached the server: check its NIC driver",
        b.count
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-12-02 10:02:33 UTC.
    const T: u64 = 1_796_205_753;

    #[test]
    fn counts_from_the_first_unreported_boot() {
        let b = script_served(None, T);
        assert_eq!(b, UnreportedBoots { count: 1, since: T });
        let b = script_served(Some(b), T + 120);
        let b = script_served(Some(b), T + 240);
        assert_eq!(b, UnreportedBoots { count: 3, since: T });
    }

    #[test]
    fn stuck_from_the_third_boot_with_when_it_started() {
        let b1 = script_served(None, T);
        let b2 = script_served(Some(b1), T + 120);
        assert_eq!(message(Some(b1), T), None);
        assert_eq!(
            message(Some(b2), T + 120),
            None,
            "one silent boot is not yet a pattern"
        );
        let b3 = script_served(Some(b2), T + 240);
        assert_eq!(
            message(Some(b3), T + 240).as_deref(),
            Some("installer booted 3× since 10:02 UTC, never reached the server: check its NIC driver")
        );
        assert_eq!(
            message(Some(b3), T + 86_400).as_deref(),
            Some("installer booted 3× since 2026-12-02 10:02 UTC, never reached the server: check its NIC driver")
        );
        assert_eq!(message(None, T), None);
    }
}
