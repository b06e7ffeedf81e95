//! The OpenAPI 3.1 document of the API, served at GET /api/openapi.json.
//! Built by utoipa from the handlers' own `#[utoipa::path]` annotations,
//! the types they send (`User`, `Status`, `Pair`) and the shapes of
//! [`super::schemas`]. The error replies every operation can give are
//! added in one place (`CommonResponses`).

use serde_json::Value;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{RefOr, Response, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;

use super::error::json_response;
use super::filters::{self, get_or_head};
use super::schemas::{AuthError, BadRequest, Detail, FieldErrors, ServerError};
use crate::auth::jwt::Pair;
use crate::model::{Status, User};

/// GET /api/openapi.json, with its 405/OPTIONS answer. The document is
/// built on the first request, not at start.
pub fn routes() -> BoxedFilter<(warp::reply::Response,)> {
    let path = || warp::path!("api" / "openapi.json");
    let built = std::sync::Arc::new(std::sync::OnceLock::new());
    path()
        .and(get_or_head())
        .map(move || json_response(StatusCode::OK, built.get_or_init(document)))
        .or(filters::other_methods(
            path(),
            "OpenAPI",
            "GET, HEAD, OPTIONS",
        ))
        .unify()
        .boxed()
}

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "rosterd",
        description = "User accounts and JWTs: the API of a Django REST Framework + \
                       simplejwt backend, served from one SQLite file."
    ),
    paths(
        super::token::obtain,
        super::token::refresh,
        super::token::verify,
        super::token::blacklist,
        super::listing::list,
        super::users::create,
        super::users::get_me,
        super::users::get_user,
        super::users::put_user,
        super::users::patch_user,
        super::users::delete,
        super::users::change_password,
        super::users::logout_all,
        super::health::health_check,
    ),
    components(schemas(User, Status, Pair, Detail, AuthError, BadRequest, FieldErrors, ServerError)),
    modifiers(&CommonResponses),
    tags(
        (name = "tokens", description = "Log in, refresh, verify, log out"),
        (name = "users", description = "Register, list, read and edit users"),
        (name = "sessions", description = "Password change and log out everywhere"),
        (name = "health", description = "Liveness"),
    )
)]
pub struct ApiDoc;

/// The replies any operation can give, added where they apply: 500 and 503
/// everywhere; 400, 413 and 415 where a body is read; 401 where a token is
/// required; and the Bearer security scheme.
struct CommonResponses;

fn reply(description: &str, schema: &str) -> RefOr<Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                utoipa::openapi::ContentBuilder::new()
                    .schema(Some(utoipa::openapi::Ref::from_schema_name(schema)))
                    .build(),
            )
            .build(),
    )
}

fn add(operation: &mut Operation, status: &str, description: &str, schema: &str) {
    operation
        .responses
        .responses
        .entry(status.to_owned())
        .or_insert_with(|| reply(description, schema));
}

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "jwt",
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        for item in openapi.paths.paths.values_mut() {
            for operation in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                let authenticated = operation.security.as_ref().is_some_and(|s| {
                    s.iter()
                        .any(|r| serde_json::to_value(r).is_ok_and(|v| v.get("jwt").is_some()))
                });
                if operation.request_body.is_some() {
                    add(
                        operation,
                        "400",
                        "Missing or invalid fields, or malformed JSON",
                        "BadRequest",
                    );
                    add(
                        operation,
                        "413",
                        "The body is over the size limit",
                        "Detail",
                    );
                    add(operation, "415", "The body is not JSON", "Detail");
                }
                if authenticated {
                    add(
                        operation,
                        "401",
                        "No, a bad or an expired token",
                        "AuthError",
                    );
                }
                add(
                    operation,
                    "500",
                    "A bug; the cause is in the log",
                    "ServerError",
                );
                add(
                    operation,
                    "503",
                    "Busy: retry after `Retry-After` seconds",
                    "Detail",
                );
            }
        }
    }
}

/// The document as JSON, built once at start.
pub fn document() -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or(Value::Null);
    if let Some(info) = doc.get_mut("info") {
        info["version"] = Value::String(env!("CARGO_PKG_VERSION").to_owned());
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_openapi_3_1_with_every_endpoint() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        for path in [
            "/api/token",
            "/api/token/refresh",
            "/api/token/verify",
            "/api/token/blacklist",
            "/api/users",
            "/api/users/me",
            "/api/users/{id}",
            "/api/users/me/password",
            "/api/users/me/logout-all",
            "/api/health",
        ] {
            assert!(doc["paths"].get(path).is_some(), "{path} missing");
        }
        let user = &doc["components"]["schemas"]["User"]["properties"];
        assert!(user.get("profilePicture").is_some());
        assert!(doc["components"]["securitySchemes"].get("jwt").is_some());
        assert!(
            doc["paths"]["/api/users"]["get"]["responses"]
                .get("401")
                .is_some()
        );
    }
}
