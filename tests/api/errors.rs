//! Requests the router or the body reader refuses: unknown paths and ids,
//! wrong methods, malformed, non-JSON or oversized bodies. None of them
//! changes the database.

use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{
    TestApp, TestUser, assert_401, assert_404, assert_405, assert_field_message, assert_reply,
    expect_json, spawn_app, spawn_app_with,
};

const NOT_PROVIDED: &str = "Authentication credentials were not provided.";

/// Sends a raw body with a given Content-Type.
async fn send_raw(
    app: &TestApp,
    method: Method,
    path: &str,
    token: Option<&str>,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    app.request(method, path, token)
        .header(CONTENT_TYPE, content_type)
        .body(body)
        .send()
        .await
        .expect("request sent")
}

/// A user to aim writes at: (id, access, the row before anything).
async fn target(app: &TestApp) -> (i64, String, Vec<Value>) {
    let (id, access, _) = app.create_user(&TestUser::generate()).await;
    let row = app.row(id);
    (id, access, row)
}

#[tokio::test]
async fn unknown_paths_get_404_not_found() {
    let app = spawn_app().await;
    let (id, access, _) = app.create_user(&TestUser::generate()).await;

    for path in [
        "/",
        "/api",
        "/api/nope",
        "/api/tokens",
        "/api/token/nope",
        "/health",
        &format!("/api/users/{id}/extra"),
    ] {
        let resp = app.send(Method::GET, path, Some(&access), None).await;

        assert_reply(resp, StatusCode::NOT_FOUND, json!({"detail": "Not found."})).await;
    }
}

#[tokio::test]
async fn known_paths_refuse_other_methods_with_405_and_an_allow_header() {
    let app = spawn_app().await;
    let (id, access, _) = app.create_user(&TestUser::generate()).await;
    let user = format!("/api/users/{id}");
    let token: &[&str] = &["POST", "OPTIONS"];
    let users: &[&str] = &["GET", "POST", "HEAD", "OPTIONS"];
    let one: &[&str] = &["GET", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];
    let health: &[&str] = &["GET", "HEAD", "OPTIONS"];

    for (method, path, allowed) in [
        (Method::DELETE, "/api/token", token),
        (Method::GET, "/api/token/", token),
        (Method::GET, "/api/token/refresh", token),
        (Method::PUT, "/api/token/refresh/", token),
        (Method::DELETE, "/api/users", users),
        (Method::PATCH, "/api/users/", users),
        (Method::POST, &user, one),
        (Method::POST, &format!("{user}/"), one),
        (Method::POST, "/api/health", health),
        (Method::DELETE, "/api/health/", health),
    ] {
        let resp = app.send(method.clone(), path, Some(&access), None).await;

        assert_405(resp, method.as_str(), allowed).await;
    }
    assert_eq!(app.user_count(), 1);
}

#[tokio::test]
async fn ids_that_are_not_positive_integers_get_404_with_a_token() {
    let app = spawn_app().await;
    let (_, access, _) = app.create_user(&TestUser::generate()).await;

    for id in ["abc", "-1", "0", "99999999999999999999", "1.5"] {
        let path = format!("/api/users/{id}");
        let resp = app.send(Method::GET, &path, Some(&access), None).await;

        assert_404(resp).await;
    }
}

#[tokio::test]
async fn ids_that_are_not_positive_integers_get_401_without_a_token() {
    let app = spawn_app().await;

    for id in ["abc", "-1", "99999999999999999999"] {
        let path = format!("/api/users/{id}");
        let resp = app.send(Method::GET, &path, None, None).await;

        assert_401(resp, json!({ "detail": NOT_PROVIDED })).await;
    }
}

#[tokio::test]
async fn malformed_json_gets_400_json_parse_error_and_changes_nothing() {
    let app = spawn_app().await;
    let (id, access, row) = target(&app).await;
    let user = format!("/api/users/{id}");

    for (method, path) in [
        (Method::POST, "/api/users"),
        (Method::POST, "/api/token"),
        (Method::POST, "/api/token/refresh"),
        (Method::PUT, user.as_str()),
        (Method::PATCH, user.as_str()),
    ] {
        let resp = send_raw(
            &app,
            method,
            path,
            Some(&access),
            "application/json",
            r#"{"username": "x", "#,
        )
        .await;

        let body = expect_json(resp, StatusCode::BAD_REQUEST).await;
        assert_eq!(body.as_object().map(|o| o.len()), Some(1), "{path}: {body}");
        let detail = body["detail"].as_str().unwrap_or_default();
        assert!(detail.starts_with("JSON parse error - "), "{path}: {body}");
    }
    assert_eq!(app.user_count(), 1);
    assert_eq!(app.row(id), row);
}

#[tokio::test]
async fn a_body_that_is_not_json_gets_415_and_changes_nothing() {
    let app = spawn_app().await;
    let (id, access, row) = target(&app).await;
    let user = format!("/api/users/{id}");
    let text = TestUser::generate().body().to_string();

    for (method, path) in [
        (Method::POST, "/api/users"),
        (Method::POST, "/api/token"),
        (Method::PUT, user.as_str()),
        (Method::PATCH, user.as_str()),
    ] {
        let resp = send_raw(
            &app,
            method,
            path,
            Some(&access),
            "text/plain",
            text.clone(),
        )
        .await;

        assert_reply(
            resp,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            json!({"detail": "Unsupported media type \"text/plain\" in request."}),
        )
        .await;
    }
    assert_eq!(app.user_count(), 1);
    assert_eq!(app.row(id), row);
}

