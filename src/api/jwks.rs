//! GET /.well-known/jwks.json: the public keys that verify rosterd's
//! tokens (none under HS256), for any service with a stock JWT library.

use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::HeaderValue;
use warp::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use warp::reply::Response;

use super::filters::{self, first_of, get_or_head, with_state};
use crate::AppState;

/// GET /.well-known/jwks.json, with its 405/OPTIONS answer. Cacheable for
/// five minutes: a rotated key is published before it signs anything
/// only if verifiers refresh within that time (see the README).
pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let path = || warp::path!(".well-known" / "jwks.json");
    first_of![
        path()
            .and(get_or_head())
            .and(with_state(state))
            .map(|state: AppState| {
                let mut reply = Response::new(state.keys().jwks().into());
                let headers = reply.headers_mut();
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                headers.insert(
                    CACHE_CONTROL,
                    HeaderValue::from_static("public, max-age=300"),
                );
                reply
            }),
        filters::other_methods(path(), "JWKS", "GET, HEAD, OPTIONS"),
    ]
    .boxed()
}
