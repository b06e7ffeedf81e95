//! Listing users: filters and order, pages by `LIMIT`/`OFFSET` (deep ones
//! by keyset from their first row), keyset chunks for streaming a whole
//! listing, and counts.

use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension};

use super::users::{user_from_pg, user_from_row};
use super::{Conn, Result};
use crate::model::{Status, User};

/// The public columns, in [`user_from_row`]'s order.
const USER_COLUMNS: &str =
    "id, username, email, level, status, profile_picture, created_at, updated_at";

/// A column GET /api/users can be ordered by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SortColumn {
    /// `id`
    Id,
    /// `username` (ignoring ASCII case, as it is unique)
    Username,
    /// `level`
    Level,
    /// `created_at`
    CreatedAt,
    /// `updated_at`
    UpdatedAt,
}

impl SortColumn {
    /// Parses an `ordering` field name.
    pub fn parse(name: &str) -> Option<SortColumn> {
        Some(match name {
            "id" => SortColumn::Id,
            "username" => SortColumn::Username,
            "level" => SortColumn::Level,
            "created_at" => SortColumn::CreatedAt,
            "updated_at" => SortColumn::UpdatedAt,
            _ => return None,
        })
    }

    /// The column in SQL: PostgreSQL compares usernames through
    /// `lower()`, as its unique index does (SQLite's column has NOCASE).
    fn column(self, pg: bool) -> &'static str {
        match self {
            SortColumn::Id => "id",
            SortColumn::Username if pg => "lower(username)",
            SortColumn::Username => "username",
            SortColumn::Level => "level",
            SortColumn::CreatedAt => "created_at",
            SortColumn::UpdatedAt => "updated_at",
        }
    }

    fn value(self, user: &User) -> Value {
        match self {
            SortColumn::Id => Value::Integer(user.id),
            SortColumn::Username => Value::Text(user.username.clone()),
            SortColumn::Level => Value::Integer(user.level),
            SortColumn::CreatedAt => Value::Text(user.created_at.clone()),
            SortColumn::UpdatedAt => Value::Text(user.updated_at.clone()),
        }
    }
}

/// Filters and order of a user listing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ListQuery {
    /// Case-insensitive substring of username or email.
    pub search: Option<String>,
    /// Only users with this status.
    pub status: Option<Status>,
    /// Sort keys, `true` = descending; `id` ascending is always appended
    /// as the final tie-breaker.
    pub ordering: Vec<(SortColumn, bool)>,
}

impl ListQuery {
    /// The sort keys with the `id` tie-breaker, cut after `id` (unique).
    fn keys(&self) -> Vec<(SortColumn, bool)> {
        let mut keys = Vec::new();
        for &(column, desc) in &self.ordering {
            if keys.iter().any(|(c, _)| *c == column) {
                continue;
            }
            keys.push((column, desc));
            if column == SortColumn::Id {
                return keys;
            }
        }
        keys.push((SortColumn::Id, false));
        keys
    }

    /// `WHERE` conditions for the filters, and their parameters.
    fn filters(&self, pg: bool) -> (Vec<String>, Vec<Value>) {
        let mut conditions = Vec::new();
        let mut params = Vec::new();
        if let Some(search) = self.search.as_deref().filter(|s| !s.is_empty()) {
            let escaped = search
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            let like = if pg { "ILIKE" } else { "LIKE" };
            conditions.push(format!(
                "(username {like} ? ESCAPE '\\' OR email {like} ? ESCAPE '\\')"
            ));
            let pattern = format!("%{escaped}%");
            params.push(Value::Text(pattern.clone()));
            params.push(Value::Text(pattern));
        }
        if let Some(status) = self.status {
            conditions.push("status = ?".to_owned());
            params.push(Value::Text(status.as_str().to_owned()));
        }
        (conditions, params)
    }

    fn order_by(&self, pg: bool) -> String {
        self.keys()
            .iter()
            .map(|(c, desc)| format!("{} {}", c.column(pg), if *desc { "DESC" } else { "ASC" }))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The keyset condition "after `last` in this order", with parameters.
    fn after(&self, last: &User, pg: bool) -> (String, Vec<Value>) {
        let keys = self.keys();
        let mut alternatives = Vec::new();
        let mut params = Vec::new();
        for (i, (column, desc)) in keys.iter().enumerate() {
            let mut parts = Vec::new();
            for (earlier, _) in &keys[..i] {
                parts.push(format!(
                    "{} = {}",
                    earlier.column(pg),
                    placeholder(*earlier, pg)
                ));
                params.push(earlier.value(last));
            }
            let op = if *desc { "<" } else { ">" };
            parts.push(format!(
                "{} {op} {}",
                column.column(pg),
                placeholder(*column, pg)
            ));
            params.push(column.value(last));
            alternatives.push(format!("({})", parts.join(" AND ")));
        }
        (format!("({})", alternatives.join(" OR ")), params)
    }
}

/// A keyset parameter's placeholder: a username lowered on PostgreSQL.
fn placeholder(column: SortColumn, pg: bool) -> &'static str {
    if pg && column == SortColumn::Username {
        "lower(?)"
    } else {
        "?"
    }
}

