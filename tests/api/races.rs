//! Issue 19, "Close the races": one black-box test per item, each written
//! to fail on the code before its fix. Real servers (in process, or the
//! real binary where the runtime or the command line matter), the real
//! SQLite file, concurrent clients over 127.0.0.1.
//!
//! Where a race needs a window that is not there by luck, the test opens
//! it the way any outside writer of the file would (`rosterd user ...`, a
//! backup tool): it holds SQLite's write lock for a while, so a revocation
//! that has already decided its instant waits, across a second boundary,
//! for its commit. The tests run one at a time ([`one_at_a_time`]): they
//! spend whole cores on PBKDF2 at the default cost and measure time.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::header::{RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::{Method, Response, StatusCode};
use rosterd::config::{Config, DEFAULT_PBKDF2_ITERATIONS, RateLimitConfig, Secret};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::sync::{Mutex, MutexGuard};
use tokio::task::JoinHandle;

use crate::helpers::{
    FAST_ITERATIONS, RunningServer, SECRET, TestApp, TestUser, claims, expect_json, read_json,
    spawn_app, spawn_app_with,
};
use crate::operations::{Site, seed};

const NEW_PASSWORD: &str = "a-brand-new-passphrase-42";
const NO_ACCOUNT: &str = "No active account found with the given credentials";

// --- shared helpers ---------------------------------------------------------

/// This module's tests, one at a time.
static SERIAL: Mutex<()> = Mutex::const_new(());

async fn one_at_a_time() -> MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// A server hashing at the default PBKDF2 cost (600,000 iterations), as
/// the issue asks the races to be tested, whose writers wait up to a
/// minute for SQLite's write lock.
async fn default_cost_app(customize: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_with(|c| {
        c.auth.pbkdf2_iterations = DEFAULT_PBKDF2_ITERATIONS;
        c.database.busy_timeout_ms = 60_000;
        customize(c);
    })
    .await
}

/// SQLite's write lock on a server's database, taken by an outside
/// connection (`BEGIN IMMEDIATE`); readers go on, writers wait.
struct WriteLock(rusqlite::Connection);

impl WriteLock {
    fn take(app: &TestApp) -> WriteLock {
        let conn = app.db();
        conn.execute_batch("BEGIN IMMEDIATE")
            .expect("take the write lock");
        WriteLock(conn)
    }

    fn release(self) {
        self.0
            .execute_batch("COMMIT")
            .expect("release the write lock");
    }
}

/// Sleeps until `not_before`, then on until the wall clock is `millis`
/// milliseconds into a second.
async fn sleep_until_millis_into_a_second(not_before: Instant, millis: u32) {
    tokio::time::sleep(not_before.saturating_duration_since(Instant::now())).await;
    let into = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .subsec_millis();
    let wait = if into < millis {
        millis - into
    } else {
        1000 - into + millis
    };
    tokio::time::sleep(Duration::from_millis(u64::from(wait))).await;
}

async fn post(app: &TestApp, path: &str, token: Option<&str>, body: Value) -> Response {
    app.send(Method::POST, path, token, Some(&body)).await
}

async fn change_password(app: &TestApp, access: &str, old: &str, new: &str) -> Response {
    let body = json!({ "old_password": old, "new_password": new });
    post(app, "/api/users/me/password", Some(access), body).await
}

/// A login's answer: its status and, on 200, (access, refresh).
async fn try_login(
    app: &TestApp,
    username: &str,
    password: &str,
) -> (StatusCode, Option<(String, String)>) {
    let (status, body) = read_json(app.login(username, password).await).await;
    let pair = (status == StatusCode::OK).then(|| {
        let token = |key: &str| body[key].as_str().expect(key).to_owned();
        (token("access"), token("refresh"))
    });
    (status, pair)
}

