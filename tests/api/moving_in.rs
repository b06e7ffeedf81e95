//! Moving in (`rosterd import django|pocketbase`): users made by the real
//! Django (stock `auth.User` and a custom model, every hasher at its
//! default cost) and the real PocketBase (`tests/fixtures/moving_in`, made
//! by its `make.py`, described by its `manifest.json`) are imported with
//! the real binary, then log in through the API with their passwords and
//! are rehashed; Django's tokens keep working and its blacklist holds.
//!
//! `ROSTERD_MOVING_IN_FIXTURES` names another folder made by `make.py`
//! (CI makes a fresh one with the real peers and runs these tests on it).

use std::path::PathBuf;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{TestApp, expect_json, read_json, spawn_app_with};
use crate::operations::{Out, Site};

fn fixtures() -> PathBuf {
    std::env::var_os("ROSTERD_MOVING_IN_FIXTURES").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/moving_in"),
        PathBuf::from,
    )
}

fn manifest() -> Value {
    let text = std::fs::read_to_string(fixtures().join("manifest.json")).expect("manifest.json");
    serde_json::from_str(&text).expect("manifest.json is JSON")
}

/// A copy of a fixture file or folder in `site` (SQLite may write beside
/// a database it reads: the originals stay untouched).
fn fixture(site: &Site, source: &str, kind: &str) -> String {
    let name = manifest()["sources"][source]["files"][kind]
        .as_str()
        .expect("fixture file name")
        .to_owned();
    let from = fixtures().join(&name);
    let to = site.path(&format!("{source}-{kind}"));
    if from.is_dir() {
        std::fs::create_dir(&to).expect("mkdir");
        for entry in std::fs::read_dir(&from).expect("read fixture dir") {
            let entry = entry.expect("entry");
            std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
        }
    } else {
        std::fs::copy(&from, &to).expect("copy fixture");
    }
    to.to_str().expect("UTF-8 path").to_owned()
}

/// A user's name in the report: the username, or the e-mail where the
/// source has none (PocketBase).
fn name_of(user: &Value) -> String {
    user["username"]
        .as_str()
        .or_else(|| user["email"].as_str())
        .expect("username or email")
        .to_owned()
}

/// The users of `source` that rosterd must refuse, with a word of the
/// reason, as the manifest says.
fn refusals(source: &str) -> Vec<(String, &'static str)> {
    users(source)
        .iter()
        .filter_map(|u| {
            let name = name_of(u);
            let reason = match u["expected"].as_str().expect("expected") {
                "import" => return None,
                "collision" => "collides, ignoring case",
                "invalid email" => "invalid email",
                "unknown hash format" => "unknown password hash format",
                other => panic!("unknown expectation {other}"),
            };
            Some((name, reason))
        })
        .collect()
}

fn users(source: &str) -> Vec<Value> {
    manifest()["sources"][source]["users"]
        .as_array()
        .expect("users")
        .clone()
}

fn imported(source: &str) -> Vec<Value> {
    let refused: Vec<String> = refusals(source).into_iter().map(|(n, _)| n).collect();
    users(source)
        .into_iter()
        .filter(|u| !refused.contains(&name_of(u)))
        .collect()
}

/// The server on `site`'s database, signing with the Django key.
async fn serve(site: &Site) -> TestApp {
    let key = manifest()["signing_key"]
        .as_str()
        .expect("signing_key")
        .to_owned();
    let db = site.path("d.sqlite3");
    // `import` writes into a SQLite file: the server serves that file, on
    // either backend's run of the suite.
    spawn_app_with(move |c| {
        c.database.url = None;
        c.database.path = Some(db);
        c.auth.secret = rosterd::config::Secret::new(key);
    })
    .await
}

fn user_count(site: &Site) -> i64 {
    rusqlite::Connection::open(site.path("d.sqlite3"))
        .expect("open")
        .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
        .expect("count")
}

fn stored_hash(app: &TestApp, username: &str) -> String {
    app.db()
        .query_row(
            "SELECT password_hash FROM users WHERE username = ?1",
            [username],
            |r| r.get(0),
        )
        .expect("the user's hash")
}