fn where_clause(conditions: &[String]) -> String {
    if conditions.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conditions.join(" AND "))
    }
}

/// One page by `LIMIT`/`OFFSET`; on SQLite, an unfiltered deep page in id
/// order (the default) finds its first id through `seek` and reads on from
/// there (PostgreSQL steps over its index quickly enough).
pub fn page(
    conn: &mut Conn<'_>,
    query: &ListQuery,
    limit: i64,
    offset: i64,
    seek: &impl IdPositions,
) -> Result<Vec<User>> {
    if let (Conn::Sqlite(sqlite), [(SortColumn::Id, descending)], true) = (
        &conn,
        query.keys().as_slice(),
        offset >= SEEK_STRIDE && query.filters(false).0.is_empty(),
    ) {
        let Some(start) = seek.id_at(sqlite, offset, *descending)? else {
            return Ok(Vec::new());
        };
        let (op, order) = if *descending {
            ("<=", "DESC")
        } else {
            (">=", "ASC")
        };
        let sql =
            format!("SELECT {USER_COLUMNS} FROM users WHERE id {op} ? ORDER BY id {order} LIMIT ?");
        return rows(conn, &sql, vec![start.into(), limit.into()]);
    }
    let pg = matches!(conn, Conn::Postgres(_));
    let (conditions, mut params) = query.filters(pg);
    let sql = format!(
        "SELECT {USER_COLUMNS} FROM users{} ORDER BY {} LIMIT ? OFFSET ?",
        where_clause(&conditions),
        query.order_by(pg)
    );
    params.push(Value::Integer(limit));
    params.push(Value::Integer(offset));
    rows(conn, &sql, params)
}

/// The users `sql` (selecting [`USER_COLUMNS`], with `?` placeholders)
/// finds.
fn rows(conn: &mut Conn<'_>, sql: &str, params: Vec<Value>) -> Result<Vec<User>> {
    match conn {
        Conn::Sqlite(conn) => {
            let mut stmt = conn.prepare_cached(sql)?;
            let users = stmt.query_map(rusqlite::params_from_iter(params), user_from_row)?;
            Ok(users.collect::<rusqlite::Result<_>>()?)
        }
        Conn::Postgres(client) => {
            let values = pg_values(&params);
            let refs: Vec<_> = values.iter().map(|v| v.as_ref()).collect();
            client
                .query(&numbered(sql), &refs)?
                .iter()
                .map(user_from_pg)
                .collect()
        }
    }
}

/// A parameter PostgreSQL can take.
type PgValue = Box<dyn postgres::types::ToSql + Sync>;

fn pg_values(params: &[Value]) -> Vec<PgValue> {
    params
        .iter()
        .map(|value| -> PgValue {
            match value {
                Value::Integer(i) => Box::new(*i),
                Value::Text(text) => Box::new(text.clone()),
                Value::Real(r) => Box::new(*r),
                Value::Blob(b) => Box::new(b.clone()),
                Value::Null => Box::new(Option::<i64>::None),
            }
        })
        .collect()
}

/// `?` placeholders numbered `$1`, `$2`, … in order (PostgreSQL's form).
fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push_str(&format!("${n}"));
        } else {
            out.push(c);
        }
    }
    out
}

/// How many users match the filters (without filters, read from
/// `users_meta`, which triggers keep exact: no scan).
pub fn count(conn: &mut Conn<'_>, query: &ListQuery) -> Result<i64> {
    let pg = matches!(conn, Conn::Postgres(_));
    let (conditions, params) = query.filters(pg);
    match conn {
        Conn::Sqlite(conn) if conditions.is_empty() => Ok(meta(conn)?.users),
        Conn::Sqlite(conn) => {
            let sql = format!("SELECT count(*) FROM users{}", where_clause(&conditions));
            Ok(conn
                .prepare_cached(&sql)?
                .query_row(rusqlite::params_from_iter(params), |row| row.get(0))?)
        }
        Conn::Postgres(client) => {
            let sql = if conditions.is_empty() {
                "SELECT users FROM users_meta WHERE one = 1".to_owned()
            } else {
                numbered(&format!(
                    "SELECT count(*) FROM users{}",
                    where_clause(&conditions)
                ))
            };
            let values = pg_values(&params);
            let refs: Vec<_> = values.iter().map(|v| v.as_ref()).collect();
            Ok(client.query_one(&sql, &refs)?.try_get(0)?)
        }
    }
}