/// The body of a 401 at refresh or verify: `token_not_valid`, with
/// simplejwt's detail for a void token, and the challenge header.
async fn assert_token_not_valid(resp: Response, what: &str) {
    let challenge = resp.headers().get(WWW_AUTHENTICATE).cloned();
    let (status, body) = read_json(resp).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {body}");
    assert_eq!(body["code"], "token_not_valid", "{what}: {body}");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(
        ["Token is blacklisted", "Token is invalid"].contains(&detail),
        "{what}: {body}"
    );
    assert_eq!(
        challenge.as_ref().and_then(|v| v.to_str().ok()),
        Some(r#"Bearer realm="api""#),
        "{what}: WWW-Authenticate"
    );
}

/// A 429 with `Retry-After`.
async fn assert_429(resp: Response, what: &str) {
    let retry_after = resp.headers().get(RETRY_AFTER).cloned();
    let body = expect_json(resp, StatusCode::TOO_MANY_REQUESTS).await;
    assert!(retry_after.is_some(), "{what}: no Retry-After; {body}");
}

// --- 1. revocations racing logins and refreshes ------------------------------

/// Logins with the old password racing a password change: once the change
/// answered 204, no token they minted may refresh or read `/me` (a login
/// that succeeded with the old password happened before the change).
///
/// Three lanes of logins keep both hashing slots busy while the change
/// hashes, then waits for the write lock an outside connection holds for
/// over a second: tokens minted meanwhile must not outlive the change (an
/// instant taken before the wait lets them). The lock goes at .900 of a
/// second, so the change commits late in a second (SQLite's busy handler
/// retries every 100 ms) while a login that read the row before the commit
/// is still hashing, and mints in the next second (a login that does not
/// check its row again lets that token live). That last part is a matter
/// of timing (a hash takes about 0.1 s here), so five rounds, each with
/// its own user.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logins_racing_a_password_change_mint_no_token_that_outlives_it() {
    crate::sqlite_only!();
    let _serial = one_at_a_time().await;
    let app = Arc::new(default_cost_app(|_| {}).await);
    let mut survivors = Vec::new();
    let mut minted_total = 0;
    for round in 1..=5 {
        let user = TestUser::generate();
        let (_, access, _) = app.create_user(&user).await;
        let lock = WriteLock::take(&app);
        let change = tokio::spawn({
            let (app, user) = (app.clone(), user.clone());
            async move {
                change_password(&app, &access, &user.password, NEW_PASSWORD)
                    .await
                    .status()
            }
        });
        // The change takes a hashing slot before the logins queue.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let answered = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let lanes: Vec<JoinHandle<_>> = (0..3)
            .map(|_| {
                let (app, user) = (app.clone(), user.clone());
                let (answered, stop) = (answered.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut results = Vec::new();
                    while !stop.load(Ordering::SeqCst) {
                        results.push(try_login(&app, &user.username, &user.password).await);
                        answered.fetch_add(1, Ordering::SeqCst);
                    }
                    results
                })
            })
            .collect();
        // Four logins answered: the change's two hashes (run beside the
        // first two) are done and it waits for the lock.
        let deadline = Instant::now() + Duration::from_secs(60);
        while answered.load(Ordering::SeqCst) < 4 {
            assert!(Instant::now() < deadline, "four logins took over 60 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        sleep_until_millis_into_a_second(Instant::now() + Duration::from_millis(1200), 900).await;
        lock.release();
        let changed = tokio::time::timeout(Duration::from_secs(60), change)
            .await
            .expect("the password change answered within 60 s of the lock's release")
            .expect("change task");
        stop.store(true, Ordering::SeqCst);
        assert_eq!(changed, StatusCode::NO_CONTENT, "round {round}: the change");

        let mut minted = Vec::new();
        for lane in lanes {
            let results = tokio::time::timeout(Duration::from_secs(60), lane)
                .await
                .expect("every login answered")
                .expect("login lane");
            for (status, pair) in results {
                assert!(
                    [StatusCode::OK, StatusCode::UNAUTHORIZED].contains(&status),
                    "round {round}: a login answered {status}"
                );
                minted.extend(pair);
            }
        }
        minted_total += minted.len();
        for (access, refresh) in minted {
            let me = app.get_me(&access).await.status();
            let refreshed = app.refresh(&refresh).await.status();
            if me != StatusCode::UNAUTHORIZED || refreshed != StatusCode::UNAUTHORIZED {
                survivors.push(format!(
                    "round {round}: iat {} -> /me {me}, refresh {refreshed}",
                    claims(&access)["iat"]
                ));
            }
        }
    }
    assert!(
        survivors.is_empty(),
        "{} of {minted_total} tokens minted by logins with the old password outlived \
         the password change; the first: {:#?}",
        survivors.len(),
        &survivors[..survivors.len().min(5)]
    );
}

/// Refreshes racing a logout-all: once it answered 204, no access token
/// they minted may read `/me`.
///
/// The logout-all waits for the write lock an outside connection holds
/// across a second boundary while refreshes go on (two at a time, one
/// every 20 ms each); the lock goes at .850 of a later second.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refreshes_racing_a_logout_all_mint_no_access_token_that_outlives_it() {
    crate::sqlite_only!();
    let _serial = one_at_a_time().await;
    let app = Arc::new(default_cost_app(|_| {}).await);
    let (_, access, refresh) = app.create_user(&TestUser::generate()).await;

    let lock = WriteLock::take(&app);
    let sent = Instant::now();
    let logout = tokio::spawn({
        let app = app.clone();
        async move {
            app.send(
                Method::POST,
                "/api/users/me/logout-all",
                Some(&access),
                None,
            )
            .await
            .status()
        }
    });
    let done = Arc::new(AtomicBool::new(false));
    let refreshers: Vec<JoinHandle<Vec<String>>> = (0..2)
        .map(|_| {
            let (app, refresh, done) = (app.clone(), refresh.clone(), done.clone());
            tokio::spawn(async move {
                let mut minted = Vec::new();
                while !done.load(Ordering::SeqCst) {
                    let (status, body) = read_json(app.refresh(&refresh).await).await;
                    if status == StatusCode::OK {
                        minted.push(body["access"].as_str().expect("access").to_owned());
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                minted
            })
        })
        .collect();
    sleep_until_millis_into_a_second(sent + Duration::from_millis(1300), 850).await;
    lock.release();
    let status = tokio::time::timeout(Duration::from_secs(60), logout)
        .await
        .expect("logout-all answered within 60 s of the lock's release")
        .expect("logout task");
    assert_eq!(status, StatusCode::NO_CONTENT, "logout-all");
    done.store(true, Ordering::SeqCst);

    let mut minted = Vec::new();
    for refresher in refreshers {
        minted.extend(refresher.await.expect("refresher"));
    }
    let mut survivors = Vec::new();
    for access in &minted {
        let me = app.get_me(access).await.status();
        if me != StatusCode::UNAUTHORIZED {
            survivors.push(format!("iat {} -> /me {me}", claims(access)["iat"]));
        }
    }
    assert!(
        survivors.is_empty(),
        "{} of {} access tokens from refreshes racing the logout-all outlived it; the first: {:#?}",
        survivors.len(),
        minted.len(),
        &survivors[..survivors.len().min(5)]
    );
}

// --- 2. throttling ------------------------------------------------------------

/// 40 wrong passwords for one username sent at once, each on a connection
/// of its own, with the default budget (5 a minute): at most 5 are checked
/// (401), every other one is throttled (429).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forty_wrong_passwords_at_once_for_one_username_get_at_most_five_checked() {
    let _serial = one_at_a_time().await;
    let app = default_cost_app(|c| c.rate_limit = RateLimitConfig::default()).await;
    assert_eq!(app.config.rate_limit.per_username_per_minute, 5);
    let user = TestUser::generate();
    expect_json(app.register_json(&user.body()).await, StatusCode::CREATED).await;
    let checked = forty_wrong_logins_at_once(&app, |_| user.username.clone()).await;
    assert!(
        checked <= 5,
        "{checked} of 40 simultaneous wrong passwords were checked (401); the budget is 5"
    );
}

/// 40 wrong passwords for 40 usernames sent at once from one address whose
/// budget is 5 a minute: at most 5 are checked (401), every other one is
/// throttled (429), though no username's budget is touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forty_wrong_passwords_at_once_from_one_address_get_at_most_its_budget_checked() {
    let _serial = one_at_a_time().await;
    let app = default_cost_app(|c| {
        c.rate_limit = RateLimitConfig {
            per_address_per_minute: 5,
            ..RateLimitConfig::default()
        }
    })
    .await;
    let mut names = Vec::new();
    for _ in 0..40 {
        let user = TestUser::generate();
        let body = user.body();
        expect_json(app.register_json(&body).await, StatusCode::CREATED).await;
        names.push(user.username);
    }
    let checked = forty_wrong_logins_at_once(&app, |n| names[n].clone()).await;
    assert!(
        checked <= 5,
        "{checked} of 40 simultaneous wrong passwords from one address were checked (401); \
         its budget is 5"
    );
}

