//! The dashboard: server-rendered pages (complete without JavaScript) with a
//! little JavaScript that follows `/api/v1/events` for live progress.

use super::admin::{image_list, is_admin};
use super::Shared;
use crate::inventory::{NodeRecord, NodeState};
use askama::Template;
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
        .route("/images", get(images))
        .route("/login", get(login_page).post(login))
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

/// Stage, percent, bytes and elapsed time of a running install; the page's
/// JavaScript builds the same text from live events.
pub fn progress_text(n: &NodeRecord, now: u64) -> String {
    if n.state != NodeState::Installing {
        return String::new();
    }
    let mut t = format!("{} {}%", n.stage.as_deref().unwrap_or(""), percent(n));
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
            error: n.last_error.clone().unwrap_or_default(),
            installs: n.installs,
        }
    }
}

#[derive(Template)]
#[template(path = "index.html")]
struct IndexPage {
    nodes: Vec<NodeView>,
}

#[derive(Template)]
#[template(path = "node.html")]
struct NodePage {
    n: NodeView,
    console: Vec<String>,
    plan: Option<String>,
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
    images: Vec<ImageView>,
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    ok: bool,
    failed: bool,
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
        n.state = NodeState::Installed;
        assert_eq!(progress_text(&n, 142), "");
        assert_eq!(human_bytes(512), "512 B");
    }
}

async fn index(State(state): State<Shared>) -> Response {
    match tokio::task::block_in_place(|| state.inventory.list()) {
        Ok(nodes) => render(IndexPage {
            nodes: nodes.iter().map(NodeView::from).collect(),
        }),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

async fn node(State(state): State<Shared>, Path(id): Path<String>) -> Response {
    let found = tokio::task::block_in_place(|| {
        let n = state.inventory.find(&id)?;
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
        format!(
            "install {id}\nimage {} serial {}\nlayout root {} MiB, swap {} MiB",
            n.image,
            n.serial.unwrap_or(0),
            n.root_mib.unwrap_or(1024),
            n.swap_mib.unwrap_or(2048)
        )
    });
    render(NodePage {
        console: n.console_tail.clone(),
        n: NodeView::from(&n),
        plan,
        history: history
            .into_iter()
            .rev()
            .take(200)
            .map(|h| (utc(h.at), h.event.to_string()))
            .collect(),
    })
}

async fn reinstall(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if !is_admin(&state, &headers) {
        return Redirect::to("/login").into_response();
    }
    let done = tokio::task::block_in_place(|| {
        let n = state
            .inventory
            .find(&id)?
            .ok_or_else(|| crate::inventory::InventoryError::UnknownNode(id.clone()))?;
        state.inventory.request_reinstall(&n.mac)
    });
    match done {
        Ok(n) => Redirect::to(&format!("/nodes/{}", n.mac)).into_response(),
        Err(e) => (StatusCode::CONFLICT, e.to_string()).into_response(),
    }
}

async fn images(State(state): State<Shared>) -> Response {
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
    render(ImagesPage { images })
}

async fn login_page() -> Response {
    render(LoginPage {
        ok: false,
        failed: false,
    })
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(State(state): State<Shared>, Form(f): Form<LoginForm>) -> Response {
    let mut h = HeaderMap::new();
    if let Ok(v) = format!("Bearer {}", f.token.trim()).parse() {
        h.insert(header::AUTHORIZATION, v);
    }
    if !is_admin(&state, &h) {
        return render(LoginPage {
            ok: false,
            failed: true,
        });
    }
    let cookie = format!(
        "rollout_admin={}; Path=/; HttpOnly; SameSite=Strict",
        f.token.trim()
    );
    (
        [(header::SET_COOKIE, cookie)],
        render(LoginPage {
            ok: true,
            failed: false,
        }),
    )
        .into_response()
}
