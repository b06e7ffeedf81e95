//! GET /api/health.

use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

use super::error::{ApiError, json_response};
use super::filters::{self, get_or_head, with_state};
use crate::AppState;

/// GET /api/health, with its 405/OPTIONS answer.
pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let path = || warp::path!("api" / "health");
    path()
        .and(get_or_head())
        .and(with_state(state))
        .then(health_check)
        .or(filters::other_methods(
            path(),
            "Health",
            "GET, HEAD, OPTIONS",
        ))
        .unify()
        .boxed()
}

/// Whether the database answers.
pub async fn health_check(state: AppState) -> Response {
    let ping = state
        .read(|conn| -> Result<_, ApiError> { Ok(crate::db::ping(conn)?) })
        .await;
    match ping {
        Ok(()) => warp::reply::json(&serde_json::json!({"status": "ok"})).into_response(),
        Err(err) => {
            tracing::warn!(?err, "health check failed");
            json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({"status": "unavailable"}),
            )
        }
    }
}
