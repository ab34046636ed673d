//! The dashboard: server-rendered pages (complete without JavaScript) with a
//! little JavaScript that follows `/api/v1/events` for live progress.
//!
//! Sign-in at `/login` exchanges a token (the admin's or an operator's) for a
//! session cookie (see `auth`); pages need one unless `server.anonymous_read`,
//! and every form carries the session's CSRF token.

// Checks return a ready Response as the error, as axum handlers do (see admin.rs).
#![allow(clippy::result_large_err)]

use super::auth::{self, Principal};
use super::dashboard_power::{power_of, PowerView};
use super::images_api::image_list;
use super::Shared;
use crate::inventory::{NodeRecord, NodeState, OperatorAction};
use crate::operators::Role;
use askama::Template;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/", get(index))
        .route("/nodes/{id}", get(node))
        .route("/nodes/{id}/reinstall", post(reinstall))
        .route(
            "/nodes/{id}/power/{action}",
            post(super::dashboard_power::power_button),
        )
        .route(
            "/nodes/{id}/reinstall-now",
            post(super::dashboard_power::reinstall_now_button),
        )
        .route("/images", get(images))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
}

/// The signed-in operator as the page header shows them; `csrf` goes in every form.
pub struct UserView {
    pub name: String,
    pub role: &'static str,
    pub csrf: String,
    /// Signed in with the admin role (the power buttons are theirs).
    pub admin: bool,
}

impl UserView {
    fn of(p: &Option<Principal>) -> Option<UserView> {
        let p = p.as_ref()?;
        Some(UserView {
            name: p.name.clone(),
            role: p.role.as_str(),
            admin: p.role >= Role::Admin,
            // A Bearer-authenticated page view has no session, so no form of it can post.
            csrf: p
                .session
                .as_ref()
                .map(|s| s.csrf.clone())
                .unwrap_or_default(),
        })
    }
}

/// Who may see a page: anyone signed in (any role), or everybody with
/// `server.anonymous_read`; others are sent to the sign-in page.
fn viewer(state: &Shared, headers: &HeaderMap) -> Result<Option<Principal>, Response> {
    match auth::authenticate(state, headers)? {
        Some(p) => Ok(Some(p)),
        None if state.config.server.anonymous_read => Ok(None),
        None => Err(Redirect::to("/login").into_response()),
    }
}

/// What a row shows; computed here so templates stay free of logic.
pub struct NodeView {
    pub mac: String,
    pub hostname: String,
    pub ip: String,
    pub firmware: String,
    pub image: String,
    pub serial: Option<u64>,
    pub state: &'static str,
    pub percent: u64,
    pub progress_text: String,
    pub error: String,
    pub installs: u64,
    pub power: PowerView,
}

pub fn percent(n: &NodeRecord) -> u64 {
    match n.state {
        NodeState::Installed => 100,
        _ if n.total_bytes > 0 => (n.done_bytes.min(n.total_bytes) * 100) / n.total_bytes,
        _ => 0,
    }
}

/// `1.5 GiB`-style sizes for people.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Stage, percent, bytes, elapsed time and ETA of a running install; the
/// page's JavaScript builds the same text from live events.
pub fn progress_text(n: &NodeRecord, now: u64) -> String {
    if n.state != NodeState::Installing {
        return String::new();
    }
    let mut t = match n.queue_text() {
        Some(q) => q,
        None => format!("{} {}%", n.stage.as_deref().unwrap_or(""), percent(n)),
    };
    if n.total_bytes > 0 {
        t.push_str(&format!(
            " · {} / {}",
            human_bytes(n.done_bytes),
            human_bytes(n.total_bytes)
        ));
    }
    if let Some(start) = n.install_started {
        t.push_str(&format!(" · {}s", now.saturating_sub(start)));
    }
    if let Some(eta) = n.eta_secs {
        let left = crate::inventory::progress::human_duration(eta);
        t.push_str(&format!(" · ETA {left}"));
    }
    t
}

