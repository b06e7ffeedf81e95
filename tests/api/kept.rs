//! A change to the file shows in the very next request, whoever made it:
//! the API, another connection, or another process (the `rosterd user`
//! commands). Each test reads first, then changes the database behind the
//! server's back and reads again at once: nothing the server answers may
//! outlive the change.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    TestApp, TestUser, assert_401, assert_404, assert_user_not_found, bad_access_token, bad_token,
    expect_json, spawn_app,
};

const BLACKLISTED: &str = "Token is blacklisted";

/// A registered, logged-in user: (user, id, access, refresh).
async fn user(app: &TestApp) -> (TestUser, i64, String, String) {
    let user = TestUser::generate();
    let (id, access, refresh) = app.create_user(&user).await;
    (user, id, access, refresh)
}

async fn level_of(app: &TestApp, id: i64, access: &str) -> Value {
    expect_json(app.get_user(id, access).await, StatusCode::OK).await["level"].clone()
}

fn no_account() -> Value {
    json!({
        "detail": "No active account found for the given token.",
        "code": "no_active_account",
    })
}

/// Runs `rosterd --db <the app's db> ARGS` in its own process.
fn rosterd(app: &TestApp, args: &[&str]) {
    let home = app.dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    assert_cmd::Command::new(env!("CARGO_BIN_EXE_rosterd"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &home)
        .args(app.database_args())
        .args(args)
        .timeout(Duration::from_secs(20))
        .assert()
        .success();
}

#[tokio::test]
async fn a_user_read_again_shows_every_change_made_beside_the_server() {
    let app = spawn_app().await;
    let (_, _, access, _) = user(&app).await;
    let (_, other, _, _) = user(&app).await;
    assert_eq!(level_of(&app, other, &access).await, json!(1));
    assert_eq!(level_of(&app, other, &access).await, json!(1));
    // Each change by another connection shows at the very next read.
    for level in 2..12 {
        app.exec(
            &format!("UPDATE users SET level = {level} WHERE id = ?1"),
            other,
        );
        assert_eq!(level_of(&app, other, &access).await, json!(level));
    }
    // Through the API as well.
    let staff = app.create_staff().await;
    let patched = app.patch_user(other, &staff.1, &json!({"level": 42})).await;
    expect_json(patched, StatusCode::OK).await;
    assert_eq!(level_of(&app, other, &access).await, json!(42));
    // Gone: 404, also for a user asked for before it existed.
    assert_404(app.get_user(other + 100, &access).await).await;
    app.exec("DELETE FROM users WHERE id = ?1", other);
    assert_404(app.get_user(other, &access).await).await;
    let (_, newer, _, _) = user(&app).await;
    assert_eq!(level_of(&app, newer, &access).await, json!(1));
}

#[tokio::test]
async fn the_caller_deactivated_or_voided_beside_the_server_is_refused_at_once() {
    let app = spawn_app().await;
    let (_, id, access, refresh) = user(&app).await;
    let (_, other, _, _) = user(&app).await;
    // Kept: the caller's state, the users, the refresh token's.
    for _ in 0..2 {
        assert_eq!(level_of(&app, other, &access).await, json!(1));
        expect_json(app.get_me(&access).await, StatusCode::OK).await;
        expect_json(app.refresh(&refresh).await, StatusCode::OK).await;
    }

    app.exec("UPDATE users SET is_active = 0 WHERE id = ?1", id);
    assert_user_not_found(app.get_user(other, &access).await).await;
    assert_user_not_found(app.get_me(&access).await).await;
    assert_401(app.refresh(&refresh).await, no_account()).await;

    app.exec("UPDATE users SET is_active = 1 WHERE id = ?1", id);
    assert_eq!(level_of(&app, other, &access).await, json!(1));
    expect_json(app.refresh(&refresh).await, StatusCode::OK).await;

    let now = if app.database_url.is_some() {
        "extract(epoch from now())::bigint"
    } else {
        "strftime('%s', 'now')"
    };
    app.exec(
        &format!("UPDATE users SET tokens_valid_after = {now} + 5 WHERE id = ?1"),
        id,
    );
    assert_401(
        app.get_user(other, &access).await,
        bad_access_token(BLACKLISTED),
    )
    .await;
    assert_401(app.get_me(&access).await, bad_access_token(BLACKLISTED)).await;
    assert_401(app.refresh(&refresh).await, bad_token(BLACKLISTED)).await;
}

#[tokio::test]
async fn a_refresh_token_blacklisted_beside_the_server_is_refused_at_once() {
    let app = spawn_app().await;
    let (_, id, _, refresh) = user(&app).await;
    expect_json(app.refresh(&refresh).await, StatusCode::OK).await;
    expect_json(app.refresh(&refresh).await, StatusCode::OK).await;
    // As `rosterd`'s own blacklist stores it: a row for the jti, revoked.
    let claims: Value = serde_json::from_slice(
        &base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            refresh.split('.').nth(1).unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    app.sql(&format!(
        "INSERT INTO refresh_tokens (jti, user_id, family, expires_at, revoked)
         VALUES ('{jti}', {id}, '{jti}', {exp}, true)",
        jti = claims["jti"].as_str().unwrap(),
        exp = claims["exp"].as_i64().unwrap()
    ));
    assert_401(app.refresh(&refresh).await, bad_token(BLACKLISTED)).await;
}

#[tokio::test]
async fn changes_by_the_user_commands_in_another_process_show_at_once() {
    let app = spawn_app().await;
    let (user, id, access, refresh) = user(&app).await;
    let (_, _, other_access, _) = self::user(&app).await;
    assert_eq!(level_of(&app, id, &other_access).await, json!(1));
    expect_json(app.get_me(&access).await, StatusCode::OK).await;
    expect_json(app.refresh(&refresh).await, StatusCode::OK).await;

    rosterd(&app, &["user", "deactivate", "--username", &user.username]);
    assert_user_not_found(app.get_me(&access).await).await;
    assert_401(app.refresh(&refresh).await, no_account()).await;

    rosterd(&app, &["user", "delete", "--username", &user.username]);
    assert_404(app.get_user(id, &other_access).await).await;
}

#[tokio::test]
async fn bad_ids_and_tokens_get_the_same_answers_when_kept() {
    let app = spawn_app().await;
    let (_, id, access, _) = user(&app).await;
    for _ in 0..2 {
        assert_eq!(level_of(&app, id, &access).await, json!(1));
        assert_404(
            app.request(reqwest::Method::GET, "/api/users/abc", Some(&access))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_404(app.get_user(0, &access).await).await;
        let resp = app.get_user(id, "not-a-token").await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    }
}
