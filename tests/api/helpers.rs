//! The test harness: `spawn_app()` starts the real `run()` on a fresh SQLite
//! file in a temp dir at `127.0.0.1:0` — or, when `ROSTERD_TEST_POSTGRES`
//! names a PostgreSQL server (`tests/postgres/start.sh`), on a fresh database
//! there: the one switch that runs the suite on both backends. `TestApp` has
//! one helper per endpoint, `TestUser` is the account fixture, and the
//! `assert_*` functions read replies the way API.md says every reply must
//! look.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use jsonwebtoken::{EncodingKey, Header};
use reqwest::header::{ALLOW, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use rosterd::config::{Config, Secret};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The signing secret of every test server.
pub const SECRET: &str = "a-test-secret-that-is-long-enough-0123456789";

/// The PBKDF2 floor: fast tests. One test uses the 600,000 default.
pub const FAST_ITERATIONS: u32 = 1000;

/// A running server and what is needed to poke at it.
pub struct TestApp {
    /// The PostgreSQL database's URL, when the suite runs there.
    pub database_url: Option<String>,
    pub addr: SocketAddr,
    pub base_url: String,
    pub db_path: PathBuf,
    pub dir: TempDir,
    pub client: reqwest::Client,
    pub config: Config,
    shutdown: Option<oneshot::Sender<()>>,
    handle: JoinHandle<anyhow::Result<()>>,
}

/// What outlives a stopped server: its directory (and database) and config.
pub struct Stopped {
    pub dir: TempDir,
    pub config: Config,
}

/// A server with the test defaults: fast hashing, the test secret, no
/// login throttling (tests log in faster than people do; the throttling
/// tests switch it back on).
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// A server with the test defaults changed by `customize`.
pub async fn spawn_app_with(customize: impl FnOnce(&mut Config)) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = Config::default();
    config.auth.secret = Secret::new(SECRET);
    config.auth.pbkdf2_iterations = FAST_ITERATIONS;
    config.rate_limit.enabled = false;
    config.database.path = Some(dir.path().join("rosterd.sqlite3"));
    config.database.url = postgres::fresh_database().map(Secret::new);
    customize(&mut config);
    start(dir, config).await
}

/// Whether the suite runs on PostgreSQL (`ROSTERD_TEST_POSTGRES`).
pub fn on_postgres() -> bool {
    postgres::server().is_some()
}

/// Skips (returns from) a test that checks something only the SQLite file
/// has (its WAL, its pragmas, a file to corrupt or back up), when the suite
/// runs on PostgreSQL.
#[macro_export]
macro_rules! sqlite_only {
    () => {
        if $crate::helpers::on_postgres() {
            eprintln!("skipped on PostgreSQL: about the SQLite file");
            return;
        }
    };
}

/// The PostgreSQL side of the harness: a database per server, and plain
/// statements for the checks. The blocking client runs on its own thread
/// (it refuses to run inside the tests' async runtime).
pub mod postgres {
    use std::sync::atomic::{AtomicU64, Ordering};

    /// The server named by `ROSTERD_TEST_POSTGRES` (a superuser URL).
    pub fn server() -> Option<String> {
        std::env::var("ROSTERD_TEST_POSTGRES")
            .ok()
            .filter(|url| !url.is_empty())
    }

    /// Runs `f` with a session to `url` on a thread of its own.
    pub fn with<T: Send>(url: &str, f: impl FnOnce(&mut ::postgres::Client) -> T + Send) -> T {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let mut client = ::postgres::Client::connect(url, ::postgres::NoTls)
                        .unwrap_or_else(|err| panic!("cannot connect to {url}: {err}"));
                    f(&mut client)
                })
                .join()
                .expect("the PostgreSQL helper thread panicked")
        })
    }

    /// A new, empty database on the test server, as a URL; `None` on SQLite.
    pub fn fresh_database() -> Option<String> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let server = server()?;
        let name = format!(
            "rosterd_{}_{}_{:08x}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        );
        with(&server, |client| {
            client
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .expect("create a test database")
        });
        let base = server
            .rsplit_once('/')
            .map_or(server.as_str(), |(base, _)| base);
        Some(format!("{base}/{name}"))
    }

    /// SQLite's test statements in PostgreSQL's words: `?N` parameters,
    /// 0/1 for the boolean columns.
    pub fn dialect(sql: &str) -> String {
        let mut out = sql.replace('?', "$");
        for column in ["is_staff", "is_active"] {
            out = out
                .replace(&format!("{column} = 1"), &format!("{column} = true"))
                .replace(&format!("{column} = 0"), &format!("{column} = false"));
        }
        out
    }
}

