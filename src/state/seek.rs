//! Seek points for deep pages in id order: the id at every
//! [`SEEK_STRIDE`]th position, so finding the row at any offset steps over
//! fewer than `SEEK_STRIDE` index entries instead of `offset`. Built on
//! first use (one pass over the id index) and rebuilt when `users_meta`
//! says users changed places; appended users (new ids are always the
//! largest) leave the points valid.

use std::sync::Mutex;

use rusqlite::Connection;

use crate::db::listing::{self, IdPositions, SEEK_STRIDE};

/// See the module documentation.
#[derive(Debug, Default)]
pub struct IdSeek {
    points: Mutex<Option<SeekPoints>>,
}

#[derive(Debug)]
struct SeekPoints {
    /// `users_meta` when built.
    users: i64,
    reorders: i64,
    /// `ids[k]` is the id at position `k * SEEK_STRIDE`.
    ids: Vec<i64>,
}

impl IdPositions for IdSeek {
    /// Call inside a read transaction.
    fn id_at(
        &self,
        conn: &Connection,
        offset: i64,
        descending: bool,
    ) -> rusqlite::Result<Option<i64>> {
        let (users, reorders) = listing::id_order_stamp(conn)?;
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
                    || position >= p.users + SEEK_STRIDE
            });
            if stale {
                *points = Some(SeekPoints {
                    users,
                    reorders,
                    ids: listing::ids_every(conn, SEEK_STRIDE)?,
                });
            }
            let ids = points
                .as_ref()
                .map(|p| p.ids.as_slice())
                .unwrap_or_default();
            let k = usize::try_from(position / SEEK_STRIDE)
                .unwrap_or(usize::MAX)
                .min(ids.len().saturating_sub(1));
            match ids.get(k) {
                Some(&id) => (id, position - k as i64 * SEEK_STRIDE),
                None => return Ok(None),
            }
        };
        listing::id_after(conn, from, skip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db;
    use crate::db::listing::{ListQuery, SortColumn, count, page};
    use crate::db::testing::{new_user, pool};
    use rusqlite::OptionalExtension;

    #[test]
    fn seek_points_find_deep_positions_and_follow_changes() {
        let (_dir, pool) = pool();
        let conn = pool.get().unwrap();
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
            assert_eq!(
                count(&mut db::Conn::Sqlite(conn), &ListQuery::default()).unwrap(),
                users
            );
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
                let all = page(&mut db::Conn::Sqlite(conn), &query, 5_000, 0, seek).unwrap();
                for offset in [1_000, 1_234, 2_000, users - 3, users] {
                    let expected: Vec<_> =
                        all.iter().skip(offset as usize).take(7).cloned().collect();
                    let got = page(&mut db::Conn::Sqlite(conn), &query, 7, offset, seek).unwrap();
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
        db::users::insert(&mut db::Conn::Sqlite(&conn), &new_user("last"), "t").unwrap();
        check(&conn, &seek);
    }
}
