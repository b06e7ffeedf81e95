//! /api/users...: registration, listing, reading and editing users.

use std::str::FromStr;

use bytes::Bytes;

use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

use super::error::{ApiError, ResultExt, json_typed};
use super::filters::{
    self, Bearer, Caller, RawBody, admit, authenticated, authorize, client_address, get_or_head,
    with_state,
};
use super::token::{MAX_PASSWORD_BYTES, text_fields};
use crate::AppState;
use crate::auth::password;
use crate::db;
use crate::db::users::{ListQuery, SortColumn};
use crate::model::{
    EMAIL_TAKEN, NewUser, ParsedUser, Required, Status, USERNAME_TAKEN, User, UserView,
    parse_user_body, timestamp_now,
};
use crate::state::Page;
use warp::http::HeaderValue;

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
    let one_path = || warp::path!("api" / "users" / UserRef);
    let one_path_only = || one_path().map(|_| ()).untuple_one();
    let auth = || authenticated(state.clone());
    let bearer = || filters::bearer(state.clone());
    let state_ = || with_state(state.clone());

    // GET /api/users
    let list = list_path()
        .and(get_or_head())
        .and(bearer())
        .and(warp::query::<Vec<(String, String)>>())
        .and(state_())
        .then(list)
        .map(filters::reply);

    // POST /api/users
    let create = list_path()
        .and(warp::post())
        .and(filters::authorization())
        .and(filters::body(max_body))
        .and(state_())
        .then(create)
        .map(filters::reply);

    // POST /api/users/me/password
    let password_path = || warp::path!("api" / "users" / "me" / "password");
    let change_password = password_path()
        .and(warp::post())
        .and(auth())
        .and(filters::body(max_body))
        .and(client_address(state.clone()))
        .and(state_())
        .then(change_password)
        .map(filters::reply);

    // POST /api/users/me/logout-all
    let logout_all_path = || warp::path!("api" / "users" / "me" / "logout-all");
    let logout_all = logout_all_path()
        .and(warp::post())
        .and(auth())
        .and(state_())
        .then(logout_all)
        .map(filters::reply);

    // GET /api/users/me
    let me = me_path()
        .and(get_or_head())
        .and(bearer())
        .and(state_())
        .then(get_me)
        .map(filters::reply);

    // GET /api/users/{id}
    let get_one = one_path()
        .and(get_or_head())
        .and(bearer())
        .and(state_())
        .then(get_user)
        .map(filters::reply);

    // PUT /api/users/{id}
    let put = one_path()
        .and(warp::put())
        .and(bearer())
        .and(filters::body(max_body))
        .and(state_())
        .then(put_user)
        .map(filters::reply);

    // PATCH /api/users/{id}
    let patch = one_path()
        .and(warp::patch())
        .and(bearer())
        .and(filters::body(max_body))
        .and(state_())
        .then(patch_user)
        .map(filters::reply);

    // DELETE /api/users/{id}
    let delete = one_path()
        .and(warp::delete())
        .and(bearer())
        .and(state_())
        .then(delete)
        .map(filters::reply);

    // The caller's own paths, tried only for paths under /api/users/me.
    let me_routes = me
        .or(change_password)
        .unify()
        .or(filters::other_methods(
            password_path(),
            "Password Change",
            "POST, OPTIONS",
        ))
        .unify()
        .or(logout_all)
        .unify()
        .or(filters::other_methods(
            logout_all_path(),
            "Logout All",
            "POST, OPTIONS",
        ))
        .unify()
        .or(filters::other_methods(
            me_path(),
            "User Me",
            "GET, HEAD, OPTIONS",
        ))
        .unify();

    list.or(create)
        .unify()
        .or(filters::other_methods(
            list_path(),
            "User List",
            "GET, POST, HEAD, OPTIONS",
        ))
        .unify()
        .or(filters::under("/api/users/me").and(me_routes))
        .unify()
        .or(get_one)
        .unify()
        .or(put)
        .unify()
        .or(patch)
        .unify()
        .or(delete)
        .unify()
        .or(filters::other_methods(
            one_path_only(),
            "User Instance",
            "GET, PUT, PATCH, DELETE, HEAD, OPTIONS",
        ))
        .unify()
        .boxed()
}

fn user_reply(status: StatusCode, user: &User) -> Response {
    warp::reply::with_status(warp::reply::json(user), status).into_response()
}

/// Users per keyset chunk when streaming a whole listing.
const STREAM_CHUNK: i64 = 500;

