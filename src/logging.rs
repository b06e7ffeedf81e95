//! The log: one line per event on stderr, as text for people or as JSON
//! objects (`log.format`), written by `tracing-subscriber` through
//! `tracing-appender`'s non-blocking writer so that no request waits for
//! stderr. Each request's lines carry its `request{id=...}` span (set by
//! `server`).

use std::io::IsTerminal;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Starts the log in `format` (`"json"` or text); the returned guard
/// writes what is left when dropped.
pub fn init(format: &str) -> WorkerGuard {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,hyper=warn,warp=warn"));
    // Its default buffer (128,000 lines, allocated at start) would cost
    // more idle memory than the rest of the server; past a smaller one a
    // logging thread waits instead of dropping its line. Buffered: the
    // worker writes what it found waiting with one write(2) (it flushes
    // each time the queue runs dry).
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(4096)
        .lossy(false)
        .finish(std::io::BufWriter::new(std::io::stderr()));
    let layer = tracing_subscriber::fmt::layer().with_writer(writer);
    let registry = tracing_subscriber::registry().with(filter);
    // A second init (tests) is harmless; its error is ignored.
    let _ = if format == "json" {
        registry.with(layer.json().flatten_event(true)).try_init()
    } else {
        registry
            .with(layer.with_ansi(std::io::stderr().is_terminal()))
            .try_init()
    };
    guard
}
