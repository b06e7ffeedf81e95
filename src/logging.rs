//! The log writer: lines are gathered in memory and written to stderr by
//! one thread, a batch at a time, instead of one `write` system call per
//! line on the thread that answers the request.
//!
//! A request's log line used to cost that request a `write(2)` of its
//! own, the largest single cost of a cheap request after the reply itself
//! (see bench/RESULTS.md). Here the line is appended to a buffer; the
//! writer thread wakes when the buffer stops being empty, writes it, and
//! then waits [`PAUSE`] before the next batch, so a busy server makes at
//! most a few hundred writes a second and an idle one writes each line at
//! once.
//!
//! What must not wait is not kept waiting: a warning or an error is
//! written, after everything before it, by the thread that logs it; so is
//! any line while [`MAX_PENDING`] bytes are already waiting (a stuck
//! stderr then slows the logging threads, as before, instead of growing
//! memory). Dropping the [`Flush`] guard writes whatever is left.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

pub mod lines;

/// The writer thread's rest after each batch: the most a line waits.
pub const PAUSE: Duration = Duration::from_millis(5);

/// Bytes waiting past which a logging thread writes them itself.
pub const MAX_PENDING: usize = 1 << 20;

type Output = Box<dyn Write + Send>;

struct Shared {
    pending: Mutex<Pending>,
    ready: Condvar,
    /// Held while writing, so batches and urgent lines go out in order.
    out: Mutex<Output>,
}

#[derive(Default)]
struct Pending {
    lines: Vec<u8>,
    /// The writer thread is waiting for lines: only then is it woken.
    idle: bool,
    closed: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing that can panic runs under these locks but a write; a
    // poisoned lock still guards whole lines.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// Writes what is pending, then `line`, in that order.
    fn write_now(&self, line: &[u8]) {
        let mut out = lock(&self.out);
        let pending = std::mem::take(&mut lock(&self.pending).lines);
        // A log that cannot be written is dropped, as tracing's own
        // writers do: nothing else could report it.
        let _ = out.write_all(&pending);
        let _ = out.write_all(line);
        let _ = out.flush();
    }

    fn append(&self, line: &[u8]) {
        let mut pending = lock(&self.pending);
        if pending.lines.len() >= MAX_PENDING {
            drop(pending);
            return self.write_now(line);
        }
        pending.lines.extend_from_slice(line);
        let wake = pending.idle;
        pending.idle = false;
        drop(pending);
        if wake {
            self.ready.notify_one();
        }
    }

    /// The writer thread: a batch whenever there are lines, then a pause.
    fn run(&self) {
        let mut batch = Vec::new();
        loop {
            {
                let mut pending = lock(&self.pending);
                while pending.lines.is_empty() {
                    if pending.closed {
                        return;
                    }
                    pending.idle = true;
                    pending = self.ready.wait(pending).unwrap_or_else(|e| e.into_inner());
                }
            }
            {
                let mut out = lock(&self.out);
                std::mem::swap(&mut lock(&self.pending).lines, &mut batch);
                let _ = out.write_all(&batch);
                let _ = out.flush();
            }
            batch.clear();
            // Keep a burst's buffer, not a flood's.
            batch.shrink_to(64 * 1024);
            std::thread::sleep(PAUSE);
        }
    }

    fn close(&self) {
        lock(&self.pending).closed = true;
        self.ready.notify_one();
        self.write_now(&[]);
    }
}

/// The log's output, for [`lines::Lines`].
#[derive(Clone)]
pub struct Batched {
    shared: Arc<Shared>,
    /// No writer thread: every line is written at once.
    direct: bool,
}

/// Writes what is left when dropped (at the end of `serve`).
pub struct Flush {
    shared: Arc<Shared>,
}

impl Drop for Flush {
    fn drop(&mut self) {
        self.shared.close();
    }
}

impl Batched {
    /// A writer to stderr, with its writer thread (or, should the thread
    /// fail to start, writing each line at once).
    pub fn stderr() -> (Batched, Flush) {
        Batched::to(Box::new(std::io::stderr()))
    }

