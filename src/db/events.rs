//! The change stream's rows (`events`, written by triggers in every
//! change's own transaction) and presence (`presence`: who is online
//! through an open stream; on PostgreSQL, through which node).

use rusqlite::params;

use super::sql::pg_dialect;
use super::{Conn, Result, write};

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
pub fn after(conn: &mut Conn<'_>, after: i64, limit: i64) -> Result<Vec<EventRow>> {
    match conn {
        Conn::Sqlite(conn) => {
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
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        }
        Conn::Postgres(client) => client
            .query(
                "SELECT id, kind, user_id, data FROM events WHERE id > $1 ORDER BY id LIMIT $2",
                &[&after, &limit],
            )?
            .iter()
            .map(|row| {
                Ok(EventRow {
                    id: row.try_get(0)?,
                    kind: row.try_get(1)?,
                    user_id: row.try_get(2)?,
                    data: row.try_get(3)?,
                })
            })
            .collect(),
    }
}

/// The newest event's id (0 when none), and the oldest id still held.
pub fn bounds(conn: &mut Conn<'_>) -> Result<(i64, i64)> {
    const SQL: &str = "SELECT coalesce(max(id), 0), coalesce(min(id), 0) FROM events";
    match conn {
        Conn::Sqlite(conn) => Ok(conn
            .prepare_cached(SQL)?
            .query_row([], |row| Ok((row.get(0)?, row.get(1)?)))?),
        Conn::Postgres(client) => {
            let row = client.query_one(SQL, &[])?;
            Ok((row.try_get(0)?, row.try_get(1)?))
        }
    }
}

/// Marks `user_id` as online through a stream on `node` (PostgreSQL; one
/// SQLite file has one server): listed in `presence`, and `offline`
/// becomes `online` (`busy` stays). `false` when nothing changed (already
/// listed and not offline, or the user is gone).
pub fn came_online(conn: &mut Conn<'_>, user_id: i64, node: &str, timestamp: &str) -> Result<bool> {
    const ONLINE: &str =
        "UPDATE users SET status = 'online', updated_at = ?2 WHERE id = ?1 AND status = 'offline'";
    write(conn, |tx| match tx {
        Conn::Sqlite(tx) => {
            let listed = tx.execute(
                "INSERT OR IGNORE INTO presence (user_id) SELECT id FROM users WHERE id = ?1",
                [user_id],
            )?;
            let changed = tx.execute(ONLINE, params![user_id, timestamp])?;
            Ok(listed + changed > 0)
        }
        Conn::Postgres(client) => {
            // The node is known alive from here on: no other node's
            // heartbeat takes its rows for a dead node's.
            client.execute(
                "INSERT INTO nodes (id, seen_at) VALUES ($1, $2) \
                 ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at",
                &[&node, &crate::model::unix_now()],
            )?;
            let listed = client.execute(
                "INSERT INTO presence (user_id, node) SELECT id, $2 FROM users WHERE id = $1 \
                 ON CONFLICT DO NOTHING",
                &[&user_id, &node],
            )?;
            let changed = client.execute(&pg_dialect(ONLINE), &[&user_id, &timestamp])?;
            Ok(listed + changed > 0)
        }
    })
}

const OFFLINE: &str =
    "UPDATE users SET status = 'offline', updated_at = ?2 WHERE id = ?1 AND status <> 'offline'";

/// Ends the presence of `user_id` on `node` (their last stream there
/// closed long enough ago): `offline` unless a stream of theirs is open on
/// another node, and no longer listed. A user not listed is left alone.
pub fn went_offline(
    conn: &mut Conn<'_>,
    user_id: i64,
    node: &str,
    timestamp: &str,
) -> Result<bool> {
    write(conn, |tx| match tx {
        Conn::Sqlite(tx) => {
            if tx.execute("DELETE FROM presence WHERE user_id = ?1", [user_id])? == 0 {
                return Ok(false);
            }
            Ok(tx.execute(OFFLINE, params![user_id, timestamp])? == 1)
        }
        Conn::Postgres(client) => {
            let gone = client.execute(
                "DELETE FROM presence WHERE user_id = $1 AND node = $2",
                &[&user_id, &node],
            )?;
            if gone == 0 {
                return Ok(false);
            }
            let offline =
                pg_dialect(OFFLINE) + " AND NOT EXISTS (SELECT 1 FROM presence WHERE user_id = $1)";
            Ok(client.execute(&offline, &[&user_id, &timestamp])? == 1)
        }
    })
}

/// Everyone listed as online through a stream (after a restart: those to
/// take offline unless they reconnect). On PostgreSQL a node starts with a
/// new name and lists nobody: what a stopped node listed goes with
/// [`heartbeat`].
pub fn present(conn: &mut Conn<'_>) -> Result<Vec<i64>> {
    match conn {
        Conn::Sqlite(conn) => {
            let mut stmt = conn.prepare_cached("SELECT user_id FROM presence ORDER BY user_id")?;
            let ids = stmt.query_map([], |row| row.get(0))?;
            Ok(ids.collect::<rusqlite::Result<_>>()?)
        }
        Conn::Postgres(_) => Ok(Vec::new()),
    }
}

