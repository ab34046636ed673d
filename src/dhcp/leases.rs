//! The address pool and its leases. Pure bookkeeping: no sockets, no clock (callers
//! pass `now` in Unix seconds), and persistence goes through [`LeaseStore`] so a
//! lease is on disk before the ACK that grants it leaves the server.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// Offered, not yet requested. Held briefly so two clients are not offered one address.
    Offered,
    Bound,
    /// Given back by the client; remembered so the same MAC gets the same address again.
    Released,
    /// A client said the address is in use by someone else: kept out of the pool.
    Declined,
}

impl LeaseState {
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseState::Offered => "offered",
            LeaseState::Bound => "bound",
            LeaseState::Released => "released",
            LeaseState::Declined => "declined",
        }
    }

    pub fn parse(s: &str) -> Option<LeaseState> {
        Some(match s {
            "offered" => LeaseState::Offered,
            "bound" => LeaseState::Bound,
            "released" => LeaseState::Released,
            "declined" => LeaseState::Declined,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub ip: Ipv4Addr,
    /// Normalized lower-case MAC; empty for a declined address nobody owns.
    pub mac: String,
    /// Unix seconds. For Declined, the end of the quarantine.
    pub expires: u64,
    pub state: LeaseState,
}

impl Lease {
    /// Whether this lease keeps the address from anyone else at `now`.
    fn holds(&self, now: u64) -> bool {
        match self.state {
            LeaseState::Bound | LeaseState::Offered | LeaseState::Declined => self.expires > now,
            LeaseState::Released => false,
        }
    }
}

/// Where leases are persisted. Implemented by the SQLite store; tests use memory.
pub trait LeaseStore: Send {
    fn save(&mut self, lease: &Lease) -> Result<(), crate::db::StoreError>;
    fn load_all(&mut self) -> Result<Vec<Lease>, crate::db::StoreError>;
}

#[derive(Default)]
pub struct MemoryLeaseStore {
    pub saved: HashMap<Ipv4Addr, Lease>,
}

impl LeaseStore for MemoryLeaseStore {
    fn save(&mut self, lease: &Lease) -> Result<(), crate::db::StoreError> {
        self.saved.insert(lease.ip, lease.clone());
        Ok(())
    }
    fn load_all(&mut self) -> Result<Vec<Lease>, crate::db::StoreError> {
        Ok(self.saved.values().cloned().collect())
    }
}

/// A contiguous range of dynamic addresses (the local subnet or one behind a relay).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
}

impl Range {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        (u32::from(self.first)..=u32::from(self.last)).contains(&u32::from(ip))
    }
}

/// All leases the server knows, keyed by address, plus the static reservations.
/// Every lookup a request makes is indexed, so a busy pool costs no more per
/// packet than an empty one.
pub struct LeaseTable {
    by_ip: BTreeMap<u32, Lease>,
    /// MAC → address of its current lease (verified against `by_ip` on use).
    by_mac: HashMap<String, u32>,
    /// MAC → reserved address (from `[[node]] ip`), and the reverse.
    reservations: HashMap<String, Ipv4Addr>,
    reserved_ips: HashMap<u32, String>,
    /// Addresses never handed to anyone: the server's own, routers, DNS servers
    /// (an operator's range may well include them).
    excluded: std::collections::HashSet<u32>,
    /// Per range (keyed by its first address): no address below this was ever
    /// free of a lease, so the search for a never-used one starts here.
    unused_from: RefCell<HashMap<u32, u32>>,
    store: Box<dyn LeaseStore>,
    /// With group commit on: the writer, and the changes made since the
    /// caller last took them (it submits them with the packet's reply).
    group: Option<(super::commit::GroupCommit, Vec<Lease>)>,
}

impl LeaseTable {
    pub fn load(
        store: Box<dyn LeaseStore>,
        reservations: HashMap<String, Ipv4Addr>,
    ) -> Result<LeaseTable, crate::db::StoreError> {
        let mut t = LeaseTable {
            by_ip: BTreeMap::new(),
            by_mac: HashMap::new(),
            reserved_ips: reservations
                .iter()
                .map(|(m, ip)| (u32::from(*ip), m.clone()))
                .collect(),
            reservations,
            excluded: Default::default(),
            unused_from: RefCell::new(HashMap::new()),
            store,
            group: None,
        };
        for l in t.store.load_all()? {
            t.insert(l);
        }
        Ok(t)
    }

