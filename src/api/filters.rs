//! The filters every endpoint shares: state, the size-limited body, the
//! Bearer authentication, and the per-path 405 / OPTIONS answer.

use std::borrow::Cow;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use serde_json::Value;
use warp::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use super::error::{ApiError, json_response};
use crate::AppState;
use crate::auth::jwt::TokenType;

/// Hands the shared state to a handler.
pub fn with_state(
    state: AppState,
) -> impl Filter<Extract = (AppState,), Error = std::convert::Infallible> + Clone {
    warp::any().map(move || state.clone())
}

/// Passes only requests whose path starts with `prefix`: put before a
/// group of routes whose paths all start with it, so that other requests
/// skip the group at the cost of one comparison. (Every route's path must
/// start with the prefix, or that route becomes unreachable.)
pub fn under(prefix: &'static str) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::path::full()
        .and_then(move |path: warp::path::FullPath| {
            std::future::ready(if path.as_str().starts_with(prefix) {
                Ok(())
            } else {
                Err(warp::reject::not_found())
            })
        })
        .untuple_one()
}

/// GET, and HEAD answered like GET (hyper drops the body).
pub fn get_or_head() -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::get().or(warp::head()).unify()
}

/// A request body read up to `limit` bytes (413 past it, also for chunked
/// bodies without `Content-Length`), with its `Content-Type`. Parsing waits
/// for the handler, after permissions, as DRF parses lazily.
#[derive(Debug, Clone)]
pub struct RawBody {
    content_type: Option<String>,
    bytes: Bytes,
}

impl RawBody {
    /// The body as JSON: an empty body reads as `{}` (as DRF); another
    /// media type is 415; malformed JSON is 400.
    pub fn json(&self) -> Result<Value, ApiError> {
        if self.bytes.is_empty() {
            return Ok(Value::Object(serde_json::Map::new()));
        }
        if !self.is_json() {
            let content_type = self.content_type.as_deref().unwrap_or("");
            return Err(ApiError::UnsupportedMediaType(content_type.to_owned()));
        }
        serde_json::from_slice(&self.bytes)
            .map_err(|err| ApiError::MalformedJson(format!("JSON parse error - {err}")))
    }

    /// A body as it would arrive with `content_type`.
    #[cfg(test)]
    pub fn for_test(content_type: &str, body: &str) -> RawBody {
        RawBody {
            content_type: Some(content_type.to_owned()),
            bytes: Bytes::copy_from_slice(body.as_bytes()),
        }
    }

    /// Whether the body is labelled `application/json`.
    fn is_json(&self) -> bool {
        let content_type = self.content_type.as_deref().unwrap_or("");
        content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .eq_ignore_ascii_case("application/json")
    }

    /// The string values of `names` in a JSON object body, read without
    /// building a [`Value`] (and without copying those with no escapes).
    /// `None` when [`RawBody::json`] would fail, when the body is not an
    /// object, or when any of the names is missing or not a string: the
    /// caller then reads the body with [`RawBody::json`] for its answer.
    /// Of repeated keys the last counts, as in a [`Value`].
    pub fn strings<const N: usize>(&self, names: [&str; N]) -> Option<[Cow<'_, str>; N]> {
        if self.bytes.is_empty() || !self.is_json() {
            return None;
        }
        let mut found: [Option<Cow<'_, str>>; N] = std::array::from_fn(|_| None);
        let mut deserializer = serde_json::Deserializer::from_slice(&self.bytes);
        serde::Deserializer::deserialize_map(
            &mut deserializer,
            Strings {
                names: &names,
                found: &mut found,
            },
        )
        .ok()?;
        deserializer.end().ok()?;
        if found.iter().any(Option::is_none) {
            return None;
        }
        Some(found.map(Option::unwrap_or_default))
    }
}

/// Reads a JSON object, keeping the string values of `names`
/// ([`RawBody::strings`]); any other value of theirs is an error.
struct Strings<'n, 'f, 'de, const N: usize> {
    names: &'n [&'n str; N],
    found: &'f mut [Option<Cow<'de, str>>; N],
}

