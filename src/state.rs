//! `AppState`: what every handler shares (pool, config, keys, limits), and
//! the three ways work leaves the async workers: [`AppState::read`] for
//! SQLite reads, [`AppState::write`] for every write (the one writer
//! thread), [`AppState::hashing`] for PBKDF2.

pub mod events;
pub mod seek;
pub mod throttle;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::auth::jwt::Keys;
use crate::config::Config;
use crate::db;
use seek::IdSeek;
use throttle::Throttle;
use writer::{Done, Writer};

/// Why work sent off the async workers did not come back with its own
/// answer.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// No pooled connection could be had in time (r2d2's reason).
    #[error("no database connection: {0}")]
    Unavailable(String),
    /// A database error (for a write: also one that undid a change that
    /// had succeeded, when its shared commit failed).
    #[error("database error: {0}")]
    Database(#[from] db::Error),
    /// Too many password hashes are waiting for a core.
    #[error("too many password hashes waiting")]
    Busy,
    /// The work panicked or its thread is gone (a bug).
    #[error("{0}")]
    Crashed(String),
}

impl DatabaseCause for StateError {
    fn database_cause(&self) -> Option<&db::Error> {
        match self {
            StateError::Database(err) => Some(err),
            _ => None,
        }
    }
}

/// The database error a failed write carries, if any: when SQLite rolled
/// back a shared commit, the requests in it are told this cause.
pub trait DatabaseCause {
    /// The database error inside, if it is one.
    fn database_cause(&self) -> Option<&db::Error>;
}

/// A fresh random node name: `node-` and 16 hex digits.
fn node_name() -> String {
    format!("node-{:016x}", rand::random::<u64>())
}

/// How often the key files are looked at for a rotation.
pub const KEY_CHECK: Duration = Duration::from_secs(5);

/// Shared by every handler; cloning it is one reference count. (No
/// `Debug`: it holds the signing keys.)
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

