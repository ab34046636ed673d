//! `GET /api/v1/openapi.json`: the API described for clients and tools.

use axum::http::header;
use axum::response::IntoResponse;

const SPEC: &str = include_str!("openapi.json");

pub async fn spec() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], SPEC)
}

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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// Both directions: every route the router serves under /api/v1 is documented,
    /// and every documented operation is one the router serves.
    #[test]
    fn spec_documents_exactly_the_routes_the_router_serves() {
        let v: serde_json::Value = serde_json::from_str(super::SPEC).unwrap();
        let documented: BTreeSet<_> = super::documented_operations(&v).into_iter().collect();
        let served: BTreeSet<_> = super::super::api_routes().into_iter().collect();
        assert!(served.len() > 10, "{served:?}");
        let undocumented: Vec<_> = served.difference(&documented).collect();
        assert!(
            undocumented.is_empty(),
            "served but not in openapi.json: {undocumented:?}"
        );
        let unserved: Vec<_> = documented.difference(&served).collect();
        assert!(
            unserved.is_empty(),
            "in openapi.json but not served: {unserved:?}"
        );
    }
}
