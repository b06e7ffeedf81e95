//! The change stream (`GET /api/events`, Server-Sent Events) and presence,
//! over real HTTP with a real streaming client: every event type in commit
//! order, the command line's changes, resume, tickets, presence with its
//! grace window and across a restart, revocation, limits, and a client
//! that never reads.

use std::time::Duration;

use reqwest::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, TestUser, expect_json, read_json, spawn_app_with};
use crate::operations::{Site, seed};

/// One event as a client sees it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Received {
    pub(crate) event: String,
    id: Option<i64>,
    pub(crate) data: Value,
}

/// An open stream, read as an `EventSource` would.
pub(crate) struct Stream {
    response: reqwest::Response,
    buffer: String,
}

impl Stream {
    /// The next event within `within`; `None` when the stream ended or
    /// nothing came.
    pub(crate) async fn next(&mut self, within: Duration) -> Option<Received> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = Received {
                    event: "message".to_owned(),
                    id: None,
                    data: Value::Null,
                };
                let mut comment_only = true;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event.event = v.trim().to_owned();
                        comment_only = false;
                    } else if let Some(v) = line.strip_prefix("id:") {
                        event.id = v.trim().parse().ok();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        event.data = serde_json::from_str(v.trim()).expect("data is JSON");
                        comment_only = false;
                    }
                }
                if comment_only {
                    continue;
                }
                return Some(event);
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk()).await;
            match chunk {
                Ok(Ok(Some(bytes))) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
                _ => return None,
            }
        }
    }

    /// Events until one of `kind` arrives (within `within`).
    pub(crate) async fn until(&mut self, kind: &str, within: Duration) -> Vec<Received> {
        let mut seen = Vec::new();
        while let Some(event) = self.next(within).await {
            let done = event.event == kind;
            seen.push(event);
            if done {
                return seen;
            }
        }
        let shown: Vec<&Received> = seen.iter().take(5).collect();
        panic!(
            "no {kind} event within {within:?}; saw {} events, first {shown:?}",
            seen.len()
        );
    }

    /// Whether the server ended the stream within `within` (events before
    /// the end are skipped).
    pub(crate) async fn ends(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.response.chunk()).await {
                Ok(Ok(Some(_))) => continue,
                Ok(_) => return true,
                Err(_) => return false,
            }
        }
    }
}

pub(crate) const WAIT: Duration = Duration::from_secs(5);

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .expect("client")
}

/// GET /api/events`query` with a bearer token (if any) and headers.
async fn open(
    base: &str,
    query: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = client().get(format!("{base}/api/events{query}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("GET /api/events")
}

pub(crate) async fn stream(app: &TestApp, query: &str, token: &str) -> Stream {
    let response = open(&app.base_url, query, Some(token), &[]).await;
    assert_eq!(response.status(), StatusCode::OK);
    Stream {
        response,
        buffer: String::new(),
    }
}

fn quick_grace() -> impl FnOnce(&mut rosterd::config::Config) {
    |c| c.presence.grace_seconds = 1
}

pub(crate) async fn status_of(app: &TestApp, id: i64, token: &str) -> String {
    let body = expect_json(app.get_user(id, token).await, StatusCode::OK).await;
    body["status"].as_str().expect("status").to_owned()
}

#[tokio::test]
async fn a_stream_opens_with_ready_and_carries_every_change_in_commit_order() {
    let app = spawn_app_with(quick_grace()).await;
    let (id, access, _) = app.create_user(&TestUser::generate()).await;
    let response = open(&app.base_url, "?presence=false", Some(&access), &[]).await;
    assert_eq!(response.status(), StatusCode::OK);
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    assert_eq!(
        header(CONTENT_TYPE.as_str()).as_deref(),
        Some("text/event-stream")
    );
    assert_eq!(header(CACHE_CONTROL.as_str()).as_deref(), Some("no-cache"));
    assert_eq!(header("x-accel-buffering").as_deref(), Some("no"));
    let mut events = Stream {
        response,
        buffer: String::new(),
    };
    let ready = events.next(WAIT).await.expect("ready");
    assert_eq!(
        (ready.event.as_str(), &ready.data),
        ("ready", &json!({ "user": id }))
    );

    let other = TestUser::generate();
    let (other_id, other_access, _) = app.create_user(&other).await;
    let patched = app.patch_user(id, &access, &json!({"level": 7})).await;
    let patched = expect_json(patched, StatusCode::OK).await;
    let refused = app.patch_user(id, &access, &json!({"level": -1})).await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let deleted = app.delete_user(other_id, &other_access).await;
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);

    let created = events.next(WAIT).await.expect("user.created");
    assert_eq!(created.event, "user.created");
    assert_eq!(created.data["id"], other_id);
    assert_eq!(created.data["username"], other.username.as_str());
    let updated = events.next(WAIT).await.expect("user.updated");
    assert_eq!(updated.event, "user.updated");
    assert_eq!(updated.data, patched, "the user as rendered everywhere");
    let gone = events.next(WAIT).await.expect("user.deleted");
    assert_eq!(
        (gone.event.as_str(), &gone.data),
        ("user.deleted", &json!({ "id": other_id }))
    );
    let ids: Vec<i64> = [&created, &updated, &gone]
        .iter()
        .map(|e| e.id.expect("id"))
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids grow strictly: {ids:?}"
    );
    assert_eq!(
        events.next(Duration::from_millis(700)).await,
        None,
        "nothing for the refused PATCH"
    );
}

