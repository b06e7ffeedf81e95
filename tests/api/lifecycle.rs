//! The server as a whole: restarts on the same file, concurrent writers,
//! graceful shutdown, and password hashing at the production cost.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use rosterd::config::Config;
use serde_json::json;
use tokio::task::JoinSet;

use crate::helpers::{
    TestApp, TestUser, assert_field_errors, assert_user_json, assert_user_not_found, expect_json,
    read_json, spawn_app, spawn_app_with,
};

/// POSTs every body to /api/users at once; returns the replies.
async fn register_all(app: &TestApp, bodies: Vec<serde_json::Value>) -> Vec<reqwest::Response> {
    let mut set = JoinSet::new();
    for body in bodies {
        let request = app
            .client
            .post(format!("{}/api/users", app.base_url))
            .json(&body);
        set.spawn(async move { request.send().await.expect("request sent") });
    }
    set.join_all().await
}

#[tokio::test]
async fn accounts_and_tokens_survive_a_restart() {
    let app = spawn_app().await;
    let user = TestUser::generate();
    let (id, access, refresh) = app.create_user(&user).await;
    let patch = app
        .patch_user(id, &access, &json!({"status": "busy"}))
        .await;
    expect_json(patch, StatusCode::OK).await;

    let app = app.restart().await;

    assert_eq!(app.user_count(), 1);
    let tokens = expect_json(
        app.login(&user.username, &user.password).await,
        StatusCode::OK,
    )
    .await;
    let me = expect_json(
        app.get_me(tokens["access"].as_str().unwrap()).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!((&me["id"], &me["status"]), (&json!(id), &json!("busy")));
    let refreshed = expect_json(app.refresh(&refresh).await, StatusCode::OK).await;
    assert!(refreshed["access"].is_string());
    expect_json(app.get_me(&access).await, StatusCode::OK).await;
}

#[tokio::test]
async fn a_graceful_stop_finishes_the_request_in_flight_then_stops_listening() {
    // Slow hashing keeps the login in flight while the server is told to stop.
    let app = spawn_app_with(|c| c.auth.pbkdf2_iterations = 6_000_000).await;
    let user = TestUser::generate();
    let resp = app
        .register(&user.username, &user.email, &user.password)
        .await;
    expect_json(resp, StatusCode::CREATED).await;
    let login = app
        .client
        .post(format!("{}/api/token", app.base_url))
        .json(&json!({"username": user.username, "password": user.password}))
        .send();
    let in_flight = tokio::spawn(login);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!in_flight.is_finished(), "the login is still in flight");

    let addr = app.addr;
    app.stop().await;

    let resp = in_flight
        .await
        .unwrap()
        .expect("the in-flight login is answered");
    assert!(expect_json(resp, StatusCode::OK).await["access"].is_string());
    let after = reqwest::get(format!("http://{addr}/api/health")).await;
    assert!(after.is_err(), "a stopped server still answers: {after:?}");
}

