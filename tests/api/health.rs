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
