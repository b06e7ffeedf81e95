//! What each command of the command line does: config and file locations,
//! `serve`, `init`, `backup`, `restore`, `doctor`, `import` and the `user`
//! commands.

mod copy_db;
mod doctor;
mod import;
mod keys;

use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use anyhow::{Context, bail};

use crate::auth::password;
use crate::cli::{Cli, Command, UserCommand};
use crate::config::{self, Config, Secret};
use crate::model::{self, NewUser, Required, Status};
use crate::{AppState, db, logging};

/// Where the config and the database live when not given.
struct Locations {
    config: PathBuf,
    config_is_default: bool,
    data_dir: Option<PathBuf>,
}

fn project_dirs() -> Option<directories::ProjectDirs> {
    directories::ProjectDirs::from("org", "rosterd", "rosterd")
}

fn locations(cli: &Cli) -> Locations {
    let dirs = project_dirs();
    let explicit = cli
        .config
        .clone()
        .or_else(|| std::env::var_os("ROSTERD_CONFIG").map(PathBuf::from));
    let (config, config_is_default) = match explicit {
        Some(path) => (path, false),
        // Without a home directory (a bare container, `env -i`), the
        // environment alone can configure rosterd; a config file, if any,
        // is looked for in the working directory.
        None => match &dirs {
            Some(dirs) => (dirs.config_dir().join("config.toml"), true),
            None => (PathBuf::from("rosterd.toml"), true),
        },
    };
    Locations {
        config,
        config_is_default,
        data_dir: dirs.map(|d| d.data_dir().to_path_buf()),
    }
}

/// Loads the config (defaults < file < environment < `--db`) and settles
/// the database path, creating only the platform default data directory.
fn load_config(cli: &Cli, locations: &Locations) -> anyhow::Result<Config> {
    if !locations.config_is_default && !locations.config.exists() {
        bail!(
            "config file {} does not exist: create it with `rosterd --config {} init`",
            locations.config.display(),
            locations.config.display()
        );
    }
    let mut config = Config::load(&locations.config)?;
    if let Some(db) = &cli.db {
        config.database.path = Some(db.clone());
    }
    if let Some(url) = &cli.database_url {
        config.database.url = Some(Secret::new(url.clone()));
    }
    let configured = config
        .database
        .path
        .clone()
        .filter(|p| !p.as_os_str().is_empty());
    let path = match configured {
        Some(path) => path,
        None => {
            let dir = locations.data_dir.as_ref().context(
                "cannot find the platform data directory (no home directory?): \
                 pass --db FILE or set ROSTERD_DB",
            )?;
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            dir.join("rosterd.sqlite3")
        }
    };
    config.database.path = Some(path);
    if config
        .auth
        .keys_dir
        .as_ref()
        .is_none_or(|d| d.as_os_str().is_empty())
    {
        let beside = locations
            .config
            .parent()
            .unwrap_or(std::path::Path::new("."));
        config.auth.keys_dir = Some(beside.join("keys"));
    }
    Ok(config)
}

fn database_path(config: &Config) -> PathBuf {
    config.database.path.clone().unwrap_or_default()
}

/// Runs the parsed command line.
pub fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let locations = locations(&cli);
    match &cli.command {
        None => serve(&cli, &locations, None),
        Some(Command::Serve { bind }) => serve(&cli, &locations, bind.clone()),
        Some(Command::Init) => {
            config::write_new_config(&locations.config)?;
            println!(
                "wrote {} with a fresh secret (keep it private)",
                locations.config.display()
            );
            Ok(())
        }
        Some(Command::Backup { file }) => {
            let config = load_config(&cli, &locations)?;
            refuse_on_postgres(&config, "backup")?;
            let db = database_path(&config);
            let users = db::backup(&db, file)?;
            println!(
                "backup written to {} ({users} users), integrity ok",
                file.display()
            );
            Ok(())
        }
        Some(Command::Restore { file }) => {
            let config = load_config(&cli, &locations)?;
            refuse_on_postgres(&config, "restore")?;
            let db = database_path(&config);
            let _lock = db::sqlite::lock(&db).map_err(|_| {
                anyhow::anyhow!(
                    "a rosterd server is using {}: stop it before restoring",
                    db.display()
                )
            })?;
            match db::restore(&db, file)? {
                Some(kept) => println!(
                    "restored {} from {}; the previous database is kept as {}",
                    db.display(),
                    file.display(),
                    kept.display()
                ),
                None => println!("restored {} from {}", db.display(), file.display()),
            }
            Ok(())
        }
        Some(Command::CopyDb { to }) => copy_db::run(&load_config(&cli, &locations)?, to),
        Some(Command::Doctor) => {
            let loaded = load_config(&cli, &locations);
            doctor::run(&locations.config, loaded)
        }
        Some(Command::Import { source }) => {
            let config = load_config(&cli, &locations)?;
            import::run(source, || match db::Target::of(&config.database)? {
                db::Target::Sqlite(options) => db::sqlite::open(&options),
                db::Target::Postgres(_) => bail!(
                    "import writes into a SQLite file: import into one (--db FILE), then move \
                     everyone onto PostgreSQL with `rosterd copy-db`"
                ),
            })
        }
        Some(Command::Keys { command }) => {
            let config = load_config(&cli, &locations)?;
            keys::run(command, &config)
        }
        Some(Command::User { command }) => {
            let config = load_config(&cli, &locations)?;
            user_command(command, &config)
        }
    }
}

