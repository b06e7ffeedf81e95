//! rosterd: user accounts in one SQLite file, JWTs, and the JSON API of a
//! Django REST Framework + simplejwt backend.
//!
//! Tests and `main.rs` drive it the same way: resolve a [`config::Config`],
//! build an [`AppState`], bind a listener, and call [`run`].

#![forbid(unsafe_code)]
#![warn(missing_docs, clippy::mod_module_files)]

pub mod api;
pub mod auth;
pub mod cli;
pub mod commands;
pub mod config;
pub mod db;
pub mod live;
pub mod logging;
pub mod model;
pub mod request_id;
pub mod server;
pub mod state;

use std::future::Future;

pub use api::routes;
pub use state::AppState;

/// Serves the API on an already-bound listener until `shutdown` resolves,
/// then stops accepting, lets in-flight requests finish and closes the
/// database.
pub async fn run(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let limits = server::Limits::from_config(&state.config.server);
    let hub = tokio::spawn(live::run(state.clone()));
    let keys = tokio::spawn(state.clone().watch_keys());
    // Open event streams end when the server stops, so that the graceful
    // shutdown does not wait for them.
    let stopping = state.clone();
    let shutdown = async move {
        shutdown.await;
        stopping.events.stop();
    };
    server::serve(listener, api::service(state.clone()), limits, shutdown).await;
    let _ = hub.await;
    keys.abort();
    // Checkpoint the WAL into the main file so a stopped server leaves one
    // tidy file behind; the pool closes when the last clone drops.
    if let db::Pool::Sqlite(pool) = state.pool.clone() {
        drop(state);
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let conn = pool.get()?;
            conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
            Ok(())
        })
        .await??;
    }
    tracing::info!("stopped");
    Ok(())
}
