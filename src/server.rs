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
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::Instrument;
use warp::http::{HeaderValue, Request, header};
use warp::reply::Response;

use crate::config::ServerConfig;
use crate::request_id::RequestId;

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
    S: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
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
        let _ = stream.set_nodelay(true);
        let mut stream = tokio_io_timeout::TimeoutStream::new(stream);
        stream.set_write_timeout(Some(limits.write_timeout));
        let service = service.clone();
        let slot = ConnectionSlot(Arc::new(std::sync::Mutex::new(Some(permit))));
        let held = slot.clone();
        let per_request = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(slot.clone());
            let id = RequestId::random();
            let span = tracing::info_span!("request", id = %id);
            let service = service.clone();
            let answer = id.scope(async move { service(request, peer).await });
            async move {
                let mut response = answer.instrument(span).await;
                if let Ok(value) = HeaderValue::from_str(&id.to_string()) {
                    response.headers_mut().insert(X_REQUEST_ID, value);
                }
                Ok::<_, Infallible>(response)
            }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(limits.max_header_bytes)
            .keep_alive(true)
            .serve_connection(TokioIo::new(Box::pin(stream)), per_request);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%err, %peer, "connection closed with an error");
            }
            held.release();
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
