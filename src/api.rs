//! The HTTP API: joins the endpoint groups, adds the one `recover` and the
//! request log line, and (in [`service`]) what every reply carries: the
//! security and CORS headers, and the whole-request time limit.

mod accounts;
mod admin;
pub mod cors;
pub mod error;
mod events;
pub mod filters;
mod health;
mod jwks;
mod listing;
pub mod openapi;
pub mod token;
pub mod users;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tower_service::Service;
use warp::filters::BoxedFilter;
use warp::http::{HeaderValue, Request, StatusCode, header};
use warp::reply::Response;
use warp::{Filter, Reply};

use crate::AppState;
use cors::{Cors, CorsRequest};
use filters::Peer;

/// Every endpoint of the API, joined, with errors made replies and one log
/// line per request.
pub fn routes(state: AppState) -> BoxedFilter<(impl Reply,)> {
    let max_body = state.config.server.max_body_bytes;
    let state_admin = state.config.admin.enabled;
    users::routes(state.clone(), max_body)
        .or(accounts::routes(state.clone(), max_body))
        .unify()
        .or(token::routes(state.clone(), max_body))
        .unify()
        .or(health::routes(state.clone()))
        .unify()
        .or(jwks::routes(state.clone()))
        .unify()
        .or(events::routes(state))
        .unify()
        .or(openapi::routes())
        .unify()
        .or(admin::routes(state_admin))
        .unify()
        .recover(error::recover)
        .unify()
        .with(warp::log::custom(log_request))
        .boxed()
}

/// The API as the server calls it, once per request with the peer of its
/// connection: the routes, bounded by `server.request_timeout` (408), and
/// every reply, errors and time-outs included, with the security and CORS
/// headers.
pub fn service(
    state: AppState,
) -> impl Fn(Request<crate::server::Body>, SocketAddr) -> Pin<Box<dyn Future<Output = Response> + Send>>
+ Clone
+ Send
+ Sync
+ 'static {
    let limit = Duration::from_secs(state.config.server.request_timeout);
    let cors = Arc::new(Cors::new(&state.config.server.cors_origins));
    let routes = warp::service(routes(state));
    move |mut request: Request<crate::server::Body>, peer: SocketAddr| {
        let cors_request = CorsRequest::of(request.headers(), request.method());
        let method = request.method().clone();
        let uri = request.uri().clone();
        request.extensions_mut().insert(Peer(peer));
        let answered = routes.clone().call(request);
        let cors = cors.clone();
        Box::pin(async move {
            let mut response = match tokio::time::timeout(limit, answered).await {
                Ok(Ok(response)) => response,
                Ok(Err(never)) => match never {},
                Err(_) => {
                    tracing::warn!(%method, path = uri.path(), "request timed out");
                    timeout_reply()
                }
            };
            cors.decorate(&cors_request, &mut response);
            secure(&mut response);
            response
        })
    }
}

/// 408, closing the connection (the request may still be arriving).
fn timeout_reply() -> Response {
    let mut response = error::json_response(
        StatusCode::REQUEST_TIMEOUT,
        &serde_json::json!({"detail": "Request timed out."}),
    );
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// The headers every reply carries: the API serves JSON only, never a
/// page, and nothing of it may be cached.
fn secure(response: &mut Response) {
    use warp::http::header::{
        CACHE_CONTROL, CONTENT_SECURITY_POLICY, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
    };
    let headers = response.headers_mut();
    for (name, value) in [
        (X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (REFERRER_POLICY, "no-referrer"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    // Nothing is cached, and no content may run, unless a reply says
    // otherwise (the JWKS may be cached; the admin page runs its script).
    for (name, value) in [
        (CACHE_CONTROL, "no-store"),
        (
            CONTENT_SECURITY_POLICY,
            "default-src 'none'; frame-ancestors 'none'",
        ),
    ] {
        headers
            .entry(name)
            .or_insert(HeaderValue::from_static(value));
    }
}

/// One line per request. Only the path is logged: a query string or
/// header could carry a token.
fn log_request(info: warp::log::Info<'_>) {
    let ms = format!("{:.1}", info.elapsed().as_secs_f64() * 1000.0);
    tracing::info!(
        method = %info.method(),
        path = info.path(),
        status = info.status().as_u16(),
        ms,
        "request"
    );
}
