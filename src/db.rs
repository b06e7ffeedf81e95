//! The only place with SQL, behind one boundary for two engines: the
//! embedded SQLite file (the default, [`sqlite`]) or a PostgreSQL server
//! (`database.url`, [`pg`]). The rest of rosterd hands closures a [`Conn`]
//! and calls the functions of `users`, `tokens`, `listing` and `events`,
//! which speak each engine's dialect.

pub mod copy;
mod error;
pub mod events;
pub mod import;
pub mod listing;
pub mod pg;
mod sql;
pub mod sqlite;
pub mod tokens;
pub mod users;

pub use error::{Error, Result, Trouble};
pub use sqlite::{
    Options, backup, integrity_check, last_backup, latest_version, restore, schema_version,
};

/// A connection of either engine, as the functions of this module take it.
pub enum Conn<'a> {
    /// A SQLite connection (the file).
    Sqlite(&'a rusqlite::Connection),
    /// A PostgreSQL session.
    Postgres(&'a mut pg::Client),
}

/// Where the database is: a SQLite file (with its options) or a
/// PostgreSQL URL.
#[derive(Debug, Clone)]
pub enum Target {
    /// The embedded file.
    Sqlite(Options),
    /// A PostgreSQL server.
    Postgres(pg::Options),
}

impl Target {
    /// Where `config` puts the database: `database.url` when set (and not
    /// empty), else the SQLite file `database.path`.
    pub fn of(config: &crate::config::DatabaseConfig) -> anyhow::Result<Target> {
        let timeout = std::time::Duration::from_millis(config.busy_timeout_ms);
        if let Some(url) = config.url.as_ref().filter(|u| !u.expose().is_empty()) {
            return Ok(Target::Postgres(pg::Options {
                url: url.expose().to_owned(),
                pool_size: config.pool_size,
                timeout,
                ca_file: config.ca_file.clone(),
            }));
        }
        let path = config
            .path
            .clone()
            .filter(|p| !p.as_os_str().is_empty())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "no database configured (database.path / ROSTERD_DB / --db, or \
                     database.url / ROSTERD_DATABASE_URL / --database-url)"
                )
            })?;
        Ok(Target::Sqlite(Options {
            path,
            busy_timeout: timeout,
            pool_size: config.pool_size,
        }))
    }
}

/// The connection pool of either engine.
#[derive(Debug, Clone)]
pub enum Pool {
    /// SQLite connections to one file.
    Sqlite(sqlite::Pool),
    /// PostgreSQL sessions.
    Postgres(pg::Pool),
}

/// A connection borrowed from a [`Pool`].
pub enum Pooled {
    /// See [`Pool::Sqlite`].
    Sqlite(r2d2::PooledConnection<sqlite::Manager>),
    /// See [`Pool::Postgres`].
    Postgres(Box<r2d2::PooledConnection<pg::Manager>>),
}

impl Pool {
    /// Opens (creating and migrating) the database; `max_size` caps a
    /// SQLite file in bytes (0: no cap).
    pub fn open(target: &Target, max_size: u64) -> anyhow::Result<Pool> {
        Ok(match target {
            Target::Sqlite(options) => Pool::Sqlite(sqlite::open_limited(options, max_size)?),
            Target::Postgres(options) => Pool::Postgres(pg::open(options)?),
        })
    }

    /// A pooled connection, waiting at most the pool's timeout.
    pub fn get(&self) -> std::result::Result<Pooled, r2d2::Error> {
        Ok(match self {
            Pool::Sqlite(pool) => Pooled::Sqlite(pool.get()?),
            Pool::Postgres(pool) => Pooled::Postgres(Box::new(pool.get()?)),
        })
    }
}

impl Pooled {
    /// The connection, for the functions of this module.
    pub fn conn(&mut self) -> Conn<'_> {
        match self {
            Pooled::Sqlite(conn) => Conn::Sqlite(conn),
            Pooled::Postgres(client) => Conn::Postgres(client),
        }
    }
}

/// Runs `f` inside a transaction that takes the write lock up front
/// (SQLite's `BEGIN IMMEDIATE`), so concurrent writers queue instead of
/// failing half-way. Inside a transaction already (the server's writer
/// commits several requests at once), `f` runs in a savepoint instead: an
/// error undoes `f`'s changes only.
pub fn write<T>(conn: &mut Conn<'_>, f: impl FnOnce(&mut Conn<'_>) -> Result<T>) -> Result<T> {
    if shared::is_open(conn) {
        control(conn, "SAVEPOINT write")?;
        match f(conn) {
            Ok(value) => {
                control(conn, "RELEASE write")?;
                Ok(value)
            }
            Err(err) => {
                let _ = control(conn, "ROLLBACK TO write");
                let _ = control(conn, "RELEASE write");
                Err(err)
            }
        }
    } else {
        shared::begin(conn)?;
        let value = f(conn);
        match value {
            Ok(value) => {
                shared::commit(conn)?;
                Ok(value)
            }
            Err(err) => {
                abandon(conn);
                Err(err)
            }
        }
    }
}

