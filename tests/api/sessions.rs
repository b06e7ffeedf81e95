//! The token lifecycle and account self-service: verify, blacklist and its
//! pruning, rotation with its grace window and family revocation,
//! logout-all, the password change, the `user` commands run against a live
//! server's database, deleting and patching oneself, closed registration,
//! and the throttling of password attempts.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use reqwest::header::RETRY_AFTER;
use reqwest::{Method, Response, StatusCode};
use rosterd::config::Config;
use serde_json::{Value, json};

use crate::helpers::{
    SECRET, TestApp, TestUser, assert_401, assert_404, assert_405, assert_empty,
    assert_field_errors, assert_reply, assert_user_not_found, b64url, bad_access_token, bad_token,
    claims, expect_json, forge, now, spawn_app, spawn_app_with,
};

const NO_ACCOUNT: &str = "No active account found with the given credentials";
const REQUIRED: &str = "This field is required.";
const BLACKLISTED: &str = "Token is blacklisted";
const FORBIDDEN: &str = "You do not have permission to perform this action.";
const WRONG_OLD: &str = "Your old password was entered incorrectly. Please enter it again.";
const NEW_PASSWORD: &str = "a-brand-new-passphrase-42";

// --- requests -------------------------------------------------------------

async fn post(app: &TestApp, path: &str, token: Option<&str>, body: Value) -> Response {
    app.send(Method::POST, path, token, Some(&body)).await
}

async fn verify(app: &TestApp, token: &str) -> Response {
    post(app, "/api/token/verify", None, json!({ "token": token })).await
}

async fn blacklist(app: &TestApp, refresh: &str) -> Response {
    post(
        app,
        "/api/token/blacklist",
        None,
        json!({ "refresh": refresh }),
    )
    .await
}

async fn logout_all(app: &TestApp, access: Option<&str>) -> Response {
    app.send(Method::POST, "/api/users/me/logout-all", access, None)
        .await
}

async fn change_password(app: &TestApp, access: &str, old: &str, new: &str) -> Response {
    let body = json!({ "old_password": old, "new_password": new });
    post(app, "/api/users/me/password", Some(access), body).await
}

/// A login that must succeed: (access, refresh).
async fn login(app: &TestApp, username: &str, password: &str) -> (String, String) {
    let body = expect_json(app.login(username, password).await, StatusCode::OK).await;
    let token = |key: &str| body[key].as_str().expect(key).to_owned();
    (token("access"), token("refresh"))
}

/// A registered, logged-in user: (user, id, access, refresh).
async fn user(app: &TestApp) -> (TestUser, i64, String, String) {
    let user = TestUser::generate();
    let (id, access, refresh) = app.create_user(&user).await;
    (user, id, access, refresh)
}

/// A refresh that must succeed; its body.
async fn refreshed(app: &TestApp, refresh: &str) -> Value {
    expect_json(app.refresh(refresh).await, StatusCode::OK).await
}

fn keys(value: &Value) -> BTreeSet<&str> {
    value
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect()
}

fn jti(token: &str) -> String {
    claims(token)["jti"].as_str().expect("jti").to_owned()
}

// --- assertions -----------------------------------------------------------

/// The access token authenticates and the refresh token refreshes.
async fn assert_session_works(app: &TestApp, access: &str, refresh: &str) {
    expect_json(app.get_me(access).await, StatusCode::OK).await;
    refreshed(app, refresh).await;
}

/// Both tokens are refused as voided ("Token is blacklisted").
async fn assert_session_void(app: &TestApp, access: &str, refresh: &str) {
    assert_401(app.get_me(access).await, bad_access_token(BLACKLISTED)).await;
    assert_401(app.refresh(refresh).await, bad_token(BLACKLISTED)).await;
}

/// Both tokens are refused because their user is gone or inactive.
async fn assert_session_orphaned(app: &TestApp, access: &str, refresh: &str) {
    assert_user_not_found(app.get_me(access).await).await;
    let no_account = json!({
        "detail": "No active account found for the given token.",
        "code": "no_active_account",
    });
    assert_401(app.refresh(refresh).await, no_account).await;
}

