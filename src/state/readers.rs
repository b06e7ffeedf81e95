//! Dedicated SQLite reader threads.
//!
//! A read is a few microseconds of SQLite; handing it to tokio's blocking
//! pool cost more than the read itself (a futex wake-up to start a parked
//! blocking thread, and its park again afterwards, on every request).
//! These threads take jobs from one shared queue and run each with a
//! pooled connection; a thread takes the next job without parking while
//! the queue is not empty, and a parked one is woken only when no awake
//! one can take the job or a deep backlog waits (see [`super::queue`]),
//! so under load most jobs need no wake-up. Reads that wait together are
//! taken together and share one read transaction ([`db::read_together`]):
//! SQLite's begin and end of a read cost as much as the read itself.
//! A page of users is queued as a long job, taken alone, which no other
//! read waits behind.
//! (Measured: running the reads on the async workers themselves was
//! slower still, the workers then contending on SQLite's own locks; and
//! polling the empty queue before parking bought nothing on two cores.)

use std::panic::{self, AssertUnwindSafe};

use rusqlite::Connection;

use super::queue::Workers;
use crate::db;

/// A read to run with a reader's connection (or the reason there is none).
pub type Job = Box<dyn FnOnce(Result<&Connection, r2d2::Error>) + Send>;

/// The reader threads; dropping this stops them once the queue is empty.
pub type Readers = Workers<Job>;

/// Starts `threads` readers taking connections from `pool`.
pub fn start(pool: &db::Pool, threads: usize) -> std::io::Result<Readers> {
    let pool = pool.clone();
    Workers::start(
        "rosterd-reader",
        threads,
        BATCH,
        move |mut jobs: Vec<Job>| {
            if jobs.len() == 1 {
                if let Some(job) = jobs.pop() {
                    run_job(&pool, job);
                }
                return;
            }
            match pool.get() {
                Ok(conn) => db::read_together(&conn, |conn| {
                    for job in jobs {
                        run_caught(|| job(Ok(conn)));
                    }
                }),
                // Each job then waits for a connection, or fails, by itself.
                Err(_) => {
                    for job in jobs {
                        run_job(&pool, job);
                    }
                }
            }
        },
    )
}

/// Reads a thread takes at once, when that many wait: they share one
/// read transaction ([`db::read_together`]). At a few microseconds each,
/// the last of them waits well under 0.1 ms; a long job is taken alone.
const BATCH: usize = 16;

/// Runs a job with a connection borrowed from the pool for its length,
/// so the pool's size still bounds every use of SQLite.
fn run_job(pool: &db::Pool, job: Job) {
    // A panicking job (a bug) must not take the reader with it; its
    // caller sees the answer channel closed and answers 500.
    run_caught(|| match pool.get() {
        Ok(conn) => job(Ok(&conn)),
        Err(err) => job(Err(err)),
    });
}

/// Runs `f`, catching a panic.
fn run_caught(f: impl FnOnce()) {
    let _ = panic::catch_unwind(AssertUnwindSafe(f));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    fn pool(dir: &std::path::Path) -> db::Pool {
        db::open(&db::Options {
            path: dir.join("t.sqlite3"),
            busy_timeout: Duration::from_secs(1),
            pool_size: 2,
        })
        .unwrap()
    }

    #[test]
    fn waiting_reads_run_together_and_see_what_was_committed_before_them() {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool(dir.path());
        let readers = start(&pool, 1).unwrap();
        // Holds the one reader until released.
        let (release, held) = mpsc::channel::<()>();
        let (started_tx, started) = mpsc::channel::<()>();
        readers.submit(Box::new(move |_| {
            started_tx.send(()).unwrap();
            held.recv().unwrap();
        }));
        started.recv().unwrap();
        let writer = pool.get().unwrap();
        let (tx, rx) = mpsc::channel();
        let submit = |name: &'static str, long: bool| {
            let tx = tx.clone();
            let job: Job = Box::new(move |conn| {
                let conn = conn.unwrap();
                // Whether a transaction was already open for this job.
                let shared = !conn.is_autocommit();
                let users: i64 = db::read(conn, |conn| {
                    conn.query_row("SELECT count(*) FROM users", [], |row| row.get(0))
                })
                .unwrap();
                tx.send((name, shared, users)).unwrap();
            });
            if long {
                readers.submit_long(job);
            } else {
                readers.submit(job);
            }
        };
        submit("a", false);
        writer
            .execute_batch(
                "INSERT INTO users (username, email, password_hash, created_at, updated_at)
                 VALUES ('u', 'u@example.com', 'x', '2026', '2026')",
            )
            .unwrap();
        submit("b", false);
        submit("c", false);
        submit("page", true);
        submit("d", false);
        release.send(()).unwrap();
        let got: Vec<_> = (0..5).map(|_| rx.recv().unwrap()).collect();
        assert_eq!(
            got,
            vec![
                // Asked for before the insert, run after it: a read never
                // sees older data than was committed when it was asked.
                ("a", true, 1),
                ("b", true, 1),
                ("c", true, 1),
                // A long job runs alone, and so does what is left after it.
                ("page", false, 1),
                ("d", false, 1),
            ]
        );
    }

    #[test]
    fn readers_run_jobs_survive_a_panic_and_stop_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let readers = start(&pool(dir.path()), 2).unwrap();
        let (tx, rx) = mpsc::channel();
        for n in 0..20i64 {
            let tx = tx.clone();
            readers.submit(Box::new(move |conn| {
                let conn = conn.unwrap();
                let got: i64 = conn.query_row("SELECT ?1", [n], |row| row.get(0)).unwrap();
                tx.send(got).unwrap();
            }));
        }
        let mut got: Vec<i64> = (0..20).map(|_| rx.recv().unwrap()).collect();
        got.sort_unstable();
        assert_eq!(got, (0..20).collect::<Vec<_>>());

        // A panicking job drops its answer channel; the readers go on.
        let (ptx, prx) = mpsc::channel::<()>();
        readers.submit(Box::new(move |_| {
            let _keep = ptx;
            panic!("a bug in a job");
        }));
        assert!(prx.recv().is_err());
        let tx2 = tx.clone();
        readers.submit(Box::new(move |conn| {
            tx2.send(i64::from(conn.is_ok())).unwrap()
        }));
        assert_eq!(rx.recv().unwrap(), 1);

        // Dropping stops the threads: their pool clones go with them.
        let shared = readers.queue();
        drop(readers);
        for _ in 0..200 {
            if shared.upgrade().is_none() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the reader threads did not stop");
    }
}
