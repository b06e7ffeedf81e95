//! Users brought in from another server (`rosterd import`): the checks
//! against what the database holds, and the one transaction that writes
//! them with their foreign password hashes, the map from their ids there,
//! and the refresh tokens the other server had blacklisted.

use rusqlite::{Connection, OptionalExtension, params};

use crate::model::NewUser;

/// A user as it will be written.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// Its id in the source (a Django pk, a PocketBase id).
    pub source_id: String,
    /// The id to keep (Django), or `None` for a fresh one (PocketBase).
    pub id: Option<i64>,
    /// The user, with the source's hash as it stored it (replaced at the
    /// first login).
    pub new: NewUser,
    /// May log in.
    pub is_active: bool,
    /// When it joined, RFC 3339 UTC with microseconds.
    pub created_at: String,
}

/// A refresh token the source had blacklisted, kept refused here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blacklisted {
    /// Its `jti`.
    pub jti: String,
    /// Its user's id in the source.
    pub source_user: String,
    /// Its `exp`, seconds since the epoch.
    pub expires_at: i64,
}

/// Why the database cannot take a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Clash {
    /// This source's user was imported before.
    AlreadyImported,
    /// Another user holds the username (ignoring case).
    Username,
    /// Another user holds the email (ignoring case).
    Email,
    /// The id is held, or was handed out before and may still be named by
    /// a token of a deleted user.
    Id,
}

/// What the database says about taking `user` from `source`.
pub fn clash(conn: &Connection, source: &str, user: &Incoming) -> rusqlite::Result<Option<Clash>> {
    let imported: Option<i64> = conn
        .prepare_cached("SELECT user_id FROM imported_users WHERE source = ?1 AND source_id = ?2")?
        .query_row(params![source, user.source_id], |row| row.get(0))
        .optional()?;
    if imported.is_some() {
        return Ok(Some(Clash::AlreadyImported));
    }
    let taken = |column: &str, value: &str| -> rusqlite::Result<bool> {
        conn.prepare_cached(&format!(
            "SELECT EXISTS (SELECT 1 FROM users WHERE {column} = ?1)"
        ))?
        .query_row([value], |row| row.get(0))
    };
    if taken("username", &user.new.username)? {
        return Ok(Some(Clash::Username));
    }
    if taken("email", &user.new.email)? {
        return Ok(Some(Clash::Email));
    }
    if let Some(id) = user.id {
        let handed_out: i64 = conn
            .prepare_cached(
                "SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'users'",
            )?
            .query_row([], |row| row.get(0))?;
        if id <= handed_out || id <= 0 {
            return Ok(Some(Clash::Id));
        }
    }
    Ok(None)
}

/// Writes an import in one transaction: `fill` is handed a function that
/// inserts one user (returning its id here) and calls it for each user to
/// import; then the `blacklist` rows that name an imported user are kept
/// refused. Nothing is written unless everything is.
pub fn write<E: From<rusqlite::Error>>(
    conn: &mut Connection,
    source: &str,
    blacklist: &[Blacklisted],
    now: i64,
    fill: impl FnOnce(&mut dyn FnMut(&Incoming) -> rusqlite::Result<i64>) -> Result<(), E>,
) -> Result<(), E> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    {
        let mut insert = tx.prepare(
            "INSERT INTO users (id, username, email, password_hash, level, status, \
             profile_picture, is_staff, is_active, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10)",
        )?;
        let mut map = tx.prepare(
            "INSERT INTO imported_users (source, source_id, user_id) VALUES (?1, ?2, ?3)",
        )?;
        fill(&mut |user: &Incoming| {
            insert.execute(params![
                user.id,
                user.new.username,
                user.new.email,
                user.new.password_hash,
                user.new.level,
                user.new.status.as_str(),
                user.new.profile_picture,
                user.new.is_staff,
                user.is_active,
                user.created_at,
            ])?;
            let id = tx.last_insert_rowid();
            map.execute(params![source, user.source_id, id])?;
            Ok(id)
        })?;
        let mut refuse = tx.prepare(
            "INSERT OR IGNORE INTO refresh_tokens (jti, user_id, family, expires_at, revoked) \
             SELECT ?1, user_id, ?1, ?3, 1 FROM imported_users \
             WHERE source = ?4 AND source_id = ?2",
        )?;
        for token in blacklist.iter().filter(|t| t.expires_at > now) {
            refuse.execute(params![
                token.jti,
                token.source_user,
                token.expires_at,
                source
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::testing::{new_user, pool};
    use crate::db::users::insert;

    fn incoming(source_id: &str, id: Option<i64>, name: &str) -> Incoming {
        let mut new = new_user(name);
        new.password_hash = "md5$salt$0123".to_owned();
        Incoming {
            source_id: source_id.to_owned(),
            id,
            new,
            is_active: false,
            created_at: "2020-01-02T03:04:05.000000Z".to_owned(),
        }
    }

    #[test]
    fn users_keep_their_ids_and_a_second_import_clashes() {
        let (_dir, pool) = pool();
        let mut conn = pool.get().unwrap();
        let users = [
            incoming("7", Some(7), "seven"),
            incoming("9", Some(9), "nine"),
        ];
        for user in &users {
            assert_eq!(clash(&conn, "django", user).unwrap(), None);
        }
        let blacklist = [
            Blacklisted {
                jti: "a".repeat(32),
                source_user: "7".into(),
                expires_at: 2_000,
            },
            Blacklisted {
                jti: "b".repeat(32),
                source_user: "7".into(),
                expires_at: 999,
            },
            Blacklisted {
                jti: "c".repeat(32),
                source_user: "8".into(),
                expires_at: 2_000,
            },
        ];
        let mut ids = Vec::new();
        write(&mut conn, "django", &blacklist, 1_000, |insert| {
            for user in &users {
                ids.push(insert(user)?);
            }
            Ok::<_, rusqlite::Error>(())
        })
        .unwrap();
        assert_eq!(ids, [7, 9]);
        assert_eq!(
            clash(&conn, "django", &users[0]).unwrap(),
            Some(Clash::AlreadyImported)
        );
        let kept: Vec<String> = conn
            .prepare("SELECT jti FROM refresh_tokens WHERE revoked = 1")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(kept, ["a".repeat(32)]);
        let next = insert(&mut crate::db::Conn::Sqlite(&conn), &new_user("after"), "t").unwrap();
        assert_eq!(next.id, 10, "ids go on above the imported ones");
    }

    #[test]
    fn names_emails_and_used_ids_clash() {
        let (_dir, pool) = pool();
        let conn = pool.get().unwrap();
        let held = insert(&mut crate::db::Conn::Sqlite(&conn), &new_user("held"), "t").unwrap();
        let mut by_name = incoming("1", None, "HELD");
        by_name.new.email = "other@example.com".into();
        assert_eq!(clash(&conn, "pb", &by_name).unwrap(), Some(Clash::Username));
        let mut by_email = incoming("2", None, "other");
        by_email.new.email = "Held@Example.com".into();
        assert_eq!(clash(&conn, "pb", &by_email).unwrap(), Some(Clash::Email));
        let by_id = incoming("3", Some(held.id), "third");
        assert_eq!(clash(&conn, "django", &by_id).unwrap(), Some(Clash::Id));
        crate::db::users::delete(&mut crate::db::Conn::Sqlite(&conn), held.id).unwrap();
        assert_eq!(
            clash(&conn, "django", &by_id).unwrap(),
            Some(Clash::Id),
            "used before"
        );
    }
}