/// A 429 whose `Retry-After` (whole seconds, at least 1) matches DRF's body.
async fn assert_throttled(resp: Response) {
    let retry_after = resp
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let body = expect_json(resp, StatusCode::TOO_MANY_REQUESTS).await;
    let seconds = retry_after
        .filter(|s| *s >= 1)
        .expect("Retry-After of at least 1 s");
    let unit = if seconds == 1 { "second" } else { "seconds" };
    let detail = format!("Request was throttled. Expected available in {seconds} {unit}.");
    assert_eq!(body, json!({ "detail": detail }));
}

async fn assert_403(resp: Response) {
    assert_reply(resp, StatusCode::FORBIDDEN, json!({ "detail": FORBIDDEN })).await;
}

// --- the database ---------------------------------------------------------

/// The `refresh_tokens` row of a token: (user_id, family, expires_at,
/// retired_at, revoked); `None` when there is none.
type TokenRow = (i64, String, i64, Option<i64>, i64);

fn token_row(app: &TestApp, token: &str) -> Option<TokenRow> {
    let sql = "SELECT user_id, family, expires_at, retired_at, revoked \
               FROM refresh_tokens WHERE jti = ?1";
    if let Some(url) = &app.database_url {
        let sql = sql
            .replace("?1", "$1")
            .replace("revoked FROM", "revoked::int::int8 FROM");
        return crate::helpers::postgres::with(url, |client| {
            client
                .query_opt(&sql, &[&jti(token)])
                .expect(&sql)
                .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        });
    }
    app.db()
        .query_row(sql, [jti(token)], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e),
        })
        .expect(sql)
}

fn token_rows(app: &TestApp) -> i64 {
    app.count("SELECT count(*) FROM refresh_tokens WHERE ?1 = ?1", "")
}

// --- POST /api/token/verify -----------------------------------------------

#[tokio::test]
async fn verify_accepts_a_valid_access_or_refresh_token_with_an_empty_object() {
    let app = spawn_app().await;
    let (_, _, access, refresh) = user(&app).await;

    for token in [&access, &refresh] {
        assert_reply(verify(&app, token).await, StatusCode::OK, json!({})).await;
    }
    let slashed = post(&app, "/api/token/verify/", None, json!({ "token": access })).await;
    assert_reply(slashed, StatusCode::OK, json!({})).await;
}

#[tokio::test]
async fn verify_refuses_garbage_tampered_and_foreign_tokens_as_invalid() {
    let app = spawn_app().await;
    let (_, id, access, _) = user(&app).await;
    let [header, payload, signature]: [&str; 3] =
        access.split('.').collect::<Vec<_>>().try_into().unwrap();
    let flipped = if signature.starts_with('A') { "B" } else { "A" };
    let bad_signature = format!("{header}.{payload}.{flipped}{}", &signature[1..]);
    let mut claims = claims(&access);
    claims["user_id"] = json!((id + 1).to_string());
    let other_payload = format!(
        "{header}.{}.{signature}",
        b64url(claims.to_string().as_bytes())
    );
    let foreign = forge(&claims, "another-secret-that-is-long-enough-0123456789");

    for token in ["garbage", "a.b.c", &bad_signature, &other_payload, &foreign] {
        assert_401(verify(&app, token).await, bad_token("Token is invalid")).await;
    }
}

#[tokio::test]
async fn verify_refuses_an_expired_token_as_expired() {
    let app = spawn_app().await;
    let (_, _, _, refresh) = user(&app).await;
    let mut claims = claims(&refresh);
    claims["exp"] = json!(now() - 1);
    claims["iat"] = json!(now() - 100);

    let resp = verify(&app, &forge(&claims, SECRET)).await;

    assert_401(resp, bad_token("Token is expired")).await;
}

#[tokio::test]
async fn verify_without_a_token_is_a_400_field_error() {
    let app = spawn_app().await;

    let resp = post(&app, "/api/token/verify", None, json!({})).await;

    assert_reply(
        resp,
        StatusCode::BAD_REQUEST,
        json!({ "token": [REQUIRED] }),
    )
    .await;
}