impl<'de, const N: usize> serde::de::Visitor<'de> for Strings<'_, '_, 'de, N> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            match self.names.iter().position(|name| *name == key) {
                Some(i) => self.found[i] = Some(map.next_value_seed(Text)?),
                None => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// A JSON string, borrowed when it has no escapes.
struct Text;

impl<'de> serde::de::DeserializeSeed<'de> for Text {
    type Value = Cow<'de, str>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Text {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
}

/// Reads the body, refusing more than `limit` bytes.
pub fn body(limit: u64) -> impl Filter<Extract = (RawBody,), Error = Rejection> + Clone {
    header_value("content-length")
        .and(header_value("content-type"))
        .and(warp::body::stream())
        .and_then(move |length, content_type, stream| async move {
            read_body(length, content_type, stream, limit)
                .await
                .map_err(warp::reject::custom)
        })
}

/// The request's `name` header as sent (any bytes), if it has one.
fn header_value(
    name: &'static str,
) -> impl Filter<Extract = (Option<HeaderValue>,), Error = std::convert::Infallible> + Clone {
    warp::header::value(name)
        .map(Some)
        .or(warp::any().map(|| None))
        .unify()
}

/// The request's `Authorization` header, if it has one.
pub fn authorization()
-> impl Filter<Extract = (Option<HeaderValue>,), Error = std::convert::Infallible> + Clone {
    header_value("authorization")
}

async fn read_body<S, B>(
    length: Option<HeaderValue>,
    content_type: Option<HeaderValue>,
    stream: S,
    limit: u64,
) -> Result<RawBody, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let declared = length
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    let content_type = content_type.map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    // A body that comes in one piece (most do) is kept as it came.
    let mut first = Bytes::new();
    let mut buffer = BytesMut::new();
    let mut stream = std::pin::pin!(stream);
    while let Some(chunk) = stream.next().await {
        let mut chunk = chunk.map_err(|err| {
            ApiError::MalformedJson(format!("JSON parse error - cannot read the body: {err}"))
        })?;
        let read = first.len() + buffer.len();
        if read as u64 + chunk.remaining() as u64 > limit {
            return Err(ApiError::PayloadTooLarge(limit));
        }
        let piece = chunk.copy_to_bytes(chunk.remaining());
        if read == 0 {
            first = piece;
        } else {
            if !first.is_empty() {
                buffer.extend_from_slice(&std::mem::take(&mut first));
            }
            buffer.extend_from_slice(&piece);
        }
    }
    Ok(RawBody {
        content_type,
        bytes: if buffer.is_empty() {
            first
        } else {
            buffer.freeze()
        },
    })
}

/// The caller of an authenticated request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The user's id.
    pub id: i64,
    /// The username.
    pub username: String,
    /// Whether the user is staff (read from the database on this request).
    pub is_staff: bool,
}

/// The client's address for throttling (see `Throttle::client_address`).
pub fn client_address(
    state: AppState,
) -> impl Filter<Extract = (Option<std::net::IpAddr>,), Error = std::convert::Infallible> + Clone {
    warp::header::headers_cloned().map(move |headers: HeaderMap| {
        state
            .throttle
            .client_address(crate::server::peer_addr(), &headers)
    })
}

/// Requires a valid access token whose user exists and is active, checked
/// against the database on every request as simplejwt does.
pub fn authenticated(
    state: AppState,
) -> impl Filter<Extract = (Caller,), Error = Rejection> + Clone {
    authorization().and_then(move |authorization: Option<HeaderValue>| {
        let state = state.clone();
        async move {
            authenticate(&state, authorization.as_ref())
                .await
                .map_err(warp::reject::custom)
        }
    })
}

