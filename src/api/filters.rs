//! The filters every endpoint shares: state, the size-limited body, the
//! client's address, Bearer authentication, and the per-path 405 / OPTIONS
//! answer.

use std::net::SocketAddr;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use serde_json::Value;
use warp::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use super::error::{ApiError, json_response};
use crate::AppState;
use crate::auth::jwt::{Claims, TokenError, TokenType};
use crate::model::{self, FieldErrors};

/// The socket peer of the request's connection, put in its extensions by
/// [`super::service`].
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// Hands the shared state to a handler.
pub fn with_state(
    state: AppState,
) -> impl Filter<Extract = (AppState,), Error = std::convert::Infallible> + Clone {
    warp::any().map(move || state.clone())
}

/// GET, and HEAD answered like GET (hyper drops the body).
pub fn get_or_head() -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::get().or(warp::head()).unify()
}

/// A request body read up to the limit, with its `Content-Type`. Parsing
/// waits for the handler, after permissions, as DRF parses lazily.
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
        let content_type = self.content_type.as_deref().unwrap_or("");
        let media = content_type.split(';').next().unwrap_or("").trim();
        if !media.eq_ignore_ascii_case("application/json") {
            return Err(ApiError::UnsupportedMediaType(content_type.to_owned()));
        }
        serde_json::from_slice(&self.bytes)
            .map_err(|err| ApiError::MalformedJson(format!("JSON parse error - {err}")))
    }

    /// The named non-blank string fields of a JSON object body (`true`:
    /// trimmed), or every field's error.
    pub fn text_fields<const N: usize>(
        &self,
        fields: [(&str, bool); N],
    ) -> Result<[String; N], ApiError> {
        let value = self.json()?;
        let object = model::expect_object(&value).map_err(ApiError::Validation)?;
        let mut errors = FieldErrors::new();
        let values = fields.map(|(field, trim)| {
            model::required_text(object, field, trim, &mut errors).unwrap_or_default()
        });
        if errors.is_empty() {
            Ok(values)
        } else {
            Err(ApiError::Validation(errors))
        }
    }

    /// A body as it would arrive with `content_type`.
    #[cfg(test)]
    pub fn for_test(content_type: &str, body: &str) -> RawBody {
        RawBody {
            content_type: Some(content_type.to_owned()),
            bytes: Bytes::copy_from_slice(body.as_bytes()),
        }
    }
}

/// Reads the body, refusing more than `limit` bytes (413), also for a
/// chunked body without `Content-Length`.
pub fn body(limit: u64) -> impl Filter<Extract = (RawBody,), Error = Rejection> + Clone {
    header("content-length")
        .and(header("content-type"))
        .and(warp::body::stream())
        .and_then(move |length, content_type, stream| async move {
            read_body(length, content_type, stream, limit)
                .await
                .map_err(warp::reject::custom)
        })
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
    let declared = length.and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    let mut buffer = BytesMut::new();
    let mut stream = std::pin::pin!(stream);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|err| {
            ApiError::MalformedJson(format!("JSON parse error - cannot read the body: {err}"))
        })?;
        if buffer.len() as u64 + chunk.remaining() as u64 > limit {
            return Err(ApiError::PayloadTooLarge(limit));
        }
        buffer.put(chunk);
    }
    Ok(RawBody {
        content_type: content_type.map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
        bytes: buffer.freeze(),
    })
}

/// The client's address for throttling (see `Throttle::client_address`).
pub fn client_address(
    state: AppState,
) -> impl Filter<Extract = (Option<std::net::IpAddr>,), Error = std::convert::Infallible> + Clone {
    warp::ext::optional::<Peer>()
        .and(warp::header::headers_cloned())
        .map(move |peer: Option<Peer>, headers: HeaderMap| {
            let forwarded = headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok());
            state
                .throttle
                .client_address(peer.map(|p| p.0.ip()), forwarded)
        })
}

