//! Who is asking, and may they? A request names its operator by
//! `Authorization: Bearer TOKEN` (the admin token or an operator's, for API
//! clients) or by the dashboard's `rollout_session` cookie (a random id that
//! sign-in exchanged for the token; the token itself never goes in a cookie).
//!
//! Sessions live in memory: a restart ends them all (sign in again). They expire
//! after `server.session_lifetime` seconds, and die with their operator: every
//! request looks the operator up again, so a revoked token's sessions stop too.
//! A change made with a session cookie must also carry the session's CSRF token
//! (a form field, or `X-CSRF-Token` for API calls): a browser sends the cookie
//! on its own, never that token. Bearer calls need none, since browsers never
//! add an Authorization header by themselves.

// Checks return a ready Response as the error, as axum handlers do (see admin.rs).
#![allow(clippy::result_large_err)]

use super::{error, Shared};
use crate::operators::{token_hash, Role, ADMIN_NAME};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use std::collections::HashMap;
use std::sync::Mutex;

pub const SESSION_COOKIE: &str = "rollout_session";
pub const CSRF_HEADER: &str = "x-csrf-token";
/// More live sessions than this and the oldest goes: sign-ins cannot fill memory.
const MAX_SESSIONS: usize = 4096;

/// Whose credential a session was made from, checked again at each use.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Holder {
    Admin,
    /// The operator's token hash: a revoked token (even one re-added under the
    /// same name) does not match any more.
    Operator(String),
}

#[derive(Debug, Clone)]
pub struct Session {
    pub id: String,
    pub csrf: String,
    holder: Holder,
    expires: u64,
}

/// The dashboard's sign-ins, in memory.
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
    lifetime: u64,
}

impl Sessions {
    pub fn new(lifetime_secs: u64) -> Sessions {
        Sessions {
            map: Mutex::new(HashMap::new()),
            lifetime: lifetime_secs,
        }
    }

    pub fn lifetime(&self) -> u64 {
        self.lifetime
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn create(&self, holder: Holder, now: u64) -> Session {
        let s = Session {
            id: crate::inventory::random_hex(32),
            csrf: crate::inventory::random_hex(32),
            holder,
            expires: now + self.lifetime,
        };
        let mut map = self.lock();
        map.retain(|_, v| v.expires > now);
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map.values().min_by_key(|v| v.expires).map(|v| v.id.clone()) {
                map.remove(&oldest);
            }
        }
        map.insert(s.id.clone(), s.clone());
        s
    }

    fn get(&self, id: &str, now: u64) -> Option<Session> {
        let mut map = self.lock();
        match map.get(id) {
            Some(s) if s.expires > now => Some(s.clone()),
            Some(_) => {
                map.remove(id);
                None
            }
            None => None,
        }
    }

    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
    }
}

/// The operator behind a request.
#[derive(Debug, Clone)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    /// Set when the request came with a session cookie (then changes need its CSRF token).
    pub session: Option<Session>,
}

/// Byte-by-byte comparison whose time does not depend on where the first difference is.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The name and role a token stands for: the admin token, or a current operator's.
/// `Err` is the store failing (503), `Ok(None)` a token nobody holds.
fn holder_of(state: &Shared, token: &str) -> Result<Option<(Holder, String, Role)>, Response> {
    if same_secret(token, &state.admin_token) {
        return Ok(Some((Holder::Admin, ADMIN_NAME.into(), Role::Admin)));
    }
    let hash = token_hash(token);
    let found = tokio::task::block_in_place(|| state.operators.by_hash(&hash));
    match found {
        Ok(Some(op)) => Ok(Some((Holder::Operator(hash), op.name, op.role))),
        Ok(None) => Ok(None),
        Err(e) => Err(error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
    }
}

fn unknown_token() -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        "this token is not valid: mistyped, or revoked (`rollout operator list` shows the current operators)",
    )
}

/// Who sent the request: `Ok(None)` when it carries no credential at all (or
/// only an expired or ended session); a Bearer token that matches nobody is an
/// error (401) rather than anonymous.
pub fn authenticate(state: &Shared, headers: &HeaderMap) -> Result<Option<Principal>, Response> {
    if let Some(token) = super::api::bearer(headers) {
        return match holder_of(state, token)? {
            Some((_, name, role)) => Ok(Some(Principal {
                name,
                role,
                session: None,
            })),
            None => Err(unknown_token()),
        };
    }
    let Some(id) = cookie(headers, SESSION_COOKIE) else {
        return Ok(None);
    };
    let Some(session) = state.sessions.get(id, crate::clock::now_unix()) else {
        return Ok(None);
    };
    let current = match &session.holder {
        Holder::Admin => Some((ADMIN_NAME.to_string(), Role::Admin)),
        Holder::Operator(hash) => {
            match tokio::task::block_in_place(|| state.operators.by_hash(hash)) {
                Ok(op) => op.map(|o| (o.name, o.role)),
                Err(e) => return Err(error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
            }
        }
    };
    match current {
        Some((name, role)) => Ok(Some(Principal {
            name,
            role,
            session: Some(session),
        })),
        None => {
            // Revoked: the session goes with the credential.
            state.sessions.remove(&session.id);
            Ok(None)
        }
    }
}

/// Exchanges a token for a new session; `None` when the token is nobody's.
pub fn sign_in(state: &Shared, token: &str) -> Result<Option<(Session, String, Role)>, Response> {
    Ok(holder_of(state, token.trim())?.map(|(holder, name, role)| {
        (
            state.sessions.create(holder, crate::clock::now_unix()),
            name,
            role,
        )
    }))
}

/// `Set-Cookie` for a session: HttpOnly (no script reads it), SameSite=Strict (no
/// other site's page sends it), Path=/. Not `Secure`: rollout serves plain HTTP
/// on the provisioning network, where a Secure cookie would never come back.
pub fn session_cookie(session: &Session, lifetime: u64) -> String {
    format!(
        "{SESSION_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={lifetime}",
        session.id
    )
}

pub fn clear_session_cookie() -> String {
    format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// The refusal for a role that is too small, naming the role needed and the one held.
pub fn role_refusal(p: &Principal, needed: Role) -> String {
    format!("needs role {needed}; {} has {}", p.name, p.role)
}

fn no_credential(state: &Shared) -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        format!(
            "this call needs a credential: send `Authorization: Bearer TOKEN` with the admin token ({}/admin.token on the server) or an operator's (`rollout operator add NAME --role read|maintain|admin`)",
            state.config.state_dir.display()
        ),
    )
}