// --- POST /api/token/blacklist --------------------------------------------

#[tokio::test]
async fn a_blacklisted_refresh_token_is_refused_by_refresh_verify_and_blacklist() {
    for rotate in [false, true] {
        let app = spawn_app_with(|c| c.auth.rotate_refresh_tokens = rotate).await;
        let (user, id, _, refresh) = user(&app).await;
        let (other_access, other_refresh) = login(&app, &user.username, &user.password).await;

        assert_reply(blacklist(&app, &refresh).await, StatusCode::OK, json!({})).await;

        assert_401(app.refresh(&refresh).await, bad_token(BLACKLISTED)).await;
        assert_401(verify(&app, &refresh).await, bad_token(BLACKLISTED)).await;
        assert_401(blacklist(&app, &refresh).await, bad_token(BLACKLISTED)).await;
        let expires_at = claims(&refresh)["exp"].as_i64().unwrap();
        let row = token_row(&app, &refresh).expect("a row for the blacklisted token");
        assert_eq!(
            (row.0, row.2, row.4),
            (id, expires_at, 1),
            "rotate {rotate}"
        );
        // Another session of the same user is not logged out.
        assert_session_works(&app, &other_access, &other_refresh).await;
    }
}

#[tokio::test]
async fn blacklisting_an_access_token_is_refused_as_the_wrong_type() {
    let app = spawn_app().await;
    let (_, _, access, refresh) = user(&app).await;

    assert_401(
        blacklist(&app, &access).await,
        bad_token("Token has wrong type"),
    )
    .await;
    assert_401(
        blacklist(&app, "garbage").await,
        bad_token("Token is invalid"),
    )
    .await;
    let resp = post(&app, "/api/token/blacklist", None, json!({})).await;
    assert_reply(
        resp,
        StatusCode::BAD_REQUEST,
        json!({ "refresh": [REQUIRED] }),
    )
    .await;

    assert_eq!(token_rows(&app), 0);
    refreshed(&app, &refresh).await;
}

#[tokio::test]
async fn blacklist_rows_are_pruned_by_the_next_write_once_their_token_expired() {
    // Two seconds, not one: a one-second token may expire between the login
    // and the blacklist when they straddle a second boundary.
    let app = spawn_app_with(|c| c.auth.refresh_token_lifetime = 2).await;
    let (user, _, _, first) = user(&app).await;
    expect_json(blacklist(&app, &first).await, StatusCode::OK).await;
    assert!(token_row(&app, &first).is_some());

    tokio::time::sleep(Duration::from_millis(2200)).await;
    let (_, second) = login(&app, &user.username, &user.password).await;
    expect_json(blacklist(&app, &second).await, StatusCode::OK).await;

    assert!(
        token_row(&app, &first).is_none(),
        "the expired row is pruned"
    );
    assert!(token_row(&app, &second).is_some());
    assert_eq!(token_rows(&app), 1);
}

// --- rotation -------------------------------------------------------------

#[tokio::test]
async fn without_rotation_refresh_answers_only_an_access_token_and_the_refresh_keeps_working() {
    let app = spawn_app().await;
    let (_, _, _, refresh) = user(&app).await;

    for _ in 0..2 {
        let body = refreshed(&app, &refresh).await;
        assert_eq!(keys(&body), ["access"].into());
        expect_json(
            app.get_me(body["access"].as_str().unwrap()).await,
            StatusCode::OK,
        )
        .await;
    }
}

#[tokio::test]
async fn with_rotation_refresh_answers_a_new_pair_and_retires_the_old_refresh_token() {
    let app = spawn_app_with(|c| c.auth.rotate_refresh_tokens = true).await;
    let (_, id, _, first) = user(&app).await;

    let body = refreshed(&app, &first).await;

    assert_eq!(keys(&body), ["access", "refresh"].into());
    let second = body["refresh"].as_str().unwrap();
    assert_ne!(jti(second), jti(&first));
    let old = token_row(&app, &first).expect("the login's row");
    let new = token_row(&app, second).expect("the rotated row");
    assert!(old.3.is_some(), "the old token is retired: {old:?}");
    assert_eq!((new.0, &new.1, new.3, new.4), (id, &jti(&first), None, 0));
    assert_session_works(&app, body["access"].as_str().unwrap(), second).await;
}