async fn start(dir: TempDir, config: Config) -> TestApp {
    let db_path = config.database.path.clone().expect("database.path is set");
    let database_url = config.database.url.as_ref().map(|u| u.expose().to_owned());
    let state = rosterd::AppState::new(config.clone()).expect("AppState::new");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(rosterd::run(listener, state, async move {
        let _ = rx.await;
    }));
    TestApp {
        database_url,
        addr,
        base_url: format!("http://{addr}"),
        db_path,
        dir,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client"),
        config,
        shutdown: Some(tx),
        handle,
    }
}

impl Stopped {
    /// A new `AppState` and `run()` on the same database file.
    pub async fn start(self) -> TestApp {
        start(self.dir, self.config).await
    }
}

impl TestApp {
    /// Graceful shutdown; fails the test unless `run()` returns `Ok` soon.
    pub async fn stop(mut self) -> Stopped {
        drop(self.client);
        let _ = self.shutdown.take().expect("running").send(());
        tokio::time::timeout(Duration::from_secs(10), self.handle)
            .await
            .expect("run() returns within 10 s of the shutdown signal")
            .expect("run() does not panic")
            .expect("run() returns Ok after a graceful shutdown");
        Stopped {
            dir: self.dir,
            config: self.config,
        }
    }

    /// Stops the server and starts a new one on the same file.
    pub async fn restart(self) -> TestApp {
        self.stop().await.start().await
    }

    /// A request to `path` (under the base URL), with a bearer token if any.
    pub fn request(&self, method: Method, path: &str, token: Option<&str>) -> RequestBuilder {
        let builder = self
            .client
            .request(method, format!("{}{path}", self.base_url));
        match token {
            Some(token) => builder.header(AUTHORIZATION, format!("Bearer {token}")),
            None => builder,
        }
    }

