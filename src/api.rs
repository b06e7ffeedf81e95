//! The HTTP API: joins the endpoint groups, adds the per-path 405/OPTIONS
//! answers, the request log and the one `recover`. The headers every reply
//! carries (security, CORS, request id) are added by `server`.

pub mod cors;
pub mod error;
pub mod filters;
pub mod openapi;
pub mod throttle;
pub mod token;
pub mod users;

use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::{Filter, Reply};

use crate::AppState;

/// Every endpoint of API.md, joined, with errors made replies and one log
/// line per request.
pub fn routes(state: AppState) -> BoxedFilter<(impl Reply,)> {
    let max_body = state.config.server.max_body_bytes;
    // Each group is tried only for the paths it can match: a request
    // walks its own group's routes, not every route of the API.
    filters::under("/api/users")
        .and(users::routes(state.clone(), max_body))
        .or(filters::under("/api/token").and(token::routes(state.clone(), max_body)))
        .unify()
        .or(health(state))
        .unify()
        .recover(error::recover)
        .unify()
        .with(warp::log::custom(log_request))
        .boxed()
}

/// The headers every reply carries: the API serves JSON only, never a
/// page, and nothing of it may be cached.
pub(crate) fn secure(response: &mut Response) {
    use warp::http::HeaderValue;
    use warp::http::header::{
        CACHE_CONTROL, CONTENT_SECURITY_POLICY, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
    };
    let headers = response.headers_mut();
    // Named by constant: a name given as text is parsed on every insert.
    for (name, value) in [
        (X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (
            CONTENT_SECURITY_POLICY,
            "default-src 'none'; frame-ancestors 'none'",
        ),
        (REFERRER_POLICY, "no-referrer"),
        (CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
}

/// One line per request. Only the path is logged: a query string or
/// header could carry a token.
fn log_request(info: warp::log::Info<'_>) {
    tracing::info!(
        method = %info.method(),
        path = info.path(),
        status = info.status().as_u16(),
        ms = millis(info.elapsed()),
        "request"
    );
}

/// `elapsed` in milliseconds to one decimal, rounded half up (`"0.7"`).
fn millis(elapsed: std::time::Duration) -> String {
    // Integers: a float formatted to a precision costs more than the
    // rest of the line's fields.
    let tenths = (elapsed.as_nanos() + 50_000) / 100_000;
    format!("{}.{}", tenths / 10, tenths % 10)
}

/// GET /api/health and GET /api/openapi.json
fn health(state: AppState) -> BoxedFilter<(Response,)> {
    let health_path = || warp::path!("api" / "health");
    let openapi_path = || warp::path!("api" / "openapi.json");
    let get = health_path()
        .and(filters::get_or_head())
        .and(filters::with_state(state))
        .then(health_check);
    // Built on first request, not at start: start-up time and idle memory
    // stay with the server's real work.
    let document = std::sync::Arc::new(std::sync::OnceLock::new());
    let openapi = openapi_path().and(filters::get_or_head()).map(move || {
        error::json_response(
            warp::http::StatusCode::OK,
            document.get_or_init(openapi::document),
        )
    });
    get.or(filters::other_methods(
        health_path(),
        "Health",
        "GET, HEAD, OPTIONS",
    ))
    .unify()
    .or(openapi)
    .unify()
    .or(filters::other_methods(
        openapi_path(),
        "OpenAPI",
        "GET, HEAD, OPTIONS",
    ))
    .unify()
    .boxed()
}

/// Whether the database answers.
#[utoipa::path(get, path = "/api/health", tag = "health",
    responses(
        (status = 200, description = "The database answers", body = openapi::Health),
        (status = 503, description = "It does not", body = openapi::Health),
    ))]
async fn health_check(state: AppState) -> Response {
    match state.db(crate::db::ping).await {
        Ok(()) => error::json_response(
            warp::http::StatusCode::OK,
            &serde_json::json!({"status": "ok"}),
        ),
        Err(err) => {
            tracing::warn!(?err, "health check failed");
            error::json_response(
                warp::http::StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({"status": "unavailable"}),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn request_times_are_milliseconds_to_one_decimal() {
        for (nanos, text) in [
            (0, "0.0"),
            (49_999, "0.0"),
            (50_000, "0.1"),
            (700_000, "0.7"),
            (1_249_999, "1.2"),
            (1_250_000, "1.3"),
            (12_345_600_000, "12345.6"),
        ] {
            assert_eq!(
                super::millis(Duration::from_nanos(nanos)),
                text,
                "{nanos} ns"
            );
        }
    }
}
