//! User rows: insert, look up, list, update, delete.

use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::model::{Account, NewUser, Status, User, UserChanges, UserView};

const COLUMNS: &str = "id, username, email, level, status, profile_picture, created_at, updated_at, \
                       password_hash, is_staff, is_active, tokens_valid_after";

/// The rendered columns only (listings): the first eight of [`COLUMNS`].
const USER_COLUMNS: &str =
    "id, username, email, level, status, profile_picture, created_at, updated_at";

fn account_from_row(row: &Row<'_>) -> rusqlite::Result<Account> {
    Ok(Account {
        user: user_from_row(row)?,
        password_hash: row.get(8)?,
        is_staff: row.get(9)?,
        is_active: row.get(10)?,
        tokens_valid_after: row.get(11)?,
    })
}

/// The user of a row whose first columns are [`USER_COLUMNS`].
fn user_from_row(row: &Row<'_>) -> rusqlite::Result<User> {
    user_view_from_row(row).map(UserView::to_user)
}

/// [`user_from_row`], borrowing the row's text.
fn user_view_from_row<'r>(row: &'r Row<'_>) -> rusqlite::Result<UserView<'r>> {
    let text = |i: usize| -> rusqlite::Result<&'r str> {
        row.get_ref(i)?.as_str().map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
        })
    };
    Ok(UserView {
        id: row.get(0)?,
        username: text(1)?,
        email: text(2)?,
        level: row.get(3)?,
        status: Status::parse(text(4)?).unwrap_or(Status::Offline),
        profile_picture: text(5)?,
        created_at: text(6)?,
        updated_at: text(7)?,
    })
}

/// Inserts a user; a taken username or email fails with a UNIQUE violation
/// on `users.username` / `users.email`.
pub fn insert(conn: &mut Connection, new: &NewUser, now: &str) -> rusqlite::Result<User> {
    super::write(conn, |tx| {
        tx.query_row(
            &format!(
                "INSERT INTO users (username, email, password_hash, level, status, \
                 profile_picture, is_staff, is_active, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 1, ?8, ?8) RETURNING {COLUMNS}"
            ),
            params![
                new.username,
                new.email,
                new.password_hash,
                new.level,
                new.status.as_str(),
                new.profile_picture,
                new.is_staff,
                now
            ],
            account_from_row,
        )
        .map(|account| account.user)
    })
}

/// The account with this id.
pub fn by_id(conn: &Connection, id: i64) -> rusqlite::Result<Option<Account>> {
    conn.prepare_cached(&format!("SELECT {COLUMNS} FROM users WHERE id = ?1"))?
        .query_row([id], account_from_row)
        .optional()
}

/// The account with this username, ignoring ASCII case.
pub fn by_username(conn: &Connection, username: &str) -> rusqlite::Result<Option<Account>> {
    conn.prepare_cached(&format!("SELECT {COLUMNS} FROM users WHERE username = ?1"))?
        .query_row([username], account_from_row)
        .optional()
}

/// What every authenticated request needs to know about its user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthState {
    /// The username (throttling key of the password endpoint).
    pub username: String,
    /// Staff may edit anyone.
    pub is_staff: bool,
    /// Tokens issued before this second are void.
    pub tokens_valid_after: i64,
}

/// The auth state of an existing, active user; `None` for a missing or
/// inactive one. Checked on every authenticated request.
pub fn auth_state(conn: &Connection, id: i64) -> rusqlite::Result<Option<AuthState>> {
    conn.prepare_cached(
        "SELECT username, is_staff, tokens_valid_after FROM users WHERE id = ?1 AND is_active = 1",
    )?
    .query_row([id], |row| {
        Ok(AuthState {
            username: row.get(0)?,
            is_staff: row.get(1)?,
            tokens_valid_after: row.get(2)?,
        })
    })
    .optional()
}

