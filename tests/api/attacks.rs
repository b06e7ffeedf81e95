//! Attacks on tokens and accounts, black-box: forged, tampered, truncated
//! and confused JWTs; malformed `Authorization` headers; writes a caller
//! may not make; and passwords that must be neither truncated nor hashed
//! when absurd. Every refusal is a 401 (or 403) with the simplejwt/DRF
//! body, never a 500.

use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey};
use reqwest::header::{AUTHORIZATION, HeaderValue, WWW_AUTHENTICATE};
use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{
    SECRET, TestApp, TestUser, assert_401, b64url, b64url_decode, bad_access_token, bad_token,
    claims, expect_json, forge, now, read_json, spawn_app, spawn_app_with,
};

const NOT_PROVIDED: &str = "Authentication credentials were not provided.";
const INVALID: &str = "Token is invalid";
const EXPIRED: &str = "Token is expired";
const WRONG_TYPE: &str = "Token has wrong type";
const OTHER_SECRET: &str = "an-attacker-secret-that-is-long-enough-42";

fn not_provided() -> Value {
    json!({ "detail": NOT_PROVIDED })
}

fn bad_header() -> Value {
    json!({
        "detail": "Authorization header must contain two space-delimited values",
        "code": "bad_authorization_header",
    })
}

/// `header.claims.signature` with both JSON parts base64url-encoded as given.
fn raw_jwt(header: &Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    )
}

/// A JWT with any header JSON, signed for real with `alg` and `secret`.
fn signed_jwt(header: &Value, claims: &Value, secret: &[u8], alg: Algorithm) -> String {
    let message = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &EncodingKey::from_secret(secret), alg)
            .expect("sign");
    format!("{message}.{signature}")
}

/// `claims` signed with HMAC `alg` and the server's own secret.
fn hs(claims: &Value, alg: &str, algorithm: Algorithm) -> String {
    signed_jwt(
        &json!({"alg": alg, "typ": "JWT"}),
        claims,
        SECRET.as_bytes(),
        algorithm,
    )
}

/// `claims` with `key` set to `value` (removed when `value` is `None`).
fn with(claims: &Value, key: &str, value: Option<Value>) -> Value {
    let mut claims = claims.clone();
    let object = claims.as_object_mut().expect("claims object");
    match value {
        Some(value) => object.insert(key.to_owned(), value),
        None => object.remove(key),
    };
    claims
}

/// Garbage bytes of `n`, base64url-encoded: a signature that is not one.
fn garbage(n: usize) -> String {
    b64url(&(0..n).map(|i| (i * 37 + 11) as u8).collect::<Vec<_>>())
}

/// The three segments of a compact JWT.
fn segments(token: &str) -> (String, String, String) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWT has three parts: {token}");
    (parts[0].into(), parts[1].into(), parts[2].into())
}

