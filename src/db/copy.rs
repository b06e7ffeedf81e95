//! `rosterd copy-db`: every account copied from one database into another
//! (either engine) in one transaction: users with their ids, refresh tokens
//! (blacklist, rotation families), imported ids, and the highest id ever
//! handed out. Read from one snapshot, a chunk at a time in key order.
//! Events and presence are not copied: the target's stream starts empty,
//! numbered on from the source's last event.

use std::path::Path;

use super::sql::pg_dialect;
use super::{Conn, Result, abandon, control, write};

/// Rows read and written per statement.
const CHUNK: usize = 1000;

/// What a copy wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// User rows.
    pub users: u64,
    /// Refresh token rows.
    pub refresh_tokens: u64,
    /// Rows of `imported_users`.
    pub imported: u64,
    /// The highest user id handed out: new users get higher ones.
    pub last_id: i64,
    /// The source's last event id: the target's events come after it.
    pub last_event: i64,
}

/// How a copy ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Everything was written.
    Copied(Summary),
    /// The target holds users or refresh tokens already: nothing written.
    NotEmpty {
        /// Users in the target.
        users: i64,
        /// Refresh tokens in the target.
        refresh_tokens: i64,
    },
}

/// A row as read: its values in column order.
type Row = Vec<Value>;

/// One value of a row, for either engine.
enum Value {
    Int(Option<i64>),
    Bool(bool),
    Text(String),
}

impl Value {
    fn sqlite(&self) -> &dyn rusqlite::ToSql {
        match self {
            Value::Int(v) => v,
            Value::Bool(v) => v,
            Value::Text(v) => v,
        }
    }

    fn pg(&self) -> &(dyn postgres::types::ToSql + Sync) {
        match self {
            Value::Int(v) => v,
            Value::Bool(v) => v,
            Value::Text(v) => v,
        }
    }
}

/// Column `$i` (named `$column`) of `$row`, read with `$row.$get(i)`:
/// SQLite's INTEGER 0/1 is PostgreSQL's BOOLEAN, its INTEGER a BIGINT.
macro_rules! value {
    ($row:expr, $i:expr, $column:expr, $get:ident) => {
        match $column {
            "is_staff" | "is_active" | "revoked" => Value::Bool($row.$get($i)?),
            "id" | "level" | "tokens_valid_after" | "user_id" | "expires_at" | "retired_at" => {
                Value::Int($row.$get($i)?)
            }
            _ => Value::Text($row.$get($i)?),
        }
    };
}

/// The tables copied, in this order (the later two name users): each
/// name, how many of its first columns are its primary key, its columns.
const TABLES: [(&str, usize, &str); 3] = [
    (
        "users",
        1,
        "id, username, email, password_hash, level, status, profile_picture, is_staff, \
         is_active, created_at, updated_at, tokens_valid_after",
    ),
    (
        "refresh_tokens",
        1,
        "jti, user_id, family, expires_at, retired_at, revoked",
    ),
    ("imported_users", 2, "source, source_id, user_id"),
];

/// Whether `path` is a SQLite file of something other than rosterd (it
/// has tables but no rosterd schema version): never migrated into.
pub fn foreign_sqlite(path: &Path) -> anyhow::Result<bool> {
    if std::fs::metadata(path).map_or(true, |m| m.len() == 0) {
        return Ok(false);
    }
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
    let conn = rusqlite::Connection::open_with_flags(path, flags)?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    let tables: i64 = conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
    Ok(version == 0 && tables > 0)
}

/// Copies everything from `from` into `to` in one transaction on `to`,
/// reading one snapshot of `from` (a read-only transaction); refuses a
/// `to` that holds any user or refresh token (checked inside that
/// transaction).
pub fn copy(from: &mut Conn<'_>, to: &mut Conn<'_>) -> Result<Outcome> {
    const SNAPSHOT: &str = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY";
    let outcome = control(from, "BEGIN")
        .and_then(|()| match from {
            Conn::Postgres(client) => Ok(client.raw().batch_execute(SNAPSHOT)?),
            Conn::Sqlite(_) => Ok(()),
        })
        .and_then(|()| write(to, |to| fill(from, to)));
    abandon(from);
    outcome
}

