//! The `rosterd` command line, run as the real binary: `init`, the `user`
//! commands, the refusals at start, and `serve` with its signals.
//!
//! Every test runs in its own temp dir with a cleared environment (HOME and
//! the XDG dirs inside it), so nothing from the developer's machine leaks in.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use rosterd::auth::password;
use rosterd::config::EXAMPLE_SECRET;
use tempfile::TempDir;

use crate::helpers::RunningServer;

const BIN: &str = env!("CARGO_BIN_EXE_rosterd");
const PASSWORD: &str = "correct-horse-battery";
const SECRET: &str = "a-test-secret-that-is-long-enough-0123456789";
const TIMEOUT: Duration = Duration::from_secs(20);

/// One test's private world: a temp dir holding HOME, the XDG dirs, the
/// config (`c.toml`) and the database (`d.sqlite3`).
struct World {
    dir: TempDir,
    extra_env: Vec<(String, String)>,
}

impl World {
    fn new() -> Self {
        let world = World {
            dir: tempfile::tempdir().unwrap(),
            extra_env: vec![("ROSTERD_AUTH_PBKDF2_ITERATIONS".into(), "1000".into())],
        };
        for sub in ["home", "xdg-config", "xdg-data"] {
            std::fs::create_dir(world.path(sub)).unwrap();
        }
        world
    }

    /// A world whose `c.toml` holds a valid secret.
    fn with_config() -> Self {
        let world = World::new();
        world.write_config(&format!("[auth]\nsecret = \"{SECRET}\"\n"));
        world
    }

    fn env(mut self, name: &str, value: &str) -> Self {
        self.extra_env.retain(|(n, _)| n != name);
        self.extra_env.push((name.into(), value.into()));
        self
    }

    fn without_env(mut self, name: &str) -> Self {
        self.extra_env.retain(|(n, _)| n != name);
        self
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn config(&self) -> PathBuf {
        self.path("c.toml")
    }

    fn db(&self) -> PathBuf {
        self.path("d.sqlite3")
    }

    fn write_config(&self, text: &str) {
        std::fs::write(self.config(), text).unwrap();
    }

    /// The isolated environment, applied to any kind of command.
    fn isolate(&self, cmd: &mut std::process::Command) {
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.path("home"))
            .env("XDG_CONFIG_HOME", self.path("xdg-config"))
            .env("XDG_DATA_HOME", self.path("xdg-data"))
            .envs(self.extra_env.iter().map(|(k, v)| (k, v)))
            .current_dir(self.dir.path());
    }

    /// `rosterd ARGS` with no `--config`/`--db`.
    fn bare(&self, args: &[&str]) -> assert_cmd::Command {
        let mut std_cmd = std::process::Command::new(BIN);
        self.isolate(&mut std_cmd);
        std_cmd.args(args);
        let mut cmd = assert_cmd::Command::from_std(std_cmd);
        cmd.timeout(TIMEOUT).write_stdin("");
        cmd
    }

    /// `rosterd --config C --db D ARGS`.
    fn cmd(&self, args: &[&str]) -> assert_cmd::Command {
        let mut cmd = self.bare(&[]);
        cmd.arg("--config")
            .arg(self.config())
            .arg("--db")
            .arg(self.db())
            .args(args);
        cmd
    }

    /// `user create` with `password` on stdin; returns the output.
    fn create(&self, username: &str, email: &str, pw: &str, extra: &[&str]) -> Output {
        let mut args = vec!["user", "create", "--username", username, "--email", email];
        args.extend(["--password-stdin"]);
        args.extend_from_slice(extra);
        run(self.cmd(&args).write_stdin(format!("{pw}\n")))
    }

    /// (username, email, password_hash, is_staff, is_active) of every row;
    /// none when the database file was never created.
    fn users(&self) -> Vec<(String, String, String, i64, i64)> {
        if !self.db().exists() {
            return Vec::new();
        }
        let conn = rusqlite::Connection::open(self.db()).unwrap();
        let mut stmt = conn
            .prepare(
                "SELECT username, email, password_hash, is_staff, is_active FROM users ORDER BY id",
            )
            .unwrap();
        stmt.query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
    }

