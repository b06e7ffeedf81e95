//! The HTTP/1.1 server loop: accepts connections up to a limit, gives each
//! the header-read, idle and whole-request time limits, hands requests to
//! the warp filter, and shuts down gracefully.

mod timer;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower_service::Service;
use warp::http::{HeaderValue, Request, StatusCode, header};
use warp::reply::Response;

use crate::api::cors::CorsRequest;
use crate::config::ServerConfig;

/// The reply header carrying the request id.
const X_REQUEST_ID: header::HeaderName = header::HeaderName::from_static("x-request-id");

tokio::task_local! {
    /// The request being served: its id, for log lines and error bodies,
    /// and its peer. (Kept here rather than in the request's extensions,
    /// whose map costs each request three allocations.)
    static SERVED: Served;
}

/// What the task serving a request knows about it.
#[derive(Debug, Clone, Copy)]
struct Served {
    id: RequestId,
    peer: SocketAddr,
}

/// The id of the request this task is serving, if any.
pub fn request_id() -> Option<RequestId> {
    SERVED.try_with(|served| served.id).ok()
}

/// The socket peer of the request this task is serving, if any.
pub fn peer_addr() -> Option<SocketAddr> {
    SERVED.try_with(|served| served.peer).ok()
}

/// A request's id, shown as 16 hex characters: in its `X-Request-Id`,
/// on each of its log lines and in the body of a 500.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestId(u64);

impl RequestId {
    /// A fresh random id.
    fn new() -> RequestId {
        RequestId(rand::random())
    }

    /// The id's 16 lowercase hex digits (by hand: `{:016x}` costs more
    /// than the rest of a log line's fields).
    fn hex(self) -> [u8; 16] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut hex = [0; 16];
        for (i, digit) in hex.iter_mut().enumerate() {
            *digit = DIGITS[(self.0 >> (60 - 4 * i) & 0xf) as usize];
        }
        hex
    }

    /// Appends the id's text to `line`.
    pub fn push_to(self, line: &mut String) {
        line.push_str(std::str::from_utf8(&self.hex()).unwrap_or_default());
    }

    /// The id as a header value, spelled as it is shown everywhere else.
    fn header(self) -> HeaderValue {
        // Hex digits are always a valid header value.
        HeaderValue::from_bytes(&self.hex()).unwrap_or(HeaderValue::from_static("0"))
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(std::str::from_utf8(&self.hex()).unwrap_or_default())
    }
}

/// Limits applied to every connection.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Time to receive a request's headers, also the longest a keep-alive
    /// connection may sit idle between requests.
    pub header_read_timeout: Duration,
    /// Time to read the body and produce the reply.
    pub request_timeout: Duration,
    /// Open connections at once; further ones wait in the listen backlog.
    pub max_connections: usize,
    /// Largest request head (request line + headers), in bytes.
    pub max_header_bytes: usize,
    /// CORS, added here to every reply.
    pub cors: Arc<crate::api::cors::Cors>,
}

impl Limits {
    /// The limits of the `[server]` config.
    pub fn from_config(server: &ServerConfig) -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(server.header_read_timeout),
            request_timeout: Duration::from_secs(server.request_timeout),
            max_connections: server.max_connections,
            // hyper's floor for its read buffer.
            max_header_bytes: server.max_header_bytes.max(8192),
            cors: Arc::new(crate::api::cors::Cors::new(&server.cors_origins)),
        }
    }
}

/// One connection's service: stamps the peer address and an id on each
/// request, bounds the time to answer it, and gives every reply (errors
/// and timeouts included) the security and CORS headers.
#[derive(Clone)]
struct ConnService<S> {
    inner: S,
    peer: SocketAddr,
    request_timeout: Duration,
    /// The request time limit's timer, reused by each request.
    timer: timer::Reused,
    cors: Arc<crate::api::cors::Cors>,
}

impl<S> hyper::service::Service<Request<Incoming>> for ConnService<S>
where
    S: Service<Request<Incoming>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let cors_request = if self.cors.is_off() {
            CorsRequest::default()
        } else {
            CorsRequest::of(req.headers(), req.method())
        };
        let cors = self.cors.clone();
        // Kept for the warning if the request times out.
        let method = req.method().clone();
        let uri = req.uri().clone();
        let id = RequestId::new();
        let mut inner = self.inner.clone();
        let limit = self
            .timer
            .sleep_until(Instant::now() + self.request_timeout);
        let serve = async move {
            // Called in the task-local's scope, like everything it does.
            let future = inner.call(req);
            let mut response = tokio::select! {
                biased;
                answered = future => match answered {
                    Ok(response) => response,
                    Err(never) => match never {},
                },
                () = limit => {
                    tracing::warn!(%method, path = uri.path(), "request timed out");
                    timeout_reply()
                }
            };
            cors.decorate(&cors_request, &mut response);
            crate::api::secure(&mut response);
            response.headers_mut().insert(X_REQUEST_ID, id.header());
            Ok(response)
        };
        // Every log line of the request shows its id (`logging::lines`).
        let served = Served {
            id,
            peer: self.peer,
        };
        Box::pin(SERVED.scope(served, serve))
    }
}

/// 408, closing the connection (the request may still be arriving).
fn timeout_reply() -> Response {
    let mut response = crate::api::error::json_response(
        StatusCode::REQUEST_TIMEOUT,
        &serde_json::json!({"detail": "Request timed out."}),
    );
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Serves `service` on `listener` until `shutdown` resolves; then stops
/// accepting and waits for open connections to finish their requests.
pub async fn serve<S>(
    listener: TcpListener,
    service: S,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) where
    S: Service<Request<Incoming>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
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
        let service = ConnService {
            inner: service.clone(),
            peer,
            request_timeout: limits.request_timeout,
            timer: timer::Reused::default(),
            cors: limits.cors.clone(),
        };
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(timer::ConnTimer::default())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(limits.max_header_bytes)
            .keep_alive(true);
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%err, %peer, "connection closed with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_16_hex_digits_in_the_header_and_the_text() {
        for n in [0, 1, 0xabc, u64::MAX, 0x0123_4567_89ab_cdef] {
            let id = RequestId(n);
            let text = format!("{n:016x}");
            assert_eq!(id.to_string(), text);
            assert_eq!(id.header().to_str().unwrap(), text);
            let mut line = String::from("id=");
            id.push_to(&mut line);
            assert_eq!(line, format!("id={text}"));
        }
        assert_ne!(RequestId::new(), RequestId::new());
    }
}
