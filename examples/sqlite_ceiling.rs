//! The `sqlite` ceiling of bench/run.sh: the durable-commit rate of this
//! disk for exactly the UPDATE that `PUT /api/users/{id}` runs, with the
//! server's own pragmas (WAL, synchronous = FULL, via `rosterd::db::open`),
//! one connection, each UPDATE in its own `BEGIN IMMEDIATE` transaction.
//!
//! Usage: `sqlite_ceiling DB_PATH SECONDS` (DB_PATH: a new file or a seeded
//! copy; it must not hold a user named `ceiling`). Warms up first (see below).
//! Prints `updates/s: N` (and the count and elapsed time).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rusqlite::{OptionalExtension, TransactionBehavior, params};

/// The same columns `RETURNING` hands back in the server.
/// Commits before timing starts (see the warm-up in `main`).
const WARM_UP_COMMITS: u64 = 1_000;

const COLUMNS: &str = "id, username, email, level, status, profile_picture, created_at, updated_at, \
                       password_hash, is_staff, is_active, tokens_valid_after";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        bail!("usage: sqlite_ceiling DB_PATH SECONDS");
    }
    let path = PathBuf::from(&args[1]);
    let seconds: f64 = args[2].parse().context("SECONDS must be a number")?;

    let pool = rosterd::db::open(&rosterd::db::Options {
        path,
        busy_timeout: Duration::from_secs(5),
        pool_size: 1,
    })?;
    let mut conn = pool.get()?;
    let now = rosterd::model::timestamp_now();
    let hash = rosterd::auth::password::hash("ceiling-password-1", 1_000)?;
    let id: i64 = conn.query_row(
        "INSERT INTO users (username, email, password_hash, level, status, profile_picture, \
         is_staff, is_active, created_at, updated_at) \
         VALUES ('ceiling', 'ceiling@example.com', ?1, 1, 'offline', '', 0, 1, ?2, ?2) \
         RETURNING id",
        params![hash, now],
        |row| row.get(0),
    )?;

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
    let statuses = ["online", "offline", "busy"];
    // Warm-up, not counted: enough commits to fill the WAL past its
    // auto-checkpoint (1000 pages), so the timed loop overwrites an
    // allocated log as a long-running server does, instead of growing a
    // new file (which costs extra journal commits on ext4).
    let mut count: u64 = 0;
    let warm_up = Instant::now();
    while count < WARM_UP_COMMITS || warm_up.elapsed() < Duration::from_millis(500) {
        update_once(&mut conn, &sql, id, statuses[(count % 3) as usize])?;
        count += 1;
    }

    let deadline = Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut count: u64 = 0;
    while started.elapsed() < deadline {
        update_once(&mut conn, &sql, id, statuses[(count % 3) as usize])?;
        count += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "updates/s: {:.1} ({count} updates in {elapsed:.2}s)",
        count as f64 / elapsed
    );
    Ok(())
}

/// One `BEGIN IMMEDIATE; UPDATE ... RETURNING ...; COMMIT`, as the server's
/// `db::users::update` runs it.
fn update_once(
    conn: &mut rusqlite::Connection,
    sql: &str,
    id: i64,
    status: &str,
) -> anyhow::Result<()> {
    let now = rosterd::model::timestamp_now();
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let row = {
        let mut stmt = tx.prepare_cached(sql)?;
        stmt.query_row(
            params![
                id,
                "ceiling",
                "ceiling@example.com",
                Option::<i64>::None,
                status,
                Option::<String>::None,
                now
            ],
            // Every column read, as the server's row mapper does.
            |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, i64>(3)?,
                    row.get::<_, String>(4)?,
                    row.get::<_, String>(5)?,
                    row.get::<_, String>(6)?,
                    row.get::<_, String>(7)?,
                    row.get::<_, String>(8)?,
                    row.get::<_, bool>(9)?,
                    row.get::<_, bool>(10)?,
                    row.get::<_, i64>(11)?,
                ))
            },
        )
        .optional()?
    };
    tx.commit()?;
    if row.is_none() {
        bail!("user {id} vanished");
    }
    Ok(())
}
