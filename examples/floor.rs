//! The `core_*` rows of bench/run.sh: what get_user and list_page cost with
//! nothing around them. A bare warp server, like `hello`, that answers
//!
//! - `GET /api/users/{id}`: verify the Bearer token, then on rosterd's
//!   reader threads check the caller (`authorize`) and read the user in one
//!   read transaction, and answer the user's JSON;
//! - `GET /api/users?offset=N`: the same check, one page of 100 users in id
//!   order rendered straight from the rows, and the count;
//! - `POST /api/token/refresh`: read `{"refresh": ...}`, verify it, check
//!   its user and the blacklist in one read transaction, sign a new access
//!   token and answer `{"access": ...}`;
//!
//! through rosterd's own library functions, but without what the server
//! adds to every request: the route table, request id and log line, time
//! limits, security and CORS headers, and the DRF-shaped error replies (an
//! error here is a bare 500). Its throughput over `hello`'s is the most
//! these endpoints can reach on this stack with SQLite off the async
//! workers (ARCHITECTURE.md), whatever the rest of the server does.
//!
//! Usage: `floor [PORT]` (default 0: any free port), with the database path
//! and signing secret in the environment (`ROSTERD_DATABASE_PATH`,
//! `ROSTERD_SECRET`). Prints `listening on http://127.0.0.1:PORT` once bound.

use std::collections::HashMap;
use std::io::Write;

use rosterd::api::error::ApiError;
use rosterd::api::filters::{Bearer, authorize, bearer};
use rosterd::api::token::checked_refresh;
use rosterd::api::users::JsonArray;
use rosterd::auth::jwt::TokenType;
use rosterd::db::users::{ListQuery, count, page_each};
use rosterd::{AppState, db};
use warp::Filter;
use warp::http::{Response, StatusCode};

/// Users per page, as bench/lua/list_page.lua asks.
const PAGE: i64 = 100;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let port: u16 = match std::env::args().nth(1) {
        Some(arg) => arg.parse()?,
        None => 0,
    };
    let config = rosterd::config::Config::from_sources(None, "environment", std::env::vars())?;
    let state = AppState::new(config)?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on http://{}", listener.local_addr()?);
    std::io::stdout().flush()?;

    let with_state = {
        let state = state.clone();
        warp::any().map(move || state.clone())
    };
    let one = warp::path!("api" / "users" / i64)
        .and(bearer(state.clone()))
        .and(with_state.clone())
        .then(get_user);
    let page = warp::path!("api" / "users")
        .and(bearer(state.clone()))
        .and(warp::query::<HashMap<String, String>>())
        .and(with_state.clone())
        .then(list_page);
    let refresh = warp::path!("api" / "token" / "refresh")
        .and(warp::post())
        .and(warp::body::bytes())
        .and(with_state)
        .then(refresh);
    warp::serve(one.or(page).or(refresh))
        .incoming(listener)
        .run()
        .await;
    Ok(())
}

async fn get_user(id: i64, bearer: Bearer, state: AppState) -> Response<Vec<u8>> {
    let read = state
        .db_with(move |conn| {
            authorize(conn, &bearer)?;
            db::users::by_id(conn, id)?.ok_or(ApiError::NotFound)
        })
        .await
        .and_then(|account| {
            serde_json::to_vec(&account.user).map_err(|e| ApiError::Internal(e.into()))
        });
    reply(read.map(|body| (body, None)))
}

async fn list_page(
    bearer: Bearer,
    query: HashMap<String, String>,
    state: AppState,
) -> Response<Vec<u8>> {
    let offset: i64 = query
        .get("offset")
        .and_then(|o| o.parse().ok())
        .unwrap_or(0);
    let seek = state.id_seek.clone();
    let read = state
        .db_with(move |conn| {
            authorize(conn, &bearer)?;
            let query = ListQuery::default();
            let mut body = JsonArray::new(PAGE as usize);
            page_each(conn, &query, PAGE, offset, &seek, |user| body.push(user))?;
            body.close();
            Ok((body.take(0), Some(count(conn, &query)?)))
        })
        .await;
    reply(read)
}

async fn refresh(body: bytes::Bytes, state: AppState) -> Response<Vec<u8>> {
    #[derive(serde::Deserialize)]
    struct Request {
        refresh: String,
    }
    let answer = async {
        let request: Request =
            serde_json::from_slice(&body).map_err(|e| ApiError::Internal(e.into()))?;
        let (claims, valid_after) = checked_refresh(&state, &request.refresh, true).await?;
        let id = claims.user_id().ok_or(ApiError::NotFound)?;
        let access = state
            .keys
            .issue(TokenType::Access, id, valid_after)
            .map_err(ApiError::Internal)?;
        serde_json::to_vec(&serde_json::json!({ "access": access.token }))
            .map_err(|e| ApiError::Internal(e.into()))
    };
    reply(answer.await.map(|body| (body, None)))
}

fn reply(read: Result<(Vec<u8>, Option<i64>), ApiError>) -> Response<Vec<u8>> {
    let (status, body, total) = match read {
        Ok((body, total)) => (StatusCode::OK, body, total),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, Vec::new(), None),
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        "content-type",
        warp::http::HeaderValue::from_static("application/json"),
    );
    if let Some(total) = total {
        headers.insert("x-total-count", total.into());
    }
    response
}