/// The raw token of an `Authorization: Bearer <token>` header, as
/// simplejwt reads it: no header or another scheme -> not authenticated;
/// `Bearer` with zero or several values -> a bad header.
fn bearer_token(authorization: Option<&HeaderValue>) -> Result<&[u8], ApiError> {
    let Some(value) = authorization else {
        return Err(ApiError::NotAuthenticated);
    };
    let mut parts = value
        .as_bytes()
        .split(|b| b.is_ascii_whitespace())
        .filter(|p| !p.is_empty());
    match parts.next() {
        Some(b"Bearer") => {}
        _ => return Err(ApiError::NotAuthenticated),
    }
    match (parts.next(), parts.next()) {
        (Some(token), None) => Ok(token),
        _ => Err(ApiError::BadAuthorizationHeader),
    }
}

/// A verified access token whose user is not yet checked against the
/// database: handlers check it with [`authorize`] in the same blocking
/// task as their own queries (one trip to the blocking pool per request).
#[derive(Debug, Clone)]
pub struct Bearer {
    claims: std::sync::Arc<crate::auth::jwt::Claims>,
}

impl Bearer {
    /// The token's user id, checked as [`authorize`] checks it first.
    pub fn user_id(&self) -> Result<i64, ApiError> {
        self.claims.user_id().ok_or(ApiError::UserNotFound)
    }
}

/// Requires `Authorization: Bearer <access token>` with a valid signature,
/// type and expiry; the user is checked by [`authorize`].
pub fn bearer(state: AppState) -> impl Filter<Extract = (Bearer,), Error = Rejection> + Clone {
    authorization().and_then(move |authorization: Option<HeaderValue>| {
        let state = state.clone();
        async move { decode_bearer(&state, authorization.as_ref()).map_err(warp::reject::custom) }
    })
}

fn decode_bearer(
    state: &AppState,
    authorization: Option<&HeaderValue>,
) -> Result<Bearer, ApiError> {
    let token = bearer_token(authorization)?;
    let token = std::str::from_utf8(token)
        .map_err(|_| ApiError::InvalidAccessToken(crate::auth::jwt::TokenError::Invalid))?;
    let claims = state
        .keys
        .decode(token, TokenType::Access)
        .map_err(ApiError::InvalidAccessToken)?;
    Ok(Bearer { claims })
}

/// Checks the token's user as simplejwt does on every request: it exists,
/// is active, and the token is not void since a logout-all or password
/// change. Runs on the blocking pool, inside the handler's task.
pub fn authorize(conn: &rusqlite::Connection, bearer: &Bearer) -> Result<Caller, ApiError> {
    let id = bearer.user_id()?;
    let user = crate::db::users::auth_state(conn, id)?;
    admit(bearer, user.as_ref())?;
    let user = user.ok_or(ApiError::UserNotFound)?;
    Ok(Caller {
        id,
        username: user.username,
        is_staff: user.is_staff,
    })
}

/// [`authorize`]'s checks on the auth state read for the token's user
/// (`None`: missing or inactive).
pub fn admit(bearer: &Bearer, user: Option<&crate::db::users::AuthState>) -> Result<(), ApiError> {
    let user = user.ok_or(ApiError::UserNotFound)?;
    if bearer.claims.is_void(user.tokens_valid_after) {
        return Err(ApiError::InvalidAccessToken(
            crate::auth::jwt::TokenError::Blacklisted,
        ));
    }
    Ok(())
}

/// Authenticates the request's `Authorization` header (see
/// [`authenticated`]).
pub async fn authenticate(
    state: &AppState,
    authorization: Option<&HeaderValue>,
) -> Result<Caller, ApiError> {
    let bearer = decode_bearer(state, authorization)?;
    state.db_with(move |conn| authorize(conn, &bearer)).await
}