    fn to(out: Output) -> (Batched, Flush) {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            ready: Condvar::new(),
            out: Mutex::new(out),
        });
        let thread = shared.clone();
        let direct = std::thread::Builder::new()
            .name("rosterd-log".into())
            .spawn(move || thread.run())
            .is_err();
        (
            Batched {
                shared: shared.clone(),
                direct,
            },
            Flush { shared },
        )
    }

    /// Writes one or more whole lines: at once when `urgent` (warnings and
    /// errors) or when there is no writer thread, else with the next batch.
    pub fn write_line(&self, line: &[u8], urgent: bool) {
        if urgent || self.direct {
            self.shared.write_now(line);
        } else {
            self.shared.append(line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// An output the test can read.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            lock(&self.0).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Sink {
        fn text(&self) -> String {
            String::from_utf8(lock(&self.0).clone()).unwrap()
        }
        fn wait_for(&self, text: &str) -> String {
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                let got = self.text();
                if got == text {
                    return got;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            self.text()
        }
    }

    fn writer() -> (Batched, Flush, Sink) {
        let sink = Sink::default();
        let (batched, flush) = Batched::to(Box::new(sink.clone()));
        (batched, flush, sink)
    }

    #[test]
    fn lines_reach_the_output_in_order_without_a_flush() {
        let (batched, _flush, sink) = writer();
        for n in 0..100 {
            batched.write_line(format!("line {n}\n").as_bytes(), false);
        }
        let want: String = (0..100).map(|n| format!("line {n}\n")).collect();
        assert_eq!(sink.wait_for(&want), want);
        // The writer thread went back to waiting: a later line comes too.
        std::thread::sleep(PAUSE * 3);
        batched.write_line(b"later\n", false);
        let want = want + "later\n";
        assert_eq!(sink.wait_for(&want), want);
    }

    #[test]
    fn a_warning_goes_out_at_once_after_the_lines_before_it() {
        let (batched, _flush, sink) = writer();
        use tracing_subscriber::layer::SubscriberExt;
        let subscriber = tracing_subscriber::registry().with(lines::Lines::new(
            lines::Format::Text { ansi: false },
            batched.clone(),
        ));
        tracing::subscriber::with_default(subscriber, || {
            // Hold the writer thread back: the info line stays pending.
            let out = lock(&batched.shared.out);
            tracing::info!("first");
            assert_eq!(sink.text(), "");
            drop(out);
            tracing::warn!("second");
            // Written by this thread before it went on.
            let text = sink.text();
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(lines.len(), 2, "{text}");
            assert!(
                lines[0].ends_with("Z  INFO rosterd::logging::tests: first"),
                "{text}"
            );
            assert!(
                lines[1].ends_with("Z  WARN rosterd::logging::tests: second"),
                "{text}"
            );
        });
    }

    #[test]
    fn dropping_the_guard_writes_what_is_left_and_stops_the_thread() {
        let (batched, flush, sink) = writer();
        let out = lock(&batched.shared.out);
        batched.write_line(b"a\n", false);
        batched.write_line(b"b\n", false);
        drop(out);
        drop(flush);
        assert_eq!(sink.text(), "a\nb\n");
        // The thread ends, dropping its share.
        let start = Instant::now();
        while Arc::strong_count(&batched.shared) > 1 && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(Arc::strong_count(&batched.shared), 1);
    }

    #[test]
    fn a_full_buffer_is_written_by_the_logging_thread() {
        let (batched, _flush, sink) = writer();
        let out = lock(&batched.shared.out);
        let big = vec![b'x'; MAX_PENDING];
        batched.write_line(&big, false);
        drop(out);
        // The writer thread may take the big batch first; either way the
        // next line waits for nobody and comes after it.
        batched.write_line(b"next\n", false);
        let text = sink.wait_for(&format!("{}next\n", "x".repeat(MAX_PENDING)));
        assert!(text.ends_with("next\n") && text.len() == MAX_PENDING + 5);
    }
}