/// A user created with `rosterd user create` while the server runs reaches
/// an open stream, within a second or so.
#[tokio::test]
async fn a_change_made_by_the_command_line_reaches_open_streams() {
    let site = Site::new();
    let server = site.serve(&[]);
    let base = format!("http://127.0.0.1:{}", server.port);
    let user = json!({"username": "watcher", "email": "w@example.com", "password": "a-long-passphrase-77"});
    let http = client();
    http.post(format!("{base}/api/users"))
        .json(&user)
        .send()
        .await
        .expect("register");
    let body = http
        .post(format!("{base}/api/token"))
        .json(&user)
        .send()
        .await
        .expect("login");
    let access = expect_json(body, StatusCode::OK).await["access"]
        .as_str()
        .expect("access")
        .to_owned();
    let mut events = Stream {
        response: open(&base, "?presence=false", Some(&access), &[]).await,
        buffer: String::new(),
    };
    events.until("ready", WAIT).await;
    site.create("fromcli");
    let created = events.until("user.created", Duration::from_secs(3)).await;
    assert_eq!(created.last().expect("event").data["username"], "fromcli");
}

/// `Last-Event-ID` (header or query) replays what came after it while it is
/// held; an id no longer held (or never given) gets `reset`.
#[tokio::test]
async fn resume_replays_held_events_and_resets_otherwise() {
    let app = spawn_app_with(quick_grace()).await;
    let (id, access, _) = app.create_user(&TestUser::generate()).await;
    let mut first = stream(&app, "?presence=false", &access).await;
    first.until("ready", WAIT).await;
    for level in [2, 3, 4] {
        expect_json(
            app.patch_user(id, &access, &json!({"level": level})).await,
            StatusCode::OK,
        )
        .await;
    }
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(first.next(WAIT).await.expect("event").id.expect("id"));
    }
    drop(first);
    for (query, headers) in [
        (
            String::from("?presence=false"),
            vec![("last-event-id", ids[0].to_string())],
        ),
        (format!("?presence=false&last_event_id={}", ids[0]), vec![]),
    ] {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let mut again = Stream {
            response: open(&app.base_url, &query, Some(&access), &headers).await,
            buffer: String::new(),
        };
        assert_eq!(again.next(WAIT).await.expect("ready").event, "ready");
        let replayed: Vec<(Option<i64>, Value)> = [again.next(WAIT).await, again.next(WAIT).await]
            .into_iter()
            .map(|e| e.expect("replayed"))
            .map(|e| (e.id, e.data["level"].clone()))
            .collect();
        assert_eq!(
            replayed,
            [(Some(ids[1]), json!(3)), (Some(ids[2]), json!(4))],
            "{query}"
        );
    }
    // Past what is held: 10,000 rows are kept.
    app.seed_users(&seed(10_050, "flood"));
    for last in [
        ids[0].to_string(),
        "999999999".to_owned(),
        "junk".to_owned(),
    ] {
        let mut late = Stream {
            response: open(
                &app.base_url,
                "?presence=false",
                Some(&access),
                &[("last-event-id", &last)],
            )
            .await,
            buffer: String::new(),
        };
        assert_eq!(late.next(WAIT).await.expect("ready").event, "ready");
        let reset = late.next(WAIT).await.expect("reset");
        assert_eq!(
            (reset.event.as_str(), &reset.data),
            ("reset", &json!({})),
            "{last}"
        );
    }
}