/// The one row of `users_meta`, kept exact by triggers for every writer.
struct Meta {
    /// How many users there are.
    users: i64,
    /// How many times users changed places in id order.
    reorders: i64,
}

fn meta(conn: &Connection) -> rusqlite::Result<Meta> {
    conn.prepare_cached("SELECT users, reorders FROM users_meta WHERE only = 1")?
        .query_row([], |row| {
            Ok(Meta {
                users: row.get(0)?,
                reorders: row.get(1)?,
            })
        })
}

/// The distance between id seek points (see [`IdPositions`]).
pub const SEEK_STRIDE: i64 = 1_000;

/// Finds the id at a position of id order faster than stepping over the
/// index entries before it (the server keeps seek points for this).
pub trait IdPositions {
    /// The id `position` places from the start of id order (from its end
    /// when `descending`); `None` past the end.
    fn id_at(
        &self,
        conn: &Connection,
        position: i64,
        descending: bool,
    ) -> rusqlite::Result<Option<i64>>;
}

/// How many users there are, and how many times users changed places in
/// id order (a seek point is good while neither moved the wrong way).
pub fn id_order_stamp(conn: &Connection) -> rusqlite::Result<(i64, i64)> {
    let meta = meta(conn)?;
    Ok((meta.users, meta.reorders))
}

/// The id at every `stride`th position of id order, from the first.
pub fn ids_every(conn: &Connection, stride: i64) -> rusqlite::Result<Vec<i64>> {
    let mut stmt = conn.prepare("SELECT id FROM users INDEXED BY users_id_seek ORDER BY id")?;
    let mut rows = stmt.query([])?;
    let mut ids = Vec::new();
    let mut n: i64 = 0;
    while let Some(row) = rows.next()? {
        if n % stride == 0 {
            ids.push(row.get(0)?);
        }
        n += 1;
    }
    Ok(ids)
}

/// The id `skip` places after `from` (an id) in id order.
pub fn id_after(conn: &Connection, from: i64, skip: i64) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached(
        "SELECT id FROM users INDEXED BY users_id_seek WHERE id >= ?1 \
         ORDER BY id LIMIT 1 OFFSET ?2",
    )?
    .query_row([from, skip], |row| row.get(0))
    .optional()
}

