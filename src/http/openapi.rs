//! `GET /api/v1/openapi.json`: the API described for clients and tools.

use axum::http::header;
use axum::response::IntoResponse;

const SPEC: &str = include_str!("openapi.json");

pub async fn spec() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], SPEC)
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

    /// Both directions: every route the router serves under /api/v1 is documented,
    /// and every documented operation is one the router serves.
    #[test]
    fn spec_documents_exactly_the_routes_the_router_serves() {
        let v: serde_json::Value = serde_json::from_str(super::SPEC).unwrap();
        assert!(super::super::api_routes().len() > 10);
        let (undocumented, unserved) = super::spec_mismatches(&v);
        assert!(
            undocumented.is_empty(),
            "served but not in openapi.json: {undocumented:?}"
        );
        assert!(
            unserved.is_empty(),
            "in openapi.json but not served: {unserved:?}"
        );
    }
}