#[tokio::test]
async fn two_quick_refreshes_of_one_token_both_succeed_within_the_grace_window() {
    let app = spawn_app_with(|c| c.auth.rotate_refresh_tokens = true).await;
    let (_, _, _, refresh) = user(&app).await;

    let (one, two) = tokio::join!(refreshed(&app, &refresh), refreshed(&app, &refresh));

    assert_ne!(one["refresh"], two["refresh"]);
    for body in [one, two] {
        let (access, refresh) = (body["access"].as_str(), body["refresh"].as_str());
        assert_session_works(&app, access.unwrap(), refresh.unwrap()).await;
    }
}

#[tokio::test]
async fn reuse_of_a_retired_refresh_token_after_the_grace_window_revokes_its_whole_family() {
    let app = spawn_app_with(|c| {
        c.auth.rotate_refresh_tokens = true;
        c.auth.rotation_grace_period = 1;
    })
    .await;
    let (user, _, _, first) = user(&app).await;
    let (other_access, other_refresh) = login(&app, &user.username, &user.password).await;
    let body = refreshed(&app, &first).await;
    let newest = body["refresh"].as_str().unwrap();

    tokio::time::sleep(Duration::from_millis(2200)).await;
    let reuse = app.refresh(&first).await;

    assert_401(reuse, bad_token(BLACKLISTED)).await;
    assert_401(app.refresh(newest).await, bad_token(BLACKLISTED)).await;
    assert_401(verify(&app, newest).await, bad_token(BLACKLISTED)).await;
    for token in [first.as_str(), newest] {
        assert_eq!(token_row(&app, token).map(|r| r.4), Some(1), "revoked");
    }
    // The separate login is another family: untouched.
    assert_session_works(&app, &other_access, &other_refresh).await;
}

// --- POST /api/users/me/logout-all ----------------------------------------

#[tokio::test]
async fn logout_all_voids_every_token_issued_before_it_and_a_new_login_works_at_once() {
    let app = spawn_app().await;
    let (user, id, access, refresh) = user(&app).await;
    let (second_access, second_refresh) = login(&app, &user.username, &user.password).await;
    let (_, _, bystander_access, bystander_refresh) = self::user(&app).await;

    assert_empty(
        logout_all(&app, Some(&access)).await,
        StatusCode::NO_CONTENT,
    )
    .await;

    assert_session_void(&app, &access, &refresh).await;
    assert_session_void(&app, &second_access, &second_refresh).await;
    assert_401(verify(&app, &access).await, bad_token(BLACKLISTED)).await;
    assert!(app.column(id, "tokens_valid_after").as_i64().unwrap() > 0);
    let (new_access, new_refresh) = login(&app, &user.username, &user.password).await;
    for token in [&new_access, &new_refresh] {
        assert_reply(verify(&app, token).await, StatusCode::OK, json!({})).await;
    }
    assert_session_works(&app, &new_access, &new_refresh).await;
    assert_session_works(&app, &bystander_access, &bystander_refresh).await;
}

/// Voids the user's tokens: a password change from `old` to `new` when
/// given, a logout-all otherwise.
async fn revoke(app: &TestApp, access: &str, password_change: Option<(&str, &str)>) {
    let resp = match password_change {
        Some((old, new)) => change_password(app, access, old, new).await,
        None => logout_all(app, Some(access)).await,
    };
    assert_empty(resp, StatusCode::NO_CONTENT).await;
}

#[tokio::test]
async fn a_second_revocation_in_the_same_second_voids_a_login_made_after_the_first() {
    for by_password in [false, true] {
        let app = spawn_app().await;
        let (user, _, access, _) = user(&app).await;
        let passwords = [
            user.password.as_str(),
            NEW_PASSWORD,
            "yet-another-passphrase-7",
        ];
        let change = |n: usize| by_password.then(|| (passwords[n], passwords[n + 1]));
        // Start early in a second, so that the whole sequence fits in one.
        let into_second = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_millis();
        tokio::time::sleep(Duration::from_millis(u64::from(1000 - into_second))).await;

        revoke(&app, &access, change(0)).await;
        let current = if by_password {
            NEW_PASSWORD
        } else {
            &user.password
        };
        let (access, refresh) = login(&app, &user.username, current).await;
        revoke(&app, &access, change(1)).await;

        assert_session_void(&app, &access, &refresh).await;
    }
}

