//! Event streams served beside hyper, to keep an idle stream small.
//!
//! hyper gives every HTTP/1 connection an 8 KiB read buffer and an 8 KiB
//! write buffer for as long as it lives, and has no setting below that. An
//! event stream lives for hours and writes a few hundred bytes a minute: at
//! 10,000 streams those buffers were most of the server's memory. So when
//! a connection's first request is a whole `GET /api/events` head already
//! waiting in the socket, it is served here: httparse (hyper's own parser)
//! reads the head, the request goes to the same service as every other
//! request, and the reply is written in HTTP/1.1 framing (chunked for the
//! stream), followed by closing the connection. Anything else (another
//! path, a head still arriving, a request with a body or an `Expect`, HTTP
//! 1.0, a head hyper would refuse) is left unread in the socket for hyper,
//! so this path never answers differently, only with less memory.

use std::future::Future;
use std::io;
use std::time::{Duration, SystemTime};

use bytes::{Buf, Bytes};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warp::http::header::{self, HeaderName, HeaderValue};
use warp::http::{Method, Request, Version, response};
use warp::reply::Response;

/// What a served event stream's request line starts with.
const EVENTS: &[u8] = b"GET /api/events";

/// The most header lines a head may have, as hyper's default.
const MAX_HEADERS: usize = 100;

/// Request headers that make a head hyper's: a body, or a protocol change.
const LEFT_TO_HYPER: [HeaderName; 4] = [
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::EXPECT,
    header::UPGRADE,
];

/// Reply headers written by [`head`] itself (the framing), not copied.
const FRAMING: [HeaderName; 3] = [
    header::CONNECTION,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
];

/// The first request of the connection when it is a whole
/// `GET /api/events` head this module serves, with the head read out of
/// the socket; `None` leaves every byte where it is, for hyper.
pub async fn sniff(tcp: &mut TcpStream, max_head: usize) -> io::Result<Option<Request<()>>> {
    let mut start = [0; EVENTS.len() + 1];
    let seen = tcp.peek(&mut start).await?;
    if !is_events(&start[..seen]) {
        return Ok(None);
    }
    let mut head = vec![0; max_head];
    let seen = tcp.peek(&mut head).await?;
    let Some((request, length)) = parse(&head[..seen]) else {
        return Ok(None);
    };
    tcp.read_exact(&mut head[..length]).await?;
    Ok(Some(request))
}

/// Whether `start` begins `GET /api/events` followed by a space or `?`.
fn is_events(start: &[u8]) -> bool {
    start.len() > EVENTS.len()
        && start.starts_with(EVENTS)
        && matches!(start[EVENTS.len()], b' ' | b'?')
}

/// The request of a whole head in `bytes` and the head's length, when it
/// is an HTTP/1.1 `GET /api/events` without a body and without anything
/// this module leaves to hyper.
fn parse(bytes: &[u8]) -> Option<(Request<()>, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(length) = head.parse(bytes).ok()? else {
        return None;
    };
    let path = head.path?;
    let events = path == "/api/events" || path.starts_with("/api/events?");
    if head.method != Some("GET") || head.version != Some(1) || !events {
        return None;
    }
    let mut request = Request::builder()
        .method(Method::GET)
        .uri(path)
        .version(Version::HTTP_11);
    for line in head.headers.iter() {
        let name = HeaderName::from_bytes(line.name.as_bytes()).ok()?;
        if LEFT_TO_HYPER.contains(&name) {
            return None;
        }
        request = request.header(name, HeaderValue::from_bytes(line.value).ok()?);
    }
    Some((request.body(()).ok()?, length))
}

/// Writes `response` on `tcp` and closes the connection: a body of known
/// size with `Content-Length`, any other (the event stream) chunked for
/// as long as it lasts and the client stays. Each write must be taken by
/// the client within `write_timeout`.
pub async fn reply(mut tcp: TcpStream, response: Response, write_timeout: Duration) {
    let (parts, body) = response.into_parts();
    let outcome = match http_body::Body::size_hint(&body).exact() {
        Some(_) => match body.collect().await {
            Ok(collected) => {
                let bytes = collected.to_bytes();
                let head = head(&parts, Some(bytes.len()));
                let mut out = Bytes::from(head).chain(bytes);
                within(write_timeout, tcp.write_all_buf(&mut out)).await
            }
            Err(_) => Ok(()),
        },
        None => chunked(&mut tcp, &parts, body, write_timeout).await,
    };
    if outcome.is_ok() {
        let _ = within(write_timeout, tcp.shutdown()).await;
    }
}

/// The head and the chunks of a body of unknown length, until it ends
/// (then the last chunk) or the client goes (read end of file or an error).
async fn chunked(
    tcp: &mut TcpStream,
    parts: &response::Parts,
    mut body: impl http_body::Body<Data = Bytes> + Unpin,
    write_timeout: Duration,
) -> io::Result<()> {
    let (mut from_client, mut to_client) = tcp.split();
    within(write_timeout, to_client.write_all(&head(parts, None))).await?;
    let mut ignored = [0; 64];
    loop {
        tokio::select! {
            frame = body.frame() => match frame {
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else { continue };
                    if data.is_empty() {
                        continue;
                    }
                    let size = format!("{:x}\r\n", data.len());
                    let mut out = Bytes::from(size).chain(data).chain(&b"\r\n"[..]);
                    within(write_timeout, to_client.write_all_buf(&mut out)).await?;
                }
                Some(Err(_)) => return Err(io::ErrorKind::Other.into()),
                None => return within(write_timeout, to_client.write_all(b"0\r\n\r\n")).await,
            },
            read = from_client.read(&mut ignored) => match read {
                // A request sent behind the stream is not served: the
                // connection closes when the stream ends.
                Ok(n) if n > 0 => {}
                _ => return Err(io::ErrorKind::UnexpectedEof.into()),
            },
        }
    }
}

