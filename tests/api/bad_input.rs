//! Bad input, table-driven: malformed JSON, bodies that are not objects,
//! invalid UTF-8, NUL characters, deep nesting, wrong types, huge numbers,
//! long strings, SQL metacharacters, other media types, odd paths and
//! every method on every path. Each case gets its documented 4xx JSON, the
//! database (every row of every table) is unchanged, nothing is a 500 and
//! the server still answers /api/health.

use std::collections::BTreeSet;

use reqwest::header::{ALLOW, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{TestApp, TestUser, spawn_app, spawn_app_with};

const JSON: Option<&str> = Some("application/json");
const PARSE_ERROR: &str = "JSON parse error - ";

/// What the body of a reply must be.
#[derive(Debug, Clone)]
enum Want {
    /// `{"detail": "<prefix>..."}` and nothing else.
    Detail(&'static str),
    /// A 400's field errors: exactly these keys, each a list of strings.
    Fields(Vec<&'static str>),
    /// Either of the two above (a parser or a field may refuse it).
    DetailOrFields(&'static str, Vec<&'static str>),
    /// Exactly this JSON.
    Exact(Value),
    /// Any JSON (allowed methods in the method matrix).
    AnyJson,
    /// No body at all (HEAD, 204).
    Empty,
}

/// One request and what it must get.
#[derive(Debug, Clone)]
struct Case {
    label: String,
    method: Method,
    path: String,
    token: Option<String>,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    /// `None`: any status below 500.
    status: Option<StatusCode>,
    want: Want,
    /// The methods of the `Allow` header, when one is required.
    allow: Option<Vec<&'static str>>,
}

impl Case {
    fn new(label: impl Into<String>, method: Method, path: &str, status: u16, want: Want) -> Case {
        Case {
            label: label.into(),
            method,
            path: path.to_owned(),
            token: None,
            content_type: None,
            body: Vec::new(),
            status: Some(StatusCode::from_u16(status).expect("a status")),
            want,
            allow: None,
        }
    }

    fn token(mut self, token: &str) -> Case {
        self.token = Some(token.to_owned());
        self
    }

    fn json(self, body: impl Into<Vec<u8>>) -> Case {
        self.raw(JSON, body)
    }

    fn raw(mut self, content_type: Option<&'static str>, body: impl Into<Vec<u8>>) -> Case {
        self.content_type = content_type;
        self.body = body.into();
        self
    }
}

fn fields(keys: &[&'static str]) -> Want {
    Want::Fields(keys.to_vec())
}

/// Checks a body against `want`.
fn body_matches(want: &Want, text: &str) -> Result<(), String> {
    if matches!(want, Want::Empty) {
        return if text.is_empty() {
            Ok(())
        } else {
            Err(format!("expected no body, got {text:?}"))
        };
    }
    let body: Value =
        serde_json::from_str(text).map_err(|e| format!("body is not JSON ({e}): {text:?}"))?;
    let detail_ok = |prefix: &str| {
        body.as_object().is_some_and(|o| o.len() == 1)
            && body["detail"]
                .as_str()
                .is_some_and(|d| !d.is_empty() && d.starts_with(prefix))
    };
    let fields_ok = |keys: &[&str]| {
        let object = body.as_object();
        let got: BTreeSet<&str> = object
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        got == keys.iter().copied().collect()
            && object.is_some_and(|o| {
                o.values().all(|m| {
                    m.as_array()
                        .is_some_and(|m| !m.is_empty() && m.iter().all(Value::is_string))
                })
            })
    };
    let ok = match want {
        Want::Detail(prefix) => detail_ok(prefix),
        Want::Fields(keys) => fields_ok(keys),
        Want::DetailOrFields(prefix, keys) => detail_ok(prefix) || fields_ok(keys),
        Want::Exact(expected) => &body == expected,
        Want::AnyJson => true,
        Want::Empty => unreachable!(),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("expected {want:?}, got {body}"))
    }
}

/// Sends one case and checks everything about it: status, JSON body,
/// `Allow`, no 5xx, the database unchanged, the server still healthy.
async fn check(app: &TestApp, case: &Case) -> Result<(), String> {
    let before = app.db_snapshot();
    let resp = app
        .send_bytes(
            case.method.clone(),
            &case.path,
            case.token.as_deref(),
            case.content_type,
            case.body.clone(),
        )
        .await;
    let status = resp.status();
    let allow = resp
        .headers()
        .get(ALLOW)
        .map(|v| v.to_str().unwrap_or("<not ASCII>").to_owned());
    let content_type = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = resp.text().await.map_err(|e| format!("body read: {e}"))?;
    let mut problems = Vec::new();
    if status.is_server_error() {
        problems.push(format!("a {status}: {text}"));
    }
    match case.status {
        Some(expected) if expected != status => {
            problems.push(format!("status {status}, expected {expected}; body {text}"));
        }
        None if !status.is_success() && !status.is_client_error() => {
            problems.push(format!("status {status}"));
        }
        _ => {}
    }
    if let Err(problem) = body_matches(&case.want, &text) {
        problems.push(problem);
    }
    if !matches!(case.want, Want::Empty)
        && !content_type
            .as_deref()
            .is_some_and(|ct| ct.starts_with("application/json"))
    {
        problems.push(format!("Content-Type {content_type:?}"));
    }
    if let Some(expected) = &case.allow {
        let got: BTreeSet<&str> = allow
            .as_deref()
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .collect();
        if got != expected.iter().copied().collect() {
            problems.push(format!("Allow {allow:?}, expected {expected:?}"));
        }
    }
    let after = app.db_snapshot();
    if after != before {
        let gone: Vec<&String> = before.iter().filter(|r| !after.contains(r)).collect();
        let new: Vec<&String> = after.iter().filter(|r| !before.contains(r)).collect();
        problems.push(format!("the database changed: -{gone:?} +{new:?}"));
    }
    if !app.healthy().await {
        problems.push("/api/health no longer answers 200".to_owned());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} {} [{}]: {}",
            case.method,
            case.path,
            case.label,
            problems.join("; ")
        ))
    }
}

