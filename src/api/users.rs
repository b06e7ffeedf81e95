//! /api/users...: registration, listing, reading and editing users.

use std::str::FromStr;

use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{HeaderValue, StatusCode};
use warp::reply::{Reply, Response};

use super::error::{ApiError, ResultExt, no_content};
use super::filters::{
    self, Bearer, Caller, RawBody, authenticated, authorize, client_address, first_of, get_or_head,
    with_state,
};
use super::listing;
use super::token::MAX_PASSWORD_BYTES;
use crate::AppState;
use crate::auth::password;
use crate::db;
use crate::model::{
    EMAIL_TAKEN, NewUser, ParsedUser, Required, Status, USERNAME_TAKEN, User, parse_user_body,
    timestamp_now, unix_now,
};
use crate::state::throttle::Who;

/// A path segment naming one user: anything but `me`, which has its own
/// routes. Parsed into an id after authentication, as DRF looks up the
/// object only once the caller is known (so `/api/users/abc` is 401 without
/// a token and 404 with one).
#[derive(Debug, Clone)]
pub struct UserRef(String);

impl FromStr for UserRef {
    type Err = ();
    fn from_str(segment: &str) -> Result<Self, ()> {
        if segment == "me" {
            Err(())
        } else {
            Ok(UserRef(segment.to_owned()))
        }
    }
}

impl UserRef {
    fn id(&self) -> Result<i64, ApiError> {
        self.0
            .parse::<i64>()
            .ok()
            .filter(|id| *id > 0)
            .ok_or(ApiError::NotFound)
    }
}

/// The user endpoints, each path with its 405/OPTIONS answer.
pub fn routes(state: AppState, max_body: u64) -> BoxedFilter<(Response,)> {
    let list_path = || warp::path!("api" / "users");
    let me_path = || warp::path!("api" / "users" / "me");
    let password_path = || warp::path!("api" / "users" / "me" / "password");
    let logout_all_path = || warp::path!("api" / "users" / "me" / "logout-all");
    let one_path = || warp::path!("api" / "users" / UserRef);
    let one_path_only = || one_path().map(|_| ()).untuple_one();
    let auth = || authenticated(state.clone());
    let bearer = || filters::bearer(state.clone());
    let body = || filters::body(max_body);
    let state_ = || with_state(state.clone());
    first_of![
        // GET /api/users
        listing::list_route(state.clone()),
        // POST /api/users
        list_path()
            .and(warp::post())
            .and(filters::header("authorization"))
            .and(body())
            .and(state_())
            .then(create)
            .map(filters::reply),
        filters::other_methods(list_path(), "User List", "GET, POST, HEAD, OPTIONS"),
        // GET /api/users/me
        me_path()
            .and(get_or_head())
            .and(bearer())
            .and(state_())
            .then(get_me)
            .map(filters::reply),
        // POST /api/users/me/password
        password_path()
            .and(warp::post())
            .and(auth())
            .and(body())
            .and(client_address(state.clone()))
            .and(state_())
            .then(change_password)
            .map(filters::reply),
        filters::other_methods(password_path(), "Password Change", "POST, OPTIONS"),
        // POST /api/users/me/logout-all
        logout_all_path()
            .and(warp::post())
            .and(auth())
            .and(state_())
            .then(logout_all)
            .map(filters::reply),
        filters::other_methods(logout_all_path(), "Logout All", "POST, OPTIONS"),
        filters::other_methods(me_path(), "User Me", "GET, HEAD, OPTIONS"),
        // GET /api/users/{id}
        one_path()
            .and(get_or_head())
            .and(bearer())
            .and(state_())
            .then(get_user)
            .map(filters::reply),
        // PUT /api/users/{id}
        one_path()
            .and(warp::put())
            .and(bearer())
            .and(body())
            .and(state_())
            .then(put_user)
            .map(filters::reply),
        // PATCH /api/users/{id}
        one_path()
            .and(warp::patch())
            .and(bearer())
            .and(body())
            .and(state_())
            .then(patch_user)
            .map(filters::reply),
        // DELETE /api/users/{id}
        one_path()
            .and(warp::delete())
            .and(bearer())
            .and(state_())
            .then(delete)
            .map(filters::reply),
        filters::other_methods(
            one_path_only(),
            "User Instance",
            "GET, PUT, PATCH, DELETE, HEAD, OPTIONS"
        ),
    ]
    .boxed()
}

