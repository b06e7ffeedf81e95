//! SQLite: the file, its pool and per-connection pragmas, the migrations
//! of `schema.sql` keyed on `PRAGMA user_version`, and the file operations
//! (backup, restore, integrity check) that only an embedded database has.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use crate::model::valid_after;

/// The pool every request borrows a connection from (on the blocking pool).
pub type Pool = r2d2::Pool<Manager>;

/// r2d2_sqlite's manager, except that a connection that comes back still
/// inside a transaction (a failed COMMIT whose ROLLBACK failed too) is
/// dropped instead of lent out again.
#[derive(Debug)]
pub struct Manager(SqliteConnectionManager);

impl r2d2::ManageConnection for Manager {
    type Connection = Connection;
    type Error = rusqlite::Error;

    fn connect(&self) -> rusqlite::Result<Connection> {
        self.0.connect()
    }

    fn is_valid(&self, conn: &mut Connection) -> rusqlite::Result<()> {
        self.0.is_valid(conn)
    }

    fn has_broken(&self, conn: &mut Connection) -> bool {
        !conn.is_autocommit()
    }
}

/// The schema, embedded: `-- migration N` blocks applied in order.
const SCHEMA: &str = include_str!("../../schema.sql");

/// The migrations of `schema.sql`, in order; migration N is `[N - 1]`.
fn migrations() -> Vec<&'static str> {
    blocks(SCHEMA)
}