/// The first second from which tokens are valid again after a revocation
/// at `now`: every token issued up to now has `iat <= now < now + 1`. The
/// SQL raises it by at least one past its old value too: tokens issued
/// after an earlier revocation in the same second carry `iat` = the old
/// value, and a second revocation must void them as well.
fn valid_after(now: i64) -> i64 {
    now + 1
}

/// Voids every token of the user issued until now ("log out everywhere");
/// `false` when the id is unknown.
pub fn revoke_tokens(conn: &mut Connection, id: i64, now: i64) -> rusqlite::Result<bool> {
    super::write(conn, |tx| {
        tx.execute(
            "UPDATE users SET tokens_valid_after = max(tokens_valid_after + 1, ?2) WHERE id = ?1",
            params![id, valid_after(now)],
        )
        .map(|n| n == 1)
    })
}

/// Activates or deactivates a user (deactivation voids their tokens);
/// `false` when the id is unknown.
pub fn set_active(
    conn: &mut Connection,
    id: i64,
    active: bool,
    now: i64,
    timestamp: &str,
) -> rusqlite::Result<bool> {
    super::write(conn, |tx| {
        tx.execute(
            "UPDATE users SET is_active = ?2, updated_at = ?3, \
             tokens_valid_after = CASE WHEN ?2 THEN tokens_valid_after \
                                       ELSE max(tokens_valid_after + 1, ?4) END \
             WHERE id = ?1",
            params![id, active, timestamp, valid_after(now)],
        )
        .map(|n| n == 1)
    })
}

