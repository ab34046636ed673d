//! The generated OpenAPI document against the live server: schemathesis (PyPI,
//! installed by scripts/setup.sh into /opt/rollout-schemathesis) fuzzes every
//! /api/v1 operation of a real `rollout serve` on loopback with the admin token,
//! in a throwaway state directory. No answer may be a 5xx, and every answer must
//! match the schema the document gives for its status.

mod common;
use common::loopback::Server;
use std::process::Command;
use std::time::Instant;

const ST: &str = "/opt/rollout-schemathesis/bin/st";

/// Both directions against the router are `tests/api.rs`
/// `openapi_documents_exactly_the_routes_the_server_answers`; here, what a
/// client needs besides the paths: who may call and what an error looks like.
#[test]
fn served_document_names_credentials_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    // The document is public: API clients and tools read it before any sign-in.
    let doc: serde_json::Value = serde_json::from_str(&s.text("/api/v1/openapi.json")).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
    for scheme in ["operator", "session", "node", "install"] {
        assert!(schemes.contains_key(scheme), "no security scheme {scheme}");
    }
    // An operator call names its credential and its errors with their body.
    let list = &doc["paths"]["/api/v1/nodes"]["get"];
    assert_eq!(list["security"][0]["operator"], serde_json::json!([]));
    assert_eq!(
        list["responses"]["401"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/ErrorBody"
    );
}

#[test]
fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    if !std::path::Path::new(ST).exists() {
        testkit::prereq::missing(format!(
            "{ST} is missing (schemathesis from PyPI; scripts/setup.sh installs it into that venv)"
        ));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let started = Instant::now();
    let out = Command::new(ST)
        .args(["run", &s.url("/api/v1/openapi.json")])
        .args(["-H", &format!("Authorization: Bearer {}", s.token)])
        .args([
            "--checks",
            "not_a_server_error,response_schema_conformance",
            // The live event stream (SSE) never ends by design; every other
            // operation is fuzzed.
            "--exclude-path",
            "/api/v1/events",
            // Bounded: about a minute on 2 cores.
            "--max-examples",
            "30",
            "--request-timeout",
            "10",
            "--workers",
            "2",
            "--no-color",
        ])
        // Its example database and reports stay in the throwaway directory.
        .current_dir(dir.path())
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .output()
        .expect("run schemathesis");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("schemathesis took {:?}", started.elapsed());
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{text}\nserver log:\n{}",
        s.log_text()
    );
    // It really ran the operations (a run that tested nothing also exits 0):
    // all but the event stream and the document's own URL, which schemathesis
    // leaves out.
    let tested = format!("Tested: {}", rollout::http::api_routes().len() - 2);
    assert!(text.contains(&tested), "expected {tested:?}:\n{text}");
    assert!(text.contains(" passed"), "{text}");
    assert!(!s.log_text().contains("panicked"), "{}", s.log_text());
}