fn assert_reports(out: &Out, source: &str) {
    for (name, reason) in refusals(source) {
        let line = out
            .stdout
            .lines()
            .find(|l| l.contains(&format!("({name}, ")) || l.contains(&format!(", {name}):")))
            .unwrap_or_else(|| panic!("{name} not reported in {}", out.stdout));
        assert!(line.contains(reason), "{name}: {line}");
    }
}

#[tokio::test]
async fn refused_users_are_reported_and_nothing_is_written_without_skip_invalid() {
    let site = Site::new();
    let file = fixture(&site, "django_auth", "sqlite");
    let out = site.run(&["import", "django", &file]);
    assert!(!out.success, "{}", out.stdout);
    assert_reports(&out, "django_auth");
    assert!(out.stderr.contains("--skip-invalid"), "{}", out.stderr);
    assert_eq!(user_count(&site), 0, "nothing written");

    let out = site
        .run(&["import", "django", &file, "--dry-run", "--skip-invalid"])
        .ok();
    assert!(out.stdout.contains("dry run"), "{}", out.stdout);
    assert_eq!(user_count(&site), 0, "a dry run writes nothing");

    site.run(&["import", "django", &file, "--skip-invalid"])
        .ok();
    let n = imported("django_auth").len() as i64;
    assert_eq!(user_count(&site), n);
    let again = site
        .run(&["import", "django", &file, "--skip-invalid"])
        .ok();
    assert!(
        again
            .stdout
            .contains(&format!("imported before (left as they are): {n}")),
        "{}",
        again.stdout
    );
    assert_eq!(user_count(&site), n, "a re-run adds nobody");
}

/// Every imported Django user logs in with their password through the API
/// (each hasher at Django's default cost), their hash becomes rosterd's
/// PBKDF2; wrong passwords, the inactive user and the unusable password
/// get 401; the custom model's fields and Django's ids come along.
#[tokio::test]
async fn django_users_log_in_with_their_passwords_and_are_rehashed() {
    for (source, model) in [
        ("django_auth", None),
        ("django_custom", Some("accounts.User")),
    ] {
        let site = Site::new();
        let file = fixture(&site, source, "sqlite");
        let mut args = vec!["import", "django", file.as_str(), "--skip-invalid"];
        args.extend(model.iter().flat_map(|m| ["--model", m]));
        site.run(&args).ok();
        let app = serve(&site).await;
        let mut staff_token = None;
        for user in imported(source) {
            let name = user["username"].as_str().expect("username");
            let password = user["password"].as_str().unwrap_or("no password");
            let wrong = app.login(name, &format!("{password}-wrong")).await;
            assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED, "{source} {name}");
            let resp = app.login(name, password).await;
            let usable = !user["unusable"].as_bool().expect("unusable");
            if !usable || !user["is_active"].as_bool().expect("is_active") {
                assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{source} {name}");
                continue;
            }
            let body = expect_json(resp, StatusCode::OK).await;
            assert!(
                stored_hash(&app, name).starts_with("$pbkdf2-sha256$"),
                "{source} {name} ({}) not rehashed",
                user["hasher"]
            );
            let relogin = app.login(name, password).await;
            assert_eq!(
                relogin.status(),
                StatusCode::OK,
                "{source} {name} after rehash"
            );
            let access = body["access"].as_str().expect("access").to_owned();
            let staff = user["is_staff"].as_bool() == Some(true)
                || user["is_superuser"].as_bool() == Some(true);
            if staff {
                staff_token = Some(access.clone());
            }
            let me = expect_json(app.get_me(&access).await, StatusCode::OK).await;
            assert_eq!(me["id"], user["id"], "{source} {name}: Django's id kept");
            assert_eq!(me["email"], user["email"]);
            assert_eq!(me["created_at"], user["created_at"], "{source} {name}");
            for (field, default) in [
                ("level", Value::from(1)),
                ("status", Value::from("offline")),
                ("profilePicture", Value::from("")),
            ] {
                let want = if user[field].is_null() {
                    default
                } else {
                    user[field].clone()
                };
                assert_eq!(me[field], want, "{source} {name}: {field}");
            }
        }
        // Staff may edit others: is_staff / is_superuser came along.
        let staff = staff_token.expect("a staff user logged in");
        let alice = imported(source)[0]["id"].as_i64().expect("id");
        let patched = app
            .patch_user(alice, &staff, &serde_json::json!({"level": 3}))
            .await;
        expect_json(patched, StatusCode::OK).await;
    }
}