#[tokio::test]
async fn json_with_a_charset_parameter_is_accepted() {
    let app = spawn_app().await;
    let body = TestUser::generate().body().to_string();

    let resp = send_raw(
        &app,
        Method::POST,
        "/api/users",
        None,
        "application/json; charset=utf-8",
        body,
    )
    .await;

    expect_json(resp, StatusCode::CREATED).await;
    assert_eq!(app.user_count(), 1);
}

/// A registration body padded with an ignored key to about `size` bytes.
fn padded_registration(size: usize) -> String {
    let mut body = TestUser::generate().body();
    body["padding"] = json!("x".repeat(size));
    body.to_string()
}

#[tokio::test]
async fn a_body_over_64_kib_gets_413_and_changes_nothing() {
    let app = spawn_app().await;
    let (id, access, row) = target(&app).await;
    let user = format!("/api/users/{id}");

    for (method, path) in [
        (Method::POST, "/api/users"),
        (Method::POST, "/api/token"),
        (Method::PUT, user.as_str()),
    ] {
        let body = padded_registration(70 * 1024);
        let resp = send_raw(&app, method, path, Some(&access), "application/json", body).await;

        let body = expect_json(resp, StatusCode::PAYLOAD_TOO_LARGE).await;
        assert!(body["detail"].is_string(), "{path}: {body}");
    }
    assert_eq!(app.user_count(), 1);
    assert_eq!(app.row(id), row);
}

#[tokio::test]
async fn a_chunked_body_over_64_kib_is_refused_and_changes_nothing() {
    let app = spawn_app().await;
    let body = padded_registration(70 * 1024);
    let mut request = format!(
        "POST /api/users HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        app.addr
    )
    .into_bytes();
    for chunk in body.as_bytes().chunks(8192) {
        request.extend(format!("{:x}\r\n", chunk.len()).bytes());
        request.extend(chunk.iter().chain(b"\r\n"));
    }
    request.extend(b"0\r\n\r\n");
    let mut stream = TcpStream::connect(app.addr).await.expect("connect");

    // The server may answer and close before it has read everything.
    let _ = stream.write_all(&request).await;
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply).await;

    let reply = String::from_utf8_lossy(&reply);
    let status = reply.split(' ').nth(1).unwrap_or_default();
    assert!(["411", "413"].contains(&status), "{reply}");
    assert!(reply.contains("\"detail\""), "{reply}");
    assert_eq!(app.user_count(), 0);
}

#[tokio::test]
async fn a_body_arriving_in_several_chunks_is_read_whole() {
    let app = spawn_app().await;
    let user = TestUser::generate();
    let mut body = user.body();
    body["padding"] = json!("y".repeat(3000));
    let body = body.to_string();
    let mut stream = TcpStream::connect(app.addr).await.expect("connect");
    let head = format!(
        "POST /api/users HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        app.addr
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    // Pieces with pauses between them, so they reach the server apart;
    // a cut in the middle of a multi-byte character too.
    let bytes = body.replace("y\"", "\u{e9}y\"").into_bytes();
    for chunk in bytes.chunks(1001) {
        let mut piece = format!("{:x}\r\n", chunk.len()).into_bytes();
        piece.extend(chunk.iter().chain(b"\r\n"));
        stream.write_all(&piece).await.expect("chunk");
        stream.flush().await.expect("flush");
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    }
    stream.write_all(b"0\r\n\r\n").await.expect("end");
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await.expect("reply");

    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 201"), "{reply}");
    assert!(
        reply.contains(&format!("\"username\":\"{}\"", user.username)),
        "{reply}"
    );
    assert_eq!(app.user_count(), 1);
}

#[tokio::test]
async fn a_body_just_under_64_kib_is_accepted() {
    let app = spawn_app().await;

    let body = padded_registration(60 * 1024);
    let resp = send_raw(
        &app,
        Method::POST,
        "/api/users",
        None,
        "application/json",
        body,
    )
    .await;

    expect_json(resp, StatusCode::CREATED).await;
    assert_eq!(app.user_count(), 1);
}

#[tokio::test]
async fn the_body_limit_follows_the_config() {
    let app = spawn_app_with(|c| c.server.max_body_bytes = 1024).await;

    let body = padded_registration(2048);
    let resp = send_raw(
        &app,
        Method::POST,
        "/api/users",
        None,
        "application/json",
        body,
    )
    .await;

    let body = expect_json(resp, StatusCode::PAYLOAD_TOO_LARGE).await;
    assert!(body["detail"].is_string(), "{body}");
    assert_eq!(app.user_count(), 0);
}

#[tokio::test]
async fn a_json_array_body_gets_400_non_field_errors_and_changes_nothing() {
    let app = spawn_app().await;
    let (id, access, row) = target(&app).await;
    let user = format!("/api/users/{id}");

    for (method, path) in [
        (Method::POST, "/api/users"),
        (Method::POST, "/api/token"),
        (Method::PUT, user.as_str()),
        (Method::PATCH, user.as_str()),
    ] {
        let body = json!([TestUser::generate().body()]);
        let resp = app.send(method, path, Some(&access), Some(&body)).await;

        assert_field_message(
            resp,
            "non_field_errors",
            "Invalid data. Expected a dictionary, but got list.",
        )
        .await;
    }
    assert_eq!(app.user_count(), 1);
    assert_eq!(app.row(id), row);
}
