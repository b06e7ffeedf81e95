//! The event hub's state: a broadcast channel that fans committed changes
//! out to every open stream (a stream more than [`BACKLOG`] events behind
//! loses them and is told to `reset`: a slow client never holds up a writer
//! or another client), the wake-up the write path pulls after each commit,
//! the count of open streams per user (the limits; presence), and the
//! one-use tickets that let a browser's `EventSource` open a stream. What
//! feeds it and keeps presence is `crate::live`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, broadcast, watch};

use crate::config::Config;
use crate::db;

/// How often the hub looks for changes nobody told it of.
const POLL: Duration = Duration::from_millis(250);

/// Events a stream may fall behind before it is told to `reset`.
pub const BACKLOG: usize = 1024;

/// Events read per query.
pub const BATCH: i64 = 500;

/// How long a ticket may wait to be used.
pub const TICKET_SECONDS: u64 = 30;

/// One change, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Grows strictly, in commit order.
    pub id: i64,
    /// `user.created`, `user.updated`, `user.deleted`, or `user.auth`
    /// (only for the hub's streams: a user's access changed).
    pub kind: String,
    /// The user it is about.
    pub user_id: i64,
    /// The `data:` line: the user as rendered, or `{"id": N}`.
    pub data: String,
}

/// The hub; see the module docs.
pub struct Hub {
    sender: broadcast::Sender<Arc<Event>>,
    wake: Notify,
    stop: watch::Sender<bool>,
    streams: Mutex<Counts>,
    total: AtomicUsize,
    tickets: Mutex<HashMap<String, Ticket>>,
    max_per_user: usize,
    max_total: usize,
    grace: Duration,
}

/// Open streams per user: all of them, and those that count for presence;
/// and how many presence streams each user has opened, so that a grace
/// window knows whether its user came back meanwhile.
#[derive(Debug, Default)]
struct Counts {
    open: HashMap<i64, (usize, usize)>,
    presence_opens: HashMap<i64, u64>,
}

/// A one-use ticket: who it is for, which token it stands for, until when.
#[derive(Debug, Clone, Copy)]
struct Ticket {
    user_id: i64,
    issued_at: u64,
    expires: Instant,
}

/// Why a stream cannot open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// The user holds `events.max_streams_per_user` already.
    User,
    /// `events.max_streams` are open.
    Server,
}

impl Hub {
    /// A hub with the config's limits; [`run`] feeds it.
    pub fn new(config: &Config) -> Hub {
        Hub {
            sender: broadcast::channel(BACKLOG).0,
            wake: Notify::new(),
            stop: watch::channel(false).0,
            streams: Mutex::new(Counts::default()),
            total: AtomicUsize::new(0),
            tickets: Mutex::new(HashMap::new()),
            max_per_user: config.events.max_streams_per_user.max(1),
            max_total: config.events.max_streams.max(1),
            grace: Duration::from_secs(config.presence.grace_seconds),
        }
    }

    /// The grace window of presence.
    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// Sends `event` to every stream.
    pub fn send(&self, event: Event) {
        let _ = self.sender.send(Arc::new(event));
    }

    /// Waits until a change is committed (or [`POLL`] passes) or the server
    /// stops; `false` when it stops.
    pub async fn changed(&self, stop: &mut watch::Receiver<bool>) -> bool {
        tokio::select! {
            () = self.wake.notified() => true,
            () = tokio::time::sleep(POLL) => true,
            _ = stop.changed() => false,
        }
    }

    /// Tells the hub that a change was committed.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Ends every stream (the server is stopping).
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Events from now on, and a signal that turns true when the server
    /// stops.
    pub fn subscribe(&self) -> (broadcast::Receiver<Arc<Event>>, watch::Receiver<bool>) {
        (self.sender.subscribe(), self.stop.subscribe())
    }

    /// A ticket for `user_id`'s token issued at `issued_at`.
    pub fn issue_ticket(&self, user_id: i64, issued_at: u64) -> String {
        let ticket = format!("{:032x}", rand::random::<u128>());
        let now = Instant::now();
        let mut tickets = self.tickets.lock().unwrap_or_else(|e| e.into_inner());
        tickets.retain(|_, t| t.expires > now);
        tickets.insert(
            ticket.clone(),
            Ticket {
                user_id,
                issued_at,
                expires: now + Duration::from_secs(TICKET_SECONDS),
            },
        );
        ticket
    }

    /// Uses up `ticket`: its user and token's `iat`, unless it is unknown,
    /// used or expired.
    pub fn redeem(&self, ticket: &str) -> Option<(i64, u64)> {
        let mut tickets = self.tickets.lock().unwrap_or_else(|e| e.into_inner());
        let found = tickets.remove(ticket)?;
        (found.expires > Instant::now()).then_some((found.user_id, found.issued_at))
    }

