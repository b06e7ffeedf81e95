//! `ApiError`: every way a request can fail, and the DRF/simplejwt-shaped
//! JSON reply for each. Also the one `recover` for warp rejections.

use std::convert::Infallible;

use serde_json::{Value, json};
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::Response;
use warp::{Rejection, Reply};

use crate::auth::jwt::TokenError;
use crate::model::FieldErrors;
use crate::request_id::RequestId;
use crate::state::{DatabaseCause, StateError};

/// Every failure of a request, named for its outcome.
#[derive(Debug)]
pub enum ApiError {
    /// 400: one or more fields are missing or invalid.
    Validation(FieldErrors),
    /// 400: the body is not well-formed JSON.
    MalformedJson(String),
    /// 400: a query string that does not decode.
    MalformedQuery,
    /// 401: no `Authorization` header (or not a Bearer one).
    NotAuthenticated,
    /// 401: `Authorization: Bearer` with no token, or more than one.
    BadAuthorizationHeader,
    /// 401: a bad access token.
    InvalidAccessToken(TokenError),
    /// 401: a valid access token whose user is gone or inactive.
    UserNotFound,
    /// 401: a bad token at refresh (or verify / blacklist).
    InvalidToken(TokenError),
    /// 401: wrong username or password, or an inactive account.
    NoActiveAccount,
    /// 401: a valid refresh token whose user is gone or inactive.
    NoActiveAccountForToken,
    /// 403: authenticated but not allowed.
    Forbidden,
    /// 404: unknown path or id.
    NotFound,
    /// 405: known path, wrong method; `allow` lists the right ones.
    MethodNotAllowed {
        /// The method that was used.
        method: String,
        /// The `Allow` header value.
        allow: &'static str,
    },
    /// 413: body over the configured limit.
    PayloadTooLarge(u64),
    /// 415: a body that is not JSON; holds the `Content-Type` sent.
    UnsupportedMediaType(String),
    /// 429 with `Retry-After`: too many password attempts.
    Throttled {
        /// How long until the next attempt is allowed.
        wait: std::time::Duration,
    },
    /// 503 with `Retry-After`: too many password hashes queued.
    Busy,
    /// 503: the database stayed locked or the pool had no connection.
    Unavailable(String),
    /// 507: the disk is full; reads still work.
    InsufficientStorage,
    /// 500 (or 503/507, by SQLite's code): a database error.
    Database(crate::db::Error),
    /// 500: a bug; the cause is logged, never sent.
    Internal(anyhow::Error),
}

impl warp::reject::Reject for ApiError {}

impl From<crate::db::Error> for ApiError {
    fn from(err: crate::db::Error) -> Self {
        ApiError::Database(err)
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(err: anyhow::Error) -> Self {
        ApiError::Internal(err)
    }
}

impl From<StateError> for ApiError {
    fn from(err: StateError) -> Self {
        match err {
            StateError::Unavailable(cause) => ApiError::Unavailable(cause),
            StateError::Database(err) => ApiError::Database(err),
            StateError::Busy => ApiError::Busy,
            StateError::Crashed(what) => ApiError::Internal(anyhow::anyhow!(what)),
        }
    }
}

impl DatabaseCause for ApiError {
    fn database_cause(&self) -> Option<&crate::db::Error> {
        match self {
            ApiError::Database(err) => Some(err),
            _ => None,
        }
    }
}

impl ApiError {
    /// A single field error.
    pub fn field(field: &str, message: impl Into<String>) -> ApiError {
        ApiError::Validation(FieldErrors::from([(
            field.to_owned(),
            vec![message.into()],
        )]))
    }