fn fill(from: &mut Conn<'_>, to: &mut Conn<'_>) -> Result<Outcome> {
    let sql = "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM refresh_tokens)";
    let (users, refresh_tokens): (i64, i64) = match to {
        Conn::Sqlite(conn) => conn.query_row(sql, [], |row| Ok((row.get(0)?, row.get(1)?)))?,
        Conn::Postgres(client) => {
            let row = client.query_one(sql, &[])?;
            (row.try_get(0)?, row.try_get(1)?)
        }
    };
    if users > 0 || refresh_tokens > 0 {
        return Ok(Outcome::NotEmpty {
            users,
            refresh_tokens,
        });
    }
    if let Conn::Postgres(client) = to {
        // Its trigger writes an event per user, and each one's pruning walks
        // every event this transaction deleted: quadratic. Back on below.
        client
            .raw()
            .batch_execute("ALTER TABLE users DISABLE TRIGGER users_changed")?;
    }
    let counts: Vec<u64> = (TABLES.iter())
        .map(|table| copy_table(from, to, table))
        .collect::<Result<_>>()?;
    let (last_id, last_event) = handed_out(from)?;
    let summary = Summary {
        users: counts[0],
        refresh_tokens: counts[1],
        imported: counts[2],
        last_id: last_id.max(handed_out(to)?.0),
        last_event,
    };
    match to {
        Conn::Sqlite(tx) => {
            tx.execute("DELETE FROM events", [])?;
            for (name, value) in [("users", summary.last_id), ("events", summary.last_event)] {
                tx.execute(
                    "INSERT INTO sqlite_sequence (name, seq) SELECT ?1, 0 \
                     WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = ?1)",
                    [name],
                )?;
                tx.execute(
                    "UPDATE sqlite_sequence SET seq = max(seq, ?2) WHERE name = ?1",
                    rusqlite::params![name, value],
                )?;
            }
        }
        Conn::Postgres(client) => {
            let (id, event) = (summary.last_id, summary.last_event);
            client.raw().batch_execute(&format!(
                "ALTER TABLE users ENABLE TRIGGER users_changed; DELETE FROM events; \
                 UPDATE users_meta SET users = (SELECT count(*) FROM users) WHERE one = 1; \
                 UPDATE events_last SET id = greatest(id, {event}) WHERE one = 1; \
                 SELECT setval(pg_get_serial_sequence('users', 'id'), greatest({id}, 1), {id} > 0)"
            ))?;
        }
    }
    Ok(Outcome::Copied(summary))
}

/// Copies one table a chunk at a time, in primary key order; how many rows.
fn copy_table(from: &mut Conn<'_>, to: &mut Conn<'_>, table: &(&str, usize, &str)) -> Result<u64> {
    let &(name, key_len, columns) = table;
    let names: Vec<&str> = columns.split(", ").collect();
    let key = names[..key_len].join(", ");
    let marks = |first: usize, n: usize| -> String {
        let marks: Vec<String> = (first..first + n).map(|i| format!("?{i}")).collect();
        marks.join(", ")
    };
    let select = format!("SELECT {columns} FROM {name}");
    let first = format!("{select} ORDER BY {key} LIMIT {CHUNK}");
    let next = format!(
        "{select} WHERE ({key}) > ({}) ORDER BY {key} LIMIT {CHUNK}",
        marks(1, key_len)
    );
    let insert = format!("INSERT INTO {name} ({columns}) VALUES ");
    let mut count = 0;
    let mut last: Option<Row> = None;
    loop {
        let after: Vec<&Value> = last.iter().flat_map(|row| &row[..key_len]).collect();
        let sql = if last.is_some() { &next } else { &first };
        let rows = read(from, sql, &after, &names)?;
        if rows.is_empty() {
            return Ok(count);
        }
        match to {
            Conn::Sqlite(tx) => {
                let mut statement =
                    tx.prepare_cached(&format!("{insert}({})", marks(1, names.len())))?;
                for row in &rows {
                    let values: Vec<_> = row.iter().map(Value::sqlite).collect();
                    statement.execute(values.as_slice())?;
                }
            }
            Conn::Postgres(client) => {
                let tuples: Vec<String> = (0..rows.len())
                    .map(|i| format!("({})", marks(i * names.len() + 1, names.len())))
                    .collect();
                let values: Vec<_> = rows.iter().flatten().map(Value::pg).collect();
                client.execute(&pg_dialect(&(insert.clone() + &tuples.join(", "))), &values)?;
            }
        }
        count += rows.len() as u64;
        last = rows.into_iter().last();
    }
}

/// The rows `sql` (in SQLite's words) returns with `params`, its columns
/// being `names`.
fn read(from: &mut Conn<'_>, sql: &str, params: &[&Value], names: &[&str]) -> Result<Vec<Row>> {
    match from {
        Conn::Sqlite(conn) => {
            let values: Vec<_> = params.iter().map(|v| v.sqlite()).collect();
            let mut statement = conn.prepare_cached(sql)?;
            let rows = statement.query_map(values.as_slice(), |row| {
                (names.iter().enumerate())
                    .map(|(i, name)| Ok(value!(row, i, *name, get)))
                    .collect()
            })?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        }
        Conn::Postgres(client) => {
            let values: Vec<_> = params.iter().map(|v| v.pg()).collect();
            let rows = client.query(&pg_dialect(sql), &values)?;
            (rows.iter())
                .map(|row| {
                    (names.iter().enumerate())
                        .map(|(i, name)| Ok(value!(row, i, *name, try_get)))
                        .collect()
                })
                .collect()
        }
    }
}

/// The highest user id and event id ever handed out (deleted ones too).
fn handed_out(conn: &mut Conn<'_>) -> Result<(i64, i64)> {
    Ok(match conn {
        Conn::Sqlite(conn) => conn.query_row(
            "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'users'), 0), \
                        coalesce((SELECT max(id) FROM users), 0)), \
                    max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0), \
                        coalesce((SELECT max(id) FROM events), 0))",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?,
        Conn::Postgres(client) => {
            let sequence: String = client
                .query_one("SELECT pg_get_serial_sequence('users', 'id')", &[])?
                .try_get(0)?;
            let row = client.query_one(
                &format!(
                    "SELECT greatest(CASE WHEN is_called THEN last_value ELSE last_value - 1 END, \
                     (SELECT coalesce(max(id), 0) FROM users)), \
                     (SELECT coalesce(max(id), 0) FROM events_last) FROM {sequence}"
                ),
                &[],
            )?;
            (row.try_get(0)?, row.try_get(1)?)
        }
    })
}
