//! Crash safety of the real binary: SIGKILL under concurrent load at random
//! moments and the checks after each restart (issue 6, "Crash safety"); the
//! one-line refusals of `serve` at start (read-only, missing directory,
//! locked, not a database); and a graceful SIGTERM under load.
//!
//! Every process runs in its own temp dir with a cleared environment (HOME
//! and the XDG dirs inside it, the secret from `ROSTERD_SECRET`), binds
//! `127.0.0.1:0` and is killed on drop. Every wait is bounded.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::helpers::{SECRET, claims};

const BIN: &str = env!("CARGO_BIN_EXE_rosterd");
/// Longest wait for the "serving on" line (a loaded 2-core machine).
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest wait for a process expected to exit.
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);
/// Every HTTP request of these tests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// A private world: a temp dir holding HOME, the XDG dirs and the files.
struct Place {
    dir: TempDir,
}

impl Place {
    fn new() -> Place {
        let place = Place {
            dir: tempfile::tempdir().expect("temp dir"),
        };
        for sub in ["home", "xdg-config", "xdg-data"] {
            std::fs::create_dir(place.path(sub)).expect("create a world dir");
        }
        place
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn db(&self) -> PathBuf {
        self.path("d.sqlite3")
    }

    /// `[WRAPPER...] rosterd --db DB ARGS` with a cleared environment plus
    /// `env`; no `--config` (the secret comes from `ROSTERD_SECRET`).
    fn command(
        &self,
        wrapper: &[String],
        db: &Path,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Command {
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut cmd = Command::new(program);
                cmd.args(rest).arg(BIN);
                cmd
            }
            None => Command::new(BIN),
        };
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.path("home"))
            .env("XDG_CONFIG_HOME", self.path("xdg-config"))
            .env("XDG_DATA_HOME", self.path("xdg-data"))
            .env("ROSTERD_SECRET", SECRET)
            .envs(env.iter().copied())
            .current_dir(self.dir.path())
            .arg("--db")
            .arg(db)
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    /// Spawns `rosterd --db DB serve --bind 127.0.0.1:0`, stderr to `log`,
    /// and waits (bounded) for its "serving on" line.
    fn serve(&self, db: &Path, env: &[(&str, &str)], log: &str) -> Result<Server, String> {
        let log = self.path(log);
        let stderr = std::fs::File::create(&log).expect("create the server log");
        let child = self
            .command(&[], db, env, &["serve", "--bind", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn rosterd serve");
        Server::start(child, log)
    }
}

/// A running `rosterd serve`, SIGKILLed on drop.
struct Server {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Server {
    fn start(mut child: Child, log: PathBuf) -> Result<Server, String> {
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        // Drains stdout for the life of the process.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(line) => line,
                Err(why) => {
                    let _ = child.kill();
                    let status = child.wait().ok();
                    return Err(format!(
                        "no \"serving on\" line ({why:?}; exit {status:?}); stdout: {seen:?}; \
                         stderr: {}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    ));
                }
            };
            if let Some(rest) = line.strip_prefix("rosterd: serving on http://127.0.0.1:") {
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                let port = digits.parse().expect("a port in the serving line");
                return Ok(Server { child, port, log });
            }
            seen.push(line);
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, and reap it.
    fn kill(&mut self) {
        self.child.kill().expect("SIGKILL the server");
        self.child.wait().expect("reap the server");
    }

    /// Sends `kill -SIGNAL`.
    fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -{signal} failed");
    }

    /// Waits (bounded, without blocking the async workers) for the exit.
    async fn exited(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("client")
}

/// Sends a request and reads the whole reply; `Err` when the connection
/// failed or the reply was cut short. An empty body reads as `null`.
async fn call(
    client: &reqwest::Client,
    method: Method,
    url: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Result<(StatusCode, Value), String> {
    let mut builder = client.request(method, url);
    if let Some(token) = token {
        builder = builder.bearer_auth(token);
    }
    if let Some(body) = body {
        builder = builder.json(body);
    }
    let resp = builder.send().await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| format!("{status}: a body that is not JSON ({e}): {bytes:?}"))?
    };
    Ok((status, value))
}

/// `PRAGMA integrity_check` of a database file, its rows joined by "; ".
fn integrity_check(conn: &rusqlite::Connection) -> String {
    conn.prepare("PRAGMA integrity_check")
        .expect("prepare integrity_check")
        .query_map([], |row| row.get::<_, String>(0))
        .expect("run integrity_check")
        .collect::<Result<Vec<_>, _>>()
        .expect("read integrity_check")
        .join("; ")
}

fn sidecar(db: &Path, suffix: &str) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

// --- the crash test ---------------------------------------------------------

/// Load tasks per cycle.
const TASKS: usize = 6;
/// At least this many SIGKILL cycles...
const MIN_CYCLES: usize = 20;
/// ...and more while the test is younger than this (and under MAX_CYCLES).
const SOFT_BUDGET: Duration = Duration::from_secs(30);
const MAX_CYCLES: usize = 60;
const STATUSES: [&str; 3] = ["online", "offline", "busy"];

/// The status written along with `level` (so a row's status must match its
/// level: both come from one write).
fn status_of(level: i64) -> &'static str {
    STATUSES[level.rem_euclid(3) as usize]
}

fn fresh_password(rng: &mut StdRng) -> String {
    format!("violet-{:016x}-meadow", rng.random::<u64>())
}

fn crash_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("ROSTERD_RATE_LIMIT_ENABLED", "false"),
        ("ROSTERD_AUTH_PBKDF2_ITERATIONS", "1000"),
        ("ROSTERD_AUTH_ROTATE_REFRESH_TOKENS", "false"),
    ]
}

/// What the test knows about one account: the values verified at the last
/// restart (`*_base`) and what was sent / acknowledged since, in order.
#[derive(Debug, Clone)]
struct Acct {
    id: i64,
    username: String,
    email: String,
    level_base: i64,
    status_base: String,
    next_level: i64,
    level_sent: Vec<i64>,
    /// Index into `level_sent` of the last 2xx.
    level_acked: Option<usize>,
    pw_base: String,
    /// The password as of the last reply seen (for requests in this cycle).
    password: String,
    pw_sent: Vec<String>,
    pw_acked: Option<usize>,
    access: Option<String>,
    /// Registered (or found) since the last restart.
    is_new: bool,
}

impl Acct {
    fn new(id: i64, username: String, email: String, password: String, level: i64) -> Acct {
        Acct {
            id,
            username,
            email,
            level_base: level,
            status_base: "offline".into(),
            next_level: level.max(1) + 1,
            level_sent: Vec::new(),
            level_acked: None,
            pw_base: password.clone(),
            password,
            pw_sent: Vec::new(),
            pw_acked: None,
            access: None,
            is_new: true,
        }
    }