    fn status_and_body(&self) -> (StatusCode, Value) {
        use ApiError::*;
        let detail = |status: StatusCode, text: &str| (status, json!({ "detail": text }));
        match self {
            Validation(errors) => (StatusCode::BAD_REQUEST, json!(errors)),
            MalformedJson(text) => detail(StatusCode::BAD_REQUEST, text),
            MalformedQuery => detail(StatusCode::BAD_REQUEST, "Invalid query string."),
            NotAuthenticated => detail(
                StatusCode::UNAUTHORIZED,
                "Authentication credentials were not provided.",
            ),
            BadAuthorizationHeader => (
                StatusCode::UNAUTHORIZED,
                json!({
                    "detail": "Authorization header must contain two space-delimited values",
                    "code": "bad_authorization_header",
                }),
            ),
            InvalidAccessToken(err) => (
                StatusCode::UNAUTHORIZED,
                json!({
                    "detail": "Given token not valid for any token type",
                    "code": "token_not_valid",
                    "messages": [{
                        "token_class": "AccessToken",
                        "token_type": "access",
                        "message": err.message(),
                    }],
                }),
            ),
            UserNotFound => (
                StatusCode::UNAUTHORIZED,
                json!({"detail": "User not found", "code": "user_not_found"}),
            ),
            InvalidToken(err) => (
                StatusCode::UNAUTHORIZED,
                json!({"detail": err.message(), "code": "token_not_valid"}),
            ),
            NoActiveAccount => detail(
                StatusCode::UNAUTHORIZED,
                "No active account found with the given credentials",
            ),
            NoActiveAccountForToken => (
                StatusCode::UNAUTHORIZED,
                json!({
                    "detail": "No active account found for the given token.",
                    "code": "no_active_account",
                }),
            ),
            Forbidden => detail(
                StatusCode::FORBIDDEN,
                "You do not have permission to perform this action.",
            ),
            NotFound => detail(StatusCode::NOT_FOUND, "Not found."),
            MethodNotAllowed { method, .. } => detail(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!("Method \"{method}\" not allowed."),
            ),
            PayloadTooLarge(limit) => detail(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("Request body is larger than the limit of {limit} bytes."),
            ),
            UnsupportedMediaType(media) => detail(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                &format!("Unsupported media type \"{media}\" in request."),
            ),
            Throttled { wait } => {
                let seconds = retry_after_seconds(*wait);
                let unit = if seconds == 1 { "second" } else { "seconds" };
                detail(
                    StatusCode::TOO_MANY_REQUESTS,
                    &format!("Request was throttled. Expected available in {seconds} {unit}."),
                )
            }
            Busy => detail(
                StatusCode::SERVICE_UNAVAILABLE,
                "The server is busy. Try again shortly.",
            ),
            Unavailable(cause) => {
                tracing::warn!(%cause, "database unavailable");
                detail(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The database is busy. Try again shortly.",
                )
            }
            InsufficientStorage => detail(
                StatusCode::INSUFFICIENT_STORAGE,
                "The server's disk is full. Try again later.",
            ),
            Database(err) => match err.trouble() {
                crate::db::Trouble::Busy => {
                    ApiError::Unavailable(err.to_string()).status_and_body()
                }
                crate::db::Trouble::Full => {
                    tracing::error!(error = %err, "database disk full");
                    ApiError::InsufficientStorage.status_and_body()
                }
                _ => {
                    tracing::error!(error = %err, "database error");
                    server_error()
                }
            },
            Internal(err) => {
                tracing::error!(error = format!("{err:#}"), "internal error");
                server_error()
            }
        }
    }
}

/// The 500 body: the generic message, and the request id that finds the
/// cause in the log.
fn server_error() -> (StatusCode, Value) {
    let mut body = json!({"detail": "A server error occurred."});
    if let Some(id) = RequestId::current() {
        body["request_id"] = Value::String(id.to_string());
    }
    (StatusCode::INTERNAL_SERVER_ERROR, body)
}

/// A JSON reply with `status`.
pub fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Response {
    warp::reply::with_status(warp::reply::json(body), status).into_response()
}

/// 204 with no body.
pub fn no_content() -> Response {
    warp::reply::with_status(warp::reply(), StatusCode::NO_CONTENT).into_response()
}

/// Whole seconds to announce in `Retry-After`: never 0.
pub fn retry_after_seconds(wait: std::time::Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0).max(u64::from(wait.is_zero()))
}