/// `write` unless it takes longer than `limit`.
async fn within(limit: Duration, write: impl Future<Output = io::Result<()>>) -> io::Result<()> {
    tokio::time::timeout(limit, write)
        .await
        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
}

/// The status line and headers of `parts` as hyper writes them, with a
/// `Date`, the framing (`Content-Length: length`, else chunked) and
/// `Connection: close`.
fn head(parts: &response::Parts, length: Option<usize>) -> Vec<u8> {
    let status = parts.status;
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if !FRAMING.contains(name) {
            line(&mut out, name.as_str(), value.as_bytes());
        }
    }
    if !parts.headers.contains_key(header::DATE) {
        let date = httpdate::fmt_http_date(SystemTime::now());
        line(&mut out, "date", date.as_bytes());
    }
    match length {
        Some(length) => line(&mut out, "content-length", length.to_string().as_bytes()),
        None => line(&mut out, "transfer-encoding", b"chunked"),
    }
    line(&mut out, "connection", b"close");
    out.extend_from_slice(b"\r\n");
    out
}

fn line(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use warp::http::{Response as HttpResponse, StatusCode};

    const HEAD: &str =
        "GET /api/events?presence=false HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer abc\r\n\r\n";

    #[test]
    fn a_whole_events_head_is_taken_with_its_length() {
        let bytes = format!("{HEAD}GET /next");
        let (request, length) = parse(bytes.as_bytes()).expect("taken");
        assert_eq!(length, HEAD.len());
        assert_eq!(request.method(), Method::GET);
        assert_eq!(request.uri(), "/api/events?presence=false");
        assert_eq!(request.version(), Version::HTTP_11);
        assert_eq!(request.headers()["authorization"], "Bearer abc");
        assert_eq!(request.headers()["host"], "x");
        let bare = "GET /api/events HTTP/1.1\r\n\r\n";
        assert_eq!(parse(bare.as_bytes()).map(|(_, n)| n), Some(bare.len()));
    }

    #[test]
    fn every_other_head_is_left_to_hyper() {
        let left = [
            &HEAD[..HEAD.len() - 2],
            "GET /api/events/ticket HTTP/1.1\r\n\r\n",
            "GET /api/eventsx HTTP/1.1\r\n\r\n",
            "GET /api/events/ HTTP/1.1\r\n\r\n",
            "POST /api/events HTTP/1.1\r\n\r\n",
            "GET /api/events HTTP/1.0\r\n\r\n",
            "GET /api/events HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            "GET /api/events HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /api/events HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            "GET /api/events HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
            "GET /api/events HTTP/1.1\r\nBad Name: x\r\n\r\n",
            "GET /api/events HTTP/1.1\r\nX: \x01\r\n\r\n",
            "GET  /api/events HTTP/1.1\r\n\r\n",
            "",
        ];
        for head in left {
            assert!(parse(head.as_bytes()).is_none(), "{head:?}");
        }
        let many = format!(
            "GET /api/events HTTP/1.1\r\n{}\r\n",
            "X-A: b\r\n".repeat(MAX_HEADERS + 1)
        );
        assert!(parse(many.as_bytes()).is_none());
    }

    #[test]
    fn the_first_bytes_tell_an_events_request() {
        assert!(is_events(b"GET /api/events "));
        assert!(is_events(b"GET /api/events?"));
        assert!(!is_events(b"GET /api/events/"));
        assert!(!is_events(b"GET /api/events"));
        assert!(!is_events(b"GET /api/even"));
        assert!(!is_events(b"POST /api/events"));
        assert!(!is_events(b""));
    }

    fn parts(status: StatusCode, headers: &[(&str, &str)]) -> response::Parts {
        let mut response = HttpResponse::builder().status(status);
        for (name, value) in headers {
            response = response.header(*name, *value);
        }
        response.body(()).expect("a response").into_parts().0
    }

    #[test]
    fn a_head_has_its_status_line_headers_date_framing_and_close() {
        let stream = parts(
            StatusCode::OK,
            &[
                ("content-type", "text/event-stream"),
                ("x-request-id", "r1"),
            ],
        );
        let text = String::from_utf8(head(&stream, None)).expect("text");
        assert!(
            text.starts_with(
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nx-request-id: r1\r\ndate: "
            ),
            "{text}"
        );
        assert!(
            text.ends_with(" GMT\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"),
            "{text}"
        );

        let refused = parts(
            StatusCode::TOO_MANY_REQUESTS,
            &[
                ("date", "Sat, 05 Dec 2026 16:00:00 GMT"),
                ("content-length", "99"),
                ("connection", "keep-alive"),
                ("transfer-encoding", "chunked"),
            ],
        );
        let text = String::from_utf8(head(&refused, Some(12))).expect("text");
        assert_eq!(
            text,
            "HTTP/1.1 429 Too Many Requests\r\ndate: Sat, 05 Dec 2026 16:00:00 GMT\r\n\
             content-length: 12\r\nconnection: close\r\n\r\n"
        );
    }
}
