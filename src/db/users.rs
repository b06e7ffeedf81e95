//! User rows: insert, look up, list, update, delete.

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::valid_after;

use crate::model::{Account, NewUser, Status, User, UserChanges};

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
    /// Staff may edit anyone.
    pub is_staff: bool,
    /// Tokens issued before this second are void.
    pub tokens_valid_after: i64,
}

/// The auth state of an existing, active user; `None` for a missing or
/// inactive one. Checked on every authenticated request.
pub fn auth_state(conn: &Connection, id: i64) -> rusqlite::Result<Option<AuthState>> {
    conn.prepare_cached(
        "SELECT is_staff, tokens_valid_after FROM users WHERE id = ?1 AND is_active = 1",
    )?
    .query_row([id], |row| {
        Ok(AuthState {
            is_staff: row.get(0)?,
            tokens_valid_after: row.get(1)?,
        })
    })
    .optional()
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
    use crate::db::testing::{new_user, pool};

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
