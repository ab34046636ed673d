//! `GET /api/v1/openapi.json`: the API described for clients and tools,
//! generated from the handlers' `#[utoipa::path]` attributes and the types they
//! take and answer (`ToSchema`). The route table (`api_table`) stays the one
//! list of what is served; a test holds the document to it in both directions.

use crate::inventory::NodeRecord;
use crate::operators::Role;
use crate::power::{PowerAction, PowerState};
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;
use std::sync::OnceLock;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{OpenApi, ToSchema};

/// The body of every error answer: a message that names the cause and the fix.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
}

/// The refusals of every operator call (`auth::require_read`, `require_api`).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // Describes the answers `auth` builds; never built itself.
pub enum OperatorRefusals {
    /// No credential, or one nobody holds.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// The credential's role is too small (or a session change came without its CSRF token).
    #[response(status = 403)]
    Forbidden(ErrorBody),
}

/// `GET /api/v1/whoami`. `name` is null for an anonymous read (`server.anonymous_read`).
#[derive(Serialize, ToSchema)]
pub struct Whoami {
    pub name: Option<String>,
    pub role: Role,
}

/// `POST /api/v1/operators`: the new credential; `token` is shown only this once.
#[derive(Serialize, ToSchema)]
pub struct IssuedOperator {
    pub name: String,
    pub role: Role,
    pub token: String,
}

/// `GET /api/v1/nodes/{id}/power`.
#[derive(Serialize, ToSchema)]
pub struct PowerStatus {
    /// The node's hostname.
    pub node: String,
    pub state: PowerState,
}

/// `POST /api/v1/nodes/{id}/power`.
#[derive(Serialize, ToSchema)]
pub struct PowerResult {
    /// The node's hostname.
    pub node: String,
    pub action: PowerAction,
    pub state: PowerState,
    /// Always `ok` (a failure is an error answer).
    pub result: String,
}

/// `POST /api/v1/nodes/{id}/reinstall?now=true`: the marked node and the power
/// steps taken (`boot_once_pxe`, then `cycle` or `on`).
#[derive(Serialize, ToSchema)]
pub struct ReinstallNow {
    pub node: NodeRecord,
    pub power: Vec<String>,
    /// Always `ok` (a failure is an error answer).
    pub result: String,
}

/// A reinstall answers the marked node; with `now=true`, also the power steps.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
// Describes what the handler builds with json!; schemathesis checks the two agree.
#[allow(dead_code)]
pub enum ReinstallAnswer {
    Marked(NodeRecord),
    Now(ReinstallNow),
}

/// One image of `GET /api/v1/images`.
#[derive(Serialize, ToSchema)]
pub struct ImageEntry {
    pub name: String,
    pub published: Option<u64>,
    pub serials: Vec<ImageSerial>,
}

/// A serial with its metadata, or only its number when its meta.json cannot be read.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
// Describes what the handler builds with json!; schemathesis checks the two agree.
#[allow(dead_code)]
pub enum ImageSerial {
    Meta(crate::images::store::SerialMeta),
    Unreadable(UnreadableSerial),
}

/// A serial whose meta.json cannot be read: only its number.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UnreadableSerial {
    pub serial: u64,
}

/// Security schemes: who may call what.
struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let c = openapi.components.get_or_insert_with(Default::default);
        let bearer = |what: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(what))
                    .build(),
            )
        };
        c.add_security_scheme(
            "operator",
            bearer("The admin token (STATE_DIR/admin.token or server.admin_token) or a named operator's token (`rollout operator add NAME --role read|maintain|admin`). Each operation says the least role it needs: read < maintain < admin; a smaller role gets 403 `needs role R; NAME has R2`, no or a revoked credential 401. Reads are open without one only with server.anonymous_read = true."),
        );
        c.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                super::auth::SESSION_COOKIE,
                "The dashboard's sign-in session; a change made with it must also send the session's `X-CSRF-Token`.",
            ))),
        );
        c.add_security_scheme(
            "node",
            bearer("An installed node's own secret (/etc/rollout/node.secret, written by its installer)."),
        );
        c.add_security_scheme(
            "install",
            bearer("The install token from the node's plan, valid for that install only."),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "rollout API",
        version = "1",
        description = "Operator calls need `Authorization: Bearer <token>` (security scheme `operator`), or the dashboard's session cookie plus `X-CSRF-Token` for changes (`session`). The installer's and nodes' calls (plan, install events, phone-home, image serial and excludes) use their own credentials (`install`, `node`; the plan: the node's lease or its one-time boot secret). Errors are JSON objects with an `error` message that says what to fix; a body over the path's limit gets 413 as plain text."
    ),
    paths(
        super::api::plan,
        super::api::event,
        super::api::slot,
        super::multicast::join,
        super::image_stream::image_tar,
        super::image_stream::root_image,
        super::api::phone_home,
        spec,
        super::admin::list_nodes,
        super::admin::upsert_node,
        super::admin::get_node,
        super::admin::delete_node,
        super::admin::reinstall,
        super::admin::run,
        super::admin::history,
        super::admin::discovered,
        super::admin::approve,
        super::admin::ignore,
        super::images_api::images,
        super::images_api::image_serial,
        super::images_api::image_excludes,
        super::admin::events,
        super::operators::whoami,
        super::operators::list,
        super::operators::add,
        super::operators::revoke,
        super::power::get_power,
        super::power::post_power,
        super::mirror::mirror,
    ),
    modifiers(&Security),
    tags(
        (name = "installer", description = "Calls of the installer and of installed nodes"),
        (name = "nodes", description = "Nodes, discovered machines and their history"),
        (name = "images", description = "Golden images"),
        (name = "operators", description = "Named operator credentials"),
        (name = "power", description = "Power control through the node's BMC"),
    )
)]
pub struct ApiDoc;

