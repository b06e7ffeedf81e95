//! Dedicated SQLite reader threads.
//!
//! A read is a few microseconds of SQLite; handing it to tokio's blocking
//! pool cost more than the read itself (a futex wake-up to start a parked
//! blocking thread, and its park again afterwards, on every request).
//! These threads take jobs from one shared queue and run each with a
//! pooled connection; a thread takes the next job without parking while
//! the queue is not empty, and a parked one is woken only when no awake
//! one can take the job or a deep backlog waits (see [`super::queue`]),
//! so under load most jobs need no wake-up. A page of users is queued as
//! a long job, which no other read waits behind.
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
    Workers::start("rosterd-reader", threads, 1, move |jobs| {
        for job in jobs {
            run_job(&pool, job);
        }
    })
}

/// Runs a job with a connection borrowed from the pool for its length,
/// so the pool's size still bounds every use of SQLite.
fn run_job(pool: &db::Pool, job: Job) {
    // A panicking job (a bug) must not take the reader with it; its
    // caller sees the answer channel closed and answers 500.
    let _ = panic::catch_unwind(AssertUnwindSafe(|| match pool.get() {
        Ok(conn) => job(Ok(&conn)),
        Err(err) => job(Err(err)),
    }));
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
