//! The `sqlite` ceiling of bench/run.sh: the durable-commit rate of this
//! disk for exactly the UPDATE that `PUT /api/users/{id}` runs — the
//! server's own `db::users::update` (its SQL, its `BEGIN IMMEDIATE`
//! transaction, its row mapping), with the server's own pragmas (WAL,
//! synchronous = FULL, via `rosterd::db::open`), on one connection, in a
//! tight loop with no HTTP, no authorization reads and no thread hand-offs.
//!
//! Usage: `sqlite_ceiling DB_PATH SECONDS` (DB_PATH: a new file or a seeded
//! copy; it must not hold a user named `ceiling`). Warms up first (see below).
//! Prints `updates/s: N` (and the count and elapsed time).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rosterd::model::{NewUser, Status, UserChanges, timestamp_now};

/// Commits before timing starts (see the warm-up in `main`).
const WARM_UP_COMMITS: u64 = 1_000;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        bail!("usage: sqlite_ceiling DB_PATH SECONDS");
    }
    let path = PathBuf::from(&args[1]);
    let seconds: f64 = args[2].parse().context("SECONDS must be a number")?;

    let pool = rosterd::db::sqlite::open(&rosterd::db::Options {
        path,
        busy_timeout: Duration::from_secs(5),
        pool_size: 1,
    })?;
    let conn = pool.get()?;
    let user = NewUser {
        username: "ceiling".to_owned(),
        email: "ceiling@example.com".to_owned(),
        password_hash: rosterd::auth::password::hash("ceiling-password-1", 1_000)?,
        level: 1,
        status: Status::Offline,
        profile_picture: String::new(),
        is_staff: false,
    };
    let id = rosterd::db::users::insert(
        &mut rosterd::db::Conn::Sqlite(&conn),
        &user,
        &timestamp_now(),
    )?
    .id;

    let statuses = [Status::Online, Status::Offline, Status::Busy];
    let update = |count: u64| -> anyhow::Result<()> {
        // What a PUT with username, email and a new status hands the database.
        let changes = UserChanges {
            username: Some("ceiling".to_owned()),
            email: Some("ceiling@example.com".to_owned()),
            status: Some(statuses[(count % 3) as usize]),
            ..UserChanges::default()
        };
        rosterd::db::users::update(
            &mut rosterd::db::Conn::Sqlite(&conn),
            id,
            &changes,
            &timestamp_now(),
        )?
        .with_context(|| format!("user {id} vanished"))?;
        Ok(())
    };

    // Warm-up, not counted: enough commits to fill the WAL past its
    // auto-checkpoint (1000 pages), so the timed loop overwrites an
    // allocated log as a long-running server does, instead of growing a
    // new file (which costs extra journal commits on ext4).
    let mut count: u64 = 0;
    let warm_up = Instant::now();
    while count < WARM_UP_COMMITS || warm_up.elapsed() < Duration::from_millis(500) {
        update(count)?;
        count += 1;
    }

    let deadline = Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut count: u64 = 0;
    while started.elapsed() < deadline {
        update(count)?;
        count += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "updates/s: {:.1} ({count} updates in {elapsed:.2}s)",
        count as f64 / elapsed
    );
    Ok(())
}
