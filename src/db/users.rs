//! User rows: insert, look up, list, update, delete.

use postgres::Row as PgRow;
use rusqlite::{OptionalExtension, Row, params};

use super::sql::{self, ToBoth, pg_dialect};
use super::{Conn, Result, write};
use crate::model::{Account, NewUser, Status, User, UserChanges, valid_after};

const COLUMNS: &str = "id, username, email, level, status, profile_picture, created_at, updated_at, \
                       password_hash, is_staff, is_active, tokens_valid_after";

fn account_from_row(row: &Row<'_>) -> rusqlite::Result<Account> {
    Ok(Account {
        user: user_from_row(row)?,
        password_hash: row.get(8)?,
        is_staff: row.get(9)?,
        is_active: row.get(10)?,
        tokens_valid_after: row.get(11)?,
    })
}

/// The user of a row whose first columns are the eight public ones, in
/// [`COLUMNS`]' order.
pub(super) fn user_from_row(row: &Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: row.get(0)?,
        username: row.get(1)?,
        email: row.get(2)?,
        level: row.get(3)?,
        status: Status::parse(row.get_ref(4)?.as_str()?).unwrap_or(Status::Offline),
        profile_picture: row.get(5)?,
        created_at: row.get(6)?,
        updated_at: row.get(7)?,
    })
}

fn account_from_pg(row: &PgRow) -> Result<Account> {
    Ok(Account {
        user: user_from_pg(row)?,
        password_hash: row.try_get(8)?,
        is_staff: row.try_get(9)?,
        is_active: row.try_get(10)?,
        tokens_valid_after: row.try_get(11)?,
    })
}

/// [`user_from_row`] for a PostgreSQL row.
pub(super) fn user_from_pg(row: &PgRow) -> Result<User> {
    Ok(User {
        id: row.try_get(0)?,
        username: row.try_get(1)?,
        email: row.try_get(2)?,
        level: row.try_get(3)?,
        status: Status::parse(row.try_get(4)?).unwrap_or(Status::Offline),
        profile_picture: row.try_get(5)?,
        created_at: row.try_get(6)?,
        updated_at: row.try_get(7)?,
    })
}

/// Inserts a user; a taken username or email fails with a UNIQUE violation
/// on `users.username` / `users.email`.
pub fn insert(conn: &mut Conn<'_>, new: &NewUser, now: &str) -> Result<User> {
    write(conn, |conn| match conn {
        Conn::Sqlite(tx) => Ok(tx
            .query_row(
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
            .map(|account| account.user)?),
        Conn::Postgres(client) => {
            let row = client.query_one(
                &format!(
                    "INSERT INTO users (username, email, password_hash, level, status, \
                     profile_picture, is_staff, is_active, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, true, $8, $8) RETURNING {COLUMNS}"
                ),
                &[
                    &new.username,
                    &new.email,
                    &new.password_hash,
                    &new.level,
                    &new.status.as_str(),
                    &new.profile_picture,
                    &new.is_staff,
                    &now,
                ],
            )?;
            user_from_pg(&row)
        }
    })
}

/// The account with this id.
pub fn by_id(conn: &mut Conn<'_>, id: i64) -> Result<Option<Account>> {
    match conn {
        Conn::Sqlite(conn) => Ok(conn
            .prepare_cached(&format!("SELECT {COLUMNS} FROM users WHERE id = ?1"))?
            .query_row([id], account_from_row)
            .optional()?),
        Conn::Postgres(client) => client
            .query_opt(
                &format!("SELECT {COLUMNS} FROM users WHERE id = $1"),
                &[&id],
            )?
            .as_ref()
            .map(account_from_pg)
            .transpose(),
    }
}

/// The account with this username, ignoring case.
pub fn by_username(conn: &mut Conn<'_>, username: &str) -> Result<Option<Account>> {
    match conn {
        Conn::Sqlite(conn) => Ok(conn
            .prepare_cached(&format!("SELECT {COLUMNS} FROM users WHERE username = ?1"))?
            .query_row([username], account_from_row)
            .optional()?),
        Conn::Postgres(client) => client
            .query_opt(
                &format!("SELECT {COLUMNS} FROM users WHERE lower(username) = lower($1)"),
                &[&username],
            )?
            .as_ref()
            .map(account_from_pg)
            .transpose(),
    }
}

/// What every authenticated request needs to know about its user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthState {
    /// Staff may edit anyone.
    pub is_staff: bool,
    /// Tokens issued before this second are void.
    pub tokens_valid_after: i64,
}