/// Up to `n` users following `last` in the query's order (keyset paging:
/// each chunk is one short read, whatever the depth).
pub fn chunk_after(
    conn: &mut Conn<'_>,
    query: &ListQuery,
    last: Option<&User>,
    n: i64,
) -> Result<Vec<User>> {
    let pg = matches!(conn, Conn::Postgres(_));
    let (mut conditions, mut params) = query.filters(pg);
    if let Some(last) = last {
        let (condition, more) = query.after(last, pg);
        conditions.push(condition);
        params.extend(more);
    }
    let sql = format!(
        "SELECT {USER_COLUMNS} FROM users{} ORDER BY {} LIMIT ?",
        where_clause(&conditions),
        query.order_by(pg)
    );
    params.push(Value::Integer(n));
    rows(conn, &sql, params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::testing::{new_user, pool};
    use crate::db::users::insert;

    /// Ids found by stepping over the index, as if there were no seek
    /// points.
    pub struct NoSeek;

    impl IdPositions for NoSeek {
        fn id_at(
            &self,
            conn: &Connection,
            position: i64,
            descending: bool,
        ) -> rusqlite::Result<Option<i64>> {
            let order = if descending { "DESC" } else { "ASC" };
            conn.query_row(
                &format!("SELECT id FROM users ORDER BY id {order} LIMIT 1 OFFSET ?1"),
                [position],
                |row| row.get(0),
            )
            .optional()
        }
    }

    #[test]
    fn keyset_chunks_walk_every_order_exactly_once() {
        let (_dir, pool) = pool();
        let c = pool.get().unwrap();
        let conn = &mut crate::db::Conn::Sqlite(&c);
        for (i, level) in [3, 1, 3, 2, 1, 3, 2].iter().enumerate() {
            let mut user = new_user(&format!("u{i}"));
            user.level = *level;
            insert(conn, &user, &format!("t{i}")).unwrap();
        }
        for ordering in [
            vec![],
            vec![(SortColumn::Level, true)],
            vec![(SortColumn::Level, false), (SortColumn::Username, true)],
            vec![(SortColumn::CreatedAt, true)],
        ] {
            let query = ListQuery {
                ordering,
                ..ListQuery::default()
            };
            let all = page(conn, &query, 100, 0, &NoSeek).unwrap();
            let mut walked = Vec::new();
            let mut last: Option<User> = None;
            loop {
                let chunk = chunk_after(conn, &query, last.as_ref(), 2).unwrap();
                let Some(tail) = chunk.last().cloned() else {
                    break;
                };
                walked.extend(chunk);
                last = Some(tail);
            }
            assert_eq!(walked, all, "{:?}", query.ordering);
            assert_eq!(count(conn, &query).unwrap(), 7);
        }
    }

    #[test]
    fn seeking_deep_pages_matches_plain_offsets() {
        let (_dir, pool) = pool();
        let c = pool.get().unwrap();
        let conn = &mut crate::db::Conn::Sqlite(&c);
        for i in 0..40 {
            let mut user = new_user(&format!("U{:02}", (i * 7) % 40));
            user.level = i % 3;
            insert(conn, &user, &format!("t{}", i % 5)).unwrap();
        }
        for ordering in [
            vec![],
            vec![(SortColumn::Id, true)],
            vec![(SortColumn::Level, false)],
            vec![(SortColumn::Level, true), (SortColumn::Username, false)],
            vec![(SortColumn::CreatedAt, true)],
        ] {
            let query = ListQuery {
                ordering,
                ..ListQuery::default()
            };
            let all = page(conn, &query, 1000, 0, &NoSeek).unwrap();
            for offset in [1, 7, 39, 40, 55] {
                let expected: Vec<_> = all.iter().skip(offset).take(6).cloned().collect();
                let got = page(conn, &query, 6, offset as i64, &NoSeek).unwrap();
                assert_eq!(got, expected, "{:?} at {offset}", query.ordering);
            }
        }
    }

    #[test]
    fn search_escapes_like_wildcards() {
        let (_dir, pool) = pool();
        let c = pool.get().unwrap();
        let conn = &mut crate::db::Conn::Sqlite(&c);
        insert(conn, &new_user("a_b"), "t").unwrap();
        insert(conn, &new_user("axb"), "t").unwrap();
        let query = ListQuery {
            search: Some("A_".into()),
            ..ListQuery::default()
        };
        let found = page(conn, &query, 10, 0, &NoSeek).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].username, "a_b");
    }

    /// `users_meta` counts what `count(*)` counts, and bumps `reorders`
    /// whenever a row leaves id order, whatever the writer does: REPLACE
    /// on each unique key and on two at once, with and without
    /// `recursive_triggers`, an ignored insert, an `UPDATE OR REPLACE`.
    #[test]
    fn users_meta_stays_exact_through_replace_and_ignore() {
        let (_dir, pool) = pool();
        let c = pool.get().unwrap();
        let conn = &mut crate::db::Conn::Sqlite(&c);
        let add = "INSERT OR REPLACE INTO users (id, username, email, password_hash, \
                   created_at, updated_at) VALUES (?1, ?2, ?3, 'x', 't', 't')";
        for recursive in [false, true] {
            c.execute_batch("DELETE FROM users").unwrap();
            for name in ["a", "b", "c", "d", "e"] {
                insert(conn, &new_user(name), "t").unwrap();
            }
            c.pragma_update(None, "recursive_triggers", recursive)
                .unwrap();
            let c_id: i64 = c
                .query_row("SELECT id FROM users WHERE username = 'c'", [], |r| {
                    r.get(0)
                })
                .unwrap();
            let steps: [(&str, &str, &[&dyn rusqlite::ToSql], bool); 7] = [
                (
                    "by username",
                    add,
                    &[&None::<i64>, &"A", &"new-a@example.com"],
                    true,
                ),
                (
                    "by e-mail",
                    add,
                    &[&None::<i64>, &"new-b", &"B@example.com"],
                    true,
                ),
                ("by id", add, &[&c_id, &"new-c", &"new-c@example.com"], true),
                (
                    "two rows at once",
                    add,
                    &[&None::<i64>, &"D", &"e@example.com"],
                    true,
                ),
                (
                    "an ignored insert",
                    "INSERT OR IGNORE INTO users (username, email, password_hash, created_at, \
                     updated_at) VALUES ('new-a', 'x@example.com', 'x', 't', 't')",
                    &[],
                    false,
                ),
                (
                    "a plain insert after it",
                    "INSERT INTO users (username, email, password_hash, created_at, updated_at) \
                     VALUES ('f', 'f@example.com', 'x', 't', 't')",
                    &[],
                    false,
                ),
                (
                    "an UPDATE OR REPLACE",
                    "UPDATE OR REPLACE users SET username = 'NEW-A' WHERE username = 'f'",
                    &[],
                    true,
                ),
            ];
            for (what, sql, params, moves) in steps {
                let (_, before) = id_order_stamp(&c).unwrap();
                c.execute(sql, params).unwrap();
                let (users, after) = id_order_stamp(&c).unwrap();
                let truth: i64 = c
                    .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
                    .unwrap();
                assert_eq!(users, truth, "{what}, recursive_triggers {recursive}");
                if moves && !recursive {
                    assert!(after > before, "{what}: reorders not bumped");
                }
            }
        }
    }
}
