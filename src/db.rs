//! The only place with SQL: the connection pool, per-connection pragmas,
//! and the migrations of `schema.sql` keyed on `PRAGMA user_version`.

pub mod tokens;
pub mod users;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{Connection, OpenFlags, TransactionBehavior};

/// The pool every request borrows a connection from (on the blocking pool).
pub type Pool = r2d2::Pool<SqliteConnectionManager>;

/// The schema, embedded: `-- migration N` blocks applied in order.
const SCHEMA: &str = include_str!("../schema.sql");

/// The migrations of `schema.sql`, in order; migration N is `[N - 1]`.
fn migrations() -> Vec<&'static str> {
    let mut blocks = Vec::new();
    let mut start = None;
    let mut offset = 0;
    for line in SCHEMA.split_inclusive('\n') {
        if line.trim_start().starts_with("-- migration ") {
            if let Some(begin) = start {
                blocks.push(&SCHEMA[begin..offset]);
            }
            start = Some(offset + line.len());
        }
        offset += line.len();
    }
    if let Some(begin) = start {
        blocks.push(&SCHEMA[begin..]);
    }
    blocks
}

/// The schema version this binary writes: the number of migrations.
pub fn latest_version() -> i64 {
    migrations().len() as i64
}

/// Options for [`open`].
#[derive(Debug, Clone)]
pub struct Options {
    /// The SQLite file.
    pub path: PathBuf,
    /// How long a writer waits for the lock.
    pub busy_timeout: Duration,
    /// Pooled connections.
    pub pool_size: u32,
}

/// Opens (or creates) the database: refuses a file from a newer rosterd,
/// switches to WAL, applies pending migrations, and returns a pool whose
/// connections all carry the durable pragmas.
pub fn open(options: &Options) -> anyhow::Result<Pool> {
    let path = &options.path;
    let shown = path.display();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.is_dir()
    {
        bail!(
            "cannot open database {shown}: directory {} does not exist",
            dir.display()
        );
    }
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("cannot open database {shown}"))?;
    conn.busy_timeout(options.busy_timeout)?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .with_context(|| format!("cannot open database {shown}"))?;
    let latest = latest_version();
    if version > latest {
        bail!(
            "database {shown} has schema version {version}, newer than this rosterd knows \
             ({latest}): it was written by a newer rosterd. Run that version, or restore a \
             backup; the file was not changed"
        );
    }
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .with_context(|| format!("cannot switch database {shown} to WAL"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        bail!("database {shown} refused WAL mode (journal_mode is {mode})");
    }
    apply_pragmas(&conn)?;
    migrate(&mut conn, version).with_context(|| format!("cannot migrate database {shown}"))?;
    drop(conn);

    let busy_timeout = options.busy_timeout;
    let manager = SqliteConnectionManager::file(path)
        .with_flags(OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .with_init(move |conn| {
            conn.busy_timeout(busy_timeout)?;
            apply_pragmas(conn)
        });
    let pool = r2d2::Pool::builder()
        .max_size(options.pool_size)
        .min_idle(Some(1))
        .connection_timeout(busy_timeout.max(Duration::from_secs(1)))
        .build(manager)
        .with_context(|| format!("cannot open database {shown}"))?;
    Ok(pool)
}

/// Per-connection settings. `synchronous = FULL` in WAL mode syncs the log
/// on every commit, so a 2xx reply means the write survives a power cut.
fn apply_pragmas(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "PRAGMA foreign_keys = ON;
         PRAGMA synchronous = FULL;",
    )
}

/// Applies every migration above `current`, each with its version bump in
/// one transaction.
fn migrate(conn: &mut Connection, current: i64) -> anyhow::Result<()> {
    for (index, sql) in migrations().iter().enumerate() {
        let version = index as i64 + 1;
        if version <= current {
            continue;
        }
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(sql)
            .with_context(|| format!("migration {version} failed"))?;
        tx.pragma_update(None, "user_version", version)?;
        tx.commit()?;
    }
    Ok(())
}

/// Runs `f` inside a `BEGIN IMMEDIATE` transaction: the write lock is taken
/// up front, so concurrent writers queue on `busy_timeout` instead of
/// failing half-way.
pub fn write<T>(
    conn: &mut Connection,
    f: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let value = f(&tx)?;
    tx.commit()?;
    Ok(value)
}

/// Whether `err` is a UNIQUE violation on `table.column`.
pub fn is_unique_violation(err: &rusqlite::Error, table_column: &str) -> bool {
    match err {
        rusqlite::Error::SqliteFailure(failure, Some(message)) => {
            failure.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                && message.contains(table_column)
        }
        _ => false,
    }
}

/// Checks that the database answers.
pub fn ping(conn: &Connection) -> rusqlite::Result<()> {
    conn.query_row("SELECT 1", [], |_| Ok(()))
}

/// Reads the schema version of a file without changing it.
pub fn schema_version(path: &Path) -> anyhow::Result<i64> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    Ok(conn.query_row("PRAGMA user_version", [], |row| row.get(0))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(dir: &Path) -> Options {
        Options {
            path: dir.join("t.sqlite3"),
            busy_timeout: Duration::from_secs(1),
            pool_size: 2,
        }
    }

    #[test]
    fn schema_has_numbered_migrations() {
        let all = migrations();
        assert!(!all.is_empty());
        assert!(all[0].contains("CREATE TABLE users"));
    }

    #[test]
    fn open_creates_a_wal_database_at_the_latest_version() {
        let dir = tempfile::tempdir().unwrap();
        let pool = open(&options(dir.path())).unwrap();
        let conn = pool.get().unwrap();
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2, "synchronous must be FULL");
        drop(conn);
        drop(pool);
        assert_eq!(
            schema_version(&dir.path().join("t.sqlite3")).unwrap(),
            latest_version()
        );
    }

    #[test]
    fn reopening_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        drop(open(&options(dir.path())).unwrap());
        drop(open(&options(dir.path())).unwrap());
    }

    #[test]
    fn a_newer_schema_version_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sqlite3");
        {
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "user_version", 999).unwrap();
        }
        let before = std::fs::read(&path).unwrap();
        let err = open(&options(dir.path())).unwrap_err();
        assert!(err.to_string().contains("newer"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }

    #[test]
    fn a_missing_directory_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = options(dir.path());
        opts.path = dir.path().join("nope").join("t.sqlite3");
        let err = open(&opts).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }
}
