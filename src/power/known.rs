//! The last known power state of each node, for the dashboard: what the last
//! poll, status call or power action said, and when. Kept in memory, fed with
//! the same events the history gets (so both always agree), and seeded from a
//! node's history the first time it is asked about after a restart.

use super::PowerState;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Mutex;

/// What is known of one node's power.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// `Err`: the last call failed, with its message.
    pub state: Result<PowerState, String>,
    /// When (Unix seconds).
    pub at: u64,
    /// Where it comes from: "polled", or the action and who asked ("off by admin").
    pub source: String,
}

/// What a history event (`kind` "power_state" from the poller, "power" from an
/// operator's action) says about the power, if anything. A successful action
/// counts as the state it asks for: the BMC took the order (some apply it
/// seconds later; the next poll tells).
pub fn seen_from_event(event: &Value, at: u64) -> Option<Seen> {
    let text = |k: &str| event[k].as_str().unwrap_or_default();
    let parse = |s: &str| match s {
        "on" => Some(PowerState::On),
        "off" => Some(PowerState::Off),
        "unknown" => Some(PowerState::Unknown),
        _ => None,
    };
    let error = || text("error").to_string();
    let (state, source) = match text("kind") {
        "power_state" => {
            let state = match parse(text("state")) {
                Some(s) => Ok(s),
                None => Err(error()),
            };
            (state, "polled".to_string())
        }
        "power" => {
            let action = text("action");
            let source = match event["by"].as_str() {
                Some(by) => format!("{action} by {by}"),
                None => action.to_string(),
            };
            if text("result") != "ok" {
                (Err(error()), format!("{source} (failed)"))
            } else if let Some(s) = parse(text("state")) {
                (Ok(s), source)
            } else {
                let s = match action {
                    "off" => PowerState::Off,
                    "on" | "cycle" | "reinstall_now" => PowerState::On,
                    _ => return None,
                };
                (Ok(s), source)
            }
        }
        _ => return None,
    };
    Some(Seen { state, at, source })
}

/// The last known states, by MAC. `None`: the history was searched and says nothing.
#[derive(Default)]
pub struct Known {
    map: Mutex<HashMap<String, Option<Seen>>>,
}

impl Known {
    pub fn new() -> Known {
        Known::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Option<Seen>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes in an event the node's history gets (or a status answer).
    pub fn observe(&self, mac: &str, event: &Value, at: u64) {
        if let Some(seen) = seen_from_event(event, at) {
            self.lock().insert(mac.to_string(), Some(seen));
        }
    }

    /// The last known state; `history` (newest last) is read only the first
    /// time a node is asked about and nothing was observed yet.
    pub fn get_or_load<E>(
        &self,
        mac: &str,
        history: impl FnOnce() -> Result<Vec<crate::inventory::HistoryEntry>, E>,
    ) -> Option<Seen> {
        if let Some(known) = self.lock().get(mac) {
            return known.clone();
        }
        // Outside the lock: a history read is a database query. A failed read
        // is tried again next time.
        let found = history()
            .ok()?
            .iter()
            .rev()
            .find_map(|h| seen_from_event(&h.event, h.at));
        self.lock().entry(mac.to_string()).or_insert(found).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::HistoryEntry;
    use serde_json::json;

    #[test]
    fn events_say_what_the_power_is_and_who_made_it_so() {
        let s = seen_from_event(&json!({"kind": "power_state", "state": "off"}), 5).unwrap();
        assert_eq!(
            (s.state, s.at, s.source.as_str()),
            (Ok(PowerState::Off), 5, "polled")
        );
        let s = seen_from_event(
            &json!({"kind": "power_state", "state": "unreachable", "error": "n1: the BMC at b does not answer"}),
            6,
        )
        .unwrap();
        assert_eq!(s.state, Err("n1: the BMC at b does not answer".into()));
        let s = seen_from_event(
            &json!({"kind": "power", "action": "cycle", "result": "ok", "by": "admin"}),
            7,
        )
        .unwrap();
        assert_eq!(
            (s.state, s.source.as_str()),
            (Ok(PowerState::On), "cycle by admin")
        );
        let s = seen_from_event(
            &json!({"kind": "power", "action": "off", "result": "failed", "error": "no", "by": "ops"}),
            8,
        )
        .unwrap();
        assert_eq!(
            (s.state, s.source.as_str()),
            (Err("no".into()), "off by ops (failed)")
        );
        let s = seen_from_event(
            &json!({"kind": "power", "action": "status", "state": "on", "result": "ok", "by": "v"}),
            9,
        )
        .unwrap();
        assert_eq!(s.state, Ok(PowerState::On));
        assert!(seen_from_event(&json!({"kind": "reinstall_requested"}), 1).is_none());
    }

    #[test]
    fn history_is_read_once_then_observations_win() {
        let k = Known::new();
        let history = || {
            Ok::<_, ()>(vec![
                HistoryEntry {
                    at: 1,
                    event: json!({"kind": "power_state", "state": "on"}),
                },
                HistoryEntry {
                    at: 2,
                    event: json!({"kind": "power", "action": "off", "result": "ok", "by": "a"}),
                },
                HistoryEntry {
                    at: 3,
                    event: json!({"kind": "phone_home"}),
                },
            ])
        };
        let s = k.get_or_load("m", history).unwrap();
        assert_eq!(
            (s.state, s.at),
            (Ok(PowerState::Off), 2),
            "the newest power row"
        );
        let again = k.get_or_load("m", || -> Result<Vec<HistoryEntry>, ()> {
            panic!("history read twice")
        });
        assert_eq!(again.unwrap().at, 2);
        k.observe("m", &json!({"kind": "power_state", "state": "on"}), 10);
        assert_eq!(
            k.get_or_load("m", history).unwrap().state,
            Ok(PowerState::On)
        );
        // Nothing in the history: remembered as nothing.
        assert!(k.get_or_load("x", || Ok::<_, ()>(vec![])).is_none());
        assert!(k
            .get_or_load("x", || -> Result<Vec<HistoryEntry>, ()> {
                panic!("read twice")
            })
            .is_none());
    }
}