/// The auth state of an existing, active user; `None` for a missing or
/// inactive one. Checked on every authenticated request.
pub fn auth_state(conn: &mut Conn<'_>, id: i64) -> Result<Option<AuthState>> {
    match conn {
        Conn::Sqlite(conn) => Ok(conn
            .prepare_cached(
                "SELECT is_staff, tokens_valid_after FROM users WHERE id = ?1 AND is_active = 1",
            )?
            .query_row([id], |row| {
                Ok(AuthState {
                    is_staff: row.get(0)?,
                    tokens_valid_after: row.get(1)?,
                })
            })
            .optional()?),
        Conn::Postgres(client) => client
            .query_opt(
                "SELECT is_staff, tokens_valid_after FROM users WHERE id = $1 AND is_active",
                &[&id],
            )?
            .map(|row| {
                Ok(AuthState {
                    is_staff: row.try_get(0)?,
                    tokens_valid_after: row.try_get(1)?,
                })
            })
            .transpose(),
    }
}

/// Runs one change statement written for both engines (see
/// [`sql::execute`]) in its own write; whether it hit a row.
fn change(conn: &mut Conn<'_>, sql: &str, params: &[&dyn ToBoth]) -> Result<bool> {
    write(conn, |conn| Ok(sql::execute(conn, sql, params)? == 1))
}

/// Voids every token of the user issued until now ("log out everywhere");
/// `false` when the id is unknown.
pub fn revoke_tokens(conn: &mut Conn<'_>, id: i64, now: i64) -> Result<bool> {
    change(
        conn,
        "UPDATE users SET tokens_valid_after = max(tokens_valid_after + 1, ?2) WHERE id = ?1",
        &[&id, &valid_after(now)],
    )
}

/// Activates or deactivates a user (deactivation voids their tokens);
/// `false` when the id is unknown.
pub fn set_active(
    conn: &mut Conn<'_>,
    id: i64,
    active: bool,
    now: i64,
    timestamp: &str,
) -> Result<bool> {
    change(
        conn,
        "UPDATE users SET is_active = ?2, updated_at = ?3, \
         tokens_valid_after = CASE WHEN ?2 THEN tokens_valid_after \
                                   ELSE max(tokens_valid_after + 1, ?4) END \
         WHERE id = ?1",
        &[&id, &active, &timestamp, &valid_after(now)],
    )
}

/// Whether another user (not `except`) holds this username / email.
pub fn taken(
    conn: &mut Conn<'_>,
    username: Option<&str>,
    email: Option<&str>,
    except: Option<i64>,
) -> Result<(bool, bool)> {
    let except = except.unwrap_or(0);
    let mut check = |column: &str, value: Option<&str>| -> Result<bool> {
        let Some(value) = value else {
            return Ok(false);
        };
        match conn {
            Conn::Sqlite(conn) => Ok(conn
                .prepare_cached(&format!(
                    "SELECT EXISTS (SELECT 1 FROM users WHERE {column} = ?1 AND id <> ?2)"
                ))?
                .query_row(params![value, except], |row| row.get(0))?),
            Conn::Postgres(client) => Ok(client
                .query_one(
                    &format!(
                        "SELECT EXISTS (SELECT 1 FROM users \
                         WHERE lower({column}) = lower($1) AND id <> $2)"
                    ),
                    &[&value, &except],
                )?
                .try_get(0)?),
        }
    };
    Ok((check("username", username)?, check("email", email)?))
}

/// Every account (with the private flags), ordered by id; for the CLI.
pub fn list_accounts(conn: &mut Conn<'_>) -> Result<Vec<Account>> {
    let sql = format!("SELECT {COLUMNS} FROM users ORDER BY id");
    match conn {
        Conn::Sqlite(conn) => {
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map([], account_from_row)?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        }
        Conn::Postgres(client) => client
            .query(&sql, &[])?
            .iter()
            .map(account_from_pg)
            .collect(),
    }
}