/// PostgreSQL: records that `node` is alive at `now` (seconds), and ends
/// the presence of every node not seen for `timeout` seconds (it stopped
/// or died): its users go offline unless a stream of theirs is open on a
/// live node. How many users went offline.
pub fn heartbeat(
    conn: &mut Conn<'_>,
    node: &str,
    now: i64,
    timeout: i64,
    timestamp: &str,
) -> Result<u64> {
    write(conn, |tx| match tx {
        Conn::Sqlite(_) => Ok(0),
        Conn::Postgres(client) => {
            client.execute(
                "INSERT INTO nodes (id, seen_at) VALUES ($1, $2) \
                 ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at",
                &[&node, &now],
            )?;
            let dead = now - timeout;
            let gone = client.query(
                "DELETE FROM presence WHERE node NOT IN (SELECT id FROM nodes WHERE seen_at > $1) \
                 RETURNING user_id",
                &[&dead],
            )?;
            client.execute("DELETE FROM nodes WHERE seen_at <= $1", &[&dead])?;
            let mut offline = 0;
            for row in gone {
                let user_id: i64 = row.try_get(0)?;
                offline += client.execute(
                    "UPDATE users SET status = 'offline', updated_at = $2 \
                     WHERE id = $1 AND status <> 'offline' \
                     AND NOT EXISTS (SELECT 1 FROM presence WHERE user_id = $1)",
                    &[&user_id, &timestamp],
                )?;
            }
            Ok(offline)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::testing::{new_user, pool};
    use crate::db::users::{delete, insert, revoke_tokens, update};
    use crate::model::{Status, UserChanges};

    fn kinds(conn: &mut crate::db::Conn<'_>) -> Vec<(String, i64)> {
        after(conn, 0, 100)
            .unwrap()
            .into_iter()
            .map(|e| (e.kind, e.user_id))
            .collect()
    }

    #[test]
    fn every_change_is_a_row_in_commit_order_and_silent_writes_are_not() {
        let (_dir, pool) = pool();
        let c = pool.get().unwrap();
        let conn = &mut crate::db::Conn::Sqlite(&c);
        let user = insert(conn, &new_user("ann"), "t0").unwrap();
        let changes = UserChanges {
            level: Some(4),
            ..UserChanges::default()
        };
        update(conn, user.id, &changes, "t1").unwrap();
        crate::db::users::upgrade_password_hash(conn, user.id, "x", "y").unwrap();
        revoke_tokens(conn, user.id, 100).unwrap();
        delete(conn, user.id).unwrap();
        let id = user.id;
        assert_eq!(
            kinds(conn),
            [
                ("user.created".to_owned(), id),
                ("user.updated".to_owned(), id),
                ("user.auth".to_owned(), id),
                ("user.deleted".to_owned(), id)
            ]
        );
        let (newest, oldest) = bounds(conn).unwrap();
        assert_eq!(newest - oldest, 3);
    }

    /// The triggers render a user exactly as the API does (serde).
    #[test]
    fn the_rows_render_users_as_the_api_does() {
        let (_dir, pool) = pool();
        let c = pool.get().unwrap();
        let conn = &mut crate::db::Conn::Sqlite(&c);
        let mut new = new_user("zoë");
        new.status = Status::Busy;
        new.profile_picture = "https://example.com/a\"b.png".to_owned();
        let user = insert(conn, &new, "2024-01-01T00:00:00.000001Z").unwrap();
        let rows = after(conn, 0, 10).unwrap();
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
        let c = pool.get().unwrap();
        let conn = &mut crate::db::Conn::Sqlite(&c);
        let ann = insert(conn, &new_user("ann"), "t0").unwrap();
        let mut busy = new_user("bob");
        busy.status = Status::Busy;
        let bob = insert(conn, &busy, "t0").unwrap();
        let status = |conn: &mut crate::db::Conn<'_>, id| {
            crate::db::users::by_id(conn, id)
                .unwrap()
                .unwrap()
                .user
                .status
        };
        assert!(came_online(conn, ann.id, "n", "t1").unwrap());
        assert!(came_online(conn, bob.id, "n", "t1").unwrap());
        assert_eq!(status(conn, ann.id), Status::Online);
        assert_eq!(status(conn, bob.id), Status::Busy);
        assert_eq!(present(conn).unwrap(), [ann.id, bob.id]);
        assert!(went_offline(conn, ann.id, "n", "t2").unwrap());
        assert!(went_offline(conn, bob.id, "n", "t2").unwrap());
        assert_eq!(status(conn, bob.id), Status::Offline);
        // Not listed any more: a status set since is left alone.
        assert!(!went_offline(conn, ann.id, "n", "t3").unwrap());
        assert!(!came_online(conn, 999, "n", "t3").unwrap());
    }
}