/// The document, generated once.
pub fn document() -> &'static serde_json::Value {
    static DOC: OnceLock<serde_json::Value> = OnceLock::new();
    DOC.get_or_init(|| {
        serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serializes")
    })
}

/// This document.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "installer",
    security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", content_type = "application/json", body = Object))
)]
pub async fn spec() -> impl IntoResponse {
    Json(document())
}

/// `(METHOD, path)` of an API operation.
pub type Operation = (String, String);

/// `(METHOD, path)` of every operation a spec documents.
pub fn documented_operations(spec: &serde_json::Value) -> Vec<(String, String)> {
    const METHODS: &[&str] = &[
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];
    let mut ops = vec![];
    for (path, item) in spec["paths"].as_object().into_iter().flatten() {
        for method in item.as_object().into_iter().flat_map(|o| o.keys()) {
            if METHODS.contains(&method.as_str()) {
                ops.push((method.to_uppercase(), path.clone()));
            }
        }
    }
    ops
}

/// How a spec and the router disagree: operations served but not documented,
/// and documented but not served. Both empty when the document is exact.
pub fn spec_mismatches(spec: &serde_json::Value) -> (Vec<Operation>, Vec<Operation>) {
    use std::collections::BTreeSet;
    let documented: BTreeSet<_> = documented_operations(spec).into_iter().collect();
    let served: BTreeSet<_> = super::api_routes().into_iter().collect();
    (
        served.difference(&documented).cloned().collect(),
        documented.difference(&served).cloned().collect(),
    )
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    /// Both directions: every route the router serves under /api/v1 is documented
    /// in the generated document, and every documented operation is one the router serves.
    #[test]
    fn generated_spec_documents_exactly_the_routes_the_router_serves() {
        let v = super::document();
        assert!(super::super::api_routes().len() > 10);
        let (undocumented, unserved) = super::spec_mismatches(v);
        assert!(
            undocumented.is_empty(),
            "served but not in the generated document (add #[utoipa::path] and list it in ApiDoc): {undocumented:?}"
        );
        assert!(
            unserved.is_empty(),
            "in the generated document but not served (add it to api_table): {unserved:?}"
        );
    }

    /// Every operation names its errors with the JSON error body, and every
    /// schema it points at exists: a client generated from it compiles.
    #[test]
    fn every_operation_documents_errors_and_resolvable_schemas() {
        let v = super::document();
        let text = v.to_string();
        for (method, path) in super::documented_operations(v) {
            let op = &v["paths"][&path][method.to_lowercase()];
            let responses = op["responses"].as_object().unwrap();
            assert!(
                responses.keys().any(|s| s.starts_with('2')),
                "{method} {path}: no success answer"
            );
            if path != "/api/v1/openapi.json" {
                let error = responses
                    .iter()
                    .find(|(s, _)| s.starts_with('4'))
                    .unwrap_or_else(|| panic!("{method} {path}: no 4xx answer"));
                assert_eq!(
                    error.1["content"]["application/json"]["schema"]["$ref"],
                    Value::from("#/components/schemas/ErrorBody"),
                    "{method} {path}"
                );
            }
        }
        for r in text.split("\"#/components/schemas/").skip(1) {
            let name = &r[..r.find('"').unwrap()];
            assert!(
                v["components"]["schemas"].get(name).is_some(),
                "schema {name} is referenced but not in components"
            );
        }
    }

    /// The node record's credentials never leave the server: not in the schema either.
    #[test]
    fn node_record_schema_has_no_credentials() {
        let props = &super::document()["components"]["schemas"]["NodeRecord"]["properties"];
        for field in [
            "token",
            "boot_secret",
            "install_rsync",
            "node_key",
            "node_rsync",
        ] {
            assert!(props.get(field).is_none(), "{field} is documented");
        }
        assert!(props.get("hostname").is_some());
    }
}