/// With `auth.secret` set to Django's signing key, the tokens Django
/// issued keep working (access reads `/me`, refresh gives an access
/// token), those simplejwt blacklisted stay refused, and an inactive
/// user's are refused; from the database and from a dumpdata JSON.
#[tokio::test]
async fn django_tokens_keep_working_and_its_blacklist_holds() {
    for (source, kind, model) in [
        ("django_auth", "sqlite", None),
        ("django_auth", "dumpdata", None),
        ("django_custom", "dumpdata", Some("accounts.User")),
    ] {
        let site = Site::new();
        let file = fixture(&site, source, kind);
        let mut args = vec!["import", "django", file.as_str(), "--skip-invalid"];
        args.extend(model.iter().flat_map(|m| ["--model", m]));
        site.run(&args).ok();
        let app = serve(&site).await;
        let tokens = manifest()["sources"][source]["tokens"].clone();
        let refused: Vec<String> = refusals(source).into_iter().map(|(n, _)| n).collect();
        let mut blacklisted_seen = 0;
        for token in tokens.as_array().expect("tokens") {
            let name = token["username"].as_str().expect("username");
            if refused.contains(&name.to_owned()) {
                continue;
            }
            let access = token["access"].as_str().expect("access");
            let refresh = token["refresh"].as_str().expect("refresh");
            let what = format!("{source} ({kind}) token of {name}");
            if token["user_is_active"].as_bool() == Some(false) {
                let (status, body) = read_json(app.get_me(access).await).await;
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {body}");
                continue;
            }
            let me = expect_json(app.get_me(access).await, StatusCode::OK).await;
            assert_eq!(me["username"], name, "{what}");
            let (status, body) = read_json(app.refresh(refresh).await).await;
            if token["blacklisted"].as_bool().expect("blacklisted") {
                blacklisted_seen += 1;
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {body}");
                assert_eq!(body["code"], "token_not_valid", "{what}");
            } else {
                assert_eq!(status, StatusCode::OK, "{what}: {body}");
                assert!(body["access"].is_string(), "{what}: {body}");
            }
        }
        assert!(
            blacklisted_seen > 0,
            "{source}: no blacklisted token was tried"
        );
    }
}