/// Sends 40 logins with wrong passwords at once, the n-th for
/// `username(n)`, each on a connection of its own; each must answer 401 or
/// 429. Returns how many were checked (401).
async fn forty_wrong_logins_at_once(app: &TestApp, username: impl Fn(usize) -> String) -> usize {
    let url = format!("{}/api/token", app.base_url);
    let start = Arc::new(tokio::sync::Barrier::new(40));
    let attempts: Vec<JoinHandle<Response>> = (0..40)
        .map(|n| {
            let (url, start) = (url.clone(), start.clone());
            let body = json!({"username": username(n), "password": format!("wrong-password-{n}")});
            tokio::spawn(async move {
                // A client, and so a connection, of its own.
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(120))
                    .build()
                    .expect("client");
                start.wait().await;
                client.post(url).json(&body).send().await.expect("sent")
            })
        })
        .collect();
    let mut checked = 0;
    for attempt in attempts {
        let resp = attempt.await.expect("attempt task");
        match resp.status() {
            StatusCode::UNAUTHORIZED => {
                let body = expect_json(resp, StatusCode::UNAUTHORIZED).await;
                assert_eq!(body, json!({ "detail": NO_ACCOUNT }));
                checked += 1;
            }
            StatusCode::TOO_MANY_REQUESTS => assert_429(resp, "a throttled attempt").await,
            other => panic!("an attempt answered {other}"),
        }
    }
    checked
}