    /// The levels the database may hold: the last acknowledged one or any
    /// sent after it (in flight at the kill); with nothing acknowledged,
    /// the verified one or anything sent.
    fn allowed_levels(&self) -> Vec<i64> {
        match self.level_acked {
            Some(i) => self.level_sent[i..].to_vec(),
            None => std::iter::once(self.level_base)
                .chain(self.level_sent.iter().copied())
                .collect(),
        }
    }

    /// The passwords that may be current, by the same rule.
    fn allowed_passwords(&self) -> Vec<String> {
        match self.pw_acked {
            Some(i) => self.pw_sent[i..].to_vec(),
            None => std::iter::once(self.pw_base.clone())
                .chain(self.pw_sent.iter().cloned())
                .collect(),
        }
    }
}

/// A registration whose reply never came (in flight at the kill).
#[derive(Debug, Clone)]
struct MaybeRegistered {
    username: String,
    email: String,
    password: String,
}

/// An acknowledged blacklisting.
#[derive(Debug, Clone)]
struct Blacklisted {
    user_id: i64,
    jti: String,
    refresh: String,
}

#[derive(Debug, Default, Clone, Copy)]
struct Acks {
    registrations: usize,
    levels: usize,
    passwords: usize,
    blacklists: usize,
}

impl Acks {
    fn add(&mut self, other: Acks) {
        self.registrations += other.registrations;
        self.levels += other.levels;
        self.passwords += other.passwords;
        self.blacklists += other.blacklists;
    }

    fn total(&self) -> usize {
        self.registrations + self.levels + self.passwords + self.blacklists
    }
}

/// What one load task hands back after the kill.
#[derive(Default)]
struct TaskOut {
    accounts: Vec<Acct>,
    maybe_registered: Vec<MaybeRegistered>,
    blacklisted: Vec<Blacklisted>,
    acks: Acks,
    /// Requests whose reply never came (cut off by the kill).
    cut_off: usize,
    first_error_at: Option<Instant>,
    /// Replies no request of this load should get.
    unexpected: Vec<String>,
}

/// Why a task stops.
struct Dead;

struct Worker {
    client: reqwest::Client,
    base: String,
    tag: String,
    rng: StdRng,
    out: TaskOut,
    registered: usize,
}

impl Worker {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// One request; a failed connection or a cut reply ends the task.
    async fn call(
        &mut self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: &Value,
    ) -> Result<(StatusCode, Value), Dead> {
        let url = self.url(path);
        match call(&self.client, method, &url, token, Some(body)).await {
            Ok(reply) => Ok(reply),
            Err(_) => {
                self.out.cut_off += 1;
                self.out.first_error_at.get_or_insert_with(Instant::now);
                Err(Dead)
            }
        }
    }

    fn unexpected(&mut self, what: &str, status: StatusCode, body: &Value) {
        self.out.unexpected.push(format!("{what}: {status} {body}"));
    }

    async fn register(&mut self) -> Result<(), Dead> {
        self.registered += 1;
        let username = format!("{}n{}", self.tag, self.registered);
        let email = format!("{username}@example.com");
        let password = fresh_password(&mut self.rng);
        let body = json!({"username": username, "email": email, "password": password});
        let pending = MaybeRegistered {
            username: username.clone(),
            email: email.clone(),
            password: password.clone(),
        };
        self.out.maybe_registered.push(pending);
        let (status, reply) = self.call(Method::POST, "/api/users", None, &body).await?;
        self.out.maybe_registered.pop();
        if status == StatusCode::CREATED && reply["username"] == username.as_str() {
            let id = reply["id"].as_i64().expect("an id in the 201");
            self.out.acks.registrations += 1;
            self.out
                .accounts
                .push(Acct::new(id, username, email, password, 1));
        } else {
            self.unexpected("registration", status, &reply);
        }
        Ok(())
    }

    /// Logs account `i` in; `(access, refresh)`, or `None` on a refusal.
    async fn login(&mut self, i: usize) -> Result<Option<(String, String)>, Dead> {
        let acct = &self.out.accounts[i];
        let body = json!({"username": acct.username, "password": acct.password});
        let (status, reply) = self.call(Method::POST, "/api/token", None, &body).await?;
        match (reply["access"].as_str(), reply["refresh"].as_str()) {
            (Some(access), Some(refresh)) if status == StatusCode::OK => {
                let pair = (access.to_owned(), refresh.to_owned());
                self.out.accounts[i].access = Some(pair.0.clone());
                Ok(Some(pair))
            }
            _ => {
                self.unexpected("login", status, &reply);
                Ok(None)
            }
        }
    }