    /// Reserves `ip` for `mac` from now on (`None`: no reservation), replacing
    /// what it had: a node declared or changed while the server runs, here or
    /// on another server sharing the database.
    pub fn set_reservation(&mut self, mac: &str, ip: Option<Ipv4Addr>) {
        if let Some(old) = self.reservations.remove(mac) {
            self.reserved_ips.remove(&u32::from(old));
        }
        if let Some(ip) = ip {
            self.reserved_ips.insert(u32::from(ip), mac.to_string());
            self.reservations.insert(mac.to_string(), ip);
        }
    }

    /// Keeps `ips` out of every offer and refuses them to every REQUEST.
    pub fn exclude(&mut self, ips: impl IntoIterator<Item = Ipv4Addr>) {
        self.excluded.extend(ips.into_iter().map(u32::from));
    }

    /// Forgets the in-memory state and reads the persisted leases again: after a
    /// panic in the middle of an update, what is on disk is what was granted.
    /// Offers (never persisted) are lost; their clients ask again.
    /// With group commit, what the writer still holds is written first, so
    /// the table read back has every lease an ACK may already have announced.
    pub fn reload(&mut self) -> Result<(), crate::db::StoreError> {
        if let Some((writer, pending)) = &mut self.group {
            pending.clear();
            writer.flush();
        }
        let leases = self.store.load_all()?;
        self.by_ip.clear();
        self.by_mac.clear();
        self.unused_from.get_mut().clear();
        for l in leases {
            self.insert(l);
        }
        Ok(())
    }

    fn insert(&mut self, lease: Lease) {
        let ip = u32::from(lease.ip);
        if lease.state != LeaseState::Declined && !lease.mac.is_empty() {
            self.by_mac.insert(lease.mac.clone(), ip);
        }
        self.by_ip.insert(ip, lease);
    }

    fn remove(&mut self, ip: u32) {
        self.by_ip.remove(&ip);
        for hint in self.unused_from.get_mut().values_mut() {
            *hint = (*hint).min(ip);
        }
    }

    pub fn get(&self, ip: Ipv4Addr) -> Option<&Lease> {
        self.by_ip.get(&u32::from(ip))
    }

    pub fn by_mac(&self, mac: &str) -> Option<&Lease> {
        let ip = self.by_mac.get(mac)?;
        self.by_ip
            .get(ip)
            .filter(|l| l.mac == mac && l.state != LeaseState::Declined)
    }

    pub fn leases(&self) -> impl Iterator<Item = &Lease> {
        self.by_ip.values()
    }

    pub fn reservation(&self, mac: &str) -> Option<Ipv4Addr> {
        self.reservations.get(mac).copied()
    }

    /// Whether `writes` only bind nodes to the addresses config reserves for
    /// them: such an ACK may leave before its lease is durable (see
    /// `commit::GroupCommit::submit_after_ack`), since no other client can be
    /// granted a reserved address. Anything else (a range allocation, a
    /// release, a decline) waits for the store.
    pub fn reserved_only(&self, writes: &[Lease]) -> bool {
        !writes.is_empty()
            && writes
                .iter()
                .all(|l| l.state == LeaseState::Bound && self.reservation(&l.mac) == Some(l.ip))
    }

    /// Reserved for another node, or never handed out at all.
    fn reserved_for_other(&self, ip: Ipv4Addr, mac: &str) -> bool {
        self.excluded.contains(&u32::from(ip))
            || self
                .reserved_ips
                .get(&u32::from(ip))
                .is_some_and(|m| m != mac)
    }

    /// `(active, free)` in `range` at `now`: bound leases that have not expired,
    /// and addresses a new client could be offered (not held by any lease,
    /// not reserved for a node, not excluded). For `/metrics`.
    pub fn usage(&self, range: &Range, now: u64) -> (u64, u64) {
        let (first, last) = (u32::from(range.first), u32::from(range.last));
        if last < first {
            return (0, 0);
        }
        let (mut active, mut held) = (0, 0);
        for l in self.by_ip.range(first..=last).map(|(_, l)| l) {
            if l.holds(now) {
                held += 1;
                active += u64::from(l.state == LeaseState::Bound);
            }
        }
        let held_at = |ip: &u32| self.by_ip.get(ip).is_some_and(|l| l.holds(now));
        let blocked: std::collections::HashSet<u32> = self
            .excluded
            .iter()
            .chain(self.reserved_ips.keys())
            .filter(|ip| (first..=last).contains(*ip) && !held_at(ip))
            .copied()
            .collect();
        let size = u64::from(last - first) + 1;
        (active, size - held - blocked.len() as u64)
    }

