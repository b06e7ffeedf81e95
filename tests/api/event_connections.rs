//! The connections event streams arrive on, seen from a raw socket: a
//! stream asked for as a connection's first request is served beside hyper
//! (`server::streams`), any other way by hyper; both must look the same to
//! a client, frame the stream as HTTP/1.1 chunks, and let go of the
//! connection when the client or the server is done.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{TestApp, TestUser, expect_json, spawn_app, spawn_app_with};

const WAIT: Duration = Duration::from_secs(5);

/// `GET /api/events?presence=false` with `token` (if any) and `extra`
/// header lines.
fn events_request(token: Option<&str>, extra: &str) -> String {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    format!("GET /api/events?presence=false HTTP/1.1\r\nHost: localhost\r\n{auth}{extra}\r\n")
}

/// A client connection read by hand: the reply's head, then its body,
/// de-chunked when it is chunked.
struct Raw {
    socket: TcpStream,
    buf: Vec<u8>,
    /// The decoded body so far.
    body: Vec<u8>,
    /// The last chunk arrived.
    done: bool,
    /// The reply's head was read.
    headed: bool,
}

impl Raw {
    async fn open(app: &TestApp) -> Raw {
        Raw {
            socket: TcpStream::connect(app.addr).await.expect("connect"),
            buf: Vec::new(),
            body: Vec::new(),
            done: false,
            headed: false,
        }
    }

    /// A stream asked for as the connection's first request, once `ready`
    /// has arrived.
    async fn ready(app: &TestApp, access: &str) -> Raw {
        let mut raw = Raw::open(app).await;
        raw.send(&events_request(Some(access), "")).await;
        raw.until("event: ready").await;
        raw
    }

    /// A connection that has served one request (GET /api/health) by hyper.
    async fn used(app: &TestApp) -> Raw {
        let mut raw = Raw::open(app).await;
        raw.send("GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        let (health, _) = raw.whole().await;
        assert!(health.starts_with("http/1.1 200 "), "{health}");
        raw
    }

    async fn send(&mut self, bytes: &str) {
        self.socket.write_all(bytes.as_bytes()).await.expect("send");
    }

    /// Reads more; false when the server closed the connection.
    async fn fill(&mut self, deadline: tokio::time::Instant) -> bool {
        let mut chunk = [0; 8192];
        let read = tokio::time::timeout_at(deadline, self.socket.read(&mut chunk)).await;
        match read.expect("the server answers within the time") {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// The reply's head, lower-cased; the rest stays in `buf`.
    async fn head(&mut self) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
                self.buf.drain(..end + 4);
                self.headed = true;
                return head;
            }
            assert!(self.fill(deadline).await, "closed before a reply head");
        }
    }

    /// Moves every whole chunk from `buf` to `body`.
    fn dechunk(&mut self) {
        while !self.done {
            let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") else {
                return;
            };
            let size = std::str::from_utf8(&self.buf[..end]).expect("chunk size");
            let size = usize::from_str_radix(size.trim(), 16).expect("hex chunk size");
            if self.buf.len() < end + 2 + size + 2 {
                return;
            }
            assert_eq!(&self.buf[end + 2 + size..end + 4 + size], b"\r\n");
            self.body
                .extend_from_slice(&self.buf[end + 2..end + 2 + size]);
            self.buf.drain(..end + 4 + size);
            self.done = size == 0;
        }
    }

    /// The chunked body's text once it holds `wanted` (the head is read
    /// first when it was not).
    async fn until(&mut self, wanted: &str) -> String {
        if !self.headed {
            let head = self.head().await;
            assert!(head.starts_with("http/1.1 200 "), "{head}");
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            self.dechunk();
            let text = String::from_utf8_lossy(&self.body).into_owned();
            if text.contains(wanted) {
                return text;
            }
            assert!(!self.done, "the stream ended without {wanted:?}: {text:?}");
            assert!(
                self.fill(deadline).await,
                "closed without {wanted:?}: {text:?}"
            );
        }
    }

    /// Whether the chunked body ends with its last chunk and the server
    /// then closes the connection, within `WAIT`.
    async fn ends_and_closes(&mut self) -> bool {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            self.dechunk();
            if !self.fill(deadline).await {
                self.dechunk();
                return self.done;
            }
        }
    }

    /// A reply with `Content-Length`: its head and body.
    async fn whole(&mut self) -> (String, Value) {
        let head = self.head().await;
        let length: usize = header(&head, "content-length")
            .expect("Content-Length")
            .parse()
            .expect("a number");
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.buf.len() < length {
            assert!(self.fill(deadline).await, "closed inside the body");
        }
        let body = serde_json::from_slice(&self.buf[..length]).expect("a JSON body");
        self.buf.drain(..length);
        (head, body)
    }

    /// Whether the server closes the connection within `WAIT`.
    async fn closes(&mut self) -> bool {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.fill(deadline).await {}
        true
    }
}

