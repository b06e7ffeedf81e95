//! The job queue the reader and writer threads take their work from, and
//! the threads themselves.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Named threads serving one [`JobQueue`]; dropping this closes the queue,
/// and the threads end once they have done what is queued.
pub struct Workers<J> {
    queue: Arc<JobQueue<J>>,
}

impl<J> std::fmt::Debug for Workers<J> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.queue.fmt(f)
    }
}

impl<J: Send + 'static> Workers<J> {
    /// Starts `threads` threads (at least one) named `name-N`, each taking
    /// up to `batch` jobs at a time and handing them to `serve`.
    pub fn start<S>(name: &str, threads: usize, batch: usize, serve: S) -> std::io::Result<Self>
    where
        S: Fn(Vec<J>) + Clone + Send + 'static,
    {
        let threads = threads.max(1);
        let queue = Arc::new(JobQueue::new(threads));
        for n in 0..threads {
            let jobs = queue.clone();
            let serve = serve.clone();
            let started = std::thread::Builder::new()
                .name(format!("{name}-{n}"))
                .spawn(move || {
                    // Should `serve` panic, the thread is no longer
                    // counted on to take jobs.
                    let _leaving = Leaving(&jobs);
                    let mut long = 0;
                    while let Some(taken) = jobs.take(batch, long) {
                        long = taken.long;
                        serve(taken.jobs);
                    }
                });
            if let Err(err) = started {
                queue.close();
                return Err(err);
            }
        }
        Ok(Workers { queue })
    }

    /// Queues `job`, which takes a moment (a few indexed reads).
    pub fn submit(&self, job: J) {
        self.queue.push(job, false);
    }

    /// Queues `job`, which may take long (a page of users): a job queued
    /// while it runs does not wait for it.
    pub fn submit_long(&self, job: J) {
        self.queue.push(job, true);
    }

    /// The queue, to watch the threads end in tests.
    #[cfg(test)]
    pub fn queue(&self) -> std::sync::Weak<JobQueue<J>> {
        Arc::downgrade(&self.queue)
    }
}

impl<J> Drop for Workers<J> {
    fn drop(&mut self) {
        self.queue.close();
    }
}

/// Uncounts a thread when it ends.
struct Leaving<'a, J>(&'a JobQueue<J>);

impl<J> Drop for Leaving<'_, J> {
    fn drop(&mut self) {
        let mut inner = self.0.lock();
        inner.threads = inner.threads.saturating_sub(1);
    }
}

/// Jobs an awake thread may have waiting for it before another is woken:
/// at a few microseconds a job, the last of them waits well under 0.1 ms.
pub const BACKLOG: usize = 16;

/// A queue of jobs for a few threads: `push` from anywhere, `take` blocks
/// a thread until there is work; after `close`, `take` drains what is left
/// and then answers `None`, so the threads finish the queued work and end.
///
/// A parked thread is woken only when no awake thread can take the job, or
/// when the queue holds more than [`BACKLOG`] jobs for each awake thread:
/// an awake thread comes back for the next job as soon as it has done its
/// current one, and after a job of a few microseconds that is sooner than
/// a parked thread wakes. Waking one for every job made each cheap read pay
/// for a futex wake-up and a context switch (refresh on 2 cores, server CPU
/// per request: 28.1 -> 25.5 us with all its reads on one thread); waking
/// one whenever two jobs waited still cost get_user 28.3 against 25.1 us
/// with a backlog of 16 allowed, the second reader then only competing for
/// the cores with the async workers. A thread running a long job (pushed
/// with `long`) is not counted as awake, so a job queued behind it wakes
/// another thread at once; and a deep backlog wakes them all.
pub struct JobQueue<J> {
    inner: Mutex<Inner<J>>,
    wake: Condvar,
}

struct Inner<J> {
    /// Each job, and whether it is long.
    jobs: VecDeque<(J, bool)>,
    /// Threads taking jobs from this queue.
    threads: usize,
    /// Threads waiting in `take` and not yet woken.
    parked: usize,
    /// Wake-ups sent and not yet taken up by a waiting thread.
    woken: usize,
    /// Long jobs being run.
    long: usize,
    closed: bool,
}

/// Jobs taken by a thread, and how many of them are long.
pub struct Taken<J> {
    pub jobs: Vec<J>,
    pub long: usize,
}

impl<J> JobQueue<J> {
    /// A queue served by `threads` threads.
    pub fn new(threads: usize) -> Self {
        JobQueue {
            inner: Mutex::new(Inner {
                jobs: VecDeque::new(),
                threads,
                parked: 0,
                woken: 0,
                long: 0,
                closed: false,
            }),
            wake: Condvar::new(),
        }
    }
}

impl<J> std::fmt::Debug for JobQueue<J> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        f.debug_struct("JobQueue")
            .field("queued", &inner.jobs.len())
            .field("closed", &inner.closed)
            .finish()
    }
}

impl<J> JobQueue<J> {
    fn lock(&self) -> MutexGuard<'_, Inner<J>> {
        // No job runs under this lock, so a panicking job cannot poison
        // it; recover the guard all the same.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `job` (`long` if it may take long), waking a waiting thread
    /// if no thread is awake to take it or the awake ones have more than
    /// [`BACKLOG`] jobs each queued.
    pub fn push(&self, job: J, long: bool) {
        let mut inner = self.lock();
        inner.jobs.push_back((job, long));
        let awake = inner
            .threads
            .saturating_sub(inner.parked)
            .saturating_sub(inner.long);
        let wake = inner.parked > 0 && inner.jobs.len() > awake * BACKLOG;
        if wake {
            inner.parked -= 1;
            inner.woken += 1;
        }
        drop(inner);
        if wake {
            self.wake.notify_one();
        }
    }