    async fn access(&mut self, i: usize) -> Result<Option<String>, Dead> {
        if let Some(access) = self.out.accounts[i].access.clone() {
            return Ok(Some(access));
        }
        Ok(self.login(i).await?.map(|(access, _)| access))
    }

    /// PUT or PATCH of the account's own level and status.
    async fn write_level(&mut self, i: usize) -> Result<(), Dead> {
        let Some(token) = self.access(i).await? else {
            return Ok(());
        };
        let put = self.rng.random_bool(0.5);
        let acct = &mut self.out.accounts[i];
        let level = acct.next_level;
        acct.next_level += 1;
        acct.level_sent.push(level);
        let index = acct.level_sent.len() - 1;
        let status_text = status_of(level);
        let (method, body) = if put {
            let body = json!({"username": acct.username, "email": acct.email,
                              "level": level, "status": status_text});
            (Method::PUT, body)
        } else {
            (
                Method::PATCH,
                json!({"level": level, "status": status_text}),
            )
        };
        let path = format!("/api/users/{}", acct.id);
        let (status, reply) = self.call(method, &path, Some(&token), &body).await?;
        if status == StatusCode::OK && reply["level"] == level && reply["status"] == status_text {
            self.out.accounts[i].level_acked = Some(index);
            self.out.acks.levels += 1;
        } else if status == StatusCode::UNAUTHORIZED {
            // A token voided by a second password change within one second.
            self.out.accounts[i].access = None;
        } else {
            self.unexpected("level write", status, &reply);
        }
        Ok(())
    }

    async fn change_password(&mut self, i: usize) -> Result<(), Dead> {
        let Some(token) = self.access(i).await? else {
            return Ok(());
        };
        let new = fresh_password(&mut self.rng);
        let acct = &mut self.out.accounts[i];
        acct.pw_sent.push(new.clone());
        let index = acct.pw_sent.len() - 1;
        let body = json!({"old_password": acct.password, "new_password": new});
        let (status, reply) = self
            .call(Method::POST, "/api/users/me/password", Some(&token), &body)
            .await?;
        let acct = &mut self.out.accounts[i];
        if status == StatusCode::NO_CONTENT {
            acct.pw_acked = Some(index);
            acct.password = new;
            // Every earlier token stops working.
            acct.access = None;
            self.out.acks.passwords += 1;
        } else if status == StatusCode::UNAUTHORIZED {
            acct.access = None;
        } else {
            self.unexpected("password change", status, &reply);
        }
        Ok(())
    }

    /// Logs in for a fresh refresh token and blacklists it.
    async fn blacklist(&mut self, i: usize) -> Result<(), Dead> {
        let Some((_, refresh)) = self.login(i).await? else {
            return Ok(());
        };
        let body = json!({ "refresh": refresh });
        let (status, reply) = self
            .call(Method::POST, "/api/token/blacklist", None, &body)
            .await?;
        if status == StatusCode::OK && reply == json!({}) {
            let jti = claims(&refresh)["jti"]
                .as_str()
                .expect("a jti in the refresh token")
                .to_owned();
            let user_id = self.out.accounts[i].id;
            self.out.blacklisted.push(Blacklisted {
                user_id,
                jti,
                refresh,
            });
            self.out.acks.blacklists += 1;
        } else {
            self.unexpected("blacklist", status, &reply);
        }
        Ok(())
    }