/// PocketBase users get fresh ids and usernames from their e-mails (two
/// equal ignoring case get `sam` and `sam2`), printed with their
/// PocketBase ids; each logs in with that username and their password;
/// from `pb_data` and from `data.db`; a re-run adds nobody.
#[tokio::test]
async fn pocketbase_users_move_in_with_new_ids_and_log_in() {
    for kind in ["pb_data_dir", "data_db"] {
        let site = Site::new();
        let path = fixture(&site, "pocketbase", kind);
        let out = site.run(&["import", "pocketbase", &path]);
        assert!(!out.success, "{}", out.stdout);
        assert_reports(&out, "pocketbase");
        let out = site
            .run(&["import", "pocketbase", &path, "--skip-invalid"])
            .ok();
        let app = serve(&site).await;
        let mut usernames = Vec::new();
        for user in imported("pocketbase") {
            let pb_id = user["id"].as_str().expect("id");
            let line = out
                .stdout
                .lines()
                .find(|l| l.trim_start().starts_with(pb_id))
                .unwrap_or_else(|| panic!("{pb_id} not in {}", out.stdout));
            let username = line.rsplit("username ").next().expect("username").trim();
            let id: i64 = line
                .split("id ")
                .nth(1)
                .and_then(|rest| rest.split(',').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no rosterd id in {line}"));
            let password = user["password"].as_str().expect("password");
            let body = expect_json(app.login(username, password).await, StatusCode::OK).await;
            let access = body["access"].as_str().expect("access");
            let me = expect_json(app.get_me(access).await, StatusCode::OK).await;
            assert_eq!(me["id"], id, "{kind}: {line}");
            assert_eq!(me["email"], user["email"], "{kind}: {line}");
            assert_eq!(me["created_at"], user["created_at"], "{kind}: {line}");
            assert!(stored_hash(&app, username).starts_with("$pbkdf2-sha256$"));
            usernames.push(username.to_ascii_lowercase());
        }
        assert!(usernames.contains(&"sam".to_owned()), "{usernames:?}");
        assert!(usernames.contains(&"sam2".to_owned()), "{usernames:?}");
        let again = site
            .run(&["import", "pocketbase", &path, "--skip-invalid"])
            .ok();
        assert!(again.stdout.contains("imported before"), "{}", again.stdout);
        assert_eq!(user_count(&site), imported("pocketbase").len() as i64);
    }
}

/// An id this database handed out before (here to a user deleted since)
/// is refused: a token naming it must never reach the imported user.
/// A user whose name is taken here is refused too.
#[tokio::test]
async fn ids_used_before_and_names_taken_here_are_refused() {
    let site = Site::new();
    site.create("Alice");
    site.create("placeholder");
    site.run(&["user", "delete", "--username", "placeholder"])
        .ok();
    let file = fixture(&site, "django_auth", "sqlite");
    let out = site.run(&["import", "django", &file, "--dry-run"]);
    assert!(!out.success);
    let line = |name: &str| {
        out.stdout
            .lines()
            .find(|l| l.contains(&format!("({name}, ")))
            .unwrap_or_else(|| panic!("{name} not reported: {}", out.stdout))
            .to_owned()
    };
    assert!(
        line("alice").contains("username is taken"),
        "{}",
        line("alice")
    );
    assert!(
        line("bob").contains("id is taken, or was used before"),
        "{}",
        line("bob")
    );
}

#[tokio::test]
async fn a_wrong_model_or_a_file_of_another_kind_is_a_one_line_error() {
    let site = Site::new();
    let file = fixture(&site, "django_custom", "sqlite");
    let out = site.run(&["import", "django", &file]);
    assert!(!out.success);
    assert!(out.stderr.contains("accounts_user"), "{}", out.stderr);
    assert!(out.stderr.contains("--model"), "{}", out.stderr);

    let junk = site.path("junk.txt");
    std::fs::write(&junk, "not a database").expect("write");
    let out = site.run(&["import", "django", junk.to_str().expect("path")]);
    assert!(!out.success);
    assert!(
        out.stderr
            .contains("neither a SQLite database nor dumpdata JSON"),
        "{}",
        out.stderr
    );

    let out = site.run(&["import", "pocketbase", junk.to_str().expect("path")]);
    assert!(!out.success, "{}", out.stdout);
    assert_eq!(out.stderr.trim_end().lines().count(), 1, "{}", out.stderr);
    assert!(
        !site.path("d.sqlite3").exists(),
        "the database was not even opened"
    );
}

/// An unusable Django password comes in as "no password": 401 until
/// `user set-password`, then the new password works.
#[tokio::test]
async fn an_unusable_password_logs_in_after_set_password() {
    let site = Site::new();
    let file = fixture(&site, "django_auth", "sqlite");
    site.run(&["import", "django", &file, "--skip-invalid"])
        .ok();
    let unusable = users("django_auth")
        .into_iter()
        .find(|u| u["unusable"] == true)
        .expect("a user with an unusable password");
    let name = unusable["username"].as_str().expect("username");
    let set = [
        "user",
        "set-password",
        "--username",
        name,
        "--password-stdin",
    ];
    site.run_with_stdin(&set, "a-brand-new-passphrase\n").ok();
    let app = serve(&site).await;
    expect_json(
        app.login(name, "a-brand-new-passphrase").await,
        StatusCode::OK,
    )
    .await;
}

/// The peak memory of `server` (VmHWM), in KiB.
fn peak_kib(server: &crate::helpers::RunningServer) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id()))
        .expect("read /proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

/// Argon2 at Django's default cost takes 100 MiB a check. A burst of 24
/// logins for an imported Argon2 user, sent at once, goes through the
/// one-per-core hash gate: every one is answered (401, wrong password),
/// and the server's peak memory grows by at most one Argon2 buffer per
/// core (not 24), so a Pi survives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_argon2_logins_holds_one_argon2_buffer_per_core() {
    let site = Site::new();
    let file = fixture(&site, "django_auth", "sqlite");
    site.run(&["import", "django", &file, "--skip-invalid"])
        .ok();
    let argon2 = imported("django_auth")
        .into_iter()
        .find(|u| {
            u["password_hash"]
                .as_str()
                .is_some_and(|h| h.contains("m=102400"))
        })
        .expect("an Argon2 user at Django's default cost");
    let name = argon2["username"].as_str().expect("username").to_owned();
    let server = site.serve(&[]);
    let url = format!("http://127.0.0.1:{}/api/token", server.port);
    let before = peak_kib(&server);
    let attempts: Vec<_> = (0..24)
        .map(|n| {
            let (url, name) = (url.clone(), name.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .timeout(std::time::Duration::from_secs(120))
                    .build()
                    .expect("client");
                let body = serde_json::json!({"username": name, "password": format!("wrong-{n}")});
                client
                    .post(url)
                    .json(&body)
                    .send()
                    .await
                    .expect("sent")
                    .status()
            })
        })
        .collect();
    for attempt in attempts {
        assert_eq!(attempt.await.expect("task"), StatusCode::UNAUTHORIZED);
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let grown = peak_kib(&server).saturating_sub(before);
    let bound = cores * 100 * 1024 + 48 * 1024;
    assert!(
        grown <= bound,
        "peak memory grew by {grown} KiB in the burst; {cores} cores allow {bound} KiB"
    );
}

