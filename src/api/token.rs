//! /api/token...: logging in, refreshing (with optional rotation),
//! verifying and blacklisting tokens.

use std::net::IpAddr;

use serde_json::json;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;

use super::error::{ApiError, json_response};
use super::filters::{self, RawBody, client_address, first_of, with_state};
use crate::AppState;
use crate::auth::jwt::{Claims, TokenError, TokenType};
use crate::auth::password;
use crate::db;
use crate::db::tokens::{Issued, Rotation};
use crate::model::unix_now;
use crate::state::throttle::Who;

/// Passwords longer than this (in bytes) are refused without hashing.
pub const MAX_PASSWORD_BYTES: usize = 4096;

/// The token endpoints, each with its 405/OPTIONS answer.
pub fn routes(state: AppState, max_body: u64) -> BoxedFilter<(Response,)> {
    let obtain_path = || warp::path!("api" / "token");
    let refresh_path = || warp::path!("api" / "token" / "refresh");
    let verify_path = || warp::path!("api" / "token" / "verify");
    let blacklist_path = || warp::path!("api" / "token" / "blacklist");
    let post = || warp::post().and(filters::body(max_body));
    let state_ = || with_state(state.clone());
    let post_only = "POST, OPTIONS";
    first_of![
        // POST /api/token
        obtain_path()
            .and(post())
            .and(client_address(state.clone()))
            .and(state_())
            .then(obtain)
            .map(filters::reply),
        filters::other_methods(obtain_path(), "Token Obtain Pair", post_only),
        // POST /api/token/refresh
        refresh_path()
            .and(post())
            .and(state_())
            .then(refresh)
            .map(filters::reply),
        filters::other_methods(refresh_path(), "Token Refresh", post_only),
        // POST /api/token/verify
        verify_path()
            .and(post())
            .and(state_())
            .then(verify)
            .map(filters::reply),
        filters::other_methods(verify_path(), "Token Verify", post_only),
        // POST /api/token/blacklist
        blacklist_path()
            .and(post())
            .and(state_())
            .then(blacklist)
            .map(filters::reply),
        filters::other_methods(blacklist_path(), "Token Blacklist", post_only),
    ]
    .boxed()
}

/// Logs in: a fresh access + refresh pair.
async fn obtain(
    body: RawBody,
    address: Option<IpAddr>,
    state: AppState,
) -> Result<Response, ApiError> {
    let [username, password] = body.text_fields([("username", true), ("password", false)])?;
    let who = Who::name(&username);
    let _turn = state.throttle.turn(&who).await;
    state
        .throttle
        .admit(&who, address)
        .map_err(|wait| ApiError::Throttled { wait })?;
    if password.len() > MAX_PASSWORD_BYTES {
        // No stored password can be this long: refuse without hashing.
        state.throttle.failed(&who);
        return Err(ApiError::NoActiveAccount);
    }
    let checked = check_credentials(&state, username.clone(), password).await;
    if let Err(ApiError::NoActiveAccount) = checked {
        state.throttle.failed(&who);
    }
    let (user_id, valid_after) = checked?;
    let (pair, refresh) = state.keys().issue_pair(user_id, valid_after)?;
    if state.config.auth.rotate_refresh_tokens {
        state
            .write(move |conn| -> Result<_, ApiError> {
                Ok(db::tokens::record_login(
                    conn,
                    &issued(&refresh),
                    unix_now(),
                )?)
            })
            .await?;
    }
    Ok(json_response(StatusCode::OK, &json!(pair)))
}

fn issued(claims: &Claims) -> Issued<'_> {
    Issued {
        jti: &claims.jti,
        user_id: claims.user_id().unwrap_or(0),
        expires_at: claims.expires_at(),
    }
}

/// Spends exactly one hash whether or not the username exists, and
/// upgrades the stored hash when it was made with other parameters.
/// Returns the user's id and `tokens_valid_after`, read again after the
/// hash: a password change or deactivation that committed meanwhile
/// refuses the login.
async fn check_credentials(
    state: &AppState,
    username: String,
    clear: String,
) -> Result<(i64, i64), ApiError> {
    let iterations = state.config.auth.pbkdf2_iterations;
    let account = state
        .read(move |conn| -> Result<_, ApiError> { Ok(db::users::by_username(conn, &username)?) })
        .await?;
    let Some(account) = account else {
        state
            .hashing(move || password::verify_dummy(&clear, iterations))
            .await?;
        return Err(ApiError::NoActiveAccount);
    };
    let stored = account.password_hash.clone();
    let (matches, upgrade) = state
        .hashing(move || {
            let matches = password::verify_at_our_cost(&clear, &stored, iterations);
            let upgrade = (matches && password::needs_rehash(&stored, iterations))
                .then(|| password::hash(&clear, iterations));
            (matches, upgrade)
        })
        .await?;
    if !matches || !account.is_active {
        return Err(ApiError::NoActiveAccount);
    }
    let id = account.user.id;
    let verified = account.password_hash;
    let current = state
        .read(move |conn| -> Result<_, ApiError> { Ok(db::users::by_id(conn, id)?) })
        .await?
        .filter(|now| now.is_active && now.password_hash == verified)
        .ok_or(ApiError::NoActiveAccount)?;
    if let Some(upgraded) = upgrade {
        let upgraded = state
            .write(move |conn| -> Result<bool, ApiError> {
                Ok(db::users::upgrade_password_hash(
                    conn,
                    id,
                    &current.password_hash,
                    &upgraded?,
                )?)
            })
            .await;
        if let Err(err) = upgraded {
            // The login itself succeeded; the upgrade is retried next time.
            tracing::warn!(error = ?err, user_id = id, "password hash upgrade failed");
        }
    }
    Ok((id, current.tokens_valid_after))
}

