//! Power requests between servers sharing one PostgreSQL (`[store] url`). A
//! node's BMC is in the config of its own rack's server, which is also the
//! one that can reach it; an operator may be signed in to any server. A
//! request for a node this server has no BMC for is written to the
//! `power_requests` table and announced (`NOTIFY rollout_power`); the server
//! whose config holds the BMC claims it (one row update: one claimant), runs
//! it as if asked directly (same bounds, a history row naming who asked) and
//! writes the outcome back, which the asking server answers with.

use crate::config::PgTarget;
use crate::store::pg::{self, PgConn};
use crate::store::StoreError;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CHANNEL: &str = "rollout_power";

/// How long the asker waits for some server to claim a request: every server
/// listening claims within milliseconds, so silence means none has the BMC.
const CLAIM_WITHIN: Duration = Duration::from_secs(3);

/// A request another server made, for this server to run.
#[derive(Debug, Clone)]
pub struct Request {
    pub id: i64,
    pub mac: String,
    /// A [`super::PowerAction`] (`status`, `on`, …) or `reinstall_now`.
    pub action: String,
    /// Who asked, and their role, as the asking server authenticated them.
    pub by: String,
    pub role: String,
}

/// What the server that ran a request answered: an HTTP status and the JSON
/// body (`{"state": …}`, `{"steps": […]}` or `{"error": …}`).
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub status: u16,
    pub body: serde_json::Value,
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{hostname} has no BMC in this server's config, and no other server sharing the database claimed the request within {}s; add bmc = {{ … }} to its [[node]] in the config of its rack's server, and check that server runs", CLAIM_WITHIN.as_secs())]
    Unclaimed { hostname: String },
    #[error("server {server} took the power request for {hostname} but answered nothing within {}s; check that server's log", .waited.as_secs())]
    NoAnswer {
        hostname: String,
        server: String,
        waited: Duration,
    },
}

pub struct PowerRelay {
    target: PgTarget,
    conn: Mutex<PgConn>,
    /// This server, as it claims requests (its HTTP base url: what an
    /// operator reading "taken by" recognises).
    me: String,
    stop: Arc<AtomicBool>,
}

