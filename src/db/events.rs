//! The change stream's rows (`events`, written by triggers in every
//! change's own transaction) and presence (`presence`: who is online
//! through an open stream).

use rusqlite::{Connection, params};

/// One change, as the triggers wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    /// Grows strictly, in commit order.
    pub id: i64,
    /// `user.created`, `user.updated`, `user.deleted` or `user.auth`.
    pub kind: String,
    /// The user it is about.
    pub user_id: i64,
    /// The user as rendered at the change's commit, `{"id": N}` for a
    /// deletion, empty for `user.auth`.
    pub data: String,
}

/// Up to `limit` events after `after`, oldest first.
pub fn after(conn: &Connection, after: i64, limit: i64) -> rusqlite::Result<Vec<EventRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, kind, user_id, data FROM events WHERE id > ?1 ORDER BY id LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![after, limit], |row| {
        Ok(EventRow {
            id: row.get(0)?,
            kind: row.get(1)?,
            user_id: row.get(2)?,
            data: row.get(3)?,
        })
    })?;
    rows.collect()
}

/// The newest event's id (0 when none), and the oldest id still held.
pub fn bounds(conn: &Connection) -> rusqlite::Result<(i64, i64)> {
    conn.prepare_cached("SELECT coalesce(max(id), 0), coalesce(min(id), 0) FROM events")?
        .query_row([], |row| Ok((row.get(0)?, row.get(1)?)))
}

/// Marks `user_id` as online through a stream: listed in `presence`, and
/// `offline` becomes `online` (`busy` stays). `false` when nothing changed
/// (already listed and not offline, or the user is gone).
pub fn came_online(conn: &mut Connection, user_id: i64, timestamp: &str) -> rusqlite::Result<bool> {
    super::write(conn, |tx| {
        let listed = tx.execute(
            "INSERT OR IGNORE INTO presence (user_id) SELECT id FROM users WHERE id = ?1",
            [user_id],
        )?;
        let changed = tx.execute(
            "UPDATE users SET status = 'online', updated_at = ?2 WHERE id = ?1 AND status = 'offline'",
            params![user_id, timestamp],
        )?;
        Ok(listed + changed > 0)
    })
}

/// Ends the presence of `user_id` (their last stream closed long enough
/// ago): `offline`, and no longer listed. A user not listed is left alone.
pub fn went_offline(
    conn: &mut Connection,
    user_id: i64,
    timestamp: &str,
) -> rusqlite::Result<bool> {
    super::write(conn, |tx| {
        if tx.execute("DELETE FROM presence WHERE user_id = ?1", [user_id])? == 0 {
            return Ok(false);
        }
        tx.execute(
            "UPDATE users SET status = 'offline', updated_at = ?2 WHERE id = ?1 AND status <> 'offline'",
            params![user_id, timestamp],
        )
        .map(|n| n == 1)
    })
}

/// Everyone listed as online through a stream (after a restart: those to
/// take offline unless they reconnect).
pub fn present(conn: &Connection) -> rusqlite::Result<Vec<i64>> {
    let mut stmt = conn.prepare_cached("SELECT user_id FROM presence ORDER BY user_id")?;
    let ids = stmt.query_map([], |row| row.get(0))?;
    ids.collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::testing::{new_user, pool};
    use crate::db::users::{delete, insert, revoke_tokens, update};
    use crate::model::{Status, UserChanges};

    fn kinds(conn: &Connection) -> Vec<(String, i64)> {
        after(conn, 0, 100)
            .unwrap()
            .into_iter()
            .map(|e| (e.kind, e.user_id))
            .collect()
    }

    #[test]
    fn every_change_is_a_row_in_commit_order_and_silent_writes_are_not() {
        let (_dir, pool) = pool();
        let mut conn = pool.get().unwrap();
        let user = insert(&mut conn, &new_user("ann"), "t0").unwrap();
        let changes = UserChanges {
            level: Some(4),
            ..UserChanges::default()
        };
        update(&mut conn, user.id, &changes, "t1").unwrap();
        crate::db::users::upgrade_password_hash(&mut conn, user.id, "x", "y").unwrap();
        revoke_tokens(&mut conn, user.id, 100).unwrap();
        delete(&mut conn, user.id).unwrap();
        let id = user.id;
        assert_eq!(
            kinds(&conn),
            [
                ("user.created".to_owned(), id),
                ("user.updated".to_owned(), id),
                ("user.auth".to_owned(), id),
                ("user.deleted".to_owned(), id)
            ]
        );
        let (newest, oldest) = bounds(&conn).unwrap();
        assert_eq!(newest - oldest, 3);
    }

    /// The triggers render a user exactly as the API does (serde).
    #[test]
    fn the_rows_render_users_as_the_api_does() {
        let (_dir, pool) = pool();
        let mut conn = pool.get().unwrap();
        let mut new = new_user("zoë");
        new.status = Status::Busy;
        new.profile_picture = "https://example.com/a\"b.png".to_owned();
        let user = insert(&mut conn, &new, "2024-01-01T00:00:00.000001Z").unwrap();
        let rows = after(&conn, 0, 10).unwrap();
        let stored: serde_json::Value = serde_json::from_str(&rows[0].data).unwrap();
        assert_eq!(stored, serde_json::to_value(&user).unwrap());
        assert_eq!(
            rows[0].data,
            serde_json::to_string(&user).unwrap(),
            "same keys, same order"
        );
    }

    #[test]
    fn presence_sets_online_keeps_busy_and_only_undoes_its_own() {
        let (_dir, pool) = pool();
        let mut conn = pool.get().unwrap();
        let ann = insert(&mut conn, &new_user("ann"), "t0").unwrap();
        let mut busy = new_user("bob");
        busy.status = Status::Busy;
        let bob = insert(&mut conn, &busy, "t0").unwrap();
        let status = |conn: &Connection, id| {
            crate::db::users::by_id(conn, id)
                .unwrap()
                .unwrap()
                .user
                .status
        };
        assert!(came_online(&mut conn, ann.id, "t1").unwrap());
        assert!(came_online(&mut conn, bob.id, "t1").unwrap());
        assert_eq!(status(&conn, ann.id), Status::Online);
        assert_eq!(status(&conn, bob.id), Status::Busy);
        assert_eq!(present(&conn).unwrap(), [ann.id, bob.id]);
        assert!(went_offline(&mut conn, ann.id, "t2").unwrap());
        assert!(went_offline(&mut conn, bob.id, "t2").unwrap());
        assert_eq!(status(&conn, bob.id), Status::Offline);
        // Not listed any more: a status set since is left alone.
        assert!(!went_offline(&mut conn, ann.id, "t3").unwrap());
        assert!(!came_online(&mut conn, 999, "t3").unwrap());
    }
}
