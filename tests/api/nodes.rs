//! Several nodes on one PostgreSQL database (run when the suite runs on
//! PostgreSQL: `ROSTERD_TEST_POSTGRES`): two real servers share a database,
//! a revocation made through one is honoured by the other at its next
//! request, a change made through one reaches the streams of the other,
//! presence counts the streams of both, and a node that dies leaves nobody
//! online.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use rosterd::config::{Config, Secret};
use serde_json::json;

use crate::events::{WAIT, status_of, stream};
use crate::helpers::{
    TestApp, TestUser, assert_401, bad_access_token, bad_token, expect_json, on_postgres,
    spawn_app_with,
};

/// Two servers on one fresh PostgreSQL database (`None` on SQLite).
async fn two_nodes(customize: fn(&mut Config)) -> Option<(TestApp, TestApp)> {
    if !on_postgres() {
        eprintln!("skipped: several nodes need PostgreSQL (ROSTERD_TEST_POSTGRES)");
        return None;
    }
    let a = spawn_app_with(customize).await;
    let url = a.database_url.clone().expect("a PostgreSQL database");
    let b = spawn_app_with(move |c| {
        customize(c);
        c.database.url = Some(Secret::new(url));
    })
    .await;
    Some((a, b))
}

fn plain(_: &mut Config) {}

async fn post(
    app: &TestApp,
    path: &str,
    token: Option<&str>,
    body: serde_json::Value,
) -> StatusCode {
    app.send(Method::POST, path, token, Some(&body))
        .await
        .status()
}

const BLACKLISTED: &str = "Token is blacklisted";

