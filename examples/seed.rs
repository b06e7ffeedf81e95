//! Fills a rosterd database with users for bench/run.sh, fast: one PBKDF2
//! hash at the default cost, reused for every row, all rows in one
//! transaction through one prepared statement.
//!
//! Usage: `seed DB_PATH N PASSWORD` -> users `user1..userN`,
//! emails `userK@example.com`, all with PASSWORD.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        bail!("usage: seed DB_PATH N PASSWORD");
    }
    let path = PathBuf::from(&args[1]);
    let count: u64 = args[2].parse().context("N must be a number")?;
    let password = &args[3];

    let started = Instant::now();
    let pool = rosterd::db::sqlite::open(&rosterd::db::Options {
        path,
        busy_timeout: Duration::from_secs(5),
        pool_size: 1,
    })?;
    let hash = rosterd::auth::password::hash(password, rosterd::config::DEFAULT_PBKDF2_ITERATIONS)?;
    let now = rosterd::model::timestamp_now();

    let mut conn = pool.get()?;
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare(
            "INSERT INTO users (username, email, password_hash, level, status, \
             profile_picture, is_staff, is_active, created_at, updated_at) \
             VALUES (?,?,?,1,'offline','',0,1,?,?)",
        )?;
        for k in 1..=count {
            let username = format!("user{k}");
            let email = format!("user{k}@example.com");
            stmt.execute(rusqlite::params![username, email, hash, now, now])?;
        }
    }
    tx.commit()?;
    println!(
        "seeded {count} users in {:.2}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