fn secret_in_environment() -> bool {
    ["ROSTERD_SECRET", "ROSTERD_AUTH_SECRET"]
        .iter()
        .any(|name| std::env::var_os(name).is_some())
}

fn serve(cli: &Cli, locations: &Locations, bind: Option<String>) -> anyhow::Result<()> {
    if locations.config_is_default && !locations.config.exists() && !secret_in_environment() {
        config::write_new_config(&locations.config)?;
        println!(
            "rosterd: first run: wrote config {} with a fresh secret",
            locations.config.display()
        );
    }
    let mut config = load_config(cli, locations)?;
    let _flush_log = logging::init(&config.log.format);
    if let Some(bind) = bind {
        config.server.bind = bind;
    }
    config.check_secret(&locations.config)?;
    keys::first_key(&config)?;
    let weak_hashing = config.auth.pbkdf2_iterations < config::DEFAULT_PBKDF2_ITERATIONS;
    let db_path = database_path(&config);
    let bind = config.server.bind.clone();
    // Blocking work is a hash (at most one per core) or a short read: one
    // thread more than the hashes may take keeps reads going during a login
    // flood, and so few threads stay busy under load: a read is taken by a
    // thread that just finished one instead of waking a parked one for
    // every read (tokio wakes an idle blocking thread for each task).
    // (On PostgreSQL too: more threads, each waiting on its session, gave
    // no more requests a second and a far longer tail.)
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let blocking_threads = cores + 1;
    let (postgres, shown_db) = match db::Target::of(&config.database)? {
        db::Target::Postgres(options) => (true, db::pg::shown(&options.url)),
        db::Target::Sqlite(options) => (false, options.path.display().to_string()),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(blocking_threads)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        // The lock first, so a second server never touches (or migrates)
        // a database that one is serving. A missing directory is left for
        // the database's own, clearer, error.
        // (Not on PostgreSQL: several nodes share it by design.)
        let _lock = if postgres {
            None
        } else {
            match db::sqlite::lock(&db_path) {
                Ok(lock) => Some(lock),
                Err(_)
                    if !db_path
                        .parent()
                        .is_some_and(|d| d.as_os_str().is_empty() || d.is_dir()) =>
                {
                    None
                }
                Err(_) => anyhow::bail!(
                    "database {} is in use by another rosterd server (lock file {}.lock)",
                    db_path.display(),
                    db_path.display()
                ),
            }
        };
        let state = AppState::new(config)?;
        let listener = tokio::net::TcpListener::bind(&bind)
            .await
            .with_context(|| format!("cannot listen on {bind} (server.bind / --bind)"))?;
        let addr = listener.local_addr()?;
        if weak_hashing {
            tracing::warn!(
                iterations = state.config.auth.pbkdf2_iterations,
                recommended = config::DEFAULT_PBKDF2_ITERATIONS,
                "auth.pbkdf2_iterations is below the recommended count: passwords are cheaper to crack"
            );
        }
        let shutdown = shutdown_signal()?;
        println!(
            "rosterd: serving on http://{addr} (database {shown_db}, config {})",
            locations.config.display()
        );
        tracing::info!(%addr, "listening");
        crate::run(listener, state, shutdown).await
    })
}

/// Installs the SIGINT and SIGTERM handlers now (so a signal that arrives
/// right after the "serving" line is not fatal) and returns a future that
/// resolves on either.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            tracing::info!("shutting down: finishing in-flight requests");
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("shutting down: finishing in-flight requests");
        })
    }
}

/// `backup` and `restore` work on the SQLite file; PostgreSQL has its own
/// tools.
fn refuse_on_postgres(config: &Config, command: &str) -> anyhow::Result<()> {
    if config
        .database
        .url
        .as_ref()
        .is_some_and(|u| !u.expose().is_empty())
    {
        bail!(
            "{command} works on the SQLite file; on PostgreSQL use its own tools \
             (pg_dump to back up, pg_restore or psql to restore)"
        );
    }
    Ok(())
}

/// One connection to the configured database (SQLite or PostgreSQL),
/// migrated.
fn open_db(config: &Config) -> anyhow::Result<db::Pooled> {
    let mut database = config.database.clone();
    database.pool_size = 1;
    Ok(db::Pool::open(&db::Target::of(&database)?, 0)?.get()?)
}