    /// Sends `method path` with an optional token and an optional JSON body.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Response {
        let builder = self.request(method, path, token);
        let builder = match body {
            Some(body) => builder.json(body),
            None => builder,
        };
        builder.send().await.expect("request sent")
    }

    pub async fn register_json(&self, body: &Value) -> Response {
        self.send(Method::POST, "/api/users", None, Some(body))
            .await
    }

    pub async fn register(&self, username: &str, email: &str, password: &str) -> Response {
        self.register_json(&json!({"username": username, "email": email, "password": password}))
            .await
    }

    pub async fn login(&self, username: &str, password: &str) -> Response {
        let body = json!({"username": username, "password": password});
        self.send(Method::POST, "/api/token", None, Some(&body))
            .await
    }

    pub async fn refresh(&self, refresh: &str) -> Response {
        let body = json!({ "refresh": refresh });
        self.send(Method::POST, "/api/token/refresh", None, Some(&body))
            .await
    }

    pub async fn get_users(&self, token: &str) -> Response {
        self.send(Method::GET, "/api/users", Some(token), None)
            .await
    }

    pub async fn get_user(&self, id: i64, token: &str) -> Response {
        self.send(Method::GET, &format!("/api/users/{id}"), Some(token), None)
            .await
    }

    pub async fn get_me(&self, token: &str) -> Response {
        self.send(Method::GET, "/api/users/me", Some(token), None)
            .await
    }

    pub async fn put_user(&self, id: i64, token: &str, body: &Value) -> Response {
        let path = format!("/api/users/{id}");
        self.send(Method::PUT, &path, Some(token), Some(body)).await
    }

    pub async fn patch_user(&self, id: i64, token: &str, body: &Value) -> Response {
        let path = format!("/api/users/{id}");
        self.send(Method::PATCH, &path, Some(token), Some(body))
            .await
    }

    pub async fn delete_user(&self, id: i64, token: &str) -> Response {
        let path = format!("/api/users/{id}");
        self.send(Method::DELETE, &path, Some(token), None).await
    }

    /// GET `path` with a raw `Authorization` header value (or none).
    pub async fn get_with_authorization(
        &self,
        path: &str,
        authorization: Option<&str>,
    ) -> Response {
        let builder = self.request(Method::GET, path, None);
        let builder = match authorization {
            Some(value) => builder.header(AUTHORIZATION, value),
            None => builder,
        };
        builder.send().await.expect("request sent")
    }

    /// Registers and logs in `user`: (id, access, refresh).
    pub async fn create_user(&self, user: &TestUser) -> (i64, String, String) {
        let created = expect_json(
            self.register(&user.username, &user.email, &user.password)
                .await,
            StatusCode::CREATED,
        )
        .await;
        let tokens = expect_json(
            self.login(&user.username, &user.password).await,
            StatusCode::OK,
        )
        .await;
        (
            created["id"].as_i64().expect("integer id"),
            tokens["access"].as_str().expect("access").to_owned(),
            tokens["refresh"].as_str().expect("refresh").to_owned(),
        )
    }

    /// A fresh user made staff through the database: (id, access, refresh).
    pub async fn create_staff(&self) -> (i64, String, String) {
        let created = self.create_user(&TestUser::generate()).await;
        self.exec("UPDATE users SET is_staff = 1 WHERE id = ?1", created.0);
        created
    }

    /// A connection to the server's SQLite file (tests about the file:
    /// they start with `sqlite_only!()`).
    pub fn db(&self) -> rusqlite::Connection {
        assert!(
            self.database_url.is_none(),
            "a SQLite-only check ran on PostgreSQL: start the test with sqlite_only!()"
        );
        let conn = rusqlite::Connection::open(&self.db_path).expect("open the database");
        conn.busy_timeout(Duration::from_secs(10))
            .expect("busy timeout");
        conn
    }

    /// Runs one statement with the user id as `?1`; asserts it hit a row.
    pub fn exec(&self, sql: &str, id: i64) {
        let changed = match &self.database_url {
            Some(url) => postgres::with(url, |client| {
                client.execute(&postgres::dialect(sql), &[&id]).expect(sql) as usize
            }),
            None => self.db().execute(sql, [id]).expect(sql),
        };
        assert_eq!(changed, 1, "{sql} with id {id}");
    }

    /// Runs one statement without parameters (SQLite's words); how many
    /// rows it changed.
    pub fn sql(&self, sql: &str) -> usize {
        match &self.database_url {
            Some(url) => postgres::with(url, |client| {
                client.execute(&postgres::dialect(sql), &[]).expect(sql) as usize
            }),
            None => self.db().execute(sql, []).expect(sql),
        }
    }

    /// The count a `SELECT count(*) ...` with one text parameter `?1`
    /// answers.
    pub fn count(&self, sql: &str, param: &str) -> i64 {
        match &self.database_url {
            Some(url) => postgres::with(url, |client| {
                client
                    .query_one(&postgres::dialect(sql), &[&param])
                    .expect(sql)
                    .get(0)
            }),
            None => self
                .db()
                .query_row(sql, [param], |row| row.get(0))
                .expect(sql),
        }
    }

    /// The flags that point the command line at this server's database.
    pub fn database_args(&self) -> Vec<std::ffi::OsString> {
        match &self.database_url {
            Some(url) => vec!["--database-url".into(), url.into()],
            None => vec!["--db".into(), self.db_path.clone().into()],
        }
    }

    pub fn user_count(&self) -> i64 {
        if let Some(url) = &self.database_url {
            return postgres::with(url, |client| {
                client
                    .query_one("SELECT count(*) FROM users", &[])
                    .expect("count users")
                    .get(0)
            });
        }
        self.db()
            .query_row("SELECT count(*) FROM users", [], |row| row.get(0))
            .expect("count users")
    }

    /// One column of one user row, as JSON (null when the row is gone;
    /// PostgreSQL's booleans as SQLite's 0 and 1).
    pub fn column(&self, id: i64, column: &str) -> Value {
        if let Some(url) = &self.database_url {
            let sql = format!("SELECT {column} FROM users WHERE id = $1");
            return postgres::with(url, |client| {
                let Some(row) = client.query_opt(&sql, &[&id]).expect(&sql) else {
                    return Value::Null;
                };
                if let Ok(value) = row.try_get::<_, Option<i64>>(0) {
                    return json!(value);
                }
                if let Ok(value) = row.try_get::<_, Option<bool>>(0) {
                    return json!(value.map(i64::from));
                }
                json!(row.get::<_, Option<String>>(0))
            });
        }
        let sql = format!("SELECT {column} FROM users WHERE id = ?1");
        let value: Option<rusqlite::types::Value> = self
            .db()
            .query_row(&sql, [id], |row| row.get(0))
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })
            .expect(&sql);
        match value {
            None | Some(rusqlite::types::Value::Null) => Value::Null,
            Some(rusqlite::types::Value::Integer(i)) => json!(i),
            Some(rusqlite::types::Value::Text(s)) => json!(s),
            Some(other) => panic!("unexpected {other:?} in {column}"),
        }
    }

    /// The whole user row as text, to check that a refused change left it alone.
    pub fn row(&self, id: i64) -> Vec<Value> {
        [
            "username",
            "email",
            "password_hash",
            "level",
            "status",
            "profile_picture",
            "is_staff",
            "is_active",
            "created_at",
            "updated_at",
        ]
        .iter()
        .map(|column| self.column(id, column))
        .collect()
    }
}