fn user_reply(status: StatusCode, user: &User) -> Response {
    warp::reply::with_status(warp::reply::json(user), status).into_response()
}

/// The caller.
async fn get_me(bearer: Bearer, state: AppState) -> Result<Response, ApiError> {
    let account = state
        .read(move |conn| -> Result<_, ApiError> {
            let caller = authorize(conn, &bearer)?;
            Ok(db::users::by_id(conn, caller.id)?)
        })
        .await?
        .ok_or(ApiError::UserNotFound)?;
    Ok(user_reply(StatusCode::OK, &account.user))
}

/// One user.
async fn get_user(user: UserRef, bearer: Bearer, state: AppState) -> Result<Response, ApiError> {
    let account = state
        .read(move |conn| -> Result<_, ApiError> {
            authorize(conn, &bearer)?;
            Ok(db::users::by_id(conn, user.id()?)?)
        })
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(user_reply(StatusCode::OK, &account.user))
}

/// Replaces the writable fields; `username` and `email` are required.
async fn put_user(
    user: UserRef,
    bearer: Bearer,
    body: RawBody,
    state: AppState,
) -> Result<Response, ApiError> {
    update(user, bearer, body, state, Required::Full).await
}

/// Changes any subset of the writable fields.
async fn patch_user(
    user: UserRef,
    bearer: Bearer,
    body: RawBody,
    state: AppState,
) -> Result<Response, ApiError> {
    update(user, bearer, body, state, Required::Partial).await
}

/// Adds "already exists" errors for the given username / email held by
/// another user than `except`: DRF reports them with the other field errors.
fn add_taken_errors(
    conn: &mut db::Conn<'_>,
    parsed: &mut ParsedUser,
    except: Option<i64>,
) -> Result<(), ApiError> {
    let username = parsed.changes.username.as_deref();
    let email = parsed.changes.email.as_deref();
    if username.is_none() && email.is_none() {
        return Ok(());
    }
    let (username_taken, email_taken) = db::users::taken(conn, username, email, except)?;
    parsed.add_taken(username_taken, email_taken);
    Ok(())
}

/// Registration (staff only when `registration.open` is false).
async fn create(
    authorization: Option<HeaderValue>,
    body: RawBody,
    state: AppState,
) -> Result<Response, ApiError> {
    if !state.config.registration.open {
        // Closed registration: only staff create users. No credentials at
        // all is a 403 too, as the config documents.
        match filters::authenticate(&state, authorization.as_ref()).await {
            Ok(caller) if caller.is_staff => {}
            Ok(_) | Err(ApiError::NotAuthenticated) => return Err(ApiError::Forbidden),
            Err(err) => return Err(err),
        }
    }
    let value = body.json()?;
    let mut parsed =
        parse_user_body(&value, Required::Registration).map_err(ApiError::Validation)?;
    parsed = state
        .read(move |conn| {
            add_taken_errors(conn, &mut parsed, None)?;
            Ok::<_, ApiError>(parsed)
        })
        .await?;
    let ParsedUser {
        changes,
        password: clear,
        errors,
    } = parsed;
    let (Some(username), Some(email), Some(clear), true) =
        (changes.username, changes.email, clear, errors.is_empty())
    else {
        return Err(ApiError::Validation(errors));
    };
    let iterations = state.config.auth.pbkdf2_iterations;
    let password_hash = state
        .hashing(move || password::hash(&clear, iterations))
        .await??;
    let new = NewUser {
        username,
        email,
        password_hash,
        level: changes.level.unwrap_or(1),
        status: changes.status.unwrap_or(Status::Offline),
        profile_picture: changes.profile_picture.unwrap_or_default(),
        is_staff: false,
    };
    let user = state
        .write(move |conn| -> Result<_, ApiError> {
            Ok(db::users::insert(conn, &new, &timestamp_now())?)
        })
        .await
        .on_constraint("users.username", "username", USERNAME_TAKEN)
        .on_constraint("users.email", "email", EMAIL_TAKEN)?;
    Ok(user_reply(StatusCode::CREATED, &user))
}

/// Checks the caller, loads the target (404), checks the caller may edit
/// it (403): the order DRF's `get_object` uses.
fn editable_target(
    conn: &mut db::Conn<'_>,
    bearer: &Bearer,
    user: &UserRef,
) -> Result<i64, ApiError> {
    let caller = authorize(conn, bearer)?;
    let id = user.id()?;
    if db::users::by_id(conn, id)?.is_none() {
        return Err(ApiError::NotFound);
    }
    if caller.id != id && !caller.is_staff {
        return Err(ApiError::Forbidden);
    }
    Ok(id)
}

