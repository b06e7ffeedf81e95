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
        let queue = Arc::new(JobQueue::default());
        for n in 0..threads.max(1) {
            let jobs = queue.clone();
            let serve = serve.clone();
            std::thread::Builder::new()
                .name(format!("{name}-{n}"))
                .spawn(move || {
                    while let Some(taken) = jobs.take(batch) {
                        serve(taken);
                    }
                })?;
        }
        Ok(Workers { queue })
    }

    /// Queues `job`.
    pub fn submit(&self, job: J) {
        self.queue.push(job);
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

/// A queue of jobs for a few threads: `push` from anywhere, `take` blocks
/// a thread until there is work; after `close`, `take` drains what is left
/// and then answers `None`, so the threads finish the queued work and end.
pub struct JobQueue<J> {
    inner: Mutex<Inner<J>>,
    wake: Condvar,
}

struct Inner<J> {
    jobs: VecDeque<J>,
    /// Threads waiting in `take`: only then does `push` pay for a wake-up.
    parked: usize,
    closed: bool,
}

impl<J> Default for JobQueue<J> {
    fn default() -> Self {
        JobQueue {
            inner: Mutex::new(Inner {
                jobs: VecDeque::new(),
                parked: 0,
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

    /// Queues `job`, waking a waiting thread if there is one.
    pub fn push(&self, job: J) {
        let mut inner = self.lock();
        inner.jobs.push_back(job);
        let wake = inner.parked > 0;
        drop(inner);
        if wake {
            self.wake.notify_one();
        }
    }

    /// Up to `max` (at least one) jobs, in order, waiting for the first;
    /// `None` once the queue is closed and empty.
    pub fn take(&self, max: usize) -> Option<Vec<J>> {
        let mut inner = self.lock();
        while inner.jobs.is_empty() {
            if inner.closed {
                return None;
            }
            inner.parked += 1;
            inner = self.wake.wait(inner).unwrap_or_else(|e| e.into_inner());
            inner.parked -= 1;
        }
        let n = inner.jobs.len().min(max.max(1));
        Some(inner.jobs.drain(..n).collect())
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

    #[test]
    fn jobs_come_out_in_order_in_batches_and_close_drains_first() {
        let queue = JobQueue::default();
        for n in 0..5 {
            queue.push(n);
        }
        assert_eq!(queue.take(2), Some(vec![0, 1]));
        assert_eq!(queue.take(0), Some(vec![2]));
        queue.close();
        assert_eq!(queue.take(10), Some(vec![3, 4]));
        assert_eq!(queue.take(10), None);
    }

    #[test]
    fn a_waiting_thread_is_woken_by_a_push_and_by_close() {
        let queue = Arc::new(JobQueue::default());
        let waiter = {
            let queue = queue.clone();
            std::thread::spawn(move || (queue.take(1), queue.take(1)))
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        queue.push(7);
        std::thread::sleep(std::time::Duration::from_millis(50));
        queue.close();
        assert_eq!(waiter.join().unwrap(), (Some(vec![7]), None));
    }
}