    /// Whether `mac` may have `ip` at `now`: nobody else holds it and it is not
    /// reserved for another node.
    pub fn available_to(&self, ip: Ipv4Addr, mac: &str, now: u64) -> bool {
        if self.reserved_for_other(ip, mac) {
            return false;
        }
        match self.get(ip) {
            None => true,
            Some(l) => l.mac == mac && l.state != LeaseState::Declined || !l.holds(now),
        }
    }

    /// The lowest address in `range` that never had a lease and is not reserved.
    fn never_used(&self, range: &Range, mac: &str) -> Option<Ipv4Addr> {
        let (first, last) = (u32::from(range.first), u32::from(range.last));
        let mut hints = self.unused_from.borrow_mut();
        let from = hints.entry(first).or_insert(first);
        let mut ip = (*from).max(first);
        while ip <= last {
            if !self.by_ip.contains_key(&ip) && !self.reserved_for_other(Ipv4Addr::from(ip), mac) {
                *from = ip;
                return Some(Ipv4Addr::from(ip));
            }
            ip += 1;
        }
        *from = last.saturating_add(1);
        None
    }

    /// The address to offer `mac` in `range`: its reservation, its previous lease,
    /// the address it asked for, or the lowest never-used one; then the longest-expired.
    pub fn choose(
        &self,
        mac: &str,
        range: Option<&Range>,
        requested: Option<Ipv4Addr>,
        now: u64,
    ) -> Option<Ipv4Addr> {
        if let Some(ip) = self.reservation(mac) {
            return Some(ip);
        }
        let range = range?;
        let usable = |ip: Ipv4Addr| range.contains(ip) && self.available_to(ip, mac, now);
        if let Some(prev) = self.by_mac(mac).map(|l| l.ip).filter(|ip| usable(*ip)) {
            return Some(prev);
        }
        if let Some(ip) = requested.filter(|ip| usable(*ip)) {
            return Some(ip);
        }
        self.never_used(range, mac).or_else(|| {
            // Pool exhausted by history: reuse the address that expired longest ago, so a
            // recently-gone client that comes back still likely finds its old address.
            let (first, last) = (u32::from(range.first), u32::from(range.last));
            self.by_ip
                .range(first..=last)
                .map(|(_, l)| l)
                .filter(|l| !l.holds(now) && !self.reserved_for_other(l.ip, mac))
                .min_by_key(|l| l.expires)
                .map(|l| l.ip)
        })
    }

    /// From now on [`LeaseTable::record`] only stages its writes: the caller
    /// takes them ([`LeaseTable::take_pending`]) and hands them to `writer`
    /// with whatever must wait for them (the ACK).
    pub fn group_commit(&mut self, writer: super::commit::GroupCommit) {
        self.group = Some((writer, vec![]));
    }

    pub fn writer(&self) -> Option<&super::commit::GroupCommit> {
        self.group.as_ref().map(|(w, _)| w)
    }

    /// The writes staged since the last call (always empty without group commit).
    pub fn take_pending(&mut self) -> Vec<Lease> {
        self.group
            .as_mut()
            .map(|(_, p)| std::mem::take(p))
            .unwrap_or_default()
    }

    /// Records a lease. Bound, released and declined leases are persisted before this
    /// returns, or with group commit staged for the caller to persist before it
    /// answers; offers live in memory only (a restart just makes the client ask again).
    pub fn record(&mut self, lease: Lease) -> Result<(), crate::db::StoreError> {
        if lease.state != LeaseState::Offered {
            match &mut self.group {
                Some((_, pending)) => pending.push(lease.clone()),
                None => self.store.save(&lease)?,
            }
        }
        // One address per MAC: an offer this MAC holds elsewhere goes, so the pool does not leak.
        if let Some(old) = self
            .by_mac(&lease.mac)
            .filter(|l| l.state == LeaseState::Offered && l.ip != lease.ip)
        {
            let old = u32::from(old.ip);
            self.remove(old);
        }
        self.insert(lease);
        Ok(())
    }

