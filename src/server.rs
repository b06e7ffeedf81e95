//! The HTTP/1.1 server loop: accepts connections up to a limit, gives each
//! the header-read (and keep-alive idle) time limit and the request-head
//! size limit, gives each request its id, hands it to the service it was
//! given, and shuts down gracefully.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::Watcher;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_io_timeout::TimeoutStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use warp::http::{HeaderValue, Request, header};
use warp::reply::Response;

use crate::config::ServerConfig;
use crate::request_id::RequestId;

mod streams;

/// The reply header carrying the request id.
const X_REQUEST_ID: header::HeaderName = header::HeaderName::from_static("x-request-id");

/// A connection's place under `max_connections`, in every request's
/// extensions: a reply that keeps its connection open by design (an event
/// stream) gives the place up, as its own limits bound it instead.
#[derive(Debug, Clone)]
pub struct ConnectionSlot(Arc<std::sync::Mutex<Option<tokio::sync::OwnedSemaphorePermit>>>);

impl ConnectionSlot {
    /// Stops counting this connection against `max_connections`.
    pub fn release(&self) {
        drop(self.0.lock().unwrap_or_else(|e| e.into_inner()).take());
    }
}

/// Limits applied to every connection.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Time to receive a request's headers, also the longest a keep-alive
    /// connection may sit idle between requests.
    pub header_read_timeout: Duration,
    /// Open connections at once; further ones wait in the listen backlog.
    pub max_connections: usize,
    /// Largest request head (request line + headers), in bytes.
    pub max_header_bytes: usize,
    /// The longest a reply may wait for the client to take more of it (a
    /// client that stops reading a long listing loses its connection).
    pub write_timeout: Duration,
}

impl Limits {
    /// The limits of the `[server]` config.
    pub fn from_config(server: &ServerConfig) -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(server.header_read_timeout),
            max_connections: server.max_connections,
            // hyper's floor for its read buffer.
            max_header_bytes: server.max_header_bytes.max(8192),
            write_timeout: Duration::from_secs(server.header_read_timeout),
        }
    }
}

/// The body of every request the service is given: hyper's, or none (an
/// event stream's `GET`, read by [`streams`]).
pub type Body = http_body_util::Either<Incoming, http_body_util::Empty<bytes::Bytes>>;

/// Serves `service` (called with each request and its connection's peer)
/// on `listener` until `shutdown` resolves; then stops accepting and waits
/// for open connections to finish their requests. Each request runs in a
/// `request{id=...}` span with its [`RequestId`], which its reply carries
/// in `X-Request-Id`.
pub async fn serve<S, F>(
    listener: TcpListener,
    service: S,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) where
    S: Fn(Request<Body>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let streams = TaskTracker::new();
    let stopping = CancellationToken::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    // Out of file descriptors and the like: back off
                    // instead of spinning.
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let connection = Connection {
            peer,
            slot: ConnectionSlot(Arc::new(std::sync::Mutex::new(Some(permit)))),
            limits: limits.clone(),
        };
        let (service, watcher) = (service.clone(), graceful.watcher());
        tokio::spawn(connection.run(tcp, service, watcher, streams.clone(), stopping.clone()));
    }
    drop(listener);
    stopping.cancel();
    streams.close();
    graceful.shutdown().await;
    streams.wait().await;
}

/// One accepted connection.
struct Connection {
    peer: SocketAddr,
    slot: ConnectionSlot,
    limits: Limits,
}

impl Connection {
    /// Serves the connection to its end: an event stream asked for as its
    /// first request beside hyper (in `streams`, which the graceful
    /// shutdown waits for), anything else with hyper.
    async fn run<S, F>(
        self,
        mut tcp: TcpStream,
        service: S,
        watcher: Watcher,
        streams: TaskTracker,
        stopping: CancellationToken,
    ) where
        S: Fn(Request<Body>, SocketAddr) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response> + Send + 'static,
    {
        let held = self.slot.clone();
        let (limit, max_head) = (
            self.limits.header_read_timeout,
            self.limits.max_header_bytes,
        );
        // A socket that sends nothing is closed after the header-read
        // limit, as hyper closes one, and at once when the server stops.
        // (A head that starts late and then trickles gets hyper's own
        // limit on top, counted from hyper's first read.)
        let first = tokio::select! {
            first = tokio::time::timeout(limit, streams::sniff(&mut tcp, max_head)) => first,
            () = stopping.cancelled() => return,
        };
        match first {
            Ok(Ok(Some(request))) => {
                drop(watcher);
                streams
                    .track_future(self.stream(tcp, request, service))
                    .await;
            }
            Ok(Ok(None)) => self.http(tcp, service, watcher).await,
            Ok(Err(_)) | Err(_) => {}
        }
        held.release();
    }

    /// The connection served by hyper, request after request, until it
    /// closes or the graceful shutdown `watcher` ends it.
    async fn http<S, F>(self, tcp: TcpStream, service: S, watcher: Watcher)
    where
        S: Fn(Request<Body>, SocketAddr) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response> + Send + 'static,
    {
        let mut io = TimeoutStream::new(tcp);
        io.set_write_timeout(Some(self.limits.write_timeout));
        let Connection { peer, slot, limits } = self;
        let per_request = hyper::service::service_fn(move |request: Request<Incoming>| {
            let request = request.map(Body::Left);
            let answer = answer(service.clone(), request, peer, slot.clone());
            async move { Ok::<_, Infallible>(answer.await) }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(limits.max_header_bytes)
            .keep_alive(true)
            .serve_connection(TokioIo::new(Box::pin(io)), per_request);
        if let Err(err) = watcher.watch(connection).await {
            tracing::debug!(%err, %peer, "connection closed with an error");
        }
    }

    /// The connection's one request, an event stream's `GET` read by
    /// [`streams::sniff`], answered and closed by [`streams::reply`].
    async fn stream<S, F>(self, tcp: TcpStream, request: Request<()>, service: S)
    where
        S: Fn(Request<Body>, SocketAddr) -> F,
        F: Future<Output = Response>,
    {
        let request = request.map(|()| Body::Right(http_body_util::Empty::new()));
        let response = answer(service, request, self.peer, self.slot).await;
        streams::reply(tcp, response, self.limits.write_timeout).await;
    }
}

/// `request` answered by `service` in a `request{id=...}` span with a new
/// [`RequestId`], which the reply carries in `X-Request-Id`.
async fn answer<S, F>(
    service: S,
    mut request: Request<Body>,
    peer: SocketAddr,
    slot: ConnectionSlot,
) -> Response
where
    S: Fn(Request<Body>, SocketAddr) -> F,
    F: Future<Output = Response>,
{
    request.extensions_mut().insert(slot);
    let id = RequestId::random();
    let span = tracing::info_span!("request", id = %id);
    let mut response = id
        .scope(async move { service(request, peer).await })
        .instrument(span)
        .await;
    if let Ok(value) = HeaderValue::from_str(&id.to_string()) {
        response.headers_mut().insert(X_REQUEST_ID, value);
    }
    response
}