/// An account to register: unique name and email, a strong password.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub username: String,
    pub email: String,
    pub password: String,
}

impl TestUser {
    pub fn generate() -> TestUser {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        TestUser {
            username: format!("user{n}"),
            email: format!("user{n}@example.com"),
            password: format!("correct-horse-battery-{n}"),
        }
    }

    /// The registration body.
    pub fn body(&self) -> Value {
        json!({"username": self.username, "email": self.email, "password": self.password})
    }
}

/// Reads the body of a reply that must be JSON; panics with the body
/// otherwise. A password hash must never be in any reply.
pub async fn read_json(resp: Response) -> (StatusCode, Value) {
    let status = resp.status();
    let content_type = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = resp.text().await.expect("body read");
    assert!(
        content_type
            .as_deref()
            .is_some_and(|ct| ct.starts_with("application/json")),
        "{status}: Content-Type {content_type:?} is not application/json; body {text}"
    );
    assert!(!text.contains("pbkdf2"), "a hash leaked: {text}");
    let value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{status}: body is not JSON ({e}): {text}"));
    (status, value)
}

/// Asserts the status and JSON-ness of a reply; returns its body.
pub async fn expect_json(resp: Response, expected: StatusCode) -> Value {
    let (status, body) = read_json(resp).await;
    assert_eq!(status, expected, "body: {body}");
    body
}

/// Asserts the status and the exact JSON body.
pub async fn assert_reply(resp: Response, status: StatusCode, expected: Value) {
    assert_eq!(expect_json(resp, status).await, expected);
}