/// Decodes a refresh token and checks it against the database: its user
/// exists and is active, it was not voided by a logout-all or password
/// change, and (`check_blacklist`) it is not blacklisted.
pub async fn checked_refresh(
    state: &AppState,
    token: &str,
    check_blacklist: bool,
) -> Result<(Claims, i64), ApiError> {
    let claims = state
        .keys()
        .decode(token, TokenType::Refresh)
        .map_err(ApiError::InvalidToken)?;
    let id = claims.user_id().ok_or(ApiError::NoActiveAccountForToken)?;
    let jti = claims.jti.clone();
    let grace = i64::try_from(state.config.auth.rotation_grace_period).unwrap_or(i64::MAX);
    let (user, revoked) = state
        .read(move |conn| -> Result<_, ApiError> {
            let user = db::users::auth_state(conn, id)?;
            let revoked = check_blacklist && db::tokens::is_revoked(conn, &jti, unix_now(), grace)?;
            Ok((user, revoked))
        })
        .await?;
    if revoked {
        return Err(ApiError::InvalidToken(TokenError::Blacklisted));
    }
    let valid_after = user
        .ok_or(ApiError::NoActiveAccountForToken)?
        .tokens_valid_after;
    if claims.is_void(valid_after) {
        return Err(ApiError::InvalidToken(TokenError::Blacklisted));
    }
    Ok((claims, valid_after))
}

/// A new access token (and, with rotation, a new refresh token).
async fn refresh(body: RawBody, state: AppState) -> Result<Response, ApiError> {
    let [token] = body.text_fields([("refresh", false)])?;
    let rotate = state.config.auth.rotate_refresh_tokens;
    // Under rotation the blacklist check happens inside `rotate`, in the
    // same transaction as the retirement.
    let (claims, valid_after) = checked_refresh(&state, &token, !rotate).await?;
    let id = claims.user_id().ok_or(ApiError::NoActiveAccountForToken)?;
    if !rotate {
        let access = state
            .keys()
            .issue(TokenType::Access, id, valid_after)?
            .token;
        return Ok(json_response(StatusCode::OK, &json!({ "access": access })));
    }
    let (pair, new) = state.keys().issue_pair(id, valid_after)?;
    let grace = i64::try_from(state.config.auth.rotation_grace_period).unwrap_or(i64::MAX);
    let outcome = state
        .write(move |conn| -> Result<_, ApiError> {
            Ok(db::tokens::rotate(
                conn,
                &issued(&claims),
                &issued(&new),
                unix_now(),
                grace,
            )?)
        })
        .await?;
    match outcome {
        Rotation::Rotated => Ok(json_response(StatusCode::OK, &json!(pair))),
        Rotation::Revoked => Err(ApiError::InvalidToken(TokenError::Blacklisted)),
        Rotation::ReuseDetected => {
            tracing::warn!(
                user_id = id,
                "retired refresh token reused after the grace window: family revoked"
            );
            Err(ApiError::InvalidToken(TokenError::Blacklisted))
        }
    }
}

/// Whether a token of either type is valid.
async fn verify(body: RawBody, state: AppState) -> Result<Response, ApiError> {
    let [token] = body.text_fields([("token", false)])?;
    let claims = state
        .keys()
        .decode_any(&token)
        .map_err(ApiError::InvalidToken)?;
    if claims.token_type == TokenType::Refresh.as_str() {
        checked_refresh(&state, &token, true)
            .await
            .map_err(|err| match err {
                ApiError::NoActiveAccountForToken => ApiError::InvalidToken(TokenError::Invalid),
                other => other,
            })?;
    } else {
        let id = claims
            .user_id()
            .ok_or(ApiError::InvalidToken(TokenError::Invalid))?;
        let user = state
            .read(move |conn| -> Result<_, ApiError> { Ok(db::users::auth_state(conn, id)?) })
            .await?
            .ok_or(ApiError::InvalidToken(TokenError::Invalid))?;
        if claims.is_void(user.tokens_valid_after) {
            return Err(ApiError::InvalidToken(TokenError::Blacklisted));
        }
    }
    Ok(json_response(StatusCode::OK, &json!({})))
}

/// Logs out: the refresh token never works again.
async fn blacklist(body: RawBody, state: AppState) -> Result<Response, ApiError> {
    let [token] = body.text_fields([("refresh", false)])?;
    let claims = state
        .keys()
        .decode(&token, TokenType::Refresh)
        .map_err(ApiError::InvalidToken)?;
    let newly = state
        .write(move |conn| -> Result<_, ApiError> {
            Ok(db::tokens::blacklist(conn, &issued(&claims), unix_now())?)
        })
        .await?;
    if !newly {
        return Err(ApiError::InvalidToken(TokenError::Blacklisted));
    }
    Ok(json_response(StatusCode::OK, &json!({})))
}