/// Reads a password from standard input (one trailing newline dropped) or
/// prompts twice without echo on a terminal.
fn read_password(from_stdin: bool) -> anyhow::Result<String> {
    if from_stdin {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read the password from standard input")?;
        let text = text
            .strip_suffix('\n')
            .map(|t| t.strip_suffix('\r').unwrap_or(t))
            .unwrap_or(&text);
        return Ok(text.to_owned());
    }
    if !std::io::stdin().is_terminal() {
        bail!("no terminal to prompt for the password: pass --password-stdin and pipe it in");
    }
    let first = rpassword::prompt_password("Password: ")?;
    let second = rpassword::prompt_password("Password (again): ")?;
    if first != second {
        bail!("the two passwords differ");
    }
    Ok(first)
}

fn field_errors_line(errors: &model::FieldErrors) -> String {
    errors
        .iter()
        .map(|(field, messages)| format!("{field}: {}", messages.join(" ")))
        .collect::<Vec<_>>()
        .join("; ")
}

fn find_user(conn: &mut db::Conn<'_>, username: &str) -> anyhow::Result<model::Account> {
    db::users::by_username(conn, username)?.with_context(|| format!("no user named {username:?}"))
}

fn user_command(command: &UserCommand, config: &Config) -> anyhow::Result<()> {
    let iterations = config.auth.pbkdf2_iterations;
    match command {
        UserCommand::Create {
            username,
            email,
            staff,
            password_stdin,
        } => {
            let mut pooled = open_db(config)?;
            let conn = &mut pooled.conn();
            let clear = read_password(*password_stdin)?;
            let body = serde_json::json!({
                "username": username, "email": email, "password": clear,
            });
            let mut parsed = model::parse_user_body(&body, Required::Registration)
                .map_err(|e| anyhow::anyhow!(field_errors_line(&e)))?;
            let (username_taken, email_taken) = db::users::taken(
                conn,
                parsed.changes.username.as_deref(),
                parsed.changes.email.as_deref(),
                None,
            )?;
            parsed.add_taken(username_taken, email_taken);
            if !parsed.errors.is_empty() {
                bail!("{}", field_errors_line(&parsed.errors));
            }
            let (Some(username), Some(email)) = (parsed.changes.username, parsed.changes.email)
            else {
                bail!("username and email are required");
            };
            let new = NewUser {
                username,
                email,
                password_hash: password::hash(&clear, iterations)?,
                level: 1,
                status: Status::Offline,
                profile_picture: String::new(),
                is_staff: *staff,
            };
            let user = db::users::insert(conn, &new, &model::timestamp_now()).map_err(|err| {
                if err.is_unique_violation("users.username") {
                    anyhow::anyhow!("username: {}", model::USERNAME_TAKEN)
                } else if err.is_unique_violation("users.email") {
                    anyhow::anyhow!("email: {}", model::EMAIL_TAKEN)
                } else {
                    err.into()
                }
            })?;
            println!(
                "created user {} (id {}{})",
                user.username,
                user.id,
                if *staff { ", staff" } else { "" }
            );
            Ok(())
        }
        UserCommand::SetPassword {
            username,
            password_stdin,
        } => {
            let mut pooled = open_db(config)?;
            let conn = &mut pooled.conn();
            let account = find_user(conn, username)?;
            let clear = read_password(*password_stdin)?;
            let problems = model::validate::password(
                &clear,
                Some(&account.user.username),
                Some(&account.user.email),
            );
            if !problems.is_empty() {
                bail!("password: {}", problems.join(" "));
            }
            let hash = password::hash(&clear, iterations)?;
            db::users::set_password_hash(
                conn,
                account.user.id,
                &hash,
                model::unix_now(),
                &model::timestamp_now(),
            )?;
            println!(
                "password set for {}; their existing tokens no longer work",
                account.user.username
            );
            Ok(())
        }
        UserCommand::Deactivate { username } | UserCommand::Activate { username } => {
            let active = matches!(command, UserCommand::Activate { .. });
            let mut pooled = open_db(config)?;
            let conn = &mut pooled.conn();
            let account = find_user(conn, username)?;
            db::users::set_active(
                conn,
                account.user.id,
                active,
                model::unix_now(),
                &model::timestamp_now(),
            )?;
            if active {
                println!("activated {}", account.user.username);
            } else {
                println!(
                    "deactivated {}; their tokens no longer work",
                    account.user.username
                );
            }
            Ok(())
        }
        UserCommand::Delete { username } => {
            let mut pooled = open_db(config)?;
            let conn = &mut pooled.conn();
            let account = find_user(conn, username)?;
            db::users::delete(conn, account.user.id)?;
            println!("deleted {} (id {})", account.user.username, account.user.id);
            Ok(())
        }
        UserCommand::List => {
            let accounts = db::users::list_accounts(&mut open_db(config)?.conn())?;
            println!("id\tusername\temail\tlevel\tstatus\tstaff\tactive\tcreated_at");
            for a in accounts {
                let yes_no = |b: bool| if b { "yes" } else { "no" };
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    a.user.id,
                    a.user.username,
                    a.user.email,
                    a.user.level,
                    a.user.status.as_str(),
                    yes_no(a.is_staff),
                    yes_no(a.is_active),
                    a.user.created_at
                );
            }
            Ok(())
        }
    }
}