    /// Counts a stream of `user_id` in, or says which limit is reached.
    /// `Ok(true)` when it is the user's first stream counting for presence.
    pub fn open(&self, user_id: i64, presence: bool) -> Result<bool, Full> {
        let mut counts = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        let (all, present) = counts.open.entry(user_id).or_default();
        if *all >= self.max_per_user {
            return Err(Full::User);
        }
        if self.total.fetch_add(1, Ordering::Relaxed) >= self.max_total {
            self.total.fetch_sub(1, Ordering::Relaxed);
            return Err(Full::Server);
        }
        *all += 1;
        if !presence {
            return Ok(false);
        }
        *present += 1;
        let first = *present == 1;
        *counts.presence_opens.entry(user_id).or_default() += 1;
        Ok(first)
    }

    /// Counts a stream out. When it was the user's last one that counted
    /// for presence: how many they had opened, for [`Hub::gone_since`].
    pub fn close(&self, user_id: i64, presence: bool) -> Option<u64> {
        self.total.fetch_sub(1, Ordering::Relaxed);
        let mut counts = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        let (all, present) = counts.open.get_mut(&user_id)?;
        *all = all.saturating_sub(1);
        let last = presence && *present == 1;
        if presence {
            *present = present.saturating_sub(1);
        }
        if *all == 0 {
            counts.open.remove(&user_id);
        }
        if last {
            counts.presence_opens.get(&user_id).copied()
        } else {
            None
        }
    }

    /// Whether `user_id` has a stream that counts for presence.
    pub fn is_present(&self, user_id: i64) -> bool {
        let counts = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        counts.open.get(&user_id).is_some_and(|(_, p)| *p > 0)
    }

    /// Whether `user_id` opened no presence stream since their last one
    /// closed, when they had opened `opens` (and then forgets them). After
    /// a restart, `opens` 0 asks whether they opened any.
    pub fn gone_since(&self, user_id: i64, opens: u64) -> bool {
        let mut counts = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        let now = counts.presence_opens.get(&user_id).copied().unwrap_or(0);
        let present = counts.open.get(&user_id).is_some_and(|(_, p)| *p > 0);
        if present || now != opens {
            return false;
        }
        counts.presence_opens.remove(&user_id);
        true
    }
}

/// The change rows after `last` as events: how many rows were read, the
/// last row's id, and the events.
pub fn load(conn: &mut db::Conn<'_>, last: i64) -> db::Result<(usize, i64, Vec<Event>)> {
    let rows = db::events::after(conn, last, BATCH)?;
    let newest = rows.last().map_or(last, |r| r.id);
    let count = rows.len();
    let events = rows
        .into_iter()
        .map(|row| Event {
            id: row.id,
            kind: row.kind,
            user_id: row.user_id,
            data: row.data,
        })
        .collect();
    Ok((count, newest, events))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(per_user: usize, total: usize) -> Hub {
        let mut config = Config::default();
        config.events.max_streams_per_user = per_user;
        config.events.max_streams = total;
        Hub::new(&config)
    }

    #[test]
    fn limits_count_streams_per_user_and_in_all() {
        let hub = hub(2, 3);
        assert_eq!(hub.open(1, true), Ok(true));
        assert_eq!(hub.open(1, false), Ok(false));
        assert_eq!(hub.open(1, true), Err(Full::User));
        assert_eq!(hub.open(2, true), Ok(true));
        assert_eq!(hub.open(3, true), Err(Full::Server));
        assert_eq!(hub.close(1, false), None);
        assert_eq!(
            hub.close(1, true),
            Some(1),
            "the last presence stream of user 1"
        );
        assert!(hub.gone_since(1, 1));
        assert!(!hub.gone_since(2, 1), "user 2 is present");
        assert_eq!(hub.open(3, true), Ok(true));
    }

    #[test]
    fn a_grace_window_knows_whether_its_user_came_back() {
        let hub = hub(4, 10);
        hub.open(1, true).unwrap();
        let first_close = hub.close(1, true).unwrap();
        hub.open(1, true).unwrap();
        let second_close = hub.close(1, true).unwrap();
        assert!(
            !hub.gone_since(1, first_close),
            "came back after the first close"
        );
        assert!(hub.gone_since(1, second_close));
        assert!(hub.gone_since(7, 0), "never streamed since a restart");
    }

    #[test]
    fn a_ticket_is_used_once() {
        let hub = hub(2, 3);
        let ticket = hub.issue_ticket(7, 1000);
        assert_eq!(ticket.len(), 32);
        assert_eq!(hub.redeem(&ticket), Some((7, 1000)));
        assert_eq!(hub.redeem(&ticket), None);
        assert_eq!(hub.redeem("unknown"), None);
    }

    #[test]
    fn an_expired_ticket_is_refused() {
        let hub = hub(2, 3);
        let ticket = hub.issue_ticket(7, 1000);
        if let Some(t) = hub.tickets.lock().unwrap().get_mut(&ticket) {
            t.expires = Instant::now() - Duration::from_secs(1);
        }
        assert_eq!(hub.redeem(&ticket), None);
    }
}