impl From<&NodeRecord> for NodeView {
    fn from(n: &NodeRecord) -> NodeView {
        let pct = percent(n);
        NodeView {
            mac: n.mac.clone(),
            hostname: n.hostname.clone(),
            ip: n.ip.clone().unwrap_or_default(),
            firmware: n.firmware.clone().unwrap_or_default(),
            image: n.image.clone(),
            serial: n.serial,
            state: n.state.as_str(),
            percent: pct,
            progress_text: progress_text(n, crate::clock::now_unix()),
            error: n.trouble(),
            installs: n.installs,
            power: PowerView::default(),
        }
    }
}

#[derive(Template)]
#[template(path = "index.html")]
struct IndexPage {
    user: Option<UserView>,
    nodes: Vec<NodeView>,
}

#[derive(Template)]
#[template(path = "node.html")]
struct NodePage {
    user: Option<UserView>,
    n: NodeView,
    /// The power and reinstall-now buttons: an admin's session, a node with a BMC.
    power_buttons: bool,
    /// A failed button's error (the BMC's, naming node, BMC and what to check).
    failure: String,
    console: Vec<String>,
    plan: Option<String>,
    /// The installer's hardware report, one (label, value) per line.
    hardware: Vec<(String, String)>,
    hardware_at: String,
    history: Vec<(String, String)>,
}

pub struct ImageView {
    name: String,
    published: String,
    serials: Vec<(String, String, String, String)>,
}

#[derive(Template)]
#[template(path = "images.html")]
struct ImagesPage {
    user: Option<UserView>,
    images: Vec<ImageView>,
    /// On a mirror: where from and what it is doing (as `rollout image list` says).
    mirror: Option<String>,
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    user: Option<UserView>,
    failed: bool,
    /// The sign-in form's own CSRF token (also in the `rollout_login` cookie).
    login_csrf: String,
}

fn render(t: impl Template) -> Response {
    match t.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("template error: {e}"),
        )
            .into_response(),
    }
}