/// The password-change budget follows the user, not their name: after it
/// is spent, renaming oneself does not buy a fresh one.
#[tokio::test]
async fn renaming_oneself_does_not_refill_the_password_change_budget() {
    let _serial = one_at_a_time().await;
    let app = spawn_app_with(|c| c.rate_limit = RateLimitConfig::default()).await;
    let user = TestUser::generate();
    let (id, access, _) = app.create_user(&user).await;

    let mut spent = false;
    for _ in 0..10 {
        let resp = change_password(&app, &access, "not-the-password-1", NEW_PASSWORD).await;
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            spent = true;
            break;
        }
        expect_json(resp, StatusCode::BAD_REQUEST).await;
    }
    assert!(spent, "10 wrong old passwords and still no 429");

    let renamed = format!("{}-renamed", user.username);
    let resp = app
        .patch_user(id, &access, &json!({ "username": renamed }))
        .await;
    let body = expect_json(resp, StatusCode::OK).await;
    assert_eq!(body["username"], renamed.as_str());

    let resp = change_password(&app, &access, "not-the-password-2", NEW_PASSWORD).await;
    assert_eq!(
        resp.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "after a rename the password change got a fresh budget: {}",
        resp.text().await.unwrap_or_default()
    );
}

/// Very long usernames are answered as documented (a wrong username is a
/// 401) and, as throttle keys, capped: 1,500 failed logins with distinct
/// 60,000-character usernames do not leave 60 KB each in the server's
/// memory (the real binary, its resident size read from /proc).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn very_long_usernames_are_answered_401_and_not_kept_whole_as_throttle_keys() {
    let _serial = one_at_a_time().await;
    let site = Site::new();
    let server = site.serve(&[
        ("ROSTERD_RATE_LIMIT_ENABLED", "true"),
        // A username failing once is remembered for 30 s (2 a minute)...
        ("ROSTERD_RATE_LIMIT_PER_USERNAME_PER_MINUTE", "2"),
        // ...and the one client address never runs out.
        ("ROSTERD_RATE_LIMIT_PER_ADDRESS_PER_MINUTE", "1000000"),
    ]);
    let client = client();
    let login = |username: String| {
        let (client, url) = (client.clone(), server.url("/api/token"));
        async move {
            let body = json!({ "username": username, "password": "wrong-password-here" });
            client.post(url).json(&body).send().await.expect("sent")
        }
    };
    for length in [151, 60_000] {
        let resp = login("u".repeat(length)).await;
        let body = expect_json(resp, StatusCode::UNAUTHORIZED).await;
        assert_eq!(
            body,
            json!({ "detail": NO_ACCOUNT }),
            "a {length}-character username"
        );
    }

    let long_name = |n: usize| format!("{n:06}{}", "u".repeat(59_994));
    let send = |range: std::ops::Range<usize>| {
        let login = &login;
        async move {
            let mut next = range.start;
            while next < range.end {
                let batch = (next..range.end.min(next + 8)).map(|n| login(long_name(n)));
                for resp in futures_util::future::join_all(batch).await {
                    let status = resp.status();
                    assert!(
                        [StatusCode::UNAUTHORIZED, StatusCode::TOO_MANY_REQUESTS].contains(&status),
                        "a long username answered {status}"
                    );
                }
                next += 8;
            }
        }
    };
    // Warm up: buffers, threads and their malloc arenas.
    send(0..100).await;
    let before = resident_kib(&server);
    let started = Instant::now();
    send(100..1600).await;
    let after = resident_kib(&server);
    let grew_mib = after.saturating_sub(before) / 1024;
    assert!(
        grew_mib < 32,
        "the server grew by {grew_mib} MiB ({before} -> {after} KiB) over 1,500 failed \
         logins with distinct 60,000-character usernames in {:?}",
        started.elapsed()
    );
    let health = client.get(server.url("/api/health")).send().await;
    assert_eq!(health.expect("health").status(), StatusCode::OK);
}