    async fn step(&mut self) -> Result<(), Dead> {
        let roll = self.rng.random_range(0..100);
        if self.out.accounts.is_empty() || roll < 10 {
            return self.register().await;
        }
        let i = self.rng.random_range(0..self.out.accounts.len());
        match roll {
            10..65 => self.write_level(i).await,
            65..80 => self.change_password(i).await,
            _ => self.blacklist(i).await,
        }
    }
}

/// One load task: requests back to back until the server is gone (or
/// `stop` is set), each account used by this task alone.
async fn load_task(
    base: String,
    tag: String,
    accounts: Vec<Acct>,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> TaskOut {
    let mut worker = Worker {
        client: client(),
        base,
        tag,
        rng: StdRng::seed_from_u64(seed),
        out: TaskOut {
            accounts,
            ..TaskOut::default()
        },
        registered: 0,
    };
    while !stop.load(Ordering::SeqCst) {
        if worker.step().await.is_err() {
            break;
        }
    }
    worker.out
}

/// Everything the test knows, across cycles.
#[derive(Default)]
struct Model {
    accounts: Vec<Acct>,
    blacklisted: Vec<Blacklisted>,
    acks: Acks,
    cut_off: usize,
    landed_in_flight: usize,
    /// In-flight level writes and password changes found applied.
    landed_levels: usize,
    landed_passwords: usize,
    checks: usize,
}

impl Model {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        self.checks += 1;
        assert!(ok, "{}", what());
    }
}

/// After a SIGKILL: a copy of the files (so the restarted server still
/// finds the WAL to recover) passes `integrity_check`, and holds every
/// acknowledged write. In-flight registrations that landed join the model.
fn check_files_after_kill(
    model: &mut Model,
    place: &Place,
    cycle: usize,
    maybe: &[MaybeRegistered],
    new_blacklisted: &[Blacklisted],
) {
    let db = place.db();
    let copy_dir = place.path(&format!("copy-{cycle}"));
    std::fs::create_dir(&copy_dir).expect("create the copy dir");
    let copy = copy_dir.join("d.sqlite3");
    std::fs::copy(&db, &copy).expect("copy the database");
    let wal = sidecar(&db, "-wal");
    if wal.exists() {
        std::fs::copy(&wal, sidecar(&copy, "-wal")).expect("copy the WAL");
    }
    let conn = rusqlite::Connection::open(&copy).expect("open the copy");
    let check = integrity_check(&conn);
    model.check(check == "ok", || {
        format!("cycle {cycle}: integrity_check after SIGKILL: {check}")
    });

    let rows: HashMap<i64, (String, i64, String)> = conn
        .prepare("SELECT id, username, level, status FROM users")
        .expect("prepare")
        .query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?, r.get(3)?))))
        .expect("query users")
        .collect::<Result<_, _>>()
        .expect("read users");

    for i in 0..model.accounts.len() {
        let acct = model.accounts[i].clone();
        let row = rows.get(&acct.id).cloned();
        model.check(row.is_some(), || {
            format!(
                "cycle {cycle}: user {} (id {}) is gone after SIGKILL{}",
                acct.username,
                acct.id,
                if acct.is_new {
                    " (its registration got a 201)"
                } else {
                    ""
                }
            )
        });
        let (username, level, status) = row.unwrap_or_default();
        model.check(username == acct.username, || {
            format!(
                "cycle {cycle}: id {} is {username:?}, not {:?}",
                acct.id, acct.username
            )
        });
        let allowed = acct.allowed_levels();
        model.check(allowed.contains(&level), || {
            format!(
                "cycle {cycle}: {} has level {level} after SIGKILL; acknowledged {:?} of sent {:?} \
                 (verified before: {}), so it may only be one of {allowed:?}",
                acct.username,
                acct.level_acked.map(|i| acct.level_sent[i]),
                acct.level_sent,
                acct.level_base
            )
        });
        let want_status = if level == acct.level_base {
            acct.status_base.clone()
        } else {
            status_of(level).to_owned()
        };
        model.check(status == want_status, || {
            format!(
                "cycle {cycle}: {} has level {level} with status {status:?}; that write sent {want_status:?}",
                acct.username
            )
        });
        if acct
            .level_acked
            .map_or(acct.level_base, |i| acct.level_sent[i])
            != level
        {
            model.landed_levels += 1;
        }
        let acct = &mut model.accounts[i];
        acct.level_base = level;
        acct.status_base = status;
        acct.level_sent.clear();
        acct.level_acked = None;
    }

    for pending in maybe {
        let found = rows
            .iter()
            .find(|(_, (name, _, _))| *name == pending.username)
            .map(|(id, (_, level, status))| (*id, *level, status.clone()));
        if let Some((id, level, status)) = found {
            model.check(level == 1 && status == "offline", || {
                format!(
                    "cycle {cycle}: in-flight registration {id} landed as level {level} {status}"
                )
            });
            model.landed_in_flight += 1;
            model.accounts.push(Acct::new(
                id,
                pending.username.clone(),
                pending.email.clone(),
                pending.password.clone(),
                1,
            ));
        }
    }
    let known = model.accounts.len();
    model.check(rows.len() == known, || {
        format!(
            "cycle {cycle}: {} user rows, but {known} registrations got a 201 or landed in flight",
            rows.len()
        )
    });

    for b in new_blacklisted {
        let revoked: Option<bool> = conn
            .query_row(
                "SELECT revoked FROM refresh_tokens WHERE jti = ?1",
                [&b.jti],
                |r| r.get(0),
            )
            .ok();
        model.check(revoked == Some(true), || {
            format!(
                "cycle {cycle}: blacklisted token {} of user {} is {revoked:?} in refresh_tokens",
                b.jti, b.user_id
            )
        });
    }
    drop(conn);
    let _ = std::fs::remove_dir_all(&copy_dir);
}