fn utc(secs: u64) -> String {
    crate::clock::rfc3339(secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::Source;

    #[test]
    fn progress_text_has_stage_percent_bytes_and_elapsed() {
        let mut n = NodeRecord::new("m", "h", "i", Source::Api, NodeState::Installing);
        n.stage = Some("copy".into());
        n.done_bytes = 3 << 29;
        n.total_bytes = 3 << 30;
        n.install_started = Some(100);
        assert_eq!(progress_text(&n, 142), "copy 50% · 1.5 GiB / 3.0 GiB · 42s");
        n.eta_secs = Some(245);
        assert_eq!(
            progress_text(&n, 142),
            "copy 50% · 1.5 GiB / 3.0 GiB · 42s · ETA 4m05s"
        );
        n.state = NodeState::Installed;
        assert_eq!(progress_text(&n, 142), "");
        assert_eq!(human_bytes(512), "512 B");
    }

    #[test]
    fn a_queued_install_shows_its_place() {
        let mut n = NodeRecord::new("m", "h", "i", Source::Api, NodeState::Installing);
        n.stage = Some("copy".into());
        n.install_started = Some(100);
        n.queue = Some([3, 10]);
        assert_eq!(progress_text(&n, 142), "queued, position 3 of 10 · 42s");
        assert_eq!(n.stage_text(), "queued, position 3 of 10");
        n.queue = None;
        assert_eq!(n.stage_text(), "copy");
    }
}

async fn index(State(state): State<Shared>, headers: HeaderMap) -> Response {
    let who = match viewer(&state, &headers) {
        Ok(p) => p,
        Err(r) => return r,
    };
    match tokio::task::block_in_place(|| state.inventory.list()) {
        Ok(nodes) => render(IndexPage {
            user: UserView::of(&who),
            nodes: nodes.iter().map(|n| node_view(&state, n)).collect(),
        }),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

/// A node's row, its power state included.
fn node_view(state: &Shared, n: &NodeRecord) -> NodeView {
    NodeView {
        power: power_of(state, n),
        ..NodeView::from(n)
    }
}

async fn node(State(state): State<Shared>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let who = match viewer(&state, &headers) {
        Ok(p) => p,
        Err(r) => return r,
    };
    node_page(&state, who, &id, None)
}

/// The node page for `who`; `failure` (a button's failed BMC call) is shown on
/// it and sets the status.
pub(super) fn node_page(
    state: &Shared,
    who: Option<Principal>,
    id: &str,
    failure: Option<(StatusCode, String)>,
) -> Response {
    let found = tokio::task::block_in_place(|| {
        let n = state.inventory.find(id)?;
        let h = match &n {
            Some(n) => state.inventory.history(&n.mac)?,
            None => vec![],
        };
        Ok::<_, crate::inventory::InventoryError>((n, h))
    });
    let (n, history) = match found {
        Ok((Some(n), h)) => (n, h),
        Ok((None, _)) => return (StatusCode::NOT_FOUND, format!("no node {id:?}")).into_response(),
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    };
    let plan = n.install_id.as_ref().map(|id| {
        let layout = state.config.layout_for(&n.mac, n.root_mib, n.swap_mib);
        let parts: Vec<String> = layout
            .partitions
            .iter()
            .map(|p| format!("{} {}", p.size, p.content.describe()))
            .chain(layout.mounts.iter().map(|m| match &m.kind {
                crate::wire::MountKind::Nfs { source } => format!("{} nfs {source}", m.mount),
                crate::wire::MountKind::Tmpfs => format!("{} tmpfs", m.mount),
            }))
            .collect();
        format!(
            "install {id}\nimage {} serial {}\nlayout {}: {}",
            n.image,
            n.serial.unwrap_or(0),
            layout.name,
            parts.join(", ")
        )
    });
    let user = UserView::of(&who);
    let view = node_view(state, &n);
    let (status, failure) = failure.unwrap_or((StatusCode::OK, String::new()));
    let page = render(NodePage {
        power_buttons: view.power.has_bmc
            && user.as_ref().is_some_and(|u| u.admin && !u.csrf.is_empty()),
        user,
        failure,
        console: n.console_tail.clone(),
        n: view,
        plan,
        hardware: n
            .hardware
            .as_ref()
            .map(crate::inventory::hwquery::lines)
            .unwrap_or_default(),
        hardware_at: n.hardware_at.map(utc).unwrap_or_default(),
        history: history
            .into_iter()
            .rev()
            .take(200)
            .map(|h| (utc(h.at), h.event.to_string()))
            .collect(),
    });
    (status, page).into_response()
}

#[derive(Deserialize)]
pub(super) struct CsrfForm {
    csrf: Option<String>,
}

/// The operator behind a dashboard form post, checked for its CSRF token and
/// `needed`; not signed in → the sign-in page. A body that is no form at all
/// counts as a form without a CSRF token (refused 403 with a session).
pub(super) fn form_poster(
    state: &Shared,
    headers: &HeaderMap,
    form: Result<Form<CsrfForm>, FormRejection>,
    needed: Role,
) -> Result<Principal, Response> {
    let Some(p) = auth::authenticate(state, headers)? else {
        return Err(Redirect::to("/login").into_response());
    };
    let csrf = form.ok().and_then(|Form(f)| f.csrf);
    auth::check_csrf(&p, csrf.as_deref())?;
    if p.role < needed {
        return Err((StatusCode::FORBIDDEN, auth::role_refusal(&p, needed)).into_response());
    }
    Ok(p)
}

async fn reinstall(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    let who = match form_poster(&state, &headers, form, Role::Maintain) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let done = tokio::task::block_in_place(|| {
        let n = state
            .inventory
            .find(&id)?
            .ok_or_else(|| crate::inventory::InventoryError::UnknownNode(id.clone()))?;
        state
            .inventory
            .operator_action(&n.mac, OperatorAction::Reinstall, &who.name)
    });
    match done {
        Ok(n) => {
            tracing::info!(operator = %who.name, role = %who.role, action = "reinstall", mac = %n.mac, hostname = %n.hostname, "operator change (dashboard)");
            Redirect::to(&format!("/nodes/{}", n.mac)).into_response()
        }
        Err(e) => (StatusCode::CONFLICT, e.to_string()).into_response(),
    }
}

async fn images(State(state): State<Shared>, headers: HeaderMap) -> Response {
    let who = match viewer(&state, &headers) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let images = image_list(&state.config.state_dir)
        .into_iter()
        .map(|i| ImageView {
            name: i["name"].as_str().unwrap_or("").to_string(),
            published: i["published"]
                .as_u64()
                .map(|s| s.to_string())
                .unwrap_or_else(|| "none".into()),
            serials: i["serials"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|s| {
                            let field = |k: &str| match &s[k] {
                                serde_json::Value::Null => String::new(),
                                serde_json::Value::String(v) => v.clone(),
                                v => v.to_string(),
                            };
                            (
                                field("serial"),
                                field("created"),
                                field("size_bytes"),
                                field("note"),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect();
    let mirror =
        state.config.mirroring.mirror_from.as_ref().map(|from| {
            match super::mirror::status(&state) {
                Ok(s) => {
                    let synced = s.last_synced.as_deref().unwrap_or("never");
                    format!(
                        "mirror of {from}: {} (as of {}; last in step {synced})",
                        s.state, s.updated
                    )
                }
                Err((_, why)) => format!("mirror of {from}: {why}"),
            }
        });
    render(ImagesPage {
        user: UserView::of(&who),
        images,
        mirror,
    })
}

/// The sign-in form's CSRF cookie: a random value the form repeats, so another
/// site cannot post a sign-in (it can neither read nor set this cookie).
const LOGIN_COOKIE: &str = "rollout_login";

async fn login_page(State(state): State<Shared>, headers: HeaderMap) -> Response {
    let who = auth::authenticate(&state, &headers).unwrap_or(None);
    login_form(UserView::of(&who), false)
}

fn login_form(user: Option<UserView>, failed: bool) -> Response {
    let login_csrf = crate::inventory::random_hex(16);
    let cookie = format!("{LOGIN_COOKIE}={login_csrf}; Path=/login; HttpOnly; SameSite=Strict");
    let status = if failed {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::OK
    };
    (
        status,
        [(header::SET_COOKIE, cookie)],
        render(LoginPage {
            user,
            failed,
            login_csrf,
        }),
    )
        .into_response()
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
    csrf: Option<String>,
}

async fn login(
    State(state): State<Shared>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    let expected = auth::cookie(&headers, LOGIN_COOKIE).unwrap_or("");
    let given = f.csrf.as_deref().unwrap_or("");
    if expected.is_empty() || !auth::same_secret(expected, given) {
        return (
            StatusCode::FORBIDDEN,
            "missing or wrong CSRF token on the sign-in form; open /login and sign in from there",
        )
            .into_response();
    }
    let (session, name, role) = match auth::sign_in(&state, &f.token) {
        Ok(Some(s)) => s,
        Ok(None) => return login_form(None, true),
        Err(r) => return r,
    };
    tracing::info!(operator = %name, %role, "dashboard sign-in");
    let user = Some(UserView {
        name,
        admin: role >= Role::Admin,
        role: role.as_str(),
        csrf: session.csrf.clone(),
    });
    (
        [(
            header::SET_COOKIE,
            auth::session_cookie(&session, state.sessions.lifetime()),
        )],
        render(LoginPage {
            user,
            failed: false,
            login_csrf: String::new(),
        }),
    )
        .into_response()
}

/// Ends the session on the server (the old cookie is refused from now on) and clears it.
async fn logout(
    State(state): State<Shared>,
    headers: HeaderMap,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    let who = match form_poster(&state, &headers, form, Role::Read) {
        Ok(p) => p,
        Err(r) => return r,
    };
    if let Some(s) = &who.session {
        state.sessions.remove(&s.id);
        tracing::info!(operator = %who.name, "dashboard sign-out");
    }
    (
        [(header::SET_COOKIE, auth::clear_session_cookie())],
        Redirect::to("/login"),
    )
        .into_response()
}
