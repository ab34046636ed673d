//! The credentials a node is issued, and how the server checks them.
//!
//! - **Boot secret** (one-time, proves "this requester got the iPXE script
//!   rollout made for this boot"): issued each time `/boot.ipxe` hands a node
//!   its install script, which puts it on the installer's kernel command line;
//!   a new script replaces the previous secret (one outstanding per node).
//!   Consumed by the plan request that presents it and gets a plan; presenting
//!   it again is refused (the node PXE-boots again for a new one). A request
//!   refused for another reason (a 409: image not published, an install still
//!   reporting, see `plan_auth::secret_may_restart`) does not spend it, so the
//!   installer's retries work. Stored as a SHA-256 hash: the server only
//!   compares it.
//! - **Install credentials** (the install token and the rsync password in the
//!   plan): valid while that install is in progress.
//! - **Node credential** ([`crate::wire::NodeCredential`]): issued with each
//!   install, written on the node 0600, valid until the node is reinstalled
//!   (the next install replaces it) or removed. The secret is stored as a
//!   hash; the node's rsync password in clear text, because rsyncd's secrets
//!   file needs it, and it is a separate value so that file grants image reads
//!   and nothing else.

use super::{random_hex, Inventory, InventoryError, NodeRecord};
use crate::wire::{NodeCredential, RsyncCredential};
use sha2::{Digest, Sha256};

/// Hex SHA-256 of a secret, as the records store it.
pub fn hash(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Compares without stopping at the first differing byte, so the answer time
/// does not tell an attacker how much of a guess was right.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// Whether `secret` is the one whose hash is `stored`.
pub fn matches(stored: Option<&str>, secret: &str) -> bool {
    stored.is_some_and(|h| same(h, &hash(secret)))
}

/// rsyncd user of a node's running install.
pub fn install_user(mac: &str) -> String {
    format!("install-{}", mac.replace(':', ""))
}

/// rsyncd user of an installed node.
pub fn node_user(mac: &str) -> String {
    format!("node-{}", mac.replace(':', ""))
}

/// The install's rsync credential as the plan carries it.
pub fn install_credential(rec: &NodeRecord) -> RsyncCredential {
    RsyncCredential {
        user: install_user(&rec.mac),
        password: rec.install_rsync.clone().unwrap_or_default(),
    }
}

/// A new node credential: its hash and rsync password go into `rec`.
pub(super) fn issue_node_credential(rec: &mut NodeRecord) -> NodeCredential {
    let cred = NodeCredential {
        secret: random_hex(32),
        rsync: RsyncCredential {
            user: node_user(&rec.mac),
            password: random_hex(16),
        },
    };
    rec.node_key = Some(hash(&cred.secret));
    rec.node_rsync = Some(cred.rsync.password.clone());
    cred
}

/// One `auth users` entry of rsyncd: who, with what password, for which image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RsyncUser {
    pub user: String,
    pub password: String,
    pub image: String,
}

/// Everyone rsyncd must let in now: each running install, each node that has
/// a credential.
pub fn rsync_users(records: &[NodeRecord]) -> Vec<RsyncUser> {
    let mut out = vec![];
    for r in records {
        if r.state == super::NodeState::Installing {
            if let Some(p) = &r.install_rsync {
                out.push(RsyncUser {
                    user: install_user(&r.mac),
                    password: p.clone(),
                    image: r.image.clone(),
                });
            }
        }
        if let Some(p) = &r.node_rsync {
            out.push(RsyncUser {
                user: node_user(&r.mac),
                password: p.clone(),
                image: r.image.clone(),
            });
        }
    }
    out
}

/// Why a node's Bearer was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeAuthError {
    Missing,
    /// The record predates node credentials (installed by an older rollout).
    NoCredential(String),
    Wrong,
}

impl std::fmt::Display for NodeAuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeAuthError::Missing => f.write_str(
                "missing `Authorization: Bearer <node secret>` (the installer wrote it to /etc/rollout/node.secret)",
            ),
            NodeAuthError::NoCredential(host) => write!(
                f,
                "{host} has no node credential: it was installed before rollout issued them; reinstall it (`rollout node reinstall {host}`) to give it one"
            ),
            NodeAuthError::Wrong => f.write_str(
                "the node secret does not match this node's; a node can only speak for itself (a reinstall issues a new one)",
            ),
        }
    }
}

