//! `rosterd copy-db --to URL_OR_FILE`, run as the real binary between two
//! real servers: every account, its id, its password hash and its token
//! state (blacklist, rotation families, logout-all) arrive, so nobody
//! logs in again; ids never handed out twice; and the refusals. SQLite to
//! SQLite always; SQLite to PostgreSQL and back when ROSTERD_TEST_POSTGRES
//! names a server.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use reqwest::StatusCode;
use rosterd::config::{Config, Secret};
use serde_json::{Value, json};

use crate::helpers::{
    TestApp, TestUser, assert_401, assert_empty, bad_access_token, expect_json, postgres,
    spawn_app_with,
};

const BLACKLISTED: &str = "Token is blacklisted";

/// `rosterd ARGS` in a cleared environment whose HOME is inside `dir`.
fn rosterd(dir: &Path, args: &[OsString], stdin: &str) -> Output {
    let home = dir.join("home");
    std::fs::create_dir_all(&home).expect("a home directory");
    assert_cmd::Command::new(env!("CARGO_BIN_EXE_rosterd"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &home)
        .env("ROSTERD_AUTH_PBKDF2_ITERATIONS", "1000")
        .args(args)
        .write_stdin(stdin)
        .timeout(Duration::from_secs(120))
        .output()
        .expect("rosterd runs")
}

/// `rosterd SOURCE copy-db --to TO`, which must succeed; its stdout.
fn copy_db(dir: &Path, source: &[OsString], to: &str) -> String {
    let mut args = source.to_vec();
    args.extend(["copy-db".into(), "--to".into(), to.into()]);
    let output = rosterd(dir, &args, "");
    let (stdout, stderr) = texts(&output);
    assert!(output.status.success(), "copy-db failed: {stderr}");
    stdout
}

/// `rosterd SOURCE copy-db --to TO`, which must fail with exit code 1 and
/// one line on stderr; that line.
fn refused(dir: &Path, source: &[OsString], to: &str) -> String {
    let mut args = source.to_vec();
    args.extend(["copy-db".into(), "--to".into(), to.into()]);
    let output = rosterd(dir, &args, "");
    let (stdout, stderr) = texts(&output);
    assert_eq!(
        output.status.code(),
        Some(1),
        "stdout {stdout}, stderr {stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(!stdout.contains("copied"), "{stdout}");
    stderr
}

fn texts(output: &Output) -> (String, String) {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (text(&output.stdout), text(&output.stderr))
}

/// Refresh token rotation on, without a grace window: a retired token
/// coming back revokes its family.
fn rotation(config: &mut Config) {
    config.auth.rotate_refresh_tokens = true;
    config.auth.rotation_grace_period = 0;
}

/// A server on the SQLite file `path`.
async fn on_file(path: &Path) -> TestApp {
    let path = path.to_path_buf();
    spawn_app_with(move |config| {
        rotation(config);
        config.database.path = Some(path);
        config.database.url = None;
    })
    .await
}

/// A server on the PostgreSQL database `url`.
async fn on_postgres(url: &str) -> TestApp {
    let url = Secret::new(url);
    spawn_app_with(move |config| {
        rotation(config);
        config.database.url = Some(url);
    })
    .await
}

/// A logged-in user: who, their id, their access and refresh tokens.
struct Session {
    user: TestUser,
    id: i64,
    access: String,
    refresh: String,
}

/// What the source held before the copy, and the tokens to try after.
struct Before {
    /// Untouched: both tokens must keep working.
    alice: Session,
    /// Refresh token blacklisted.
    bob: Session,
    /// Logged out everywhere: both tokens void.
    carol: Session,
    /// Rotated once: `erin.refresh` is current, `retired` its retired parent.
    erin: Session,
    retired: String,
    /// The highest id, deleted before the copy.
    deleted: TestUser,
    deleted_id: i64,
    /// GET /api/users as alice saw it.
    listing: Value,
    /// Every column of every user row, and the refresh token rows.
    rows: Vec<Vec<Value>>,
    tokens: i64,
}

impl Before {
    fn sessions(&self) -> [&Session; 4] {
        [&self.alice, &self.bob, &self.carol, &self.erin]
    }
}

async fn session(app: &TestApp) -> Session {
    let user = TestUser::generate();
    let (id, access, refresh) = app.create_user(&user).await;
    Session {
        user,
        id,
        access,
        refresh,
    }
}

/// Every column of the users `ids`, with their id and token cut-off.
fn rows(app: &TestApp, ids: &[i64]) -> Vec<Vec<Value>> {
    ids.iter()
        .map(|&id| {
            let mut row = app.row(id);
            row.extend([app.column(id, "id"), app.column(id, "tokens_valid_after")]);
            row
        })
        .collect()
}

fn token_rows(app: &TestApp) -> i64 {
    app.count("SELECT count(*) FROM refresh_tokens WHERE jti <> ?1", "")
}

/// Fills the source through its API: the four sessions, a staff flag, an
/// imported id, and a deleted last user.
async fn fill(app: &TestApp) -> Before {
    let (alice, bob, carol, erin) = (
        session(app).await,
        session(app).await,
        session(app).await,
        session(app).await,
    );
    app.exec("UPDATE users SET is_staff = 1 WHERE id = ?1", alice.id);
    app.sql(&format!(
        "INSERT INTO imported_users (source, source_id, user_id) VALUES ('django', '7', {})",
        bob.id
    ));
    let body = json!({ "refresh": bob.refresh });
    let path = "/api/token/blacklist";
    let resp = app
        .send(reqwest::Method::POST, path, None, Some(&body))
        .await;
    expect_json(resp, StatusCode::OK).await;
    let resp = app
        .send(
            reqwest::Method::POST,
            "/api/users/me/logout-all",
            Some(&carol.access),
            None,
        )
        .await;
    assert_empty(resp, StatusCode::NO_CONTENT).await;
    let rotated = expect_json(app.refresh(&erin.refresh).await, StatusCode::OK).await;
    let retired = erin.refresh.clone();
    let erin = Session {
        access: rotated["access"].as_str().expect("access").to_owned(),
        refresh: rotated["refresh"]
            .as_str()
            .expect("a rotated refresh")
            .to_owned(),
        ..erin
    };
    // Retired long ago: past any grace window after the copy too.
    app.sql("UPDATE refresh_tokens SET retired_at = retired_at - 100 WHERE retired_at IS NOT NULL");
    let deleted = TestUser::generate();
    let (deleted_id, deleted_access, _) = app.create_user(&deleted).await;
    let resp = app.delete_user(deleted_id, &deleted_access).await;
    assert_empty(resp, StatusCode::NO_CONTENT).await;
    let listing = expect_json(app.get_users(&alice.access).await, StatusCode::OK).await;
    let ids = [alice.id, bob.id, carol.id, erin.id, deleted_id];
    Before {
        rows: rows(app, &ids),
        tokens: token_rows(app),
        listing,
        deleted,
        deleted_id,
        retired,
        alice,
        bob,
        carol,
        erin,
    }
}

/// The target holds exactly what the source held (read-only checks).
async fn assert_same(app: &TestApp, before: &Before) {
    let listing = expect_json(app.get_users(&before.alice.access).await, StatusCode::OK).await;
    assert_eq!(listing, before.listing, "GET /api/users");
    let mut ids: Vec<i64> = before.sessions().iter().map(|s| s.id).collect();
    ids.push(before.deleted_id);
    assert_eq!(rows(app, &ids), before.rows, "the user rows");
    assert_eq!(token_rows(app), before.tokens, "the refresh token rows");
    let imported = "SELECT count(*) FROM imported_users WHERE source_id = ?1";
    assert_eq!(app.count(imported, "7"), 1, "the imported id");
}

/// Everyone's session goes on as it was (this changes the target).
async fn assert_sessions_go_on(app: &TestApp, before: &Before) {
    let (alice, bob, carol, erin) = (&before.alice, &before.bob, &before.carol, &before.erin);
    // Untouched: both tokens work.
    expect_json(app.get_me(&alice.access).await, StatusCode::OK).await;
    expect_json(app.refresh(&alice.refresh).await, StatusCode::OK).await;
    // Blacklisted refresh token: still refused; the access token works.
    expect_json(app.get_me(&bob.access).await, StatusCode::OK).await;
    let refused = expect_json(app.refresh(&bob.refresh).await, StatusCode::UNAUTHORIZED).await;
    assert_eq!(refused["code"], "token_not_valid", "{refused}");
    // Logged out everywhere: both tokens still void.
    assert_401(
        app.get_me(&carol.access).await,
        bad_access_token(BLACKLISTED),
    )
    .await;
    expect_json(app.refresh(&carol.refresh).await, StatusCode::UNAUTHORIZED).await;
    // Rotation: the current token rotates; the retired one coming back
    // revokes the whole family, the token just issued included.
    let rotated = expect_json(app.refresh(&erin.refresh).await, StatusCode::OK).await;
    let newest = rotated["refresh"].as_str().expect("a rotated refresh");
    expect_json(app.refresh(&before.retired).await, StatusCode::UNAUTHORIZED).await;
    expect_json(app.refresh(newest).await, StatusCode::UNAUTHORIZED).await;
    // Every password logs in; the deleted user is gone.
    for session in before.sessions() {
        let user = &session.user;
        let resp = app.login(&user.username, &user.password).await;
        expect_json(resp, StatusCode::OK).await;
    }
    let resp = app
        .login(&before.deleted.username, &before.deleted.password)
        .await;
    expect_json(resp, StatusCode::UNAUTHORIZED).await;
    // No id handed out again, the deleted last one included.
    let newcomer = TestUser::generate();
    let (id, _, _) = app.create_user(&newcomer).await;
    assert!(
        id > before.deleted_id,
        "new id {id} after {}",
        before.deleted_id
    );
}

/// What the summary line must say.
fn assert_summary(out: &str, before: &Before, to: &str) {
    let expected = format!(
        "copied 4 users, {} refresh tokens, 1 imported ids",
        before.tokens
    );
    assert!(out.contains(&expected), "{out}");
    assert!(out.contains(to), "{out}");
    assert!(
        out.contains(&format!("ids continue after {}", before.deleted_id)),
        "{out}"
    );
    assert!(out.contains("events and presence are not copied"), "{out}");
    assert!(!out.contains("pbkdf2"), "{out}");
}

fn db_args(path: &Path) -> Vec<OsString> {
    vec!["--db".into(), path.into()]
}

fn url_args(url: &str) -> Vec<OsString> {
    vec!["--database-url".into(), url.into()]
}

#[tokio::test]
async fn sqlite_to_a_new_sqlite_file_keeps_every_account_session_and_id() {
    let work = tempfile::tempdir().unwrap();
    let source_path = work.path().join("source.sqlite3");
    let source = on_file(&source_path).await;
    let before = fill(&source).await;
    let _stopped = source.stop().await;
    let target: PathBuf = work.path().join("target.sqlite3");

    let out = copy_db(
        work.path(),
        &db_args(&source_path),
        target.to_str().unwrap(),
    );

    assert_summary(&out, &before, "target.sqlite3");
    let app = on_file(&target).await;
    assert_same(&app, &before).await;
    assert_sessions_go_on(&app, &before).await;
}

#[tokio::test]
async fn sqlite_to_postgresql_and_back_keeps_every_account_session_and_id() {
    let Some(url) = postgres::fresh_database() else {
        eprintln!("skipped: ROSTERD_TEST_POSTGRES is not set");
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let source_path = work.path().join("source.sqlite3");
    let source = on_file(&source_path).await;
    let before = fill(&source).await;
    let _stopped = source.stop().await;

    // Up: the SQLite file into PostgreSQL.
    let out = copy_db(work.path(), &db_args(&source_path), &url);
    assert_summary(&out, &before, &url);
    let up = on_postgres(&url).await;
    assert_same(&up, &before).await;
    let up = up.stop().await;

    // Down: PostgreSQL into a new SQLite file, before anything changed.
    let down_path = work.path().join("down.sqlite3");
    let out = copy_db(work.path(), &url_args(&url), down_path.to_str().unwrap());
    assert_summary(&out, &before, "down.sqlite3");

    let up = up.start().await;
    assert_sessions_go_on(&up, &before).await;
    drop(up.stop().await);
    let down = on_file(&down_path).await;
    assert_same(&down, &before).await;
    assert_sessions_go_on(&down, &before).await;
}

/// A SQLite file holding one user, made with `user create`.
fn one_user_file(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(format!("{name}.sqlite3"));
    let mut args = db_args(&path);
    let email = format!("{name}@example.com");
    for arg in ["user", "create", "--username", name, "--email", &email] {
        args.push(arg.into());
    }
    args.push("--password-stdin".into());
    let output = rosterd(dir, &args, "correct-horse-battery-staple\n");
    assert!(output.status.success(), "{}", texts(&output).1);
    path
}

/// `user list` of a database: what must not change.
fn listed(dir: &Path, database: &[OsString]) -> String {
    let mut args = database.to_vec();
    args.extend(["user".into(), "list".into()]);
    let output = rosterd(dir, &args, "");
    assert!(output.status.success(), "{}", texts(&output).1);
    texts(&output).0
}

#[tokio::test]
async fn a_target_that_is_not_empty_the_source_itself_or_unreachable_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let source = one_user_file(dir, "source");
    let full = one_user_file(dir, "full");
    let (source_list, full_list) = (listed(dir, &db_args(&source)), listed(dir, &db_args(&full)));

    let err = refused(dir, &db_args(&source), full.to_str().unwrap());
    assert!(
        err.contains("full.sqlite3") && err.contains("not empty"),
        "{err}"
    );
    assert_eq!(
        listed(dir, &db_args(&full)),
        full_list,
        "the target is unchanged"
    );

    let same = dir.join(".").join("source.sqlite3");
    let err = refused(dir, &db_args(&source), same.to_str().unwrap());
    assert!(err.contains("source.sqlite3"), "{err}");

    let err = refused(
        dir,
        &db_args(&source),
        "postgres://u:secretpw@127.0.0.1:1/x",
    );
    assert!(!err.contains("secretpw"), "the password leaked: {err}");
    assert!(err.contains("postgres://u@127.0.0.1:1/x"), "{err}");
    assert_eq!(
        listed(dir, &db_args(&source)),
        source_list,
        "the source is unchanged"
    );

    let missing = dir.join("no-such-dir").join("t.sqlite3");
    refused(dir, &db_args(&source), missing.to_str().unwrap());
    assert!(!missing.exists());

    let Some(url) = postgres::fresh_database() else {
        return;
    };
    let mut args = url_args(&url);
    for arg in [
        "user",
        "create",
        "--username",
        "pg",
        "--email",
        "pg@example.com",
    ] {
        args.push(arg.into());
    }
    args.push("--password-stdin".into());
    assert!(
        rosterd(dir, &args, "correct-horse-battery-staple\n")
            .status
            .success()
    );
    let pg_list = listed(dir, &url_args(&url));
    let err = refused(dir, &db_args(&source), &url);
    assert!(err.contains(&url) && err.contains("not empty"), "{err}");
    assert_eq!(
        listed(dir, &url_args(&url)),
        pg_list,
        "the target is unchanged"
    );
    let err = refused(dir, &url_args(&url), &url);
    assert!(err.contains(&url), "{err}");
}
