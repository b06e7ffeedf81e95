//! The writer thread: group commit.
//!
//! A write request is durable when its commit is synced to disk
//! (`synchronous = FULL`), and one sync costs far more than the request's
//! own work. So requests that arrive while a commit is being synced do not
//! each wait for their own: the writer thread takes every queued request,
//! runs them one after another inside one `BEGIN IMMEDIATE` transaction,
//! each in its own savepoint, and commits once. A request that fails rolls
//! back its savepoint only; nobody gets an answer before the commit that
//! holds their change is synced, and if that commit fails, every request in
//! it gets the error.

use std::panic::{self, AssertUnwindSafe};
use std::sync::mpsc;

use crate::db::{self, Conn, shared};

/// At most this many requests share one commit.
const MAX_BATCH: usize = 128;

/// Why a request's change did not survive although the request succeeded.
pub type Lost = db::Error;

/// A write request: runs with the writer's connection (or the reason there
/// is none) and says how it went.
pub type Job = Box<dyn FnOnce(Result<&mut Conn<'_>, &r2d2::Error>) -> Done + Send>;

/// What a [`Job`] leaves behind.
pub struct Done {
    /// Whether the job succeeded (its changes are to be kept).
    pub succeeded: bool,
    /// A copy of the job's database error, if it failed with one: it
    /// fails the whole batch when SQLite rolled the transaction back.
    pub cause: Option<db::Error>,
    /// Sends the answer: called once the outcome is known, with `Some`
    /// when the job succeeded but its change was lost after all.
    pub answer: Answer,
}

/// See [`Done::answer`].
pub type Answer = Box<dyn FnOnce(Option<Lost>) + Send>;

/// The writer thread's queue; dropping this stops the thread once it has
/// done what is queued.
#[derive(Debug)]
pub struct Writer {
    jobs: mpsc::Sender<Job>,
}

impl Writer {
    /// Queues `job`.
    pub fn submit(&self, job: Job) {
        // The thread only ends once every sender is gone, so this cannot
        // fail; a job it could not take would drop its answer channel.
        let _ = self.jobs.send(job);
    }
}

/// Starts the writer thread, taking a connection from `pool` per batch:
/// every job queued while a batch is committed goes into the next one.
pub fn start(pool: &db::Pool) -> std::io::Result<Writer> {
    let pool = pool.clone();
    let (jobs, queue) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("rosterd-writer".into())
        .spawn(move || {
            while let Ok(first) = queue.recv() {
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH
                    && let Ok(job) = queue.try_recv()
                {
                    batch.push(job);
                }
                run_batch(&pool, batch);
            }
        })?;
    Ok(Writer { jobs })
}

/// Runs one batch with a pooled connection (or fails it with the reason
/// there is none).
fn run_batch(pool: &db::Pool, batch: Vec<Job>) {
    match pool.get() {
        Ok(mut pooled) => commit_batch(&mut pooled.conn(), batch),
        Err(err) => {
            for job in batch {
                if let Some(done) = run_job(job, Err(&err)) {
                    (done.answer)(None);
                }
            }
        }
    }
}

/// Runs `job`; `None` if it panicked (a bug: its caller sees its answer
/// channel closed).
fn run_job(job: Job, conn: Result<&mut Conn<'_>, &r2d2::Error>) -> Option<Done> {
    panic::catch_unwind(AssertUnwindSafe(move || job(conn))).ok()
}

/// Runs `jobs` in as few transactions as SQLite lets it, answering each
/// once its fate is sealed.
fn commit_batch(conn: &mut Conn<'_>, jobs: Vec<Job>) {
    let mut waiting: Vec<Answer> = Vec::new();
    let mut open = shared::begin(conn).is_ok();
    for job in jobs {
        if open && shared::mark(conn).is_err() {
            // Cannot mark this job's start: end the batch here.
            commit(conn, std::mem::take(&mut waiting));
            open = false;
        }
        if !open {
            // No shared transaction (another process held the write lock
            // past busy_timeout, or an I/O error): the rest run on their
            // own, each in its own transaction or with its own error.
            if let Some(done) = run_job(job, Ok(conn)) {
                (done.answer)(None);
            }
            continue;
        }
        let done = run_job(job, Ok(conn));
        if !shared::is_open(conn) {
            // SQLite rolled the whole transaction back (a full disk, an
            // I/O error): the changes of the jobs before this one are gone.
            let cause = done
                .as_ref()
                .and_then(|d| d.cause.as_ref())
                .map(db::Error::copy);
            for answer in waiting.drain(..) {
                answer(Some(lost(cause.as_ref())));
            }
            if let Some(done) = done {
                (done.answer)(done.succeeded.then(|| lost(cause.as_ref())));
            }
            open = shared::begin(conn).is_ok();
            continue;
        }
        match done {
            Some(done) if done.succeeded => {
                let _ = shared::keep(conn);
                waiting.push(done.answer);
            }
            failed => {
                let _ = shared::undo(conn);
                // Answered with the batch: its failure may come from an
                // earlier job's write that the batch's fate can still undo.
                if let Some(done) = failed {
                    waiting.push(done.answer);
                }
            }
        }
    }
    if open {
        commit(conn, waiting);
    }
}

/// Commits the shared transaction and answers everyone in it.
fn commit(conn: &mut Conn<'_>, waiting: Vec<Answer>) {
    let failure = shared::commit(conn).err();
    for answer in waiting {
        answer(failure.as_ref().map(|err| lost(Some(err))));
    }
}

/// The error a request gets when its change was lost with its batch.
fn lost(cause: Option<&db::Error>) -> Lost {
    match cause {
        Some(err) => err.copy(),
        None => db::Error::aborted("the transaction was rolled back"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    type Outcome = Result<(), String>;

    fn pool(dir: &std::path::Path, max_bytes: u64) -> db::Pool {
        let pool = db::sqlite::open_limited(
            &db::Options {
                path: dir.join("t.sqlite3"),
                busy_timeout: Duration::from_secs(1),
                pool_size: 2,
            },
            max_bytes,
        )
        .unwrap();
        pool.get()
            .unwrap()
            .execute_batch("CREATE TABLE t (v TEXT NOT NULL UNIQUE)")
            .unwrap();
        db::Pool::Sqlite(pool)
    }

    /// The SQLite connection inside (these tests run on SQLite).
    fn sqlite<'a>(conn: &Conn<'a>) -> &'a rusqlite::Connection {
        match conn {
            Conn::Sqlite(conn) => conn,
            Conn::Postgres(_) => unreachable!("a SQLite pool"),
        }
    }

    /// A job inserting `v` (through `db::write`, as the server's do),
    /// reporting on `out` with its tag.
    fn insert(tag: &'static str, v: String, out: mpsc::Sender<(&'static str, Outcome)>) -> Job {
        Box::new(move |conn| {
            let result = conn.map_err(|e| e.to_string()).and_then(|conn| {
                db::write(conn, |tx| {
                    Ok(sqlite(tx).execute("INSERT INTO t (v) VALUES (?1)", [&v])?)
                })
                .map(drop)
                .map_err(|e| e.to_string())
            });
            Done {
                succeeded: result.is_ok(),
                cause: None,
                answer: Box::new(move |lost| {
                    let _ = out.send((tag, lost.map_or(result, |e| Err(e.to_string()))));
                }),
            }
        })
    }

    fn rows(pool: &db::Pool) -> Vec<String> {
        let db::Pool::Sqlite(pool) = pool else {
            unreachable!("a SQLite pool")
        };
        let conn = pool.get().unwrap();
        let mut statement = conn.prepare("SELECT v FROM t ORDER BY v").unwrap();
        statement
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    /// Queues a job that holds the writer until `release` gets a message,
    /// so the jobs queued meanwhile share the next batch.
    fn hold(writer: &Writer) -> mpsc::Sender<()> {
        let (release, held) = mpsc::channel::<()>();
        let (started, running) = mpsc::channel::<()>();
        writer.submit(Box::new(move |_| {
            let _ = started.send(());
            let _ = held.recv();
            Done {
                succeeded: true,
                cause: None,
                answer: Box::new(|_| {}),
            }
        }));
        running.recv().unwrap();
        release
    }

    #[test]
    fn a_failing_or_panicking_job_undoes_only_itself_in_a_shared_commit() {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool(dir.path(), 0);
        let writer = start(&pool).unwrap();
        let (out, answers) = mpsc::channel();
        let release = hold(&writer);
        writer.submit(insert("a", "a".into(), out.clone()));
        writer.submit(insert("dup", "a".into(), out.clone()));
        writer.submit(Box::new(|conn| {
            let conn = conn.unwrap();
            sqlite(conn)
                .execute("INSERT INTO t (v) VALUES ('from a panic')", [])
                .unwrap();
            panic!("a bug in a job");
        }));
        writer.submit(insert("b", "b".into(), out.clone()));
        release.send(()).unwrap();
        let mut got: Vec<_> = (0..3).map(|_| answers.recv().unwrap()).collect();
        got.sort();
        assert_eq!(got[0], ("a", Ok(())));
        assert_eq!(got[1], ("b", Ok(())));
        assert_eq!(got[2].0, "dup");
        assert!(got[2].1.as_ref().unwrap_err().contains("UNIQUE"));
        assert_eq!(rows(&pool), ["a", "b"]);
        // Nobody is left waiting: the panicking job's sender is gone.
        assert!(answers.recv_timeout(Duration::from_millis(100)).is_err());
    }

    #[test]
    fn a_job_refused_for_a_write_that_was_then_lost_is_told_of_the_loss() {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool(dir.path(), 128 * 1024);
        let writer = start(&pool).unwrap();
        let (out, answers) = mpsc::channel();
        let release = hold(&writer);
        writer.submit(insert("first", "x".into(), out.clone()));
        // Refused only because of the first job's uncommitted row.
        writer.submit(insert("clash", "x".into(), out.clone()));
        // Too big for the capped file: SQLite rolls the batch back.
        writer.submit(insert("big", "y".repeat(256 * 1024), out.clone()));
        release.send(()).unwrap();
        let got: Vec<_> = (0..3).map(|_| answers.recv().unwrap()).collect();
        assert!(rows(&pool).is_empty(), "{got:?}");
        let clash = got.iter().find(|(tag, _)| *tag == "clash").unwrap();
        let said = clash.1.as_ref().unwrap_err();
        assert!(
            !said.contains("UNIQUE"),
            "told of a clash with a lost row: {got:?}"
        );
    }

    #[test]
    fn nobody_hears_of_success_for_a_change_that_did_not_survive() {
        let dir = tempfile::tempdir().unwrap();
        // A file capped at a few pages: a big row does not fit.
        let pool = pool(dir.path(), 128 * 1024);
        let writer = start(&pool).unwrap();
        let (out, answers) = mpsc::channel();
        let release = hold(&writer);
        writer.submit(insert("small", "small".into(), out.clone()));
        writer.submit(insert("big", "x".repeat(256 * 1024), out.clone()));
        writer.submit(insert("after", "after".into(), out.clone()));
        release.send(()).unwrap();
        let got: Vec<_> = (0..3).map(|_| answers.recv().unwrap()).collect();
        let big = got.iter().find(|(tag, _)| *tag == "big").unwrap();
        assert!(big.1.is_err(), "{got:?}");
        let stored = rows(&pool);
        for (tag, outcome) in &got {
            assert_eq!(
                outcome.is_ok(),
                stored.contains(&tag.to_string()),
                "{got:?} {stored:?}"
            );
        }
    }
}
