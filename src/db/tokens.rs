//! Refresh token rows: the blacklist, rotation families, and pruning of
//! rows whose token has expired anyway.

use rusqlite::{OptionalExtension, params};

use super::sql::execute;
use super::{Conn, Result, write};

/// What a refresh under rotation found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    /// The token was current (or retired within the grace window): the new
    /// one is recorded in the same family.
    Rotated,
    /// The token was blacklisted or its family revoked.
    Revoked,
    /// A retired token came back after the grace window: its whole family
    /// is now revoked.
    ReuseDetected,
}

/// A token to record: its `jti`, owner and expiry.
#[derive(Debug, Clone)]
pub struct Issued<'a> {
    /// The token's id.
    pub jti: &'a str,
    /// Its user.
    pub user_id: i64,
    /// Its `exp`, seconds since the epoch.
    pub expires_at: i64,
}

/// Deletes rows whose token has expired: they can never be presented
/// successfully again, so the table stays bounded.
pub fn prune(tx: &mut Conn<'_>, now: i64) -> Result<u64> {
    execute(
        tx,
        "DELETE FROM refresh_tokens WHERE expires_at <= ?1",
        &[&now],
    )
}

/// Whether this refresh token was blacklisted, its family revoked, or
/// rotation retired it more than `grace_seconds` before `now`.
pub fn is_revoked(conn: &mut Conn<'_>, jti: &str, now: i64, grace_seconds: i64) -> Result<bool> {
    Ok(match conn {
        Conn::Sqlite(conn) => conn
            .prepare_cached(
                "SELECT revoked OR coalesce(?2 - retired_at > ?3, 0) FROM refresh_tokens WHERE jti = ?1",
            )?
            .query_row(params![jti, now, grace_seconds], |row| row.get::<_, bool>(0))
            .optional()?,
        Conn::Postgres(client) => client
            .query_opt(
                "SELECT revoked OR coalesce($2 - retired_at > $3, false) FROM refresh_tokens \
                 WHERE jti = $1",
                &[&jti, &now, &grace_seconds],
            )?
            .map(|row| row.try_get::<_, bool>(0))
            .transpose()?,
    }
    .unwrap_or(false))
}

/// Whether a user with this id exists.
fn user_exists(conn: &mut Conn<'_>, id: i64) -> Result<bool> {
    Ok(match conn {
        Conn::Sqlite(conn) => conn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM users WHERE id = ?1)")?
            .query_row([id], |row| row.get(0))?,
        Conn::Postgres(client) => client
            .query_one("SELECT EXISTS (SELECT 1 FROM users WHERE id = $1)", &[&id])?
            .try_get(0)?,
    })
}

/// Blacklists a refresh token; `false` when it already was. A token of a
/// deleted user needs no row: it can never be used again anyway.
pub fn blacklist(conn: &mut Conn<'_>, token: &Issued<'_>, now: i64) -> Result<bool> {
    write(conn, |tx| {
        prune(tx, now)?;
        if !user_exists(tx, token.user_id)? {
            return Ok(true);
        }
        let changed = execute(
            tx,
            "INSERT INTO refresh_tokens (jti, user_id, family, expires_at, revoked) \
             VALUES (?1, ?2, ?1, ?3, true) \
             ON CONFLICT (jti) DO UPDATE SET revoked = true WHERE refresh_tokens.revoked = false",
            &[&token.jti, &token.user_id, &token.expires_at],
        )?;
        Ok(changed == 1)
    })
}

/// Records the refresh token of a new login as the first of its family.
pub fn record_login(conn: &mut Conn<'_>, token: &Issued<'_>, now: i64) -> Result<()> {
    write(conn, |tx| {
        prune(tx, now)?;
        insert(tx, token, token.jti)
    })
}

fn insert(tx: &mut Conn<'_>, token: &Issued<'_>, family: &str) -> Result<()> {
    execute(
        tx,
        "INSERT INTO refresh_tokens (jti, user_id, family, expires_at) VALUES (?1, ?2, ?3, ?4)",
        &[&token.jti, &token.user_id, &family, &token.expires_at],
    )?;
    Ok(())
}

/// A token's row: its family, when it was retired, whether it is revoked.
type TokenRow = (String, Option<i64>, bool);

fn token_row(tx: &mut Conn<'_>, jti: &str) -> Result<Option<TokenRow>> {
    Ok(match tx {
        Conn::Sqlite(tx) => tx
            .prepare_cached(
                "SELECT family, retired_at, revoked FROM refresh_tokens WHERE jti = ?1",
            )?
            .query_row([jti], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .optional()?,
        Conn::Postgres(client) => client
            .query_opt(
                "SELECT family, retired_at, revoked FROM refresh_tokens WHERE jti = $1 FOR UPDATE",
                &[&jti],
            )?
            .map(|row| -> Result<TokenRow> {
                Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))
            })
            .transpose()?,
    })
}