/// For reads: any role, or nobody when `server.anonymous_read` allows it.
pub fn require_read(state: &Shared, headers: &HeaderMap) -> Result<Option<Principal>, Response> {
    match authenticate(state, headers)? {
        Some(p) => Ok(Some(p)),
        None if state.config.server.anonymous_read => Ok(None),
        None => Err(no_credential(state)),
    }
}

/// Checks a change's CSRF token when the change came with a session cookie.
pub fn check_csrf(p: &Principal, given: Option<&str>) -> Result<(), Response> {
    match &p.session {
        None => Ok(()),
        Some(s) if given.is_some_and(|g| same_secret(g, &s.csrf)) => Ok(()),
        Some(_) => Err(error(
            StatusCode::FORBIDDEN,
            "missing or wrong CSRF token: a change made with the dashboard's session cookie must come from a dashboard form (or send X-CSRF-Token); reload the page and try again",
        )),
    }
}

/// Allows `role` or more; `csrf` is the token the request carried (checked when
/// it came with a session cookie). 401 without a credential, 403 for a smaller role.
pub fn require(
    state: &Shared,
    headers: &HeaderMap,
    needed: Role,
    csrf: Option<&str>,
) -> Result<Principal, Response> {
    let p = authenticate(state, headers)?.ok_or_else(|| no_credential(state))?;
    check_csrf(&p, csrf)?;
    if p.role < needed {
        return Err(error(StatusCode::FORBIDDEN, role_refusal(&p, needed)));
    }
    Ok(p)
}

/// [`require`] for API calls: the CSRF token, if any, is in `X-CSRF-Token`.
pub fn require_api(
    state: &Shared,
    headers: &HeaderMap,
    needed: Role,
) -> Result<Principal, Response> {
    let csrf = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
    require(state, headers, needed, csrf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_and_end() {
        let s = Sessions::new(10);
        let a = s.create(Holder::Admin, 100);
        assert_ne!(a.id, a.csrf);
        assert_eq!(a.id.len(), 64);
        assert!(s.get(&a.id, 109).is_some());
        assert!(s.get(&a.id, 110).is_none(), "expired at its lifetime");
        let b = s.create(Holder::Admin, 200);
        s.remove(&b.id);
        assert!(s.get(&b.id, 201).is_none(), "ended by logout");
        assert!(s.get("nosuch", 201).is_none());
    }

    #[test]
    fn sessions_are_bounded() {
        let s = Sessions::new(1000);
        let first = s.create(Holder::Admin, 1);
        for i in 0..MAX_SESSIONS {
            s.create(Holder::Admin, 2 + i as u64);
        }
        assert!(s.lock().len() <= MAX_SESSIONS);
        assert!(s.get(&first.id, 3).is_none(), "the oldest made room");
    }

    #[test]
    fn csrf_is_needed_with_a_session_only() {
        let sessions = Sessions::new(10);
        let session = sessions.create(Holder::Admin, 0);
        let mut p = Principal {
            name: "admin".into(),
            role: Role::Admin,
            session: None,
        };
        assert!(
            check_csrf(&p, None).is_ok(),
            "bearer calls need no CSRF token"
        );
        p.session = Some(session.clone());
        assert!(check_csrf(&p, None).is_err());
        assert!(check_csrf(&p, Some("wrong")).is_err());
        assert!(check_csrf(&p, Some(&session.csrf)).is_ok());
    }

    #[test]
    fn cookies_are_found_by_exact_name_and_refusals_name_both_roles() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            "x_rollout_session=no; rollout_session=abc".parse().unwrap(),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("abc"));
        let p = Principal {
            name: "bob".into(),
            role: Role::Read,
            session: None,
        };
        assert_eq!(
            role_refusal(&p, Role::Maintain),
            "needs role maintain; bob has read"
        );
        let c = session_cookie(&Sessions::new(5).create(Holder::Admin, 0), 5);
        for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=5"] {
            assert!(c.contains(attr), "{c}");
        }
    }
}
