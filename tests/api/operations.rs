//! Operations and HTTP hardening: security headers and CORS on every reply,
//! the body, header, time and connection limits, `backup` under load,
//! `restore`, the corrupt-database refusal at start, `doctor`, the 507 of a
//! full database and the JSON logs.
//!
//! The HTTP tests run the in-process server (`spawn_app_with`), the limits
//! over raw sockets to 127.0.0.1; the command tests run the real binary in
//! its own temp dir with a cleared environment, as `cli.rs` does.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{
    RunningServer, SECRET, SeedUser, TestApp, TestUser, expect_json, read_json, spawn_app,
    spawn_app_with,
};

const BIN: &str = env!("CARGO_BIN_EXE_rosterd");
const PASSWORD: &str = "correct-horse-battery";
const ORIGIN: &str = "https://app.example";

// --- HTTP helpers ---------------------------------------------------------

/// Asserts the headers every reply carries, returns its `X-Request-Id`.
fn assert_hardened(headers: &HeaderMap, what: &str) -> String {
    for (name, value) in [
        ("x-content-type-options", "nosniff"),
        (
            "content-security-policy",
            "default-src 'none'; frame-ancestors 'none'",
        ),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
    ] {
        assert_eq!(
            headers.get(name).and_then(|v| v.to_str().ok()),
            Some(value),
            "{name} of {what}"
        );
    }
    let id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no X-Request-Id on {what}"));
    assert!(
        id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "X-Request-Id {id:?} of {what} is not 16 hex digits"
    );
    id.to_owned()
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The `Access-Control-*` headers of a reply.
fn cors_headers(headers: &HeaderMap) -> Vec<String> {
    headers
        .keys()
        .map(|k| k.as_str().to_owned())
        .filter(|k| k.starts_with("access-control-"))
        .collect()
}

/// A preflight for PUT /api/users/1 from `origin`.
async fn preflight(app: &TestApp, origin: &str) -> Response {
    app.request(Method::OPTIONS, "/api/users/1", None)
        .header("origin", origin)
        .header("access-control-request-method", "PUT")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .expect("preflight sent")
}

async fn get_from(app: &TestApp, path: &str, token: Option<&str>, origin: &str) -> Response {
    app.request(Method::GET, path, token)
        .header("origin", origin)
        .send()
        .await
        .expect("request sent")
}

/// A raw reply: status, head (lower-cased), body.
struct RawReply {
    status: u16,
    head: String,
    body: String,
}

/// Reads one HTTP/1.1 reply; `None` when the server closes the connection
/// first. Panics when neither happens within `limit`.
async fn read_reply(stream: &mut TcpStream, limit: Duration) -> Option<RawReply> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|n| n.trim().parse::<usize>().expect("Content-Length"));
            if let Some(length) = length
                && buf.len() >= end + 4 + length
            {
                let status = head[9..12].parse().expect("status code");
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + length]).into();
                return Some(RawReply { status, head, body });
            }
        }
        let read = tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await;
        match read.unwrap_or_else(|_| panic!("neither a reply nor a close within {limit:?}")) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Reads (and drops) whatever comes until the server closes `stream`: how
/// long that took, or `None` when it is still open after `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut chunk = [0u8; 4096];
    loop {
        let left = limit.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, stream.read(&mut chunk)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.addr).await.expect("connect")
}

/// Sends `request` on a fresh connection; writes may fail once the server
/// has answered and closed.
async fn send_raw(app: &TestApp, request: &[u8]) -> TcpStream {
    let mut stream = connect(app).await;
    let _ = stream.write_all(request).await;
    stream
}

async fn health_is_ok(app: &TestApp) {
    let resp = app.send(Method::GET, "/api/health", None, None).await;
    assert_eq!(
        expect_json(resp, StatusCode::OK).await,
        json!({"status": "ok"})
    );
}

/// A registration body of at least `size` bytes (padded by an ignored key).
fn padded_registration(user: &TestUser, size: usize) -> String {
    let mut body = user.body();
    body["pad"] = json!("");
    let base = body.to_string().len();
    body["pad"] = json!("x".repeat(size.saturating_sub(base)));
    body.to_string()
}

async fn post_raw_json(app: &TestApp, body: String) -> Response {
    app.request(Method::POST, "/api/users", None)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("request sent")
}

