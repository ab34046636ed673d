//! Who streams, who listens: the multicast sessions as a pure state machine
//! (the clock is an argument). One session per image serial at a time; it
//! collects receivers for `wait_secs` after the first one asked (or until
//! `max_receivers` joined), then streams, refusing latecomers, who copy with
//! rsync alone. An ended session stays a while so its receivers can ask what
//! was sent (bytes and SHA-256) and check what they unpacked.

use crate::config::MulticastConfig;
use crate::wire::multicast::MulticastAnswer;

/// How long an ended session's result stays for its receivers to read.
pub const KEEP_ENDED_SECS: u64 = 600;
/// Sessions streaming at once (each takes two UDP ports).
pub const MAX_SESSIONS: usize = 16;
/// udp-sender waits this much longer than the window: receivers joined at
/// the window's last second still have time to start udp-receiver.
pub const SENDER_MARGIN_SECS: u64 = 3;
/// A receiver's slack on top of the start it was told (a slow sender start).
pub const RECEIVER_SLACK_SECS: u64 = 20;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub image: String,
    pub serial: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Joins accepted until `until` (unix seconds).
    Collecting {
        until: u64,
    },
    Streaming {
        since: u64,
    },
    Ended {
        at: u64,
        outcome: Outcome,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Sent { bytes: u64, sha256: String },
    Failed { reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: u64,
    pub key: Key,
    pub port: u16,
    pub opened: u64,
    pub phase: Phase,
    /// Install ids, in the order they joined.
    pub receivers: Vec<String>,
}

/// What the caller must do after [`Sessions::ask`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asked {
    pub answer: MulticastAnswer,
    /// A session was opened by this request: start its sender.
    pub opened: Option<Session>,
}

#[derive(Debug, Default)]
pub struct Sessions {
    sessions: Vec<Session>,
    next_id: u64,
}

impl Sessions {
    pub fn sessions(&self) -> &[Session] {
        &self.sessions
    }

    /// Install `install_id` (of `key`'s serial) asks at `now`: its session's
    /// state if it joined one, else a join, a new session, or no session.
    pub fn ask(&mut self, install_id: &str, key: &Key, now: u64, cfg: &MulticastConfig) -> Asked {
        self.tick(now, cfg);
        if let Some(s) = self
            .sessions
            .iter()
            .rev()
            .find(|s| s.receivers.iter().any(|r| r == install_id))
        {
            return plain(state_answer(s, now));
        }
        let active = self
            .sessions
            .iter_mut()
            .find(|s| &s.key == key && !matches!(s.phase, Phase::Ended { .. }));
        if let Some(s) = active {
            return plain(match s.phase {
                Phase::Collecting { until } => {
                    s.receivers.push(install_id.to_string());
                    joined(s.port, until, now)
                }
                Phase::Streaming { since } => MulticastAnswer::NoSession {
                    reason: format!(
                        "the stream of {} serial {} started {} s ago; a late node copies with rsync",
                        key.image,
                        key.serial,
                        now.saturating_sub(since)
                    ),
                },
                Phase::Ended { .. } => unreachable!("filtered above"),
            });
        }
        let running = self
            .sessions
            .iter()
            .filter(|s| !matches!(s.phase, Phase::Ended { .. }))
            .count();
        let Some(port) = self.free_port(cfg.port_base) else {
            return plain(MulticastAnswer::NoSession {
                reason: format!(
                    "{running} multicast sessions run already (at most {MAX_SESSIONS}); copying with rsync"
                ),
            });
        };
        self.next_id += 1;
        let until = now + cfg.wait_secs;
        let session = Session {
            id: self.next_id,
            key: key.clone(),
            port,
            opened: now,
            phase: Phase::Collecting { until },
            receivers: vec![install_id.to_string()],
        };
        self.sessions.push(session.clone());
        Asked {
            answer: joined(port, until, now),
            opened: Some(session),
        }
    }

    /// Windows that closed (or filled) start streaming; old results go.
    pub fn tick(&mut self, now: u64, cfg: &MulticastConfig) {
        for s in &mut self.sessions {
            if let Phase::Collecting { until } = s.phase {
                if now >= until || s.receivers.len() >= cfg.max_receivers as usize {
                    s.phase = Phase::Streaming { since: now };
                }
            }
        }
        self.sessions
            .retain(|s| !matches!(s.phase, Phase::Ended { at, .. } if now >= at + KEEP_ENDED_SECS));
    }

    /// The sender of session `id` ended.
    pub fn end(&mut self, id: u64, now: u64, outcome: Outcome) {
        if let Some(s) = self.sessions.iter_mut().find(|s| s.id == id) {
            s.phase = Phase::Ended { at: now, outcome };
        }
    }

    /// The lowest port pair no session that is still running holds.
    fn free_port(&self, base: u16) -> Option<u16> {
        (0..MAX_SESSIONS as u16).map(|k| base + 2 * k).find(|p| {
            !self
                .sessions
                .iter()
                .any(|s| s.port == *p && !matches!(s.phase, Phase::Ended { .. }))
        })
    }
}

fn plain(answer: MulticastAnswer) -> Asked {
    Asked {
        answer,
        opened: None,
    }
}

