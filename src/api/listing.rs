//! GET /api/users: the query parameters, one page with its count and
//! links, or every user streamed in keyset chunks.

use tokio::sync::OwnedSemaphorePermit;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{HeaderValue, header};
use warp::reply::{Reply, Response};

use super::error::ApiError;
use super::filters::{self, Bearer, authorize, get_or_head, with_state};

use crate::AppState;
use crate::db;
use crate::db::listing::{ListQuery, SortColumn};
use crate::model::{Status, User};

/// GET /api/users
pub fn list_route(state: AppState) -> BoxedFilter<(Response,)> {
    warp::path!("api" / "users")
        .and(get_or_head())
        .and(filters::bearer(state.clone()))
        .and(warp::query::<Vec<(String, String)>>())
        .and(with_state(state))
        .then(list)
        .map(filters::reply)
        .boxed()
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
        // Not a page: the caller is checked before the parameters' 400,
        // as DRF authenticates before the view runs.
        state.read(move |conn| authorize(conn, &bearer)).await?;
        let query = params?.query;
        let held = state.listings.clone().try_acquire_owned();
        return Ok(stream_all(state, query, held.map_err(|_| ApiError::Busy)?));
    };
    let query = params.query.clone();
    let seek = state.clone();
    let (users, total) = state
        .read(move |conn| -> Result<_, ApiError> {
            authorize(conn, &bearer)?;
            let users = db::listing::page(conn, &query, limit, offset, &seek.seek)?;
            Ok((users, db::listing::count(conn, &query)?))
        })
        .await?;
    let mut response = warp::reply::json(&users).into_response();
    let headers = response.headers_mut();
    headers.insert("x-total-count", total.into());
    if let Some(link) =
        link_header(&params.kept, limit, offset, total).and_then(|l| HeaderValue::from_str(&l).ok())
    {
        headers.insert(header::LINK, link);
    }
    Ok(response)
}

/// Streams every matching user as one JSON array, read in keyset chunks
/// (one read each), so memory stays flat whatever the table size. A
/// client that goes away stops the reading, and gives back `held`, the
/// listing's permit.
fn stream_all(state: AppState, query: ListQuery, held: OwnedSemaphorePermit) -> Response {
    // The cursor: the last user sent, and whether the array is open yet;
    // `None` once it is closed.
    let start = Some((None::<User>, false));
    let chunks = futures_util::stream::unfold(start, move |cursor| {
        let _held = &held;
        let (state, query) = (state.clone(), query.clone());
        async move {
            let (last, open) = cursor?;
            let users = state
                .read(move |conn| -> Result<_, ApiError> {
                    Ok(db::listing::chunk_after(
                        conn,
                        &query,
                        last.as_ref(),
                        STREAM_CHUNK,
                    )?)
                })
                .await;
            let users = match users {
                Ok(users) => users,
                Err(err) => {
                    // Too late for an error status: cut the body short so
                    // the client sees a broken reply, not a short list.
                    tracing::error!(error = ?err, "listing users failed mid-stream");
                    let err = std::io::Error::other("listing users failed");
                    return Some((Err(err), None));
                }
            };
            let done = users.len() < STREAM_CHUNK as usize;
            let mut text = Vec::with_capacity(users.len() * 256 + 2);
            for (i, user) in users.iter().enumerate() {
                text.push(if i == 0 && !open { b'[' } else { b',' });
                if let Err(err) = serde_json::to_writer(&mut text, user) {
                    return Some((Err(std::io::Error::other(err)), None));
                }
            }
            if users.is_empty() && !open {
                text.push(b'[');
            }
            if done {
                text.push(b']');
            }
            let next = (!done).then(|| (users.last().cloned(), true));
            Some((Ok(bytes::Bytes::from(text)), next))
        }
    });
    let mut response = warp::reply::stream(chunks).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
