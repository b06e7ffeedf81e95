//! GET/HEAD /api/health.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{assert_empty, assert_reply, spawn_app};

#[tokio::test]
async fn health_answers_ok_with_and_without_a_trailing_slash() {
    let app = spawn_app().await;

    for path in ["/api/health", "/api/health/"] {
        let resp = app.send(Method::GET, path, None, None).await;

        assert_reply(resp, StatusCode::OK, json!({"status": "ok"})).await;
    }
}

#[tokio::test]
async fn health_answers_head_with_an_empty_200() {
    let app = spawn_app().await;

    for path in ["/api/health", "/api/health/"] {
        let resp = app.send(Method::HEAD, path, None, None).await;

        assert_empty(resp, StatusCode::OK).await;
    }
}

/// The document is a file in the repository (docs/openapi.json): it must
/// list exactly what the server routes. Each documented path's OPTIONS
/// reply names the methods it serves (`Allow`); those, less HEAD and
/// OPTIONS, are the documented operations, and each documented operation
/// is answered by something other than 404 or 405.
#[tokio::test]
async fn the_openapi_document_lists_exactly_the_routed_operations() {
    let app = spawn_app().await;
    let resp = app.send(Method::GET, "/api/openapi.json", None, None).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let document: serde_json::Value = resp.json().await.expect("the document is JSON");
    assert!(
        document["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3."))
    );
    let paths = document["paths"].as_object().expect("paths");
    assert!(paths.len() >= 10, "{paths:?}");
    for (path, operations) in paths {
        let concrete = path.replace("{id}", "1");
        let options = app.send(Method::OPTIONS, &concrete, None, None).await;
        assert_eq!(options.status(), StatusCode::OK, "OPTIONS {path}");
        let allow = options.headers()["allow"]
            .to_str()
            .expect("Allow")
            .to_owned();
        let mut served: Vec<String> = allow
            .split(", ")
            .filter(|m| !matches!(*m, "HEAD" | "OPTIONS"))
            .map(str::to_lowercase)
            .collect();
        let mut documented: Vec<String> = operations
            .as_object()
            .expect("operations")
            .keys()
            .cloned()
            .collect();
        served.sort();
        documented.sort();
        assert_eq!(documented, served, "{path}: documented vs Allow {allow}");
        for method in documented {
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            let resp = app.send(method.clone(), &concrete, None, None).await;
            assert!(
                !matches!(
                    resp.status(),
                    StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED
                ) || concrete.starts_with("/api/users/1"),
                "{method} {path}: {}",
                resp.status()
            );
        }
    }
}