/// Whether another user (not `except`) holds this username / email.
pub fn taken(
    conn: &Connection,
    username: Option<&str>,
    email: Option<&str>,
    except: Option<i64>,
) -> rusqlite::Result<(bool, bool)> {
    let except = except.unwrap_or(0);
    let check = |column: &str, value: Option<&str>| -> rusqlite::Result<bool> {
        match value {
            None => Ok(false),
            Some(value) => conn
                .prepare_cached(&format!(
                    "SELECT EXISTS (SELECT 1 FROM users WHERE {column} = ?1 AND id <> ?2)"
                ))?
                .query_row(params![value, except], |row| row.get(0)),
        }
    };
    Ok((check("username", username)?, check("email", email)?))
}

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

    fn column(self) -> &'static str {
        match self {
            SortColumn::Id => "id",
            SortColumn::Username => "username",
            SortColumn::Level => "level",
            SortColumn::CreatedAt => "created_at",
            SortColumn::UpdatedAt => "updated_at",
        }
    }

    fn value(self, user: &User) -> rusqlite::types::Value {
        use rusqlite::types::Value;
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
    fn filters(&self) -> (Vec<String>, Vec<rusqlite::types::Value>) {
        use rusqlite::types::Value;
        let mut conditions = Vec::new();
        let mut params = Vec::new();
        if let Some(search) = self.search.as_deref().filter(|s| !s.is_empty()) {
            let escaped = search
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            conditions.push("(username LIKE ? ESCAPE '\\' OR email LIKE ? ESCAPE '\\')".to_owned());
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

    fn order_by(&self) -> String {
        self.keys()
            .iter()
            .map(|(c, desc)| format!("{} {}", c.column(), if *desc { "DESC" } else { "ASC" }))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The keyset condition "after `last` in this order", with parameters.
    fn after(&self, last: &User) -> (String, Vec<rusqlite::types::Value>) {
        let values: Vec<_> = self.keys().iter().map(|(c, _)| c.value(last)).collect();
        self.keyset_from(&values, false)
    }

    /// The keyset condition "after (or at, when `inclusive`) the row whose
    /// sort keys are `values`", with parameters.
    fn keyset_from(
        &self,
        values: &[rusqlite::types::Value],
        inclusive: bool,
    ) -> (String, Vec<rusqlite::types::Value>) {
        let keys = self.keys();
        let mut alternatives = Vec::new();
        let mut params = Vec::new();
        for (i, (column, desc)) in keys.iter().enumerate() {
            let mut parts = Vec::new();
            for (j, (earlier, _)) in keys[..i].iter().enumerate() {
                parts.push(format!("{} = ?", earlier.column()));
                params.push(values[j].clone());
            }
            let last = i + 1 == keys.len();
            let op = match (*desc, inclusive && last) {
                (false, false) => ">",
                (false, true) => ">=",
                (true, false) => "<",
                (true, true) => "<=",
            };
            parts.push(format!("{} {op} ?", column.column()));
            params.push(values[i].clone());
            alternatives.push(format!("({})", parts.join(" AND ")));
        }
        (format!("({})", alternatives.join(" OR ")), params)
    }
}

fn where_clause(conditions: &[String]) -> String {
    if conditions.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conditions.join(" AND "))
    }
}

/// [`page_each`], collected (the tests' view of it).
#[cfg(test)]
fn page(
    conn: &Connection,
    query: &ListQuery,
    limit: i64,
    offset: i64,
    seek: &IdSeek,
) -> rusqlite::Result<Vec<User>> {
    let mut users = Vec::new();
    page_each(conn, query, limit, offset, seek, |user| {
        users.push(user.to_user());
        Ok(())
    })?;
    Ok(users)
}

/// One page by `LIMIT`/`OFFSET`, each user handed to `each` as it is
/// read, borrowed from the row (no copy of its text). Unfiltered deep
/// pages first find the page's first row, then read the page by keyset: in
/// id order (the default) through `seek`'s in-memory seek points, in the
/// other orders by stepping over `offset` entries of the ordering's index
/// (sort keys only).
pub fn page_each(
    conn: &Connection,
    query: &ListQuery,
    limit: i64,
    offset: i64,
    seek: &IdSeek,
    each: impl FnMut(UserView<'_>) -> rusqlite::Result<()>,
) -> rusqlite::Result<()> {
    if offset > 0 && query.filters().0.is_empty() {
        let keys = query.keys();
        let start: Option<Vec<rusqlite::types::Value>> = match keys.as_slice() {
            [(SortColumn::Id, descending)] if offset >= IdSeek::STRIDE => seek
                .id_at(conn, offset, *descending)?
                .map(|id| vec![rusqlite::types::Value::Integer(id)]),
            _ => {
                let columns: Vec<&str> = keys.iter().map(|(c, _)| c.column()).collect();
                let seek_index = if columns == ["id"] {
                    " INDEXED BY users_id_seek"
                } else {
                    ""
                };
                let sql = format!(
                    "SELECT {} FROM users{seek_index} ORDER BY {} LIMIT 1 OFFSET ?1",
                    columns.join(", "),
                    query.order_by()
                );
                conn.prepare_cached(&sql)?
                    .query_row([offset], |row| {
                        (0..columns.len()).map(|i| row.get(i)).collect()
                    })
                    .optional()?
            }
        };
        let Some(start) = start else {
            return Ok(());
        };
        let (condition, mut params) = query.keyset_from(&start, true);
        let sql = format!(
            "SELECT {USER_COLUMNS} FROM users WHERE {condition} ORDER BY {} LIMIT ?",
            query.order_by()
        );
        params.push(rusqlite::types::Value::Integer(limit));
        return each_row(conn, &sql, params, each);
    }
    let (conditions, mut params) = query.filters();
    let sql = format!(
        "SELECT {USER_COLUMNS} FROM users{} ORDER BY {} LIMIT ? OFFSET ?",
        where_clause(&conditions),
        query.order_by()
    );
    params.push(rusqlite::types::Value::Integer(limit));
    params.push(rusqlite::types::Value::Integer(offset));
    each_row(conn, &sql, params, each)
}

/// Runs `sql` (selecting [`USER_COLUMNS`]) and hands every row's user to
/// `each`.
fn each_row(
    conn: &Connection,
    sql: &str,
    params: Vec<rusqlite::types::Value>,
    mut each: impl FnMut(UserView<'_>) -> rusqlite::Result<()>,
) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
    while let Some(row) = rows.next()? {
        each(user_view_from_row(row)?)?;
    }
    Ok(())
}

/// How many users match the filters (without filters, read from
/// `users_meta`, which triggers keep exact: no scan).
pub fn count(conn: &Connection, query: &ListQuery) -> rusqlite::Result<i64> {
    let (conditions, params) = query.filters();
    if conditions.is_empty() {
        return Ok(meta(conn)?.users);
    }
    let sql = format!("SELECT count(*) FROM users{}", where_clause(&conditions));
    conn.prepare_cached(&sql)?
        .query_row(rusqlite::params_from_iter(params), |row| row.get(0))
}

/// The one row of `users_meta`, kept exact by triggers for every writer.
struct Meta {
    /// How many users there are.
    users: i64,
    /// How many times users changed places in id order.
    reorders: i64,
    /// Bumped by every insert, update and delete of a user.
    changes: i64,
}

fn meta(conn: &Connection) -> rusqlite::Result<Meta> {
    conn.prepare_cached("SELECT users, reorders, changes FROM users_meta WHERE only = 1")?
        .query_row([], |row| {
            Ok(Meta {
                users: row.get(0)?,
                reorders: row.get(1)?,
                changes: row.get(2)?,
            })
        })
}

/// `users_meta.changes`: bumped by every insert, update and delete of a
/// user (by triggers, whoever writes), so two reads that find the same
/// value saw the same users. Call inside a read transaction.
pub fn changes(conn: &Connection) -> rusqlite::Result<i64> {
    Ok(meta(conn)?.changes)
}

/// Seek points for deep pages in id order: the id at every
/// [`IdSeek::STRIDE`]th position, so finding the row at any offset steps
/// over fewer than `STRIDE` index entries instead of `offset`. Built on
/// first use (one pass over the id index) and rebuilt when `users_meta`
/// says users changed places; appended users (new ids are always the
/// largest) leave the points valid.
#[derive(Debug, Default)]
pub struct IdSeek {
    points: std::sync::Mutex<Option<SeekPoints>>,
}

#[derive(Debug)]
struct SeekPoints {
    /// `users_meta` when built.
    users: i64,
    reorders: i64,
    /// `ids[k]` is the id at position `k * STRIDE`.
    ids: Vec<i64>,
}

impl IdSeek {
    /// The distance between seek points.
    pub const STRIDE: i64 = 1_000;

    /// The id `offset` places from the start of id order (from its end
    /// when `descending`); `None` past the end. Call inside a read
    /// transaction.
    pub fn id_at(
        &self,
        conn: &Connection,
        offset: i64,
        descending: bool,
    ) -> rusqlite::Result<Option<i64>> {
        let Meta {
            users, reorders, ..
        } = meta(conn)?;
        let position = if descending {
            users - 1 - offset
        } else {
            offset
        };
        if position < 0 || position >= users {
            return Ok(None);
        }
        let (from, skip) = {
            let mut points = self.points.lock().unwrap_or_else(|e| e.into_inner());
            let stale = points.as_ref().is_none_or(|p| {
                p.reorders != reorders
                    || p.users > users
                    // Far past the points (many users appended since).
                    || position >= p.users + Self::STRIDE
            });
            if stale {
                *points = Some(SeekPoints {
                    users,
                    reorders,
                    ids: Self::build(conn)?,
                });
            }
            let ids = points
                .as_ref()
                .map(|p| p.ids.as_slice())
                .unwrap_or_default();
            let k = usize::try_from(position / Self::STRIDE)
                .unwrap_or(usize::MAX)
                .min(ids.len().saturating_sub(1));
            match ids.get(k) {
                Some(&id) => (id, position - k as i64 * Self::STRIDE),
                None => return Ok(None),
            }
        };
        conn.prepare_cached(
            "SELECT id FROM users INDEXED BY users_id_seek WHERE id >= ?1 \
             ORDER BY id LIMIT 1 OFFSET ?2",
        )?
        .query_row([from, skip], |row| row.get(0))
        .optional()
    }

    fn build(conn: &Connection) -> rusqlite::Result<Vec<i64>> {
        let mut stmt = conn.prepare("SELECT id FROM users INDEXED BY users_id_seek ORDER BY id")?;
        let mut rows = stmt.query([])?;
        let mut ids = Vec::new();
        let mut n: i64 = 0;
        while let Some(row) = rows.next()? {
            if n % Self::STRIDE == 0 {
                ids.push(row.get(0)?);
            }
            n += 1;
        }
        Ok(ids)
    }
}

/// Up to `n` users following `last` in the query's order (keyset paging:
/// each chunk is one short read, whatever the depth), each handed to
/// `each` borrowed from its row.
pub fn chunk_after_each(
    conn: &Connection,
    query: &ListQuery,
    last: Option<&User>,
    n: i64,
    each: impl FnMut(UserView<'_>) -> rusqlite::Result<()>,
) -> rusqlite::Result<()> {
    let (mut conditions, mut params) = query.filters();
    if let Some(last) = last {
        let (condition, more) = query.after(last);
        conditions.push(condition);
        params.extend(more);
    }
    let sql = format!(
        "SELECT {USER_COLUMNS} FROM users{} ORDER BY {} LIMIT ?",
        where_clause(&conditions),
        query.order_by()
    );
    params.push(rusqlite::types::Value::Integer(n));
    each_row(conn, &sql, params, each)
}

/// [`chunk_after_each`], collected (the tests' view of it).
#[cfg(test)]
fn chunk_after(
    conn: &Connection,
    query: &ListQuery,
    last: Option<&User>,
    n: i64,
) -> rusqlite::Result<Vec<User>> {
    let mut users = Vec::new();
    chunk_after_each(conn, query, last, n, |user| {
        users.push(user.to_user());
        Ok(())
    })?;
    Ok(users)
}

/// Every account (with the private flags), ordered by id; for the CLI.
pub fn list_accounts(conn: &Connection) -> rusqlite::Result<Vec<Account>> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {COLUMNS} FROM users ORDER BY id"))?;
    let rows = stmt.query_map([], account_from_row)?;
    rows.collect()
}

/// Applies the given changes; `None` when the id is unknown.
pub fn update(
    conn: &mut Connection,
    id: i64,
    changes: &UserChanges,
    now: &str,
) -> rusqlite::Result<Option<User>> {
    super::write(conn, |tx| {
        tx.query_row(
            &format!(
                "UPDATE users SET \
                 username = coalesce(?2, username), \
                 email = coalesce(?3, email), \
                 level = coalesce(?4, level), \
                 status = coalesce(?5, status), \
                 profile_picture = coalesce(?6, profile_picture), \
                 updated_at = ?7 \
                 WHERE id = ?1 RETURNING {COLUMNS}"
            ),
            params![
                id,
                changes.username,
                changes.email,
                changes.level,
                changes.status.map(Status::as_str),
                changes.profile_picture,
                now
            ],
            account_from_row,
        )
        .optional()
        .map(|account| account.map(|a| a.user))
    })
}

/// Replaces a password hash and voids every token issued until now;
/// `false` when the id is unknown.
pub fn set_password_hash(
    conn: &mut Connection,
    id: i64,
    hash: &str,
    now: i64,
    timestamp: &str,
) -> rusqlite::Result<bool> {
    super::write(conn, |tx| {
        tx.execute(
            "UPDATE users SET password_hash = ?2, updated_at = ?3, \
             tokens_valid_after = max(tokens_valid_after + 1, ?4) WHERE id = ?1",
            params![id, hash, timestamp, valid_after(now)],
        )
        .map(|n| n == 1)
    })
}

/// Replaces a password hash only if it is still `old` (a login's upgrade
/// must not overwrite a password changed meanwhile).
pub fn upgrade_password_hash(
    conn: &mut Connection,
    id: i64,
    old: &str,
    new: &str,
) -> rusqlite::Result<bool> {
    super::write(conn, |tx| {
        tx.execute(
            "UPDATE users SET password_hash = ?3 WHERE id = ?1 AND password_hash = ?2",
            params![id, old, new],
        )
        .map(|n| n == 1)
    })
}

/// Deletes a user; `false` when the id is unknown.
pub fn delete(conn: &mut Connection, id: i64) -> rusqlite::Result<bool> {
    super::write(conn, |tx| {
        tx.execute("DELETE FROM users WHERE id = ?1", [id])
            .map(|n| n == 1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db;

    fn pool() -> (tempfile::TempDir, db::Pool) {
        let dir = tempfile::tempdir().unwrap();
        let pool = db::open(&db::Options {
            path: dir.path().join("u.sqlite3"),
            busy_timeout: std::time::Duration::from_secs(1),
            pool_size: 1,
        })
        .unwrap();
        (dir, pool)
    }

    fn new_user(name: &str) -> NewUser {
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

    #[test]
    fn usernames_are_unique_ignoring_case() {
        let (_dir, pool) = pool();
        let mut conn = pool.get().unwrap();
        insert(&mut conn, &new_user("Alice"), "t").unwrap();
        let mut dup = new_user("alice");
        dup.email = "other@example.com".to_owned();
        let err = insert(&mut conn, &dup, "t").unwrap_err();
        assert!(db::is_unique_violation(&err, "users.username"), "{err}");
        assert!(by_username(&conn, "ALICE").unwrap().is_some());
    }

    #[test]
    fn ids_are_not_reused_after_delete() {
        let (_dir, pool) = pool();
        let mut conn = pool.get().unwrap();
        let a = insert(&mut conn, &new_user("a"), "t").unwrap();
        assert!(delete(&mut conn, a.id).unwrap());
        let b = insert(&mut conn, &new_user("b"), "t").unwrap();
        assert!(b.id > a.id);
    }

    #[test]
    fn keyset_chunks_walk_every_order_exactly_once() {
        let (_dir, pool) = pool();
        let mut conn = pool.get().unwrap();
        for (i, level) in [3, 1, 3, 2, 1, 3, 2].iter().enumerate() {
            let mut user = new_user(&format!("u{i}"));
            user.level = *level;
            insert(&mut conn, &user, &format!("t{i}")).unwrap();
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
            let all = page(&conn, &query, 100, 0, &IdSeek::default()).unwrap();
            let mut walked = Vec::new();
            let mut last: Option<User> = None;
            loop {
                let chunk = chunk_after(&conn, &query, last.as_ref(), 2).unwrap();
                let Some(tail) = chunk.last().cloned() else {
                    break;
                };
                walked.extend(chunk);
                last = Some(tail);
            }
            assert_eq!(walked, all, "{:?}", query.ordering);
            assert_eq!(count(&conn, &query).unwrap(), 7);
        }
    }

    #[test]
    fn seeking_deep_pages_matches_plain_offsets() {
        let (_dir, pool) = pool();
        let mut conn = pool.get().unwrap();
        for i in 0..40 {
            let mut user = new_user(&format!("U{:02}", (i * 7) % 40));
            user.level = i % 3;
            insert(&mut conn, &user, &format!("t{}", i % 5)).unwrap();
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
            let all = page(&conn, &query, 1000, 0, &IdSeek::default()).unwrap();
            for offset in [1, 7, 39, 40, 55] {
                let expected: Vec<_> = all.iter().skip(offset).take(6).cloned().collect();
                let got = page(&conn, &query, 6, offset as i64, &IdSeek::default()).unwrap();
                assert_eq!(got, expected, "{:?} at {offset}", query.ordering);
            }
        }
    }

    #[test]
    fn seek_points_find_deep_positions_and_follow_changes() {
        let (_dir, pool) = pool();
        let mut conn = pool.get().unwrap();
        let add = |conn: &Connection, from: i64, to: i64| {
            conn.execute(
                "WITH RECURSIVE n(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM n WHERE i < ?2)
                 INSERT INTO users (username, email, password_hash, created_at, updated_at)
                 SELECT 'u' || i, 'u' || i || '@example.com', 'x', 't', 't' FROM n",
                [from, to],
            )
            .unwrap();
        };
        add(&conn, 1, 2_600);
        let seek = IdSeek::default();
        let plain = |conn: &Connection, position: i64| -> Option<i64> {
            conn.query_row(
                "SELECT id FROM users ORDER BY id LIMIT 1 OFFSET ?1",
                [position],
                |row| row.get(0),
            )
            .optional()
            .unwrap()
        };
        let check = |conn: &Connection, seek: &IdSeek| {
            let users: i64 = conn
                .query_row("SELECT count(*) FROM users", [], |row| row.get(0))
                .unwrap();
            assert_eq!(count(conn, &ListQuery::default()).unwrap(), users);
            for position in [
                0,
                1,
                999,
                1_000,
                1_001,
                1_999,
                2_000,
                2_599,
                users - 1,
                users,
                users + 5,
            ] {
                assert_eq!(
                    seek.id_at(conn, position, false).unwrap(),
                    plain(conn, position),
                    "{position}"
                );
            }
            for ordering in [vec![], vec![(SortColumn::Id, true)]] {
                let query = ListQuery {
                    ordering,
                    ..ListQuery::default()
                };
                let all = page(conn, &query, 5_000, 0, seek).unwrap();
                for offset in [1_000, 1_234, 2_000, users - 3, users] {
                    let expected: Vec<_> =
                        all.iter().skip(offset as usize).take(7).cloned().collect();
                    let got = page(conn, &query, 7, offset, seek).unwrap();
                    assert_eq!(got, expected, "{:?} at {offset}", query.ordering);
                }
            }
        };
        check(&conn, &seek);
        // Deletes shift everyone after them: the points must be rebuilt.
        conn.execute("DELETE FROM users WHERE id % 7 = 0", [])
            .unwrap();
        check(&conn, &seek);
        // Appends leave the points valid and are found past them.
        add(&conn, 5_000, 6_500);
        check(&conn, &seek);
        // A user inserted below the largest id shifts the rest too.
        conn.execute(
            "INSERT INTO users (id, username, email, password_hash, created_at, updated_at)
             VALUES (14, 'back', 'back@example.com', 'x', 't', 't')",
            [],
        )
        .unwrap();
        check(&conn, &seek);
        insert(&mut conn, &new_user("last"), "t").unwrap();
        check(&conn, &seek);
    }

    #[test]
    fn search_escapes_like_wildcards() {
        let (_dir, pool) = pool();
        let mut conn = pool.get().unwrap();
        insert(&mut conn, &new_user("a_b"), "t").unwrap();
        insert(&mut conn, &new_user("axb"), "t").unwrap();
        let query = ListQuery {
            search: Some("A_".into()),
            ..ListQuery::default()
        };
        let found = page(&conn, &query, 10, 0, &IdSeek::default()).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].username, "a_b");
    }

    #[test]
    fn update_changes_only_given_fields() {
        let (_dir, pool) = pool();
        let mut conn = pool.get().unwrap();
        let a = insert(&mut conn, &new_user("a"), "t0").unwrap();
        let changes = UserChanges {
            status: Some(Status::Busy),
            ..UserChanges::default()
        };
        let updated = update(&mut conn, a.id, &changes, "t1").unwrap().unwrap();
        assert_eq!(updated.status, Status::Busy);
        assert_eq!(updated.username, "a");
        assert_eq!(updated.created_at, "t0");
        assert_eq!(updated.updated_at, "t1");
        assert!(update(&mut conn, 999, &changes, "t2").unwrap().is_none());
    }
}