/// The value of header `name` in a lower-cased `head`.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

#[tokio::test]
async fn a_stream_as_a_first_request_is_chunked_carries_changes_and_ends_with_its_last_chunk() {
    let app = spawn_app().await;
    let (id, access, _) = app.create_user(&TestUser::generate()).await;
    let mut raw = Raw::open(&app).await;
    raw.send(&events_request(Some(&access), "")).await;
    let head = raw.head().await;
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert_eq!(
        header(&head, "content-type"),
        Some("text/event-stream"),
        "{head}"
    );
    assert_eq!(
        header(&head, "transfer-encoding"),
        Some("chunked"),
        "{head}"
    );
    assert_eq!(header(&head, "cache-control"), Some("no-cache"), "{head}");
    assert_eq!(header(&head, "x-accel-buffering"), Some("no"), "{head}");
    assert!(
        header(&head, "x-request-id").is_some_and(|v| !v.is_empty()),
        "{head}"
    );
    assert!(
        header(&head, "date").is_some_and(|v| v.ends_with("gmt")),
        "{head}"
    );
    assert_eq!(header(&head, "content-length"), None, "{head}");
    let text = raw.until("\n\n").await;
    assert_eq!(text, format!("event: ready\ndata: {{\"user\":{id}}}\n\n"));

    let reply = app.patch_user(id, &access, &json!({"level": 4})).await;
    expect_json(reply, StatusCode::OK).await;
    let text = raw.until("\"level\":4").await;
    assert!(
        text.contains("event: user.updated\ndata: {\"id\":"),
        "{text}"
    );

    // Logging out everywhere ends the stream: the last chunk, then a close.
    let out = app
        .send(
            Method::POST,
            "/api/users/me/logout-all",
            Some(&access),
            None,
        )
        .await;
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    assert!(
        raw.ends_and_closes().await,
        "no last chunk before the close"
    );
}

/// A refused stream gets the same reply on a fresh connection as on one
/// that served a request before (where hyper answers), with its length,
/// and the fresh connection is closed after it.
#[tokio::test]
async fn a_refused_stream_gets_the_same_reply_on_a_fresh_connection_and_on_a_used_one() {
    let app = spawn_app_with(|c| c.events.max_streams_per_user = 1).await;
    let (_, access, _) = app.create_user(&TestUser::generate()).await;
    let _held = Raw::ready(&app, &access).await;
    let cases = [
        (events_request(None, ""), 401),
        (events_request(Some("not.a.token"), ""), 401),
        (
            "GET /api/events?ticket=nope HTTP/1.1\r\nHost: x\r\n\r\n".to_owned(),
            401,
        ),
        (events_request(Some(&access), ""), 429),
    ];
    for (request, status) in cases {
        let mut fresh = Raw::open(&app).await;
        fresh.send(&request).await;
        let (head, body) = fresh.whole().await;
        assert!(head.starts_with(&format!("http/1.1 {status} ")), "{head}");
        assert_eq!(header(&head, "connection"), Some("close"), "{head}");
        assert!(fresh.closes().await);

        let mut used = Raw::used(&app).await;
        used.send(&request).await;
        let (again, same) = used.whole().await;
        assert!(again.starts_with(&format!("http/1.1 {status} ")), "{again}");
        assert_eq!(body, same, "{request}");
        assert_eq!(
            header(&head, "content-type"),
            header(&again, "content-type")
        );
        assert_eq!(header(&head, "retry-after"), header(&again, "retry-after"));
    }
}