/// A chunked POST /api/users of `body`, in 512-byte chunks.
fn chunked_registration(body: &str) -> Vec<u8> {
    let mut request = b"POST /api/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
        Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        .to_vec();
    for part in body.as_bytes().chunks(512) {
        request.extend(format!("{:x}\r\n", part.len()).bytes());
        request.extend_from_slice(part);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    request
}

fn username_exists(app: &TestApp, name: &str) -> bool {
    app.count("SELECT count(*) FROM users WHERE username = ?1", name) > 0
}

fn integrity(path: &Path) -> String {
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open read-only");
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check")
}

// --- security headers -----------------------------------------------------

#[tokio::test]
async fn every_reply_carries_the_security_headers_and_its_own_request_id() {
    let app = spawn_app().await;
    let user = TestUser::generate();
    let created = app.register_json(&user.body()).await;
    let bad_json = app
        .request(Method::POST, "/api/users", None)
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .expect("sent");
    let replies = vec![
        (created, StatusCode::CREATED),
        (
            app.send(Method::GET, "/api/health", None, None).await,
            StatusCode::OK,
        ),
        (
            app.get_with_authorization("/api/users", None).await,
            StatusCode::UNAUTHORIZED,
        ),
        (
            app.send(Method::GET, "/api/nope", None, None).await,
            StatusCode::NOT_FOUND,
        ),
        (
            app.send(Method::DELETE, "/api/health", None, None).await,
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (bad_json, StatusCode::BAD_REQUEST),
        (
            app.login(&user.username, &user.password).await,
            StatusCode::OK,
        ),
    ];
    let mut ids = std::collections::BTreeSet::new();
    for (resp, status) in replies {
        let what = format!("{} {}", resp.status(), resp.url().path());
        assert_eq!(resp.status(), status, "{what}");
        ids.insert(assert_hardened(resp.headers(), &what));
    }
    assert_eq!(ids.len(), 7, "request ids repeat: {ids:?}");
}

// --- CORS -----------------------------------------------------------------

async fn cors_app(origins: &[&str]) -> TestApp {
    let origins: Vec<String> = origins.iter().map(|o| (*o).to_owned()).collect();
    spawn_app_with(|c| c.server.cors_origins = origins).await
}

#[tokio::test]
async fn a_preflight_from_an_allowed_origin_is_answered_with_methods_headers_and_max_age() {
    let app = cors_app(&[ORIGIN]).await;
    let resp = preflight(&app, ORIGIN).await;
    assert!(resp.status().is_success(), "{}", resp.status());
    let h = resp.headers();
    assert_eq!(header(h, "access-control-allow-origin"), Some(ORIGIN));
    let methods = header(h, "access-control-allow-methods").unwrap_or_default();
    assert!(methods.split(',').any(|m| m.trim() == "PUT"), "{methods:?}");
    let allowed = header(h, "access-control-allow-headers")
        .unwrap_or_default()
        .to_ascii_lowercase();
    for name in ["authorization", "content-type"] {
        assert!(allowed.split(',').any(|a| a.trim() == name), "{allowed:?}");
    }
    let max_age = header(h, "access-control-max-age").unwrap_or_default();
    assert!(max_age.parse::<u32>().is_ok_and(|s| s > 0), "{max_age:?}");
    assert_hardened(h, "preflight");
}

#[tokio::test]
async fn an_allowed_origin_gets_cors_headers_on_success_and_error_replies() {
    let app = cors_app(&[ORIGIN]).await;
    let (id, access, _) = app.create_user(&TestUser::generate()).await;
    let replies = [
        (
            get_from(&app, &format!("/api/users/{id}"), Some(&access), ORIGIN).await,
            200,
        ),
        (
            get_from(&app, "/api/users?limit=1", Some(&access), ORIGIN).await,
            200,
        ),
        (get_from(&app, "/api/users", None, ORIGIN).await, 401),
        (
            get_from(&app, "/api/users/999999", Some(&access), ORIGIN).await,
            404,
        ),
        (get_from(&app, "/api/nope", None, ORIGIN).await, 404),
    ];
    for (resp, status) in replies {
        let h = resp.headers();
        let what = resp.url().path().to_owned();
        assert_eq!(resp.status().as_u16(), status, "{what}");
        assert_eq!(
            header(h, "access-control-allow-origin"),
            Some(ORIGIN),
            "{what}"
        );
        let exposed = header(h, "access-control-expose-headers")
            .unwrap_or_default()
            .to_ascii_lowercase();
        for name in ["x-total-count", "link"] {
            assert!(
                exposed.split(',').any(|e| e.trim() == name),
                "{what}: {exposed:?}"
            );
        }
        let vary: Vec<&str> = h
            .get_all("vary")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        assert!(
            vary.iter().any(|v| v.contains("Origin")),
            "{what}: Vary {vary:?}"
        );
    }
}

#[tokio::test]
async fn another_origin_gets_no_allow_origin() {
    let app = cors_app(&[ORIGIN]).await;
    let (_, access, _) = app.create_user(&TestUser::generate()).await;
    for resp in [
        get_from(&app, "/api/users", Some(&access), "https://evil.example").await,
        get_from(&app, "/api/users", None, "https://app.example.evil").await,
        preflight(&app, "http://app.example").await,
    ] {
        let h = resp.headers();
        assert_eq!(cors_headers(h), Vec::<String>::new(), "{}", resp.url());
    }
}

#[tokio::test]
async fn without_cors_origins_no_cors_headers_are_sent() {
    let app = spawn_app().await;
    let (_, access, _) = app.create_user(&TestUser::generate()).await;
    for resp in [
        get_from(&app, "/api/users", Some(&access), ORIGIN).await,
        get_from(&app, "/api/users", None, ORIGIN).await,
        preflight(&app, ORIGIN).await,
    ] {
        let h = resp.headers();
        assert_eq!(cors_headers(h), Vec::<String>::new(), "{}", resp.url());
        assert_hardened(h, "no CORS");
    }
}

#[tokio::test]
async fn a_star_in_cors_origins_allows_any_origin_as_star() {
    let app = cors_app(&["*"]).await;
    for resp in [
        get_from(&app, "/api/health", None, "https://anything.example").await,
        get_from(&app, "/api/users", None, "http://localhost:3000").await,
        preflight(&app, "https://other.example").await,
    ] {
        assert_eq!(
            header(resp.headers(), "access-control-allow-origin"),
            Some("*"),
            "{}",
            resp.url()
        );
    }
}

// --- body limit -----------------------------------------------------------

async fn assert_413(resp: Response) {
    let body = expect_json(resp, StatusCode::PAYLOAD_TOO_LARGE).await;
    assert!(body["detail"].is_string(), "{body}");
}

#[tokio::test]
async fn a_body_over_the_default_64_kib_is_413_and_stores_nothing() {
    let app = spawn_app().await;
    let user = TestUser::generate();
    let resp = post_raw_json(&app, padded_registration(&user, 65 * 1024)).await;
    assert_413(resp).await;
    assert!(!username_exists(&app, &user.username));
    let user = TestUser::generate();
    let resp = post_raw_json(&app, padded_registration(&user, 60 * 1024)).await;
    expect_json(resp, StatusCode::CREATED).await;
}

#[tokio::test]
async fn max_body_bytes_sets_the_body_limit() {
    let app = spawn_app_with(|c| c.server.max_body_bytes = 1024).await;
    let refused = TestUser::generate();
    assert_413(post_raw_json(&app, padded_registration(&refused, 2048)).await).await;
    assert!(!username_exists(&app, &refused.username));
    let accepted = TestUser::generate();
    let body = padded_registration(&accepted, 500);
    assert_eq!(body.len(), 500);
    expect_json(post_raw_json(&app, body).await, StatusCode::CREATED).await;
    assert!(username_exists(&app, &accepted.username));
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_is_413_and_one_under_it_is_accepted() {
    let app = spawn_app_with(|c| c.server.max_body_bytes = 1024).await;
    let refused = TestUser::generate();
    let request = chunked_registration(&padded_registration(&refused, 3000));
    let mut stream = send_raw(&app, &request).await;
    let reply = read_reply(&mut stream, Duration::from_secs(10))
        .await
        .expect("a reply");
    assert_eq!(reply.status, 413, "{}", reply.body);
    assert!(serde_json::from_str::<Value>(&reply.body).expect("JSON")["detail"].is_string());
    assert!(!username_exists(&app, &refused.username));

    let accepted = TestUser::generate();
    let request = chunked_registration(&padded_registration(&accepted, 900));
    let mut stream = send_raw(&app, &request).await;
    let reply = read_reply(&mut stream, Duration::from_secs(10))
        .await
        .expect("a reply");
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert!(username_exists(&app, &accepted.username));
}

// --- slow and idle clients ------------------------------------------------

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let app = spawn_app_with(|c| c.server.header_read_timeout = 1).await;
    let mut stream = send_raw(&app, b"GET /api/health HTTP/1.1\r\nHost: x\r\n").await;
    let took = closed_within(&mut stream, Duration::from_secs(5)).await;
    let took = took.expect("still open 5 s after a 1 s header timeout");
    assert!(took >= Duration::from_millis(800), "closed after {took:?}");
    health_is_ok(&app).await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    let app = spawn_app_with(|c| c.server.header_read_timeout = 1).await;
    let mut stream = send_raw(&app, b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let reply = read_reply(&mut stream, Duration::from_secs(10))
        .await
        .expect("a reply");
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, r#"{"status":"ok"}"#)
    );
    let took = closed_within(&mut stream, Duration::from_secs(5)).await;
    let took = took.expect("an idle keep-alive connection still open after 5 s");
    assert!(took >= Duration::from_millis(800), "closed after {took:?}");
}

/// POST /api/users declaring 100 body bytes and sending 11.
fn partial_body(extra_headers: &str) -> Vec<u8> {
    format!(
        "POST /api/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         {extra_headers}Content-Length: 100\r\n\r\n{{\"username\""
    )
    .into_bytes()
}

#[tokio::test]
async fn a_body_that_never_arrives_gets_408_within_the_request_timeout() {
    let app = spawn_app_with(|c| c.server.request_timeout = 1).await;
    let start = Instant::now();
    let mut stream = send_raw(&app, &partial_body("")).await;
    if let Some(reply) = read_reply(&mut stream, Duration::from_secs(5)).await {
        assert_eq!(reply.status, 408, "{}", reply.body);
        let body: Value = serde_json::from_str(&reply.body).expect("JSON");
        assert_eq!(body, json!({"detail": "Request timed out."}));
    }
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(800), "cut off after {took:?}");
    assert_eq!(app.user_count(), 0);
    health_is_ok(&app).await;
}

/// GET /api/health on an open connection answers 200.
async fn health_on(stream: &mut TcpStream) {
    stream
        .write_all(b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("send");
    let reply = read_reply(stream, Duration::from_secs(5))
        .await
        .expect("a reply");
    assert_eq!(reply.status, 200, "{}", reply.body);
}

#[tokio::test]
async fn later_requests_on_a_keep_alive_connection_get_both_time_limits_afresh() {
    let app = spawn_app_with(|c| {
        c.server.request_timeout = 1;
        c.server.header_read_timeout = 1;
    })
    .await;
    let mut stream = connect(&app).await;
    // Requests spread over more than either limit, each on time: the
    // limits run per request, not from the connection's start.
    for _ in 0..3 {
        health_on(&mut stream).await;
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    // Then a body that never arrives: 408 about a second later.
    let start = Instant::now();
    stream.write_all(&partial_body("")).await.expect("send");
    let reply = read_reply(&mut stream, Duration::from_secs(5))
        .await
        .expect("a 408 reply");
    assert_eq!(reply.status, 408, "{}", reply.body);
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(4),
        "408 after {took:?}"
    );
    // A fresh connection: a request, then a head that never ends is cut
    // off (hyper counts the idle time before a head as part of its read).
    let mut stream = connect(&app).await;
    health_on(&mut stream).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let start = Instant::now();
    stream
        .write_all(b"GET /api/health HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("send");
    let took = closed_within(&mut stream, Duration::from_secs(5)).await;
    let took = took.expect("still open 5 s after a 1 s header timeout");
    assert!(took < Duration::from_secs(4), "closed after {took:?}");
    assert!(
        start.elapsed() >= Duration::from_millis(200),
        "closed after {:?}",
        start.elapsed()
    );
    assert_eq!(app.user_count(), 0);
    health_is_ok(&app).await;
}

#[tokio::test]
async fn a_timed_out_reply_carries_the_security_headers_and_a_request_id() {
    let app = spawn_app_with(|c| {
        c.server.request_timeout = 1;
        c.server.cors_origins = vec![ORIGIN.into()];
    })
    .await;
    let request = partial_body("Origin: https://app.example\r\n");
    let mut stream = send_raw(&app, &request).await;
    let reply = read_reply(&mut stream, Duration::from_secs(5))
        .await
        .expect("a 408 reply");
    assert_eq!(reply.status, 408);
    for line in [
        "x-content-type-options: nosniff",
        "content-security-policy: default-src 'none'; frame-ancestors 'none'",
        "referrer-policy: no-referrer",
        "cache-control: no-store",
        "access-control-allow-origin: https://app.example",
        "x-request-id: ",
    ] {
        assert!(
            reply.head.contains(line),
            "{line:?} missing from the 408:\n{}",
            reply.head
        );
    }
}

// --- connections ----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_idle_connections_do_not_stop_others_being_served() {
    let app = spawn_app().await;
    let mut idle = Vec::new();
    for _ in 0..500 {
        idle.push(connect(&app).await);
    }
    let start = Instant::now();
    let resp = tokio::time::timeout(
        Duration::from_secs(5),
        app.send(Method::GET, "/api/health", None, None),
    )
    .await
    .expect("/api/health answered within 5 s despite 500 idle connections");
    assert_eq!(resp.status(), StatusCode::OK, "after {:?}", start.elapsed());
    // The idle ones were really open all along.
    let mut probe = idle.pop().expect("idle");
    assert_eq!(
        closed_within(&mut probe, Duration::from_millis(200)).await,
        None
    );
}

#[tokio::test]
async fn a_request_waiting_for_a_slot_held_by_idle_clients_is_served_once_they_time_out() {
    let app = spawn_app_with(|c| {
        c.server.max_connections = 4;
        c.server.header_read_timeout = 1;
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(connect(&app).await);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let start = Instant::now();
    let resp = tokio::time::timeout(
        Duration::from_secs(8),
        app.send(Method::GET, "/api/health", None, None),
    )
    .await
    .expect("served within 8 s once the idle connections timed out");
    let took = start.elapsed();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        took >= Duration::from_millis(500),
        "served after {took:?}: no cap of 4?"
    );
    for mut stream in idle {
        assert!(
            closed_within(&mut stream, Duration::from_secs(1))
                .await
                .is_some()
        );
    }
}

#[tokio::test]
async fn a_request_head_over_max_header_bytes_is_refused_and_the_server_lives_on() {
    let app = spawn_app_with(|c| c.server.max_header_bytes = 8192).await;
    let big = format!(
        "GET /api/health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let mut stream = send_raw(&app, big.as_bytes()).await;
    if let Some(reply) = read_reply(&mut stream, Duration::from_secs(10)).await {
        assert_eq!(reply.status, 431, "{}\n{}", reply.head, reply.body);
    }
    let fits = format!(
        "GET /api/health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(4_000)
    );
    let mut stream = send_raw(&app, fits.as_bytes()).await;
    let reply = read_reply(&mut stream, Duration::from_secs(10))
        .await
        .expect("a reply");
    assert_eq!(reply.status, 200);
    health_is_ok(&app).await;
}

// --- disk full ------------------------------------------------------------

#[tokio::test]
async fn a_full_database_answers_507_to_writes_while_reads_go_on() {
    crate::sqlite_only!();
    let app = spawn_app_with(|c| c.database.max_size = 256 * 1024).await;
    let first = TestUser::generate();
    let (id, access, _) = app.create_user(&first).await;
    let mut full = None;
    for _ in 0..5000 {
        let resp = app.register_json(&TestUser::generate().body()).await;
        if resp.status() != StatusCode::CREATED {
            full = Some(resp);
            break;
        }
    }
    let resp = full.expect("5000 registrations fit in 256 KiB");
    let (status, body) = read_json(resp).await;
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{body}");
    assert!(body["detail"].is_string(), "{body}");
    let patch = app.patch_user(id, &access, &json!({"level": 7})).await;
    let level = app.column(id, "level");
    assert!(
        (patch.status() == StatusCode::OK && level == json!(7))
            || (patch.status() == StatusCode::INSUFFICIENT_STORAGE && level == json!(1)),
        "PATCH {} with level {level}",
        patch.status()
    );
    assert_eq!(
        expect_json(app.get_user(id, &access).await, StatusCode::OK).await["id"],
        id
    );
    expect_json(
        app.login(&first.username, &first.password).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(integrity(&app.db_path), "ok");

    let mut stopped = app.stop().await;
    stopped.config.database.max_size = 0;
    let app = stopped.start().await;
    let later = TestUser::generate();
    expect_json(app.register_json(&later.body()).await, StatusCode::CREATED).await;
    assert_eq!(integrity(&app.db_path), "ok");
}

// --- the binary -----------------------------------------------------------

/// A private temp dir for the real binary: HOME and the XDG dirs, `c.toml`
/// (mode 0600, the test secret) and the database `d.sqlite3`; fast hashing
/// and no throttling unless asked. (`races.rs` uses it too.)
pub(crate) struct Site {
    dir: TempDir,
    pub(crate) db: PathBuf,
    env: Vec<(String, String)>,
}

/// A finished command.
pub(crate) struct Out {
    pub(crate) success: bool,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Out {
    pub(crate) fn ok(self) -> Self {
        assert!(
            self.success,
            "failed; stdout: {}; stderr: {}",
            self.stdout, self.stderr
        );
        self
    }

    /// Asserts a failure with a one-line message holding every `needle`.
    fn fails_saying(self, needles: &[&str]) -> Self {
        assert!(!self.success, "succeeded; stdout: {}", self.stdout);
        assert_eq!(self.stderr.trim_end().lines().count(), 1, "{}", self.stderr);
        for needle in needles {
            assert!(
                self.stderr.contains(needle),
                "{needle:?} not in {}",
                self.stderr
            );
        }
        self
    }
}

impl Site {
    pub(crate) fn new() -> Site {
        let dir = tempfile::tempdir().expect("temp dir");
        for sub in ["home", "xdg-config", "xdg-data"] {
            std::fs::create_dir(dir.path().join(sub)).expect("mkdir");
        }
        let db = dir.path().join("d.sqlite3");
        let site = Site {
            dir,
            db,
            env: vec![
                ("ROSTERD_AUTH_PBKDF2_ITERATIONS".into(), "1000".into()),
                ("ROSTERD_RATE_LIMIT_ENABLED".into(), "false".into()),
            ],
        };
        site.write_config(&format!("[auth]\nsecret = \"{SECRET}\"\n"));
        site
    }

    /// With the environment variable `name` set to `value` for every
    /// command and server of this site.
    pub(crate) fn with_env(mut self, name: &str, value: &str) -> Site {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Without the fast-hashing variable (whose start-up warning is a line
    /// of its own).
    fn default_hashing(mut self) -> Site {
        self.env
            .retain(|(n, _)| n != "ROSTERD_AUTH_PBKDF2_ITERATIONS");
        self
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn config(&self) -> PathBuf {
        self.path("c.toml")
    }

    fn write_config(&self, text: &str) {
        std::fs::write(self.config(), text).expect("write config");
        let mode = std::fs::Permissions::from_mode(0o600);
        std::fs::set_permissions(self.config(), mode).expect("chmod");
    }

    /// `rosterd --config C --db D ARGS` in the isolated environment.
    fn command(&self, args: &[&str], env: &[(&str, &str)]) -> std::process::Command {
        let mut cmd = std::process::Command::new(BIN);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.path("home"))
            .env("XDG_CONFIG_HOME", self.path("xdg-config"))
            .env("XDG_DATA_HOME", self.path("xdg-data"))
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(env.iter().copied())
            .current_dir(self.dir.path())
            .arg("--config")
            .arg(self.config())
            .arg("--db")
            .arg(&self.db)
            .args(args);
        cmd
    }

    pub(crate) fn run_with_stdin(&self, args: &[&str], stdin: &str) -> Out {
        let out = assert_cmd::Command::from_std(self.command(args, &[]))
            .timeout(Duration::from_secs(30))
            .write_stdin(stdin)
            .output()
            .expect("rosterd ran and finished within 30 s");
        Out {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub(crate) fn run(&self, args: &[&str]) -> Out {
        self.run_with_stdin(args, "")
    }

    pub(crate) fn create(&self, name: &str) {
        let email = format!("{name}@example.com");
        let args = [
            "user",
            "create",
            "--username",
            name,
            "--email",
            &email,
            "--password-stdin",
        ];
        self.run_with_stdin(&args, &format!("{PASSWORD}\n")).ok();
    }

    pub(crate) fn backup(&self, file: &Path) -> Out {
        self.run(&["backup", file.to_str().expect("UTF-8 path")])
    }

    pub(crate) fn restore(&self, file: &Path) -> Out {
        self.run(&["restore", file.to_str().expect("UTF-8 path")])
    }

    /// The `DB.before-restore-*` files.
    fn kept_aside(&self) -> Vec<PathBuf> {
        let prefix = "d.sqlite3.before-restore-";
        let mut kept: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .expect("read dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
            })
            .collect();
        kept.sort();
        kept
    }

    /// Spawns `serve --bind 127.0.0.1:0` and waits (bounded) for its
    /// "serving on" line.
    pub(crate) fn serve(&self, env: &[(&str, &str)]) -> Server {
        let log = self.path("serve.log");
        let child = self
            .command(&["serve", "--bind", "127.0.0.1:0"], env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn rosterd serve");
        RunningServer::wait_for(child, log, Duration::from_secs(30))
    }
}

/// A running `rosterd serve`, killed on drop.
pub(crate) type Server = RunningServer;

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(future)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

/// The usernames of a database file, in id order.
fn usernames(db: &Path) -> Vec<String> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open");
    let mut stmt = conn
        .prepare("SELECT username FROM users ORDER BY id")
        .expect("prepare");
    stmt.query_map([], |r| r.get(0))
        .expect("query")
        .map(|r| r.expect("row"))
        .collect()
}

/// Rows inserted straight into a database: (username, level).
pub(crate) fn seed(n: usize, tag: &str) -> Vec<SeedUser> {
    (0..n)
        .map(|i| SeedUser {
            username: format!("{tag}{i}"),
            email: format!("{tag}{i}@example.com"),
            level: 1,
            status: "offline",
            created_at: "2024-01-01T00:00:00Z".into(),
            updated_at: "2024-01-01T00:00:00Z".into(),
        })
        .collect()
}

// --- backup ---------------------------------------------------------------

/// An acknowledged write: when its 2xx arrived, and what it wrote.
#[derive(Debug, Clone)]
enum Write {
    Registered(i64, String),
    Level(i64),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_under_concurrent_writes_holds_every_write_acknowledged_before_it_started() {
    crate::sqlite_only!();
    let app = Arc::new(spawn_app().await);
    app.seed_users(&seed(3000, "bulk"));
    let (me, access, _) = app.create_user(&TestUser::generate()).await;
    let acked: Arc<Mutex<Vec<(Instant, Write)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let registrar = tokio::spawn({
        let (app, acked, stop) = (app.clone(), acked.clone(), stop.clone());
        async move {
            while !stop.load(Ordering::SeqCst) {
                let user = TestUser::generate();
                let resp = app.register_json(&user.body()).await;
                if resp.status() == StatusCode::CREATED {
                    let id = expect_json(resp, StatusCode::CREATED).await["id"].as_i64();
                    let write = Write::Registered(id.expect("id"), user.username);
                    acked.lock().expect("lock").push((Instant::now(), write));
                }
            }
        }
    });
    let patcher = tokio::spawn({
        let (app, acked, stop) = (app.clone(), acked.clone(), stop.clone());
        async move {
            let mut level = 1;
            while !stop.load(Ordering::SeqCst) {
                level += 1;
                let resp = app
                    .patch_user(me, &access, &json!({ "level": level }))
                    .await;
                if resp.status() == StatusCode::OK {
                    acked
                        .lock()
                        .expect("lock")
                        .push((Instant::now(), Write::Level(level)));
                }
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let site = Site {
        db: app.db_path.clone(),
        ..Site::new()
    };
    let out_path = site.path("backup.sqlite3");
    let started = Instant::now();
    let out = tokio::task::spawn_blocking({
        let out_path = out_path.clone();
        move || (site.backup(&out_path), site)
    })
    .await
    .expect("backup thread");
    let (out, site) = out;
    let backup_took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    registrar.await.expect("registrar");
    patcher.await.expect("patcher");
    let out = out.ok();
    assert!(out.stdout.contains("backup.sqlite3"), "{}", out.stdout);
    assert_eq!(integrity(&out_path), "ok");

    let acked = acked.lock().expect("lock").clone();
    let before: Vec<&Write> = acked
        .iter()
        .filter(|(t, _)| *t < started)
        .map(|(_, w)| w)
        .collect();
    let after = acked.len() - before.len();
    assert!(
        before.len() >= 20 && after >= 5,
        "{} writes before, {after} after {backup_took:?}",
        before.len()
    );
    let copy = rusqlite::Connection::open(&out_path).expect("open backup");
    let bulk: i64 = copy
        .query_row(
            "SELECT count(*) FROM users WHERE username LIKE 'bulk%'",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(bulk, 3000);
    let mut last_level = 1;
    for write in before {
        match write {
            Write::Registered(id, name) => {
                let found: Option<String> = copy
                    .query_row("SELECT username FROM users WHERE id = ?1", [id], |r| {
                        r.get(0)
                    })
                    .ok();
                assert_eq!(
                    found.as_ref(),
                    Some(name),
                    "user {id} acknowledged before the backup"
                );
            }
            Write::Level(level) => last_level = *level,
        }
    }
    let level: i64 = copy
        .query_row("SELECT level FROM users WHERE id = ?1", [me], |r| r.get(0))
        .expect("level");
    assert!(
        level >= last_level,
        "backup has level {level}, {last_level} was acknowledged before"
    );

    let sidecar = format!("{}.last-backup", app.db_path.display());
    let named = std::fs::read_to_string(&sidecar).expect("the .last-backup sidecar");
    assert_eq!(
        Path::new(named.trim()),
        std::fs::canonicalize(&out_path).expect("canonical")
    );

    let bytes = std::fs::read(&out_path).expect("read backup");
    let site = tokio::task::spawn_blocking({
        let out_path = out_path.clone();
        move || {
            site.backup(&out_path).fails_saying(&["already exists"]);
            site
        }
    })
    .await
    .expect("second backup");
    assert_eq!(
        std::fs::read(&out_path).expect("read backup"),
        bytes,
        "overwritten"
    );
    drop(site);
}

// --- restore --------------------------------------------------------------

/// A site whose backup `b.sqlite3` holds alice, and whose database then
/// got bob too.
fn site_with_a_backup() -> (Site, PathBuf) {
    let site = Site::new();
    site.create("alice");
    let backup = site.path("b.sqlite3");
    site.backup(&backup).ok();
    site.create("bob");
    (site, backup)
}

#[test]
fn restore_with_the_server_stopped_brings_the_backup_back_and_keeps_the_old_file() {
    let (site, backup) = site_with_a_backup();
    let out = site.restore(&backup).ok();
    assert_eq!(usernames(&site.db), ["alice"]);
    let kept = site.kept_aside();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(usernames(&kept[0]), ["alice", "bob"]);
    assert!(
        out.stdout.contains(kept[0].to_str().expect("UTF-8")),
        "{}",
        out.stdout
    );
    assert_eq!(integrity(&site.db), "ok");
    site.create("carol");
    assert_eq!(usernames(&site.db), ["alice", "carol"]);
}

#[test]
fn restore_is_refused_while_a_server_holds_the_database() {
    let (site, backup) = site_with_a_backup();
    let mut server = site.serve(&[]);
    site.restore(&backup).fails_saying(&["stop"]);
    assert!(site.kept_aside().is_empty());
    let status = block_on(async { client().get(server.url("/api/health")).send().await });
    assert_eq!(status.expect("health").status(), StatusCode::OK);
    assert!(server.stop("TERM", Duration::from_secs(15)).success());
    assert_eq!(usernames(&site.db), ["alice", "bob"]);
}

#[test]
fn restoring_junk_or_a_missing_file_is_refused_and_changes_nothing() {
    let (site, _) = site_with_a_backup();
    let before = std::fs::read(&site.db).expect("read db");
    let junk = site.path("junk.sqlite3");
    std::fs::write(&junk, "this is not a database, just text\n".repeat(200)).expect("write");
    let mut half = std::fs::read(site.path("b.sqlite3")).expect("read backup");
    half.truncate(half.len() / 2);
    let torn = site.path("torn.sqlite3");
    std::fs::write(&torn, half).expect("write");
    for file in [&junk, &torn, &site.path("missing.sqlite3")] {
        let out = site.restore(file);
        assert!(!out.success, "{}: {}", file.display(), out.stdout);
        assert_eq!(
            std::fs::read(&site.db).expect("read db"),
            before,
            "{}",
            file.display()
        );
        assert!(site.kept_aside().is_empty());
    }
    assert_eq!(usernames(&site.db), ["alice", "bob"]);
}

#[test]
fn a_refused_restore_names_the_file_it_refused() {
    let (site, _) = site_with_a_backup();
    let junk = site.path("junk.sqlite3");
    std::fs::write(&junk, "this is not a database, just text\n".repeat(200)).expect("write");
    site.restore(&junk)
        .fails_saying(&[junk.to_str().expect("UTF-8")]);
}

// --- a corrupt database ---------------------------------------------------

/// Inserts `n` users straight into `db` (created by `user list`).
fn fill(site: &Site, n: usize) {
    site.run(&["user", "list"]).ok();
    let mut conn = rusqlite::Connection::open(&site.db).expect("open");
    let tx = conn.transaction().expect("begin");
    for u in seed(n, "filler") {
        tx.execute(
            "INSERT INTO users (username, email, password_hash, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?4)",
            rusqlite::params![u.username, u.email, "h".repeat(100), u.created_at],
        )
        .expect("insert");
    }
    tx.commit().expect("commit");
}

/// Writes garbage over the second and third 4 KiB pages.
fn corrupt(db: &Path) {
    let mut bytes = std::fs::read(db).expect("read db");
    assert!(bytes.len() > 40_000, "only {} bytes", bytes.len());
    for (i, b) in bytes[4096..12288].iter_mut().enumerate() {
        *b = (i * 7 % 251) as u8;
    }
    std::fs::write(db, bytes).expect("write db");
}

/// A site whose database (400 users) is corrupt; with `backed_up`, a
/// backup `b.sqlite3` was taken before.
fn corrupt_site(backed_up: bool) -> (Site, String) {
    let site = Site::new().default_hashing();
    fill(&site, 400);
    if backed_up {
        site.backup(&site.path("b.sqlite3")).ok();
    }
    corrupt(&site.db);
    let db = site.db.to_str().expect("UTF-8").to_owned();
    (site, db)
}

const SERVE: [&str; 3] = ["serve", "--bind", "127.0.0.1:0"];

/// Asserts `serve` failed without serving, saying "corrupt" (or SQLite's
/// words for it) and every needle; returns stderr.
fn refused_as_corrupt(out: Out, needles: &[&str]) -> String {
    assert!(!out.success, "served a corrupt database: {}", out.stdout);
    assert!(!out.stdout.contains("serving on"), "{}", out.stdout);
    let said = out.stderr.to_lowercase();
    let words = ["corrupt", "malformed", "not a database"];
    assert!(words.iter().any(|w| said.contains(w)), "{}", out.stderr);
    for needle in needles {
        assert!(
            out.stderr.contains(needle),
            "{needle:?} not in {}",
            out.stderr
        );
    }
    out.stderr
}

#[test]
fn serve_refuses_a_corrupt_database_naming_it_and_the_last_backup() {
    let (site, db) = corrupt_site(true);
    let backup = site.path("b.sqlite3");
    refused_as_corrupt(site.run(&SERVE), &[&db, backup.to_str().expect("UTF-8")]);

    std::fs::remove_file(format!("{db}.last-backup")).expect("remove the sidecar");
    let said = refused_as_corrupt(site.run(&SERVE), &[&db]);
    assert!(!said.contains("b.sqlite3"), "{said}");

    let out = site.run(&["doctor"]);
    assert!(!out.success, "{}", out.stdout);
    let fix = out
        .stdout
        .lines()
        .any(|l| l.starts_with("FIX") && l.contains(&db));
    assert!(fix, "{}", out.stdout);
}

#[test]
fn the_corrupt_database_refusal_is_one_line() {
    let (site, db) = corrupt_site(false);
    let said = refused_as_corrupt(site.run(&SERVE), &[&db]);
    assert_eq!(said.trim_end().lines().count(), 1, "{said}");
}

// --- doctor ---------------------------------------------------------------

#[test]
fn doctor_passes_a_good_setup_and_warns_until_a_backup_is_taken() {
    let site = Site::new().default_hashing();
    site.create("alice");
    let out = site.run(&["doctor"]).ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with("ok ") || l.starts_with("warn ")),
        "{}",
        out.stdout
    );
    for needle in [
        "config",
        "secret",
        "integrity ok",
        "schema version",
        "free disk",
    ] {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("ok ") && l.contains(needle)),
            "no ok line about {needle}: {}",
            out.stdout
        );
    }
    let warn = lines
        .iter()
        .find(|l| l.starts_with("warn ") && l.contains("rosterd backup"));
    assert!(warn.is_some(), "{}", out.stdout);

    let backup = site.path("b.sqlite3");
    site.backup(&backup).ok();
    let out = site.run(&["doctor"]).ok();
    assert!(!out.stdout.contains("warn"), "{}", out.stdout);
    let named = std::fs::canonicalize(&backup).expect("canonical");
    assert!(
        out.stdout.contains(named.to_str().expect("UTF-8")),
        "{}",
        out.stdout
    );
}

/// Runs doctor on a site; asserts a failure with a FIX line holding every
/// needle.
fn doctor_fixes(site: &Site, needles: &[&str]) {
    let out = site.run(&["doctor"]);
    assert!(!out.success, "doctor passed: {}", out.stdout);
    let fix = out.stdout.lines().filter(|l| l.starts_with("FIX "));
    let fix: Vec<&str> = fix.collect();
    assert!(
        fix.iter().any(|l| needles.iter().all(|n| l.contains(n))),
        "no FIX line with {needles:?}: {}",
        out.stdout
    );
}

#[test]
fn doctor_says_to_chmod_a_world_readable_config() {
    let site = Site::new().default_hashing();
    site.create("alice");
    let config = site.config();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    doctor_fixes(&site, &["chmod 600", config.to_str().expect("UTF-8")]);
}

#[test]
fn doctor_says_to_fix_a_short_secret() {
    let site = Site::new().default_hashing();
    site.write_config("[auth]\nsecret = \"short\"\n");
    doctor_fixes(&site, &["secret", "32"]);
}

#[test]
fn doctor_says_to_fix_an_unknown_config_key() {
    let site = Site::new().default_hashing();
    site.write_config(&format!(
        "[auth]\nsecret = \"{SECRET}\"\ncolour = \"blue\"\n"
    ));
    doctor_fixes(&site, &["config", "colour"]);
}

// --- logs -----------------------------------------------------------------

#[test]
fn request_lines_reach_the_log_while_serving_and_every_one_by_the_stop() {
    let site = Site::new();
    let mut server = site.serve(&[]);
    block_on(async {
        let health = client().get(server.url("/api/health")).send().await;
        assert_eq!(health.expect("health").status(), StatusCode::OK);
    });
    // Written by the log thread while the server goes on serving.
    let start = Instant::now();
    while !server.log_text().contains("path=\"/api/health\"") {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no request line while serving: {}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // A burst just before the stop: none of its lines is lost.
    block_on(async {
        let c = client();
        for n in 0..200 {
            let missing = c.get(server.url(&format!("/api/missing-{n}"))).send().await;
            assert_eq!(missing.expect("404").status(), StatusCode::NOT_FOUND);
        }
    });
    assert!(server.stop("TERM", Duration::from_secs(15)).success());
    let log = server.log_text();
    for n in 0..200 {
        let path = format!("path=\"/api/missing-{n}\"");
        assert_eq!(log.matches(&path).count(), 1, "{path} in {log}");
    }
    assert!(log.trim_end().ends_with("stopped"), "{log}");
}

/// Registers `user` on the running binary and logs in: the token pair.
async fn register_and_log_in(c: &reqwest::Client, server: &Server, user: &TestUser) -> Value {
    let created = c
        .post(server.url("/api/users"))
        .json(&user.body())
        .send()
        .await;
    assert_eq!(created.expect("register").status(), StatusCode::CREATED);
    let login = json!({"username": user.username, "password": user.password});
    let tokens = c.post(server.url("/api/token")).json(&login).send().await;
    tokens.expect("login").json().await.expect("JSON")
}

/// Whether `line` is `<RFC 3339 UTC to the µs>  <LEVEL> <rest>`, giving the
/// rest.
fn text_line_rest<'a>(line: &'a str, level: &str) -> Option<&'a str> {
    let (stamp, rest) = line.split_at_checked(27)?;
    let stamp_ok = stamp.len() == 27
        && stamp.char_indices().all(|(i, c)| match i {
            4 | 7 => c == '-',
            10 => c == 'T',
            13 | 16 => c == ':',
            19 => c == '.',
            26 => c == 'Z',
            _ => c.is_ascii_digit(),
        });
    let rest = rest.strip_prefix(&format!(" {level:>5} "))?;
    stamp_ok.then_some(rest)
}

#[test]
fn text_log_lines_carry_their_request_s_id_and_a_warning_in_a_request_does_too() {
    let site = Site::new();
    let mut server = site.serve(&[
        ("ROSTERD_AUTH_ROTATE_REFRESH_TOKENS", "true"),
        ("ROSTERD_AUTH_ROTATION_GRACE_PERIOD", "0"),
    ]);
    let user = TestUser::generate();
    let (me_id, reuse_id) = block_on(async {
        let c = client();
        let tokens = register_and_log_in(&c, &server, &user).await;
        let me = c
            .get(server.url("/api/users/me?secret=x"))
            .bearer_auth(tokens["access"].as_str().expect("access"))
            .send()
            .await
            .expect("me");
        assert_eq!(me.status(), StatusCode::OK);
        let me_id = header(me.headers(), "x-request-id").expect("id").to_owned();
        let old = json!({"refresh": tokens["refresh"]});
        let rotated = c
            .post(server.url("/api/token/refresh"))
            .json(&old)
            .send()
            .await;
        assert_eq!(rotated.expect("refresh").status(), StatusCode::OK);
        // Past the (zero-second) grace window, the retired token is reuse.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let reused = c
            .post(server.url("/api/token/refresh"))
            .json(&old)
            .send()
            .await;
        let reused = reused.expect("reuse");
        assert_eq!(reused.status(), StatusCode::UNAUTHORIZED);
        let reuse_id = header(reused.headers(), "x-request-id")
            .expect("id")
            .to_owned();
        (me_id, reuse_id)
    });
    assert!(server.stop("TERM", Duration::from_secs(15)).success());
    let log = server.log_text();
    let lines: Vec<&str> = log.lines().collect();
    let me_line = lines
        .iter()
        .find_map(|l| text_line_rest(l, "INFO").filter(|r| r.contains("/api/users/me")))
        .unwrap_or_else(|| panic!("no request line for /api/users/me: {log}"));
    let rest = me_line
        .strip_prefix(&format!(
            "request{{id={me_id}}}: rosterd::api: request method=GET path=\"/api/users/me\" status=200 ms=\""
        ))
        .unwrap_or_else(|| panic!("unexpected line: {me_line}"));
    let ms = rest.strip_suffix('"').expect("ms quoted");
    assert!(ms.parse::<f64>().is_ok() && ms.contains('.'), "{me_line}");
    // The warning and the request line of the reuse, both with its id.
    let warning = lines
        .iter()
        .find_map(|l| text_line_rest(l, "WARN").filter(|r| r.contains("reused")))
        .unwrap_or_else(|| panic!("no reuse warning: {log}"));
    assert_eq!(
        warning,
        format!(
            "request{{id={reuse_id}}}: rosterd::api::token: retired refresh token reused \
             after the grace window: family revoked user_id=1"
        )
    );
    assert!(
        lines.iter().any(|l| text_line_rest(l, "INFO").is_some_and(|r| r
            .starts_with(&format!("request{{id={reuse_id}}}: rosterd::api: request method=POST path=\"/api/token/refresh\" status=401 ")))),
        "{log}"
    );
    // Lines outside a request have no request id.
    let stopped = lines.last().and_then(|l| text_line_rest(l, "INFO"));
    assert_eq!(stopped, Some("rosterd: stopped"), "{log}");
    assert!(!log.contains("secret=x"), "the query string in the log");
}

#[test]
fn json_logs_are_objects_with_the_request_id_and_never_hold_a_secret() {
    let site = Site::new();
    let mut server = site.serve(&[("ROSTERD_LOG_FORMAT", "json")]);
    let user = TestUser::generate();
    let (tokens, request_id) = block_on(async {
        let c = client();
        let tokens = register_and_log_in(&c, &server, &user).await;
        let access = tokens["access"].as_str().expect("access");
        let me = c
            .get(server.url("/api/users/me"))
            .bearer_auth(access)
            .send()
            .await;
        let me = me.expect("me");
        assert_eq!(me.status(), StatusCode::OK);
        let id = header(me.headers(), "x-request-id")
            .expect("X-Request-Id")
            .to_owned();
        (tokens, id)
    });
    assert!(server.stop("TERM", Duration::from_secs(15)).success());
    let log = server.log_text();
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.iter().all(Value::is_object), "{log}");
    let line = lines
        .iter()
        .find(|l| l.to_string().contains(&request_id) && l.to_string().contains("/api/users/me"))
        .unwrap_or_else(|| panic!("no line with request id {request_id}: {log}"));
    assert_eq!(line["method"], "GET", "{line}");
    assert_eq!(line["level"], "INFO", "{line}");
    assert_eq!(line["message"], "request", "{line}");
    assert_eq!(line["target"], "rosterd::api", "{line}");
    let span = json!({"id": request_id, "name": "request"});
    assert_eq!(line["span"], span, "{line}");
    assert_eq!(line["spans"], json!([span]), "{line}");
    let stamp = line["timestamp"].as_str().expect("timestamp");
    assert!(stamp.len() == 27 && stamp.ends_with('Z'), "{line}");
    assert_eq!(line["path"], "/api/users/me", "{line}");
    assert!(line["status"] == 200 || line["status"] == "200", "{line}");
    for secret in [&tokens["access"], &tokens["refresh"]] {
        assert!(
            !log.contains(secret.as_str().expect("token")),
            "a token in the log"
        );
    }
    assert!(!log.contains(&user.password), "the password in the log");
    assert!(!log.contains(SECRET), "the signing secret in the log");
}