/// VmRSS of a running server, in KiB.
fn resident_kib(server: &RunningServer) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id()))
        .expect("read /proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Behind a trusted proxy listed as `127.0.0.1`, a peer that reaches a
/// dual-stack socket as `::ffff:127.0.0.1` is that proxy: its
/// `X-Forwarded-For` names the client, and each client has a budget of its
/// own.
#[tokio::test]
async fn an_ipv4_mapped_peer_matches_its_ipv4_address_in_trusted_proxies() {
    let _serial = one_at_a_time().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = Config::default();
    config.auth.secret = Secret::new(SECRET);
    config.auth.pbkdf2_iterations = FAST_ITERATIONS;
    config.database.path = Some(dir.path().join("rosterd.sqlite3"));
    config.rate_limit.per_username_per_minute = 1000;
    config.rate_limit.per_address_per_minute = 2;
    config.server.trusted_proxies = vec!["127.0.0.1".into()];
    let state = rosterd::AppState::new(config).expect("AppState::new");
    // An IPv6 socket bound to the IPv4-mapped loopback: clients connect to
    // 127.0.0.1, the server sees ::ffff:127.0.0.1.
    let listener = tokio::net::TcpListener::bind("[::ffff:127.0.0.1]:0")
        .await
        .expect("bind [::ffff:127.0.0.1]:0");
    let port = listener.local_addr().expect("local addr").port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(rosterd::run(listener, state, async move {
        let _ = stopped.await;
    }));

    let client = client();
    let url = format!("http://127.0.0.1:{port}/api/token");
    let mut answers = Vec::new();
    for n in 1..=4 {
        let resp = client
            .post(&url)
            .header("x-forwarded-for", format!("203.0.113.{n}"))
            .json(&json!({ "username": format!("nobody{n}"), "password": "wrong-password-here" }))
            .send()
            .await
            .expect("sent");
        answers.push(resp.status().as_u16());
    }
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("stopped within 10 s")
        .expect("run() does not panic")
        .expect("run() returns Ok");
    assert_eq!(
        answers, [401; 4],
        "four clients behind the trusted proxy (seen as ::ffff:127.0.0.1), one failure \
         each, with 2 failures a minute per address"
    );
}

// --- 3. restore ---------------------------------------------------------------

/// A restore hands no id out twice and leaves no token of the undone
/// history usable: backup (users 1..=N), user N+1 registers and logs in,
/// stop, restore, start; the next registrant does not get id N+1, and N+1's
/// tokens cannot read, refresh, patch or delete anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restore_no_id_is_handed_out_twice_and_old_tokens_reach_nobody() {
    let _serial = one_at_a_time().await;
    let site = Site::new();
    site.create("alice");
    site.create("bob");
    let backup = site.path("b.sqlite3");
    site.backup(&backup).ok();
    let backed_up_max = max_id(&site.db);

    let client = client();
    let mut server = site.serve(&[]);
    let carol = TestUser::generate();
    let carol_id = register(&client, &server, &carol).await;
    assert_eq!(carol_id, backed_up_max + 1);
    let (carol_access, carol_refresh) = login_pair(&client, &server, &carol).await;
    assert!(server.stop("TERM", Duration::from_secs(15)).success());
    drop(server);

    site.restore(&backup).ok();
    let server = site.serve(&[]);
    let dave = TestUser::generate();
    let dave_id = register(&client, &server, &dave).await;
    let (dave_access, _) = login_pair(&client, &server, &dave).await;

    let mut problems = Vec::new();
    if dave_id <= carol_id {
        problems.push(format!(
            "the first registrant after the restore got id {dave_id}; ids up to {carol_id} \
             were handed out before it"
        ));
    }
    let send = |method: Method, path: String, token: String, body: Option<Value>| {
        let request = client.request(method, server.url(&path)).bearer_auth(token);
        let request = match body {
            Some(body) => request.json(&body),
            None => request,
        };
        async move {
            let resp = request.send().await.expect("sent");
            let status = resp.status();
            (status, resp.text().await.unwrap_or_default())
        }
    };
    let mut carol_accesses = vec![carol_access];
    let refreshed = client
        .post(server.url("/api/token/refresh"))
        .json(&json!({ "refresh": carol_refresh }))
        .send()
        .await
        .expect("sent");
    let (status, body) = read_json(refreshed).await;
    if status != StatusCode::UNAUTHORIZED {
        problems.push(format!(
            "the refresh token of user {carol_id} from before the restore refreshed: {status}"
        ));
        carol_accesses.extend(body["access"].as_str().map(str::to_owned));
    }
    for access in carol_accesses {
        let attempts = [
            (Method::GET, "/api/users/me".to_owned(), None),
            (Method::GET, format!("/api/users/{dave_id}"), None),
            (
                Method::PATCH,
                format!("/api/users/{dave_id}"),
                Some(json!({ "level": 7 })),
            ),
            (Method::DELETE, format!("/api/users/{dave_id}"), None),
        ];
        for (method, path, body) in attempts {
            let what = format!("{method} {path}");
            let (status, text) = send(method, path, access.clone(), body).await;
            if status != StatusCode::UNAUTHORIZED {
                problems.push(format!(
                    "{what} with an access token of user {carol_id} from before the restore: \
                     {status} {text}"
                ));
            }
        }
    }
    let (status, text) = send(Method::GET, "/api/users/me".into(), dave_access, None).await;
    if status != StatusCode::OK || !text.contains(&dave.username) {
        problems.push(format!(
            "user {dave_id} reading themself afterwards: {status} {text}"
        ));
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

async fn register(client: &reqwest::Client, server: &RunningServer, user: &TestUser) -> i64 {
    let resp = client
        .post(server.url("/api/users"))
        .json(&user.body())
        .send()
        .await
        .expect("sent");
    expect_json(resp, StatusCode::CREATED).await["id"]
        .as_i64()
        .expect("id")
}

async fn login_pair(
    client: &reqwest::Client,
    server: &RunningServer,
    user: &TestUser,
) -> (String, String) {
    let resp = client
        .post(server.url("/api/token"))
        .json(&json!({ "username": user.username, "password": user.password }))
        .send()
        .await
        .expect("sent");
    let body = expect_json(resp, StatusCode::OK).await;
    let token = |key: &str| body[key].as_str().expect(key).to_owned();
    (token("access"), token("refresh"))
}

fn max_id(db: &Path) -> i64 {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open");
    conn.query_row("SELECT max(id) FROM users", [], |r| r.get(0))
        .expect("max id")
}

// --- 4. slow readers of the full listing ----------------------------------------

/// 32 full listings (50,000 users, about 11 MB each) requested on sockets
/// with a tiny receive buffer that are never read: a login and a
/// registration are still answered within 10 s each, and SIGTERM stops the
/// server within 30 s. The real binary: its runtime's blocking pool is
/// what such readers can exhaust.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_of_the_full_listing_starve_no_login_and_no_stop() {
    let _serial = one_at_a_time().await;
    let site = Site::new();
    site.run(&["user", "list"]).ok();
    fill(&site.db, 50_000);
    let mut server = site.serve(&[]);
    let client = client();
    let user = TestUser::generate();
    register(&client, &server, &user).await;
    let (access, _) = login_pair(&client, &server, &user).await;

    let addr: SocketAddr = format!("127.0.0.1:{}", server.port)
        .parse()
        .expect("address");
    let request = format!(
        "GET /api/users HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {access}\r\n\r\n"
    );
    let mut readers = Vec::new();
    for _ in 0..32 {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let mut stream = socket.connect(addr).await.expect("connect");
        stream
            .write_all(request.as_bytes())
            .await
            .expect("send the request");
        readers.push(stream);
    }
    // Time for every listing to fill the buffers and stall.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut problems = Vec::new();
    let bounded = |future| tokio::time::timeout(Duration::from_secs(10), future);
    let body = json!({ "username": user.username, "password": user.password });
    match bounded(client.post(server.url("/api/token")).json(&body).send()).await {
        Ok(Ok(resp)) if resp.status() == StatusCode::OK => {}
        Ok(Ok(resp)) => problems.push(format!("a login answered {}", resp.status())),
        Ok(Err(err)) => problems.push(format!("a login failed: {err}")),
        Err(_) => problems.push("a login got no answer within 10 s".to_owned()),
    }
    let newcomer = TestUser::generate();
    match bounded(
        client
            .post(server.url("/api/users"))
            .json(&newcomer.body())
            .send(),
    )
    .await
    {
        Ok(Ok(resp)) if resp.status() == StatusCode::CREATED => {}
        Ok(Ok(resp)) => problems.push(format!("a registration answered {}", resp.status())),
        Ok(Err(err)) => problems.push(format!("a registration failed: {err}")),
        Err(_) => problems.push("a registration got no answer within 10 s".to_owned()),
    }
    match stop_within(&mut server, Duration::from_secs(30)) {
        Some(status) if status.success() => {}
        Some(status) => problems.push(format!("the stop ended with {status}")),
        None => problems.push("still running 30 s after SIGTERM".to_owned()),
    }
    drop(readers);
    assert!(problems.is_empty(), "{problems:#?}");
}

/// Whole listings streaming at once are capped (`server.max_full_listings`):
/// one more is answered 503, and a listing whose client goes away gives its
/// place back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_listings_past_their_cap_get_503_until_one_ends() {
    let _serial = one_at_a_time().await;
    let site = Site::new();
    site.run(&["user", "list"]).ok();
    fill(&site.db, 20_000);
    let server = site.serve(&[("ROSTERD_SERVER_MAX_FULL_LISTINGS", "1")]);
    let client = client();
    let user = TestUser::generate();
    register(&client, &server, &user).await;
    let (access, _) = login_pair(&client, &server, &user).await;
    let list = || {
        client
            .get(server.url("/api/users"))
            .bearer_auth(&access)
            .send()
    };

    // A whole listing that nobody reads holds the only place.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let addr: SocketAddr = format!("127.0.0.1:{}", server.port)
        .parse()
        .expect("address");
    let mut stalled = socket.connect(addr).await.expect("connect");
    let request = format!(
        "GET /api/users HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {access}\r\n\r\n"
    );
    stalled.write_all(request.as_bytes()).await.expect("send");
    tokio::time::sleep(Duration::from_secs(1)).await;

    let refused = list().await.expect("a second listing");
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers()["retry-after"], "1");
    // A page is not a whole listing.
    let page = client
        .get(server.url("/api/users?limit=5"))
        .bearer_auth(&access)
        .send()
        .await
        .expect("a page");
    assert_eq!(page.status(), StatusCode::OK);

    drop(stalled);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let resp = list().await.expect("a listing after the stalled one left");
        if resp.status() == StatusCode::OK {
            let users: Vec<Value> = resp.json().await.expect("the whole listing");
            assert_eq!(users.len(), 20_001);
            break;
        }
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(Instant::now() < deadline, "the place was never given back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends SIGTERM; the exit status if it came within `within`.
fn stop_within(server: &mut RunningServer, within: Duration) -> Option<std::process::ExitStatus> {
    let sent = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(server.child.id().to_string())
        .status()
        .expect("kill");
    assert!(sent.success(), "kill -TERM failed");
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(status) = server.child.try_wait().expect("wait") {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Inserts `n` users straight into the database file.
fn fill(db: &Path, n: usize) {
    let mut conn = rusqlite::Connection::open(db).expect("open");
    let tx = conn.transaction().expect("begin");
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO users (username, email, password_hash, created_at, updated_at) \
                 VALUES (?1, ?2, 'x', ?3, ?3)",
            )
            .expect("prepare");
        for u in seed(n, "filler") {
            insert
                .execute(rusqlite::params![u.username, u.email, u.created_at])
                .expect("insert");
        }
    }
    tx.commit().expect("commit");
}

// --- 5. verify and rotation -------------------------------------------------------

/// With rotation on and no grace window, a refresh token that rotation
/// retired is refused by verify (401 `token_not_valid`) once the window
/// is over, as refresh refuses it.
#[tokio::test]
async fn verify_refuses_a_refresh_token_retired_by_rotation_after_the_grace_window() {
    let _serial = one_at_a_time().await;
    let app = spawn_app_with(|c| {
        c.auth.rotate_refresh_tokens = true;
        c.auth.rotation_grace_period = 0;
    })
    .await;
    let (_, _, old) = app.create_user(&TestUser::generate()).await;
    let body = expect_json(app.refresh(&old).await, StatusCode::OK).await;
    let new = body["refresh"].as_str().expect("a rotated refresh token");
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let verify = |token: &str| post(&app, "/api/token/verify", None, json!({ "token": token }));
    expect_json(verify(new).await, StatusCode::OK).await;
    assert_token_not_valid(verify(&old).await, "verify of the retired refresh token").await;
}

// --- 6. an outside INSERT OR REPLACE ------------------------------------------------

/// An outside `INSERT OR REPLACE` that replaces users leaves
/// `X-Total-Count` and deep pages right (they match what SQLite itself
/// says): first one that clashes on a username (the old row goes, the new
/// one gets the next id), then one that clashes on an id.
#[tokio::test]
async fn an_outside_insert_or_replace_keeps_the_count_and_deep_pages_right() {
    crate::sqlite_only!();
    let _serial = one_at_a_time().await;
    let app = spawn_app().await;
    let (_, access, _) = app.create_user(&TestUser::generate()).await;
    let seeded = app.seed_users(&seed(2_499, "bulk"));
    // The seek points for deep pages are built now.
    let deep = "/api/users?limit=3&offset=1500";
    assert_eq!(app.list_users(&access, deep).await.total, Some(2_500));

    let replaced_name = seeded[9]["username"].as_str().expect("username");
    let replaced_id = seeded[19]["id"].as_i64().expect("id");
    let replacements = [
        (
            "by username",
            "INSERT OR REPLACE INTO users (username, email, password_hash, created_at, \
             updated_at) VALUES (?1, 'replaced-by-name@example.com', 'x', ?2, ?2)",
            rusqlite::types::Value::from(replaced_name.to_owned()),
        ),
        (
            "by id",
            "INSERT OR REPLACE INTO users (id, username, email, password_hash, created_at, \
             updated_at) VALUES (?1, 'replaced-by-id', 'replaced-by-id@example.com', 'x', ?2, ?2)",
            rusqlite::types::Value::from(replaced_id),
        ),
    ];
    let conn = app.db();
    let mut problems = Vec::new();
    for (what, sql, key) in replacements {
        conn.execute(sql, rusqlite::params![key, "2024-02-01T00:00:00Z"])
            .expect(what);
        let count: i64 = conn
            .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
            .expect("count");
        for offset in [0, 1500, count - 2] {
            let truth: Vec<i64> = conn
                .prepare("SELECT id FROM users ORDER BY id LIMIT 3 OFFSET ?1")
                .expect("prepare")
                .query_map([offset], |r| r.get(0))
                .expect("query")
                .map(|r| r.expect("id"))
                .collect();
            let page = app
                .list_users(&access, &format!("/api/users?limit=3&offset={offset}"))
                .await;
            assert_eq!(page.status, StatusCode::OK, "{}", page.body);
            if page.total != Some(count) {
                problems.push(format!(
                    "replaced {what}, offset {offset}: X-Total-Count {:?}, SQLite counts {count}",
                    page.total
                ));
            }
            if page.ids() != truth {
                problems.push(format!(
                    "replaced {what}, offset {offset}: ids {:?}, SQLite says {truth:?}",
                    page.ids()
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

// --- the real binary ------------------------------------------------------------

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}
