//! /api/token...: logging in, refreshing (with optional rotation),
//! verifying and blacklisting tokens.

use std::net::IpAddr;
use std::sync::Arc;

use serde_json::json;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;

use super::error::{ApiError, json_response, json_typed};
use super::filters::{self, RawBody, client_address, with_state};
use crate::AppState;
use crate::auth::jwt::{Claims, TokenError, TokenType, now};
use crate::auth::password;
use crate::db;
use crate::db::tokens::{Issued, Rotation};
use crate::model::{self, FieldErrors};

/// Passwords longer than this (in bytes) are refused without hashing.
pub const MAX_PASSWORD_BYTES: usize = 4096;

/// The token endpoints, each with its 405/OPTIONS answer.
pub fn routes(state: AppState, max_body: u64) -> BoxedFilter<(Response,)> {
    let obtain_path = || warp::path!("api" / "token");
    let refresh_path = || warp::path!("api" / "token" / "refresh");
    let verify_path = || warp::path!("api" / "token" / "verify");
    let blacklist_path = || warp::path!("api" / "token" / "blacklist");

    // POST /api/token
    let obtain = obtain_path()
        .and(warp::post())
        .and(filters::body(max_body))
        .and(client_address(state.clone()))
        .and(with_state(state.clone()))
        .then(obtain)
        .map(filters::reply);

    // POST /api/token/refresh
    let refresh = refresh_path()
        .and(warp::post())
        .and(filters::body(max_body))
        .and(with_state(state.clone()))
        .then(refresh)
        .map(filters::reply);

    // POST /api/token/verify
    let verify = verify_path()
        .and(warp::post())
        .and(filters::body(max_body))
        .and(with_state(state.clone()))
        .then(verify)
        .map(filters::reply);

    // POST /api/token/blacklist
    let blacklist = blacklist_path()
        .and(warp::post())
        .and(filters::body(max_body))
        .and(with_state(state))
        .then(blacklist)
        .map(filters::reply);

    let post_only = "POST, OPTIONS";
    obtain
        .or(filters::other_methods(
            obtain_path(),
            "Token Obtain Pair",
            post_only,
        ))
        .unify()
        .or(refresh)
        .unify()
        .or(filters::other_methods(
            refresh_path(),
            "Token Refresh",
            post_only,
        ))
        .unify()
        .or(verify)
        .unify()
        .or(filters::other_methods(
            verify_path(),
            "Token Verify",
            post_only,
        ))
        .unify()
        .or(blacklist)
        .unify()
        .or(filters::other_methods(
            blacklist_path(),
            "Token Blacklist",
            post_only,
        ))
        .unify()
        .boxed()
}

/// Reads the named non-blank string fields of a JSON object body.
pub fn text_fields<const N: usize>(
    body: &RawBody,
    fields: [(&str, bool); N],
) -> Result<[String; N], ApiError> {
    // Well-formed bodies are read without a `Value`, under the same rules;
    // anything else goes through one, for its errors.
    if let Some(values) = body.strings(fields.map(|(field, _)| field)) {
        let clean: [Option<String>; N] = std::array::from_fn(|i| {
            model::clean_text(&values[i], fields[i].1)
                .ok()
                .map(str::to_owned)
        });
        if clean.iter().all(Option::is_some) {
            return Ok(clean.map(Option::unwrap_or_default));
        }
    }
    text_fields_of_value(body, fields)
}

/// [`text_fields`] through a [`serde_json::Value`], with every error.
fn text_fields_of_value<const N: usize>(
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

fn now_i64() -> i64 {
    i64::try_from(now()).unwrap_or(i64::MAX)
}

/// Logs in: a fresh access + refresh pair.
#[utoipa::path(post, path = "/api/token", tag = "tokens",
    request_body(content = super::openapi::Credentials, content_type = "application/json"),
    responses(
        (status = 200, description = "A new pair", body = crate::auth::jwt::Pair),
        (status = 401, description = "Wrong username or password, or inactive", body = super::openapi::Detail),
        (status = 429, description = "Too many attempts", body = super::openapi::Detail),
    ))]
