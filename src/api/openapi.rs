//! GET /api/openapi.json: the OpenAPI 3.1 document of the API, kept in the
//! repository as `docs/openapi.json` (the machine-readable twin of
//! `docs/API.md`) and served as it is. A black-box test holds it to the
//! routes: every documented operation is served, and every served one is
//! documented.

use warp::filters::BoxedFilter;
use warp::http::header::CONTENT_TYPE;
use warp::reply::Response;
use warp::{Filter, Reply};

use super::filters::{self, first_of, get_or_head};

/// The document.
pub const DOCUMENT: &str = include_str!("../../docs/openapi.json");

/// GET /api/openapi.json, with its 405/OPTIONS answer.
pub fn routes() -> BoxedFilter<(Response,)> {
    let path = || warp::path!("api" / "openapi.json");
    first_of![
        path().and(get_or_head()).map(|| {
            warp::reply::with_header(DOCUMENT, CONTENT_TYPE, "application/json").into_response()
        }),
        filters::other_methods(path(), "OpenAPI", "GET, HEAD, OPTIONS"),
    ]
    .boxed()
}