#[tokio::test]
async fn logout_all_without_a_token_is_401() {
    let app = spawn_app().await;

    let resp = logout_all(&app, None).await;

    let detail = "Authentication credentials were not provided.";
    assert_401(resp, json!({ "detail": detail })).await;
}

// --- POST /api/users/me/password ------------------------------------------

#[tokio::test]
async fn changing_the_password_voids_old_tokens_and_only_the_new_password_logs_in() {
    let app = spawn_app().await;
    let (user, id, access, refresh) = user(&app).await;
    let hash = app.column(id, "password_hash");

    let resp = change_password(&app, &access, &user.password, NEW_PASSWORD).await;

    assert_empty(resp, StatusCode::NO_CONTENT).await;
    assert_ne!(app.column(id, "password_hash"), hash);
    assert_session_void(&app, &access, &refresh).await;
    assert_401(
        app.login(&user.username, &user.password).await,
        json!({ "detail": NO_ACCOUNT }),
    )
    .await;
    let (access, refresh) = login(&app, &user.username, NEW_PASSWORD).await;
    assert_session_works(&app, &access, &refresh).await;
}

#[tokio::test]
async fn a_wrong_old_password_is_a_400_field_error_and_changes_nothing() {
    let app = spawn_app().await;
    let (user, id, access, refresh) = user(&app).await;
    let (row, valid_after) = (app.row(id), app.column(id, "tokens_valid_after"));

    let resp = change_password(&app, &access, "not-the-password-1", NEW_PASSWORD).await;

    assert_reply(
        resp,
        StatusCode::BAD_REQUEST,
        json!({ "old_password": [WRONG_OLD] }),
    )
    .await;
    assert_eq!(app.row(id), row);
    assert_eq!(app.column(id, "tokens_valid_after"), valid_after);
    assert_session_works(&app, &access, &refresh).await;
    login(&app, &user.username, &user.password).await;
}

#[tokio::test]
async fn a_weak_new_password_or_missing_fields_are_400_field_errors_and_change_nothing() {
    let app = spawn_app().await;
    let (user, id, access, refresh) = user(&app).await;
    let row = app.row(id);
    let old = user.password.as_str();

    let cases: [(Value, &[&str]); 4] = [
        (
            json!({ "old_password": old, "new_password": "123" }),
            &["new_password"],
        ),
        (json!({}), &["old_password", "new_password"]),
        (json!({ "old_password": old }), &["new_password"]),
        (json!({ "new_password": NEW_PASSWORD }), &["old_password"]),
    ];
    for (body, fields) in cases {
        let resp = post(&app, "/api/users/me/password", Some(&access), body).await;
        let errors = assert_field_errors(resp, fields).await;
        if fields.len() > 1 {
            assert_eq!(errors["old_password"], json!([REQUIRED]));
        }
    }

    assert_eq!(app.row(id), row);
    assert_session_works(&app, &access, &refresh).await;
}

// --- the `user` commands on a live server's database ----------------------