    /// Up to `max` (at least one) jobs, in order, waiting for the first;
    /// `None` once the queue is closed and empty. A long job is taken
    /// alone, so the jobs taken with it never wait for it. `done_long` is
    /// how many long jobs the calling thread took last time, now done.
    pub fn take(&self, max: usize, done_long: usize) -> Option<Taken<J>> {
        let mut inner = self.lock();
        inner.long = inner.long.saturating_sub(done_long);
        while inner.jobs.is_empty() {
            if inner.closed {
                return None;
            }
            inner.parked += 1;
            inner = self.wake.wait(inner).unwrap_or_else(|e| e.into_inner());
            // A push that woke a thread has counted it awake already; a
            // spurious or closing wake-up has not.
            if inner.woken > 0 {
                inner.woken -= 1;
            } else {
                inner.parked = inner.parked.saturating_sub(1);
            }
        }
        let max = max.max(1);
        let n = match inner.jobs.iter().take(max).position(|(_, long)| *long) {
            Some(0) => 1,
            Some(first_long) => first_long,
            None => inner.jobs.len().min(max),
        };
        let mut taken = Taken {
            jobs: Vec::with_capacity(n),
            long: 0,
        };
        for (job, long) in inner.jobs.drain(..n) {
            taken.jobs.push(job);
            taken.long += usize::from(long);
        }
        inner.long += taken.long;
        Some(taken)
    }

    /// Lets the waiting threads end once the queue is empty.
    pub fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::mpsc;
    use std::time::Duration;

    fn jobs<J>(taken: Option<Taken<J>>) -> Option<Vec<J>> {
        taken.map(|t| t.jobs)
    }

    #[test]
    fn jobs_come_out_in_order_in_batches_and_close_drains_first() {
        let queue = JobQueue::new(1);
        for n in 0..5 {
            queue.push(n, n == 1);
        }
        let first = queue.take(2, 0).unwrap();
        assert_eq!((first.jobs, first.long), (vec![0], 0));
        // A long job is taken alone, whatever the batch size.
        let second = queue.take(10, 0).unwrap();
        assert_eq!((second.jobs, second.long), (vec![1], 1));
        assert_eq!(jobs(queue.take(0, 1)), Some(vec![2]));
        queue.close();
        assert_eq!(jobs(queue.take(10, 0)), Some(vec![3, 4]));
        assert!(queue.take(10, 0).is_none());
    }

    #[test]
    fn a_waiting_thread_is_woken_by_a_push_and_by_close() {
        let queue = Arc::new(JobQueue::new(1));
        let waiter = {
            let queue = queue.clone();
            std::thread::spawn(move || (jobs(queue.take(1, 0)), jobs(queue.take(1, 0))))
        };
        std::thread::sleep(Duration::from_millis(50));
        queue.push(7, false);
        std::thread::sleep(Duration::from_millis(50));
        queue.close();
        assert_eq!(waiter.join().unwrap(), (Some(vec![7]), None));
    }

    type Job = Box<dyn FnOnce() + Send>;

    fn two_threads() -> Workers<Job> {
        let workers = Workers::start("test-queue", 2, 1, |jobs: Vec<Job>| {
            for job in jobs {
                job();
            }
        })
        .unwrap();
        // Both threads parked.
        std::thread::sleep(Duration::from_millis(50));
        workers
    }

    /// A job that says it started, then holds its thread for 500 ms.
    fn blocking(started: mpsc::Sender<&'static str>, name: &'static str) -> Job {
        Box::new(move || {
            started.send(name).unwrap();
            std::thread::sleep(Duration::from_millis(500));
        })
    }

    #[test]
    fn short_jobs_wait_for_an_awake_thread_and_a_deep_backlog_wakes_another() {
        let workers = two_threads();
        let (tx, rx) = mpsc::channel();
        // Holds the awake thread for 500 ms.
        workers.submit(blocking(tx.clone(), "busy"));
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok("busy"));
        // Up to BACKLOG queued jobs for one awake thread: no wake-up, they
        // wait for it.
        let short = |n: usize| -> Job {
            let sender = tx.clone();
            Box::new(move || sender.send(if n == 0 { "first" } else { "later" }).unwrap())
        };
        for n in 0..BACKLOG {
            workers.submit(short(n));
        }
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
        // One more: the other thread wakes for them, in order.
        workers.submit(short(BACKLOG));
        assert_eq!(rx.recv_timeout(Duration::from_millis(300)), Ok("first"));
        for _ in 0..BACKLOG {
            assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok("later"));
        }
    }

    #[test]
    fn a_job_queued_behind_a_long_one_wakes_another_thread() {
        let workers = two_threads();
        let (tx, rx) = mpsc::channel();
        workers.submit_long(blocking(tx.clone(), "long"));
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok("long"));
        let sender = tx.clone();
        workers.submit(Box::new(move || sender.send("short").unwrap()));
        assert_eq!(rx.recv_timeout(Duration::from_millis(300)), Ok("short"));
        // The long job done, its thread counts as awake again.
        std::thread::sleep(Duration::from_millis(600));
        let queue = workers.queue().upgrade().unwrap();
        assert_eq!(queue.lock().long, 0);
    }

    #[test]
    fn a_thread_that_dies_is_no_longer_counted_on() {
        let workers = two_threads();
        workers.submit(Box::new(|| panic!("a bug in a job")));
        let queue = workers.queue().upgrade().unwrap();
        let start = std::time::Instant::now();
        while queue.lock().threads > 1 && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(queue.lock().threads, 1);
        drop(queue);
        // With one thread parked and none awake, a job wakes it.
        let (tx, rx) = mpsc::channel();
        workers.submit(Box::new(move || tx.send(1).unwrap()));
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(1));
    }
}