impl PowerRelay {
    pub fn open(target: &PgTarget, me: &str) -> Result<PowerRelay, StoreError> {
        Ok(PowerRelay {
            target: target.clone(),
            conn: Mutex::new(PgConn::open(target)?),
            me: me.to_string(),
            stop: Arc::default(),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, PgConn> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks whichever server holds the BMC of `mac` to run `action`, and
    /// waits for its outcome (up to `answer_within` once claimed). Blocking.
    pub fn ask(
        &self,
        mac: &str,
        hostname: &str,
        action: &str,
        by: (&str, &str),
        answer_within: Duration,
    ) -> Result<Outcome, RelayError> {
        let now = crate::clock::now_unix().min(i64::MAX as u64) as i64;
        let id: i64 = self.conn().with(|c| {
            let mut tx = c.transaction()?;
            // Answered requests are kept a day, for whoever reads the table.
            tx.execute(
                "DELETE FROM power_requests WHERE asked < $1",
                &[&(now - 86_400)],
            )?;
            let id: i64 = tx
                .query_one(
                    "INSERT INTO power_requests (mac, action, by_name, by_role, asked)
                     VALUES ($1, $2, $3, $4, $5) RETURNING id",
                    &[&mac, &action, &by.0, &by.1, &now],
                )?
                .get(0);
            tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &id.to_string()])?;
            tx.commit()?;
            Ok(id)
        })?;
        let asked = Instant::now();
        let mut claimed: Option<(String, Instant)> = None;
        loop {
            let row = self.conn().with(|c| {
                c.query_one(
                    "SELECT claimed_by, status, body FROM power_requests WHERE id = $1",
                    &[&id],
                )
            })?;
            let (by_server, status, body): (Option<String>, Option<i32>, Option<String>) =
                (row.get(0), row.get(1), row.get(2));
            if let (Some(status), Some(body)) = (status, body) {
                return Ok(Outcome {
                    status: u16::try_from(status).unwrap_or(500),
                    body: serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body)),
                });
            }
            match (&claimed, by_server) {
                (None, Some(server)) => claimed = Some((server, Instant::now())),
                (None, None) if asked.elapsed() > CLAIM_WITHIN => {
                    // Withdrawn, so a server starting late does not run it.
                    self.conn().with(|c| {
                        c.execute(
                            "DELETE FROM power_requests WHERE id = $1 AND claimed_by IS NULL",
                            &[&id],
                        )
                    })?;
                    return Err(RelayError::Unclaimed {
                        hostname: hostname.into(),
                    });
                }
                (Some((server, at)), _) if at.elapsed() > answer_within => {
                    return Err(RelayError::NoAnswer {
                        hostname: hostname.into(),
                        server: server.clone(),
                        waited: answer_within,
                    });
                }
                _ => {}
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Takes request `id` if no server has yet: true when it is this server's to run.
    fn claim(&self, id: i64) -> Result<Option<Request>, StoreError> {
        let row = self.conn().with(|c| {
            c.query_opt(
                "UPDATE power_requests SET claimed_by = $2
                 WHERE id = $1 AND claimed_by IS NULL
                 RETURNING mac, action, by_name, by_role",
                &[&id, &self.me],
            )
        })?;
        Ok(row.map(|r| Request {
            id,
            mac: r.get(0),
            action: r.get(1),
            by: r.get(2),
            role: r.get(3),
        }))
    }

    /// The outcome of a request this server ran, for the asker.
    pub fn finish(&self, id: i64, outcome: &Outcome) -> Result<(), StoreError> {
        let body = outcome.body.to_string();
        let status = i32::from(outcome.status);
        self.conn().with(|c| {
            c.execute(
                "UPDATE power_requests SET status = $2, body = $3 WHERE id = $1",
                &[&id, &status, &body],
            )
        })?;
        Ok(())
    }

    /// Runs a listener thread until this relay is dropped: each request for a
    /// node `owns` says this server has the BMC of is claimed and sent to
    /// `run` (which must answer it with [`PowerRelay::finish`]).
    pub fn serve(
        self: &Arc<Self>,
        owns: impl Fn(&str) -> bool + Send + 'static,
        run: tokio::sync::mpsc::UnboundedSender<Request>,
    ) -> std::io::Result<()> {
        let relay = Arc::downgrade(self);
        let (target, stop) = (self.target.clone(), self.stop.clone());
        std::thread::Builder::new()
            .name("rollout-power-listen".into())
            .spawn(move || {
                listen(&target, &stop, |id, mac| {
                    let Some(relay) = relay.upgrade() else { return };
                    if !owns(mac) {
                        return;
                    }
                    match relay.claim(id) {
                        Ok(Some(req)) => drop(run.send(req)),
                        Ok(None) => {}
                        Err(e) => tracing::warn!(%mac, "cannot take a power request: {e}"),
                    }
                })
            })
            .map(drop)
    }
}

impl Drop for PowerRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Calls `on(id, mac)` for every request announced until `stop`, and for
/// those still unclaimed after each (re)connection.
fn listen(target: &PgTarget, stop: &AtomicBool, on: impl Fn(i64, &str)) {
    pg::listen(
        target,
        CHANNEL,
        stop,
        |client| {
            let pending = client.query(
                "SELECT id, mac FROM power_requests WHERE claimed_by IS NULL",
                &[],
            );
            for row in pending.unwrap_or_default() {
                on(row.get(0), row.get::<_, String>(1).as_str());
            }
        },
        |client, payload| {
            let Ok(id) = payload.parse::<i64>() else {
                return;
            };
            if let Ok(Some(row)) =
                client.query_opt("SELECT mac FROM power_requests WHERE id = $1", &[&id])
            {
                on(id, row.get::<_, String>(0).as_str());
            }
        },
    )
}
