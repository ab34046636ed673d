//! An install's life in the inventory: its start (id, token and credentials),
//! the installer's progress events and copy slot, phone-home, operator
//! actions, and the sweep that fails installs that went quiet.

use super::*;

impl Inventory {
    /// A new install attempt: fresh id and token (see [`Inventory::start_install`]
    /// for the credentials that come with it).
    pub fn begin_install(&self, mac: &str, serial: u64) -> Result<NodeRecord, InventoryError> {
        self.start_install(mac, serial).map(|(rec, _)| rec)
    }

    /// A new install attempt: fresh id, token and per-install rsync password,
    /// and a new node credential (the old one, of the OS this install
    /// replaces, stops working). The node's secret is returned for its plan
    /// and kept here only as a hash.
    pub fn start_install(
        &self,
        mac: &str,
        serial: u64,
    ) -> Result<(NodeRecord, crate::wire::NodeCredential), InventoryError> {
        let _w = self.write_lock()?;
        let mut rec = self
            .store
            .get(mac)?
            .ok_or_else(|| InventoryError::UnknownNode(mac.into()))?;
        Self::transition(&mut rec, Transition::BeginInstall)?;
        let t = now();
        rec.install_id = Some(format!("{t}-{}", random_hex(4)));
        rec.token = Some(random_hex(16));
        rec.serial = Some(serial);
        rec.stage = Some(crate::wire::Step::FetchPlan.as_str().into());
        rec.done_bytes = 0;
        rec.total_bytes = 0;
        rec.eta_secs = None;
        rec.copy_rate = None;
        rec.last_error = None;
        rec.console_tail.clear();
        rec.installs += 1;
        rec.install_started = Some(t);
        rec.reported_at = Some(t);
        rec.boot_secret = None;
        // The installer reached the server: whatever looped before is over.
        rec.unreported_boots = None;
        rec.stuck_before_network = None;
        rec.install_rsync = Some(random_hex(16));
        let node = secrets::issue_node_credential(&mut rec);
        let event = json!({"kind": "install_started", "install_id": rec.install_id, "image": rec.image, "serial": serial});
        Ok((self.commit(rec, event)?, node))
    }

    /// The node running install `install_id`, if `token` is that install's
    /// (for calls that change no record, such as a copy slot request).
    pub fn running_install(
        &self,
        install_id: &str,
        token: &str,
    ) -> Result<NodeRecord, InventoryError> {
        let rec = self
            .store
            .by_install(install_id)?
            .ok_or_else(|| InventoryError::UnknownInstall(install_id.into()))?;
        if rec.token.as_deref() != Some(token) {
            return Err(InventoryError::BadToken(install_id.into()));
        }
        if rec.state != NodeState::Installing {
            return Err(InventoryError::Conflict(format!(
                "install {install_id} of {} is {}, not running",
                rec.hostname,
                rec.state.as_str()
            )));
        }
        Ok(rec)
    }

    /// Applies one progress event from the installer, after checking its token.
    pub fn record_event(
        &self,
        install_id: &str,
        token: &str,
        ev: &ProgressEvent,
    ) -> Result<NodeRecord, InventoryError> {
        let _w = self.write_lock()?;
        let mut rec = self
            .store
            .by_install(install_id)?
            .ok_or_else(|| InventoryError::UnknownInstall(install_id.into()))?;
        if rec.token.as_deref() != Some(token) {
            return Err(InventoryError::BadToken(install_id.into()));
        }
        let ev = &capped(ev);
        rec.stage = Some(ev.step.as_str().into());
        rec.reported_at = Some(now());
        self.track_copy(&mut rec, install_id, ev);
        rec.queue = match ev.kind {
            EventKind::Queued { position, queued } => Some([position, queued]),
            _ => None,
        };
        match &ev.kind {
            EventKind::Queued { .. } => Self::transition(&mut rec, Transition::Progress)?,
            EventKind::Started | EventKind::Done => {
                Self::transition(&mut rec, Transition::Progress)?
            }
            EventKind::Progress {
                done_bytes,
                total_bytes,
            } => {
                Self::transition(&mut rec, Transition::Progress)?;
                rec.done_bytes = *done_bytes;
                rec.total_bytes = *total_bytes;
            }
            EventKind::Installed { serial, host_keys } => {
                Self::transition(&mut rec, Transition::Installed)?;
                rec.serial = Some(*serial);
                rec.installed_at = Some(now());
                rec.install_rsync = None;
                // The new install's keys replace the old ones, also when it
                // reported none: whatever the disk held before is gone.
                let (keys, refused) = crate::fleet::ssh::known_hosts::parse_all(host_keys);
                rec.host_keys = keys.iter().map(|k| k.line()).collect();
                rec.host_key_fingerprints = keys.iter().map(|k| k.describe()).collect();
                for why in refused {
                    tracing::warn!(mac = %rec.mac, hostname = %rec.hostname, "host key in the installed report ignored: {why}");
                }
            }
            EventKind::Failed {
                error,
                console_tail,
            } => {
                Self::transition(&mut rec, Transition::Failed)?;
                rec.install_rsync = None;
                rec.last_error = Some(error.clone());
                rec.console_tail = console_tail.clone();
            }
        }
        let mut event = serde_json::to_value(ev).unwrap_or_default();
        event["install_id"] = json!(install_id);
        // Byte counters tick every few seconds: keep them out of the history table.
        // So is a queue place, which changes whenever a copy ends.
        if matches!(
            ev.kind,
            EventKind::Progress { .. } | EventKind::Queued { .. }
        ) {
            rec.updated = now();
            self.store.save(&rec, None)?;
            let _ = self.changes.send(NodeChange::Saved(Box::new(rec.public())));
            return Ok(rec);
        }
        self.commit(rec, event)
    }