/// Runs `f` as one read. On SQLite, inside one read transaction (a
/// deferred `BEGIN`): every query of a request sees the same snapshot, and
/// SQLite takes and drops its file locks once per request instead of once
/// per statement. On PostgreSQL each statement reads the latest commit on
/// its own (a transaction would cost two more round trips per request).
pub fn read<T, E: From<Error>>(
    conn: &mut Conn<'_>,
    f: impl FnOnce(&mut Conn<'_>) -> std::result::Result<T, E>,
) -> std::result::Result<T, E> {
    let sqlite = match conn {
        Conn::Sqlite(sqlite) if sqlite.is_autocommit() => *sqlite,
        _ => return f(conn),
    };
    control(conn, "BEGIN")?;
    // Ends the transaction however `f` leaves (an error, a panic): a
    // pooled connection must never go back with a snapshot held open, or
    // the WAL could not be checkpointed past it.
    let open = OpenRead(sqlite);
    let value = f(conn)?;
    control(conn, "COMMIT")?;
    drop(open);
    Ok(value)
}

/// Rolls back a read transaction still open when dropped.
struct OpenRead<'a>(&'a rusqlite::Connection);

impl Drop for OpenRead<'_> {
    fn drop(&mut self) {
        abandon(&mut Conn::Sqlite(self.0));
    }
}

/// Runs one transaction-control statement (cached: these run per request).
fn control(conn: &mut Conn<'_>, sql: &str) -> Result<()> {
    match conn {
        Conn::Sqlite(conn) => Ok(conn.prepare_cached(sql)?.execute([]).map(drop)?),
        Conn::Postgres(client) => client.control(sql),
    }
}

/// Rolls back the transaction `conn` still has open, if any.
fn abandon(conn: &mut Conn<'_>) {
    if shared::is_open(conn) {
        let _ = control(conn, "ROLLBACK");
    }
}

/// The steps of group commit (the server's writer thread): one
/// transaction shared by several requests, each inside its own savepoint,
/// committed once. Each request's own writes go through [`write`], which
/// nests as a further savepoint.
pub mod shared {
    use super::{Conn, Result, abandon, control};

    /// Opens the shared transaction, taking the write lock.
    pub fn begin(conn: &mut Conn<'_>) -> Result<()> {
        match conn {
            Conn::Sqlite(_) => control(conn, "BEGIN IMMEDIATE"),
            Conn::Postgres(_) => control(conn, "BEGIN"),
        }
    }

    /// Whether a transaction is open: SQLite rolls all of it back on some
    /// errors (a full disk, an I/O error), PostgreSQL when the session
    /// breaks.
    pub fn is_open(conn: &Conn<'_>) -> bool {
        match conn {
            Conn::Sqlite(conn) => !conn.is_autocommit(),
            Conn::Postgres(client) => client.in_transaction(),
        }
    }

    /// Marks where the next request starts.
    pub fn mark(conn: &mut Conn<'_>) -> Result<()> {
        control(conn, "SAVEPOINT job")
    }

    /// Keeps the changes since the mark.
    pub fn keep(conn: &mut Conn<'_>) -> Result<()> {
        control(conn, "RELEASE job")
    }

    /// Undoes the changes since the mark, and drops it.
    pub fn undo(conn: &mut Conn<'_>) -> Result<()> {
        control(conn, "ROLLBACK TO job")?;
        control(conn, "RELEASE job")
    }

    /// Commits the shared transaction (durable: SQLite's `synchronous =
    /// FULL`, PostgreSQL's `synchronous_commit`); on failure nothing of it
    /// stays and the connection is left with no transaction open.
    pub fn commit(conn: &mut Conn<'_>) -> Result<()> {
        let committed = control(conn, "COMMIT");
        if committed.is_err() {
            abandon(conn);
        }
        committed
    }
}

/// Checks that the database answers.
pub fn ping(conn: &mut Conn<'_>) -> Result<()> {
    match conn {
        Conn::Sqlite(conn) => Ok(conn.query_row("SELECT 1", [], |_| Ok(()))?),
        Conn::Postgres(client) => client.query_one("SELECT 1", &[]).map(drop),
    }
}

/// What the database tests share: a fresh pool in a temp dir, a new user.
#[cfg(test)]
pub mod testing {
    use crate::model::{NewUser, Status};

    /// A pool of one connection on a fresh file (kept while the dir lives).
    pub fn pool() -> (tempfile::TempDir, super::sqlite::Pool) {
        let dir = tempfile::tempdir().unwrap();
        let pool = super::sqlite::open(&super::Options {
            path: dir.path().join("u.sqlite3"),
            busy_timeout: std::time::Duration::from_secs(1),
            pool_size: 1,
        })
        .unwrap();
        (dir, pool)
    }

    /// A plain user named `name`.
    pub fn new_user(name: &str) -> NewUser {
        NewUser {
            username: name.to_owned(),
            email: format!("{name}@example.com"),
            password_hash: "x".to_owned(),
            level: 1,
            status: Status::Offline,
            profile_picture: String::new(),
            is_staff: false,
        }
    }
}