/// A ticket opens one stream for its caller, once; a used or unknown one is
/// 401 `token_not_valid`; getting one needs a valid token.
#[tokio::test]
async fn a_ticket_opens_one_stream_for_its_caller_once() {
    let app = spawn_app_with(quick_grace()).await;
    let (id, access, _) = app.create_user(&TestUser::generate()).await;
    let resp = app
        .send(Method::POST, "/api/events/ticket", Some(&access), None)
        .await;
    let body = expect_json(resp, StatusCode::OK).await;
    assert_eq!(body["expires_in"], 30);
    let ticket = body["ticket"].as_str().expect("ticket").to_owned();
    let query = format!("?presence=false&ticket={ticket}");
    let mut events = Stream {
        response: open(&app.base_url, &query, None, &[]).await,
        buffer: String::new(),
    };
    let ready = events.next(WAIT).await.expect("ready");
    assert_eq!(ready.data, json!({ "user": id }));
    for query in [query.as_str(), "?ticket=0123456789abcdef0123456789abcdef"] {
        let (status, body) = read_json(open(&app.base_url, query, None, &[]).await).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{query}: {body}");
        assert_eq!(body["code"], "token_not_valid", "{query}");
    }
    let (status, _) = read_json(open(&app.base_url, "", None, &[]).await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "no token, no ticket");
    let resp = app
        .send(Method::POST, "/api/events/ticket", None, None)
        .await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = app
        .send(Method::GET, "/api/events/ticket", Some(&access), None)
        .await;
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
}

/// Presence: the first stream makes a user online (with its event), busy
/// stays busy; the last one closing makes them offline after the grace
/// window and not before; a reconnect within it keeps them online; a status
/// set without a stream is left alone.
#[tokio::test]
async fn presence_follows_the_streams_with_a_grace_window() {
    let app = spawn_app_with(|c| c.presence.grace_seconds = 2).await;
    let (id, access, _) = app.create_user(&TestUser::generate()).await;
    let (watcher, watcher_access, _) = app.create_user(&TestUser::generate()).await;
    let mut watch = stream(&app, "?presence=false", &watcher_access).await;
    watch.until("ready", WAIT).await;

    let first = stream(&app, "", &access).await;
    let online = watch.until("user.updated", WAIT).await;
    assert_eq!(online.last().expect("event").data["status"], "online");
    let second = stream(&app, "", &access).await;
    drop(first);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        status_of(&app, id, &access).await,
        "online",
        "one stream is still open"
    );
    drop(second);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        status_of(&app, id, &access).await,
        "online",
        "within the grace window"
    );
    let back = stream(&app, "", &access).await; // a page reload
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        status_of(&app, id, &access).await,
        "online",
        "reconnected in time"
    );
    drop(back);
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_eq!(status_of(&app, id, &access).await, "offline");
    let offline = watch.until("user.updated", WAIT).await;
    assert_eq!(offline.last().expect("event").data["status"], "offline");

    // Busy stays busy while streaming.
    expect_json(
        app.patch_user(id, &access, &json!({"status": "busy"}))
            .await,
        StatusCode::OK,
    )
    .await;
    let busy = stream(&app, "", &access).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(status_of(&app, id, &access).await, "busy");
    drop(busy);
    // A status set with no stream is left alone.
    expect_json(
        app.patch_user(watcher, &watcher_access, &json!({"status": "online"}))
            .await,
        StatusCode::OK,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_eq!(status_of(&app, watcher, &watcher_access).await, "online");
    assert_eq!(
        status_of(&app, id, &access).await,
        "offline",
        "the busy user's stream closed"
    );
}

