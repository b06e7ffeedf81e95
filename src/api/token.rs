//! POST /api/token and POST /api/token/refresh: logging in and refreshing.

use serde_json::json;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;

use super::error::{ApiError, json_response};
use super::filters::{self, RawBody, with_state};
use crate::AppState;
use crate::auth::jwt::TokenType;
use crate::auth::password;
use crate::db;
use crate::model::{self, FieldErrors};

/// Passwords longer than this (in bytes) are refused without hashing.
pub const MAX_PASSWORD_BYTES: usize = 4096;

/// The token endpoints, each with its 405/OPTIONS answer.
pub fn routes(state: AppState, max_body: u64) -> BoxedFilter<(Response,)> {
    let obtain_path = || warp::path!("api" / "token");
    let refresh_path = || warp::path!("api" / "token" / "refresh");

    // POST /api/token
    let obtain = obtain_path()
        .and(warp::post())
        .and(filters::body(max_body))
        .and(with_state(state.clone()))
        .then(obtain)
        .map(filters::reply);

    // POST /api/token/refresh
    let refresh = refresh_path()
        .and(warp::post())
        .and(filters::body(max_body))
        .and(with_state(state))
        .then(refresh)
        .map(filters::reply);

    obtain
        .or(filters::other_methods(
            obtain_path(),
            "Token Obtain Pair",
            "POST, OPTIONS",
        ))
        .unify()
        .or(refresh)
        .unify()
        .or(filters::other_methods(
            refresh_path(),
            "Token Refresh",
            "POST, OPTIONS",
        ))
        .unify()
        .boxed()
}

/// Reads the named non-blank string fields of a JSON object body.
fn text_fields<const N: usize>(
    body: &RawBody,
    fields: [(&str, bool); N],
) -> Result<[String; N], ApiError> {
    let value = body.json()?;
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

async fn obtain(body: RawBody, state: AppState) -> Result<Response, ApiError> {
    let [username, password] = text_fields(&body, [("username", true), ("password", false)])?;
    if password.len() > MAX_PASSWORD_BYTES {
        // No stored password can be this long: refuse without hashing.
        return Err(ApiError::NoActiveAccount);
    }
    let iterations = state.config.auth.pbkdf2_iterations;
    let user_id = state
        .hashing(move |pool| check_credentials(pool, &username, &password, iterations))
        .await?;
    let pair = state.keys.issue_pair(user_id)?;
    Ok(json_response(StatusCode::OK, &json!(pair)))
}

/// Spends exactly one hash whether or not the username exists, and
/// upgrades the stored hash when it was made with other parameters.
fn check_credentials(
    pool: &db::Pool,
    username: &str,
    clear: &str,
    iterations: u32,
) -> Result<i64, ApiError> {
    // No connection is held while hashing.
    let account = db::users::by_username(&*pool.get()?, username)?;
    let Some(account) = account else {
        password::verify_dummy(clear, iterations);
        return Err(ApiError::NoActiveAccount);
    };
    if !password::verify(clear, &account.password_hash) || !account.is_active {
        return Err(ApiError::NoActiveAccount);
    }
    let id = account.user.id;
    if password::needs_rehash(&account.password_hash, iterations) {
        let upgraded = password::hash(clear, iterations).and_then(|new| {
            let mut conn = pool.get()?;
            db::users::upgrade_password_hash(&mut conn, id, &account.password_hash, &new)?;
            Ok(())
        });
        if let Err(err) = upgraded {
            // The login itself succeeded; the upgrade is retried next time.
            tracing::warn!(
                error = format!("{err:#}"),
                user_id = id,
                "password hash upgrade failed"
            );
        }
    }
    Ok(id)
}

async fn refresh(body: RawBody, state: AppState) -> Result<Response, ApiError> {
    let [token] = text_fields(&body, [("refresh", false)])?;
    let claims = state
        .keys
        .decode(&token, TokenType::Refresh)
        .map_err(ApiError::InvalidToken)?;
    let id = claims.user_id().ok_or(ApiError::NoActiveAccountForToken)?;
    let active = state
        .db(move |conn| db::users::active_staff_flag(conn, id))
        .await?;
    if active.is_none() {
        return Err(ApiError::NoActiveAccountForToken);
    }
    let access = state.keys.issue(TokenType::Access, id)?;
    Ok(json_response(StatusCode::OK, &json!({ "access": access })))
}