/// The query parameters of GET /api/users.
#[derive(Debug, Default)]
struct ListParams {
    query: ListQuery,
    /// `(limit, offset)` when paging.
    page: Option<(i64, i64)>,
    /// The parameters to repeat in `Link` URLs.
    kept: Vec<(String, String)>,
}

fn parse_list_params(pairs: Vec<(String, String)>) -> Result<ListParams, ApiError> {
    let mut errors = crate::model::FieldErrors::new();
    let mut error = |field: &str, message: String| {
        errors.entry(field.to_owned()).or_default().push(message);
    };
    let mut params = ListParams::default();
    let (mut limit, mut offset) = (None, None);
    // The last value of a repeated parameter wins, as in Django's QueryDict.
    let last: std::collections::BTreeMap<String, String> = pairs.into_iter().collect();
    for (key, value) in last {
        // An empty value is no filter, as in django-filter and DRF.
        if value.trim().is_empty() {
            continue;
        }
        match key.as_str() {
            "search" => {
                params.query.search = Some(value.trim().to_owned());
                params.kept.push((key, value));
            }
            "status" => match Status::parse(&value) {
                Some(status) => {
                    params.query.status = Some(status);
                    params.kept.push((key, value));
                }
                None => error(
                    "status",
                    format!("Select a valid choice. {value} is not one of the available choices."),
                ),
            },
            "ordering" => {
                for term in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                    let (name, desc) = match term.strip_prefix('-') {
                        Some(name) => (name, true),
                        None => (term, false),
                    };
                    match SortColumn::parse(name) {
                        Some(column) => params.query.ordering.push((column, desc)),
                        None => error(
                            "ordering",
                            format!(
                                "\"{term}\" is not a valid ordering. Choose from id, username, \
                                 level, created_at, updated_at, each optionally prefixed with -."
                            ),
                        ),
                    }
                }
                params.kept.push((key, value));
            }
            "limit" => limit = Some(value),
            "offset" => offset = Some(value),
            // Unknown parameters are ignored, as DRF does.
            _ => {}
        }
    }
    let mut integer = |field: &str, value: Option<String>, min: i64, max: i64| -> Option<i64> {
        let value = value?;
        match value.trim().parse::<i64>() {
            Err(_) => error(field, "A valid integer is required.".to_owned()),
            Ok(n) if n < min => error(
                field,
                format!("Ensure this value is greater than or equal to {min}."),
            ),
            Ok(n) if n > max => error(
                field,
                format!("Ensure this value is less than or equal to {max}."),
            ),
            Ok(n) => return Some(n),
        }
        None
    };
    let limit = integer("limit", limit, 1, 1000);
    let offset = integer("offset", offset, 0, i64::MAX);
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    if let Some(limit) = limit {
        params.page = Some((limit, offset.unwrap_or(0)));
    }
    Ok(params)
}

/// `Link` (RFC 8288) for a page: relative references to the next and
/// previous pages, keeping the other parameters.
fn link_header(kept: &[(String, String)], limit: i64, offset: i64, total: i64) -> Option<String> {
    let url = |offset: i64| {
        let mut pairs: Vec<(String, String)> = kept.to_vec();
        pairs.push(("limit".to_owned(), limit.to_string()));
        pairs.push(("offset".to_owned(), offset.to_string()));
        let query = serde_urlencoded::to_string(&pairs).unwrap_or_default();
        format!("</api/users?{query}>")
    };
    let mut links = Vec::new();
    if offset.saturating_add(limit) < total {
        links.push(format!("{}; rel=\"next\"", url(offset + limit)));
    }
    if offset > 0 {
        links.push(format!("{}; rel=\"prev\"", url((offset - limit).max(0))));
    }
    (!links.is_empty()).then(|| links.join(", "))
}

/// Every user (streamed), or one page of them with `limit`.
#[utoipa::path(get, path = "/api/users", tag = "users",
    params(super::openapi::ListQueryDoc),
    security(("jwt" = [])),
    responses(
        (status = 200, description = "Users ordered by id (or `ordering`); with `limit`, \
            the page, with `X-Total-Count` and `Link`", body = Vec<User>),
        (status = 400, description = "A bad query parameter", body = super::openapi::FieldErrors),
    ))]
