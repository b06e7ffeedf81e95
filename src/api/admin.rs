//! GET /admin/: the admin page for staff, three files embedded in the
//! binary (`admin/`), talking only to the API. Its own
//! Content-Security-Policy allows its own script and style and nothing
//! inline; `admin.enabled = false` turns it off (404).

use warp::filters::BoxedFilter;
use warp::http::header::{CONTENT_SECURITY_POLICY, CONTENT_TYPE, LOCATION};
use warp::http::{HeaderValue, StatusCode};
use warp::reply::Response;
use warp::{Filter, Reply};

use super::filters::{self, first_of, get_or_head};

const INDEX: &str = include_str!("../../admin/index.html");
const STYLE: &str = include_str!("../../admin/admin.css");
const SCRIPT: &str = include_str!("../../admin/admin.js");

/// The page's policy: its own files, pictures from anywhere over https,
/// requests to this origin only, never framed.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                      img-src 'self' https: data:; connect-src 'self'; \
                      frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

fn file(body: &'static str, content_type: &'static str) -> Response {
    let mut reply = Response::new(body.into());
    let headers = reply.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY));
    reply
}

/// `/admin` (redirected), `/admin/`, `/admin/admin.css`, `/admin/admin.js`;
/// all 404 unless `enabled`.
pub fn routes(enabled: bool) -> BoxedFilter<(Response,)> {
    // Every route: 404 when the page is switched off.
    let on = move || {
        warp::any()
            .and_then(move || async move {
                if enabled {
                    Ok(())
                } else {
                    Err(warp::reject::not_found())
                }
            })
            .untuple_one()
    };
    let page = move || warp::path!("admin").and(on());
    let asset = move |name: &'static str| {
        warp::path("admin")
            .and(warp::path(name))
            .and(warp::path::end())
            .and(on())
    };
    first_of![
        page()
            .and(warp::path::full())
            .and_then(|full: warp::path::FullPath| async move {
                // `/admin` and `/admin/` both reach the matching routes; only
                // the bare one is sent on, so relative links resolve.
                if full.as_str().ends_with('/') {
                    Err(warp::reject::not_found())
                } else {
                    let mut reply = StatusCode::PERMANENT_REDIRECT.into_response();
                    reply
                        .headers_mut()
                        .insert(LOCATION, HeaderValue::from_static("/admin/"));
                    Ok(reply)
                }
            }),
        page()
            .and(get_or_head())
            .map(|| file(INDEX, "text/html; charset=utf-8")),
        asset("admin.css")
            .and(get_or_head())
            .map(|| file(STYLE, "text/css; charset=utf-8")),
        asset("admin.js")
            .and(get_or_head())
            .map(|| file(SCRIPT, "text/javascript; charset=utf-8")),
        filters::other_methods(page(), "Admin", "GET, HEAD, OPTIONS"),
    ]
    .boxed()
}