/// After the restart: the server serves, exactly one of the passwords that
/// may be current logs in (one from the last acknowledged change on), and
/// blacklisted refresh tokens are refused as blacklisted.
async fn check_server_after_restart(
    model: &mut Model,
    server: &Server,
    cycle: usize,
    new_blacklisted: &[Blacklisted],
    rng: &mut StdRng,
) {
    let http = client();
    let health = call(&http, Method::GET, &server.url("/api/health"), None, None).await;
    model.check(
        matches!(&health, Ok((StatusCode::OK, body)) if *body == json!({"status": "ok"})),
        || format!("cycle {cycle}: /api/health after the restart: {health:?}"),
    );

    let login_url = server.url("/api/token");
    for i in 0..model.accounts.len() {
        let acct = model.accounts[i].clone();
        if acct.pw_sent.is_empty() && !acct.is_new {
            continue;
        }
        let mut working = Vec::new();
        for candidate in acct.allowed_passwords() {
            let body = json!({"username": acct.username, "password": candidate});
            let reply = call(&http, Method::POST, &login_url, None, Some(&body))
                .await
                .unwrap_or_else(|e| panic!("cycle {cycle}: login after the restart: {e}"));
            match reply {
                (StatusCode::OK, body) => {
                    let access = body["access"].as_str().expect("access").to_owned();
                    working.push((candidate, access));
                }
                (StatusCode::UNAUTHORIZED, _) => {}
                other => panic!(
                    "cycle {cycle}: login of {} answered {other:?}",
                    acct.username
                ),
            }
        }
        model.check(working.len() == 1, || {
            format!(
                "cycle {cycle}: {} (id {}): {} of the passwords that may be current log in \
                 (acknowledged change {:?}, sent {:?}, verified before {:?}); exactly one must",
                acct.username,
                acct.id,
                working.len(),
                acct.pw_acked.map(|i| &acct.pw_sent[i]),
                acct.pw_sent,
                acct.pw_base
            )
        });
        let (password, access) = working.swap_remove(0);
        if acct.pw_acked.map_or(&acct.pw_base, |i| &acct.pw_sent[i]) != &password {
            model.landed_passwords += 1;
        }
        let acct = &mut model.accounts[i];
        acct.pw_base = password.clone();
        acct.password = password;
        acct.access = Some(access);
        acct.pw_sent.clear();
        acct.pw_acked = None;
        acct.is_new = false;
    }

    // This cycle's blacklistings, and a sample of the earlier ones.
    let earlier = model.blacklisted.len();
    let mut to_check: Vec<Blacklisted> = new_blacklisted.to_vec();
    for _ in 0..earlier.min(8) {
        to_check.push(model.blacklisted[rng.random_range(0..earlier)].clone());
    }
    let refresh_url = server.url("/api/token/refresh");
    for b in &to_check {
        let body = json!({"refresh": b.refresh});
        let reply = call(&http, Method::POST, &refresh_url, None, Some(&body)).await;
        let want = json!({"detail": "Token is blacklisted", "code": "token_not_valid"});
        model.check(
            matches!(&reply, Ok((StatusCode::UNAUTHORIZED, body)) if *body == want),
            || {
                format!(
                    "cycle {cycle}: refresh with blacklisted token {} of user {}: {reply:?}",
                    b.jti, b.user_id
                )
            },
        );
    }
    model.blacklisted.extend_from_slice(new_blacklisted);

    // A sample of accounts read back through the restarted server.
    for _ in 0..model.accounts.len().min(4) {
        let acct = model.accounts[rng.random_range(0..model.accounts.len())].clone();
        let Some(token) = acct.access.as_deref() else {
            continue;
        };
        let reply = call(
            &http,
            Method::GET,
            &server.url("/api/users/me"),
            Some(token),
            None,
        )
        .await
        .unwrap_or_else(|e| panic!("cycle {cycle}: GET /api/users/me: {e}"));
        if reply.0 == StatusCode::UNAUTHORIZED {
            // A token voided by two password changes within one second.
            continue;
        }
        model.check(
            reply.0 == StatusCode::OK
                && reply.1["level"] == acct.level_base
                && reply.1["status"] == acct.status_base.as_str(),
            || {
                format!(
                    "cycle {cycle}: GET /api/users/me of {} after the restart: {reply:?}; the file \
                     holds level {} {}",
                    acct.username, acct.level_base, acct.status_base
                )
            },
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill_at_random_moments() {
    let started = Instant::now();
    let seed: u64 = rand::random();
    println!("crash test seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let place = Place::new();
    let db = place.db();
    let lock = sidecar(&db, ".lock");
    let env = crash_env();
    let mut model = Model::default();
    let mut server = place
        .serve(&db, &env, "serve-0.log")
        .unwrap_or_else(|e| panic!("first start: {e}"));
    let mut cycles = 0;
    let mut load_time = Duration::ZERO;
    loop {
        cycles += 1;
        let cycle = cycles;
        let stop = Arc::new(AtomicBool::new(false));
        let mut shares: Vec<Vec<Acct>> = vec![Vec::new(); TASKS];
        for (i, acct) in std::mem::take(&mut model.accounts).into_iter().enumerate() {
            shares[(i + cycle) % TASKS].push(acct);
        }
        let base = server.url("");
        let tasks: Vec<_> = shares
            .into_iter()
            .enumerate()
            .map(|(t, accounts)| {
                tokio::spawn(load_task(
                    base.clone(),
                    format!("c{cycle}t{t}"),
                    accounts,
                    rng.random(),
                    stop.clone(),
                ))
            })
            .collect();

        let run_for = Duration::from_millis(rng.random_range(100..=600));
        load_time += run_for;
        tokio::time::sleep(run_for).await;
        let killed_at = Instant::now();
        server.kill();
        stop.store(true, Ordering::SeqCst);

        let mut maybe = Vec::new();
        let mut new_blacklisted = Vec::new();
        let mut cut_off = 0;
        for task in tasks {
            let out = tokio::time::timeout(Duration::from_secs(60), task)
                .await
                .unwrap_or_else(|_| {
                    panic!("cycle {cycle}: a load task still runs 60 s after the kill")
                })
                .expect("a load task panicked");
            assert!(
                out.unexpected.is_empty(),
                "cycle {cycle}: unexpected replies under load: {:?}\nserver log:\n{}",
                out.unexpected,
                server.log_text()
            );
            if let Some(at) = out.first_error_at {
                assert!(
                    at >= killed_at,
                    "cycle {cycle}: a request failed {:?} before the kill\nserver log:\n{}",
                    killed_at - at,
                    server.log_text()
                );
            }
            model.accounts.extend(out.accounts);
            model.acks.add(out.acks);
            cut_off += out.cut_off;
            maybe.extend(out.maybe_registered);
            new_blacklisted.extend(out.blacklisted);
        }
        model.cut_off += cut_off;

        // The lock file of the killed server is still there...
        model.check(lock.exists(), || {
            format!("cycle {cycle}: no {} after SIGKILL", lock.display())
        });
        check_files_after_kill(&mut model, &place, cycle, &maybe, &new_blacklisted);
        // ...and does not stop the restart: the OS released the flock.
        server = place
            .serve(&db, &env, &format!("serve-{cycle}.log"))
            .unwrap_or_else(|e| panic!("cycle {cycle}: restart after SIGKILL: {e}"));
        model.checks += 1;
        // The file itself, read beside the restarted server.
        let live =
            rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .expect("open the database read-only");
        let check = integrity_check(&live);
        drop(live);
        model.check(check == "ok", || {
            format!("cycle {cycle}: integrity_check of the file after the restart: {check}")
        });
        check_server_after_restart(&mut model, &server, cycle, &new_blacklisted, &mut rng).await;

        let elapsed = started.elapsed();
        if cycles >= MIN_CYCLES && (elapsed >= SOFT_BUDGET || cycles >= MAX_CYCLES) {
            break;
        }
    }

    // A last graceful stop leaves a whole file.
    server.signal("TERM");
    let status = server.exited(EXIT_TIMEOUT).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "exit after SIGTERM: {status:?}\n{}",
        server.log_text()
    );
    let conn = rusqlite::Connection::open(&db).expect("open the database");
    let check = integrity_check(&conn);
    model.check(check == "ok", || format!("final integrity_check: {check}"));
    assert!(model.cut_off > 0, "no request was ever in flight at a kill");
    let acks = model.acks;
    println!(
        "crash: {cycles} SIGKILL cycles in {:.1} s ({:.1} s of load); {} writes acknowledged \
         ({} registrations, {} level PUT/PATCH, {} password changes, {} blacklistings); \
         {} requests cut off by the kills (landed anyway: {} registrations, {} level writes, {} \
         password changes); {} checks, all passed",
        started.elapsed().as_secs_f64(),
        load_time.as_secs_f64(),
        acks.total(),
        acks.registrations,
        acks.levels,
        acks.passwords,
        acks.blacklists,
        model.cut_off,
        model.landed_in_flight,
        model.landed_levels,
        model.landed_passwords,
        model.checks
    );
}

// --- start-up failures --------------------------------------------------------

/// A command that ran to its end (or was killed for serving or hanging).
#[derive(Debug)]
struct Finished {
    status: Option<ExitStatus>,
    served: bool,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` (stdout and stderr to files in `place`) until it exits,
/// killing it if it prints the "serving on" line or outlives the timeout.
fn run_to_exit(place: &Place, name: &str, mut cmd: Command) -> Finished {
    let out_path = place.path(&format!("{name}.stdout"));
    let err_path = place.path(&format!("{name}.stderr"));
    let mut child = cmd
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("spawn rosterd");
    let deadline = Instant::now() + EXIT_TIMEOUT;
    let mut served = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break Some(status);
        }
        served = std::fs::read_to_string(&out_path)
            .unwrap_or_default()
            .contains("serving on");
        if served || Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    Finished {
        status,
        served: served || stdout.contains("serving on"),
        stdout,
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    }
}

impl Finished {
    /// Asserts: it exited non-zero on its own, served nothing, and wrote
    /// one non-empty line to stderr containing every `all` and one `any`.
    fn refused(&self, what: &str, all: &[&str], any: &[&str]) {
        assert!(
            !self.served,
            "{what}: it served instead of refusing; stdout {:?}; stderr {:?}",
            self.stdout, self.stderr
        );
        let status = self.status.unwrap_or_else(|| {
            panic!(
                "{what}: still running after {EXIT_TIMEOUT:?}; stderr {:?}",
                self.stderr
            )
        });
        assert!(
            !status.success(),
            "{what}: exit {status}; stderr {:?}",
            self.stderr
        );
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "{what}: stderr is not one line: {:?}",
            self.stderr
        );
        for needle in all {
            assert!(
                lines[0].contains(needle),
                "{what}: {needle:?} not in {:?}",
                lines[0]
            );
        }
        let lower = lines[0].to_lowercase();
        assert!(
            any.is_empty() || any.iter().any(|n| lower.contains(n)),
            "{what}: none of {any:?} in {:?}",
            lines[0]
        );
    }
}

/// Creates a valid database at `db` with `rosterd user list`.
fn create_database(place: &Place, db: &Path) {
    let made = run_to_exit(
        place,
        "create",
        place.command(&[], db, &[], &["user", "list"]),
    );
    assert!(
        made.status.is_some_and(|s| s.success()),
        "creating the database: {made:?}"
    );
    assert!(db.exists());
}

/// The effective uid of this process, from /proc.
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Whether `wrapper` can open `file` for writing (without writing).
fn can_open_for_writing(wrapper: &[String], file: &Path) -> bool {
    let mut cmd = match wrapper.split_first() {
        Some((program, rest)) => {
            let mut cmd = Command::new(program);
            cmd.args(rest).arg("sh");
            cmd
        }
        None => Command::new("sh"),
    };
    cmd.args(["-c", ": >> \"$1\"", "sh"])
        .arg(file)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Clears the immutable flag again when dropped.
struct Immutable(PathBuf);

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

/// Makes `db` read-only for the server: mode 0444, and for root (who
/// ignores modes) a server without CAP_DAC_OVERRIDE (`setpriv`), else the
/// immutable flag (`chattr +i`). Returns the command wrapper and the guard,
/// or why it cannot be done here.
fn make_read_only(db: &Path) -> Result<(Vec<String>, Option<Immutable>), String> {
    std::fs::set_permissions(db, std::fs::Permissions::from_mode(0o444))
        .map_err(|e| format!("chmod 0444: {e}"))?;
    if effective_uid() != Some(0) {
        return if can_open_for_writing(&[], db) {
            Err("a mode-0444 file is still writable to this user".into())
        } else {
            Ok((Vec::new(), None))
        };
    }
    let setpriv: Vec<String> = [
        "setpriv",
        "--bounding-set",
        "-dac_override,-dac_read_search,-fowner,-linux_immutable",
        "--inh-caps=-all",
        "--",
    ]
    .map(String::from)
    .to_vec();
    if !can_open_for_writing(&setpriv, db) {
        return Ok((setpriv, None));
    }
    let flagged = Command::new("chattr")
        .arg("+i")
        .arg(db)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if flagged {
        let guard = Immutable(db.to_path_buf());
        if !can_open_for_writing(&[], db) {
            return Ok((Vec::new(), Some(guard)));
        }
    }
    Err(
        "running as root, and neither `setpriv` (dropping CAP_DAC_OVERRIDE) nor \
         `chattr +i` makes the file unwritable here"
            .into(),
    )
}

#[test]
fn serve_refuses_a_read_only_database_in_one_line() {
    let place = Place::new();
    let db = place.db();
    create_database(&place, &db);
    let (wrapper, _guard) = match make_read_only(&db) {
        Ok(way) => way,
        Err(reason) => {
            println!("SKIPPED serve_refuses_a_read_only_database_in_one_line: {reason}");
            return;
        }
    };
    let before = std::fs::read(&db).expect("read the database");
    let cmd = place.command(&wrapper, &db, &[], &["serve", "--bind", "127.0.0.1:0"]);
    let finished = run_to_exit(&place, "serve-ro", cmd);
    finished.refused(
        "serve on a read-only database",
        &[db.to_str().expect("UTF-8 path")],
        &[
            "read-only",
            "readonly",
            "read only",
            "permission",
            "not writable",
        ],
    );
    assert_eq!(
        std::fs::read(&db).expect("read the database"),
        before,
        "the file changed"
    );
}

#[test]
fn serve_refuses_a_database_whose_directory_is_missing_in_one_line() {
    let place = Place::new();
    let missing = place.path("xyz-missing-dir");
    let db = missing.join("db.sqlite3");
    let cmd = place.command(&[], &db, &[], &["serve", "--bind", "127.0.0.1:0"]);
    let finished = run_to_exit(&place, "serve-missing", cmd);
    finished.refused(
        "serve with a missing directory",
        &[db.to_str().expect("UTF-8 path"), "does not exist"],
        &[],
    );
    assert!(!missing.exists(), "the missing directory was created");
}

#[tokio::test]
async fn serve_refuses_a_database_served_by_another_process_and_the_first_keeps_serving() {
    let place = Place::new();
    let db = place.db();
    let env = crash_env();
    let mut first = place
        .serve(&db, &env, "first.log")
        .unwrap_or_else(|e| panic!("first server: {e}"));

    let cmd = place.command(&[], &db, &[], &["serve", "--bind", "127.0.0.1:0"]);
    // The first server is another process: blocking here stalls nothing.
    let finished = run_to_exit(&place, "serve-second", cmd);
    finished.refused(
        "a second serve on a served database",
        &[db.to_str().expect("UTF-8 path")],
        &["in use", "locked"],
    );

    let http = client();
    let health = call(&http, Method::GET, &first.url("/api/health"), None, None).await;
    assert!(
        matches!(&health, Ok((StatusCode::OK, body)) if *body == json!({"status": "ok"})),
        "the first server after the refusal: {health:?}"
    );
    let body = json!({"username": "still-here", "email": "still@example.com",
                      "password": "violet-still-serving-meadow"});
    let created = call(
        &http,
        Method::POST,
        &first.url("/api/users"),
        None,
        Some(&body),
    )
    .await;
    assert!(
        matches!(&created, Ok((StatusCode::CREATED, _))),
        "a write to the first server after the refusal: {created:?}"
    );
    first.signal("TERM");
    let status = first.exited(EXIT_TIMEOUT).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "first server exit: {status:?}"
    );
}

/// Files that are not SQLite databases: random bytes and text.
fn not_databases(place: &Place) -> Vec<PathBuf> {
    let mut random = vec![0u8; 8192];
    rand::rng().fill(&mut random[..]);
    let text = "this is a plain text file, not a database\n".repeat(200);
    let mut files = Vec::new();
    for (name, bytes) in [("random.bin", random), ("text.txt", text.into_bytes())] {
        let path = place.path(name);
        std::fs::write(&path, bytes).expect("write the file");
        files.push(path);
    }
    files
}

#[test]
fn serve_refuses_a_file_that_is_not_a_database_and_leaves_it_alone() {
    let place = Place::new();
    for (i, file) in not_databases(&place).iter().enumerate() {
        let before = std::fs::read(file).expect("read");
        let cmd = place.command(&[], file, &[], &["serve", "--bind", "127.0.0.1:0"]);
        let finished = run_to_exit(&place, &format!("serve-junk-{i}"), cmd);
        finished.refused(
            &format!("serve on {}", file.display()),
            &[file.to_str().expect("UTF-8 path")],
            &["not a database"],
        );
        assert_eq!(
            std::fs::read(file).expect("read"),
            before,
            "{} changed",
            file.display()
        );
    }
}

#[test]
fn user_list_refuses_a_file_that_is_not_a_database_and_leaves_it_alone() {
    let place = Place::new();
    for (i, file) in not_databases(&place).iter().enumerate() {
        let before = std::fs::read(file).expect("read");
        let cmd = place.command(&[], file, &[], &["user", "list"]);
        let finished = run_to_exit(&place, &format!("list-junk-{i}"), cmd);
        finished.refused(
            &format!("user list on {}", file.display()),
            &[file.to_str().expect("UTF-8 path")],
            &["not a database"],
        );
        assert_eq!(
            std::fs::read(file).expect("read"),
            before,
            "{} changed",
            file.display()
        );
    }
}

// --- graceful shutdown under load ------------------------------------------

/// Slow logins: each hashes at this count.
const SLOW_ITERATIONS: &str = "600000";
const SLOW_LOGINS: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_answers_every_accepted_request_exits_0_and_checkpoints() {
    let place = Place::new();
    let db = place.db();
    let env = [
        ("ROSTERD_RATE_LIMIT_ENABLED", "false"),
        ("ROSTERD_AUTH_PBKDF2_ITERATIONS", SLOW_ITERATIONS),
        // Under rotation a login records its refresh token: a write.
        ("ROSTERD_AUTH_ROTATE_REFRESH_TOKENS", "true"),
    ];
    let mut server = place
        .serve(&db, &env, "serve.log")
        .unwrap_or_else(|e| panic!("start: {e}"));
    let http = client();
    let password = "violet-graceful-meadow";
    let body = json!({"username": "slow", "email": "slow@example.com", "password": password});
    let created = call(
        &http,
        Method::POST,
        &server.url("/api/users"),
        None,
        Some(&body),
    )
    .await;
    assert!(
        matches!(&created, Ok((StatusCode::CREATED, _))),
        "{created:?}"
    );
    let wal = sidecar(&db, "-wal");
    let wal_before = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    assert!(
        wal_before > 0,
        "the registration left nothing in the WAL to checkpoint"
    );

    // Each login on its own connection; half with the right password.
    let done = Arc::new(AtomicUsize::new(0));
    let sent_at = Instant::now();
    let url = server.url("/api/token");
    let logins: Vec<_> = (0..SLOW_LOGINS)
        .map(|i| {
            let right = i % 2 == 0;
            let body = json!({"username": "slow",
                              "password": if right { password } else { "violet-wrong-meadow" }});
            let (url, done) = (url.clone(), done.clone());
            tokio::spawn(async move {
                // Queued behind the others' hashes: a generous timeout.
                let patient = reqwest::Client::builder()
                    .timeout(Duration::from_secs(60))
                    .build()
                    .expect("client");
                let reply = call(&patient, Method::POST, &url, None, Some(&body)).await;
                done.fetch_add(1, Ordering::SeqCst);
                (right, reply)
            })
        })
        .collect();
    // Let every request reach the server: the first reply means the
    // hashing is under way; half as long again is margin for the accepts
    // while the rest queue for the hashing slots (one per core). Then
    // SIGTERM with those in flight.
    let deadline = Instant::now() + Duration::from_secs(30);
    while done.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let first_reply = sent_at.elapsed();
    tokio::time::sleep((first_reply / 2).max(Duration::from_millis(50))).await;
    let in_flight = SLOW_LOGINS - done.load(Ordering::SeqCst);
    server.signal("TERM");
    let terminated_at = Instant::now();

    // Nothing new is accepted once the signal is handled.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let late = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client")
        .get(server.url("/api/health"))
        .send()
        .await;
    assert!(
        late.is_err(),
        "a new connection 500 ms after SIGTERM was served: {late:?}"
    );

    let mut answered = Vec::new();
    for login in logins {
        let (right, reply) = tokio::time::timeout(Duration::from_secs(90), login)
            .await
            .expect("a login still waits 90 s after SIGTERM")
            .expect("a login task panicked");
        let want = if right {
            StatusCode::OK
        } else {
            StatusCode::UNAUTHORIZED
        };
        match reply {
            Ok((status, body)) if status == want => answered.push(body),
            other => panic!(
                "a login in flight at SIGTERM got {other:?}, not {want}\nserver log:\n{}",
                server.log_text()
            ),
        }
    }
    let status = server.exited(EXIT_TIMEOUT).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "exit after SIGTERM: {status:?}\nserver log:\n{}",
        server.log_text()
    );
    let drained_in = terminated_at.elapsed();
    assert!(
        in_flight >= 5,
        "only {in_flight} of {SLOW_LOGINS} logins were in flight at SIGTERM: raise SLOW_ITERATIONS"
    );

    let wal_after = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    assert_eq!(wal_after, 0, "the WAL was not checkpointed at exit");
    let conn =
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open the database");
    assert_eq!(integrity_check(&conn), "ok");
    // The logins that got a 200 recorded their refresh tokens.
    for body in answered.iter().filter(|b| b["refresh"].is_string()) {
        let jti = claims(body["refresh"].as_str().expect("refresh"))["jti"]
            .as_str()
            .expect("jti")
            .to_owned();
        let found: i64 = conn
            .query_row(
                "SELECT count(*) FROM refresh_tokens WHERE jti = ?1",
                [&jti],
                |r| r.get(0),
            )
            .expect("query refresh_tokens");
        assert_eq!(
            found, 1,
            "the refresh token {jti} of an answered login is not in the file"
        );
    }
    println!(
        "graceful: {in_flight} of {SLOW_LOGINS} logins in flight at SIGTERM, all answered \
         (200/401), exit 0 {:.1} s after SIGTERM (first reply after {:.2} s), WAL {wal_before} \
         -> {wal_after} bytes",
        drained_in.as_secs_f64(),
        first_reply.as_secs_f64()
    );
}