async fn list(
    bearer: Bearer,
    pairs: Vec<(String, String)>,
    state: AppState,
) -> Result<Response, ApiError> {
    let params = parse_list_params(pairs);
    let Ok(
        params @ ListParams {
            page: Some((limit, offset)),
            ..
        },
    ) = params
    else {
        // Not a page: the caller on its own read, checked before the
        // parameters' 400, as DRF authenticates before the view runs.
        state.db_with(move |conn| authorize(conn, &bearer)).await?;
        return Ok(stream_all(state, params?.query));
    };
    let key = (params.query, limit, offset);
    let shared = state.clone();
    // The caller's check and the page in one read transaction on a reader
    // thread; the page is rendered there straight from the rows, or taken
    // from the page cache when no user changed since it was rendered.
    let page = state
        .db_long(move |conn| {
            authorize(conn, &bearer)?;
            let changes = db::users::changes(conn)?;
            if let Some(page) = shared.pages.get(changes, &key) {
                return Ok(page);
            }
            let (query, limit, offset) = &key;
            let mut body = JsonArray::new(usize::try_from(*limit).unwrap_or(0).min(1_000));
            db::users::page_each(conn, query, *limit, *offset, &shared.id_seek, |user| {
                body.push(user)
            })?;
            body.close();
            let page = Page {
                body: body.take(0).into(),
                total: db::users::count(conn, query)?,
            };
            shared.pages.put(changes, key, page.clone());
            Ok(page)
        })
        .await?;
    let total = page.total;
    let mut response = json_typed(Response::new(page.body.into()));
    let headers = response.headers_mut();
    headers.insert("x-total-count", total.into());
    if let Some(link) = link_header(&params.kept, limit, offset, total)
        .and_then(|l| warp::http::HeaderValue::from_str(&l).ok())
    {
        headers.insert(warp::http::header::LINK, link);
    }
    Ok(response)
}

/// Streams every matching user as one JSON array, read from SQLite in
/// keyset chunks on the blocking pool, so memory stays flat whatever the
/// table size. A client that goes away stops the reading.
fn stream_all(state: AppState, query: ListQuery) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(2);
    let pool = state.pool.clone();
    tokio::task::spawn_blocking(move || {
        let mut last: Option<User> = None;
        let mut body = JsonArray::new(STREAM_CHUNK as usize);
        loop {
            // Each chunk is rendered straight from its rows; only the last
            // user is copied out, to say where the next chunk starts.
            let mut count = 0;
            let mut tail: Option<User> = None;
            let chunk = pool
                .get()
                .map_err(|e| std::io::Error::other(e.to_string()))
                .and_then(|conn| {
                    db::users::chunk_after_each(
                        &conn,
                        &query,
                        last.as_ref(),
                        STREAM_CHUNK,
                        |user| {
                            body.push(user)?;
                            count += 1;
                            if count == STREAM_CHUNK {
                                tail = Some(user.to_user());
                            }
                            Ok(())
                        },
                    )
                    .map_err(std::io::Error::other)
                });
            if let Err(err) = chunk {
                // Too late for an error status: cut the body short so the
                // client sees a broken reply, not a short list.
                tracing::error!(error = %err, "listing users failed mid-stream");
                let _ = tx.blocking_send(Err(err));
                return;
            }
            let done = count < STREAM_CHUNK;
            if done {
                body.close();
            }
            let chunk = body.take(STREAM_CHUNK as usize);
            if tx.blocking_send(Ok(chunk.into())).is_err() || done {
                return;
            }
            last = tail;
        }
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    json_typed(warp::reply::stream(body).into_response())
}

/// Users written as one JSON array straight from their rows, taken out in
/// pieces (a page at once, or a streamed listing chunk by chunk).
pub struct JsonArray {
    buffer: Vec<u8>,
    items: usize,
}

impl JsonArray {
    /// Room for about `users` users.
    pub fn new(users: usize) -> JsonArray {
        JsonArray {
            buffer: Vec::with_capacity(2 + users * 260),
            items: 0,
        }
    }

    /// Appends one user.
    pub fn push(&mut self, user: UserView<'_>) -> rusqlite::Result<()> {
        self.buffer.push(if self.items == 0 { b'[' } else { b',' });
        self.items += 1;
        serde_json::to_writer(&mut self.buffer, &user)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
    }

    /// Ends the array (`[]` if nothing was pushed).
    pub fn close(&mut self) {
        if self.items == 0 {
            self.buffer.push(b'[');
        }
        self.buffer.push(b']');
    }

    /// What was written since the last take, leaving room for about
    /// `users` more.
    pub fn take(&mut self, users: usize) -> Vec<u8> {
        std::mem::replace(&mut self.buffer, Vec::with_capacity(users * 260))
    }
}

/// The caller.
#[utoipa::path(get, path = "/api/users/me", tag = "users",
    security(("jwt" = [])),
    responses((status = 200, description = "The caller", body = User)))]