/// What [`AppState`] shares; reached through `Deref`.
pub struct Shared {
    /// The database's connection pool.
    pub pool: db::Pool,
    /// This server's name among the nodes sharing a PostgreSQL database
    /// (random, new at every start): its streams' presence is kept under it.
    pub node: String,
    /// The resolved configuration.
    pub config: Config,
    /// JWT keys and lifetimes; see [`AppState::keys`].
    keys: std::sync::RwLock<Arc<Keys>>,
    /// Password-attempt limits.
    pub throttle: Throttle,
    /// Seek points for deep pages of the user list.
    pub seek: IdSeek,
    /// The change stream and presence.
    pub events: events::Hub,
    /// One permit per whole listing streaming (`server.max_full_listings`).
    pub listings: Arc<Semaphore>,
    hashes: HashGate,
    writer: Writer,
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
        let pool = db::Pool::open(&db::Target::of(&config.database)?, config.database.max_size)?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let writer = writer::start(&pool).context("cannot start the database writer thread")?;
        Ok(AppState(Arc::new(Shared {
            keys: std::sync::RwLock::new(Arc::new(Keys::load(&config.auth)?)),
            throttle: Throttle::new(&config.rate_limit, &config.server),
            seek: IdSeek::default(),
            events: events::Hub::new(&config),
            listings: Arc::new(Semaphore::new(config.server.max_full_listings)),
            hashes: HashGate::new(cores, config.auth.max_queued_hashes),
            writer,
            node: node_name(),
            pool,
            config,
        })))
    }

    /// The JWT keys (loaded again by [`AppState::watch_keys`] when the key
    /// files change).
    pub fn keys(&self) -> Arc<Keys> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Looks at the key files (`auth.keys_dir`) every [`KEY_CHECK`], on the
    /// blocking pool, until the task is dropped: when `rosterd keys rotate`
    /// or `prune` changed them, they are loaded again, so a rotation needs
    /// no restart. Keys that cannot be loaded are logged and the ones in
    /// use kept.
    pub async fn watch_keys(self) {
        if self.config.auth.keys_dir.is_none() {
            return;
        }
        loop {
            tokio::time::sleep(KEY_CHECK).await;
            let state = self.clone();
            let _ = tokio::task::spawn_blocking(move || state.reload_keys()).await;
        }
    }

    fn reload_keys(&self) {
        let Some(dir) = &self.config.auth.keys_dir else {
            return;
        };
        let current: Vec<String> = {
            let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
            keys.kids().into_iter().map(str::to_owned).collect()
        };
        let on_disk = match crate::auth::keys::list(dir) {
            Ok(files) => {
                let mut kids: Vec<String> = files.into_iter().map(|f| f.kid).collect();
                kids.sort_unstable();
                kids
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot list the key files; keeping the keys in use");
                return;
            }
        };
        if on_disk == current {
            return;
        }
        match Keys::load(&self.config.auth) {
            Ok(keys) => {
                tracing::info!(kids = ?on_disk, "key files changed: keys loaded again");
                *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot load the changed key files; keeping the keys in use");
            }
        }
    }

    /// Runs `f` with a pooled connection inside one read transaction
    /// ([`db::read`]) on tokio's blocking pool; the connection goes back
    /// to the pool before the future resolves.
    pub async fn read<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut db::Conn<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StateError> + From<db::Error> + Send + 'static,
    {
        let pool = self.pool.clone();
        tokio::task::spawn_blocking(move || {
            let mut pooled = pool
                .get()
                .map_err(|err| StateError::Unavailable(err.to_string()))?;
            db::read(&mut pooled.conn(), f)
        })
        .await
        .map_err(|err| StateError::Crashed(format!("a database read failed: {err}")))?
    }

    /// Runs `f`, which writes, on the writer thread, inside a transaction
    /// it may share with other requests (each in its own savepoint: an
    /// error undoes only this request's changes). It resolves once the
    /// commit holding the change is synced to disk.
    pub async fn write<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut db::Conn<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StateError> + DatabaseCause + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.writer.submit(Box::new(move |conn| {
            let result = match conn {
                Ok(conn) => f(conn),
                Err(err) => Err(E::from(StateError::Unavailable(err.to_string()))),
            };
            Done {
                succeeded: result.is_ok(),
                cause: match &result {
                    Err(err) => err.database_cause().map(db::Error::copy),
                    Ok(_) => None,
                },
                // Sent even when the caller has gone: the change stands.
                answer: Box::new(move |lost| {
                    let _ = tx.send(match lost {
                        Some(err) => Err(E::from(StateError::Database(err))),
                        None => result,
                    });
                }),
            }
        }));
        let result = rx
            .await
            .map_err(|_| StateError::Crashed("a database write failed".to_owned()))?;
        if result.is_ok() {
            self.events.wake();
        }
        result
    }

    /// Runs `f` (a password hash) on the blocking pool once a hashing slot
    /// is free: at most one hash per core at a time, and at most
    /// `max_queued_hashes` waiting ([`StateError::Busy`] past that).
    pub async fn hashing<T, F>(&self, f: F) -> Result<T, StateError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let permit = self.hashes.acquire().await?;
        tokio::task::spawn_blocking(move || {
            // The permit lives as long as the hash, even if the client
            // goes away and this future is dropped.
            let _permit = permit;
            f()
        })
        .await
        .map_err(|err| StateError::Crashed(format!("a password hash failed: {err}")))
    }
}

/// One slot per CPU core for password hashing, with a bounded queue: a
/// hash is admitted while fewer than `slots + max_waiting` are admitted,
/// then waits for a slot.
#[derive(Debug)]
struct HashGate {
    admitted: Arc<Semaphore>,
    slots: Arc<Semaphore>,
}

/// A hash's place: admitted, and holding a slot.
type Permit = (OwnedSemaphorePermit, OwnedSemaphorePermit);

impl HashGate {
    fn new(slots: usize, max_waiting: usize) -> HashGate {
        HashGate {
            admitted: Arc::new(Semaphore::new(slots.max(1) + max_waiting)),
            slots: Arc::new(Semaphore::new(slots.max(1))),
        }
    }

    /// Waits for a slot; `Busy` when the queue is full.
    async fn acquire(&self) -> Result<Permit, StateError> {
        let admitted = (self.admitted.clone().try_acquire_owned()).map_err(|_| StateError::Busy)?;
        let slot = self.slots.clone().acquire_owned().await;
        let slot = slot.map_err(|err| StateError::Crashed(err.to_string()))?;
        Ok((admitted, slot))
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
        assert!(matches!(gate.acquire().await, Err(StateError::Busy)));
        drop(held);
        queued.await.unwrap().unwrap();
        drop(gate.acquire().await.unwrap());
    }
}
