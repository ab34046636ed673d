//! The multicast first install (`[install] multicast`): one udpcast stream of
//! a serial's tree for every node that installs it at the same time.
//! [`session`] decides who streams and who listens (pure), [`sender`] runs
//! tar into udp-sender; [`Multicast`] ties them to the clock, threads, the
//! log and `/metrics`. The installer side is `initramfs/src/multicast.rs`.

pub mod sender;
pub mod session;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tracing::{info, warn};

use crate::config::MulticastConfig;
use crate::wire::multicast::MulticastAnswer;
use session::{Key, Outcome, Sessions};

pub struct Multicast {
    cfg: MulticastConfig,
    /// The provisioning interface (`server.interface`); none: no streams.
    interface: Option<String>,
    sessions: Mutex<Sessions>,
    metrics: Arc<crate::metrics::Metrics>,
}

/// One install's request: which serial, from which tree, minus what.
pub struct Request<'a> {
    pub install_id: &'a str,
    pub hostname: &'a str,
    pub image: &'a str,
    pub serial: u64,
    pub root: PathBuf,
    pub excludes: Vec<String>,
}

impl Multicast {
    pub fn new(
        cfg: MulticastConfig,
        interface: Option<String>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Multicast {
        Multicast {
            cfg,
            interface,
            sessions: Mutex::default(),
            metrics,
        }
    }

    pub fn enabled(&self) -> bool {
        self.cfg.enabled
    }

    /// An install asks to join (or, once joined, what was sent).
    pub fn ask(self: &Arc<Self>, req: Request<'_>) -> MulticastAnswer {
        if !self.cfg.enabled {
            return MulticastAnswer::NoSession {
                reason: "multicast is off on this server ([install] multicast)".into(),
            };
        }
        let Some(interface) = self.interface.clone() else {
            return MulticastAnswer::NoSession {
                reason: "server.interface is not set: no interface to stream on".into(),
            };
        };
        let key = Key {
            image: req.image.to_string(),
            serial: req.serial,
        };
        let now = crate::clock::now_unix();
        let asked = self.sessions.lock().unwrap_or_else(|p| p.into_inner()).ask(
            req.install_id,
            &key,
            now,
            &self.cfg,
        );
        match &asked.answer {
            MulticastAnswer::Joined { port, .. } => {
                info!(
                    hostname = req.hostname,
                    image = req.image,
                    serial = req.serial,
                    port,
                    "multicast: receiver joined"
                )
            }
            MulticastAnswer::NoSession { reason } => {
                info!(hostname = req.hostname, "multicast: no session ({reason})")
            }
            _ => {}
        }
        if let Some(s) = asked.opened {
            let spec = sender::SendSpec {
                root: req.root,
                excludes: req.excludes,
                interface,
                port: s.port,
                cfg: self.cfg,
            };
            let me = self.clone();
            std::thread::spawn(move || me.run(s.id, key, spec));
        }
        asked.answer
    }

    /// One session's sender, start to end, its outcome recorded.
    fn run(&self, id: u64, key: Key, spec: sender::SendSpec) {
        info!(image = %key.image, serial = key.serial, port = spec.port, root = %spec.root.display(), "multicast: session opened, collecting receivers for {} s", self.cfg.wait_secs);
        let outcome = match sender::stream(&spec) {
            Ok(sent) => {
                let receivers = self.receivers(id);
                info!(image = %key.image, serial = key.serial, bytes = sent.bytes, receivers, sha256 = %sent.sha256, stats = %sent.stats, "multicast: stream sent");
                self.metrics.multicast_sent_bytes.inc_by(sent.bytes);
                self.metrics.count_multicast("sent");
                Outcome::Sent {
                    bytes: sent.bytes,
                    sha256: sent.sha256,
                }
            }
            Err(reason) => {
                warn!(image = %key.image, serial = key.serial, "multicast: stream failed, its receivers copy with rsync: {reason}");
                self.metrics.count_multicast("failed");
                Outcome::Failed { reason }
            }
        };
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).end(
            id,
            crate::clock::now_unix(),
            outcome,
        );
    }

    fn receivers(&self, id: u64) -> usize {
        let s = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        s.sessions()
            .iter()
            .find(|s| s.id == id)
            .map_or(0, |s| s.receivers.len())
    }
}