    /// Forgets an unaccepted offer (the client chose another server).
    pub fn withdraw_offer(&mut self, mac: &str) {
        if let Some(l) = self.by_mac(mac).filter(|l| l.state == LeaseState::Offered) {
            let ip = u32::from(l.ip);
            self.remove(ip);
            self.by_mac.remove(mac);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn table(res: &[(&str, &str)]) -> LeaseTable {
        let reservations = res.iter().map(|(m, i)| (m.to_string(), ip(i))).collect();
        LeaseTable::load(Box::new(MemoryLeaseStore::default()), reservations).unwrap()
    }

    fn range() -> Range {
        Range {
            first: ip("10.0.0.10"),
            last: ip("10.0.0.12"),
        }
    }

    fn bind(t: &mut LeaseTable, mac: &str, addr: Ipv4Addr, expires: u64) {
        t.record(Lease {
            ip: addr,
            mac: mac.into(),
            expires,
            state: LeaseState::Bound,
        })
        .unwrap();
    }

    #[test]
    fn usage_counts_bound_leases_and_what_a_new_client_could_get() {
        let r = Range {
            first: ip("10.0.0.10"),
            last: ip("10.0.0.19"),
        };
        let mut t = table(&[("node1", "10.0.0.15")]);
        t.exclude([ip("10.0.0.10")]);
        assert_eq!(
            t.usage(&r, 100),
            (0, 8),
            "10 minus a reservation and an excluded address"
        );
        bind(&mut t, "a", ip("10.0.0.11"), 1000);
        bind(&mut t, "b", ip("10.0.0.12"), 150);
        bind(&mut t, "node1", ip("10.0.0.15"), 1000);
        t.record(Lease {
            ip: ip("10.0.0.13"),
            mac: "c".into(),
            expires: 1000,
            state: LeaseState::Released,
        })
        .unwrap();
        assert_eq!(
            t.usage(&r, 100),
            (3, 6),
            "the reservation's holder counts once"
        );
        // b's lease expires: its address is free again.
        assert_eq!(t.usage(&r, 200), (2, 7));
        let outside = Range {
            first: ip("10.1.0.1"),
            last: ip("10.1.0.4"),
        };
        assert_eq!(t.usage(&outside, 100), (0, 4));
    }

    #[test]
    fn hands_out_lowest_free_and_never_the_same_address_twice() {
        let mut t = table(&[]);
        let mut given = vec![];
        for mac in ["a", "b", "c"] {
            let a = t.choose(mac, Some(&range()), None, 100).unwrap();
            bind(&mut t, mac, a, 1000);
            given.push(a);
        }
        assert_eq!(
            given,
            vec![ip("10.0.0.10"), ip("10.0.0.11"), ip("10.0.0.12")]
        );
        assert_eq!(
            t.choose("d", Some(&range()), None, 100),
            None,
            "pool is full"
        );
    }

    #[test]
    fn same_mac_gets_same_address_back() {
        let mut t = table(&[]);
        bind(&mut t, "a", ip("10.0.0.11"), 1000);
        assert_eq!(
            t.choose("a", Some(&range()), None, 100),
            Some(ip("10.0.0.11"))
        );
        // Even after it expired, while nobody else took it.
        assert_eq!(
            t.choose("a", Some(&range()), None, 5000),
            Some(ip("10.0.0.11"))
        );
    }

    #[test]
    fn reservations_win_and_are_never_given_to_others() {
        let t = table(&[("r", "10.0.0.10")]);
        assert_eq!(
            t.choose("r", Some(&range()), None, 0),
            Some(ip("10.0.0.10"))
        );
        assert_eq!(
            t.choose("x", Some(&range()), Some(ip("10.0.0.10")), 0),
            Some(ip("10.0.0.11"))
        );
    }

    #[test]
    fn only_bindings_of_reserved_addresses_to_their_nodes_skip_the_store() {
        let t = table(&[("r", "10.0.0.10")]);
        let l = |mac: &str, addr: &str, state| Lease {
            ip: ip(addr),
            mac: mac.into(),
            expires: 100,
            state,
        };
        let own = l("r", "10.0.0.10", LeaseState::Bound);
        assert!(t.reserved_only(std::slice::from_ref(&own)));
        assert!(!t.reserved_only(&[]), "nothing to write is no exception");
        // A range allocation, even alongside the reserved one, waits.
        let dynamic = l("r", "10.0.0.11", LeaseState::Bound);
        assert!(!t.reserved_only(&[own.clone(), dynamic]));
        assert!(!t.reserved_only(&[l("x", "10.0.0.10", LeaseState::Bound)]));
        assert!(!t.reserved_only(&[l("r", "10.0.0.10", LeaseState::Released)]));
        assert!(!t.reserved_only(&[l("r", "10.0.0.10", LeaseState::Declined)]));
    }

    #[test]
    fn excluded_addresses_are_never_offered_or_granted() {
        let mut t = table(&[]);
        t.exclude([ip("10.0.0.10"), ip("10.0.0.12")]);
        assert_eq!(
            t.choose("a", Some(&range()), Some(ip("10.0.0.10")), 0),
            Some(ip("10.0.0.11"))
        );
        assert!(!t.available_to(ip("10.0.0.12"), "b", 0));
        bind(&mut t, "a", ip("10.0.0.11"), 1000);
        assert_eq!(t.choose("b", Some(&range()), None, 0), None, "pool full");
        // Even once every lease expired, the fallback skips them.
        assert_eq!(
            t.choose("b", Some(&range()), None, 5000),
            Some(ip("10.0.0.11"))
        );
    }

    #[test]
    fn reload_keeps_what_was_persisted_and_drops_offers() {
        let mut t = table(&[]);
        bind(&mut t, "a", ip("10.0.0.10"), 1000);
        t.record(Lease {
            ip: ip("10.0.0.11"),
            mac: "b".into(),
            expires: 60,
            state: LeaseState::Offered,
        })
        .unwrap();
        t.reload().unwrap();
        assert_eq!(t.by_mac("a").map(|l| l.ip), Some(ip("10.0.0.10")));
        assert!(t.by_mac("b").is_none());
        assert_eq!(
            t.choose("c", Some(&range()), None, 0),
            Some(ip("10.0.0.11"))
        );
    }

    #[test]
    fn requested_address_honoured_only_when_free() {
        let mut t = table(&[]);
        bind(&mut t, "a", ip("10.0.0.12"), 1000);
        assert_eq!(
            t.choose("b", Some(&range()), Some(ip("10.0.0.12")), 100),
            Some(ip("10.0.0.10"))
        );
        assert_eq!(
            t.choose("b", Some(&range()), Some(ip("10.0.0.11")), 100),
            Some(ip("10.0.0.11"))
        );
    }

    #[test]
    fn expired_leases_are_reused_oldest_first_and_declined_are_quarantined() {
        let mut t = table(&[]);
        bind(&mut t, "a", ip("10.0.0.10"), 300);
        bind(&mut t, "b", ip("10.0.0.11"), 200);
        t.record(Lease {
            ip: ip("10.0.0.12"),
            mac: String::new(),
            expires: 10_000,
            state: LeaseState::Declined,
        })
        .unwrap();
        assert_eq!(t.choose("c", Some(&range()), None, 100), None);
        assert_eq!(
            t.choose("c", Some(&range()), None, 400),
            Some(ip("10.0.0.11"))
        );
        assert_eq!(
            t.choose("c", Some(&range()), Some(ip("10.0.0.12")), 400),
            Some(ip("10.0.0.11"))
        );
    }

    #[test]
    fn offers_are_not_persisted_but_bound_leases_are() {
        let mut t = table(&[]);
        t.record(Lease {
            ip: ip("10.0.0.10"),
            mac: "a".into(),
            expires: 60,
            state: LeaseState::Offered,
        })
        .unwrap();
        assert_eq!(
            t.choose("b", Some(&range()), None, 0),
            Some(ip("10.0.0.11")),
            "offer holds the address"
        );
        bind(&mut t, "a", ip("10.0.0.10"), 1000);
        let saved = t.store.load_all().unwrap();
        assert_eq!(saved.len(), 1);
        assert_eq!(saved[0].state, LeaseState::Bound);
    }
}