impl Reply for ApiError {
    fn into_response(self) -> Response {
        error_response(&self)
    }
}

/// The reply for an error, with the headers its status calls for.
pub fn error_response(err: &ApiError) -> Response {
    let (status, body) = err.status_and_body();
    let mut response = json_response(status, &body);
    let headers = response.headers_mut();
    match (status, err) {
        (StatusCode::UNAUTHORIZED, _) => {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"api\""),
            );
        }
        (_, ApiError::MethodNotAllowed { allow, .. }) => {
            headers.insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        (_, ApiError::Throttled { wait }) => {
            let seconds = retry_after_seconds(*wait);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        (StatusCode::SERVICE_UNAVAILABLE, _) => {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        _ => {}
    }
    response
}

/// Turns every rejection into the JSON of API.md.
pub async fn recover(rejection: Rejection) -> Result<Response, Infallible> {
    if let Some(err) = rejection.find::<ApiError>() {
        return Ok(error_response(err));
    }
    // Every known path has its own 405 filter with an Allow header; warp's
    // own 405 is only reached for paths outside the API.
    if rejection.is_not_found() || rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        return Ok(error_response(&ApiError::NotFound));
    }
    if rejection.find::<warp::reject::InvalidQuery>().is_some() {
        return Ok(error_response(&ApiError::MalformedQuery));
    }
    tracing::error!(?rejection, "unhandled rejection");
    Ok(error_response(&ApiError::Internal(anyhow::anyhow!(
        "unhandled rejection: {rejection:?}"
    ))))
}

/// Maps a UNIQUE violation on `table_column` to a field error, so handlers
/// can just use `?`.
pub trait ResultExt<T> {
    /// `users.username` violated -> `{"username": [message]}`.
    fn on_constraint(self, table_column: &str, field: &str, message: &str) -> Result<T, ApiError>;
}

impl<T> ResultExt<T> for Result<T, ApiError> {
    fn on_constraint(self, table_column: &str, field: &str, message: &str) -> Result<T, ApiError> {
        self.map_err(|err| match err {
            ApiError::Database(db) if db.is_unique_violation(table_column) => {
                ApiError::field(field, message)
            }
            other => other,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_401_carries_www_authenticate() {
        for err in [
            ApiError::NotAuthenticated,
            ApiError::BadAuthorizationHeader,
            ApiError::InvalidAccessToken(TokenError::Expired),
            ApiError::UserNotFound,
            ApiError::InvalidToken(TokenError::Invalid),
            ApiError::NoActiveAccount,
        ] {
            let response = error_response(&err);
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
            assert_eq!(
                response.headers()[header::WWW_AUTHENTICATE],
                "Bearer realm=\"api\""
            );
        }
    }

    #[test]
    fn internal_errors_hide_their_cause() {
        let (status, body) =
            ApiError::Internal(anyhow::anyhow!("secret path /etc/x")).status_and_body();
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body, json!({"detail": "A server error occurred."}));
        assert!(!body.to_string().contains("secret"));
    }

    #[test]
    fn retry_after_rounds_up_and_is_never_zero() {
        use std::time::Duration;
        assert_eq!(retry_after_seconds(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(11_500)), 12);
        assert_eq!(retry_after_seconds(Duration::from_secs(12)), 12);
        assert_eq!(retry_after_seconds(Duration::ZERO), 1);
    }

    #[test]
    fn method_not_allowed_names_the_method_and_allow() {
        let response = error_response(&ApiError::MethodNotAllowed {
            method: "DELETE".into(),
            allow: "GET, OPTIONS",
        });
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[header::ALLOW], "GET, OPTIONS");
    }
}
