//! `rosterd copy-db --to URL_OR_FILE`: every account of the configured
//! database copied into another, empty one (SQLite to PostgreSQL and
//! back), ids, password hashes and token state kept, so nobody logs in
//! again. The writing is `db::copy`'s; this settles what the two
//! databases are, refuses the same one twice or one a server holds, and
//! reports.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::config::Config;
use crate::db::{self, copy::Outcome};

/// Runs `copy-db --to to` with the configured database as the source.
pub fn run(config: &Config, to: &str) -> anyhow::Result<()> {
    let mut database = config.database.clone();
    database.pool_size = 1;
    let source = db::Target::of(&database)?;
    let timeout = Duration::from_millis(config.database.busy_timeout_ms);
    let target = target(to, timeout, config.database.ca_file.clone())?;
    let (from_name, to_name) = (name(&source), name(&target));
    if same(&source, &target) {
        bail!("{to_name} is the configured database itself: --to must name another one");
    }
    if let db::Target::Sqlite(options) = &source
        && !options.path.exists()
    {
        bail!("database {from_name} does not exist: nothing to copy");
    }
    let _source_lock = lock(&source)?;
    let _target_lock = lock(&target)?;
    let created = match &target {
        db::Target::Sqlite(options) if options.path.exists() => {
            let foreign = db::copy::foreign_sqlite(&options.path)
                .with_context(|| format!("cannot read {to_name}"))?;
            if foreign {
                bail!("{to_name} is not a rosterd database; nothing was written");
            }
            None
        }
        db::Target::Sqlite(options) => Some(options.path.clone()),
        db::Target::Postgres(_) => None,
    };
    let copied = copy(&source, &target, &from_name, &to_name);
    if copied.is_err()
        && let Some(path) = created
    {
        remove_database(&path);
    }
    let summary = match copied? {
        Outcome::Copied(summary) => summary,
        Outcome::NotEmpty {
            users,
            refresh_tokens,
        } => bail!(
            "{to_name} is not empty ({users} users, {refresh_tokens} refresh tokens): copy-db \
             fills only an empty database; nothing was written"
        ),
    };
    println!(
        "copied {} users, {} refresh tokens, {} imported ids from {from_name} to {to_name}; \
         ids continue after {}; events and presence are not copied",
        summary.users, summary.refresh_tokens, summary.imported, summary.last_id
    );
    Ok(())
}

fn copy(
    source: &db::Target,
    target: &db::Target,
    from_name: &str,
    to_name: &str,
) -> anyhow::Result<Outcome> {
    // Their errors name the database (a URL without its password).
    let from = db::Pool::open(source, 0)?;
    let to = db::Pool::open(target, 0)?;
    let mut from = from
        .get()
        .with_context(|| format!("cannot open {from_name}"))?;
    let mut to = to.get().with_context(|| format!("cannot open {to_name}"))?;
    db::copy::copy(&mut from.conn(), &mut to.conn()).map_err(|err| {
        let clash = ["users.username", "users.email"]
            .into_iter()
            .find(|column| err.is_unique_violation(column));
        match clash {
            Some(column) => anyhow::anyhow!(
                "cannot copy {from_name} to {to_name}: two values of {column} are one to the \
                 target, which ignores case more widely (non-ASCII letters); rename one and copy \
                 again; nothing was written"
            ),
            None => anyhow::Error::new(err).context(format!(
                "cannot copy {from_name} to {to_name}; nothing was written"
            )),
        }
    })
}

/// The database `--to` names: a PostgreSQL URL or a SQLite file
/// (`database.ca_file` serves it too).
fn target(to: &str, timeout: Duration, ca_file: Option<PathBuf>) -> anyhow::Result<db::Target> {
    if to.trim().is_empty() {
        bail!("--to is empty: give a postgres:// URL or a SQLite file");
    }
    if to.starts_with("postgres://") || to.starts_with("postgresql://") {
        // The parser's message may quote the URL: only the part without
        // the password is shown.
        if to.parse::<postgres::Config>().is_err() {
            bail!("--to {} is not a valid PostgreSQL URL", db::pg::shown(to));
        }
        return Ok(db::Target::Postgres(db::pg::Options {
            url: to.to_owned(),
            pool_size: 1,
            timeout,
            ca_file,
        }));
    }
    Ok(db::Target::Sqlite(db::Options {
        path: PathBuf::from(to),
        busy_timeout: timeout,
        pool_size: 1,
    }))
}

/// How a database is named in messages (never with a password).
fn name(target: &db::Target) -> String {
    match target {
        db::Target::Sqlite(options) => options.path.display().to_string(),
        db::Target::Postgres(options) => db::pg::shown(&options.url),
    }
}

/// Whether both name one database: one file, or one database on one
/// server (as far as the names tell; a copy into a database that holds
/// the source's users is refused anyway, as not empty).
fn same(a: &db::Target, b: &db::Target) -> bool {
    match (a, b) {
        (db::Target::Sqlite(a), db::Target::Sqlite(b)) => absolute(&a.path) == absolute(&b.path),
        (db::Target::Postgres(a), db::Target::Postgres(b)) => {
            let place = |url: &str| {
                url.parse::<postgres::Config>().ok().map(|c| {
                    let port = c.get_ports().first().copied().unwrap_or(5432);
                    (
                        format!("{:?}", c.get_hosts()),
                        port,
                        c.get_dbname().map(str::to_owned),
                    )
                })
            };
            place(&a.url).is_some() && place(&a.url) == place(&b.url)
        }
        _ => false,
    }
}

/// The path with its directory resolved (the file itself may not exist).
fn absolute(path: &Path) -> PathBuf {
    if let Ok(path) = std::fs::canonicalize(path) {
        return path;
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let dir = dir.map_or_else(|| std::fs::canonicalize("."), std::fs::canonicalize);
    match (dir, path.file_name()) {
        (Ok(dir), Some(file)) => dir.join(file),
        _ => path.to_path_buf(),
    }
}

/// Takes the lock a serving rosterd holds on a SQLite file: copying from
/// or into a database being served would lose writes. A file in a missing
/// directory is left for opening's own, clearer, error.
fn lock(target: &db::Target) -> anyhow::Result<Option<std::fs::File>> {
    let db::Target::Sqlite(options) = target else {
        return Ok(None);
    };
    let path = &options.path;
    if !path
        .parent()
        .is_none_or(|d| d.as_os_str().is_empty() || d.is_dir())
    {
        return Ok(None);
    }
    db::sqlite::lock(path).map(Some).map_err(|_| {
        anyhow::anyhow!(
            "a rosterd server is using {}: stop it before copying",
            path.display()
        )
    })
}

/// Removes a SQLite file this command created, with its WAL, shared
/// memory and lock files.
fn remove_database(path: &Path) {
    for suffix in ["", "-wal", "-shm", ".lock"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(name));
    }
}
