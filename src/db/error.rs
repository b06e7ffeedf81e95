//! The database error of either engine, and what kind of trouble it is.

use std::sync::Arc;

use postgres::error::SqlState;

/// A database error of either engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// SQLite's error.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL's (shared: a failed group commit tells every request in
    /// it the same cause).
    #[error(transparent)]
    Postgres(Arc<postgres::Error>),
}

impl From<postgres::Error> for Error {
    fn from(err: postgres::Error) -> Self {
        Error::Postgres(Arc::new(err))
    }
}

/// A result of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// What kind of trouble a database error is, as far as a reply cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trouble {
    /// Locked or unreachable for now: worth a retry (503).
    Busy,
    /// Out of space (507).
    Full,
    /// Anything else (a bug, or a broken disk: 500).
    Other,
}

impl Error {
    /// Whether this is a UNIQUE violation on `table.column`.
    pub fn is_unique_violation(&self, table_column: &str) -> bool {
        match self {
            Error::Sqlite(rusqlite::Error::SqliteFailure(failure, Some(message))) => {
                failure.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                    && message.contains(table_column)
            }
            Error::Sqlite(_) => false,
            Error::Postgres(err) => pg_unique_violation(err, table_column),
        }
    }

    /// See [`Trouble`].
    pub fn trouble(&self) -> Trouble {
        match self {
            Error::Sqlite(err) => match err.sqlite_error_code() {
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                    Trouble::Busy
                }
                Some(rusqlite::ErrorCode::DiskFull) => Trouble::Full,
                _ => Trouble::Other,
            },
            Error::Postgres(err) => pg_trouble(err),
        }
    }

    /// A copy of this error (SQLite's error is not `Clone`: the same code
    /// and message, or an abort carrying the text of any other error).
    pub fn copy(&self) -> Error {
        match self {
            Error::Sqlite(rusqlite::Error::SqliteFailure(code, message)) => {
                Error::Sqlite(rusqlite::Error::SqliteFailure(*code, message.clone()))
            }
            Error::Sqlite(other) => Error::aborted(&other.to_string()),
            Error::Postgres(err) => Error::Postgres(err.clone()),
        }
    }

    /// The error of a change undone by a rolled-back transaction.
    pub fn aborted(why: &str) -> Error {
        Error::Sqlite(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
            Some(why.to_owned()),
        ))
    }
}

/// The unique index behind each `table.column` the API reports on.
fn unique_index(table_column: &str) -> Option<&'static str> {
    match table_column {
        "users.username" => Some("users_username_unique"),
        "users.email" => Some("users_email_unique"),
        _ => None,
    }
}

/// Whether `err` is a UNIQUE violation on `table.column`.
fn pg_unique_violation(err: &postgres::Error, table_column: &str) -> bool {
    let Some(db) = err.as_db_error() else {
        return false;
    };
    *db.code() == SqlState::UNIQUE_VIOLATION && db.constraint() == unique_index(table_column)
}

/// See [`Trouble`]: a lost or refused session, a serialization failure
/// or a deadlock is worth a retry; a full disk is 507.
fn pg_trouble(err: &postgres::Error) -> Trouble {
    match err.code() {
        Some(code) if *code == SqlState::DISK_FULL => Trouble::Full,
        Some(code)
            if *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED
                || *code == SqlState::TOO_MANY_CONNECTIONS
                || *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CANNOT_CONNECT_NOW
                || *code == SqlState::LOCK_NOT_AVAILABLE =>
        {
            Trouble::Busy
        }
        None if err.is_closed() => Trouble::Busy,
        _ => Trouble::Other,
    }
}