/// The request's `name` header as sent (any bytes), if it has one.
pub fn header(
    name: &'static str,
) -> impl Filter<Extract = (Option<HeaderValue>,), Error = std::convert::Infallible> + Clone {
    warp::header::value(name)
        .map(Some)
        .or(warp::any().map(|| None))
        .unify()
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
/// database: handlers check it with [`authorize`] in the same read as
/// their own queries.
#[derive(Debug, Clone)]
pub struct Bearer {
    claims: Claims,
}

impl Bearer {
    /// The token's user id.
    pub fn user_id(&self) -> Result<i64, ApiError> {
        self.claims.user_id().ok_or(ApiError::UserNotFound)
    }

    /// When the token was issued (`iat`).
    pub fn issued_at(&self) -> u64 {
        self.claims.iat
    }
}

/// Requires `Authorization: Bearer <access token>` with a valid signature,
/// type and expiry; the user is checked by [`authorize`].
pub fn bearer(state: AppState) -> impl Filter<Extract = (Bearer,), Error = Rejection> + Clone {
    header("authorization").and_then(move |authorization: Option<HeaderValue>| {
        let state = state.clone();
        async move { decode_bearer(&state, authorization.as_ref()).map_err(warp::reject::custom) }
    })
}

/// Decodes an `Authorization` header as [`bearer`] does.
pub fn decode_bearer(
    state: &AppState,
    authorization: Option<&HeaderValue>,
) -> Result<Bearer, ApiError> {
    let token = bearer_token(authorization)?;
    let token = std::str::from_utf8(token)
        .map_err(|_| ApiError::InvalidAccessToken(TokenError::Invalid))?;
    let claims = state
        .keys()
        .decode(token, TokenType::Access)
        .map_err(ApiError::InvalidAccessToken)?;
    Ok(Bearer { claims })
}

/// The caller of an authenticated request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The user's id.
    pub id: i64,
    /// Whether the user is staff (read from the database on this request).
    pub is_staff: bool,
}

/// Checks the token's user as simplejwt does on every request: it exists,
/// is active, and the token is not void since a logout-all or password
/// change. Runs inside the handler's read or write.
pub fn authorize(conn: &mut crate::db::Conn<'_>, bearer: &Bearer) -> Result<Caller, ApiError> {
    let id = bearer.user_id()?;
    let user = crate::db::users::auth_state(conn, id)?.ok_or(ApiError::UserNotFound)?;
    if bearer.claims.is_void(user.tokens_valid_after) {
        return Err(ApiError::InvalidAccessToken(TokenError::Blacklisted));
    }
    Ok(Caller {
        id,
        is_staff: user.is_staff,
    })
}

/// Requires a valid access token whose user exists and is active.
pub fn authenticated(
    state: AppState,
) -> impl Filter<Extract = (Caller,), Error = Rejection> + Clone {
    header("authorization").and_then(move |authorization: Option<HeaderValue>| {
        let state = state.clone();
        async move {
            authenticate(&state, authorization.as_ref())
                .await
                .map_err(warp::reject::custom)
        }
    })
}

/// Authenticates the request's `Authorization` header (see
/// [`authenticated`]).
pub async fn authenticate(
    state: &AppState,
    authorization: Option<&HeaderValue>,
) -> Result<Caller, ApiError> {
    let bearer = decode_bearer(state, authorization)?;
    state.read(move |conn| authorize(conn, &bearer)).await
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

/// The first of the routes that matches: `a.or(b).unify().or(c)...`.
macro_rules! first_of {
    ($first:expr $(, $rest:expr)* $(,)?) => { $first $(.or($rest).unify())* };
}
pub(crate) use first_of;

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
    fn text_fields_are_required_non_blank_strings() {
        let fields = [("username", true), ("password", false)];
        let body = RawBody::for_test(
            "application/json",
            r#"{"username":" ann ","password":" pw "}"#,
        );
        assert_eq!(
            body.text_fields(fields).unwrap(),
            ["ann".to_owned(), " pw ".to_owned()]
        );
        let body = RawBody::for_test("application/json", r#"{"username":"   "}"#);
        let Err(ApiError::Validation(errors)) = body.text_fields(fields) else {
            panic!("blank and missing fields are accepted");
        };
        assert_eq!(errors.len(), 2, "{errors:?}");
    }

    #[test]
    fn empty_body_reads_as_an_empty_object() {
        let body = RawBody::for_test("text/plain", "");
        assert_eq!(body.json().unwrap(), serde_json::json!({}));
    }

    #[test]
    fn non_json_media_type_is_415_and_bad_json_400() {
        let body = RawBody::for_test("text/plain", "{}");
        assert!(matches!(body.json(), Err(ApiError::UnsupportedMediaType(m)) if m == "text/plain"));
        let body = RawBody::for_test("application/json; charset=utf-8", "{");
        assert!(
            matches!(body.json(), Err(ApiError::MalformedJson(m)) if m.starts_with("JSON parse error - "))
        );
    }
}