/// Answers, for a known path, OPTIONS (200 with `Allow`, as DRF's metadata)
/// and every method not in `allow` (405 with `Allow`). Placed after the
/// path's endpoints; allowed methods fall through to their rejections.
pub fn other_methods<P>(
    path: P,
    name: &'static str,
    allow: &'static str,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone
where
    P: Filter<Extract = (), Error = Rejection> + Clone + Send + Sync + 'static,
{
    path.and(warp::method())
        .and_then(move |method: Method| async move {
            if method == Method::OPTIONS {
                let body = serde_json::json!({
                    "name": name,
                    "description": "",
                    "renders": ["application/json"],
                    "parses": ["application/json"],
                });
                let mut response = json_response(StatusCode::OK, &body);
                response
                    .headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(allow));
                return Ok(response);
            }
            let listed = allow.split(", ").any(|m| m == method.as_str());
            if listed {
                Err(warp::reject::not_found())
            } else {
                Err(warp::reject::custom(ApiError::MethodNotAllowed {
                    method: method.to_string(),
                    allow,
                }))
            }
        })
}

/// Turns a handler's result into a reply.
pub fn reply<T: Reply>(result: Result<T, ApiError>) -> Response {
    match result {
        Ok(reply) => reply.into_response(),
        Err(err) => err.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(value: &[u8]) -> HeaderValue {
        HeaderValue::from_bytes(value).unwrap()
    }

    #[test]
    fn bearer_header_is_read_as_simplejwt_reads_it() {
        assert!(matches!(
            bearer_token(None),
            Err(ApiError::NotAuthenticated)
        ));
        assert!(matches!(
            bearer_token(Some(&header(b"Basic abc"))),
            Err(ApiError::NotAuthenticated)
        ));
        assert!(matches!(
            bearer_token(Some(&header(b"Bearer"))),
            Err(ApiError::BadAuthorizationHeader)
        ));
        assert!(matches!(
            bearer_token(Some(&header(b"Bearer a b"))),
            Err(ApiError::BadAuthorizationHeader)
        ));
        assert_eq!(bearer_token(Some(&header(b"Bearer abc"))).unwrap(), b"abc");
    }

    #[test]
    fn strings_are_read_borrowed_unless_escaped_and_the_last_of_a_key_counts() {
        let body = RawBody::for_test(
            "application/json",
            r#"{"a":"x","skip":{"b":[1,"c"]},"b":"y\u0021","a":"z"}"#,
        );
        let [a, b] = body.strings(["a", "b"]).unwrap();
        assert!(matches!(a, Cow::Borrowed("z")));
        assert!(matches!(b, Cow::Owned(ref s) if s == "y!"));
        for (content_type, text) in [
            ("application/json", r#"{"a":"x"}"#),
            ("application/json", r#"{"a":"x","b":null}"#),
            ("application/json", r#"{"a":"x","b":2}"#),
            ("application/json", r#"{"a":"x","b":"y"} {}"#),
            ("application/json", r#"{"a":"x","b":"y""#),
            ("application/json", r#"["a","b"]"#),
            ("application/json", ""),
            ("text/plain", r#"{"a":"x","b":"y"}"#),
        ] {
            let body = RawBody::for_test(content_type, text);
            assert!(body.strings(["a", "b"]).is_none(), "{content_type}: {text}");
        }
    }

    #[test]
    fn empty_body_reads_as_an_empty_object() {
        let body = RawBody {
            content_type: None,
            bytes: Bytes::new(),
        };
        assert_eq!(body.json().unwrap(), serde_json::json!({}));
    }

    #[test]
    fn non_json_media_type_is_415_and_bad_json_400() {
        let body = RawBody {
            content_type: Some("text/plain".into()),
            bytes: Bytes::from_static(b"{}"),
        };
        assert!(matches!(body.json(), Err(ApiError::UnsupportedMediaType(m)) if m == "text/plain"));
        let body = RawBody {
            content_type: Some("application/json; charset=utf-8".into()),
            bytes: Bytes::from_static(b"{"),
        };
        assert!(
            matches!(body.json(), Err(ApiError::MalformedJson(m)) if m.starts_with("JSON parse error - "))
        );
    }
}
