//! Who may have a node's install plan. Pure: the HTTP handler gathers the facts
//! (the peer address, rollout's lease for that address, the node's reservation
//! and boot secret) and asks [`authorize`].
//!
//! A plan starts an install (a new id, token and credentials), so handing it to
//! a stranger lets the stranger hijack the install and read the image. The plan
//! goes only to a requester that
//! - holds the node's address from rollout: a bound lease of this MAC, or its
//!   reservation, checked only where rollout's DHCP hands out the addresses
//!   (`dhcp.mode = "full"`), since only then does rollout know who holds which;
//! - or presents the node's one-time boot secret (see
//!   [`crate::inventory::secrets`]): the proof where rollout hands out no address
//!   (proxy mode, DHCP off, an address another server leased).
//!
//! An address rollout leased to another MAC never gets the plan, secret or not.
//! A boot secret does not take over an install that is still reporting
//! ([`secret_may_restart`]): the node that rebooted mid-install is quiet by the
//! time it asks again (its installer retries the 409), a stranger that faked a
//! PXE boot for a node in the middle of its install is not.
//! What the secret cannot prove: `/boot.ipxe` answers anyone who asks for a MAC
//! (that is how iPXE gets it), so on a network where rollout does not hand out
//! addresses, a machine that fakes the node's PXE boot for a node set to install
//! can take that install; that is the same trust as the node's MAC itself.

use crate::dhcp::leases::{Lease, LeaseState};
use std::net::{IpAddr, Ipv4Addr};

/// What the handler knows about the request.
#[derive(Debug, Clone)]
pub struct PlanRequestFacts<'a> {
    /// The node the plan is for (normalized MAC).
    pub mac: &'a str,
    /// The TCP peer of the request.
    pub peer: IpAddr,
    /// Whether rollout's DHCP hands out the addresses here (full mode).
    pub rollout_leases: bool,
    /// rollout's lease of the peer's address, if it has one.
    pub lease_at_peer: Option<&'a Lease>,
    /// The node's reserved address (`[[node]] ip`).
    pub reservation: Option<Ipv4Addr>,
    /// The boot secret the request presented.
    pub presented_secret: Option<&'a str>,
    /// The hash of the node's outstanding boot secret.
    pub stored_secret: Option<&'a str>,
    pub now: u64,
}

/// Why the plan is handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granted {
    Lease,
    Reservation,
    /// The boot secret is consumed by this grant.
    BootSecret,
}

fn v4(ip: IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(a) => a.to_ipv4_mapped(),
    }
}

/// The decision, or why not (a message for the 403 that says what to do).
pub fn authorize(f: &PlanRequestFacts) -> Result<Granted, String> {
    let peer = v4(f.peer);
    let active = f
        .lease_at_peer
        .filter(|l| l.state == LeaseState::Bound && l.expires > f.now && Some(l.ip) == peer);
    if let Some(l) = active {
        if l.mac != f.mac {
            return Err(format!(
                "{} is leased to {}, not to {}: only the node itself gets its plan",
                l.ip, l.mac, f.mac
            ));
        }
        if f.rollout_leases {
            return Ok(Granted::Lease);
        }
    }
    if f.rollout_leases && peer.is_some() && f.reservation == peer {
        return Ok(Granted::Reservation);
    }
    match (f.presented_secret, f.stored_secret) {
        (Some(s), stored) if crate::inventory::secrets::matches(stored, s) => {
            Ok(Granted::BootSecret)
        }
        (Some(_), None) => Err(format!(
            "the boot secret for {} was already used or never issued; PXE-boot the node again for a new one",
            f.mac
        )),
        (Some(_), Some(_)) => Err(format!(
            "wrong boot secret for {}; only the iPXE script rollout served to the node has it (PXE-boot the node again)",
            f.mac
        )),
        (None, _) => Err(format!(
            "{} neither holds the address rollout leased or reserved for {} nor presents its boot secret ({}=… on the installer's kernel command line); boot the node through rollout's iPXE script",
            f.peer,
            f.mac,
            crate::wire::cmdline::BOOT_SECRET
        )),
    }
}

/// How long an install must have been silent before a boot secret may start a
/// new one over it: a minute, or the install timeout when that is shorter.
pub fn quiet_secs(install_timeout: u64) -> u64 {
    install_timeout.min(60)
}

