//! Progress events to the server. Best-effort: a lost event never stops an
//! install, and events from before the plan (no install id yet) are queued.

use std::time::{Duration, Instant};

use rollout::wire::{paths, EventKind, ProgressEvent, Step};

use crate::http_client;

const TIMEOUT: Duration = Duration::from_secs(5);

pub struct Reporter {
    server: String,
    target: Option<(String, String)>,
    start: Instant,
    queued: Vec<ProgressEvent>,
}

pub fn events_url(server: &str, install_id: &str) -> String {
    format!("{server}{}/{install_id}/events", paths::INSTALLS)
}

impl Reporter {
    pub fn new(server: &str, start: Instant) -> Self {
        Reporter {
            server: server.to_string(),
            target: None,
            start,
            queued: Vec::new(),
        }
    }

    /// The server is known only once the kernel command line has been read.
    pub fn set_server(&mut self, server: &str) {
        self.server = server.to_string();
    }

    pub fn elapsed_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// `(server, install id, token)` once the plan is known.
    pub fn install(&self) -> Option<(&str, &str, &str)> {
        let (id, token) = self.target.as_ref()?;
        Some((&self.server, id, token))
    }

    /// Starts posting under this install; queued early events go first.
    pub fn set_install(&mut self, install_id: &str, token: &str) {
        self.target = Some((install_id.to_string(), token.to_string()));
        for ev in std::mem::take(&mut self.queued) {
            let _ = self.post(&ev);
        }
    }

    pub fn event(&self, step: Step, kind: EventKind, message: &str) -> ProgressEvent {
        ProgressEvent {
            step,
            kind,
            message: message.to_string(),
            elapsed_ms: self.elapsed_ms(),
        }
    }

    /// Posts (or queues) an event; failures are printed once and forgotten.
    pub fn send(&mut self, step: Step, kind: EventKind, message: &str) {
        let ev = self.event(step, kind, message);
        if self.target.is_none() {
            self.queued.push(ev);
            return;
        }
        if let Err(e) = self.post(&ev) {
            crate::console::line(&format!("{step}: note: progress report not delivered: {e}"));
        }
    }

    /// Posts an event now and says whether the server took it.
    pub fn post(&self, ev: &ProgressEvent) -> Result<(), String> {
        let Some((id, token)) = &self.target else {
            return Err("no install id yet".into());
        };
        let body = serde_json::to_vec(ev).map_err(|e| e.to_string())?;
        let resp =
            http_client::post_json(&events_url(&self.server, id), Some(token), &body, TIMEOUT)
                .map_err(|e| e.to_string())?;
        if resp.is_success() {
            Ok(())
        } else {
            Err(format!(
                "server answered {}: {}",
                resp.status,
                resp.text().trim()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_url_uses_wire_path() {
        assert_eq!(
            events_url("http://10.44.0.1:8080", "abc"),
            "http://10.44.0.1:8080/api/v1/installs/abc/events"
        );
    }

    #[test]
    fn events_before_the_plan_are_queued() {
        let mut r = Reporter::new("http://127.0.0.1:9", Instant::now());
        r.send(Step::Dhcp, EventKind::Started, "dhcp");
        r.send(Step::Dhcp, EventKind::Done, "dhcp: ok");
        assert_eq!(r.queued.len(), 2);
        assert_eq!(r.queued[1].kind, EventKind::Done);
    }
}