    /// Spawns `rosterd [--config C --db D] serve --bind 127.0.0.1:0` and
    /// waits (bounded) for its "serving on" line.
    fn serve(&self, explicit_paths: bool) -> Server {
        let mut cmd = std::process::Command::new(BIN);
        self.isolate(&mut cmd);
        if explicit_paths {
            cmd.arg("--config")
                .arg(self.config())
                .arg("--db")
                .arg(self.db());
        }
        let log = self.path("serve.log");
        let child = cmd
            .args(["serve", "--bind", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Server::wait_for(child, log, TIMEOUT)
    }
}

/// What a finished command left behind.
struct Output {
    success: bool,
    stdout: String,
    stderr: String,
}

fn run(mut cmd: impl std::borrow::BorrowMut<assert_cmd::Command>) -> Output {
    let out = cmd
        .borrow_mut()
        .output()
        .expect("rosterd ran (and finished within the timeout)");
    Output {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

impl Output {
    fn ok(self) -> Self {
        assert!(self.success, "expected success; stderr: {}", self.stderr);
        self
    }

    /// Asserts a failure whose stderr contains every `needle`.
    fn fails_with(self, needles: &[&str]) -> Self {
        assert!(!self.success, "expected failure; stdout: {}", self.stdout);
        for needle in needles {
            assert!(
                self.stderr.contains(needle),
                "{needle:?} not in {}",
                self.stderr
            );
        }
        self
    }

    /// Like [`Output::fails_with`], and stderr is a single line.
    fn fails_saying(self, needles: &[&str]) -> Self {
        let out = self.fails_with(needles);
        assert_eq!(out.stderr.trim_end().lines().count(), 1, "{}", out.stderr);
        out
    }
}

/// A running `rosterd serve`, killed on drop.
type Server = RunningServer;

/// GET /api/health: (status, JSON body).
fn health(server: &Server) -> (u16, serde_json::Value) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let reply = client.get(server.url("/api/health")).send().await.unwrap();
        let status = reply.status().as_u16();
        (status, reply.json().await.unwrap())
    })
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The value of the `secret = "..."` line of a config text.
fn secret_of(text: &str) -> &str {
    text.lines()
        .find_map(|l| l.strip_prefix("secret = \"")?.strip_suffix('"'))
        .unwrap_or_else(|| panic!("no secret line in {text}"))
}

fn assert_fresh_secret(text: &str) {
    assert!(text.contains("[auth]"), "{text}");
    let secret = secret_of(text);
    assert_eq!(secret.len(), 64, "{secret}");
    assert!(secret.bytes().all(|b| b.is_ascii_hexdigit()), "{secret}");
}

#[test]
fn init_writes_a_private_config_with_a_fresh_random_secret() {
    let world = World::new();
    let config = world.path("sub/c.toml");
    let out = run(world.bare(&["--config", config.to_str().unwrap(), "init"])).ok();
    assert!(out.stdout.contains("c.toml"), "{}", out.stdout);
    assert_eq!(mode(&config), 0o600);
    let text = std::fs::read_to_string(&config).unwrap();
    assert_fresh_secret(&text);

    let other = world.path("other.toml");
    run(world.bare(&["--config", other.to_str().unwrap(), "init"])).ok();
    let other_text = std::fs::read_to_string(&other).unwrap();
    assert_ne!(secret_of(&text), secret_of(&other_text), "secrets repeat");
}

#[test]
fn init_refuses_to_overwrite_an_existing_config() {
    let world = World::new();
    let config = world.config();
    run(world.bare(&["--config", config.to_str().unwrap(), "init"])).ok();
    let before = std::fs::read(&config).unwrap();
    run(world.bare(&["--config", config.to_str().unwrap(), "init"]))
        .fails_saying(&["already exists"]);
    assert_eq!(std::fs::read(&config).unwrap(), before);
}

#[test]
fn user_create_stores_a_hashed_password_and_the_staff_flag() {
    let world = World::with_config();
    let out = world
        .create("alice", "alice@example.com", PASSWORD, &[])
        .ok();
    assert!(out.stdout.contains("alice"), "{}", out.stdout);
    world
        .create("bob", "bob@example.com", PASSWORD, &["--staff"])
        .ok();

    let users = world.users();
    assert_eq!(users.len(), 2);
    let (name, email, hash, staff, active) = &users[0];
    assert_eq!(
        (name.as_str(), email.as_str()),
        ("alice", "alice@example.com")
    );
    assert!(hash.starts_with("$pbkdf2-sha256$"), "{hash}");
    assert!(
        password::verify(PASSWORD, hash),
        "stored hash is not of the piped password"
    );
    assert_eq!((*staff, *active), (0, 1));
    assert_eq!((users[1].0.as_str(), users[1].3), ("bob", 1));
    assert_ne!(users[0].2, users[1].2, "same password, same salt");
}

#[test]
fn user_create_uses_the_configured_iteration_count_and_600000_by_default() {
    let world = World::with_config();
    world
        .create("alice", "alice@example.com", PASSWORD, &[])
        .ok();
    let world = world.without_env("ROSTERD_AUTH_PBKDF2_ITERATIONS");
    world.create("bob", "bob@example.com", PASSWORD, &[]).ok();
    let users = world.users();
    assert!(users[0].2.contains("i=1000,"), "{}", users[0].2);
    assert!(users[1].2.contains("i=600000,"), "{}", users[1].2);
}

#[test]
fn user_create_refuses_a_taken_username_in_any_case() {
    let world = World::with_config();
    world
        .create("alice", "alice@example.com", PASSWORD, &[])
        .ok();
    for name in ["alice", "ALICE", "Alice"] {
        world
            .create(name, &format!("{name}2@example.org"), PASSWORD, &[])
            .fails_saying(&["username"]);
    }
    world
        .create("carol", "ALICE@example.com", PASSWORD, &[])
        .fails_saying(&["email"]);
    assert_eq!(world.users().len(), 1);
}

#[test]
fn user_create_refuses_a_weak_password() {
    let world = World::with_config();
    for weak in ["123", "password", ""] {
        world
            .create("alice", "alice@example.com", weak, &[])
            .fails_saying(&["password"]);
    }
    assert_eq!(world.users().len(), 0);
}

#[test]
fn user_create_refuses_an_invalid_email() {
    let world = World::with_config();
    for email in ["not-an-email", "alice@", "@example.com"] {
        world
            .create("alice", email, PASSWORD, &[])
            .fails_saying(&["email"]);
    }
    assert_eq!(world.users().len(), 0);
}

#[test]
fn user_create_without_password_stdin_and_no_terminal_says_to_use_it() {
    let world = World::with_config();
    let args = [
        "user",
        "create",
        "--username",
        "alice",
        "--email",
        "alice@example.com",
    ];
    run(world.cmd(&args).write_stdin(format!("{PASSWORD}\n"))).fails_saying(&["--password-stdin"]);
    assert_eq!(world.users().len(), 0);
}

#[test]
fn user_set_password_replaces_the_hash() {
    let world = World::with_config();
    world
        .create("alice", "alice@example.com", PASSWORD, &[])
        .ok();
    let before = world.users()[0].2.clone();
    let args = [
        "user",
        "set-password",
        "--username",
        "Alice",
        "--password-stdin",
    ];
    let out = run(world.cmd(&args).write_stdin("another-long-passphrase\n")).ok();
    assert!(out.stdout.contains("alice"), "{}", out.stdout);
    let after = world.users()[0].2.clone();
    assert_ne!(before, after);
    assert!(after.starts_with("$pbkdf2-sha256$"), "{after}");
    assert!(password::verify("another-long-passphrase", &after));
    assert!(!password::verify(PASSWORD, &after));
}

#[test]
fn user_set_password_refuses_an_unknown_user_or_a_weak_password() {
    let world = World::with_config();
    world
        .create("alice", "alice@example.com", PASSWORD, &[])
        .ok();
    let before = world.users();
    let args = [
        "user",
        "set-password",
        "--username",
        "mallory",
        "--password-stdin",
    ];
    run(world.cmd(&args).write_stdin("another-long-passphrase\n")).fails_saying(&["mallory"]);
    let args = [
        "user",
        "set-password",
        "--username",
        "alice",
        "--password-stdin",
    ];
    run(world.cmd(&args).write_stdin("123\n")).fails_saying(&["password"]);
    let args = ["user", "set-password", "--username", "alice"];
    run(world.cmd(&args).write_stdin("another-long-passphrase\n"))
        .fails_saying(&["--password-stdin"]);
    assert_eq!(world.users(), before);
}

#[test]
fn user_list_prints_a_header_and_one_tab_separated_line_per_user() {
    let world = World::with_config();
    let out = run(world.cmd(&["user", "list"])).ok();
    let header = "id\tusername\temail\tlevel\tstatus\tstaff\tactive\tcreated_at";
    assert_eq!(out.stdout, format!("{header}\n"));

    world
        .create("alice", "alice@example.com", PASSWORD, &["--staff"])
        .ok();
    world.create("bob", "bob@example.com", PASSWORD, &[]).ok();
    rusqlite::Connection::open(world.db())
        .unwrap()
        .execute("UPDATE users SET is_active = 0 WHERE username = 'bob'", [])
        .unwrap();
    let out = run(world.cmd(&["user", "list"])).ok();
    let lines: Vec<Vec<&str>> = out
        .stdout
        .lines()
        .map(|l| l.split('\t').collect())
        .collect();
    assert_eq!(lines.len(), 3, "{}", out.stdout);
    assert_eq!(lines[0].join("\t"), header);
    let expected = [
        ["alice", "alice@example.com", "1", "offline", "yes", "yes"],
        ["bob", "bob@example.com", "1", "offline", "no", "no"],
    ];
    for (line, want) in lines[1..].iter().zip(expected) {
        assert_eq!(line.len(), 8, "{line:?}");
        assert!(line[0].parse::<i64>().is_ok(), "{line:?}");
        assert_eq!(line[1..7], want, "{line:?}");
        assert!(line[7].starts_with("20"), "{line:?}");
    }
}

#[test]
fn serve_refuses_a_missing_short_or_example_secret() {
    let cases = [
        ("[server]\n".to_owned(), None),
        ("[auth]\nsecret = \"short\"\n".to_owned(), None),
        (format!("[auth]\nsecret = \"{EXAMPLE_SECRET}\"\n"), None),
        (format!("[auth]\nsecret = \"{SECRET}\"\n"), Some("short")),
    ];
    for (config, env_secret) in cases {
        let mut world = World::new();
        if let Some(secret) = env_secret {
            world = world.env("ROSTERD_SECRET", secret);
        }
        world.write_config(&config);
        let out = run(world.cmd(&["serve", "--bind", "127.0.0.1:0"]));
        assert!(!out.success, "{config}: started; stdout: {}", out.stdout);
        assert!(!out.stdout.contains("serving on"), "{}", out.stdout);
        assert!(
            out.stderr.contains("rosterd init") && out.stderr.contains("secret"),
            "{config}: {}",
            out.stderr
        );
        assert!(!world.db().exists(), "{config}: database created");
    }
}

#[test]
fn a_database_from_a_newer_rosterd_is_refused_and_left_alone() {
    let world = World::new().env("ROSTERD_SECRET", SECRET);
    world.write_config("# empty\n");
    rusqlite::Connection::open(world.db())
        .unwrap()
        .pragma_update(None, "user_version", 999)
        .unwrap();
    let before = std::fs::read(world.db()).unwrap();
    for args in [&["serve", "--bind", "127.0.0.1:0"][..], &["user", "list"]] {
        let out = run(world.cmd(args)).fails_with(&["newer"]);
        assert!(!out.stdout.contains("serving on"), "{}", out.stdout);
        assert_eq!(
            std::fs::read(world.db()).unwrap(),
            before,
            "{args:?} changed it"
        );
    }
}

#[test]
fn an_unknown_rosterd_environment_variable_is_named_and_refused() {
    let world = World::with_config().env("ROSTERD_AUTH_SECRT", "x");
    for args in [&["user", "list"][..], &["serve", "--bind", "127.0.0.1:0"]] {
        run(world.cmd(args)).fails_with(&["ROSTERD_AUTH_SECRT"]);
    }
    assert!(!world.db().exists());
}

#[test]
fn a_config_flag_naming_a_missing_file_suggests_init() {
    let world = World::new();
    for args in [&["user", "list"][..], &["serve", "--bind", "127.0.0.1:0"]] {
        run(world.cmd(args)).fails_with(&["c.toml", "init"]);
    }
    assert!(!world.config().exists());
    assert!(!world.db().exists());
}

fn serves_and_stops_on(signal: &str) {
    let world = World::with_config();
    let mut server = world.serve(true);
    let line = server.stdout.last().unwrap();
    assert!(line.contains(world.db().to_str().unwrap()), "{line}");
    assert!(line.contains(world.config().to_str().unwrap()), "{line}");
    assert_eq!(health(&server), (200, serde_json::json!({"status": "ok"})));
    let status = server.stop(signal, Duration::from_secs(10));
    assert!(status.success(), "SIG{signal}: {status}");
    let wal = world.path("d.sqlite3-wal");
    assert!(
        !wal.exists() || std::fs::metadata(&wal).unwrap().len() == 0,
        "WAL left over"
    );
}

#[test]
fn serve_answers_health_and_exits_cleanly_on_sigterm() {
    serves_and_stops_on("TERM");
}

#[test]
fn serve_answers_health_and_exits_cleanly_on_sigint() {
    serves_and_stops_on("INT");
}

#[test]
fn a_first_serve_with_no_config_creates_one_and_a_database_in_the_platform_dirs() {
    let world = World::new();
    let config = world.path("xdg-config/rosterd/config.toml");
    let db = world.path("xdg-data/rosterd/rosterd.sqlite3");
    let mut server = world.serve(false);
    let stdout = server.stdout.join("\n");
    assert!(stdout.contains(config.to_str().unwrap()), "{stdout}");
    assert!(stdout.contains(db.to_str().unwrap()), "{stdout}");
    assert_eq!(mode(&config), 0o600);
    let text = std::fs::read_to_string(&config).unwrap();
    assert_fresh_secret(&text);
    assert!(db.is_file());
    assert_eq!(health(&server), (200, serde_json::json!({"status": "ok"})));
    assert!(server.stop("TERM", Duration::from_secs(10)).success());

    // The second start finds and keeps them.
    let mut server = world.serve(false);
    assert!(
        !server.stdout.join("\n").contains("first run"),
        "{:?}",
        server.stdout
    );
    assert_eq!(std::fs::read_to_string(&config).unwrap(), text);
    assert_eq!(health(&server).0, 200);
    assert!(server.stop("TERM", Duration::from_secs(10)).success());
}