/// Asserts a 401 with the `WWW-Authenticate` header and the exact body.
pub async fn assert_401(resp: Response, expected: Value) {
    let challenge = resp.headers().get(WWW_AUTHENTICATE).cloned();
    assert_reply(resp, StatusCode::UNAUTHORIZED, expected).await;
    assert_eq!(
        challenge.as_ref().and_then(|v| v.to_str().ok()),
        Some(r#"Bearer realm="api""#),
        "WWW-Authenticate of a 401"
    );
}

/// The body of a 401 for a bad access token, `message` being simplejwt's.
pub fn bad_access_token(message: &str) -> Value {
    json!({
        "detail": "Given token not valid for any token type",
        "code": "token_not_valid",
        "messages": [{"token_class": "AccessToken", "token_type": "access", "message": message}],
    })
}

/// The body of a 401 for a bad token at refresh.
pub fn bad_token(detail: &str) -> Value {
    json!({"detail": detail, "code": "token_not_valid"})
}

/// Asserts the 401 a valid token of a gone or inactive user gets.
pub async fn assert_user_not_found(resp: Response) {
    assert_401(
        resp,
        json!({"detail": "User not found", "code": "user_not_found"}),
    )
    .await;
}

/// Asserts a 400 whose keys are exactly `fields`, each a non-empty list of
/// strings; returns the body.
pub async fn assert_field_errors(resp: Response, fields: &[&str]) -> Value {
    check_field_errors(resp, fields, None)
        .await
        .unwrap_or_else(|problem| panic!("{problem}"))
}

/// Asserts a 400 for one field whose messages include `message`.
pub async fn assert_field_message(resp: Response, field: &str, message: &str) {
    if let Err(problem) = check_field_errors(resp, &[field], Some(message)).await {
        panic!("{problem}");
    }
}

/// Whether a reply is a 400 JSON with exactly the keys `fields`, each a
/// non-empty list of strings, the first including `message` if given; for
/// tables of cases that report every bad one at once.
pub async fn check_field_errors(
    resp: Response,
    fields: &[&str],
    message: Option<&str>,
) -> Result<Value, String> {
    let (status, body) = read_json(resp).await;
    let object = body.as_object().cloned().unwrap_or_default();
    let keys: BTreeSet<&str> = object.keys().map(String::as_str).collect();
    let lists = object.values().all(|messages| {
        messages
            .as_array()
            .is_some_and(|m| !m.is_empty() && m.iter().all(Value::is_string))
    });
    let has_message = message.is_none_or(|message| {
        body[fields[0]]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m == message))
    });
    let wanted: BTreeSet<&str> = fields.iter().copied().collect();
    if status == StatusCode::BAD_REQUEST && keys == wanted && lists && has_message {
        Ok(body)
    } else {
        Err(format!(
            "expected 400 with {fields:?} (message {message:?}), got {status} {body}"
        ))
    }
}

/// Asserts a 405 with DRF's body and exactly these methods in `Allow`.
pub async fn assert_405(resp: Response, method: &str, allowed: &[&str]) {
    let allow = resp
        .headers()
        .get(ALLOW)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_reply(
        resp,
        StatusCode::METHOD_NOT_ALLOWED,
        json!({ "detail": format!("Method \"{method}\" not allowed.") }),
    )
    .await;
    let got: BTreeSet<&str> = allow.split(',').map(str::trim).collect();
    assert_eq!(
        got,
        allowed.iter().copied().collect(),
        "Allow header {allow:?} for {method}"
    );
}

/// Asserts a 404 with a `detail` message.
pub async fn assert_404(resp: Response) {
    let body = expect_json(resp, StatusCode::NOT_FOUND).await;
    assert!(body["detail"].is_string(), "body: {body}");
    assert_eq!(body.as_object().map(|o| o.len()), Some(1), "body: {body}");
}

/// Asserts a successful reply with no body at all (204, HEAD).
pub async fn assert_empty(resp: Response, status: StatusCode) {
    assert_eq!(resp.status(), status);
    assert_eq!(resp.text().await.expect("body read"), "");
}