/// Checks a node's Bearer against its record.
pub fn check_node(rec: &NodeRecord, bearer: Option<&str>) -> Result<(), NodeAuthError> {
    let Some(secret) = bearer else {
        return Err(NodeAuthError::Missing);
    };
    match rec.node_key.as_deref() {
        None => Err(NodeAuthError::NoCredential(rec.hostname.clone())),
        Some(_) if matches(rec.node_key.as_deref(), secret) => Ok(()),
        Some(_) => Err(NodeAuthError::Wrong),
    }
}

impl Inventory {
    /// A fresh boot secret for the install script about to be served to `mac`
    /// (replacing any earlier one), counted as an installer boot that has not
    /// reached the server yet ([`super::stuck`]). Nothing is written to the
    /// history (every PXE boot of a pending node makes one) except the node
    /// turning stuck before network, or that message changing.
    pub fn issue_boot_secret(&self, mac: &str) -> Result<String, InventoryError> {
        let _w = self.write_lock()?;
        let mut rec = self
            .store
            .get(mac)?
            .ok_or_else(|| InventoryError::UnknownNode(mac.into()))?;
        let secret = random_hex(16);
        rec.boot_secret = Some(hash(&secret));
        // An installer boot; it counts as silent until the plan fetch clears it.
        let t = super::now();
        rec.unreported_boots = Some(super::stuck::script_served(rec.unreported_boots, t));
        let stuck = super::stuck::message(rec.unreported_boots, t);
        if stuck != rec.stuck_before_network {
            rec.stuck_before_network = stuck.clone();
            let event = serde_json::json!({"kind": "stuck_before_network", "message": stuck});
            self.commit(rec, event)?;
        } else {
            self.store.save(&rec, None)?;
        }
        Ok(secret)
    }

    /// The node whose secret `bearer` is, if any (for requests that name no node).
    pub fn node_by_secret(&self, bearer: &str) -> Result<Option<NodeRecord>, InventoryError> {
        let h = hash(bearer);
        Ok(self
            .list()?
            .into_iter()
            .find(|r| r.node_key.as_deref().is_some_and(|k| same(k, &h))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::{NodeState, Source};

    #[test]
    fn hashes_and_comparisons() {
        assert_eq!(
            hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
        assert!(matches(Some(&hash("s")), "s"));
        assert!(!matches(Some(&hash("s")), "t") && !matches(None, "s"));
    }

    #[test]
    fn node_bearer_is_checked_against_the_record() {
        let mut r = NodeRecord::new(
            "52:54:00:00:00:01",
            "n1",
            "img",
            Source::Config,
            NodeState::Installed,
        );
        assert_eq!(
            check_node(&r, Some("x")),
            Err(NodeAuthError::NoCredential("n1".into()))
        );
        assert!(check_node(&r, Some("x"))
            .unwrap_err()
            .to_string()
            .contains("rollout node reinstall n1"));
        let cred = issue_node_credential(&mut r);
        assert_eq!(cred.rsync.user, "node-525400000001");
        assert_ne!(cred.secret, cred.rsync.password);
        assert_eq!(check_node(&r, None), Err(NodeAuthError::Missing));
        assert_eq!(check_node(&r, Some("forged")), Err(NodeAuthError::Wrong));
        assert_eq!(check_node(&r, Some(&cred.secret)), Ok(()));
        assert!(
            !serde_json::to_string(&r).unwrap().contains(&cred.secret),
            "only the hash is stored"
        );
    }

    #[test]
    fn rsync_users_are_running_installs_and_credentialed_nodes() {
        let mut a = NodeRecord::new(
            "52:54:00:00:00:01",
            "a",
            "web",
            Source::Config,
            NodeState::Installing,
        );
        a.install_rsync = Some("p1".into());
        let mut b = NodeRecord::new(
            "52:54:00:00:00:02",
            "b",
            "db",
            Source::Config,
            NodeState::Failed,
        );
        b.install_rsync = Some("stale".into());
        issue_node_credential(&mut b);
        let users = rsync_users(&[a, b.clone()]);
        assert_eq!(users.len(), 2, "{users:?}");
        assert_eq!(
            (
                users[0].user.as_str(),
                users[0].password.as_str(),
                users[0].image.as_str()
            ),
            ("install-525400000001", "p1", "web")
        );
        assert_eq!(users[1].user, "node-525400000002");
        assert_eq!(Some(&users[1].password), b.node_rsync.as_ref());
    }
}