/// Runs `rosterd --db <the app's db> ARGS` with `stdin`; asserts it
/// succeeds and returns its standard output.
fn rosterd(app: &TestApp, args: &[&str], stdin: &str) -> String {
    let home = app.dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let output = assert_cmd::Command::new(env!("CARGO_BIN_EXE_rosterd"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &home)
        .env("ROSTERD_AUTH_PBKDF2_ITERATIONS", "1000")
        .args(app.database_args())
        .args(args)
        .write_stdin(stdin)
        .timeout(Duration::from_secs(20))
        .assert()
        .success()
        .get_output()
        .clone();
    String::from_utf8(output.stdout).unwrap()
}

/// The `active` column of `user list` for `username`.
fn listed_active(app: &TestApp, username: &str) -> String {
    let out = rosterd(app, &["user", "list"], "");
    let mut lines = out.lines().map(|l| l.split('\t').collect::<Vec<_>>());
    let header = lines.next().expect("a header line");
    let column = header
        .iter()
        .position(|h| *h == "active")
        .expect("an active column");
    let row = lines
        .find(|r| r[1] == username)
        .expect("the user is listed");
    row[column].to_owned()
}

#[tokio::test]
async fn cli_set_password_voids_the_tokens_issued_before_it() {
    let app = spawn_app().await;
    let (user, _, access, refresh) = user(&app).await;

    let args = [
        "user",
        "set-password",
        "--username",
        &user.username,
        "--password-stdin",
    ];
    rosterd(&app, &args, &format!("{NEW_PASSWORD}\n"));

    assert_session_void(&app, &access, &refresh).await;
    assert_401(
        app.login(&user.username, &user.password).await,
        json!({ "detail": NO_ACCOUNT }),
    )
    .await;
    let (access, refresh) = login(&app, &user.username, NEW_PASSWORD).await;
    assert_session_works(&app, &access, &refresh).await;
}

#[tokio::test]
async fn cli_deactivate_voids_tokens_and_refuses_login_until_activate() {
    let app = spawn_app().await;
    let (user, _, access, refresh) = user(&app).await;
    assert_eq!(listed_active(&app, &user.username), "yes");

    rosterd(
        &app,
        &["user", "deactivate", "--username", &user.username],
        "",
    );

    assert_session_orphaned(&app, &access, &refresh).await;
    let refused = app.login(&user.username, &user.password).await;
    assert_401(refused, json!({ "detail": NO_ACCOUNT })).await;
    assert_eq!(listed_active(&app, &user.username), "no");

    rosterd(
        &app,
        &["user", "activate", "--username", &user.username],
        "",
    );

    assert_eq!(listed_active(&app, &user.username), "yes");
    let (new_access, new_refresh) = login(&app, &user.username, &user.password).await;
    assert_session_works(&app, &new_access, &new_refresh).await;
    // Activation does not bring back the tokens deactivation voided.
    assert_session_void(&app, &access, &refresh).await;
}

#[tokio::test]
async fn cli_delete_removes_the_user_and_their_tokens_fail() {
    let app = spawn_app().await;
    let (user, id, access, refresh) = user(&app).await;
    let (_, _, other_access, _) = self::user(&app).await;

    rosterd(&app, &["user", "delete", "--username", &user.username], "");

    assert_session_orphaned(&app, &access, &refresh).await;
    assert_404(app.get_user(id, &other_access).await).await;
    assert_eq!(app.column(id, "username"), Value::Null);
}

// --- DELETE and PATCH /api/users/{id} -------------------------------------

#[tokio::test]
async fn a_user_deleting_themself_gets_204_their_tokens_fail_and_the_id_is_never_reused() {
    let app = spawn_app().await;
    let (_, id, access, refresh) = user(&app).await;

    assert_empty(app.delete_user(id, &access).await, StatusCode::NO_CONTENT).await;

    assert_session_orphaned(&app, &access, &refresh).await;
    assert_eq!(app.user_count(), 0);
    let next = TestUser::generate();
    let created = expect_json(app.register_json(&next.body()).await, StatusCode::CREATED).await;
    assert!(
        created["id"].as_i64().unwrap() > id,
        "{created} reuses id {id}"
    );
}

#[tokio::test]
async fn deleting_another_user_is_403_for_non_staff_and_204_for_staff() {
    let app = spawn_app().await;
    let (_, id, _, _) = user(&app).await;
    let (_, _, other_access, _) = user(&app).await;
    let (_, staff_access, staff_refresh) = app.create_staff().await;
    let row = app.row(id);

    assert_403(app.delete_user(id, &other_access).await).await;
    assert_eq!(app.row(id), row);

    assert_empty(
        app.delete_user(id, &staff_access).await,
        StatusCode::NO_CONTENT,
    )
    .await;
    assert_eq!(app.column(id, "username"), Value::Null);
    assert_session_works(&app, &staff_access, &staff_refresh).await;
}

#[tokio::test]
async fn patch_changes_only_the_given_fields_and_is_403_for_another_user() {
    let app = spawn_app().await;
    let (_, id, access, _) = user(&app).await;
    let (_, _, other_access, _) = user(&app).await;
    let before = expect_json(app.get_me(&access).await, StatusCode::OK).await;
    let row = app.row(id);

    assert_403(
        app.patch_user(id, &other_access, &json!({ "level": 7 }))
            .await,
    )
    .await;
    assert_eq!(app.row(id), row);

    let after = expect_json(
        app.patch_user(id, &access, &json!({ "level": 5 })).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(after["level"], json!(5));
    assert_eq!(app.column(id, "level"), json!(5));
    for key in [
        "id",
        "username",
        "email",
        "status",
        "profilePicture",
        "created_at",
    ] {
        assert_eq!(after[key], before[key], "{key}");
    }
    assert_eq!(keys(&after), keys(&before));
    assert_eq!(app.column(id, "password_hash"), row[2]);
    assert_eq!(
        expect_json(app.get_me(&access).await, StatusCode::OK).await,
        after
    );
}

// --- registration.open = false --------------------------------------------

#[tokio::test]
async fn closed_registration_refuses_anonymous_and_non_staff_and_lets_staff_create() {
    let app = spawn_app().await;
    let (_, _, user_access, _) = user(&app).await;
    let (_, staff_access, _) = app.create_staff().await;
    let mut stopped = app.stop().await;
    stopped.config.registration.open = false;
    let app = stopped.start().await;
    let body = TestUser::generate().body();

    for token in [None, Some(user_access.as_str())] {
        let resp = post(&app, "/api/users", token, body.clone()).await;
        assert_403(resp).await;
        assert_eq!(app.user_count(), 2, "no row added for token {token:?}");
    }

    let resp = post(&app, "/api/users", Some(&staff_access), body.clone()).await;
    let created = expect_json(resp, StatusCode::CREATED).await;
    assert_eq!(created["username"], body["username"]);
    assert_eq!(app.user_count(), 3);
}

// --- throttling -------------------------------------------------------------

/// Throttling on, with these per-minute budgets.
fn throttled(per_username: u32, per_address: u32) -> impl FnOnce(&mut Config) {
    move |c: &mut Config| {
        c.rate_limit.enabled = true;
        c.rate_limit.per_username_per_minute = per_username;
        c.rate_limit.per_address_per_minute = per_address;
    }
}

/// POST /api/token with an `X-Forwarded-For` header.
async fn login_via(app: &TestApp, forwarded_for: &str, username: &str) -> Response {
    app.request(Method::POST, "/api/token", None)
        .header("x-forwarded-for", forwarded_for)
        .json(&json!({ "username": username, "password": "wrong-password-here" }))
        .send()
        .await
        .expect("request sent")
}

#[tokio::test]
async fn a_username_is_throttled_after_its_budget_while_another_still_logs_in() {
    let app = spawn_app_with(throttled(3, 1000)).await;
    let alice = TestUser::generate();
    let bob = TestUser::generate();
    for user in [&alice, &bob] {
        expect_json(app.register_json(&user.body()).await, StatusCode::CREATED).await;
    }

    for _ in 0..3 {
        let resp = app.login(&alice.username, "wrong-password-here").await;
        assert_401(resp, json!({ "detail": NO_ACCOUNT })).await;
    }

    // Refused even with the right password, and whatever the case.
    assert_throttled(app.login(&alice.username, &alice.password).await).await;
    assert_throttled(app.login(&alice.username.to_uppercase(), "x").await).await;
    login(&app, &bob.username, &bob.password).await;
}

#[tokio::test]
async fn an_address_is_throttled_after_its_budget_whatever_the_username() {
    let app = spawn_app_with(throttled(1000, 3)).await;
    let user = TestUser::generate();
    expect_json(app.register_json(&user.body()).await, StatusCode::CREATED).await;

    for n in 0..3 {
        let resp = app
            .login(&format!("nobody{n}"), "wrong-password-here")
            .await;
        assert_401(resp, json!({ "detail": NO_ACCOUNT })).await;
    }

    assert_throttled(app.login(&user.username, &user.password).await).await;
}

#[tokio::test]
async fn a_throttled_login_spends_no_hash() {
    let app = spawn_app_with(|c| {
        throttled(2, 1000)(c);
        c.auth.pbkdf2_iterations = 600_000;
    })
    .await;

    let mut hashed = Duration::MAX;
    for _ in 0..2 {
        let start = Instant::now();
        let resp = app.login("ghost", "wrong-password-here").await;
        hashed = hashed.min(start.elapsed());
        assert_401(resp, json!({ "detail": NO_ACCOUNT })).await;
    }

    let start = Instant::now();
    let resp = app.login("ghost", "wrong-password-here").await;
    let throttled = start.elapsed();
    assert_throttled(resp).await;

    assert!(
        throttled < hashed / 2,
        "throttled {throttled:?}, a hashed attempt {hashed:?}"
    );
}

#[tokio::test]
async fn the_password_change_is_throttled_per_username_and_a_throttled_one_changes_nothing() {
    let app = spawn_app_with(throttled(3, 1000)).await;
    // Its successful login is not counted: failures are.
    let (user, id, access, refresh) = user(&app).await;
    let (_, _, other_access, _) = self::user(&app).await;
    let row = app.row(id);

    for _ in 0..3 {
        let resp = change_password(&app, &access, "not-the-password-1", NEW_PASSWORD).await;
        assert_reply(
            resp,
            StatusCode::BAD_REQUEST,
            json!({ "old_password": [WRONG_OLD] }),
        )
        .await;
    }

    let resp = change_password(&app, &access, &user.password, NEW_PASSWORD).await;
    assert_throttled(resp).await;
    assert_eq!(app.row(id), row);
    assert_session_works(&app, &access, &refresh).await;
    // Another caller has a budget of their own.
    let resp = change_password(&app, &other_access, "not-the-password-1", NEW_PASSWORD).await;
    assert_reply(
        resp,
        StatusCode::BAD_REQUEST,
        json!({ "old_password": [WRONG_OLD] }),
    )
    .await;
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_address_is_throttled() {
    let app = spawn_app_with(|c| {
        throttled(1000, 2)(c);
        c.server.trusted_proxies = vec!["127.0.0.1".into()];
    })
    .await;

    for n in 0..2 {
        let resp = login_via(&app, "203.0.113.7", &format!("nobody{n}")).await;
        assert_401(resp, json!({ "detail": NO_ACCOUNT })).await;
    }

    assert_throttled(login_via(&app, "203.0.113.7", "nobody9").await).await;
    let other = login_via(&app, "203.0.113.8", "nobody9").await;
    assert_401(other, json!({ "detail": NO_ACCOUNT })).await;
}

#[tokio::test]
async fn without_trusted_proxies_x_forwarded_for_is_ignored() {
    let app = spawn_app_with(throttled(1000, 2)).await;

    for (n, address) in ["203.0.113.7", "203.0.113.8"].into_iter().enumerate() {
        let resp = login_via(&app, address, &format!("nobody{n}")).await;
        assert_401(resp, json!({ "detail": NO_ACCOUNT })).await;
    }

    assert_throttled(login_via(&app, "203.0.113.9", "nobody9").await).await;
}

// --- 405 --------------------------------------------------------------------

#[tokio::test]
async fn the_new_paths_answer_other_methods_with_405_and_allow_post_options() {
    let app = spawn_app().await;
    let (_, _, access, _) = user(&app).await;

    for path in [
        "/api/token/verify",
        "/api/token/blacklist",
        "/api/users/me/password",
        "/api/users/me/logout-all",
    ] {
        for (method, suffix) in [(Method::GET, ""), (Method::PUT, "/"), (Method::DELETE, "")] {
            let resp = app
                .send(
                    method.clone(),
                    &format!("{path}{suffix}"),
                    Some(&access),
                    None,
                )
                .await;
            assert_405(resp, method.as_str(), &["POST", "OPTIONS"]).await;
        }
    }
}