/// Applies the given changes; `None` when the id is unknown.
pub fn update(
    conn: &mut Conn<'_>,
    id: i64,
    changes: &UserChanges,
    now: &str,
) -> Result<Option<User>> {
    let sql = format!(
        "UPDATE users SET \
         username = coalesce(?2, username), \
         email = coalesce(?3, email), \
         level = coalesce(?4, level), \
         status = coalesce(?5, status), \
         profile_picture = coalesce(?6, profile_picture), \
         updated_at = ?7 \
         WHERE id = ?1 RETURNING {COLUMNS}"
    );
    let status = changes.status.map(Status::as_str);
    write(conn, |conn| match conn {
        Conn::Sqlite(tx) => Ok(tx
            .query_row(
                &sql,
                params![
                    id,
                    changes.username,
                    changes.email,
                    changes.level,
                    status,
                    changes.profile_picture,
                    now
                ],
                account_from_row,
            )
            .optional()?
            .map(|a| a.user)),
        Conn::Postgres(client) => client
            .query_opt(
                &pg_dialect(&sql),
                &[
                    &id,
                    &changes.username,
                    &changes.email,
                    &changes.level,
                    &status,
                    &changes.profile_picture,
                    &now,
                ],
            )?
            .as_ref()
            .map(user_from_pg)
            .transpose(),
    })
}

/// Replaces a password hash and voids every token issued until now;
/// `false` when the id is unknown.
pub fn set_password_hash(
    conn: &mut Conn<'_>,
    id: i64,
    hash: &str,
    now: i64,
    timestamp: &str,
) -> Result<bool> {
    change(
        conn,
        "UPDATE users SET password_hash = ?2, updated_at = ?3, \
         tokens_valid_after = max(tokens_valid_after + 1, ?4) WHERE id = ?1",
        &[&id, &hash, &timestamp, &valid_after(now)],
    )
}

/// Replaces a password hash only if it is still `old` (a login's upgrade
/// must not overwrite a password changed meanwhile).
pub fn upgrade_password_hash(conn: &mut Conn<'_>, id: i64, old: &str, new: &str) -> Result<bool> {
    change(
        conn,
        "UPDATE users SET password_hash = ?3 WHERE id = ?1 AND password_hash = ?2",
        &[&id, &old, &new],
    )
}

/// Deletes a user; `false` when the id is unknown.
pub fn delete(conn: &mut Conn<'_>, id: i64) -> Result<bool> {
    change(conn, "DELETE FROM users WHERE id = ?1", &[&id])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::testing::{new_user, pool};

    #[test]
    fn usernames_are_unique_ignoring_case() {
        let (_dir, pool) = pool();
        let c = pool.get().unwrap();
        let conn = &mut crate::db::Conn::Sqlite(&c);
        insert(conn, &new_user("Alice"), "t").unwrap();
        let mut dup = new_user("alice");
        dup.email = "other@example.com".to_owned();
        let err = insert(conn, &dup, "t").unwrap_err();
        assert!(err.is_unique_violation("users.username"), "{err}");
        assert!(by_username(conn, "ALICE").unwrap().is_some());
    }

    #[test]
    fn ids_are_not_reused_after_delete() {
        let (_dir, pool) = pool();
        let c = pool.get().unwrap();
        let conn = &mut crate::db::Conn::Sqlite(&c);
        let a = insert(conn, &new_user("a"), "t").unwrap();
        assert!(delete(conn, a.id).unwrap());
        let b = insert(conn, &new_user("b"), "t").unwrap();
        assert!(b.id > a.id);
    }

    #[test]
    fn update_changes_only_given_fields() {
        let (_dir, pool) = pool();
        let c = pool.get().unwrap();
        let conn = &mut crate::db::Conn::Sqlite(&c);
        let a = insert(conn, &new_user("a"), "t0").unwrap();
        let changes = UserChanges {
            status: Some(Status::Busy),
            ..UserChanges::default()
        };
        let updated = update(conn, a.id, &changes, "t1").unwrap().unwrap();
        assert_eq!(updated.status, Status::Busy);
        assert_eq!(updated.username, "a");
        assert_eq!(updated.created_at, "t0");
        assert_eq!(updated.updated_at, "t1");
        assert!(update(conn, 999, &changes, "t2").unwrap().is_none());
    }
}