/// What the lean path leaves to hyper still opens a stream: a stream asked
/// for after another request on the connection, a head that arrives in
/// pieces, a head with a (zero) `Content-Length`.
#[tokio::test]
async fn streams_asked_for_in_other_ways_are_served_too() {
    let app = spawn_app().await;
    let (id, access, _) = app.create_user(&TestUser::generate()).await;
    let ready = format!("event: ready\ndata: {{\"user\":{id}}}\n\n");
    let request = events_request(Some(&access), "");

    let mut after_another = Raw::used(&app).await;
    after_another.send(&request).await;

    let mut in_pieces = Raw::open(&app).await;
    in_pieces.send(&request[..11]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    in_pieces.send(&request[11..]).await;

    let mut with_length = Raw::open(&app).await;
    with_length
        .send(&events_request(Some(&access), "Content-Length: 0\r\n"))
        .await;

    for raw in [&mut after_another, &mut in_pieces, &mut with_length] {
        let head = raw.head().await;
        assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
        assert_eq!(
            header(&head, "transfer-encoding"),
            Some("chunked"),
            "{head}"
        );
        assert_eq!(raw.until("\n\n").await, ready);
    }
    let reply = app.patch_user(id, &access, &json!({"level": 6})).await;
    expect_json(reply, StatusCode::OK).await;
    for raw in [&mut after_another, &mut in_pieces, &mut with_length] {
        let text = raw.until("\"level\":6").await;
        assert!(text.contains("event: user.updated"), "{text}");
    }
}

/// A client that hangs up gives its place back: with one stream allowed a
/// user, a new one opens soon after the first client closed its socket.
#[tokio::test]
async fn a_client_that_hangs_up_gives_its_place_back() {
    let app = spawn_app_with(|c| c.events.max_streams_per_user = 1).await;
    let (_, access, _) = app.create_user(&TestUser::generate()).await;
    let first = Raw::ready(&app, &access).await;
    drop(first);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut next = Raw::open(&app).await;
        next.send(&events_request(Some(&access), "")).await;
        let head = next.head().await;
        if head.starts_with("http/1.1 200 ") {
            next.until("event: ready").await;
            break;
        }
        assert!(head.starts_with("http/1.1 429 "), "{head}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the closed stream still holds its place"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Streams hold no place under `server.max_connections`: with two allowed,
/// four streams are open and a request is still served.
#[tokio::test]
async fn streams_hold_no_connection_slot() {
    let app = spawn_app_with(|c| c.server.max_connections = 2).await;
    let (_, access, _) = app.create_user(&TestUser::generate()).await;
    let mut streams = Vec::new();
    for _ in 0..4 {
        let raw = Raw::ready(&app, &access).await;
        streams.push(raw);
    }
    let health = tokio::time::timeout(WAIT, app.send(Method::GET, "/api/health", None, None))
        .await
        .expect("served while four streams are open");
    assert_eq!(health.status(), StatusCode::OK);
}

/// A graceful stop ends open streams with their last chunk and closes
/// their connections, without waiting for the clients.
#[tokio::test]
async fn a_graceful_stop_ends_open_streams_with_their_last_chunk() {
    let app = spawn_app().await;
    let (_, access, _) = app.create_user(&TestUser::generate()).await;
    let mut fresh = Raw::ready(&app, &access).await;
    let mut used = Raw::used(&app).await;
    used.send(&events_request(Some(&access), "")).await;
    used.head().await;
    used.until("event: ready").await;
    let _stopped = app.stop().await;
    assert!(
        fresh.ends_and_closes().await,
        "no last chunk before the close"
    );
    used.dechunk();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(WAIT, used.socket.read_to_end(&mut rest)).await;
    used.buf.extend_from_slice(&rest);
    used.dechunk();
    assert!(used.done, "hyper's stream ended without its last chunk");
}

/// A socket that has sent nothing yet (so nobody knows whether it will
/// ask for a stream) holds up no graceful stop, and is closed by it.
#[tokio::test]
async fn a_silent_socket_holds_up_no_graceful_stop() {
    let app = spawn_app_with(|c| c.server.header_read_timeout = 60).await;
    let mut silent = Raw::open(&app).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let start = std::time::Instant::now();
    let _stopped = app.stop().await;
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert!(silent.closes().await);
}

/// Stream heads this path leaves to hyper get hyper's refusals, from the
/// first byte: 400 for a control character in a header value, 431 (when
/// the reply gets out before the connection drops) for a head over
/// `server.max_header_bytes`; the server serves on.
#[tokio::test]
async fn malformed_stream_heads_get_hypers_refusals() {
    let app = spawn_app_with(|c| c.server.max_header_bytes = 8192).await;
    let mut bad = Raw::open(&app).await;
    bad.send("GET /api/events HTTP/1.1\r\nHost: x\r\nX-Bad: a\x01b\r\n\r\n")
        .await;
    let head = bad.head().await;
    assert!(head.starts_with("http/1.1 400 "), "{head}");

    let mut big = Raw::open(&app).await;
    let padding = "a".repeat(20_000);
    let _ = big
        .socket
        .write_all(format!("GET /api/events HTTP/1.1\r\nX-Big: {padding}\r\n\r\n").as_bytes())
        .await;
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(WAIT, big.socket.read_to_end(&mut reply)).await;
    let reply = String::from_utf8_lossy(&reply).to_ascii_lowercase();
    assert!(
        reply.is_empty() || reply.starts_with("http/1.1 431 "),
        "{reply}"
    );
    let health = app.send(Method::GET, "/api/health", None, None).await;
    assert_eq!(health.status(), StatusCode::OK);
}