async fn get_me(bearer: Bearer, state: AppState) -> Result<Response, ApiError> {
    let caller = bearer.user_id()?;
    read_user(bearer, caller, Ok(caller), ApiError::UserNotFound, &state).await
}

/// One user.
#[utoipa::path(get, path = "/api/users/{id}", tag = "users",
    params(("id" = i64, Path, description = "The user's id")),
    security(("jwt" = [])),
    responses(
        (status = 200, description = "The user", body = User),
        (status = 404, description = "No such user", body = super::openapi::Detail),
    ))]
async fn get_user(user: UserRef, bearer: Bearer, state: AppState) -> Result<Response, ApiError> {
    let caller = bearer.user_id()?;
    read_user(bearer, caller, user.id(), ApiError::NotFound, &state).await
}

/// The user `target` as the token's user `caller` may see it: checked as
/// [`authorize`] does, then the user's JSON (`missing` when there is no
/// such user). Answered from what is known while the database is
/// unchanged ([`crate::state::Known`]), else read and kept.
async fn read_user(
    bearer: Bearer,
    caller: i64,
    target: Result<i64, ApiError>,
    missing: ApiError,
    state: &AppState,
) -> Result<Response, ApiError> {
    let id = target.as_ref().ok().copied();
    let at = match state.known.look(|kept| {
        let auth = kept.auth.get(&caller)?;
        let user = kept.users.get(&id?)?;
        Some(admit(&bearer, auth.as_ref()).map(|()| user.clone()))
    }) {
        Ok(user) => return user?.map(json_user).ok_or(missing),
        Err(at) => at,
    };
    let (auth, account) = state
        .db(move |conn| {
            let auth = db::users::auth_state(conn, caller)?;
            let account = match id {
                Some(id) => db::users::by_id(conn, id)?,
                None => None,
            };
            Ok((auth, account))
        })
        .await?;
    let checked = admit(&bearer, auth.as_ref());
    let user = match account {
        Some(account) => Some(Bytes::from(user_json(&account.user)?)),
        None => None,
    };
    if let Some(id) = id {
        let user = user.clone();
        state.known.keep(at, |kept| {
            kept.auth.insert(caller, auth);
            kept.users.insert(id, user);
        });
    }
    checked?;
    target?;
    user.map(json_user).ok_or(missing)
}

/// A user's JSON, as [`user_reply`] writes it.
fn user_json(user: &User) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(user).map_err(|err| ApiError::Internal(err.into()))
}

/// 200 with a user's JSON.
fn json_user(body: Bytes) -> Response {
    json_typed(Response::new(body.into()))
}

/// Replaces the writable fields; `username` and `email` are required.
#[utoipa::path(put, path = "/api/users/{id}", tag = "users",
    params(("id" = i64, Path, description = "The user's id")),
    request_body(content = super::openapi::UserUpdate, content_type = "application/json"),
    security(("jwt" = [])),
    responses(
        (status = 200, description = "The updated user", body = User),
        (status = 403, description = "Not the user, not staff", body = super::openapi::Detail),
        (status = 404, description = "No such user", body = super::openapi::Detail),
    ))]
async fn put_user(
    user: UserRef,
    bearer: Bearer,
    body: RawBody,
    state: AppState,
) -> Result<Response, ApiError> {
    update(user, bearer, body, state, Required::Full).await
}