/// A user online through a stream when the server stopped goes offline
/// after the grace window of the next start, unless they reconnect.
#[tokio::test]
async fn a_restart_leaves_nobody_online_forever() {
    let app = spawn_app_with(quick_grace()).await;
    let (id, access, _) = app.create_user(&TestUser::generate()).await;
    let mut events = stream(&app, "", &access).await;
    events.until("ready", WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(status_of(&app, id, &access).await, "online");
    let stopped = app.stop().await;
    assert!(events.ends(WAIT).await, "streams end when the server stops");
    let app = stopped.start().await;
    assert_eq!(status_of(&app, id, &access).await, "online");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(status_of(&app, id, &access).await, "offline");
}

/// A stream ends when its user logs out everywhere, is deactivated or is
/// deleted (the deletion's event first).
#[tokio::test]
async fn revocation_deactivation_and_deletion_close_the_stream() {
    let app = spawn_app_with(quick_grace()).await;
    let (_, staff, _) = app.create_staff().await;

    let (_, access, _) = app.create_user(&TestUser::generate()).await;
    let mut events = stream(&app, "?presence=false", &access).await;
    events.until("ready", WAIT).await;
    let resp = app
        .send(
            Method::POST,
            "/api/users/me/logout-all",
            Some(&access),
            None,
        )
        .await;
    assert!(resp.status().is_success());
    assert!(events.ends(WAIT).await, "logout-all closes the stream");

    let user = TestUser::generate();
    let (id, access, _) = app.create_user(&user).await;
    let mut events = stream(&app, "?presence=false", &access).await;
    events.until("ready", WAIT).await;
    app.exec("UPDATE users SET is_active = 0 WHERE id = ?1", id);
    assert!(events.ends(WAIT).await, "deactivation closes the stream");

    let (id, access, _) = app.create_user(&TestUser::generate()).await;
    let mut events = stream(&app, "?presence=false", &access).await;
    events.until("ready", WAIT).await;
    assert_eq!(
        app.delete_user(id, &staff).await.status(),
        StatusCode::NO_CONTENT
    );
    let last = events.until("user.deleted", WAIT).await;
    assert_eq!(last.last().expect("event").data, json!({ "id": id }));
    assert!(events.ends(WAIT).await, "deletion closes the stream");
}

/// Past `events.max_streams_per_user`: 429; past `events.max_streams`: 503;
/// both with `Retry-After`; a closed stream frees its place.
#[tokio::test]
async fn stream_limits_answer_429_and_503() {
    let app = spawn_app_with(|c| {
        c.events.max_streams_per_user = 2;
        c.events.max_streams = 3;
    })
    .await;
    let (_, a, _) = app.create_user(&TestUser::generate()).await;
    let (_, b, _) = app.create_user(&TestUser::generate()).await;
    let (_, c, _) = app.create_user(&TestUser::generate()).await;
    let a1 = stream(&app, "?presence=false", &a).await;
    let _a2 = stream(&app, "?presence=false", &a).await;
    let third = open(&app.base_url, "?presence=false", Some(&a), &[]).await;
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(third.headers().get(RETRY_AFTER).is_some());
    let _b1 = stream(&app, "?presence=false", &b).await;
    let full = open(&app.base_url, "?presence=false", Some(&c), &[]).await;
    assert_eq!(full.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(full.headers().get(RETRY_AFTER).is_some());
    drop(a1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _c1 = stream(&app, "?presence=false", &c).await;
}

/// A client that never reads holds up no writer: PATCHes go on succeeding
/// while 30,000 events pile up for it (its socket's receive buffer is kept
/// small, so they cannot all wait in the kernel); when it reads again, it
/// is told to `reset`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_gets_reset_and_holds_up_no_writer() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app_with(quick_grace()).await;
    let (id, access, _) = app.create_user(&TestUser::generate()).await;
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let address = app
        .base_url
        .trim_start_matches("http://")
        .parse()
        .expect("address");
    let mut stalled = socket.connect(address).await.expect("connect");
    let request = format!(
        "GET /api/events?presence=false HTTP/1.1\r\nHost: localhost\r\n\
         Authorization: Bearer {access}\r\n\r\n"
    );
    stalled.write_all(request.as_bytes()).await.expect("send");
    app.seed_users(&seed(30_000, "burst"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for level in 0..20 {
        let body = json!({"level": level});
        expect_json(app.patch_user(id, &access, &body).await, StatusCode::OK).await;
    }
    let mut seen = Vec::new();
    let mut chunk = vec![0; 64 * 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let reset = loop {
        let read = tokio::time::timeout_at(deadline, stalled.read(&mut chunk)).await;
        let from = seen.len().saturating_sub(12);
        match read {
            Ok(Ok(n)) if n > 0 => seen.extend_from_slice(&chunk[..n]),
            _ => break false,
        }
        if seen[from..].windows(12).any(|w| w == b"event: reset") {
            break true;
        }
    };
    let created = String::from_utf8_lossy(&seen)
        .matches("event: user.created")
        .count();
    assert!(reset, "no reset after {created} of 30,000 events");
    assert!(
        created < 30_000,
        "it lost its backlog ({created} events before reset)"
    );
}

/// The wire format: `event: `, `data: `, `id: ` with a space, as the SSE
/// specification writes them, and a `: keep-alive` comment within 15 s
/// (and some).
#[tokio::test]
async fn the_wire_format_and_keep_alive_comments() {
    let app = spawn_app_with(quick_grace()).await;
    let (id, access, _) = app.create_user(&TestUser::generate()).await;
    let mut events = stream(&app, "?presence=false", &access).await;
    expect_json(
        app.patch_user(id, &access, &json!({"level": 3})).await,
        StatusCode::OK,
    )
    .await;
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(17);
    while !text.contains(": keep-alive\n") {
        match tokio::time::timeout_at(deadline, events.response.chunk()).await {
            Ok(Ok(Some(bytes))) => text.push_str(&String::from_utf8_lossy(&bytes)),
            _ => panic!("no keep-alive comment within 17 s; got {text:?}"),
        }
    }
    assert!(
        text.starts_with(&format!("event: ready\ndata: {{\"user\":{id}}}\n\n")),
        "{text:?}"
    );
    assert!(text.contains("event: user.updated\ndata: {"), "{text:?}");
    assert!(text.contains("\nid: "), "{text:?}");
}

/// A stream is refused as any authenticated request is: a token voided by
/// logout-all gets 401 `token_not_valid`, a deactivated user's token 401
/// `user_not_found`, a ticket of a voided token 401 too.
#[tokio::test]
async fn void_tokens_and_inactive_users_open_no_stream() {
    let app = spawn_app_with(quick_grace()).await;
    let (_, access, _) = app.create_user(&TestUser::generate()).await;
    let ticket = app
        .send(Method::POST, "/api/events/ticket", Some(&access), None)
        .await;
    let ticket = expect_json(ticket, StatusCode::OK).await["ticket"]
        .as_str()
        .expect("ticket")
        .to_owned();
    let out = app
        .send(
            Method::POST,
            "/api/users/me/logout-all",
            Some(&access),
            None,
        )
        .await;
    assert!(out.status().is_success());
    let (status, body) = read_json(open(&app.base_url, "", Some(&access), &[]).await).await;
    assert_eq!(
        (status, &body["code"]),
        (StatusCode::UNAUTHORIZED, &json!("token_not_valid"))
    );
    let query = format!("?ticket={ticket}");
    let (status, _) = read_json(open(&app.base_url, &query, None, &[]).await).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the ticket's token is void"
    );

    let (id, access, _) = app.create_user(&TestUser::generate()).await;
    app.exec("UPDATE users SET is_active = 0 WHERE id = ?1", id);
    let (status, body) = read_json(open(&app.base_url, "", Some(&access), &[]).await).await;
    assert_eq!(
        (status, &body["code"]),
        (StatusCode::UNAUTHORIZED, &json!("user_not_found"))
    );
}