/// The `-- migration N` blocks of a schema file, in order.
pub(super) fn blocks(schema: &str) -> Vec<&str> {
    let mut blocks = Vec::new();
    let mut start = None;
    let mut offset = 0;
    for line in schema.split_inclusive('\n') {
        if line.trim_start().starts_with("-- migration ") {
            if let Some(begin) = start {
                blocks.push(&schema[begin..offset]);
            }
            start = Some(offset + line.len());
        }
        offset += line.len();
    }
    if let Some(begin) = start {
        blocks.push(&schema[begin..]);
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

/// Opens (or creates) the database with no size cap; see [`open_limited`].
pub fn open(options: &Options) -> anyhow::Result<Pool> {
    open_limited(options, 0)
}

/// Opens (or creates) the database: refuses a file from a newer rosterd,
/// switches to WAL, applies pending migrations, runs `PRAGMA quick_check`,
/// and returns a pool whose connections all carry the durable pragmas and
/// (when `max_size` is not 0) the size cap in bytes.
pub fn open_limited(options: &Options, max_size: u64) -> anyhow::Result<Pool> {
    let max_pages = max_size / PAGE_SIZE;
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
    // SQLite quietly opens a file it may not write read-only; a server
    // that cannot write must not start.
    if conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(false) {
        bail!("cannot open database {shown}: the file is read-only (check its permissions)");
    }
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
    apply_pragmas(&conn, 0)?;
    let check: String = conn
        .query_row("PRAGMA quick_check", [], |row| row.get(0))
        .with_context(|| format!("cannot check database {shown}"))?;
    if check != "ok" {
        let hint = match last_backup(path) {
            Some(backup) => format!(
                "the last backup is {}: stop here and run `rosterd restore {}`",
                backup.display(),
                backup.display()
            ),
            None => "no backup made by `rosterd backup` is known".to_owned(),
        };
        let first = check.lines().take(3).collect::<Vec<_>>().join("; ");
        bail!("database {shown} is corrupt (quick_check: {first}); {hint}");
    }
    migrate(&mut conn, version).with_context(|| format!("cannot migrate database {shown}"))?;
    drop(conn);

    let busy_timeout = options.busy_timeout;
    let manager = SqliteConnectionManager::file(path)
        .with_flags(OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .with_init(move |conn| {
            conn.busy_timeout(busy_timeout)?;
            apply_pragmas(conn, max_pages)
        });
    let pool = r2d2::Pool::builder()
        .max_size(options.pool_size)
        .min_idle(Some(1))
        // A SQLite connection is a file handle, not a socket: there is
        // nothing to go stale, and the check cost a statement per request.
        .test_on_check_out(false)
        .connection_timeout(busy_timeout.max(Duration::from_secs(1)))
        .build(Manager(manager))
        .with_context(|| format!("cannot open database {shown}"))?;
    Ok(pool)
}

/// SQLite's default page size, the unit of `max_page_count`.
const PAGE_SIZE: u64 = 4096;

/// Per-connection settings. `synchronous = FULL` in WAL mode syncs the log
/// on every commit, so a 2xx reply means the write survives a power cut.
/// `max_pages` (when not 0) caps the file: a write past it fails with
/// SQLITE_FULL, as on a full disk.
fn apply_pragmas(conn: &Connection, max_pages: u64) -> rusqlite::Result<()> {
    conn.execute_batch(
        "PRAGMA foreign_keys = ON;
         PRAGMA synchronous = FULL;",
    )?;
    if max_pages > 0 {
        let _: i64 =
            conn.query_row(&format!("PRAGMA max_page_count = {max_pages}"), [], |row| {
                row.get(0)
            })?;
    }
    Ok(())
}

/// Takes the advisory lock that marks the database as served: held by
/// `serve` for its lifetime, tried by `restore`.
pub fn lock(db: &Path) -> anyhow::Result<std::fs::File> {
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    let path = PathBuf::from(name);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open lock file {}", path.display()))?;
    file.try_lock()
        .map_err(|_| anyhow::anyhow!("{} is locked by another rosterd", path.display()))?;
    Ok(file)
}

/// The sidecar file where `backup` records the path of the last backup.
fn last_backup_marker(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".last-backup");
    PathBuf::from(name)
}

/// The last backup made of `db` by [`backup`], if recorded and present.
pub fn last_backup(db: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(last_backup_marker(db)).ok()?;
    let path = PathBuf::from(text.trim());
    path.exists().then_some(path)
}

/// Runs `PRAGMA integrity_check` on a file opened read-only.
pub fn integrity_check(path: &Path) -> anyhow::Result<String> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let rows = (|| -> rusqlite::Result<Vec<String>> {
        conn.prepare("PRAGMA integrity_check")?
            .query_map([], |row| row.get(0))?
            .collect()
    })()
    .with_context(|| format!("cannot check {}", path.display()))?;
    // One line per finding, whatever SQLite put inside a row.
    Ok(rows
        .iter()
        .flat_map(|row| row.lines())
        .collect::<Vec<_>>()
        .join("; "))
}

/// Writes a consistent copy of the live database `db` to `dest` with
/// `VACUUM INTO` (one read transaction: a snapshot, while writers go on),
/// checks it with `integrity_check`, and records it as the last backup.
/// Returns the number of users in the copy.
pub fn backup(db: &Path, dest: &Path) -> anyhow::Result<i64> {
    if dest.exists() {
        bail!("{} already exists; choose a new file name", dest.display());
    }
    if !db.exists() {
        bail!("database {} does not exist", db.display());
    }
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_WRITE)
        .with_context(|| format!("cannot open database {}", db.display()))?;
    conn.busy_timeout(Duration::from_secs(30))?;
    let dest_text = dest
        .to_str()
        .with_context(|| format!("{} is not a UTF-8 path", dest.display()))?;
    conn.execute("VACUUM INTO ?1", [dest_text])
        .with_context(|| format!("cannot write backup {}", dest.display()))?;
    let check = integrity_check(dest)?;
    if check != "ok" {
        let _ = std::fs::remove_file(dest);
        bail!("the backup failed its integrity check ({check}) and was removed");
    }
    let users: i64 = Connection::open_with_flags(dest, OpenFlags::SQLITE_OPEN_READ_ONLY)?
        .query_row("SELECT count(*) FROM users", [], |row| row.get(0))?;
    let absolute = std::fs::canonicalize(dest).unwrap_or_else(|_| dest.to_path_buf());
    std::fs::write(last_backup_marker(db), absolute.display().to_string())
        .with_context(|| format!("cannot record the backup next to {}", db.display()))?;
    Ok(users)
}