/// Runs every case; fails once, listing every case that went wrong.
async fn run(app: &TestApp, cases: &[Case]) {
    let mut failures = Vec::new();
    for case in cases {
        if let Err(problem) = check(app, case).await {
            failures.push(problem);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} case(s) failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// A server with two users: `me` (whose token the cases use) and another.
struct Fixture {
    app: TestApp,
    me: TestUser,
    id: i64,
    access: String,
    other: i64,
}

async fn fixture(app: TestApp) -> Fixture {
    let me = TestUser::generate();
    let (id, access, _) = app.create_user(&me).await;
    let (other, _, _) = app.create_user(&TestUser::generate()).await;
    Fixture {
        app,
        me,
        id,
        access,
        other,
    }
}

/// The endpoints that read a JSON body: (method, path, with my token).
fn body_endpoints(f: &Fixture) -> Vec<(Method, String, bool)> {
    vec![
        (Method::POST, "/api/users".to_owned(), false),
        (Method::POST, "/api/token".to_owned(), false),
        (Method::POST, "/api/token/refresh".to_owned(), false),
        (Method::POST, "/api/token/verify".to_owned(), false),
        (Method::POST, "/api/token/blacklist".to_owned(), false),
        (Method::PUT, format!("/api/users/{}", f.id), true),
        (Method::PATCH, format!("/api/users/{}", f.id), true),
        (Method::POST, "/api/users/me/password".to_owned(), true),
    ]
}

/// The same body sent to every body-reading endpoint.
fn everywhere(
    f: &Fixture,
    label: &str,
    content_type: Option<&'static str>,
    body: &[u8],
    status: u16,
    want: &Want,
) -> Vec<Case> {
    body_endpoints(f)
        .into_iter()
        .map(|(method, path, authed)| {
            let case = Case::new(label, method, &path, status, want.clone())
                .raw(content_type, body.to_vec());
            if authed { case.token(&f.access) } else { case }
        })
        .collect()
}

#[tokio::test]
async fn malformed_json_gets_400_parse_error() {
    let f = fixture(spawn_app().await).await;
    let want = Want::Detail(PARSE_ERROR);
    let bodies: &[(&str, &[u8])] = &[
        ("unclosed object", b"{"),
        ("missing value", br#"{"a":}"#),
        ("trailing garbage", b"{} x"),
        ("two objects", b"{}{}"),
        ("single quotes", b"{'username': 'x'}"),
        ("trailing comma", br#"{"username": "x",}"#),
        ("unquoted key", b"{username: 1}"),
        ("NaN", b"NaN"),
        ("a comment", b"{} // hi"),
        ("only whitespace", b"   "),
        ("a UTF-8 BOM", b"\xef\xbb\xbf{}"),
        ("invalid UTF-8 in a string", b"{\"username\": \"\xff\xfe\"}"),
        ("invalid UTF-8 outside strings", b"\xff{}"),
        ("overlong UTF-8 encoding", b"{\"username\": \"\xc0\xaf\"}"),
        ("UTF-16 text", b"\xff\xfe{\x00}\x00"),
        ("a raw NUL byte in a string", b"{\"username\": \"a\x00b\"}"),
        ("a raw NUL byte outside strings", b"{}\x00"),
        ("a lone surrogate escape", br#"{"username": "\ud800"}"#),
        ("a bad escape", br#"{"username": "\x41"}"#),
    ];
    let mut cases = Vec::new();
    for (label, body) in bodies {
        cases.extend(everywhere(&f, label, JSON, body, 400, &want));
    }
    run(&f.app, &cases).await;
}

#[tokio::test]
async fn arrays_and_scalars_for_objects_get_400_non_field_errors() {
    let f = fixture(spawn_app().await).await;
    let mut cases = Vec::new();
    for (body, kind) in [
        ("[]", "list"),
        (r#"[{"username": "x"}]"#, "list"),
        (r#""x""#, "str"),
        ("1", "int"),
        ("1.5", "float"),
        ("null", "NoneType"),
        ("true", "bool"),
    ] {
        let want = Want::Exact(json!({
            "non_field_errors": [format!("Invalid data. Expected a dictionary, but got {kind}.")]
        }));
        cases.extend(everywhere(&f, body, JSON, body.as_bytes(), 400, &want));
    }
    run(&f.app, &cases).await;
}

#[tokio::test]
async fn nul_characters_in_strings_get_400_field_errors() {
    let f = fixture(spawn_app().await).await;
    let put = format!("/api/users/{}", f.id);
    let nul = "user\u{0}name";
    let mut cases = Vec::new();
    for field in ["username", "email", "password", "profilePicture"] {
        let mut body = TestUser::generate().body();
        body[field] = json!(match field {
            "email" => "us\u{0}er@example.com",
            "profilePicture" => "https://example.com/\u{0}.png",
            "password" => "correct-\u{0}-horse-battery",
            _ => nul,
        });
        cases.push(
            Case::new(field, Method::POST, "/api/users", 400, fields(&[field]))
                .json(body.to_string()),
        );
    }
    for field in ["username", "email", "profilePicture"] {
        let mut body = json!({"username": f.me.username, "email": f.me.email});
        body[field] = json!(match field {
            "email" => "us\u{0}er@example.com",
            "profilePicture" => "https://example.com/\u{0}.png",
            _ => nul,
        });
        for method in [Method::PUT, Method::PATCH] {
            cases.push(
                Case::new(field, method, &put, 400, fields(&[field]))
                    .token(&f.access)
                    .json(body.to_string()),
            );
        }
    }
    run(&f.app, &cases).await;
}

/// DRF's login and token serializers are CharFields too, which refuse NUL
/// characters with a 400 before any lookup.
#[tokio::test]
async fn nul_characters_in_login_and_token_fields_get_400_field_errors() {
    let f = fixture(spawn_app().await).await;
    let mut cases = Vec::new();
    for (path, field, body) in [
        (
            "/api/token",
            "username",
            json!({"username": format!("{}\u{0}", f.me.username), "password": f.me.password}),
        ),
        (
            "/api/token",
            "password",
            json!({"username": f.me.username, "password": format!("{}\u{0}", f.me.password)}),
        ),
        (
            "/api/token/refresh",
            "refresh",
            json!({"refresh": "a\u{0}b"}),
        ),
        ("/api/token/verify", "token", json!({"token": "a\u{0}b"})),
        (
            "/api/token/blacklist",
            "refresh",
            json!({"refresh": "a\u{0}b"}),
        ),
    ] {
        cases.push(
            Case::new(field, Method::POST, path, 400, fields(&[field])).json(body.to_string()),
        );
    }
    run(&f.app, &cases).await;
}

fn nested(depth: usize, open: &str, close: &str) -> Vec<u8> {
    let mut body = open.repeat(depth);
    body.push_str(&close.repeat(depth));
    body.into_bytes()
}

#[tokio::test]
async fn deep_nesting_gets_400_or_413_never_a_crash() {
    // Over the 64 KiB body limit: refused before parsing.
    let f = fixture(spawn_app().await).await;
    let mut cases = Vec::new();
    let too_large = Want::Detail("");
    for (label, body) in [
        ("100,000 x [", nested(100_000, "[", "]")),
        ("100,000 x {\"a\":", nested(100_000, "{\"a\":", "}")),
    ] {
        cases.extend(everywhere(&f, label, JSON, &body, 413, &too_large));
    }
    // Under it: the parser refuses the depth.
    let parse_error = Want::Detail(PARSE_ERROR);
    for (label, body) in [
        ("10,000 x [", nested(10_000, "[", "]")),
        ("10,000 x {\"a\":", nested(10_000, "{\"a\":", "}")),
        ("200 x [", nested(200, "[", "]")),
        (
            "a deep value in a valid object",
            format!(
                "{{\"username\": \"x\", \"level\": {}}}",
                String::from_utf8(nested(5_000, "[", "]")).unwrap()
            )
            .into_bytes(),
        ),
    ] {
        cases.extend(everywhere(&f, label, JSON, &body, 400, &parse_error));
    }
    run(&f.app, &cases).await;

    // With a 2 MiB body limit the whole 100,000 levels reach the parser.
    let f = fixture(spawn_app_with(|c| c.server.max_body_bytes = 2 << 20).await).await;
    let mut cases = Vec::new();
    for (label, body) in [
        ("100,000 x [", nested(100_000, "[", "]")),
        ("100,000 x {\"a\":", nested(100_000, "{\"a\":", "}")),
        ("100,000 x [ unclosed", "[".repeat(100_000).into_bytes()),
    ] {
        cases.extend(everywhere(&f, label, JSON, &body, 400, &parse_error));
    }
    run(&f.app, &cases).await;
}

/// (field, bad value, label) for the user fields.
fn wrong_user_values() -> Vec<(&'static str, Value, String)> {
    let ten_kb = "x".repeat(10 * 1024);
    let mut values: Vec<(&'static str, Value)> = vec![
        ("level", json!("abc")),
        ("level", json!(1.5)),
        ("level", json!(true)),
        ("level", json!([])),
        ("level", json!({})),
        ("level", json!(null)),
        ("level", json!("")),
        ("level", json!("1e3")),
        ("level", json!(-1)),
        ("level", json!("-1")),
        ("level", json!(99_999_999_999_999_999_999_f64)),
        ("level", json!(1e20)),
        ("level", json!(-1e20)),
        ("level", json!(0.000_001)),
        ("username", json!(123)),
        ("username", json!(null)),
        ("username", json!([])),
        ("username", json!({})),
        ("username", json!(true)),
        ("username", json!("")),
        ("username", json!("   ")),
        ("username", json!("a b")),
        ("username", json!("' OR 1=1 --")),
        ("username", json!("\"; DROP TABLE users; --")),
        ("username", json!("admin'--")),
        ("username", json!("<script>alert(1)</script>")),
        ("username", json!(ten_kb)),
        ("email", json!(123)),
        ("email", json!(null)),
        ("email", json!([])),
        ("email", json!("")),
        ("email", json!("not-an-email")),
        ("email", json!("\"; DROP TABLE users; --")),
        ("email", json!("x' OR 1=1 --@example.com")),
        ("email", json!(format!("{ten_kb}@example.com"))),
        ("status", json!(1)),
        ("status", json!(null)),
        ("status", json!("xyz")),
        ("status", json!("ONLINE")),
        ("status", json!("")),
        ("status", json!(["online"])),
        ("status", json!("online' OR 1=1 --")),
        ("status", json!(ten_kb)),
        ("profilePicture", json!(5)),
        ("profilePicture", json!(null)),
        ("profilePicture", json!([])),
        ("profilePicture", json!("ftp://x")),
        ("profilePicture", json!("ftp://example.com/x.png")),
        ("profilePicture", json!("javascript:alert(1)")),
        (
            "profilePicture",
            json!("data:text/html,<script>alert(1)</script>"),
        ),
        ("profilePicture", json!("//evil.example/x.png")),
        ("profilePicture", json!("http://")),
        ("profilePicture", json!("https://exa mple.com/")),
        ("profilePicture", json!("not a url")),
        (
            "profilePicture",
            json!(format!("https://example.com/{ten_kb}")),
        ),
    ];
    values.shrink_to_fit();
    values
        .into_iter()
        .map(|(field, value)| {
            let mut shown = value.to_string();
            if shown.len() > 60 {
                shown = format!("{}... ({} bytes)", &shown[..40], shown.len());
            }
            (field, value, format!("{field}: {shown}"))
        })
        .collect()
}

#[tokio::test]
async fn wrong_types_and_values_get_400_for_that_field() {
    let f = fixture(spawn_app().await).await;
    let put = format!("/api/users/{}", f.id);
    let mut cases = Vec::new();
    for (field, value, label) in wrong_user_values() {
        let want = fields(&[field]);
        let mut register = TestUser::generate().body();
        register[field] = value.clone();
        cases.push(
            Case::new(&label, Method::POST, "/api/users", 400, want.clone())
                .json(register.to_string()),
        );
        let mut full = json!({"username": f.me.username, "email": f.me.email});
        full[field] = value.clone();
        cases.push(
            Case::new(&label, Method::PUT, &put, 400, want.clone())
                .token(&f.access)
                .json(full.to_string()),
        );
        let partial = json!({ field: value });
        cases.push(
            Case::new(&label, Method::PATCH, &put, 400, want)
                .token(&f.access)
                .json(partial.to_string()),
        );
    }
    // The password, at registration.
    for value in [
        json!(123),
        json!(null),
        json!([]),
        json!(""),
        json!("short"),
        json!("12345678901234"),
        json!("password"),
        json!("x".repeat(10 * 1024)),
    ] {
        let mut body = TestUser::generate().body();
        body["password"] = value.clone();
        let label = format!(
            "password: {}",
            &value.to_string()[..value.to_string().len().min(40)]
        );
        cases.push(
            Case::new(
                label,
                Method::POST,
                "/api/users",
                400,
                fields(&["password"]),
            )
            .json(body.to_string()),
        );
    }
    // Missing required fields.
    cases.push(
        Case::new(
            "{}",
            Method::POST,
            "/api/users",
            400,
            fields(&["username", "email", "password"]),
        )
        .json("{}"),
    );
    cases.push(
        Case::new("{}", Method::PUT, &put, 400, fields(&["username", "email"]))
            .token(&f.access)
            .json("{}"),
    );
    // Huge numbers the JSON parser itself may refuse.
    for body in [
        r#"{"level": 1e400}"#,
        r#"{"level": -1e400}"#,
        r#"{"level": 99999999999999999999}"#,
        r#"{"level": 9223372036854775808}"#,
        r#"{"level": -9223372036854775809}"#,
        r#"{"level": 123456789012345678901234567890123456789012345678901234567890}"#,
    ] {
        let want = Want::DetailOrFields(PARSE_ERROR, vec!["level"]);
        cases.push(
            Case::new(body, Method::PATCH, &put, 400, want.clone())
                .token(&f.access)
                .json(body),
        );
        let mut register = TestUser::generate().body().to_string();
        register.pop();
        register.push_str(&format!(", {}", &body[1..]));
        cases.push(Case::new(body, Method::POST, "/api/users", 400, want).json(register));
    }
    run(&f.app, &cases).await;
}

#[tokio::test]
async fn token_endpoints_refuse_wrong_types_and_long_strings() {
    let f = fixture(spawn_app().await).await;
    let ten_kb = "x".repeat(10 * 1024);
    let no_account = Want::Exact(json!({
        "detail": "No active account found with the given credentials"
    }));
    let invalid = Want::Exact(json!({"detail": "Token is invalid", "code": "token_not_valid"}));
    let mut cases = Vec::new();
    for (field, other) in [("username", "password"), ("password", "username")] {
        for value in [
            json!(123),
            json!(null),
            json!([]),
            json!({}),
            json!(true),
            json!(""),
        ] {
            let mut body = json!({"username": f.me.username, "password": f.me.password});
            body[field] = value.clone();
            let label = format!("{field}: {value}");
            cases.push(
                Case::new(label, Method::POST, "/api/token", 400, fields(&[field]))
                    .json(body.to_string()),
            );
        }
        let mut body = json!({"username": f.me.username, "password": f.me.password});
        body.as_object_mut().unwrap().remove(field);
        cases.push(
            Case::new(
                format!("no {field}"),
                Method::POST,
                "/api/token",
                400,
                fields(&[field]),
            )
            .json(body.to_string()),
        );
        let _ = other;
    }
    for (label, body) in [
        (
            "10 KB username",
            json!({"username": ten_kb, "password": f.me.password}),
        ),
        (
            "10 KB password",
            json!({"username": f.me.username, "password": ten_kb}),
        ),
        (
            "SQL username",
            json!({"username": "' OR 1=1 --", "password": "' OR 1=1 --"}),
        ),
        (
            "SQL username 2",
            json!({"username": "admin'--", "password": "x"}),
        ),
        (
            "SQL username 3",
            json!({"username": "\"; DROP TABLE users; --", "password": "x"}),
        ),
        (
            "LIKE wildcard username",
            json!({"username": "%", "password": f.me.password}),
        ),
        (
            "LIKE wildcard username 2",
            json!({"username": "user_", "password": f.me.password}),
        ),
    ] {
        cases.push(
            Case::new(label, Method::POST, "/api/token", 401, no_account.clone())
                .json(body.to_string()),
        );
    }
    for (path, key) in [
        ("/api/token/refresh", "refresh"),
        ("/api/token/verify", "token"),
        ("/api/token/blacklist", "refresh"),
    ] {
        for value in [json!(123), json!(null), json!([]), json!({}), json!("")] {
            let label = format!("{key}: {value}");
            cases.push(
                Case::new(label, Method::POST, path, 400, fields(&[key]))
                    .json(json!({ key: value }).to_string()),
            );
        }
        cases.push(Case::new("{}", Method::POST, path, 400, fields(&[key])).json("{}"));
        for (label, value) in [
            ("10 KB", ten_kb.clone()),
            ("SQL", "' OR 1=1 --".to_owned()),
            ("dots", "a.b.c".to_owned()),
        ] {
            cases.push(
                Case::new(label, Method::POST, path, 401, invalid.clone())
                    .json(json!({ key: value }).to_string()),
            );
        }
    }
    run(&f.app, &cases).await;
}

#[tokio::test]
async fn password_change_refuses_wrong_types() {
    let f = fixture(spawn_app().await).await;
    let path = "/api/users/me/password";
    let mut cases = Vec::new();
    for field in ["old_password", "new_password"] {
        for value in [json!(123), json!(null), json!([]), json!("")] {
            let mut body =
                json!({"old_password": f.me.password, "new_password": "a-new-pass-phrase-1"});
            body[field] = value.clone();
            cases.push(
                Case::new(
                    format!("{field}: {value}"),
                    Method::POST,
                    path,
                    400,
                    fields(&[field]),
                )
                .token(&f.access)
                .json(body.to_string()),
            );
        }
    }
    for (field, body) in [
        (
            "new_password",
            json!({"old_password": f.me.password, "new_password": "short"}),
        ),
        (
            "new_password",
            json!({"old_password": f.me.password, "new_password": "x".repeat(10 * 1024)}),
        ),
        (
            "old_password",
            json!({"old_password": "x".repeat(10 * 1024), "new_password": "a-new-pass-phrase-1"}),
        ),
        (
            "old_password",
            json!({"old_password": "' OR 1=1 --", "new_password": "a-new-pass-phrase-1"}),
        ),
    ] {
        cases.push(
            Case::new(
                format!("{field} refused"),
                Method::POST,
                path,
                400,
                fields(&[field]),
            )
            .token(&f.access)
            .json(body.to_string()),
        );
    }
    run(&f.app, &cases).await;
}

#[tokio::test]
async fn sql_metacharacters_in_query_strings_inject_nothing() {
    let f = fixture(spawn_app().await).await;
    let mut cases = Vec::new();
    for search in [
        "' OR 1=1 --",
        "' OR '1'='1",
        "\") OR 1=1 --",
        "\"; DROP TABLE users; --",
        "%",
        "_",
        "%%",
        "\\",
        "*",
        "user%",
        "%' OR '1'='1",
    ] {
        let query: String = url_encode(search);
        cases.push(
            Case::new(
                format!("search={search}"),
                Method::GET,
                &format!("/api/users?search={query}"),
                200,
                Want::Exact(json!([])),
            )
            .token(&f.access),
        );
    }
    for (label, query) in [
        ("ordering with SQL", "ordering=id%3B%20DROP%20TABLE%20users"),
        ("ordering by a hidden column", "ordering=password_hash"),
        ("ordering by is_staff", "ordering=-is_staff"),
        ("status with SQL", "status=online%27%20OR%201%3D1%20--"),
        ("limit with SQL", "limit=1%3B%20DROP%20TABLE%20users"),
        ("offset negative", "limit=1&offset=-1"),
        ("limit huge", "limit=99999999999999999999"),
    ] {
        let key = query.split('=').next().unwrap();
        let key = if label == "offset negative" {
            "offset"
        } else {
            key
        };
        cases.push(
            Case::new(
                label,
                Method::GET,
                &format!("/api/users?{query}"),
                400,
                fields(&[key]),
            )
            .token(&f.access),
        );
    }
    run(&f.app, &cases).await;
    assert_eq!(f.app.user_count(), 2);
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn other_media_types_get_415() {
    let f = fixture(spawn_app().await).await;
    let body = TestUser::generate().body().to_string().into_bytes();
    let mut cases = Vec::new();
    for (content_type, detail) in [
        (
            Some("text/plain"),
            "Unsupported media type \"text/plain\" in request.",
        ),
        (
            Some("application/x-www-form-urlencoded"),
            "Unsupported media type \"application/x-www-form-urlencoded\" in request.",
        ),
        (
            Some("multipart/form-data; boundary=x"),
            "Unsupported media type \"multipart/form-data; boundary=x\" in request.",
        ),
        (
            Some("text/json"),
            "Unsupported media type \"text/json\" in request.",
        ),
        (
            Some("application/jsonx"),
            "Unsupported media type \"application/jsonx\" in request.",
        ),
        (
            Some("application/xml"),
            "Unsupported media type \"application/xml\" in request.",
        ),
        (None, "Unsupported media type \"\" in request."),
    ] {
        let label = format!("Content-Type {content_type:?}");
        let want = Want::Exact(json!({ "detail": detail }));
        cases.extend(everywhere(&f, &label, content_type, &body, 415, &want));
    }
    let form = b"username=x&password=y".to_vec();
    let want = Want::Detail("Unsupported media type");
    cases.extend(everywhere(
        &f,
        "a form body",
        Some("application/x-www-form-urlencoded"),
        &form,
        415,
        &want,
    ));
    run(&f.app, &cases).await;
}

/// A raw HTTP/1.1 exchange, for paths a URL library would normalise:
/// (status, body).
async fn raw_get(app: &TestApp, target: &str, token: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\
         Connection: close\r\n\r\n",
        app.addr
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await.expect("read");
    let reply = String::from_utf8_lossy(&reply).into_owned();
    let (head, body) = reply.split_once("\r\n\r\n").expect("a reply head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).expect("a chunk size");
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

#[tokio::test]
async fn odd_paths_get_404_json() {
    let f = fixture(spawn_app().await).await;
    let mut cases = Vec::new();
    let not_found = Want::Detail("");
    for path in [
        "/api/users/abc",
        "/api/users/-1",
        "/api/users/0",
        "/api/users/99999999999999999999",
        "/api/users/9223372036854775808",
        "/api/users/1.5",
        "/api/users/1e0",
        "/api/users/0x1",
        "/api/users/%00",
        "/api/users/1%00",
        "/api/users/%2e%2e",
        "/api/users/1%2F2",
        "/api/users//1",
        "/api/users/1/extra",
        "/api/users/me/unknown",
        "/api/users/me/password/x",
        "/api/users/ME",
        "/api/users/me%00",
        "/api/users/%E2%80%AE1",
        "/api/users/%FF",
        "/api/users/''%20OR%201=1",
        "/api/token/refresh/x",
        "/api//users",
        "/api/health/x",
        "/api/openapi.json/x",
        "/API/users",
    ] {
        cases.push(
            Case::new("odd path", Method::GET, path, 404, not_found.clone()).token(&f.access),
        );
    }
    // Writes to odd ids: the lookup fails before anything is touched.
    for path in [
        "/api/users/abc",
        "/api/users/0",
        "/api/users/-1",
        "/api/users/99999999999999999999",
    ] {
        for method in [Method::PUT, Method::PATCH, Method::DELETE] {
            let case =
                Case::new("odd id", method.clone(), path, 404, not_found.clone()).token(&f.access);
            let case = if method == Method::DELETE {
                case
            } else {
                case.json(r#"{"level": 5}"#)
            };
            cases.push(case);
        }
    }
    run(&f.app, &cases).await;

    // Dot segments, sent as they are (a URL library would resolve them).
    let before = f.app.db_snapshot();
    let mut failures = Vec::new();
    for target in [
        "/api/./users",
        "/api/users/../token",
        "/api/users/./me",
        "/api/%2e/users",
    ] {
        let (status, body) = raw_get(&f.app, target, &f.access).await;
        if status != 404 || body_matches(&not_found, &body).is_err() {
            failures.push(format!("GET {target}: {status} {body}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(f.app.db_snapshot(), before);
    assert!(f.app.healthy().await);
    let _ = f.other;
}

#[tokio::test]
async fn every_method_on_every_path() {
    let f = fixture(spawn_app().await).await;
    let token_methods: &[&'static str] = &["POST", "OPTIONS"];
    let user = format!("/api/users/{}", f.other);
    let paths: Vec<(String, Option<&[&'static str]>)> = vec![
        ("/api/token".into(), Some(token_methods)),
        ("/api/token/refresh".into(), Some(token_methods)),
        ("/api/token/verify".into(), Some(token_methods)),
        ("/api/token/blacklist".into(), Some(token_methods)),
        (
            "/api/users".into(),
            Some(&["GET", "POST", "HEAD", "OPTIONS"]),
        ),
        ("/api/users/me".into(), Some(&["GET", "HEAD", "OPTIONS"])),
        (
            user.clone(),
            Some(&["GET", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]),
        ),
        ("/api/users/me/password".into(), Some(token_methods)),
        ("/api/users/me/logout-all".into(), Some(token_methods)),
        ("/api/health".into(), Some(&["GET", "HEAD", "OPTIONS"])),
        ("/api/nope".into(), None),
    ];
    // The OpenAPI document is listed in API.md; if it is served, its
    // path is known, otherwise it is just another unknown path.
    let openapi = f
        .app
        .send(Method::GET, "/api/openapi.json", None, None)
        .await
        .status();
    let mut paths = paths;
    paths.push((
        "/api/openapi.json".into(),
        (openapi != StatusCode::NOT_FOUND).then_some(&["GET", "HEAD", "OPTIONS"][..]),
    ));
    let methods = [
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "FOO",
    ];
    let mut cases = Vec::new();
    for (path, allowed) in &paths {
        for path in [path.clone(), format!("{path}/")] {
            for name in methods {
                let method = Method::from_bytes(name.as_bytes()).unwrap();
                let head = name == "HEAD";
                let mut case = match allowed {
                    None => Case::new(
                        "unknown path",
                        method,
                        &path,
                        404,
                        if head { Want::Empty } else { Want::Detail("") },
                    ),
                    Some(allowed) if name == "OPTIONS" => {
                        let mut case = Case::new("OPTIONS", method, &path, 200, Want::AnyJson);
                        case.allow = Some(allowed.to_vec());
                        case
                    }
                    Some(allowed) if !allowed.contains(&name) => {
                        let want = if head {
                            Want::Empty
                        } else {
                            Want::Exact(
                                json!({ "detail": format!("Method \"{name}\" not allowed.") }),
                            )
                        };
                        let mut case = Case::new("wrong method", method, &path, 405, want);
                        case.allow = Some(allowed.to_vec());
                        case
                    }
                    Some(_) => {
                        let mut case = Case::new(
                            "allowed method",
                            method,
                            &path,
                            200,
                            if head { Want::Empty } else { Want::AnyJson },
                        );
                        case.status = None;
                        case
                    }
                };
                // Log out everywhere would change the database: that one
                // goes without a token (and gets 401).
                let logout = path.starts_with("/api/users/me/logout-all") && name == "POST";
                if !logout {
                    case = case.token(&f.access);
                }
                cases.push(case);
            }
        }
    }
    run(&f.app, &cases).await;
    // The caller's token survived the whole matrix.
    let resp = f.app.get_me(&f.access).await;
    assert_eq!(resp.status(), StatusCode::OK);
}