/// Checks a reply is a 401 with `WWW-Authenticate: Bearer realm="api"` and
/// one of `bodies`; the error names `label`.
async fn check_401(label: &str, resp: Response, bodies: &[Value]) -> Result<(), String> {
    let challenge = resp
        .headers()
        .get(WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    if status != StatusCode::UNAUTHORIZED || !bodies.contains(&body) {
        return Err(format!(
            "{label}: expected 401 with one of {bodies:?}, got {status} {body}"
        ));
    }
    if challenge.as_deref() != Some(r#"Bearer realm="api""#) {
        return Err(format!("{label}: WWW-Authenticate was {challenge:?}"));
    }
    Ok(())
}

async fn post_json(app: &TestApp, path: &str, body: &Value) -> Response {
    app.send(Method::POST, path, None, Some(body)).await
}

/// One forged or broken token, made from the claims of a genuine one.
struct TokenCase {
    label: String,
    /// Built from the genuine access token's claims and the token itself.
    access: String,
    /// Built from the genuine refresh token's claims and the token itself.
    refresh: String,
    /// Acceptable simplejwt messages (the first is what rosterd says).
    messages: Vec<&'static str>,
}

/// Sends one case everywhere a token goes: as the bearer token of
/// GET /api/users/me, and in the bodies of refresh, verify and blacklist.
async fn run_token_case(app: &TestApp, case: &TokenCase, failures: &mut Vec<String>) {
    let access_bodies: Vec<Value> = case.messages.iter().map(|m| bad_access_token(m)).collect();
    let token_bodies: Vec<Value> = case.messages.iter().map(|m| bad_token(m)).collect();
    let label = &case.label;
    let started = Instant::now();
    let checks = [
        (
            format!("{label} / GET /api/users/me"),
            app.get_me(&case.access).await,
            &access_bodies,
        ),
        (
            format!("{label} / POST /api/token/refresh"),
            app.refresh(&case.refresh).await,
            &token_bodies,
        ),
        (
            format!("{label} / POST /api/token/verify (access)"),
            post_json(app, "/api/token/verify", &json!({"token": case.access})).await,
            &token_bodies,
        ),
        (
            format!("{label} / POST /api/token/verify (refresh)"),
            post_json(app, "/api/token/verify", &json!({"token": case.refresh})).await,
            &token_bodies,
        ),
        (
            format!("{label} / POST /api/token/blacklist"),
            post_json(
                app,
                "/api/token/blacklist",
                &json!({"refresh": case.refresh}),
            )
            .await,
            &token_bodies,
        ),
    ];
    for (label, resp, bodies) in checks {
        if let Err(problem) = check_401(&label, resp, bodies).await {
            failures.push(problem);
        }
    }
    // Five requests; none may wait on anything outside the server (a jku
    // fetch, say).
    if started.elapsed() > Duration::from_secs(5) {
        failures.push(format!("{label}: took {:?}", started.elapsed()));
    }
}

fn report(failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The control: tokens forged with our secret and every claim right are
/// accepted everywhere, so the refusals below fail for the right reason.
#[tokio::test]
async fn a_correctly_forged_token_is_accepted() {
    let app = spawn_app().await;
    let (id, access, refresh) = app.create_user(&TestUser::generate()).await;
    let access_claims = with(
        &claims(&access),
        "jti",
        Some(json!("0123456789abcdef0123456789abcdef")),
    );
    let refresh_claims = with(
        &claims(&refresh),
        "jti",
        Some(json!("fedcba9876543210fedcba9876543210")),
    );
    let forged_access = forge(&access_claims, SECRET);
    let forged_refresh = forge(&refresh_claims, SECRET);
    let with_header = signed_jwt(
        &json!({"alg": "HS256", "typ": "JWT"}),
        &access_claims,
        SECRET.as_bytes(),
        Algorithm::HS256,
    );

    for token in [&forged_access, &with_header] {
        let me = expect_json(app.get_me(token).await, StatusCode::OK).await;
        assert_eq!(me["id"], id);
    }
    let refreshed = expect_json(app.refresh(&forged_refresh).await, StatusCode::OK).await;
    assert!(refreshed["access"].is_string(), "{refreshed}");
    for token in [&forged_access, &forged_refresh] {
        let resp = post_json(&app, "/api/token/verify", &json!({ "token": token })).await;
        assert_eq!(expect_json(resp, StatusCode::OK).await, json!({}));
    }
    let resp = post_json(
        &app,
        "/api/token/blacklist",
        &json!({ "refresh": forged_refresh }),
    )
    .await;
    assert_eq!(expect_json(resp, StatusCode::OK).await, json!({}));
}

#[tokio::test]
async fn forged_tampered_and_malformed_tokens_get_401_everywhere() {
    let app = spawn_app().await;
    let (_, access, refresh) = app.create_user(&TestUser::generate()).await;
    let genuine = [access.clone(), refresh.clone()];
    let base = [claims(&access), claims(&refresh)];

    // Each maker gets (genuine token, its claims) and builds the attack.
    type Maker = Box<dyn Fn(&str, &Value) -> String>;
    let mut table: Vec<(String, Maker, Vec<&'static str>)> = Vec::new();
    let mut case = |label: &str, maker: Maker, messages: &[&'static str]| {
        table.push((label.to_owned(), maker, messages.to_vec()));
    };

    for alg in ["none", "None", "NONE", "nOnE"] {
        for (sig_label, signature) in [("empty", String::new()), ("garbage", garbage(32))] {
            let header = json!({"alg": alg, "typ": "JWT"});
            case(
                &format!("alg {alg}, {sig_label} signature"),
                Box::new(move |_, c| raw_jwt(&header, c, &signature)),
                &[INVALID],
            );
        }
    }
    case(
        "alg none, no typ, no signature segment",
        Box::new(|_, c| {
            let (h, p, _) = segments(&raw_jwt(&json!({"alg": "none"}), c, ""));
            format!("{h}.{p}")
        }),
        &[INVALID],
    );
    case(
        "same claims re-signed with HS384 (our secret)",
        Box::new(|_, c| hs(c, "HS384", Algorithm::HS384)),
        &[INVALID],
    );
    case(
        "same claims re-signed with HS512 (our secret)",
        Box::new(|_, c| hs(c, "HS512", Algorithm::HS512)),
        &[INVALID],
    );
    case(
        "HS384 signature under an HS256 header",
        Box::new(|_, c| {
            let (_, _, signature) = segments(&hs(c, "HS384", Algorithm::HS384));
            let (h, p, _) = segments(&hs(c, "HS256", Algorithm::HS256));
            format!("{h}.{p}.{signature}")
        }),
        &[INVALID],
    );
    case(
        "RS256 header, garbage signature",
        Box::new(|_, c| raw_jwt(&json!({"alg": "RS256", "typ": "JWT"}), c, &garbage(256))),
        &[INVALID],
    );
    case(
        "ES256 header, garbage signature",
        Box::new(|_, c| raw_jwt(&json!({"alg": "ES256", "typ": "JWT"}), c, &garbage(64))),
        &[INVALID],
    );
    case(
        "RS256 header, our secret as an HMAC key (key confusion)",
        Box::new(|_, c| {
            let (h, _, _) = segments(&raw_jwt(&json!({"alg": "RS256", "typ": "JWT"}), c, ""));
            let message = format!("{h}.{}", b64url(c.to_string().as_bytes()));
            let signature = jsonwebtoken::crypto::sign(
                message.as_bytes(),
                &EncodingKey::from_secret(SECRET.as_bytes()),
                Algorithm::HS256,
            )
            .expect("sign");
            format!("{message}.{signature}")
        }),
        &[INVALID],
    );
    case(
        "a payload byte changed (one jti hex digit)",
        Box::new(|token, _| {
            let (h, p, s) = segments(token);
            let mut payload = b64url_decode(&p);
            let at = String::from_utf8_lossy(&payload)
                .find("\"jti\":\"")
                .expect("jti in payload")
                + 7;
            payload[at] = if payload[at] == b'0' { b'1' } else { b'0' };
            format!("{h}.{}.{s}", b64url(&payload))
        }),
        &[INVALID],
    );
    case(
        "a payload base64 character changed",
        Box::new(|token, _| {
            let (h, p, s) = segments(token);
            let mut p = p.into_bytes();
            let i = p.len() / 2;
            p[i] = if p[i] == b'A' { b'B' } else { b'A' };
            format!("{h}.{}.{s}", String::from_utf8(p).unwrap())
        }),
        &[INVALID],
    );
    case(
        "the signature truncated by one character",
        Box::new(|token, _| token[..token.len() - 1].to_owned()),
        &[INVALID],
    );
    case(
        "the signature truncated to half",
        Box::new(|token, _| {
            let (h, p, s) = segments(token);
            format!("{h}.{p}.{}", &s[..s.len() / 2])
        }),
        &[INVALID],
    );
    case(
        "missing signature (a.b.)",
        Box::new(|token, _| {
            let (h, p, _) = segments(token);
            format!("{h}.{p}.")
        }),
        &[INVALID],
    );
    case(
        "missing signature, 2 segments (a.b)",
        Box::new(|token, _| {
            let (h, p, _) = segments(token);
            format!("{h}.{p}")
        }),
        &[INVALID],
    );
    case(
        "2 segments: payload.signature",
        Box::new(|token, _| {
            let (_, p, s) = segments(token);
            format!("{p}.{s}")
        }),
        &[INVALID],
    );
    case(
        "4 segments: a.b.c.c",
        Box::new(|token, _| {
            let (_, _, s) = segments(token);
            format!("{token}.{s}")
        }),
        &[INVALID],
    );
    case(
        "4 segments: a.b.c.",
        Box::new(|token, _| format!("{token}.")),
        &[INVALID],
    );
    case(
        "4 segments: a..b.c",
        Box::new(|token, _| {
            let (h, p, s) = segments(token);
            format!("{h}..{p}.{s}")
        }),
        &[INVALID],
    );
    case(
        "1 segment",
        Box::new(|_, _| "garbage".to_owned()),
        &[INVALID],
    );
    case("only dots", Box::new(|_, _| "..".to_owned()), &[INVALID]);
    case(
        "bad base64 in the header",
        Box::new(|token, _| {
            let (_, p, s) = segments(token);
            format!("!!!*.{p}.{s}")
        }),
        &[INVALID],
    );
    case(
        "bad base64 in the payload",
        Box::new(|token, _| {
            let (h, _, s) = segments(token);
            format!("{h}.!!!*.{s}")
        }),
        &[INVALID],
    );
    case(
        "bad base64 in the signature",
        Box::new(|token, _| {
            let (h, p, _) = segments(token);
            format!("{h}.{p}.!!!*")
        }),
        &[INVALID],
    );
    case(
        "padded standard base64 in the signature",
        Box::new(|token, _| {
            let (h, p, s) = segments(token);
            format!("{h}.{p}.{}==", s.replace('-', "+").replace('_', "/"))
        }),
        &[INVALID],
    );
    case(
        "a header that is base64 but not JSON",
        Box::new(|token, _| {
            let (_, p, s) = segments(token);
            format!("{}.{p}.{s}", b64url(b"not json"))
        }),
        &[INVALID],
    );
    case(
        "a payload that is base64 but not JSON (signed with our secret)",
        Box::new(|_, _| {
            let message = format!(
                "{}.{}",
                b64url(br#"{"alg":"HS256","typ":"JWT"}"#),
                b64url(b"not json")
            );
            let signature = jsonwebtoken::crypto::sign(
                message.as_bytes(),
                &EncodingKey::from_secret(SECRET.as_bytes()),
                Algorithm::HS256,
            )
            .expect("sign");
            format!("{message}.{signature}")
        }),
        &[INVALID],
    );
    case(
        "a JSON array as the payload (signed with our secret)",
        Box::new(|_, c| forge(&json!([c]), SECRET)),
        &[INVALID],
    );
    case(
        "signed with another secret",
        Box::new(|_, c| forge(c, OTHER_SECRET)),
        &[INVALID],
    );
    case(
        "signed with an empty secret",
        Box::new(|_, c| signed_jwt(&json!({"alg": "HS256"}), c, b"", Algorithm::HS256)),
        &[INVALID],
    );
    case(
        "expired by one second",
        Box::new(|_, c| forge(&with(c, "exp", Some(json!(now() - 1))), SECRET)),
        &[EXPIRED],
    );
    case(
        "no exp",
        Box::new(|_, c| forge(&with(c, "exp", None), SECRET)),
        &[INVALID],
    );
    case(
        "exp as a string",
        Box::new(|_, c| {
            forge(
                &with(c, "exp", Some(json!((now() + 300).to_string()))),
                SECRET,
            )
        }),
        &[INVALID],
    );
    case(
        "exp negative",
        Box::new(|_, c| forge(&with(c, "exp", Some(json!(-1))), SECRET)),
        &[INVALID, EXPIRED],
    );
    case(
        "nbf in the future",
        Box::new(|_, c| forge(&with(c, "nbf", Some(json!(now() + 600))), SECRET)),
        &[INVALID],
    );
    case(
        "user_id missing",
        Box::new(|_, c| forge(&with(c, "user_id", None), SECRET)),
        &[INVALID],
    );
    for (label, user_id) in [
        ("not a number", json!("abc")),
        ("\"0\"", json!("0")),
        ("negative", json!("-1")),
        ("past i64", json!("99999999999999999999")),
        ("null", Value::Null),
        ("an object", json!({"id": 1})),
    ] {
        case(
            &format!("user_id {label}"),
            Box::new(move |_, c| forge(&with(c, "user_id", Some(user_id.clone())), SECRET)),
            &[INVALID],
        );
    }
    case(
        "token_type missing",
        Box::new(|_, c| forge(&with(c, "token_type", None), SECRET)),
        &[INVALID],
    );
    case(
        "token_type \"other\"",
        Box::new(|_, c| forge(&with(c, "token_type", Some(json!("other"))), SECRET)),
        &[INVALID, WRONG_TYPE],
    );
    case(
        "jti missing",
        Box::new(|_, c| forge(&with(c, "jti", None), SECRET)),
        &[INVALID],
    );
    case(
        "jti not 32 hex characters",
        Box::new(|_, c| forge(&with(c, "jti", Some(json!("' OR 1=1 --"))), SECRET)),
        &[INVALID],
    );

    let mut failures = Vec::new();
    for (label, maker, messages) in &table {
        let case = TokenCase {
            label: label.clone(),
            access: maker(&genuine[0], &base[0]),
            refresh: maker(&genuine[1], &base[1]),
            messages: messages.clone(),
        };
        run_token_case(&app, &case, &mut failures).await;
    }
    report(failures);

    // The genuine tokens still work: nothing above was refused by accident
    // of a broken account.
    expect_json(app.get_me(&access).await, StatusCode::OK).await;
    expect_json(app.refresh(&refresh).await, StatusCode::OK).await;
}

#[tokio::test]
async fn key_headers_are_ignored_and_never_fetched() {
    let app = spawn_app().await;
    let (_, access, refresh) = app.create_user(&TestUser::generate()).await;
    // Where an attacker's key would be: any connection here is a fetch.
    let trap = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the trap");
    let url = format!("http://{}/jwks.json", trap.local_addr().unwrap());
    let attacker_key = json!({"kty": "oct", "k": b64url(OTHER_SECRET.as_bytes())});
    let rsa_key = json!({"kty": "RSA", "e": "AQAB", "n": garbage(256)});

    let headers: Vec<(&str, Value, &[u8])> = vec![
        (
            "jku to the attacker, signed with their secret",
            json!({"alg": "HS256", "typ": "JWT", "jku": url}),
            OTHER_SECRET.as_bytes(),
        ),
        (
            "x5u to the attacker, signed with their secret",
            json!({"alg": "HS256", "typ": "JWT", "x5u": url}),
            OTHER_SECRET.as_bytes(),
        ),
        (
            "an embedded oct jwk, signed with it",
            json!({"alg": "HS256", "typ": "JWT", "jwk": attacker_key}),
            OTHER_SECRET.as_bytes(),
        ),
        (
            "an embedded RSA jwk with alg RS256",
            json!({"alg": "RS256", "typ": "JWT", "jwk": rsa_key}),
            OTHER_SECRET.as_bytes(),
        ),
        (
            "kid path traversal to /dev/null, signed with an empty key",
            json!({"alg": "HS256", "typ": "JWT", "kid": "../../../../../../dev/null"}),
            b"",
        ),
        (
            "kid with SQL, signed with the injected key",
            json!({"alg": "HS256", "typ": "JWT", "kid": "x' UNION SELECT 'key' --"}),
            b"key",
        ),
        (
            "kid, jku, x5u and jwk at once",
            json!({"alg": "HS256", "typ": "JWT", "kid": "1", "jku": url, "x5u": url,
                   "jwk": attacker_key}),
            OTHER_SECRET.as_bytes(),
        ),
    ];
    let mut failures = Vec::new();
    for (label, header, key) in headers {
        let make = |token: &str| {
            let c = claims(token);
            if header["alg"] == "RS256" {
                raw_jwt(&header, &c, &garbage(256))
            } else {
                signed_jwt(&header, &c, key, Algorithm::HS256)
            }
        };
        let case = TokenCase {
            label: label.to_owned(),
            access: make(&access),
            refresh: make(&refresh),
            messages: vec![INVALID],
        };
        let started = Instant::now();
        run_token_case(&app, &case, &mut failures).await;
        if started.elapsed() > Duration::from_secs(2) {
            failures.push(format!("{label}: took {:?} (> 2 s)", started.elapsed()));
        }
    }
    report(failures);

    let fetched = tokio::time::timeout(Duration::from_millis(300), trap.accept()).await;
    assert!(
        fetched.is_err(),
        "the server connected to the jku/x5u URL: {fetched:?}"
    );
}

#[tokio::test]
async fn a_token_of_the_wrong_type_is_refused_as_wrong_type() {
    let app = spawn_app().await;
    let (_, access, refresh) = app.create_user(&TestUser::generate()).await;

    assert_401(app.get_me(&refresh).await, bad_access_token(WRONG_TYPE)).await;
    assert_401(app.get_users(&refresh).await, bad_access_token(WRONG_TYPE)).await;
    assert_401(app.refresh(&access).await, bad_token(WRONG_TYPE)).await;
    let resp = post_json(&app, "/api/token/blacklist", &json!({ "refresh": access })).await;
    assert_401(resp, bad_token(WRONG_TYPE)).await;
    // A refresh token made to look like an access token by its claim alone
    // (re-signed by an attacker) is only a bad signature.
    let mut retyped = claims(&refresh);
    retyped["token_type"] = json!("access");
    let resp = app.get_me(&forge(&retyped, OTHER_SECRET)).await;
    assert_401(resp, bad_access_token(INVALID)).await;
}

#[tokio::test]
async fn tokens_of_a_deleted_user_never_match_a_new_account() {
    let app = spawn_app().await;
    let (gone, access, refresh) = app.create_user(&TestUser::generate()).await;
    let forged = forge(
        &with(
            &claims(&access),
            "jti",
            Some(json!("00000000000000000000000000000000")),
        ),
        SECRET,
    );
    let resp = app.delete_user(gone, &access).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let (newcomer, _, _) = app.create_user(&TestUser::generate()).await;
    assert_ne!(newcomer, gone, "an id was reused");

    let user_not_found = json!({"detail": "User not found", "code": "user_not_found"});
    let mut failures = Vec::new();
    for (label, token) in [("issued", &access), ("forged", &forged)] {
        let resp = app.get_me(token).await;
        if let Err(p) = check_401(label, resp, std::slice::from_ref(&user_not_found)).await {
            failures.push(p);
        }
    }
    let resp = app.refresh(&refresh).await;
    let no_account = json!({
        "detail": "No active account found for the given token.",
        "code": "no_active_account",
    });
    if let Err(p) = check_401("refresh of a deleted user", resp, &[no_account]).await {
        failures.push(p);
    }
    for token in [&access, &refresh] {
        let resp = post_json(&app, "/api/token/verify", &json!({ "token": token })).await;
        if let Err(p) = check_401("verify of a deleted user", resp, &[bad_token(INVALID)]).await {
            failures.push(p);
        }
    }
    report(failures);
}

#[tokio::test]
async fn an_oversized_token_is_refused_without_a_500() {
    let app = spawn_app().await;
    let (_, access, refresh) = app.create_user(&TestUser::generate()).await;

    // 64 KiB in the header: over server.max_header_bytes (16 KiB).
    let padded = with(&claims(&access), "pad", Some(json!("x".repeat(64 * 1024))));
    let huge = forge(&padded, OTHER_SECRET);
    assert!(huge.len() > 64 * 1024);
    let sent = app
        .request(Method::GET, "/api/users/me", Some(&huge))
        .send()
        .await;
    if let Ok(resp) = sent {
        assert_eq!(
            resp.status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "a 64 KiB Authorization header"
        );
    }
    assert!(
        app.healthy().await,
        "the server answers after a 64 KiB header"
    );

    // 60 KiB in a body: under the 64 KiB body limit, so it is parsed.
    let mut failures = Vec::new();
    for (label, base) in [("access", &access), ("refresh", &refresh)] {
        let padded = with(&claims(base), "pad", Some(json!("x".repeat(44 * 1024))));
        let big = forge(&padded, OTHER_SECRET);
        assert!(
            big.len() > 58 * 1024 && big.len() < 62 * 1024,
            "{}",
            big.len()
        );
        for (path, key) in [
            ("/api/token/refresh", "refresh"),
            ("/api/token/verify", "token"),
            ("/api/token/blacklist", "refresh"),
        ] {
            let resp = post_json(&app, path, &json!({ key: big })).await;
            let label = format!("60 KiB {label} token at {path}");
            if let Err(p) = check_401(&label, resp, &[bad_token(INVALID)]).await {
                failures.push(p);
            }
        }
    }
    report(failures);
    assert!(app.healthy().await);
}

#[tokio::test]
async fn malformed_authorization_headers_are_refused() {
    let app = spawn_app().await;
    let (_, access, _) = app.create_user(&TestUser::generate()).await;

    let mut cases: Vec<(String, HeaderValue, Value)> = Vec::new();
    let mut case = |label: &str, value: Vec<u8>, body: Value| {
        let value = HeaderValue::from_bytes(&value).expect("a header value");
        cases.push((label.to_owned(), value, body));
    };
    case("Bearer alone", b"Bearer".to_vec(), bad_header());
    case("Bearer a b", b"Bearer a b".to_vec(), bad_header());
    case(
        "Bearer with two valid tokens",
        format!("Bearer {access} {access}").into_bytes(),
        bad_header(),
    );
    case(
        "Basic credentials",
        b"Basic dXNlcjpwYXNz".to_vec(),
        not_provided(),
    );
    case("Token abc", b"Token abc".to_vec(), not_provided());
    case(
        "JWT scheme with a valid token",
        format!("JWT {access}").into_bytes(),
        not_provided(),
    );
    case(
        "lowercase bearer with a valid token",
        format!("bearer {access}").into_bytes(),
        not_provided(),
    );
    case(
        "uppercase BEARER with a valid token",
        format!("BEARER {access}").into_bytes(),
        not_provided(),
    );
    case(
        "a bare valid token, no scheme",
        access.clone().into_bytes(),
        not_provided(),
    );
    case(
        "Bearer, comma-joined second header",
        format!("Bearer {access}, Bearer {access}").into_bytes(),
        bad_header(),
    );
    let mut high: Vec<u8> = b"Bearer ".to_vec();
    high.extend(0x80..=0xFFu8);
    case("Bearer + bytes 0x80-0xFF", high, bad_access_token(INVALID));
    let mut tail = format!("Bearer {access}").into_bytes();
    tail.extend([0xFF, 0xFE]);
    case(
        "a valid token + bytes 0xFF 0xFE",
        tail,
        bad_access_token(INVALID),
    );
    case(
        "Bearer + UTF-8 non-ASCII",
        "Bearer tökén-日本".as_bytes().to_vec(),
        bad_access_token(INVALID),
    );
    let mut scheme = vec![0xC2, 0xA0];
    scheme.extend(format!("Bearer {access}").into_bytes());
    case("a no-break space before Bearer", scheme, not_provided());
    let mut latin = b"B\xe9arer ".to_vec();
    latin.extend(access.as_bytes());
    case("a Latin-1 byte in the scheme", latin, not_provided());

    let mut failures = Vec::new();
    for (label, value, body) in cases {
        let resp = app
            .request(Method::GET, "/api/users/me", None)
            .header(AUTHORIZATION, value)
            .send()
            .await
            .expect("request sent");
        if let Err(p) = check_401(&label, resp, &[body]).await {
            failures.push(p);
        }
    }
    for query in ["token", "access", "jwt", "access_token", "auth"] {
        let path = format!("/api/users/me?{query}={access}");
        let resp = app.send(Method::GET, &path, None, None).await;
        let label = format!("a valid token in ?{query}=");
        if let Err(p) = check_401(&label, resp, &[not_provided()]).await {
            failures.push(p);
        }
    }
    let path = format!("/api/users/me?Authorization=Bearer%20{access}");
    let resp = app.send(Method::GET, &path, None, None).await;
    if let Err(p) = check_401("?Authorization=Bearer ...", resp, &[not_provided()]).await {
        failures.push(p);
    }
    report(failures);

    // The same token in its right place is fine.
    expect_json(app.get_me(&access).await, StatusCode::OK).await;
}

#[tokio::test]
async fn another_users_put_patch_and_delete_are_403_and_change_nothing() {
    let app = spawn_app().await;
    let (victim, _, _) = app.create_user(&TestUser::generate()).await;
    let (_, attacker, _) = app.create_user(&TestUser::generate()).await;
    let before = app.row(victim);
    let forbidden = json!({"detail": "You do not have permission to perform this action."});
    let takeover = json!({
        "username": "owned",
        "email": "owned@example.com",
        "level": 99,
        "status": "busy",
        "profilePicture": "https://evil.example/x.png",
    });

    let mut failures = Vec::new();
    for path in [
        format!("/api/users/{victim}"),
        format!("/api/users/{victim}/"),
    ] {
        for (method, body) in [
            (Method::PUT, Some(&takeover)),
            (Method::PATCH, Some(&takeover)),
            (Method::PATCH, Some(&json!({"level": 0}))),
            (Method::DELETE, None),
        ] {
            let label = format!("{method} {path}");
            let resp = app.send(method, &path, Some(&attacker), body).await;
            let (status, reply) = read_json(resp).await;
            if status != StatusCode::FORBIDDEN || reply != forbidden {
                failures.push(format!("{label}: expected 403, got {status} {reply}"));
            }
            if app.row(victim) != before {
                failures.push(format!("{label}: the victim's row changed"));
            }
        }
    }
    report(failures);
    // Reading another user is allowed (API.md: authenticated).
    expect_json(app.get_user(victim, &attacker).await, StatusCode::OK).await;
}

/// The columns a client can never set, with the row's columns to compare.
fn protected(app: &TestApp, id: i64) -> Vec<Value> {
    [
        "id",
        "password_hash",
        "is_staff",
        "is_active",
        "created_at",
        "tokens_valid_after",
    ]
    .iter()
    .map(|column| app.column(id, column))
    .collect()
}

fn forbidden_fields() -> Vec<(&'static str, Value)> {
    vec![
        ("id", json!(424_242)),
        ("id", json!("424243")),
        ("created_at", json!("2000-01-01T00:00:00Z")),
        ("updated_at", json!("2000-01-01T00:00:00Z")),
        ("is_staff", json!(true)),
        ("is_staff", json!(1)),
        ("is_superuser", json!(true)),
        ("is_active", json!(false)),
        ("password", json!("a-brand-new-password-123")),
        ("password_hash", json!("pbkdf2_sha256$1000$c2FsdA$aGFzaA")),
        ("token_generation", json!(99)),
        ("tokens_valid_after", json!(9_999_999_999_i64)),
    ]
}

#[tokio::test]
async fn protected_columns_cannot_be_set_through_put_or_patch() {
    let app = spawn_app().await;
    let user = TestUser::generate();
    let (id, access, _) = app.create_user(&user).await;
    let before = protected(&app, id);
    let identity = json!({"username": user.username, "email": user.email});

    let mut failures = Vec::new();
    for (field, value) in forbidden_fields() {
        for method in [Method::PUT, Method::PATCH] {
            let mut body = if method == Method::PUT {
                identity.clone()
            } else {
                json!({})
            };
            body[field] = value.clone();
            let label = format!("{method} with {field}: {value}");
            let resp = app
                .send(
                    method,
                    &format!("/api/users/{id}"),
                    Some(&access),
                    Some(&body),
                )
                .await;
            let (status, reply) = read_json(resp).await;
            if status.is_server_error()
                || !(status == StatusCode::OK || status == StatusCode::BAD_REQUEST)
            {
                failures.push(format!("{label}: got {status} {reply}"));
            }
            if status == StatusCode::OK && reply["id"] != id {
                failures.push(format!("{label}: replied with id {}", reply["id"]));
            }
            if protected(&app, id) != before {
                failures.push(format!(
                    "{label}: protected columns went from {before:?} to {:?}",
                    protected(&app, id)
                ));
            }
            if app.column(id, "updated_at") == json!("2000-01-01T00:00:00Z") {
                failures.push(format!("{label}: updated_at was set by the client"));
            }
        }
    }
    let strays = app.count(
        "SELECT count(*) FROM users WHERE CAST(id AS TEXT) <> ?1",
        &id.to_string(),
    );
    if strays != 0 {
        failures.push(format!("{strays} other row(s) appeared"));
    }
    report(failures);

    // The account works as before: same password, same token.
    expect_json(app.get_me(&access).await, StatusCode::OK).await;
    expect_json(
        app.login(&user.username, &user.password).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(app.column(id, "is_staff"), json!(0));
}

#[tokio::test]
async fn registration_cannot_set_protected_columns() {
    let app = spawn_app().await;
    let user = TestUser::generate();
    let mut body = user.body();
    for (field, value) in forbidden_fields() {
        if field != "password" {
            body[field] = value;
        }
    }
    body["is_staff"] = json!(true);

    let created = expect_json(app.register_json(&body).await, StatusCode::CREATED).await;

    let id = created["id"].as_i64().expect("id");
    assert!(id != 424_242 && id != 424_243, "the client chose the id");
    assert_ne!(created["created_at"], "2000-01-01T00:00:00Z");
    assert_ne!(created["updated_at"], "2000-01-01T00:00:00Z");
    assert_eq!(app.column(id, "is_staff"), json!(0));
    assert_eq!(app.column(id, "is_active"), json!(1));
    assert_eq!(app.column(id, "tokens_valid_after"), json!(0));
    assert_ne!(app.column(id, "created_at"), json!("2000-01-01T00:00:00Z"));
    assert_eq!(app.user_count(), 1);
    expect_json(
        app.login(&user.username, &user.password).await,
        StatusCode::OK,
    )
    .await;
}

#[tokio::test]
async fn a_demoted_staff_user_loses_staff_powers_at_once() {
    let app = spawn_app().await;
    let (victim, _, _) = app.create_user(&TestUser::generate()).await;
    let (staff, token, _) = app.create_staff().await;
    let path = format!("/api/users/{victim}");

    // Staff powers work first.
    let resp = app.patch_user(victim, &token, &json!({"level": 7})).await;
    assert_eq!(expect_json(resp, StatusCode::OK).await["level"], 7);

    app.exec("UPDATE users SET is_staff = 0 WHERE id = ?1", staff);
    let before = app.row(victim);
    let forbidden = json!({"detail": "You do not have permission to perform this action."});
    let victim_row = app.row(victim);
    let put = json!({"username": "taken-over", "email": "taken@example.com"});
    for (method, body) in [
        (Method::PUT, Some(&put)),
        (Method::PATCH, Some(&json!({"level": 8}))),
        (Method::DELETE, None),
    ] {
        let resp = app.send(method.clone(), &path, Some(&token), body).await;
        let (status, reply) = read_json(resp).await;
        assert_eq!(
            (status, reply),
            (StatusCode::FORBIDDEN, forbidden.clone()),
            "{method} by a demoted staff user with the same token"
        );
        assert_eq!(app.row(victim), before, "{method} changed the row");
    }
    assert_eq!(victim_row, app.row(victim));
    // Still an ordinary user: their own account is theirs.
    let resp = app.patch_user(staff, &token, &json!({"level": 3})).await;
    expect_json(resp, StatusCode::OK).await;
}

/// 100 printable characters, not similar to any test username.
fn long_password(n: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789!#%&*+-=?";
    (0..n)
        .map(|i| ALPHABET[(i * 7 + 3) % ALPHABET.len()] as char)
        .collect()
}

#[tokio::test]
async fn passwords_are_not_truncated() {
    let app = spawn_app().await;
    let user = TestUser {
        password: long_password(100),
        ..TestUser::generate()
    };
    assert_eq!(user.password.len(), 100);
    expect_json(
        app.register(&user.username, &user.email, &user.password)
            .await,
        StatusCode::CREATED,
    )
    .await;
    let no_account = json!({"detail": "No active account found with the given credentials"});

    for (label, attempt) in [
        ("first 72", user.password[..72].to_owned()),
        ("first 99", user.password[..99].to_owned()),
        ("the password + 1 character", format!("{}x", user.password)),
        ("the last character changed", {
            let mut p = user.password[..99].to_owned();
            p.push('!');
            p
        }),
    ] {
        let resp = app.login(&user.username, &attempt).await;
        let challenge = resp.headers().get(WWW_AUTHENTICATE).is_some();
        let (status, body) = read_json(resp).await;
        assert_eq!(
            (status, &body),
            (StatusCode::UNAUTHORIZED, &no_account),
            "login with {label} of a 100-character password"
        );
        assert!(challenge, "{label}: WWW-Authenticate");
    }
    expect_json(
        app.login(&user.username, &user.password).await,
        StatusCode::OK,
    )
    .await;
}

/// HMAC pads keys shorter than its block (64 bytes) with zeros, so under
/// PBKDF2 "pw" and "pw\0" hash alike; DRF refuses NUL characters in every
/// CharField (400) before authenticating, so Django never compares them.
#[tokio::test]
async fn the_password_with_trailing_nul_characters_is_not_the_password() {
    let app = spawn_app().await;
    let user = TestUser::generate();
    let (_, access, _) = app.create_user(&user).await;
    let nul = json!({"password": ["Null characters are not allowed."]});

    let mut failures = Vec::new();
    for suffix in ["\u{0}", "\u{0}\u{0}\u{0}"] {
        let nuls = suffix.len();
        let attempt = format!("{}{suffix}", user.password);
        let resp = app.login(&user.username, &attempt).await;
        let (status, body) = read_json(resp).await;
        if !(status == StatusCode::BAD_REQUEST && body == nul || status == StatusCode::UNAUTHORIZED)
        {
            failures.push(format!("login with the password + {nuls} NUL(s): {status}"));
        }
        // The new password has a NUL and is refused whatever happens, so
        // nothing changes; the question is whether the old one was taken.
        let body =
            json!({"old_password": attempt, "new_password": format!("{}\u{0}", user.password)});
        let resp = app
            .send(
                Method::POST,
                "/api/users/me/password",
                Some(&access),
                Some(&body),
            )
            .await;
        let (status, body) = read_json(resp).await;
        if body.get("old_password").is_none() {
            failures.push(format!(
                "password change with the old password + {nuls} NUL(s): {status} {body} \
                 (the old password was taken)"
            ));
        }
    }
    report(failures);
    expect_json(
        app.login(&user.username, &user.password).await,
        StatusCode::OK,
    )
    .await;
}

#[tokio::test]
async fn unicode_and_128_character_passphrases_work() {
    let app = spawn_app().await;
    for password in [
        "pässwörd-日本語-🔑-correct".to_owned(),
        long_password(128),
        "  spaces around a passphrase  ".to_owned(),
    ] {
        let user = TestUser {
            password: password.clone(),
            ..TestUser::generate()
        };
        let (id, access, _) = app.create_user(&user).await;
        let me = expect_json(app.get_me(&access).await, StatusCode::OK).await;
        assert_eq!(me["id"], id, "{password:?}");
        // Not normalised or trimmed: a near miss is refused.
        let near = password.trim().replace('ä', "a");
        if near != password {
            let resp = app.login(&user.username, &near).await;
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{near:?}");
        }
    }
}

/// Smallest time of `n` runs of `f`, and its last reply.
async fn fastest<F, Fut>(n: usize, mut f: F) -> (Duration, StatusCode, Value)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let mut best = Duration::MAX;
    let mut last = (StatusCode::OK, Value::Null);
    for _ in 0..n {
        let started = Instant::now();
        let resp = f().await;
        let (status, body) = read_json(resp).await;
        best = best.min(started.elapsed());
        last = (status, body);
    }
    (best, last.0, last.1)
}

#[tokio::test]
async fn an_absurd_password_is_refused_without_hashing() {
    let app = spawn_app_with(|c| {
        c.auth.pbkdf2_iterations = rosterd::config::DEFAULT_PBKDF2_ITERATIONS;
    })
    .await;
    let user = TestUser::generate();
    expect_json(
        app.register(&user.username, &user.email, &user.password)
            .await,
        StatusCode::CREATED,
    )
    .await;
    let no_account = json!({"detail": "No active account found with the given credentials"});

    // One hash: a wrong password for an existing user.
    let (hash_time, status, body) =
        fastest(2, || app.login(&user.username, "wrong-password-1")).await;
    assert_eq!(
        (status, body),
        (StatusCode::UNAUTHORIZED, no_account.clone())
    );

    let mebibyte = "p".repeat(1024 * 1024);
    // Serialised beforehand: only the server's time is measured.
    let login_body = json!({"username": user.username, "password": mebibyte}).to_string();
    let (huge_time, status, body) = fastest(3, || {
        let body = login_body.clone();
        app.send_bytes(
            Method::POST,
            "/api/token",
            None,
            Some("application/json"),
            body,
        )
    })
    .await;
    assert!(
        status == StatusCode::PAYLOAD_TOO_LARGE || status == StatusCode::UNAUTHORIZED,
        "a 1 MiB password at login: {status} {body}"
    );
    assert!(body["detail"].is_string(), "{body}");

    // Under the body limit but over 4096 bytes: refused by length alone.
    let long = "p".repeat(5000);
    let (long_time, status, body) = fastest(3, || app.login(&user.username, &long)).await;
    assert_eq!(
        (status, body),
        (StatusCode::UNAUTHORIZED, no_account.clone())
    );

    let other = TestUser::generate();
    let mut register_body = other.body();
    register_body["password"] = json!(mebibyte);
    let register_body = register_body.to_string();
    let (register_time, status, body) = fastest(3, || {
        let body = register_body.clone();
        app.send_bytes(
            Method::POST,
            "/api/users",
            None,
            Some("application/json"),
            body,
        )
    })
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");

    let other = TestUser::generate();
    let resp = app.register(&other.username, &other.email, &long).await;
    let body = expect_json(resp, StatusCode::BAD_REQUEST).await;
    assert_eq!(
        body,
        json!({"password": ["Ensure this field has no more than 4096 bytes."]})
    );

    println!(
        "one hash {hash_time:?}; 1 MiB login {huge_time:?}; 5000-byte login {long_time:?}; \
         1 MiB registration {register_time:?}"
    );
    for (label, took) in [
        ("1 MiB login", huge_time),
        ("5000-byte login", long_time),
        ("1 MiB registration", register_time),
    ] {
        assert!(took < Duration::from_secs(1), "{label} took {took:?}");
        assert!(
            took < hash_time,
            "{label} took {took:?}, not less than one hash ({hash_time:?})"
        );
    }
    assert_eq!(app.user_count(), 1);
}