async fn obtain(
    body: RawBody,
    address: Option<IpAddr>,
    state: AppState,
) -> Result<Response, ApiError> {
    let [username, password] = text_fields(&body, [("username", true), ("password", false)])?;
    state.throttle.check(&username, address)?;
    if password.len() > MAX_PASSWORD_BYTES {
        // No stored password can be this long: refuse without hashing.
        state.throttle.failed(&username, address);
        return Err(ApiError::NoActiveAccount);
    }
    let iterations = state.config.auth.pbkdf2_iterations;
    let checked_name = username.clone();
    let checked = state
        .hashing(move |pool| check_credentials(pool, &checked_name, &password, iterations))
        .await;
    if let Err(ApiError::NoActiveAccount) = checked {
        state.throttle.failed(&username, address);
    }
    let (user_id, valid_after) = checked?;
    let (pair, refresh) = state.keys.issue_pair(user_id, valid_after)?;
    if state.config.auth.rotate_refresh_tokens {
        state
            .write(move |conn| {
                Ok(db::tokens::record_login(
                    conn,
                    &issued(&refresh),
                    now_i64(),
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
/// Returns the user's id and `tokens_valid_after`.
fn check_credentials(
    pool: &db::Pool,
    username: &str,
    clear: &str,
    iterations: u32,
) -> Result<(i64, i64), ApiError> {
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
    Ok((id, account.tokens_valid_after))
}

/// Decodes a refresh token and checks it against the database: its user
/// exists and is active, it was not voided by a logout-all or password
/// change, and (`check_blacklist`) it is not blacklisted.
pub async fn checked_refresh(
    state: &AppState,
    token: &str,
    check_blacklist: bool,
) -> Result<(Arc<Claims>, i64), ApiError> {
    let claims = state
        .keys
        .decode(token, TokenType::Refresh)
        .map_err(ApiError::InvalidToken)?;
    let id = claims.user_id().ok_or(ApiError::NoActiveAccountForToken)?;
    // While the database is unchanged, what was read last time still holds
    // (see `crate::state::Known`).
    let at = match state.known.look(|kept| {
        let valid_after = kept.auth.get(&id)?.as_ref().map(|u| u.tokens_valid_after);
        let revoked = if check_blacklist {
            *kept.revoked.get(&claims.jti)?
        } else {
            false
        };
        Some((valid_after, revoked))
    }) {
        Ok((valid_after, revoked)) => return refresh_checks(claims, valid_after, revoked),
        Err(at) => at,
    };
    let jti = claims.jti.clone();
    let (user, revoked) = state
        .db(move |conn| {
            let user = db::users::auth_state(conn, id)?;
            let revoked = if check_blacklist {
                Some(db::tokens::is_revoked(conn, &jti)?)
            } else {
                None
            };
            Ok((user, revoked))
        })
        .await?;
    let valid_after = user.as_ref().map(|u| u.tokens_valid_after);
    state.known.keep(at, |kept| {
        kept.auth.insert(id, user);
        if let Some(revoked) = revoked {
            kept.revoked.insert(claims.jti.clone(), revoked);
        }
    });
    refresh_checks(claims, valid_after, revoked.unwrap_or(false))
}

/// [`checked_refresh`]'s verdict on what was read: the user's
/// `tokens_valid_after` (`None`: missing or inactive) and whether the
/// token is blacklisted.
fn refresh_checks(
    claims: Arc<Claims>,
    valid_after: Option<i64>,
    revoked: bool,
) -> Result<(Arc<Claims>, i64), ApiError> {
    if revoked {
        return Err(ApiError::InvalidToken(TokenError::Blacklisted));
    }
    let valid_after = valid_after.ok_or(ApiError::NoActiveAccountForToken)?;
    if claims.is_void(valid_after) {
        return Err(ApiError::InvalidToken(TokenError::Blacklisted));
    }
    Ok((claims, valid_after))
}

/// `{"access":"<token>"}`, byte for byte as serde_json writes it: a
/// signed token is base64url and dots, which JSON never escapes, so it is
/// copied in without serde_json's escape scan (about 2,400 instructions
/// a refresh, by callgrind).
fn access_body(token: &str) -> String {
    debug_assert!(
        token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    );
    let mut body = String::with_capacity(token.len() + 14);
    body.push_str(r#"{"access":""#);
    body.push_str(token);
    body.push_str(r#""}"#);
    body
}

/// A new access token (and, with rotation, a new refresh token).
#[utoipa::path(post, path = "/api/token/refresh", tag = "tokens",
    request_body(content = super::openapi::RefreshRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "A new access token", body = super::openapi::Refreshed),
        (status = 401, description = "A bad, expired, blacklisted or wrong-type token", body = super::openapi::AuthError),
    ))]
async fn refresh(body: RawBody, state: AppState) -> Result<Response, ApiError> {
    let [token] = text_fields(&body, [("refresh", false)])?;
    let rotate = state.config.auth.rotate_refresh_tokens;
    // Under rotation the blacklist check happens inside `rotate`, in the
    // same transaction as the retirement.
    let (claims, valid_after) = checked_refresh(&state, &token, !rotate).await?;
    let id = claims.user_id().ok_or(ApiError::NoActiveAccountForToken)?;
    if !rotate {
        let access = state.keys.issue(TokenType::Access, id, valid_after)?.token;
        return Ok(json_typed(Response::new(access_body(&access).into())));
    }
    let (pair, new) = state.keys.issue_pair(id, valid_after)?;
    let grace = i64::try_from(state.config.auth.rotation_grace_period).unwrap_or(i64::MAX);
    let outcome = state
        .write(move |conn| {
            Ok(db::tokens::rotate(
                conn,
                &issued(&claims),
                &issued(&new),
                now_i64(),
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
#[utoipa::path(post, path = "/api/token/verify", tag = "tokens",
    request_body(content = super::openapi::VerifyRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Valid", body = super::openapi::Empty),
        (status = 401, description = "Not valid", body = super::openapi::AuthError),
    ))]
async fn verify(body: RawBody, state: AppState) -> Result<Response, ApiError> {
    let [token] = text_fields(&body, [("token", false)])?;
    let claims = state
        .keys
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
            .db(move |conn| db::users::auth_state(conn, id))
            .await?
            .ok_or(ApiError::InvalidToken(TokenError::Invalid))?;
        if claims.is_void(user.tokens_valid_after) {
            return Err(ApiError::InvalidToken(TokenError::Blacklisted));
        }
    }
    Ok(json_response(StatusCode::OK, &json!({})))
}

/// Logs out: the refresh token never works again.
#[utoipa::path(post, path = "/api/token/blacklist", tag = "tokens",
    request_body(content = super::openapi::RefreshRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Blacklisted", body = super::openapi::Empty),
        (status = 401, description = "A bad or already blacklisted token", body = super::openapi::AuthError),
    ))]
async fn blacklist(body: RawBody, state: AppState) -> Result<Response, ApiError> {
    let [token] = text_fields(&body, [("refresh", false)])?;
    let claims = state
        .keys
        .decode(&token, TokenType::Refresh)
        .map_err(ApiError::InvalidToken)?;
    let newly = state
        .write(move |conn| Ok(db::tokens::blacklist(conn, &issued(&claims), now_i64())?))
        .await?;
    if !newly {
        return Err(ApiError::InvalidToken(TokenError::Blacklisted));
    }
    Ok(json_response(StatusCode::OK, &json!({})))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a result says, comparable.
    fn said(result: Result<[String; 2], ApiError>) -> String {
        match result {
            Ok(values) => format!("ok {values:?}"),
            Err(ApiError::Validation(errors)) => format!("invalid {errors:?}"),
            Err(err) => format!("error {err:?}"),
        }
    }

    #[test]
    fn text_fields_read_without_a_value_answer_as_through_one() {
        let bodies: &[&str] = &[
            r#"{"username":"ann","password":"pw"}"#,
            r#"{"password":"pw","username":"  ann  ","extra":[1,{"a":null}]}"#,
            r#"{"username":"a\u006en","password":"p\"w"}"#,
            r#"{"username":"ann","password":"pw","username":"bob"}"#,
            r#"{"username":1,"password":"pw","username":"bob"}"#,
            r#"{"username":"bob","password":"pw","username":1}"#,
            r#"{"username":"   ","password":"pw"}"#,
            r#"{"username":"ann","password":""}"#,
            r#"{"username":"ann","password":"p\u0000w"}"#,
            r#"{"username":"ann"}"#,
            r#"{"username":null,"password":"pw"}"#,
            r#"{"username":"ann","password":"pw"} x"#,
            r#"{"username":"ann","password":"pw""#,
            r#"["username","password"]"#,
            r#""text""#,
            "",
        ];
        for body in bodies {
            for content_type in [
                "application/json",
                "Application/JSON; charset=utf-8",
                "text/plain",
            ] {
                let raw = RawBody::for_test(content_type, body);
                let fields = [("username", true), ("password", false)];
                assert_eq!(
                    said(text_fields(&raw, fields)),
                    said(text_fields_of_value(&raw, fields)),
                    "{content_type}: {body}"
                );
            }
        }
        let raw = RawBody::for_test(
            "application/json",
            r#"{"username":" ann ","password":" pw "}"#,
        );
        assert_eq!(
            text_fields(&raw, [("username", true), ("password", false)]).unwrap(),
            ["ann".to_owned(), " pw ".to_owned()]
        );
    }

    #[test]
    fn the_access_body_is_what_serde_json_writes() {
        let token = "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.eyJ0b2tlbl90eXBlIjoiYWNjZXNzIn0.a-b_c";
        assert_eq!(access_body(token), json!({"access": token}).to_string());
    }
}