/// Changes any subset of the writable fields.
#[utoipa::path(patch, path = "/api/users/{id}", tag = "users",
    params(("id" = i64, Path, description = "The user's id")),
    request_body(content = super::openapi::UserPatch, content_type = "application/json"),
    security(("jwt" = [])),
    responses(
        (status = 200, description = "The updated user", body = User),
        (status = 403, description = "Not the user, not staff", body = super::openapi::Detail),
        (status = 404, description = "No such user", body = super::openapi::Detail),
    ))]
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
    conn: &rusqlite::Connection,
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
#[utoipa::path(post, path = "/api/users", tag = "users",
    request_body(content = super::openapi::Registration, content_type = "application/json"),
    security((), ("jwt" = [])),
    responses(
        (status = 201, description = "The new user", body = User),
        (status = 401, description = "A bad token (closed registration)", body = super::openapi::AuthError),
        (status = 403, description = "Registration is closed", body = super::openapi::Detail),
    ))]
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
        .db_with(move |conn| {
            add_taken_errors(conn, &mut parsed, None)?;
            Ok(parsed)
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
        .hashing(move |_| Ok(password::hash(&clear, iterations)?))
        .await?;
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
        .write(move |conn| Ok(db::users::insert(conn, &new, &timestamp_now())?))
        .await
        .on_constraint("users.username", "username", USERNAME_TAKEN)
        .on_constraint("users.email", "email", EMAIL_TAKEN)?;
    Ok(user_reply(StatusCode::CREATED, &user))
}

/// Checks the caller, loads the target (404), checks the caller may edit
/// it (403): the order DRF's `get_object` uses.
fn editable_target(
    conn: &rusqlite::Connection,
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

/// PUT and PATCH: one trip to the database, in the writers' queue.
async fn update(
    user: UserRef,
    bearer: Bearer,
    body: RawBody,
    state: AppState,
    required: Required,
) -> Result<Response, ApiError> {
    let updated = state
        .write(move |conn| {
            let id = editable_target(conn, &bearer, &user)?;
            // The body is read only now, after 404 and 403, as in DRF.
            let value = body.json()?;
            let mut parsed = parse_user_body(&value, required).map_err(ApiError::Validation)?;
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
#[utoipa::path(delete, path = "/api/users/{id}", tag = "users",
    params(("id" = i64, Path, description = "The user's id")),
    security(("jwt" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "Not the user, not staff", body = super::openapi::Detail),
        (status = 404, description = "No such user", body = super::openapi::Detail),
    ))]
async fn delete(user: UserRef, bearer: Bearer, state: AppState) -> Result<Response, ApiError> {
    state
        .write(move |conn| {
            let id = editable_target(conn, &bearer, &user)?;
            if !db::users::delete(conn, id)? {
                return Err(ApiError::NotFound);
            }
            Ok(())
        })
        .await?;
    Ok(warp::reply::with_status(warp::reply(), StatusCode::NO_CONTENT).into_response())
}

/// Voids every token of the caller issued until now.
#[utoipa::path(post, path = "/api/users/me/logout-all", tag = "sessions",
    security(("jwt" = [])),
    responses((status = 204, description = "Every earlier token is void")))]
async fn logout_all(caller: Caller, state: AppState) -> Result<Response, ApiError> {
    let now = unix_now();
    state
        .write(move |conn| Ok(db::users::revoke_tokens(conn, caller.id, now)?))
        .await?;
    Ok(warp::reply::with_status(warp::reply(), StatusCode::NO_CONTENT).into_response())
}

fn unix_now() -> i64 {
    i64::try_from(crate::auth::jwt::now()).unwrap_or(i64::MAX)
}

/// The message Django's password change form gives for a wrong old password.
pub const WRONG_OLD_PASSWORD: &str =
    "Your old password was entered incorrectly. Please enter it again.";

/// Changes the caller's password; every earlier token stops working.
#[utoipa::path(post, path = "/api/users/me/password", tag = "sessions",
    request_body(content = super::openapi::PasswordChange, content_type = "application/json"),
    security(("jwt" = [])),
    responses(
        (status = 204, description = "Changed; every earlier token is void"),
        (status = 429, description = "Too many attempts", body = super::openapi::Detail),
    ))]
async fn change_password(
    caller: Caller,
    body: RawBody,
    address: Option<std::net::IpAddr>,
    state: AppState,
) -> Result<Response, ApiError> {
    let [old, new] = text_fields(&body, [("old_password", false), ("new_password", false)])?;
    state.throttle.check(&caller.username, address)?;
    if old.len() > MAX_PASSWORD_BYTES {
        state.throttle.failed(&caller.username, address);
        return Err(ApiError::field("old_password", WRONG_OLD_PASSWORD));
    }
    let iterations = state.config.auth.pbkdf2_iterations;
    let id = caller.id;
    let changed = state
        .hashing(move |pool| {
            let account = db::users::by_id(&*pool.get()?, id)?.ok_or(ApiError::UserNotFound)?;
            if !password::verify(&old, &account.password_hash) {
                return Err(ApiError::field("old_password", WRONG_OLD_PASSWORD));
            }
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
            let hash = password::hash(&new, iterations)?;
            let mut conn = pool.get()?;
            db::users::set_password_hash(&mut conn, id, &hash, unix_now(), &timestamp_now())?;
            Ok(())
        })
        .await;
    if let Err(ApiError::Validation(errors)) = &changed
        && errors.contains_key("old_password")
    {
        state.throttle.failed(&caller.username, address);
    }
    changed?;
    Ok(warp::reply::with_status(warp::reply(), StatusCode::NO_CONTENT).into_response())
}