#[tokio::test]
async fn a_revocation_on_one_node_is_honoured_by_the_other_at_once() {
    let Some((a, b)) = two_nodes(plain).await else {
        return;
    };
    // Registered on A, read on B.
    let user = TestUser::generate();
    let (id, access, refresh) = a.create_user(&user).await;
    expect_json(b.get_me(&access).await, StatusCode::OK).await;

    // Log out everywhere on B: A refuses the tokens at its next request.
    assert_eq!(
        post(&b, "/api/users/me/logout-all", Some(&access), json!({})).await,
        StatusCode::NO_CONTENT
    );
    assert_401(a.get_me(&access).await, bad_access_token(BLACKLISTED)).await;
    assert_eq!(a.refresh(&refresh).await.status(), StatusCode::UNAUTHORIZED);

    // A password change on A voids the tokens B sees.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let login = expect_json(
        b.login(&user.username, &user.password).await,
        StatusCode::OK,
    )
    .await;
    let access = login["access"].as_str().expect("access").to_owned();
    let refresh = login["refresh"].as_str().expect("refresh").to_owned();
    let new_password = format!("{}-and-more", user.password);
    assert_eq!(
        post(
            &a,
            "/api/users/me/password",
            Some(&access),
            json!({"old_password": user.password, "new_password": new_password}),
        )
        .await,
        StatusCode::NO_CONTENT
    );
    assert_401(b.get_me(&access).await, bad_access_token(BLACKLISTED)).await;
    assert_eq!(b.refresh(&refresh).await.status(), StatusCode::UNAUTHORIZED);

    // A refresh token blacklisted on B is refused by A.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let login = expect_json(a.login(&user.username, &new_password).await, StatusCode::OK).await;
    let refresh = login["refresh"].as_str().expect("refresh").to_owned();
    let access = login["access"].as_str().expect("access").to_owned();
    assert_eq!(
        post(
            &b,
            "/api/token/blacklist",
            None,
            json!({"refresh": refresh})
        )
        .await,
        StatusCode::OK
    );
    assert_401(a.refresh(&refresh).await, bad_token(BLACKLISTED)).await;

    // Deactivated by staff on A: B refuses the user's token and login.
    let (_, staff, _) = a.create_staff().await;
    assert_eq!(
        post(
            &a,
            &format!("/api/users/{id}/deactivate"),
            Some(&staff),
            json!({})
        )
        .await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(b.get_me(&access).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        b.login(&user.username, &new_password).await.status(),
        StatusCode::UNAUTHORIZED
    );

    // Deleted on B: A answers as for a user that never was.
    let other = TestUser::generate();
    let (other_id, other_access, _) = b.create_user(&other).await;
    expect_json(a.get_me(&other_access).await, StatusCode::OK).await;
    assert_eq!(
        b.delete_user(other_id, &other_access).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        a.get_me(&other_access).await.status(),
        StatusCode::UNAUTHORIZED
    );
    // Names stay unique across nodes, ignoring case.
    let clash = a
        .register(
            &user.username.to_uppercase(),
            "another@example.com",
            "correct-horse-9",
        )
        .await;
    assert_eq!(clash.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_change_on_one_node_reaches_the_streams_of_the_other() {
    let Some((a, b)) = two_nodes(plain).await else {
        return;
    };
    let (_, watcher, _) = b.create_user(&TestUser::generate()).await;
    let mut events = stream(&b, "?presence=false", &watcher).await;
    events.until("ready", WAIT).await;

    let (id, access, _) = a.create_user(&TestUser::generate()).await;
    let created = events.until("user.created", WAIT).await;
    assert_eq!(created.last().expect("event").data["id"], id);
    let patched = expect_json(
        a.patch_user(id, &access, &json!({"level": 7})).await,
        StatusCode::OK,
    )
    .await;
    let updated = events.until("user.updated", WAIT).await;
    assert_eq!(updated.last().expect("event").data, patched);
    assert_eq!(
        a.delete_user(id, &access).await.status(),
        StatusCode::NO_CONTENT
    );
    let deleted = events.until("user.deleted", WAIT).await;
    assert_eq!(deleted.last().expect("event").data, json!({"id": id}));
}

fn quick_grace(c: &mut Config) {
    c.presence.grace_seconds = 1;
}

#[tokio::test]
async fn presence_counts_the_streams_of_every_node() {
    let Some((a, b)) = two_nodes(quick_grace).await else {
        return;
    };
    let (id, access, _) = a.create_user(&TestUser::generate()).await;
    let mut on_a = stream(&a, "", &access).await;
    on_a.until("ready", WAIT).await;
    let mut on_b = stream(&b, "", &access).await;
    on_b.until("ready", WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(status_of(&b, id, &access).await, "online");

    drop(on_a);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        status_of(&a, id, &access).await,
        "online",
        "a stream is still open on the other node"
    );
    drop(on_b);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(status_of(&a, id, &access).await, "offline");
}

/// A node that died (it stopped beating) leaves its users online only
/// until a live node notices: its presence rows go, and its users go
/// offline unless a stream of theirs is open elsewhere.
#[tokio::test]
async fn a_node_that_dies_leaves_nobody_online() {
    let Some((a, b)) = two_nodes(quick_grace).await else {
        return;
    };
    let (gone, gone_access, _) = a.create_user(&TestUser::generate()).await;
    let (kept, kept_access, _) = a.create_user(&TestUser::generate()).await;
    let mut kept_stream = stream(&b, "", &kept_access).await;
    kept_stream.until("ready", WAIT).await;
    // What a node that crashed mid-stream leaves behind: its presence rows
    // and its users online, and a heartbeat that stopped long ago.
    let url = a.database_url.clone().expect("PostgreSQL");
    crate::helpers::postgres::with(&url, |client| {
        client
            .batch_execute(&format!(
                "INSERT INTO nodes (id, seen_at) VALUES ('node-crashed', 1);
                 INSERT INTO presence (user_id, node) VALUES ({gone}, 'node-crashed'),
                     ({kept}, 'node-crashed');
                 UPDATE users SET status = 'online' WHERE id = {gone};"
            ))
            .expect("stage a crashed node");
    });
    assert_eq!(status_of(&a, gone, &gone_access).await, "online");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(status_of(&a, gone, &gone_access).await, "offline");
    assert_eq!(
        status_of(&b, kept, &kept_access).await,
        "online",
        "their stream on a live node holds"
    );
    drop(a);
    drop(b);
}

/// The command line against PostgreSQL: `doctor` checks the database,
/// `backup` and `restore` point to PostgreSQL's own tools.
#[tokio::test]
async fn doctor_checks_postgres_and_backup_points_to_pg_dump() {
    let Some((a, _b)) = two_nodes(plain).await else {
        return;
    };
    let rosterd = |args: &[&str]| {
        let home = a.dir.path().join("home");
        std::fs::create_dir_all(&home).expect("home");
        assert_cmd::Command::new(env!("CARGO_BIN_EXE_rosterd"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &home)
            .env("ROSTERD_SECRET", crate::helpers::SECRET)
            .args(a.database_args())
            .args(args)
            .timeout(Duration::from_secs(30))
            .output()
            .expect("run rosterd")
    };
    let doctor = rosterd(&["doctor"]);
    let said = String::from_utf8_lossy(&doctor.stdout).to_string()
        + &String::from_utf8_lossy(&doctor.stderr);
    assert!(said.contains("reachable, schema current"), "{said}");
    let backup = rosterd(&["backup", "copy.sqlite3"]);
    assert_eq!(backup.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&backup.stderr).contains("pg_dump"));
    let restore = rosterd(&["restore", "copy.sqlite3"]);
    assert_eq!(restore.status.code(), Some(1));
}

/// Migrations on PostgreSQL: applied at the first start, once however many
/// nodes start, and a schema written by a newer rosterd is refused and left
/// alone.
#[tokio::test]
async fn a_schema_from_a_newer_rosterd_is_refused_and_left_alone() {
    let Some((a, b)) = two_nodes(plain).await else {
        return;
    };
    let url = a.database_url.clone().expect("PostgreSQL");
    let version = |url: &str| {
        crate::helpers::postgres::with(url, |client| {
            client
                .query_one("SELECT version FROM rosterd_schema", &[])
                .expect("the schema version")
                .get::<_, i64>(0)
        })
    };
    let current = version(&url);
    assert!(current >= 1);
    let (_, access, _) = a.create_user(&TestUser::generate()).await;
    let _ = (a.stop().await, b.stop().await);
    crate::helpers::postgres::with(&url, |client| {
        client
            .execute("UPDATE rosterd_schema SET version = version + 1", &[])
            .expect("bump the version")
    });
    let mut config = Config::default();
    config.auth.secret = Secret::new(crate::helpers::SECRET);
    config.database.url = Some(Secret::new(url.clone()));
    let refused = match rosterd::AppState::new(config) {
        Ok(_) => panic!("a newer schema was served"),
        Err(err) => format!("{err:#}"),
    };
    assert!(refused.contains("newer"), "{refused}");
    assert_eq!(version(&url), current + 1, "left alone");
    drop(access);
}

/// The change rows PostgreSQL's trigger writes render a user byte for byte
/// as the API does (and as SQLite's json_object does): what a stream sends
/// does not depend on the backend.
#[tokio::test]
async fn change_rows_render_users_byte_for_byte_as_the_api() {
    let Some((a, _b)) = two_nodes(plain).await else {
        return;
    };
    let (id, access, _) = a.create_user(&TestUser::generate()).await;
    let body = json!({"profilePicture": "https://example.com/a\"b\\c/zoë.png", "status": "busy"});
    let reply = a.patch_user(id, &access, &body).await;
    assert_eq!(reply.status(), StatusCode::OK);
    let text = reply.text().await.expect("the reply");
    let url = a.database_url.clone().expect("PostgreSQL");
    let rows: Vec<(String, String)> = crate::helpers::postgres::with(&url, |client| {
        client
            .query(
                "SELECT kind, data FROM events WHERE user_id = $1 ORDER BY id",
                &[&id],
            )
            .expect("the change rows")
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect()
    });
    let updated = rows
        .iter()
        .rfind(|(kind, _)| kind == "user.updated")
        .expect("an update row");
    assert_eq!(updated.1, text);
    assert_eq!(
        a.delete_user(id, &access).await.status(),
        StatusCode::NO_CONTENT
    );
    let deleted: String = crate::helpers::postgres::with(&url, |client| {
        client
            .query_one(
                "SELECT data FROM events WHERE kind = 'user.deleted' AND user_id = $1",
                &[&id],
            )
            .expect("the deletion row")
            .get(0)
    });
    assert_eq!(deleted, format!("{{\"id\":{id}}}"));
}
