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
    pub fn post(&self, ev: &ProgressEvent) -> Result<(), PostError> {
        let Some((id, token)) = &self.target else {
            return Err(PostError::Refused("no install id yet".into()));
        };
        let body = serde_json::to_vec(ev).map_err(|e| PostError::Refused(e.to_string()))?;
        let resp =
            http_client::post_json(&events_url(&self.server, id), Some(token), &body, TIMEOUT)
                .map_err(|e| PostError::Unavailable(e.to_string()))?;
        if resp.is_success() {
            return Ok(());
        }
        let text = format!("server answered {}: {}", resp.status, resp.text().trim());
        // 5xx: the server (or the database behind it) is in trouble and may
        // be back soon; anything else will be answered the same way again.
        Err(if resp.status >= 500 {
            PostError::Unavailable(text)
        } else {
            PostError::Refused(text)
        })
    }
}

/// Why an event was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostError {
    /// Unreachable, or a server error: asking again later may work.
    Unavailable(String),
    /// The server said no (or there is nowhere to send it): asking again will not help.
    Refused(String),
}

impl std::fmt::Display for PostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PostError::Unavailable(e) | PostError::Refused(e) => f.write_str(e),
        }
    }
}

/// How long the Installed report is tried for before the node reboots
/// anyway: a server restarting, or its shared database failing over, takes
/// seconds to a minute, and a node rebooting unreported is installed again.
pub const INSTALLED_PATIENCE: Duration = Duration::from_secs(180);

/// The wait before the next try of the Installed report, or `None` to give
/// up: never after a refusal, never past [`INSTALLED_PATIENCE`]; 2 s, then
/// doubling up to 15 s.
pub fn installed_retry(tries: u32, waited: Duration, last: &PostError) -> Option<Duration> {
    if matches!(last, PostError::Refused(_)) {
        return None;
    }
    let wait = Duration::from_secs((2u64 << tries.saturating_sub(1).min(3)).min(15));
    (waited + wait <= INSTALLED_PATIENCE).then_some(wait)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_installed_report_is_retried_through_an_outage_but_not_after_a_refusal() {
        let down = PostError::Unavailable("server answered 503: node state unavailable".into());
        let waits: Vec<u64> = (1..=5)
            .map(|t| installed_retry(t, Duration::ZERO, &down).unwrap().as_secs())
            .collect();
        assert_eq!(waits, [2, 4, 8, 15, 15]);
        assert_eq!(installed_retry(9, Duration::from_secs(170), &down), None);
        let no = PostError::Refused("server answered 403: bad token".into());
        assert_eq!(installed_retry(1, Duration::ZERO, &no), None);
    }

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