    /// Feeds the copy's reports to its rate estimate and puts the ETA and rate
    /// on the record; the copy's end leaves its average rate there.
    fn track_copy(&self, rec: &mut NodeRecord, install_id: &str, ev: &ProgressEvent) {
        let mut rates = self.rates.lock().unwrap_or_else(|p| p.into_inner());
        match (&ev.kind, ev.step) {
            (
                EventKind::Progress {
                    done_bytes,
                    total_bytes,
                },
                crate::wire::Step::Copy,
            ) => {
                let rate = rates.entry(install_id.to_string()).or_default();
                rate.add(ev.elapsed_ms, *done_bytes);
                let current = rate.rate();
                rec.copy_rate = current.map(|r| r as u64);
                rec.eta_secs = match progress::eta(current, *done_bytes, *total_bytes) {
                    progress::Eta::Remaining(s) => Some(s),
                    progress::Eta::Finished => Some(0),
                    progress::Eta::Unknown => None,
                };
            }
            (EventKind::Done, crate::wire::Step::Copy) => {
                if let Some(rate) = rates.remove(install_id) {
                    rec.copy_rate = rate.average().map(|r| r as u64);
                }
                rec.eta_secs = None;
            }
            (EventKind::Installed { .. } | EventKind::Failed { .. }, _) => {
                rates.remove(install_id);
                rec.eta_secs = None;
            }
            _ => {}
        }
    }

    pub fn phone_home(&self, ph: &PhoneHome) -> Result<NodeRecord, InventoryError> {
        let _w = self.write_lock()?;
        let mut rec = self
            .store
            .get(&ph.mac)?
            .ok_or_else(|| InventoryError::UnknownNode(ph.mac.clone()))?;
        let boot_id = limits::truncate(&ph.boot_id, limits::MAX_TEXT);
        let hostname = limits::truncate(&ph.hostname, limits::MAX_TEXT);
        rec.booted_at = Some(now());
        rec.boot_id = Some(boot_id.clone());
        rec.serial = Some(ph.serial);
        let event = json!({"kind": "booted", "hostname": hostname, "serial": ph.serial, "boot_id": boot_id});
        self.commit(rec, event)
    }

    /// Applies an operator's request; the history row names who asked (`by`), if known.
    fn apply(
        &self,
        mac: &str,
        action: OperatorAction,
        by: Option<&str>,
    ) -> Result<NodeRecord, InventoryError> {
        let (t, kind) = match action {
            OperatorAction::Reinstall => (Transition::RequestReinstall, "reinstall_requested"),
            OperatorAction::Approve => (Transition::Approve, "approved"),
            OperatorAction::Ignore => (Transition::Ignore, "ignored"),
        };
        let _w = self.write_lock()?;
        let mut rec = self
            .store
            .get(mac)?
            .ok_or_else(|| InventoryError::UnknownNode(mac.into()))?;
        Self::transition(&mut rec, t)?;
        match t {
            Transition::Approve | Transition::RequestReinstall => rec.approved = true,
            Transition::Ignore => rec.approved = false,
            _ => {}
        }
        if t == Transition::RequestReinstall {
            // The running install (if any) can no longer report.
            rec.install_id = None;
            rec.token = None;
            rec.stage = None;
            rec.install_rsync = None;
        }
        let mut event = json!({"kind": kind});
        if let Some(by) = by {
            event["by"] = by.into();
        }
        self.commit(rec, event)
    }