#[tokio::test]
async fn ids_are_never_reused_across_a_restart() {
    let app = spawn_app().await;
    let (last, access, _) = app.create_user(&TestUser::generate()).await;
    let resp = app.delete_user(last, &access).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);

    let app = app.restart().await;
    let (next, _, _) = app.create_user(&TestUser::generate()).await;

    assert!(
        next > last,
        "id {next} reuses or precedes deleted id {last}"
    );
    assert_user_not_found(app.get_me(&access).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_registrations_of_one_username_create_exactly_one_account() {
    let app = spawn_app().await;
    let bodies = (0..20)
        .map(|n| {
            let name = if n % 2 == 0 { "Racer" } else { "racer" };
            json!({"username": name, "email": format!("racer{n}@example.com"),
                   "password": "correct-horse-battery-race"})
        })
        .collect();

    let replies = register_all(&app, bodies).await;

    let mut created = 0;
    for resp in replies {
        if resp.status() == StatusCode::CREATED {
            assert_user_json(&read_json(resp).await.1);
            created += 1;
        } else {
            assert_field_errors(resp, &["username"]).await;
        }
    }
    assert_eq!(created, 1);
    assert_eq!(app.user_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_registrations_of_different_users_all_succeed() {
    let app = spawn_app().await;
    let bodies = (0..20).map(|_| TestUser::generate().body()).collect();

    let replies = register_all(&app, bodies).await;

    let mut ids = Vec::new();
    for resp in replies {
        ids.push(assert_user_json(
            &expect_json(resp, StatusCode::CREATED).await,
        ));
    }
    ids.sort();
    ids.dedup();
    assert_eq!((ids.len(), app.user_count()), (20, 20));
}

#[tokio::test]
async fn a_hash_made_with_other_iterations_is_upgraded_at_the_next_login() {
    let app = spawn_app().await;
    let user = TestUser::generate();
    let (id, _, _) = app.create_user(&user).await;
    assert!(
        app.column(id, "password_hash")
            .as_str()
            .unwrap()
            .contains("i=1000,")
    );

    let mut stopped = app.stop().await;
    stopped.config.auth.pbkdf2_iterations = 2000;
    let app = stopped.start().await;
    expect_json(
        app.login(&user.username, &user.password).await,
        StatusCode::OK,
    )
    .await;

    let hash = app.column(id, "password_hash");
    assert!(
        hash.as_str().unwrap().starts_with("$pbkdf2-sha256$i=2000,"),
        "{hash}"
    );
    expect_json(
        app.login(&user.username, &user.password).await,
        StatusCode::OK,
    )
    .await;
}

/// The median time of `n` calls of `login`.
async fn median_login(app: &TestApp, username: &str, password: &str, n: usize) -> Duration {
    let mut times = Vec::new();
    for _ in 0..n {
        let start = Instant::now();
        let status = app.login(username, password).await.status();
        times.push(start.elapsed());
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    times.sort();
    times[n / 2]
}

#[tokio::test]
async fn at_the_default_600000_iterations_login_works_and_unknown_names_cost_a_hash_too() {
    let app =
        spawn_app_with(|c| c.auth.pbkdf2_iterations = Config::default().auth.pbkdf2_iterations)
            .await;
    assert_eq!(app.config.auth.pbkdf2_iterations, 600_000);
    let user = TestUser::generate();

    let (id, access, _) = app.create_user(&user).await;

    let hash = app.column(id, "password_hash");
    assert!(
        hash.as_str()
            .unwrap()
            .starts_with("$pbkdf2-sha256$i=600000,"),
        "{hash}"
    );
    assert_eq!(
        expect_json(app.get_me(&access).await, StatusCode::OK).await["id"],
        id
    );
    let wrong_password = median_login(&app, &user.username, "not-the-password-1", 3).await;
    let unknown_user = median_login(&app, "no-such-user", "not-the-password-1", 3).await;
    assert!(
        unknown_user * 3 >= wrong_password,
        "unknown user {unknown_user:?} vs wrong password {wrong_password:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_logins_past_the_hash_queue_gets_503_with_retry_after_while_reads_go_on() {
    // One hash per core runs, none may wait: a burst of slow logins must
    // overflow the queue, and the overflow is refused, not starved.
    let app = spawn_app_with(|c: &mut Config| {
        c.auth.pbkdf2_iterations = 600_000;
        c.auth.max_queued_hashes = 0;
    })
    .await;
    let user = TestUser::generate();
    let (id, access, _) = app.create_user(&user).await;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut logins = JoinSet::new();
    for _ in 0..(cores * 4) {
        let client = app.client.clone();
        let url = format!("{}/api/token", app.base_url);
        let body = json!({"username": user.username, "password": "wrong-password-123"});
        logins.spawn(async move { client.post(url).json(&body).send().await.expect("login") });
    }
    // Meanwhile an ordinary read is served promptly.
    let start = Instant::now();
    let read = app.get_user(id, &access).await;
    assert_eq!(read.status(), StatusCode::OK);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "a read waited {:?}",
        start.elapsed()
    );
    let mut busy = 0;
    while let Some(resp) = logins.join_next().await {
        let resp = resp.expect("task");
        match resp.status() {
            StatusCode::UNAUTHORIZED => {}
            StatusCode::SERVICE_UNAVAILABLE => {
                busy += 1;
                let retry = resp
                    .headers()
                    .get("retry-after")
                    .expect("Retry-After on 503");
                assert!(retry.to_str().unwrap().parse::<u64>().unwrap() >= 1);
                let body: serde_json::Value = resp.json().await.expect("JSON 503 body");
                assert!(body["detail"].is_string(), "{body}");
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(
        busy > 0,
        "no login was refused with 503 past a zero-length queue"
    );
}
