//! The log: one line per event on stderr, as text for people or as JSON
//! objects (`log.format`), written by `tracing-subscriber` through
//! `tracing-appender`'s non-blocking writer so that no request waits for
//! stderr. Each request's lines carry its `request{id=...}` span (set by
//! `server`).

use std::io::IsTerminal;

use tracing::Level;
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Starts the log in `format` (`"json"` or text); the returned guard
/// writes what is left when dropped.
pub fn init(format: &str) -> WorkerGuard {
    let filter = filter(std::env::var("RUST_LOG").ok().as_deref());
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

/// The levels of `RUST_LOG`: a level, and levels per target
/// (`warn,rosterd=debug`); spans and fields are not matched, so no regex
/// engine is needed. Unset or not understood: `info`, with hyper and warp
/// at `warn`.
fn filter(rust_log: Option<&str>) -> Targets {
    rust_log
        .and_then(|directives| directives.parse().ok())
        .unwrap_or_else(|| {
            Targets::new()
                .with_default(Level::INFO)
                .with_targets([("hyper", Level::WARN), ("warp", Level::WARN)])
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_sets_levels_per_target_and_falls_back_to_info() {
        for unset in [None, Some("rosterd=loud"), Some("a=b=c")] {
            let levels = filter(unset);
            assert!(
                levels.would_enable("rosterd::api", &Level::INFO),
                "{unset:?}"
            );
            assert!(
                !levels.would_enable("rosterd::api", &Level::DEBUG),
                "{unset:?}"
            );
            assert!(
                !levels.would_enable("hyper::proto", &Level::INFO),
                "{unset:?}"
            );
            assert!(
                levels.would_enable("hyper::proto", &Level::WARN),
                "{unset:?}"
            );
        }
        let levels = filter(Some("warn,rosterd=debug"));
        assert!(levels.would_enable("rosterd::server", &Level::DEBUG));
        assert!(!levels.would_enable("r2d2", &Level::INFO));
        assert!(levels.would_enable("r2d2", &Level::WARN));
        let levels = filter(Some("error"));
        assert!(!levels.would_enable("rosterd", &Level::WARN));
    }
}