/// PUT and PATCH: the body is parsed first, its errors reported after 404
/// and 403 (DRF reads it only then); one trip to the writer.
async fn update(
    user: UserRef,
    bearer: Bearer,
    body: RawBody,
    state: AppState,
    required: Required,
) -> Result<Response, ApiError> {
    let parsed = body
        .json()
        .and_then(|value| parse_user_body(&value, required).map_err(ApiError::Validation));
    let updated = state
        .write(move |conn| {
            let id = editable_target(conn, &bearer, &user)?;
            let mut parsed = parsed?;
            add_taken_errors(conn, &mut parsed, Some(id))?;
            if !parsed.errors.is_empty() {
                return Err(ApiError::Validation(parsed.errors));
            }
            db::users::update(conn, id, &parsed.changes, &timestamp_now())?
                .ok_or(ApiError::NotFound)
        })
        .await
        .on_constraint("users.username", "username", USERNAME_TAKEN)
        .on_constraint("users.email", "email", EMAIL_TAKEN)?;
    Ok(user_reply(StatusCode::OK, &updated))
}

/// Deletes the user for good; their id is never reused.
async fn delete(user: UserRef, bearer: Bearer, state: AppState) -> Result<Response, ApiError> {
    state
        .write(move |conn| -> Result<_, ApiError> {
            let id = editable_target(conn, &bearer, &user)?;
            if !db::users::delete(conn, id)? {
                return Err(ApiError::NotFound);
            }
            Ok(())
        })
        .await?;
    Ok(no_content())
}

/// Voids every token of the caller issued until now.
async fn logout_all(caller: Caller, state: AppState) -> Result<Response, ApiError> {
    state
        .write(move |conn| -> Result<_, ApiError> {
            // The instant is taken inside the write: a token minted from a
            // read before it commits carries an earlier `iat`.
            Ok(db::users::revoke_tokens(conn, caller.id, unix_now())?)
        })
        .await?;
    Ok(no_content())
}

/// The message Django's password change form gives for a wrong old password.
pub const WRONG_OLD_PASSWORD: &str =
    "Your old password was entered incorrectly. Please enter it again.";

/// Changes the caller's password; every earlier token stops working.
async fn change_password(
    caller: Caller,
    body: RawBody,
    address: Option<std::net::IpAddr>,
    state: AppState,
) -> Result<Response, ApiError> {
    let [old, new] = body.text_fields([("old_password", false), ("new_password", false)])?;
    // Keyed by the user's id: a new username gets no new budget.
    let who = Who::Id(caller.id);
    let _turn = state.throttle.turn(&who).await;
    let throttled = |wait| ApiError::Throttled { wait };
    state.throttle.admit(&who, address).map_err(throttled)?;
    if old.len() > MAX_PASSWORD_BYTES {
        state.throttle.failed(&who);
        return Err(ApiError::field("old_password", WRONG_OLD_PASSWORD));
    }
    let id = caller.id;
    let account = state
        .read(move |conn| -> Result<_, ApiError> { Ok(db::users::by_id(conn, id)?) })
        .await?
        .ok_or(ApiError::UserNotFound)?;
    let problems = crate::model::validate::password(
        &new,
        Some(&account.user.username),
        Some(&account.user.email),
    );
    let iterations = state.config.auth.pbkdf2_iterations;
    let stored = account.password_hash;
    let hashed = state
        .hashing(move || {
            let matches = password::verify_at_our_cost(&old, &stored, iterations);
            let hash = (matches && problems.is_empty()).then(|| password::hash(&new, iterations));
            (matches, problems, hash)
        })
        .await?;
    let hash = match hashed {
        (false, _, _) => {
            state.throttle.failed(&who);
            return Err(ApiError::field("old_password", WRONG_OLD_PASSWORD));
        }
        (true, problems, None) => {
            return Err(ApiError::Validation(
                [("new_password".to_owned(), problems)].into(),
            ));
        }
        (true, _, Some(hash)) => hash?,
    };
    state
        .write(move |conn| -> Result<_, ApiError> {
            Ok(db::users::set_password_hash(
                conn,
                id,
                &hash,
                unix_now(),
                &timestamp_now(),
            )?)
        })
        .await?;
    Ok(no_content())
}