/// Replaces the database `db` (no server may hold it) with the backup
/// `source` after checking it; the old file is kept aside and its path
/// returned.
pub fn restore(db: &Path, source: &Path) -> anyhow::Result<Option<PathBuf>> {
    let check = integrity_check(source)?;
    if check != "ok" {
        bail!(
            "{} fails its integrity check ({check}); nothing changed",
            source.display()
        );
    }
    let version = schema_version(source)
        .with_context(|| format!("cannot read the schema version of {}", source.display()))?;
    if version > latest_version() {
        bail!(
            "{} has schema version {version}, newer than this rosterd knows ({}); nothing changed",
            source.display(),
            latest_version()
        );
    }
    let dir = db
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let staged = dir.join(".rosterd-restore.tmp");
    std::fs::copy(source, &staged)
        .with_context(|| format!("cannot copy {} into {}", source.display(), dir.display()))?;
    let floor = if db.exists() { last_user_id(db)? } else { 0 };
    void_the_past(&staged, floor)
        .with_context(|| format!("cannot prepare the restored copy of {}", source.display()))?;
    std::fs::File::open(&staged)?.sync_all()?;
    let kept = if db.exists() {
        // Fold the WAL into the old file first so the kept copy is whole.
        {
            let conn = Connection::open(db)?;
            conn.busy_timeout(Duration::from_secs(5))?;
            conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
        }
        let stamp = crate::model::timestamp_now().replace([':', '.'], "-");
        let mut name = db.as_os_str().to_owned();
        name.push(format!(".before-restore-{stamp}"));
        let kept = PathBuf::from(name);
        std::fs::rename(db, &kept)
            .with_context(|| format!("cannot move {} aside", db.display()))?;
        for suffix in ["-wal", "-shm"] {
            let mut side = db.as_os_str().to_owned();
            side.push(suffix);
            let _ = std::fs::remove_file(PathBuf::from(side));
        }
        Some(kept)
    } else {
        None
    };
    std::fs::rename(&staged, db)
        .with_context(|| format!("cannot move the restored copy to {}", db.display()))?;
    if let Ok(dir) = std::fs::File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(kept)
}

/// The largest user id `db` ever handed out (deleted users included).
fn last_user_id(db: &Path) -> anyhow::Result<i64> {
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    Ok(conn.query_row(
        "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'users'), 0), \
                    coalesce((SELECT max(id) FROM users), 0))",
        [],
        |row| row.get(0),
    )?)
}

