//! `AppState`: what every handler shares (pool, config, keys, the hash
//! gate), and the two ways work leaves the async workers: `db` for SQLite,
//! `hashing` for PBKDF2.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::Semaphore;

use crate::api::error::ApiError;
use crate::api::throttle::Throttle;
use crate::auth::jwt::Keys;
use crate::config::Config;
use crate::db;

mod known;
mod pages;
mod queue;
mod readers;
pub use known::{Kept, Known};
pub use pages::{Page, PageCache};
mod writer;
use readers::Readers;
use writer::{Done, Writer};

/// Shared by every handler; cloning it is one reference count (a clone
/// per filter and per request: one atomic, not one per field).
#[derive(Clone, Debug)]
pub struct AppState(Arc<Shared>);

/// What [`AppState`] shares; reached through `Deref`.
#[derive(Debug)]
pub struct Shared {
    /// The SQLite connection pool.
    pub pool: db::Pool,
    /// The resolved configuration.
    pub config: Config,
    /// JWT keys and lifetimes.
    pub keys: Keys,
    /// Bounds concurrent and queued password hashes.
    pub hashes: HashGate,
    /// Password-attempt limits.
    pub throttle: Throttle,
    /// The one thread that writes: writers queue there, in order, instead
    /// of in SQLite's busy handler (which sleeps and backs off, leaving the
    /// write lock idle between commits), and share commits (see [`writer`]).
    writer: Writer,
    /// Seek points for deep pages of the user list.
    pub id_seek: Arc<db::users::IdSeek>,
    /// Rendered pages of the user list (see [`pages`]).
    pub pages: Arc<PageCache>,
    /// Users and tokens as last read, while the database is unchanged
    /// (see [`known`]).
    pub known: Known,
    /// The threads that run reads (see [`readers`]).
    readers: Readers,
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    /// Opens (creating and migrating) the database named by the config and
    /// builds the keys. The config's secret must already be checked.
    pub fn new(config: Config) -> anyhow::Result<AppState> {
        let path = config
            .database
            .path
            .clone()
            .filter(|p| !p.as_os_str().is_empty())
            .context("no database path configured (database.path / ROSTERD_DB / --db)")?;
        let pool = db::open_limited(
            &db::Options {
                path: path.clone(),
                busy_timeout: Duration::from_millis(config.database.busy_timeout_ms),
                pool_size: config.database.pool_size,
            },
            config.database.max_size,
        )?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let writer = writer::start(&pool).context("cannot start the database writer thread")?;
        let readers = readers::start(&pool, cores.min(config.database.pool_size as usize))
            .context("cannot start the database reader threads")?;
        // Without the watch every read goes to SQLite, as it would anyway.
        let watch = match db::watch::Watch::open(&path) {
            Ok(watch) => Some(watch),
            Err(err) => {
                tracing::warn!(error = %err, "cannot watch the database for changes: no reads kept");
                None
            }
        };
        Ok(AppState(Arc::new(Shared {
            readers,
            known: Known::new(watch),
            id_seek: Arc::default(),
            pages: Arc::default(),
            pool,
            keys: Keys::new(&config.auth),
            hashes: HashGate::new(cores, config.auth.max_queued_hashes),
            throttle: Throttle::new(&config.rate_limit, &config.server),
            writer,
            config,
        })))
    }

    /// Runs `f` with a pooled connection in one read transaction
    /// ([`db::read`]) on a reader thread; the connection goes back to the
    /// pool before the future resolves.
    pub async fn db<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        F: FnOnce(&rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        self.db_with(move |conn| f(conn).map_err(ApiError::from))
            .await
    }

    /// Like [`AppState::db`], for reads that mix queries with checks
    /// answering `ApiError`.
    pub async fn db_with<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        F: FnOnce(&rusqlite::Connection) -> Result<T, ApiError> + Send + 'static,
        T: Send + 'static,
    {
        self.read(f, false).await
    }

    /// Like [`AppState::db_with`], for a read that may take long (a page
    /// of users): reads queued while it runs do not wait for its thread.
    pub async fn db_long<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        F: FnOnce(&rusqlite::Connection) -> Result<T, ApiError> + Send + 'static,
        T: Send + 'static,
    {
        self.read(f, true).await
    }

    async fn read<T, F>(&self, f: F, long: bool) -> Result<T, ApiError>
    where
        F: FnOnce(&rusqlite::Connection) -> Result<T, ApiError> + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: readers::Job = Box::new(move |conn| {
            let _ = tx.send(
                conn.map_err(ApiError::from)
                    .and_then(|conn| db::read(conn, f)),
            );
        });
        if long {
            self.readers.submit_long(job);
        } else {
            self.readers.submit(job);
        }
        rx.await
            .map_err(|_| ApiError::Internal(anyhow::anyhow!("a database read failed")))?
    }

    /// Runs `f`, which writes, on the writer thread, inside a transaction
    /// it may share with other requests (each in its own savepoint: an
    /// error undoes only this request's changes). It resolves once the
    /// commit holding the change is synced to disk.
    pub async fn write<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        F: FnOnce(&mut rusqlite::Connection) -> Result<T, ApiError> + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.writer.submit(Box::new(move |conn| {
            let result = match conn {
                Ok(conn) => f(conn),
                Err(err) => Err(ApiError::from_pool(err)),
            };
            Done {
                succeeded: result.is_ok(),
                cause: match &result {
                    Err(ApiError::Database(err)) => Some(writer::copy_error(err)),
                    _ => None,
                },
                // Sent even when the caller has gone: the change stands.
                answer: Box::new(move |lost| {
                    let _ = tx.send(match lost {
                        Some(err) => Err(ApiError::Database(err)),
                        None => result,
                    });
                }),
            }
        }));
        rx.await
            .map_err(|_| ApiError::Internal(anyhow::anyhow!("a database write failed")))?
    }

    /// Runs `f` (which hashes a password, and may use the database) on the
    /// blocking pool once a hashing slot is free: at most one hash per core
    /// at a time, and at most `max_queued_hashes` waiting (503 past that).
    pub async fn hashing<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        F: FnOnce(&db::Pool) -> Result<T, ApiError> + Send + 'static,
        T: Send + 'static,
    {
        let permit = self.hashes.acquire().await?;
        let pool = self.pool.clone();
        tokio::task::spawn_blocking(move || {
            // The permit lives as long as the hash, even if the client
            // goes away and this future is dropped.
            let _permit = permit;
            f(&pool)
        })
        .await?
    }
}

/// One slot per CPU core for password hashing, with a bounded queue.
#[derive(Debug)]
pub struct HashGate {
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_waiting: usize,
}

struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl HashGate {
    /// `slots` concurrent hashes, `max_waiting` more queued.
    pub fn new(slots: usize, max_waiting: usize) -> HashGate {
        HashGate {
            slots: Arc::new(Semaphore::new(slots.max(1))),
            waiting: AtomicUsize::new(0),
            max_waiting,
        }
    }

    /// Waits for a slot; `Busy` when the queue is full.
    pub async fn acquire(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let ahead = self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.waiting);
        if ahead >= self.max_waiting {
            return Err(ApiError::Busy);
        }
        self.slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| ApiError::Internal(e.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_gate_refuses_past_its_queue() {
        let gate = Arc::new(HashGate::new(1, 1));
        let held = gate.acquire().await.unwrap();
        let queued = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.acquire().await.map(drop) })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(matches!(gate.acquire().await, Err(ApiError::Busy)));
        drop(held);
        queued.await.unwrap().unwrap();
        drop(gate.acquire().await.unwrap());
    }
}
