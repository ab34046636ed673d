//! The dashboard's power column and buttons: each node's last known power
//! state (with when and where it comes from, "no BMC" without one), and on the
//! node page "power on/off/cycle" and "reinstall now" for admins. The buttons
//! are forms with the session's CSRF token, as every dashboard change; they run
//! the same code as the API (`power::act`, `power::reinstall_now_steps`), so
//! the history rows and the errors are the same. A failed BMC call renders the
//! node page with the error, which names the node, the BMC and what to check.

#![allow(clippy::result_large_err)]

use super::admin::lookup;
use super::dashboard::{form_poster, node_page, CsrfForm};
use super::Shared;
use crate::inventory::NodeRecord;
use crate::operators::Role;
use crate::power::known::Seen;
use crate::power::PowerAction;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};

/// What the dashboard shows of a node's power.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PowerView {
    pub has_bmc: bool,
    /// "on", "off", "unknown", "error", "not polled yet" or "no BMC".
    pub state: &'static str,
    /// When it was last known (RFC 3339), or empty.
    pub at: String,
    /// "polled", or the action and who asked.
    pub source: String,
    /// The last call's error, if it failed.
    pub error: String,
}

impl PowerView {
    /// The state as a CSS class suffix ("no-BMC", "not-polled-yet", "on", …).
    pub fn css(&self) -> String {
        self.state.replace(' ', "-")
    }
}

pub fn power_view(has_bmc: bool, seen: Option<&Seen>) -> PowerView {
    let Some(seen) = seen.filter(|_| has_bmc) else {
        return PowerView {
            has_bmc,
            state: if has_bmc { "not polled yet" } else { "no BMC" },
            ..PowerView::default()
        };
    };
    let (state, error) = match &seen.state {
        Ok(s) => (s.as_str(), String::new()),
        Err(e) => ("error", e.clone()),
    };
    PowerView {
        has_bmc,
        state,
        at: crate::clock::rfc3339(seen.at),
        source: seen.source.clone(),
        error,
    }
}

/// The power view of `n` on this server.
/// A node whose BMC another server sharing the database holds (its
/// observations are in the shared history) gets the buttons too: its power
/// requests are relayed to that server.
pub fn power_of(state: &Shared, n: &NodeRecord) -> PowerView {
    let local = state
        .config
        .node_by_mac(&n.mac)
        .is_some_and(|c| c.bmc.is_some());
    let relayed = !local && state.power_relay.is_some();
    let seen = (local || relayed)
        .then(|| {
            tokio::task::block_in_place(|| {
                state
                    .power_seen
                    .get_or_load(&n.mac, || state.inventory.history(&n.mac))
            })
        })
        .flatten();
    // Relayed: only a node some server has observed has a BMC anywhere.
    let has_bmc = local || (relayed && seen.is_some());
    power_view(has_bmc, seen.as_ref())
}

/// `POST /nodes/{id}/power/{on|off|cycle}` from the node page (admin).
pub(super) async fn power_button(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    let who = match form_poster(&state, &headers, form, Role::Admin) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let action = match PowerAction::parse(&action) {
        Some(a) if a != PowerAction::Status => a,
        _ => {
            return (
                StatusCode::NOT_FOUND,
                format!("no power action {action:?}; the buttons are on, off and cycle"),
            )
                .into_response()
        }
    };
    let node = match lookup(&state, &id) {
        Ok(n) => n,
        Err(r) => return r,
    };
    match super::power::act(&state, &who, &node, action).await {
        Ok(_) => Redirect::to(&format!("/nodes/{}", node.mac)).into_response(),
        Err(failure) => node_page(&state, Some(who), &node.mac, Some(failure)),
    }
}

/// `POST /nodes/{id}/reinstall-now` from the node page (admin): marked, next
/// boot PXE, cycled or powered on. A failed power step leaves the node marked
/// and the page says why.
pub(super) async fn reinstall_now_button(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    let who = match form_poster(&state, &headers, form, Role::Admin) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let node = match lookup(&state, &id) {
        Ok(n) => n,
        Err(r) => return r,
    };
    match super::power::reinstall_now_steps(&state, &who, &node).await {
        Ok(_) => Redirect::to(&format!("/nodes/{}", node.mac)).into_response(),
        Err(failure) => node_page(&state, Some(who), &node.mac, Some(failure)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::power::PowerState;

    #[test]
    fn the_view_says_no_bmc_not_polled_state_or_error() {
        assert_eq!(power_view(false, None).state, "no BMC");
        assert_eq!(power_view(true, None).state, "not polled yet");
        let seen = Seen {
            state: Ok(PowerState::Off),
            at: 1_700_000_000,
            source: "off by admin".into(),
        };
        let v = power_view(true, Some(&seen));
        assert_eq!(
            (v.state, v.at.as_str(), v.source.as_str()),
            ("off", "2023-11-14T22:13:20Z", "off by admin")
        );
        let failed = Seen {
            state: Err("n1: the BMC at b does not answer".into()),
            ..seen
        };
        let v = power_view(true, Some(&failed));
        assert_eq!(
            (v.state, v.error.as_str()),
            ("error", "n1: the BMC at b does not answer")
        );
        // A BMC taken out of the config: its old state is not shown.
        assert_eq!(power_view(false, Some(&failed)).state, "no BMC");
    }
}