    /// An operator's request (reinstall, approve, ignore), recorded in the
    /// node's history with their name.
    pub fn operator_action(
        &self,
        mac: &str,
        action: OperatorAction,
        by: &str,
    ) -> Result<NodeRecord, InventoryError> {
        self.apply(mac, action, Some(by))
    }

    /// Adds a history row about something done to the node outside the server
    /// (an operator's `rollout exec` or `sync` over SSH); the record is unchanged.
    pub fn note(&self, mac: &str, event: serde_json::Value) -> Result<(), InventoryError> {
        let _w = self.write_lock()?;
        let rec = self
            .store
            .get(mac)?
            .ok_or_else(|| InventoryError::UnknownNode(mac.into()))?;
        self.store.save(&rec, Some(&event))?;
        Ok(())
    }

    /// The node installs again on its next boot.
    pub fn request_reinstall(&self, mac: &str) -> Result<NodeRecord, InventoryError> {
        self.apply(mac, OperatorAction::Reinstall, None)
    }

    pub fn approve(&self, mac: &str) -> Result<NodeRecord, InventoryError> {
        self.apply(mac, OperatorAction::Approve, None)
    }

    pub fn ignore(&self, mac: &str) -> Result<NodeRecord, InventoryError> {
        self.apply(mac, OperatorAction::Ignore, None)
    }

    pub fn remove(&self, mac: &str) -> Result<(), InventoryError> {
        let _w = self.write_lock()?;
        if !self.store.delete(mac)? {
            return Err(InventoryError::UnknownNode(mac.into()));
        }
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(mac);
        let _ = self.changes.send(NodeChange::Removed { mac: mac.into() });
        Ok(())
    }

    /// Marks installs that stopped reporting as failed. Returns the nodes it failed.
    pub fn sweep_timeouts(&self, now: u64) -> Result<Vec<NodeRecord>, InventoryError> {
        let limit = self.policy.install_timeout_secs;
        let stale: Vec<NodeRecord> = self
            .store
            .list()?
            .into_iter()
            .filter(|n| n.state == NodeState::Installing && now.saturating_sub(n.updated) >= limit)
            .collect();
        let mut failed = vec![];
        for n in stale {
            let _w = self.write_lock()?;
            // Re-read under the lock: a report may have arrived meanwhile.
            let Some(mut rec) = self.store.get(&n.mac)? else {
                continue;
            };
            if rec.state != NodeState::Installing || now.saturating_sub(rec.updated) < limit {
                continue;
            }
            Self::transition(&mut rec, Transition::TimedOut)?;
            let stage = rec.stage.clone().unwrap_or_default();
            rec.last_error = Some(format!(
                "timed out: no report for {limit} s during {stage}; check the node's console, then `rollout node reinstall {}`",
                rec.hostname
            ));
            rec.token = None;
            rec.install_rsync = None;
            let event = json!({"kind": "timed_out", "stage": stage});
            failed.push(self.commit(rec, event)?);
        }
        Ok(failed)
    }
}

/// `ev` with its free text (message, error, console tail) cut to the store's limits.
fn capped(ev: &ProgressEvent) -> ProgressEvent {
    let kind = match &ev.kind {
        EventKind::Failed {
            error,
            console_tail,
        } => EventKind::Failed {
            error: limits::truncate(error, limits::MAX_TEXT),
            console_tail: limits::cap_console(console_tail),
        },
        k => k.clone(),
    };
    ProgressEvent {
        step: ev.step,
        kind,
        message: limits::truncate(&ev.message, limits::MAX_TEXT),
        elapsed_ms: ev.elapsed_ms,
    }
}

/// Runs [`Inventory::sweep_timeouts`] every `period` until cancelled.
pub async fn timeout_sweeper(
    inventory: std::sync::Arc<Inventory>,
    period: std::time::Duration,
    clock: impl Fn() -> u64 + Send + 'static,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (inv, now) = (inventory.clone(), clock());
        let swept = tokio::task::spawn_blocking(move || inv.sweep_timeouts(now)).await;
        match swept
            .unwrap_or_else(|e| Err(InventoryError::Conflict(format!("sweep task failed: {e}"))))
        {
            Ok(failed) => {
                for n in failed {
                    tracing::warn!(mac = %n.mac, hostname = %n.hostname, "{}", n.last_error.as_deref().unwrap_or("install timed out"));
                }
            }
            Err(e) => tracing::warn!("timeout sweep failed: {e}"),
        }
    }
}
