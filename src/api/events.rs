//! POST /api/events/ticket and GET /api/events: the change stream as
//! Server-Sent Events, and the one-use tickets that let a browser's
//! `EventSource` (which cannot send headers) open one. The hub that feeds
//! the streams is `state::events`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::http::header::HeaderValue;
use warp::reply::Response;
use warp::sse::Event as Sse;
use warp::{Filter, Reply};

use super::error::{ApiError, json_response};
use super::filters::{self, authorize, bearer, first_of, with_state};
use crate::AppState;
use crate::auth::jwt::TokenError;
use crate::live::{self, OpenError};
use crate::server::ConnectionSlot;
use crate::state::StateError;
use crate::state::events::{self, Event, Full};

/// Both endpoints, with their 405/OPTIONS answers.
pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let ticket_path = || warp::path!("api" / "events" / "ticket");
    let stream_path = || warp::path!("api" / "events");
    first_of![
        ticket_path()
            .and(warp::post())
            .and(bearer(state.clone()))
            .and(with_state(state.clone()))
            .then(ticket)
            .map(filters::reply),
        filters::other_methods(ticket_path(), "Event Ticket", "POST, OPTIONS"),
        stream_path()
            .and(warp::get())
            .and(warp::header::optional::<String>("authorization"))
            .and(warp::header::optional::<String>("last-event-id"))
            .and(warp::query::raw().or(warp::any().map(String::new)).unify())
            .and(warp::ext::optional::<ConnectionSlot>())
            .and(with_state(state))
            .then(stream)
            .map(filters::reply),
        filters::other_methods(stream_path(), "Events", "GET, OPTIONS"),
    ]
    .boxed()
}

/// A one-use ticket for the caller's stream, valid for 30 seconds.
async fn ticket(bearer: filters::Bearer, state: AppState) -> Result<Response, ApiError> {
    let caller = state
        .read({
            let bearer = bearer.clone();
            move |conn| authorize(conn, &bearer)
        })
        .await?;
    let ticket = state.events.issue_ticket(caller.id, bearer.issued_at());
    Ok(json_response(
        StatusCode::OK,
        &json!({ "ticket": ticket, "expires_in": events::TICKET_SECONDS }),
    ))
}

/// The query of GET /api/events.
#[derive(Debug, Default, Deserialize)]
struct Query {
    ticket: Option<String>,
    presence: Option<String>,
    last_event_id: Option<String>,
}

