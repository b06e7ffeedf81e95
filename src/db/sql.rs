//! One statement written once for both engines: SQLite's words, with
//! [`pg_dialect`] giving PostgreSQL's, and parameters either can take.

use super::{Conn, Result};

/// Runs one statement written in SQLite's words (`?N` parameters) on
/// either engine; how many rows it changed.
pub fn execute(conn: &mut Conn<'_>, sql: &str, params: &[&dyn ToBoth]) -> Result<u64> {
    match conn {
        Conn::Sqlite(conn) => {
            let values: Vec<&dyn rusqlite::ToSql> = params.iter().map(|p| p.sqlite()).collect();
            Ok(conn.prepare_cached(sql)?.execute(values.as_slice())? as u64)
        }
        Conn::Postgres(client) => {
            let values: Vec<&(dyn postgres::types::ToSql + Sync)> =
                params.iter().map(|p| p.pg()).collect();
            client.execute(&pg_dialect(sql), &values)
        }
    }
}

/// A parameter either engine can take.
pub trait ToBoth {
    /// As SQLite's parameter.
    fn sqlite(&self) -> &dyn rusqlite::ToSql;
    /// As PostgreSQL's parameter.
    fn pg(&self) -> &(dyn postgres::types::ToSql + Sync);
}

impl<T: rusqlite::ToSql + postgres::types::ToSql + Sync> ToBoth for T {
    fn sqlite(&self) -> &dyn rusqlite::ToSql {
        self
    }
    fn pg(&self) -> &(dyn postgres::types::ToSql + Sync) {
        self
    }
}

/// SQLite's `?N` parameters and `max(a, b)` in PostgreSQL's words.
pub fn pg_dialect(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out.replace("max(", "greatest(")
}
