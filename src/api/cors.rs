//! CORS for browser front ends: `server.cors_origins` lists the allowed
//! origins (empty: CORS off). Preflights are the OPTIONS replies of each
//! path; the headers are added to every reply, errors included.

use warp::http::{HeaderMap, HeaderValue, Method, header};
use warp::reply::Response;

/// The allowed origins.
#[derive(Debug, Clone, Default)]
pub struct Cors {
    any: bool,
    origins: Vec<String>,
}

/// Headers a script may read from a cross-origin reply.
const EXPOSED: &str = "Link, X-Total-Count, Retry-After, WWW-Authenticate";

/// How long a browser may cache a preflight, in seconds.
const MAX_AGE: &str = "600";

/// What CORS needs to know of a request, taken from it before it is
/// handed to the routes (the reply is decorated after them).
#[derive(Debug, Clone, Default)]
pub struct CorsRequest {
    origin: Option<HeaderValue>,
    preflight: bool,
}

impl CorsRequest {
    /// The request's `Origin`, and whether it is a preflight (`OPTIONS`
    /// with `Access-Control-Request-Method`).
    pub fn of(headers: &HeaderMap, method: &Method) -> CorsRequest {
        CorsRequest {
            origin: headers.get(header::ORIGIN).cloned(),
            preflight: *method == Method::OPTIONS
                && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD),
        }
    }
}

impl Cors {
    /// From `server.cors_origins`; `"*"` allows any origin.
    pub fn new(origins: &[String]) -> Cors {
        Cors {
            any: origins.iter().any(|o| o == "*"),
            origins: origins.iter().filter(|o| *o != "*").cloned().collect(),
        }
    }

    /// Whether no origin is allowed: then no reply gets CORS headers.
    pub fn is_off(&self) -> bool {
        !self.any && self.origins.is_empty()
    }

    fn allows(&self, origin: &str) -> bool {
        self.any || self.origins.iter().any(|o| o.eq_ignore_ascii_case(origin))
    }

    /// Adds the CORS headers to `response` when the request's `Origin` is
    /// allowed; a preflight also gets the allowed methods and headers.
    pub fn decorate(&self, request: &CorsRequest, response: &mut Response) {
        if self.is_off() {
            return;
        }
        let Some(origin) = &request.origin else {
            return;
        };
        let allowed = origin.to_str().is_ok_and(|o| self.allows(o));
        let headers = response.headers_mut();
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
        if !allowed {
            return;
        }
        let allow_origin = if self.any {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        };
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin);
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSED),
        );
        if request.preflight {
            let methods = headers.get(header::ALLOW).cloned().unwrap_or_else(|| {
                HeaderValue::from_static("GET, POST, PUT, PATCH, DELETE, OPTIONS")
            });
            headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, methods);
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("Authorization, Content-Type"),
            );
            headers.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static(MAX_AGE),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(origin: &str, preflight: bool, method: &Method) -> CorsRequest {
        let mut headers = HeaderMap::new();
        headers.insert(header::ORIGIN, origin.parse().unwrap());
        if preflight {
            headers.insert(
                header::ACCESS_CONTROL_REQUEST_METHOD,
                "PUT".parse().unwrap(),
            );
        }
        CorsRequest::of(&headers, method)
    }

    #[test]
    fn an_allowed_origin_is_echoed_and_others_are_not() {
        let cors = Cors::new(&["https://app.example.com".to_owned()]);
        let mut response = Response::default();
        cors.decorate(
            &request("https://app.example.com", false, &Method::GET),
            &mut response,
        );
        assert_eq!(
            response.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://app.example.com"
        );
        let mut response = Response::default();
        cors.decorate(
            &request("https://evil.example", false, &Method::GET),
            &mut response,
        );
        assert!(
            !response
                .headers()
                .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN)
        );
    }

    #[test]
    fn a_preflight_gets_methods_headers_and_max_age() {
        let cors = Cors::new(&["*".to_owned()]);
        let mut response = Response::default();
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, PUT, OPTIONS"));
        cors.decorate(
            &request("https://a.example", true, &Method::OPTIONS),
            &mut response,
        );
        let headers = response.headers();
        assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert_eq!(
            headers[header::ACCESS_CONTROL_ALLOW_METHODS],
            "GET, PUT, OPTIONS"
        );
        assert!(
            headers[header::ACCESS_CONTROL_ALLOW_HEADERS]
                .to_str()
                .unwrap()
                .contains("Authorization")
        );
    }

    #[test]
    fn only_an_options_request_with_a_requested_method_is_a_preflight() {
        let cors = Cors::new(&["*".to_owned()]);
        for (preflight, method) in [(true, Method::GET), (false, Method::OPTIONS)] {
            let mut response = Response::default();
            cors.decorate(
                &request("https://a.example", preflight, &method),
                &mut response,
            );
            assert_eq!(response.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
            assert!(
                !response
                    .headers()
                    .contains_key(header::ACCESS_CONTROL_ALLOW_METHODS)
            );
        }
        // No Origin: not a CORS request, nothing added.
        let mut response = Response::default();
        cors.decorate(
            &CorsRequest::of(&HeaderMap::new(), &Method::OPTIONS),
            &mut response,
        );
        assert!(response.headers().is_empty());
    }

    #[test]
    fn cors_off_adds_nothing() {
        let cors = Cors::new(&[]);
        let mut response = Response::default();
        cors.decorate(
            &request("https://a.example", true, &Method::OPTIONS),
            &mut response,
        );
        assert!(response.headers().is_empty());
    }
}
