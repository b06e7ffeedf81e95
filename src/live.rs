//! Live events and presence: the task that feeds the event hub
//! (`state::events`) from the change rows, and the streams' effect on
//! presence.
//!
//! The change rows (`events`) are written by triggers in each change's own
//! transaction, whoever the writer, so [`run`] reads them in commit order:
//! when the write path says a change committed, or every 250 ms for a
//! change made by another process. Another source of changes (PostgreSQL's
//! `LISTEN/NOTIFY`) would only replace how [`run`] learns of new rows.
//!
//! Presence: a user's first stream (without `?presence=false`) makes them
//! `online` (`busy` stays busy); when their last one closes and none
//! reopens within `presence.grace_seconds`, they become `offline`. Both are
//! ordinary writes, with their own events.

use crate::db;
use crate::state::events::{BATCH, Full, load};
use crate::state::{AppState, StateError};

/// An open stream, counted until dropped; the last presence stream of a
/// user starts the grace window.
pub struct Stream {
    state: AppState,
    user_id: i64,
    presence: bool,
}

impl Drop for Stream {
    fn drop(&mut self) {
        if let Some(opens) = self.state.events.close(self.user_id, self.presence) {
            offline_after_grace(self.state.clone(), self.user_id, opens);
        }
    }
}

/// Opens a stream for `user_id`: counted, and with `presence` the user
/// comes online (a real write, with its own event) if this is their
/// first such stream.
pub async fn open(state: &AppState, user_id: i64, presence: bool) -> Result<Stream, OpenError> {
    let first = state
        .events
        .open(user_id, presence)
        .map_err(OpenError::Full)?;
    let stream = Stream {
        state: state.clone(),
        user_id,
        presence,
    };
    if first {
        let timestamp = crate::model::timestamp_now();
        let node = state.node.clone();
        state
            .write(move |conn| -> Result<_, StateError> {
                Ok(db::events::came_online(conn, user_id, &node, &timestamp)?)
            })
            .await
            .map_err(OpenError::State)?;
    }
    Ok(stream)
}

/// Why [`open`] failed.
#[derive(Debug)]
pub enum OpenError {
    /// A limit is reached.
    Full(Full),
    /// The presence write failed.
    State(StateError),
}

/// After the grace window, takes `user_id` offline unless a presence
/// stream of theirs opened meanwhile (they had opened `opens` when their
/// last one closed).
fn offline_after_grace(state: AppState, user_id: i64, opens: u64) {
    let grace = state.events.grace();
    tokio::spawn(async move {
        tokio::time::sleep(grace).await;
        if !state.events.gone_since(user_id, opens) {
            return;
        }
        let timestamp = crate::model::timestamp_now();
        let hub = state.clone();
        let gone = state
            .write(move |conn| -> Result<_, StateError> {
                // Checked again on the writer: a stream that opened since
                // queued its `came_online` after this write, or counts now.
                if hub.events.is_present(user_id) {
                    return Ok(false);
                }
                Ok(db::events::went_offline(
                    conn, user_id, &hub.node, &timestamp,
                )?)
            })
            .await;
        if let Err(err) = gone {
            tracing::warn!(?err, user_id, "presence: could not take a user offline");
        }
    });
}

/// Feeds the hub until the server stops: reads new change rows whenever a
/// write commits or the poll interval passes, renders them, and
/// broadcasts them. First, users left online by streams before a restart
/// get their grace window.
pub async fn run(state: AppState) {
    let (_, mut stop) = state.events.subscribe();
    let start = state
        .read(|conn| -> Result<_, StateError> {
            Ok((db::events::bounds(conn)?.0, db::events::present(conn)?))
        })
        .await;
    let mut last = match start {
        Ok((newest, present)) => {
            for user_id in present {
                offline_after_grace(state.clone(), user_id, 0);
            }
            newest
        }
        Err(err) => {
            tracing::error!(
                ?err,
                "events: cannot read the change rows; no events will be sent"
            );
            return;
        }
    };
    let beats = heartbeat(&state);
    while state.events.changed(&mut stop).await {
        loop {
            let read = state
                .read(move |conn| -> Result<_, StateError> { Ok(load(conn, last)?) })
                .await;
            let (count, newest, events) = match read {
                Ok(read) => read,
                Err(err) => {
                    tracing::warn!(?err, "events: cannot read the change rows");
                    break;
                }
            };
            for event in events {
                state.events.send(event);
            }
            last = newest.max(last);
            if count < BATCH as usize {
                break;
            }
        }
    }
    if let Some(beats) = beats {
        beats.abort();
    }
}

/// How often a node on PostgreSQL says it is alive.
const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(2);

/// On PostgreSQL, what other nodes need from this one: every commit's
/// NOTIFY wakes this node's streams (a thread listening), and every
/// [`HEARTBEAT`] this node says it is alive and ends the presence of nodes
/// silent for five heartbeats or the grace window, whichever is longer
/// (they stopped or died).
fn heartbeat(state: &AppState) -> Option<tokio::task::JoinHandle<()>> {
    let db::Pool::Postgres(pool) = &state.pool else {
        return None;
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hub = state.clone();
    if let Err(err) = db::pg::listen(pool, move || hub.events.wake(), stop.clone()) {
        tracing::error!(%err, "events: cannot start the LISTEN thread; polling only");
    }
    let timeout = (5 * HEARTBEAT).max(state.events.grace()).as_secs() as i64;
    let state = state.clone();
    Some(tokio::spawn(async move {
        let _stop = StopOnDrop(stop);
        let mut every = tokio::time::interval(HEARTBEAT);
        loop {
            every.tick().await;
            let node = state.node.clone();
            let beat = state
                .write(move |conn| -> Result<_, StateError> {
                    let timestamp = crate::model::timestamp_now();
                    let now = crate::model::unix_now();
                    Ok(db::events::heartbeat(
                        conn, &node, now, timeout, &timestamp,
                    )?)
                })
                .await;
            if let Err(err) = beat {
                tracing::warn!(?err, "presence: the heartbeat failed");
            }
        }
    }))
}

/// Stops the LISTEN thread when the heartbeat task ends.
struct StopOnDrop(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
