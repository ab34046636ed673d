//! The multicast first install (`[install] multicast`): the plan says the
//! server may stream the image once to every node installing it at the same
//! time; the installer asks to join (`POST /api/v1/installs/{id}/multicast`
//! with its install token), receives a tar of the serial's tree with
//! udpcast's `udp-receiver`, unpacks it onto the new root, asks again for the
//! stream's SHA-256 and then runs the normal rsync copy, which finds almost
//! nothing left to send. Anything that goes wrong costs a bigger rsync only.

use serde::{Deserialize, Serialize};

/// udpcast's rendezvous address, given to udp-sender and udp-receiver alike:
/// the all-hosts group, link-local and never routed. udpcast's default is the
/// interface's broadcast address, which an interface configured without one
/// (`ip addr add` without `brd`) lacks, and then the two never meet.
pub const RDV_ADDRESS: &str = "224.0.0.1";

/// In the plan when the server offers multicast for this install.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct MulticastPlan {
    /// Seconds the server collects receivers after the first one joined.
    pub wait_secs: u64,
}

/// The answer to `POST /api/v1/installs/{id}/multicast`. The first call joins
/// (or learns there is no session to join); a receiver calls again once its
/// `udp-receiver` has ended, to learn what the server sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "multicast", rename_all = "snake_case")]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub enum MulticastAnswer {
    /// Joined: run `udp-receiver --portbase {port}`; the stream starts within
    /// `starts_within_secs` (the server's collect window, plus a margin).
    Joined { port: u16, starts_within_secs: u64 },
    /// No session this install can join (the stream for its serial has
    /// started, too many receivers, multicast off): copy with rsync alone.
    NoSession { reason: String },
    /// This install's session is still streaming: ask again in `retry_secs`.
    Streaming { retry_secs: u64 },
    /// The stream ended: `bytes` of tar whose SHA-256 is `sha256` (hex) were
    /// sent. A receiver whose unpacked stream hashes otherwise discards it.
    Sent { bytes: u64, sha256: String },
    /// The server's sender failed (`reason`): discard what arrived.
    Failed { reason: String },
}

/// The stream's SHA-256 as both ends write it ([`MulticastAnswer::Sent`]): lower-case hex.
pub fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}