/// Whether a plan granted by a boot secret may replace the node's current
/// install: not while that install reported within `quiet` seconds (409, the
/// installer asks again; the secret is not spent).
pub fn secret_may_restart(
    state: crate::inventory::NodeState,
    last_report: u64,
    now: u64,
    quiet: u64,
) -> Result<(), String> {
    let silent = now.saturating_sub(last_report);
    if state == crate::inventory::NodeState::Installing && silent < quiet {
        return Err(format!(
            "an install of this node reported {silent} s ago; a new one may start over it after {quiet} s of silence (the installer asks again)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::secrets::hash;

    #[test]
    fn a_secret_does_not_take_over_a_live_install() {
        use crate::inventory::NodeState as S;
        assert_eq!(quiet_secs(1800), 60);
        assert_eq!(quiet_secs(5), 5);
        let e = secret_may_restart(S::Installing, 1000, 1010, 60).unwrap_err();
        assert!(e.contains("reported 10 s ago"), "{e}");
        assert!(secret_may_restart(S::Installing, 1000, 1060, 60).is_ok());
        for s in [S::Pending, S::Failed, S::Discovered] {
            assert!(secret_may_restart(s, 1000, 1001, 60).is_ok(), "{s:?}");
        }
    }

    const MAC: &str = "52:54:00:00:00:01";

    fn lease(ip: &str, mac: &str, state: LeaseState, expires: u64) -> Lease {
        Lease {
            ip: ip.parse().unwrap(),
            mac: mac.into(),
            expires,
            state,
        }
    }

    fn facts<'a>(peer: &str) -> PlanRequestFacts<'a> {
        PlanRequestFacts {
            mac: MAC,
            peer: peer.parse().unwrap(),
            rollout_leases: true,
            lease_at_peer: None,
            reservation: None,
            presented_secret: None,
            stored_secret: None,
            now: 1000,
        }
    }

    #[test]
    fn the_lease_holder_gets_its_plan_and_nobody_else() {
        let own = lease("10.44.0.100", MAC, LeaseState::Bound, 2000);
        let f = PlanRequestFacts {
            lease_at_peer: Some(&own),
            ..facts("10.44.0.100")
        };
        assert_eq!(authorize(&f), Ok(Granted::Lease));
        // Mapped IPv6 peers are the same address.
        let f = PlanRequestFacts {
            lease_at_peer: Some(&own),
            ..facts("::ffff:10.44.0.100")
        };
        assert_eq!(authorize(&f), Ok(Granted::Lease));
        for (l, why) in [
            (lease("10.44.0.100", MAC, LeaseState::Bound, 999), "expired"),
            (
                lease("10.44.0.100", MAC, LeaseState::Released, 2000),
                "released",
            ),
            (
                lease("10.44.0.100", MAC, LeaseState::Offered, 2000),
                "only offered",
            ),
        ] {
            let f = PlanRequestFacts {
                lease_at_peer: Some(&l),
                ..facts("10.44.0.100")
            };
            assert!(authorize(&f).is_err(), "{why}");
        }
        let e = authorize(&facts("10.44.0.77")).unwrap_err();
        assert!(e.contains("rollout.boot_secret"), "{e}");
    }

    #[test]
    fn reservations_count_only_where_rollout_hands_out_addresses() {
        let mut f = facts("10.44.0.11");
        f.reservation = Some("10.44.0.11".parse().unwrap());
        assert_eq!(authorize(&f), Ok(Granted::Reservation));
        f.rollout_leases = false;
        assert!(
            authorize(&f).is_err(),
            "proxy mode: the site DHCP server decides"
        );
        // Someone else holding the reserved address from rollout's pool is refused.
        let other = lease("10.44.0.11", "aa:bb:cc:00:00:01", LeaseState::Bound, 2000);
        let f = PlanRequestFacts {
            lease_at_peer: Some(&other),
            reservation: Some("10.44.0.11".parse().unwrap()),
            ..facts("10.44.0.11")
        };
        let e = authorize(&f).unwrap_err();
        assert!(e.contains("leased to aa:bb:cc:00:00:01"), "{e}");
    }

    #[test]
    fn the_boot_secret_works_where_rollout_leases_nothing() {
        let stored = hash("s3cret");
        let mut f = facts("192.168.7.9");
        f.rollout_leases = false;
        f.stored_secret = Some(&stored);
        f.presented_secret = Some("s3cret");
        assert_eq!(authorize(&f), Ok(Granted::BootSecret));
        f.presented_secret = Some("guess");
        assert!(authorize(&f).unwrap_err().contains("wrong boot secret"));
        f.presented_secret = Some("s3cret");
        f.stored_secret = None;
        assert!(authorize(&f).unwrap_err().contains("already used"));
        // Not from an address rollout leased to another machine.
        let other = lease("192.168.7.9", "aa:bb:cc:00:00:01", LeaseState::Bound, 2000);
        f.stored_secret = Some(&stored);
        f.lease_at_peer = Some(&other);
        assert!(authorize(&f).is_err());
    }
}