/// Asserts `user` is exactly the public user JSON; returns its id.
pub fn assert_user_json(user: &Value) -> i64 {
    let object = user.as_object().expect("a user is an object");
    let keys: BTreeSet<&str> = object.keys().map(String::as_str).collect();
    let expected: BTreeSet<&str> = [
        "id",
        "username",
        "email",
        "level",
        "status",
        "profilePicture",
        "created_at",
        "updated_at",
    ]
    .into();
    assert_eq!(keys, expected, "user: {user}");
    for key in ["username", "email", "status", "profilePicture"] {
        assert!(user[key].is_string(), "{key} of {user}");
    }
    assert!(user["level"].is_i64(), "level of {user}");
    for key in ["created_at", "updated_at"] {
        let stamp = user[key].as_str().expect("a timestamp string");
        assert!(is_rfc3339_utc(stamp), "{key} {stamp:?} is not RFC 3339 UTC");
    }
    user["id"].as_i64().expect("integer id")
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z`.
pub fn is_rfc3339_utc(stamp: &str) -> bool {
    let Some(rest) = stamp.strip_suffix('Z') else {
        return false;
    };
    let (whole, fraction) = rest.split_once('.').unwrap_or((rest, "1"));
    let pattern = "dddd-dd-ddTdd:dd:dd";
    whole.len() == pattern.len()
        && whole.chars().zip(pattern.chars()).all(|(c, p)| match p {
            'd' => c.is_ascii_digit(),
            _ => c == p,
        })
        && !fraction.is_empty()
        && fraction.chars().all(|c| c.is_ascii_digit())
}

/// Unpadded base64url, as JWTs use.
pub fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// Decodes unpadded base64url.
pub fn b64url_decode(text: &str) -> Vec<u8> {
    let sextets: Vec<u32> = text
        .bytes()
        .map(|c| match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'-' => 62,
            b'_' => 63,
            _ => panic!("{c} is not base64url"),
        })
        .collect();
    let mut out = Vec::new();
    for chunk in sextets.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, s)| n | (s << (18 - 6 * i)));
        for i in 0..chunk.len() - 1 {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

/// The JSON of part `index` of a JWT (0 header, 1 claims), unverified.
pub fn jwt_part(token: &str, index: usize) -> Value {
    let part = token.split('.').nth(index).expect("a JWT has three parts");
    serde_json::from_slice(&b64url_decode(part)).expect("a JWT part is JSON")
}

/// The claims of a JWT, unverified.
pub fn claims(token: &str) -> Value {
    jwt_part(token, 1)
}

/// Signs `claims` with HS256 and `secret`.
pub fn forge(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::default(),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign")
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

// --- listing ---

/// A user row written straight into the database, for listings too big to
/// register one by one.
#[derive(Debug, Clone)]
pub struct SeedUser {
    pub username: String,
    pub email: String,
    pub level: i64,
    pub status: &'static str,
    pub created_at: String,
    pub updated_at: String,
}

impl SeedUser {
    /// The JSON the API must render for this row under `id`.
    pub fn json(&self, id: i64) -> Value {
        json!({
            "id": id,
            "username": self.username,
            "email": self.email,
            "level": self.level,
            "status": self.status,
            "profilePicture": "",
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        })
    }
}

/// A reply of GET /api/users, read whole.
#[derive(Debug)]
pub struct Listing {
    pub status: StatusCode,
    pub body: Value,
    /// `X-Total-Count`, when sent (it must be an integer).
    pub total: Option<i64>,
    /// The `Link` targets by `rel`.
    pub links: std::collections::BTreeMap<String, String>,
    /// Whether the body came with `Transfer-Encoding: chunked`.
    pub chunked: bool,
}

impl Listing {
    /// The ids of a 200's array, in order.
    pub fn ids(&self) -> Vec<i64> {
        let users = self.body.as_array();
        let users = users.unwrap_or_else(|| panic!("not an array: {}", self.body));
        users
            .iter()
            .map(|u| u["id"].as_i64().expect("id"))
            .collect()
    }
}

/// Parses RFC 8288 `Link` values (`<target>; rel="name", ...`) into rel ->
/// target; panics on a malformed part or a rel given twice.
pub fn parse_links<'a>(
    values: impl IntoIterator<Item = &'a str>,
) -> std::collections::BTreeMap<String, String> {
    let mut links = std::collections::BTreeMap::new();
    for part in values.into_iter().flat_map(|v| v.split(',')) {
        let bad = format!("Link part {part:?} is not <target>; rel=\"name\"");
        let (target, params) = part
            .trim()
            .strip_prefix('<')
            .and_then(|p| p.split_once('>'))
            .expect(&bad);
        let rel = params
            .split(';')
            .filter_map(|p| p.trim().strip_prefix("rel="))
            .map(|r| r.trim_matches('"'))
            .next()
            .expect(&bad);
        let old = links.insert(rel.to_owned(), target.to_owned());
        assert!(old.is_none(), "rel {rel} twice in Link");
    }
    links
}

impl TestApp {
    /// Inserts `users` in one transaction; returns them as the API must
    /// render them, in insertion (= id) order.
    pub fn seed_users(&self, users: &[SeedUser]) -> Vec<Value> {
        if let Some(url) = &self.database_url {
            return postgres::with(url, |client| {
                let mut tx = client.transaction().expect("begin");
                let insert = tx
                    .prepare(
                        "INSERT INTO users (username, email, password_hash, level, status, \
                         profile_picture, is_staff, is_active, created_at, updated_at) \
                         VALUES ($1, $2, 'x', $3, $4, '', false, true, $5, $6) RETURNING id",
                    )
                    .expect("prepare the insert");
                let mut rendered = Vec::with_capacity(users.len());
                for u in users {
                    let id: i64 = tx
                        .query_one(
                            &insert,
                            &[
                                &u.username,
                                &u.email,
                                &u.level,
                                &u.status,
                                &u.created_at,
                                &u.updated_at,
                            ],
                        )
                        .expect("insert a seed user")
                        .get(0);
                    rendered.push(u.json(id));
                }
                tx.commit().expect("commit the seed users");
                rendered
            });
        }
        let mut conn = self.db();
        let tx = conn.transaction().expect("begin");
        let mut rendered = Vec::with_capacity(users.len());
        {
            let mut insert = tx
                .prepare(
                    "INSERT INTO users (username, email, password_hash, level, status, \
                     profile_picture, is_staff, is_active, created_at, updated_at) \
                     VALUES (?1, ?2, 'x', ?3, ?4, '', 0, 1, ?5, ?6)",
                )
                .expect("prepare the insert");
            for u in users {
                insert
                    .execute(rusqlite::params![
                        u.username,
                        u.email,
                        u.level,
                        u.status,
                        u.created_at,
                        u.updated_at
                    ])
                    .expect("insert a seed user");
                rendered.push(u.json(tx.last_insert_rowid()));
            }
        }
        tx.commit().expect("commit the seed users");
        rendered
    }

    /// GETs `path` (`/api/users?...`) with `token` and reads the reply whole.
    pub async fn list_users(&self, token: &str, path: &str) -> Listing {
        let resp = self.send(Method::GET, path, Some(token), None).await;
        let headers = resp.headers().clone();
        let (status, body) = read_json(resp).await;
        let total = headers.get("x-total-count").map(|v| {
            let v = v.to_str().expect("ASCII X-Total-Count");
            v.parse().unwrap_or_else(|_| panic!("X-Total-Count {v:?}"))
        });
        let links = parse_links(
            headers
                .get_all(reqwest::header::LINK)
                .iter()
                .map(|v| v.to_str().expect("ASCII Link")),
        );
        let chunked = headers
            .get_all(reqwest::header::TRANSFER_ENCODING)
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| v.contains("chunked")));
        Listing {
            status,
            body,
            total,
            links,
            chunked,
        }
    }
}

// --- attacks ---

impl TestApp {
    /// Every row of every table (`sqlite_sequence` included), as text, in
    /// a stable order: equal before and after a request that must change
    /// nothing.
    pub fn db_snapshot(&self) -> Vec<String> {
        if let Some(url) = &self.database_url {
            // `nodes` is each server's heartbeat, not data.
            return postgres::with(url, |client| {
                let tables: Vec<String> = client
                    .query(
                        "SELECT table_name::text FROM information_schema.tables \
                         WHERE table_schema = 'public' AND table_name <> 'nodes' \
                         ORDER BY table_name",
                        &[],
                    )
                    .expect("list tables")
                    .iter()
                    .map(|row| row.get(0))
                    .collect();
                let mut rows = Vec::new();
                for table in tables {
                    let sql = format!("SELECT t::text FROM \"{table}\" t");
                    let mut table_rows: Vec<String> = client
                        .query(&sql, &[])
                        .expect(&sql)
                        .iter()
                        .map(|row| format!("{table}: {}", row.get::<_, String>(0)))
                        .collect();
                    table_rows.sort();
                    rows.extend(table_rows);
                }
                rows
            });
        }
        let conn = self.db();
        let tables: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .expect("list tables")
            .query_map([], |row| row.get(0))
            .expect("list tables")
            .collect::<Result<_, _>>()
            .expect("table names");
        let mut rows = Vec::new();
        for table in tables {
            let sql = format!("SELECT * FROM \"{table}\"");
            let mut statement = conn.prepare(&sql).expect(&sql);
            let columns = statement.column_count();
            let mut table_rows: Vec<String> = statement
                .query_map([], |row| {
                    let values = (0..columns)
                        .map(|i| row.get::<_, rusqlite::types::Value>(i))
                        .collect::<Result<Vec<_>, _>>()?;
                    Ok(format!("{table}: {values:?}"))
                })
                .expect(&sql)
                .collect::<Result<_, _>>()
                .expect(&sql);
            table_rows.sort();
            rows.extend(table_rows);
        }
        rows
    }

    /// Sends raw body bytes with the given `Content-Type` (none if `None`).
    pub async fn send_bytes(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        content_type: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> Response {
        let builder = self.request(method, path, token);
        let builder = match content_type {
            Some(content_type) => builder.header(CONTENT_TYPE, content_type),
            None => builder,
        };
        builder.body(body).send().await.expect("request sent")
    }

    /// Whether GET /api/health answers 200 `{"status": "ok"}`.
    pub async fn healthy(&self) -> bool {
        match self
            .client
            .get(format!("{}/api/health", self.base_url))
            .send()
            .await
        {
            Ok(resp) if resp.status() == StatusCode::OK => resp
                .json::<Value>()
                .await
                .is_ok_and(|body| body == json!({"status": "ok"})),
            _ => false,
        }
    }
}

// --- the real binary ---

/// A running `rosterd serve` started by a test, killed on drop.
pub struct RunningServer {
    pub child: std::process::Child,
    pub port: u16,
    /// Every stdout line read until the "serving on" line, that one included.
    pub stdout: Vec<String>,
    /// The file the server's stderr goes to.
    pub log: PathBuf,
}

impl RunningServer {
    /// Waits (at most `within`) for the "serving on" line of a `serve`
    /// child whose stdout is piped and whose stderr goes to `log`.
    pub fn wait_for(mut child: std::process::Child, log: PathBuf, within: Duration) -> Self {
        use std::io::{BufRead, BufReader};
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().expect("stdout is piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = RunningServer {
            child,
            port: 0,
            stdout: Vec::new(),
            log,
        };
        let deadline = std::time::Instant::now() + within;
        while server.port == 0 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = rx.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "no \"serving on\" line within {within:?}; stdout: {:?}; stderr: {}",
                    server.stdout,
                    server.log_text()
                )
            });
            if let Some(rest) = line.strip_prefix("rosterd: serving on http://127.0.0.1:") {
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                server.port = digits.parse().expect("port");
            }
            server.stdout.push(line);
        }
        server
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// What the server wrote to stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` (e.g. "TERM") and waits up to `within` for the exit.
    pub fn stop(&mut self, signal: &str, within: Duration) -> std::process::ExitStatus {
        let sent = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(sent.success(), "kill -{signal} failed");
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "still running {within:?} after SIG{signal}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