/// Retires `old` in favour of `new` (same family), in one transaction.
/// A token unknown to the table (issued before rotation was switched on)
/// starts a family of its own.
pub fn rotate(
    conn: &mut Conn<'_>,
    old: &Issued<'_>,
    new: &Issued<'_>,
    now: i64,
    grace_seconds: i64,
) -> Result<Rotation> {
    write(conn, |tx| {
        let family = match token_row(tx, old.jti)? {
            None => {
                execute(
                    tx,
                    "INSERT INTO refresh_tokens (jti, user_id, family, expires_at, retired_at) \
                     VALUES (?1, ?2, ?1, ?3, ?4)",
                    &[&old.jti, &old.user_id, &old.expires_at, &now],
                )?;
                old.jti.to_owned()
            }
            Some((_, _, true)) => return Ok(Rotation::Revoked),
            Some((family, Some(retired_at), false)) if now - retired_at > grace_seconds => {
                execute(
                    tx,
                    "UPDATE refresh_tokens SET revoked = true WHERE family = ?1",
                    &[&family],
                )?;
                return Ok(Rotation::ReuseDetected);
            }
            Some((family, retired_at, false)) => {
                if retired_at.is_none() {
                    execute(
                        tx,
                        "UPDATE refresh_tokens SET retired_at = ?2 WHERE jti = ?1",
                        &[&old.jti, &now],
                    )?;
                }
                family
            }
        };
        insert(tx, new, &family)?;
        prune(tx, now)?;
        Ok(Rotation::Rotated)
    })
}

/// Number of rows kept; for tests and `doctor`-style checks.
pub fn count(conn: &mut Conn<'_>) -> Result<i64> {
    Ok(match conn {
        Conn::Sqlite(conn) => {
            conn.query_row("SELECT count(*) FROM refresh_tokens", [], |row| row.get(0))?
        }
        Conn::Postgres(client) => client
            .query_one("SELECT count(*) FROM refresh_tokens", &[])?
            .try_get(0)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db;
    use crate::model::{NewUser, Status};

    fn setup() -> (tempfile::TempDir, db::sqlite::Pool, i64) {
        let dir = tempfile::tempdir().unwrap();
        let pool = db::sqlite::open(&db::Options {
            path: dir.path().join("t.sqlite3"),
            busy_timeout: std::time::Duration::from_secs(1),
            pool_size: 1,
        })
        .unwrap();
        let user = NewUser {
            username: "u".into(),
            email: "u@example.com".into(),
            password_hash: "x".into(),
            level: 1,
            status: Status::Offline,
            profile_picture: String::new(),
            is_staff: false,
        };
        let id = db::users::insert(&mut db::Conn::Sqlite(&pool.get().unwrap()), &user, "t")
            .unwrap()
            .id;
        (dir, pool, id)
    }

    fn token(jti: &str, user_id: i64, expires_at: i64) -> Issued<'_> {
        Issued {
            jti,
            user_id,
            expires_at,
        }
    }

    #[test]
    fn blacklisting_twice_reports_the_second_time() {
        let (_dir, pool, id) = setup();
        let c = pool.get().unwrap();
        let conn = &mut crate::db::Conn::Sqlite(&c);
        assert!(blacklist(conn, &token("a", id, 100), 0).unwrap());
        assert!(!blacklist(conn, &token("a", id, 100), 0).unwrap());
        assert!(is_revoked(conn, "a", 0, 0).unwrap());
        assert!(!is_revoked(conn, "b", 0, 0).unwrap());
    }

    #[test]
    fn expired_rows_are_pruned_on_the_next_write() {
        let (_dir, pool, id) = setup();
        let c = pool.get().unwrap();
        let conn = &mut crate::db::Conn::Sqlite(&c);
        blacklist(conn, &token("old", id, 10), 0).unwrap();
        blacklist(conn, &token("new", id, 1000), 20).unwrap();
        assert_eq!(count(conn).unwrap(), 1);
    }

    #[test]
    fn reuse_after_the_grace_window_revokes_the_family() {
        let (_dir, pool, id) = setup();
        let c = pool.get().unwrap();
        let conn = &mut crate::db::Conn::Sqlite(&c);
        record_login(conn, &token("r1", id, 1000), 0).unwrap();
        let mut r = |old, new, now| {
            rotate(conn, &token(old, id, 1000), &token(new, id, 1000), now, 10).unwrap()
        };
        assert_eq!(r("r1", "r2", 100), Rotation::Rotated);
        // Within the grace window: a second child.
        assert_eq!(r("r1", "r3", 105), Rotation::Rotated);
        // After it: theft assumed.
        assert_eq!(r("r1", "r4", 200), Rotation::ReuseDetected);
        assert_eq!(r("r2", "r5", 201), Rotation::Revoked);
        for jti in ["r1", "r2", "r3"] {
            assert!(is_revoked(conn, jti, 0, 0).unwrap(), "{jti}");
        }
    }
}