/// PocketBase before v0.23 kept `username` and `passwordHash` columns: its
/// users keep their usernames (here a database in that layout, with a
/// PocketBase bcrypt hash from the fixtures).
#[tokio::test]
async fn an_older_pocketbase_layout_with_usernames_moves_in_too() {
    let site = Site::new();
    let user = &imported("pocketbase")[0];
    let hash = user["password_hash"].as_str().expect("hash");
    let old = site.path("old-data.db");
    let conn = rusqlite::Connection::open(&old).expect("create");
    conn.execute_batch(
        "CREATE TABLE _collections (id TEXT PRIMARY KEY, name TEXT, type TEXT);
         INSERT INTO _collections VALUES ('_pb_users_auth_', 'users', 'auth');
         CREATE TABLE users (id TEXT PRIMARY KEY, created TEXT, updated TEXT,
             username TEXT, email TEXT, emailVisibility BOOLEAN, verified BOOLEAN,
             tokenKey TEXT, passwordHash TEXT, lastResetSentAt TEXT, name TEXT);",
    )
    .expect("schema");
    conn.execute(
        "INSERT INTO users VALUES ('abcdefghij12345', '2022-05-06 07:08:09.123Z', \
         '2022-05-06 07:08:09.123Z', 'Old_Timer', ?1, 0, 1, 't', ?2, '', '')",
        [user["email"].as_str().expect("email"), hash],
    )
    .expect("insert");
    drop(conn);
    let out = site
        .run(&["import", "pocketbase", old.to_str().expect("path")])
        .ok();
    assert!(
        out.stdout
            .contains("abcdefghij12345 -> id 1, username Old_Timer"),
        "{}",
        out.stdout
    );
    let app = serve(&site).await;
    let password = user["password"].as_str().expect("password");
    let body = expect_json(app.login("old_timer", password).await, StatusCode::OK).await;
    let me = expect_json(
        app.get_me(body["access"].as_str().expect("access")).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(me["username"], "Old_Timer");
    assert_eq!(me["created_at"], "2022-05-06T07:08:09.123000Z");
}
