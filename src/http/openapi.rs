//! `GET /api/v1/openapi.json`: the API described for clients and tools.

use axum::http::header;
use axum::response::IntoResponse;

const SPEC: &str = include_str!("openapi.json");

pub async fn spec() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], SPEC)
}

#[cfg(test)]
mod tests {
    #[test]
    fn spec_is_json_and_documents_every_api_route() {
        let v: serde_json::Value = serde_json::from_str(super::SPEC).unwrap();
        let paths = v["paths"].as_object().unwrap();
        for p in [
            "/api/v1/nodes",
            "/api/v1/nodes/{id}",
            "/api/v1/nodes/{id}/reinstall",
            "/api/v1/nodes/{id}/history",
            "/api/v1/discovered",
            "/api/v1/discovered/{mac}/approve",
            "/api/v1/discovered/{mac}/ignore",
            "/api/v1/images",
            "/api/v1/images/{name}/serial",
            "/api/v1/images/{name}/excludes",
            "/api/v1/events",
            "/api/v1/plan/{mac}",
            "/api/v1/installs/{id}/events",
            "/api/v1/phone-home",
        ] {
            assert!(paths.contains_key(p), "{p} is not documented");
        }
    }
}
