//! Staff-only account actions on another user (what the admin page needs),
//! as DRF `@action(detail=True)` routes under `/api/users/{id}/`:
//! the private flags, setting a password, activating and deactivating,
//! logging out everywhere. Each answers 401 without a valid token, 403 to
//! a non-staff caller, 404 for an unknown id.

use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;

use super::error::{ApiError, json_response, no_content};
use super::filters::{self, Caller, RawBody, authenticated, first_of, get_or_head, with_state};
use crate::AppState;
use crate::auth::password;
use crate::db;
use crate::model::{timestamp_now, unix_now};

/// The four paths, each with its 405/OPTIONS answer.
pub fn routes(state: AppState, max_body: u64) -> BoxedFilter<(Response,)> {
    let account = || warp::path!("api" / "users" / i64 / "account");
    let password = || warp::path!("api" / "users" / i64 / "password");
    let activate = || warp::path!("api" / "users" / i64 / "activate");
    let deactivate = || warp::path!("api" / "users" / i64 / "deactivate");
    let logout_all = || warp::path!("api" / "users" / i64 / "logout-all");
    let untuple = |p: BoxedFilter<(i64,)>| p.map(|_| ()).untuple_one();
    let auth = || authenticated(state.clone());
    let state_ = || with_state(state.clone());
    first_of![
        account()
            .and(get_or_head())
            .and(auth())
            .and(state_())
            .then(get_account)
            .map(filters::reply),
        filters::other_methods(
            untuple(account().boxed()),
            "User Account",
            "GET, HEAD, OPTIONS"
        ),
        password()
            .and(warp::post())
            .and(auth())
            .and(filters::body(max_body))
            .and(state_())
            .then(set_password)
            .map(filters::reply),
        filters::other_methods(
            untuple(password().boxed()),
            "User Password",
            "POST, OPTIONS"
        ),
        activate()
            .and(warp::post())
            .and(auth())
            .and(state_())
            .then(|id, caller, state| set_active(id, caller, state, true))
            .map(filters::reply),
        filters::other_methods(
            untuple(activate().boxed()),
            "User Activate",
            "POST, OPTIONS"
        ),
        deactivate()
            .and(warp::post())
            .and(auth())
            .and(state_())
            .then(|id, caller, state| set_active(id, caller, state, false))
            .map(filters::reply),
        filters::other_methods(
            untuple(deactivate().boxed()),
            "User Deactivate",
            "POST, OPTIONS"
        ),
        logout_all()
            .and(warp::post())
            .and(auth())
            .and(state_())
            .then(log_out_everywhere)
            .map(filters::reply),
        filters::other_methods(
            untuple(logout_all().boxed()),
            "User Logout All",
            "POST, OPTIONS"
        ),
    ]
    .boxed()
}

fn staff(caller: &Caller) -> Result<(), ApiError> {
    if caller.is_staff {
        Ok(())
    } else {
        Err(ApiError::Forbidden)
    }
}

/// `{"id", "is_staff", "is_active"}`: what the public rendering leaves out.
async fn get_account(id: i64, caller: Caller, state: AppState) -> Result<Response, ApiError> {
    staff(&caller)?;
    let account = state
        .read(move |conn| -> Result<_, ApiError> { Ok(db::users::by_id(conn, id)?) })
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({
            "id": account.user.id,
            "is_staff": account.is_staff,
            "is_active": account.is_active,
        }),
    ))
}

/// Sets the user's password (`{"new_password"}`, Django's rules); every
/// token they hold stops working.
async fn set_password(
    id: i64,
    caller: Caller,
    body: RawBody,
    state: AppState,
) -> Result<Response, ApiError> {
    staff(&caller)?;
    let [new] = body.text_fields([("new_password", false)])?;
    let account = state
        .read(move |conn| -> Result<_, ApiError> { Ok(db::users::by_id(conn, id)?) })
        .await?
        .ok_or(ApiError::NotFound)?;
    let problems = crate::model::validate::password(
        &new,
        Some(&account.user.username),
        Some(&account.user.email),
    );
    if !problems.is_empty() {
        return Err(ApiError::Validation(
            [("new_password".to_owned(), problems)].into(),
        ));
    }
    let iterations = state.config.auth.pbkdf2_iterations;
    let hash = state
        .hashing(move || password::hash(&new, iterations))
        .await?
        .map_err(ApiError::Internal)?;
    let found = state
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
    if found {
        Ok(no_content())
    } else {
        Err(ApiError::NotFound)
    }
}

/// Activates or deactivates the user (deactivation voids their tokens).
async fn set_active(
    id: i64,
    caller: Caller,
    state: AppState,
    active: bool,
) -> Result<Response, ApiError> {
    act(caller, state, move |conn| {
        db::users::set_active(conn, id, active, unix_now(), &timestamp_now())
    })
    .await
}

/// Voids every token the user holds.
async fn log_out_everywhere(
    id: i64,
    caller: Caller,
    state: AppState,
) -> Result<Response, ApiError> {
    act(caller, state, move |conn| {
        db::users::revoke_tokens(conn, id, unix_now())
    })
    .await
}

/// Runs a staff action's write: 204, or 404 when it found no such user.
async fn act(
    caller: Caller,
    state: AppState,
    write: impl FnOnce(&mut db::Conn<'_>) -> db::Result<bool> + Send + 'static,
) -> Result<Response, ApiError> {
    staff(&caller)?;
    let found = state
        .write(move |conn| -> Result<_, ApiError> { Ok(write(conn)?) })
        .await?;
    if found {
        Ok(no_content())
    } else {
        Err(ApiError::NotFound)
    }
}
