//! POST /api/token and /api/token/refresh, the claims of the tokens, and
//! how a bearer token is checked on an authenticated endpoint.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{
    SECRET, TestApp, TestUser, assert_401, assert_field_errors, assert_reply,
    assert_user_not_found, b64url, bad_access_token, bad_token, claims, expect_json, forge,
    jwt_part, now, spawn_app, spawn_app_with,
};

const NO_ACCOUNT: &str = "No active account found with the given credentials";
const REQUIRED: &str = "This field is required.";

/// The token pair of a login that must succeed.
async fn tokens(app: &TestApp, user: &TestUser) -> Value {
    expect_json(
        app.login(&user.username, &user.password).await,
        StatusCode::OK,
    )
    .await
}

fn keys(value: &Value) -> BTreeSet<String> {
    value.as_object().expect("object").keys().cloned().collect()
}

/// `token` with its claims replaced by `claims` and its signature kept.
fn with_claims(token: &str, claims: &Value) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let payload = b64url(claims.to_string().as_bytes());
    format!("{}.{payload}.{}", parts[0], parts[2])
}

#[tokio::test]
async fn login_returns_an_access_and_a_refresh_token() {
    let app = spawn_app().await;
    let user = TestUser::generate();
    app.create_user(&user).await;

    let body = tokens(&app, &user).await;

    assert_eq!(keys(&body), ["access", "refresh"].map(String::from).into());
    let me = expect_json(
        app.get_me(body["access"].as_str().unwrap()).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(me["username"], json!(user.username));
}

#[tokio::test]
async fn login_with_a_wrong_password_or_an_unknown_username_gets_the_same_401() {
    let app = spawn_app().await;
    let user = TestUser::generate();
    app.create_user(&user).await;

    for (username, password) in [
        (user.username.as_str(), "wrong-password-for-this"),
        ("nobody-by-that-name", user.password.as_str()),
        (user.email.as_str(), user.password.as_str()),
    ] {
        let resp = app.login(username, password).await;

        assert_401(resp, json!({ "detail": NO_ACCOUNT })).await;
    }
}

#[tokio::test]
async fn an_inactive_account_cannot_log_in() {
    let app = spawn_app().await;
    let user = TestUser::generate();
    let (id, _, _) = app.create_user(&user).await;
    app.exec("UPDATE users SET is_active = 0 WHERE id = ?1", id);

    let resp = app.login(&user.username, &user.password).await;

    assert_401(resp, json!({ "detail": NO_ACCOUNT })).await;
}

#[tokio::test]
async fn login_without_its_fields_gets_400_field_errors() {
    let app = spawn_app().await;
    let user = TestUser::generate();
    app.create_user(&user).await;

    for (body, missing) in [
        (json!({}), &["username", "password"][..]),
        (json!({"username": user.username}), &["password"][..]),
        (json!({"password": user.password}), &["username"][..]),
    ] {
        let resp = app
            .send(Method::POST, "/api/token", None, Some(&body))
            .await;

        let errors = assert_field_errors(resp, missing).await;
        for field in missing {
            assert_eq!(errors[field], json!([REQUIRED]));
        }
    }
}

#[tokio::test]
async fn tokens_carry_the_claims_simplejwt_writes() {
    let app = spawn_app().await;
    let user = TestUser::generate();
    let (id, access, refresh) = app.create_user(&user).await;
    let again = tokens(&app, &user).await;

    let mut jtis = BTreeSet::new();
    for (token, kind, lifetime) in [
        (access.as_str(), "access", 300),
        (refresh.as_str(), "refresh", 86400),
        (again["access"].as_str().unwrap(), "access", 300),
        (again["refresh"].as_str().unwrap(), "refresh", 86400),
    ] {
        assert_eq!(jwt_part(token, 0), json!({"alg": "HS256", "typ": "JWT"}));
        let claims = claims(token);
        let expected = ["token_type", "exp", "iat", "jti", "user_id"];
        assert_eq!(keys(&claims), expected.map(String::from).into());
        assert_eq!(claims["token_type"], kind);
        assert_eq!(claims["user_id"], json!(id.to_string()));
        let (exp, iat) = (
            claims["exp"].as_i64().unwrap(),
            claims["iat"].as_i64().unwrap(),
        );
        assert_eq!(exp - iat, lifetime, "{claims}");
        assert!((iat - now()).abs() <= 5, "iat {iat} is not now");
        let jti = claims["jti"].as_str().unwrap().to_owned();
        assert!(
            jti.len() == 32 && jti.chars().all(|c| c.is_ascii_hexdigit()),
            "{jti}"
        );
        jtis.insert(jti);
    }
    assert_eq!(jtis.len(), 4, "every token has its own jti");
}

#[tokio::test]
async fn token_lifetimes_follow_the_config() {
    let app = spawn_app_with(|c| {
        c.auth.access_token_lifetime = 60;
        c.auth.refresh_token_lifetime = 3600;
    })
    .await;

    let (_, access, refresh) = app.create_user(&TestUser::generate()).await;

    for (token, lifetime) in [(access, 60), (refresh, 3600)] {
        let claims = claims(&token);
        assert_eq!(
            claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
            lifetime
        );
    }
}

#[tokio::test]
async fn token_endpoints_accept_a_trailing_slash() {
    let app = spawn_app().await;
    let user = TestUser::generate();
    app.create_user(&user).await;
    let login = json!({"username": user.username, "password": user.password});

    let pair = expect_json(
        app.send(Method::POST, "/api/token/", None, Some(&login))
            .await,
        StatusCode::OK,
    )
    .await;
    let body = json!({ "refresh": pair["refresh"] });
    let refreshed = expect_json(
        app.send(Method::POST, "/api/token/refresh/", None, Some(&body))
            .await,
        StatusCode::OK,
    )
    .await;

    assert!(pair["access"].is_string() && refreshed["access"].is_string());
}

#[tokio::test]
async fn refresh_returns_a_new_access_token_only() {
    let app = spawn_app().await;
    let (id, _, refresh) = app.create_user(&TestUser::generate()).await;

    let body = expect_json(app.refresh(&refresh).await, StatusCode::OK).await;

    assert_eq!(keys(&body), ["access".to_owned()].into());
    let access = body["access"].as_str().unwrap();
    let claims = claims(access);
    assert_eq!(claims["token_type"], "access");
    assert_eq!(claims["user_id"], json!(id.to_string()));
    let me = expect_json(app.get_me(access).await, StatusCode::OK).await;
    assert_eq!(me["id"], id);
}

#[tokio::test]
async fn an_access_token_is_refused_at_refresh_as_wrong_type() {
    let app = spawn_app().await;
    let (_, access, _) = app.create_user(&TestUser::generate()).await;

    let resp = app.refresh(&access).await;

    assert_401(resp, bad_token("Token has wrong type")).await;
}

#[tokio::test]
async fn a_bad_refresh_token_is_refused_as_invalid() {
    let app = spawn_app().await;
    let (_, _, refresh) = app.create_user(&TestUser::generate()).await;
    let mut stretched = claims(&refresh);
    stretched["exp"] = json!(now() + 10 * 86400);

    for token in [
        "garbage".to_owned(),
        "a.b.c".to_owned(),
        forge(
            &claims(&refresh),
            "another-secret-that-is-long-enough-987654",
        ),
        with_claims(&refresh, &stretched),
    ] {
        let resp = app.refresh(&token).await;

        assert_401(resp, bad_token("Token is invalid")).await;
    }
}

#[tokio::test]
async fn an_expired_refresh_token_is_refused_as_expired() {
    let app = spawn_app().await;
    let (_, _, refresh) = app.create_user(&TestUser::generate()).await;
    let mut old = claims(&refresh);
    old["iat"] = json!(now() - 86400 - 60);
    old["exp"] = json!(now() - 60);

    let resp = app.refresh(&forge(&old, SECRET)).await;

    assert_401(resp, bad_token("Token is expired")).await;
}

#[tokio::test]
async fn refresh_without_the_field_gets_400() {
    let app = spawn_app().await;

    let resp = app
        .send(Method::POST, "/api/token/refresh", None, Some(&json!({})))
        .await;

    assert_reply(
        resp,
        StatusCode::BAD_REQUEST,
        json!({ "refresh": [REQUIRED] }),
    )
    .await;
}

#[tokio::test]
async fn refresh_is_refused_for_a_deleted_or_inactive_user() {
    let app = spawn_app().await;
    let (gone, _, gone_refresh) = app.create_user(&TestUser::generate()).await;
    let (idle, _, idle_refresh) = app.create_user(&TestUser::generate()).await;
    app.exec("DELETE FROM users WHERE id = ?1", gone);
    app.exec("UPDATE users SET is_active = 0 WHERE id = ?1", idle);

    for refresh in [gone_refresh, idle_refresh] {
        let resp = app.refresh(&refresh).await;

        let challenge = resp.headers().get("www-authenticate").cloned();
        let body = expect_json(resp, StatusCode::UNAUTHORIZED).await;
        assert!(body["detail"].is_string(), "{body}");
        assert_eq!(challenge.unwrap(), r#"Bearer realm="api""#);
    }
}

#[tokio::test]
async fn a_request_without_authorization_gets_401_not_provided() {
    let app = spawn_app().await;
    let expected = json!({"detail": "Authentication credentials were not provided."});

    for authorization in [None, Some("Basic dXNlcjpwYXNzd29yZA==")] {
        let resp = app
            .get_with_authorization("/api/users", authorization)
            .await;

        assert_401(resp, expected.clone()).await;
    }
}

#[tokio::test]
async fn bearer_with_no_token_or_two_tokens_gets_bad_authorization_header() {
    let app = spawn_app().await;
    let expected = json!({
        "detail": "Authorization header must contain two space-delimited values",
        "code": "bad_authorization_header",
    });

    for authorization in ["Bearer", "Bearer a b"] {
        let resp = app
            .get_with_authorization("/api/users", Some(authorization))
            .await;

        assert_401(resp, expected.clone()).await;
    }
}

#[tokio::test]
async fn a_refresh_token_is_refused_as_an_access_token() {
    let app = spawn_app().await;
    let (_, _, refresh) = app.create_user(&TestUser::generate()).await;

    let resp = app.get_users(&refresh).await;

    assert_401(resp, bad_access_token("Token has wrong type")).await;
}

#[tokio::test]
async fn a_token_forged_with_the_right_secret_is_accepted() {
    let app = spawn_app().await;
    let (id, access, _) = app.create_user(&TestUser::generate()).await;
    let mut fresh = claims(&access);
    fresh["jti"] = json!("0123456789abcdef0123456789abcdef");

    let resp = app.get_me(&forge(&fresh, SECRET)).await;

    assert_eq!(expect_json(resp, StatusCode::OK).await["id"], id);
}

#[tokio::test]
async fn a_tampered_or_foreign_access_token_is_refused_as_invalid() {
    let app = spawn_app().await;
    let (_, access, _) = app.create_user(&TestUser::generate()).await;
    let (other, _, _) = app.create_user(&TestUser::generate()).await;
    let mut someone_else = claims(&access);
    someone_else["user_id"] = json!(other.to_string());
    let (head, signature) = access.rsplit_once('.').unwrap();
    let flipped = if signature.starts_with('A') { 'B' } else { 'A' };
    let none_header = b64url(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = access.split('.').nth(1).unwrap();
    let swapped = with_claims(&access, &someone_else);
    assert_eq!(claims(&swapped), someone_else, "the tampering helper works");

    for token in [
        swapped,
        format!("{head}.{flipped}{}", &signature[1..]),
        format!("{head}."),
        forge(
            &claims(&access),
            "another-secret-that-is-long-enough-987654",
        ),
        format!("{none_header}.{payload}."),
        "garbage".to_owned(),
    ] {
        let resp = app.get_users(&token).await;

        assert_401(resp, bad_access_token("Token is invalid")).await;
    }
}

#[tokio::test]
async fn an_expired_access_token_is_refused_as_expired() {
    let app = spawn_app().await;
    let (_, access, _) = app.create_user(&TestUser::generate()).await;
    let mut old = claims(&access);
    old["iat"] = json!(now() - 600);
    old["exp"] = json!(now() - 300);

    let resp = app.get_users(&forge(&old, SECRET)).await;

    assert_401(resp, bad_access_token("Token is expired")).await;
}

#[tokio::test]
async fn an_access_token_expires_after_its_configured_lifetime() {
    let app = spawn_app_with(|c| c.auth.access_token_lifetime = 1).await;
    let (_, access, _) = app.create_user(&TestUser::generate()).await;

    tokio::time::sleep(Duration::from_millis(2500)).await;
    let resp = app.get_users(&access).await;

    assert_401(resp, bad_access_token("Token is expired")).await;
}

#[tokio::test]
async fn a_valid_token_of_a_deleted_inactive_or_unknown_user_gets_user_not_found() {
    let app = spawn_app().await;
    let (gone, gone_access, _) = app.create_user(&TestUser::generate()).await;
    let (idle, idle_access, _) = app.create_user(&TestUser::generate()).await;
    app.exec("DELETE FROM users WHERE id = ?1", gone);
    app.exec("UPDATE users SET is_active = 0 WHERE id = ?1", idle);
    let mut unknown = claims(&idle_access);
    unknown["user_id"] = json!("4242");

    for token in [gone_access, idle_access, forge(&unknown, SECRET)] {
        let resp = app.get_users(&token).await;

        assert_user_not_found(resp).await;
    }
}

#[tokio::test]
async fn with_issuer_and_audience_set_tokens_carry_and_require_them() {
    let app = spawn_app_with(|c| {
        c.auth.issuer = Some("rosterd-tests".to_owned());
        c.auth.audience = Some("rosterd-clients".to_owned());
    })
    .await;
    let (id, access, refresh) = app.create_user(&TestUser::generate()).await;
    let good = claims(&access);
    assert_eq!(
        (&good["iss"], &good["aud"]),
        (&json!("rosterd-tests"), &json!("rosterd-clients"))
    );

    expect_json(app.get_me(&access).await, StatusCode::OK).await;
    let refreshed = expect_json(app.refresh(&refresh).await, StatusCode::OK).await;
    let me = app.get_me(refreshed["access"].as_str().unwrap()).await;
    assert_eq!(expect_json(me, StatusCode::OK).await["id"], id);

    let mut no_iss = good.clone();
    no_iss.as_object_mut().unwrap().remove("iss");
    let mut wrong_aud = good.clone();
    wrong_aud["aud"] = json!("someone-else");
    let mut wrong_iss = good.clone();
    wrong_iss["iss"] = json!("someone-else");
    for forged in [no_iss, wrong_aud, wrong_iss] {
        let resp = app.get_users(&forge(&forged, SECRET)).await;

        assert_401(resp, bad_access_token("Token is invalid")).await;
    }
}