fn joined(port: u16, until: u64, now: u64) -> MulticastAnswer {
    MulticastAnswer::Joined {
        port,
        starts_within_secs: until.saturating_sub(now) + SENDER_MARGIN_SECS + RECEIVER_SLACK_SECS,
    }
}

/// A receiver asking again: where its session is.
fn state_answer(s: &Session, now: u64) -> MulticastAnswer {
    match &s.phase {
        Phase::Collecting { until } => joined(s.port, *until, now),
        Phase::Streaming { .. } => MulticastAnswer::Streaming { retry_secs: 2 },
        Phase::Ended {
            outcome: Outcome::Sent { bytes, sha256 },
            ..
        } => MulticastAnswer::Sent {
            bytes: *bytes,
            sha256: sha256.clone(),
        },
        Phase::Ended {
            outcome: Outcome::Failed { reason },
            ..
        } => MulticastAnswer::Failed {
            reason: reason.clone(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> MulticastConfig {
        MulticastConfig {
            enabled: true,
            wait_secs: 10,
            max_receivers: 3,
            ..Default::default()
        }
    }
    fn key(serial: u64) -> Key {
        Key {
            image: "default".into(),
            serial,
        }
    }

    #[test]
    fn the_first_opens_others_join_within_the_window() {
        let mut s = Sessions::default();
        let a = s.ask("i1", &key(2), 100, &cfg());
        let opened = a.opened.expect("the first request opens a session");
        assert_eq!(opened.port, 9000);
        assert_eq!(
            a.answer,
            MulticastAnswer::Joined {
                port: 9000,
                starts_within_secs: 10 + SENDER_MARGIN_SECS + RECEIVER_SLACK_SECS
            }
        );
        let b = s.ask("i2", &key(2), 109, &cfg());
        assert!(b.opened.is_none(), "one session per serial");
        assert!(
            matches!(b.answer, MulticastAnswer::Joined { port: 9000, starts_within_secs } if starts_within_secs == 1 + SENDER_MARGIN_SECS + RECEIVER_SLACK_SECS)
        );
        assert_eq!(s.sessions()[0].receivers, ["i1", "i2"]);
    }

    #[test]
    fn a_late_joiner_gets_no_session_and_a_reason() {
        let mut s = Sessions::default();
        s.ask("i1", &key(2), 100, &cfg());
        let late = s.ask("i2", &key(2), 110, &cfg());
        assert!(late.opened.is_none());
        match late.answer {
            MulticastAnswer::NoSession { reason } => {
                assert!(reason.contains("started 0 s ago"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.sessions().len(), 1, "no second session while one streams");
    }

    #[test]
    fn a_full_session_streams_at_once() {
        let mut s = Sessions::default();
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            assert!(matches!(
                s.ask(id, &key(1), 100 + i as u64, &cfg()).answer,
                MulticastAnswer::Joined { .. }
            ));
        }
        assert!(matches!(
            s.ask("d", &key(1), 103, &cfg()).answer,
            MulticastAnswer::NoSession { .. }
        ));
    }

    #[test]
    fn receivers_learn_the_outcome_and_a_new_session_may_follow() {
        let mut s = Sessions::default();
        let id = s.ask("i1", &key(2), 100, &cfg()).opened.unwrap().id;
        assert_eq!(
            s.ask("i1", &key(2), 111, &cfg()).answer,
            MulticastAnswer::Streaming { retry_secs: 2 }
        );
        let sent = Outcome::Sent {
            bytes: 42,
            sha256: "ab".into(),
        };
        s.end(id, 120, sent);
        assert_eq!(
            s.ask("i1", &key(2), 121, &cfg()).answer,
            MulticastAnswer::Sent {
                bytes: 42,
                sha256: "ab".into()
            }
        );
        // The stream ended: the next node of that serial opens a new session,
        // on the same ports.
        let next = s.ask("i9", &key(2), 130, &cfg());
        assert_eq!(next.opened.map(|o| o.port), Some(9000));
        // Results are dropped after a while.
        s.tick(120 + KEEP_ENDED_SECS, &cfg());
        assert_eq!(s.sessions().len(), 1);
    }

    #[test]
    fn serials_stream_side_by_side_on_their_own_ports() {
        let mut s = Sessions::default();
        let a = s.ask("i1", &key(1), 100, &cfg()).opened.unwrap();
        let b = s.ask("i2", &key(2), 100, &cfg()).opened.unwrap();
        assert_eq!((a.port, b.port), (9000, 9002));
        let failed = Outcome::Failed {
            reason: "udp-sender: no receiver".into(),
        };
        s.end(a.id, 105, failed);
        assert_eq!(
            s.ask("i1", &key(1), 106, &cfg()).answer,
            MulticastAnswer::Failed {
                reason: "udp-sender: no receiver".into()
            }
        );
    }

    #[test]
    fn sessions_are_bounded() {
        let mut s = Sessions::default();
        for serial in 0..MAX_SESSIONS as u64 {
            assert!(s
                .ask(&format!("i{serial}"), &key(serial), 100, &cfg())
                .opened
                .is_some());
        }
        let over = s.ask("x", &key(999), 100, &cfg());
        assert!(over.opened.is_none());
        assert!(matches!(over.answer, MulticastAnswer::NoSession { .. }));
    }
}