/// Opens a stream: `ready`, the events after `Last-Event-ID` (or `reset`
/// when they are no longer held), then every change as it commits, with a
/// keep-alive comment every 15 seconds.
async fn stream(
    authorization: Option<String>,
    last_event_id: Option<String>,
    raw_query: String,
    slot: Option<ConnectionSlot>,
    state: AppState,
) -> Result<Response, ApiError> {
    let query: Query =
        serde_urlencoded::from_str(&raw_query).map_err(|_| ApiError::MalformedQuery)?;
    let (user_id, issued_at) = match &query.ticket {
        Some(ticket) => state
            .events
            .redeem(ticket)
            .ok_or(ApiError::InvalidAccessToken(TokenError::Invalid))?,
        None => {
            let header = authorization.map(HeaderValue::try_from).transpose();
            let header = header.map_err(|_| ApiError::BadAuthorizationHeader)?;
            let bearer = filters::decode_bearer(&state, header.as_ref())?;
            (bearer.user_id()?, bearer.issued_at())
        }
    };
    allowed(&state, user_id, issued_at).await?;
    let presence = !matches!(query.presence.as_deref(), Some("false" | "0"));
    let resume = last_event_id
        .or(query.last_event_id)
        .map(|id| id.trim().parse::<i64>().unwrap_or(-1));
    // Subscribed before the resume is read: nothing falls between.
    let (receiver, stop) = state.events.subscribe();
    // A new stream starts now: a change committed before it opened is not
    // sent, even if the hub broadcasts it after `ready` (on PostgreSQL a
    // commit reaches the hub through NOTIFY, a moment later). Read before
    // the stream's own presence write, whose event it does get.
    let now = match resume {
        Some(_) => 0,
        None => {
            state
                .read(|conn| -> Result<_, StateError> { Ok(crate::db::events::bounds(conn)?.0) })
                .await?
        }
    };
    let guard = live::open(&state, user_id, presence)
        .await
        .map_err(|err| match err {
            OpenError::Full(Full::User) => ApiError::Throttled {
                wait: Duration::from_secs(1),
            },
            OpenError::Full(Full::Server) => ApiError::Busy,
            OpenError::State(err) => err.into(),
        })?;
    let mut queue = VecDeque::from([field(
        Sse::default(),
        "ready",
        json!({ "user": user_id }).to_string(),
    )]);
    let mut last_sent = 0;
    if let Some(after) = resume {
        match replay(&state, after).await? {
            Some(events) => {
                for event in events {
                    last_sent = event.id;
                    if event.kind != "user.auth" {
                        queue.push_back(sse(&event));
                    }
                }
                last_sent = last_sent.max(after);
            }
            None => queue.push_back(reset()),
        }
    } else {
        last_sent = now;
    }
    let feed = Feed {
        state,
        user_id,
        issued_at,
        receiver,
        stop,
        queue,
        last_sent,
        ended: false,
        _guard: guard,
    };
    // Open for as long as the client stays: the stream limits bound these
    // connections, not `server.max_connections`.
    if let Some(slot) = slot {
        slot.release();
    }
    let stream = futures_util::stream::unfold(feed, next);
    let keep_alive = warp::sse::keep_alive()
        .interval(Duration::from_secs(15))
        .text(" keep-alive");
    let mut response = warp::sse::reply(keep_alive.stream(stream)).into_response();
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// Checks that `user_id` exists and is active (else 401 `user_not_found`)
/// and that a token issued at `issued_at` is not void (else 401
/// `token_not_valid`), as every authenticated request is checked.
async fn allowed(state: &AppState, user_id: i64, issued_at: u64) -> Result<(), ApiError> {
    let auth = state
        .read(move |conn| -> Result<_, StateError> {
            Ok(crate::db::users::auth_state(conn, user_id)?)
        })
        .await?
        .ok_or(ApiError::UserNotFound)?;
    let void = i64::try_from(issued_at).map_or(true, |iat| iat < auth.tokens_valid_after);
    if void {
        return Err(ApiError::InvalidAccessToken(TokenError::Blacklisted));
    }
    Ok(())
}

/// The events after `after` when they are all still held; `None` when some
/// are gone (or `after` is no event id this database gave).
async fn replay(state: &AppState, after: i64) -> Result<Option<Vec<Event>>, StateError> {
    state
        .read(move |conn| -> Result<_, StateError> {
            let (newest, oldest) = crate::db::events::bounds(conn)?;
            if after < 0 || after > newest || (oldest > 0 && after < oldest - 1) {
                return Ok(None);
            }
            let mut all = Vec::new();
            let mut last = after;
            loop {
                let (count, next, events) = events::load(conn, last)?;
                all.extend(events);
                last = next;
                if count == 0 || last >= newest {
                    return Ok(Some(all));
                }
            }
        })
        .await
}

/// One open stream's state.
struct Feed {
    state: AppState,
    user_id: i64,
    issued_at: u64,
    receiver: tokio::sync::broadcast::Receiver<Arc<Event>>,
    stop: tokio::sync::watch::Receiver<bool>,
    queue: VecDeque<Sse>,
    last_sent: i64,
    ended: bool,
    _guard: live::Stream,
}

/// An event named `name` with `data`. Each value starts with a space, as
/// in the SSE specification's examples (`event: ready`): a parser drops
/// exactly that space, so a strict one and a line-splitting one read the
/// same value.
fn field(sse: Sse, name: &str, data: String) -> Sse {
    sse.event(format!(" {name}")).data(format!(" {data}"))
}

fn sse(event: &Event) -> Sse {
    field(Sse::default(), &event.kind, event.data.clone()).id(format!(" {}", event.id))
}

fn reset() -> Sse {
    field(Sse::default(), "reset", "{}".to_owned())
}

/// The stream's next event; `None` ends it: the server stops, or the
/// caller was deleted, deactivated or had their tokens voided.
async fn next(mut feed: Feed) -> Option<(Result<Sse, Infallible>, Feed)> {
    if let Some(event) = feed.queue.pop_front() {
        return Some((Ok(event), feed));
    }
    if feed.ended || *feed.stop.borrow() {
        return None;
    }
    loop {
        let received = tokio::select! {
            received = feed.receiver.recv() => received,
            _ = feed.stop.changed() => return None,
        };
        let event = match received {
            Ok(event) => event,
            Err(RecvError::Lagged(_)) => return Some((Ok(reset()), feed)),
            Err(RecvError::Closed) => return None,
        };
        if event.id <= feed.last_sent {
            continue;
        }
        feed.last_sent = event.id;
        let about_me = event.user_id == feed.user_id;
        if about_me && matches!(event.kind.as_str(), "user.auth" | "user.deleted") {
            let still = allowed(&feed.state, feed.user_id, feed.issued_at).await;
            if still.is_err() {
                feed.ended = true;
                if event.kind == "user.deleted" {
                    return Some((Ok(sse(&event)), feed));
                }
                return None;
            }
        }
        if event.kind != "user.auth" {
            return Some((Ok(sse(&event)), feed));
        }
    }
}
