//! The live feed of node changes (SSE, the dashboard, `rollout watch`, DHCP
//! reservations): this server's own writes, and with a shared database the
//! other servers' too, relayed as the store learns of them; and the newest
//! record of each node this server knows without asking the store, which a
//! boot falls back on while the store cannot be read.

use super::{Inventory, InventoryError, NodeRecord};
use tokio::sync::broadcast;

/// A change another server made, as the store learns of it.
#[derive(Debug, Clone)]
pub enum Remote {
    /// The record as that server wrote it (without secrets): each state it
    /// went through is seen, however fast the next came.
    Saved(Box<NodeRecord>),
    /// This node changed or was removed: read it back.
    Changed(String),
    /// Anything may have changed (the store reconnected): read them all.
    Missed,
}

/// What the live feed carries: a record as it is now, or a node that is gone.
#[derive(Debug, Clone)]
pub enum NodeChange {
    /// Without secrets ([`NodeRecord::public`]).
    Saved(Box<NodeRecord>),
    Removed {
        mac: String,
    },
}

impl Inventory {
    /// Whether the store answers, when that can change (see [`super::NodeStore::health`]).
    pub fn store_health(&self) -> Option<crate::store::health::StoreHealth> {
        self.store.health()
    }

    /// The newest record of `mac` this server knows without asking the store.
    pub fn last_known(&self, mac: &str) -> Option<NodeRecord> {
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(mac)
            .cloned()
    }

    pub(super) fn remember<'a>(&self, records: impl IntoIterator<Item = &'a NodeRecord>) {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        for rec in records {
            known.insert(rec.mac.clone(), rec.public());
        }
    }

    /// Live feed of changed records (without tokens), for SSE; other servers'
    /// changes too once [`Inventory::follow_other_servers`] runs.
    pub fn subscribe(&self) -> broadcast::Receiver<NodeChange> {
        self.changes.subscribe()
    }

    /// Relays the changes other servers sharing this store make into this
    /// server's live feed (a no-op for a store nobody else writes).
    pub fn follow_other_servers(self: &std::sync::Arc<Self>) -> Result<(), InventoryError> {
        let inventory = std::sync::Arc::downgrade(self);
        self.store.watch(Box::new(move |remote| {
            if let Some(inventory) = inventory.upgrade() {
                inventory.relay(remote);
            }
        }))?;
        Ok(())
    }

    /// Announces what another server changed (read back from the store
    /// unless the change came with the record).
    fn relay(&self, remote: Remote) {
        let changes = match remote {
            Remote::Saved(rec) => vec![NodeChange::Saved(Box::new(rec.public()))],
            Remote::Changed(mac) => match self.store.get(&mac) {
                Ok(Some(rec)) => vec![NodeChange::Saved(Box::new(rec.public()))],
                Ok(None) => vec![NodeChange::Removed { mac }],
                Err(e) => {
                    tracing::warn!(%mac, "cannot read a node another server changed: {e}");
                    return;
                }
            },
            Remote::Missed => match self.store.list() {
                Ok(all) => all
                    .iter()
                    .map(|r| NodeChange::Saved(Box::new(r.public())))
                    .collect(),
                Err(e) => {
                    tracing::warn!("cannot read the nodes after reconnecting: {e}");
                    return;
                }
            },
        };
        for change in changes {
            match &change {
                NodeChange::Saved(rec) => self.remember([rec.as_ref()]),
                NodeChange::Removed { mac } => {
                    self.known
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(mac);
                }
            }
            let _ = self.changes.send(change);
        }
    }
}