/// Makes a restored copy safe to serve: every token issued before now is
/// void (the copy has not seen the logouts, password changes and
/// blacklists since it was made), and no id up to `floor` is handed out
/// again (a token of a user who registered after the backup must never
/// name a new registrant).
fn void_the_past(copy: &Path, floor: i64) -> anyhow::Result<()> {
    let conn = Connection::open(copy)?;
    conn.execute_batch("BEGIN IMMEDIATE")?;
    conn.execute(
        "UPDATE users SET tokens_valid_after = max(tokens_valid_after, ?1)",
        [valid_after(crate::model::unix_now())],
    )?;
    conn.execute(
        "INSERT OR IGNORE INTO sqlite_sequence (name, seq) SELECT 'users', 0 \
         WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'users')",
        [],
    )?;
    conn.execute(
        "UPDATE sqlite_sequence SET seq = max(seq, ?1) WHERE name = 'users'",
        [floor],
    )?;
    conn.execute_batch("COMMIT; PRAGMA journal_mode = DELETE;")?;
    Ok(())
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
    fn a_connection_returned_inside_a_transaction_is_not_lent_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = options(dir.path());
        options.pool_size = 1;
        let pool = open(&options).unwrap();
        let conn = pool.get().unwrap();
        conn.execute_batch("BEGIN").unwrap();
        drop(conn);
        assert!(pool.get().unwrap().is_autocommit());
    }

    #[test]
    fn a_read_sees_one_snapshot_and_always_ends_its_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let pool = open(&options(dir.path())).unwrap();
        let reader = pool.get().unwrap();
        let writer = pool.get().unwrap();
        let count = |conn: &Connection| -> rusqlite::Result<i64> {
            conn.query_row("SELECT count(*) FROM users", [], |row| row.get(0))
        };
        // A write committed between two queries of one read is not seen.
        let (before, after) = crate::db::read(&mut crate::db::Conn::Sqlite(&reader), |_| {
            let before = count(&reader)?;
            writer.execute_batch(
                "INSERT INTO users (username, email, password_hash, created_at, updated_at)
                 VALUES ('snap', 'snap@example.com', 'x', '2026', '2026')",
            )?;
            Ok::<_, crate::db::Error>((before, count(&reader)?))
        })
        .unwrap();
        assert_eq!(before, after);
        assert_eq!(count(&reader).unwrap(), before + 1);
        // An error ends the transaction too.
        let err = crate::db::read(&mut crate::db::Conn::Sqlite(&reader), |_| {
            count(&reader)?;
            Err::<(), crate::db::Error>(rusqlite::Error::QueryReturnedNoRows.into())
        });
        assert!(err.is_err());
        assert!(reader.is_autocommit());
    }

    #[test]
    fn backup_copies_a_checked_snapshot_and_restore_brings_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let opts = options(dir.path());
        let pool = open(&opts).unwrap();
        pool.get()
            .unwrap()
            .execute_batch(
                "INSERT INTO users (username, email, password_hash, created_at, updated_at) \
                 VALUES ('a', 'a@x.io', 'h', 't', 't')",
            )
            .unwrap();
        let copy = dir.path().join("copy.sqlite3");
        assert_eq!(backup(&opts.path, &copy).unwrap(), 1);
        assert_eq!(
            last_backup(&opts.path),
            Some(std::fs::canonicalize(&copy).unwrap())
        );
        assert!(backup(&opts.path, &copy).is_err(), "never overwrites");
        pool.get()
            .unwrap()
            .execute_batch("DELETE FROM users")
            .unwrap();
        drop(pool);
        let kept = restore(&opts.path, &copy).unwrap().unwrap();
        assert!(kept.exists());
        let pool = open(&opts).unwrap();
        let n: i64 = pool
            .get()
            .unwrap()
            .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
    }

    #[test]
    fn restore_refuses_a_file_that_is_not_a_database() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk");
        std::fs::write(&junk, b"not a database at all, not even close.....").unwrap();
        assert!(restore(&dir.path().join("db"), &junk).is_err());
        assert!(!dir.path().join("db").exists());
    }

    #[test]
    fn a_size_cap_makes_writes_fail_as_on_a_full_disk() {
        let dir = tempfile::tempdir().unwrap();
        let pool = open_limited(&options(dir.path()), 64 * 1024).unwrap();
        let conn = pool.get().unwrap();
        let mut failed = None;
        for i in 0..10_000 {
            let result = conn.execute(
                "INSERT INTO users (username, email, password_hash, created_at, updated_at) \
                 VALUES (?1, ?1 || '@x.io', ?2, 't', 't')",
                rusqlite::params![format!("user{i}"), "h".repeat(500)],
            );
            if let Err(err) = result {
                failed = Some(err);
                break;
            }
        }
        let err = failed.expect("the cap was never reached");
        assert_eq!(err.sqlite_error_code(), Some(rusqlite::ErrorCode::DiskFull));
        let n: i64 = conn
            .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
            .unwrap();
        assert!(n > 0);
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
