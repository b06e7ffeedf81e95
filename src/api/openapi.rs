//! The OpenAPI 3.1 document of the API, served at GET /api/openapi.json.
//! Built by utoipa from the handlers' own `#[utoipa::path]` annotations and
//! the types they send (`User`, `Status`, `Pair`); the request shapes below
//! mirror what the handlers read field by field. The error replies every
//! operation can give are added in one place (`CommonResponses`).

use std::collections::BTreeMap;

use serde_json::Value;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{RefOr, Response, ResponseBuilder};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};

use crate::auth::jwt::Pair;
use crate::model::{Status, User};

/// `{"detail": "..."}`: 403, 404, 405, 413, 415, 429, 503, and a 401 at login.
#[derive(ToSchema)]
pub struct Detail {
    /// What went wrong, in DRF's words.
    pub detail: String,
}

/// A 500: the cause stays in the log under `request_id`.
#[derive(ToSchema)]
pub struct ServerError {
    /// Always "A server error occurred."
    pub detail: String,
    /// Finds the cause in the server's log.
    pub request_id: Option<String>,
}

/// A 401 as simplejwt words it.
#[derive(ToSchema)]
pub struct AuthError {
    /// What went wrong.
    pub detail: String,
    /// `token_not_valid`, `user_not_found`, `bad_authorization_header`, ...
    pub code: Option<String>,
    /// Per token class, for a bad access token.
    pub messages: Option<Vec<TokenMessage>>,
}

/// One entry of `messages` in a 401.
#[derive(ToSchema)]
pub struct TokenMessage {
    /// "AccessToken".
    pub token_class: String,
    /// "access".
    pub token_type: String,
    /// "Token is invalid", "Token is expired", ...
    pub message: String,
}

/// A 400: field name -> messages (`non_field_errors` for the rest), or
/// `{"detail": "JSON parse error - ..."}` for malformed JSON.
#[derive(ToSchema)]
#[allow(dead_code)]
#[serde(untagged)]
pub enum BadRequest {
    /// Messages per field.
    Fields(FieldErrors),
    /// Malformed JSON or query string.
    Detail(Detail),
}

/// Field name -> its messages.
#[derive(ToSchema)]
pub struct FieldErrors(pub BTreeMap<String, Vec<String>>);

/// `{}`.
#[derive(ToSchema)]
pub struct Empty {}

/// GET /api/health.
#[derive(ToSchema)]
pub struct Health {
    /// "ok" or "unavailable".
    pub status: String,
}

/// POST /api/token.
#[derive(ToSchema)]
pub struct Credentials {
    /// The username (ASCII case ignored).
    pub username: String,
    /// The password.
    pub password: String,
}

/// POST /api/token/refresh and /blacklist.
#[derive(ToSchema)]
pub struct RefreshRequest {
    /// A refresh token.
    pub refresh: String,
}

/// POST /api/token/refresh: with rotation on, a new refresh token too.
#[derive(ToSchema)]
pub struct Refreshed {
    /// A new access token.
    pub access: String,
    /// A new refresh token (rotation only).
    pub refresh: Option<String>,
}

/// POST /api/token/verify.
#[derive(ToSchema)]
pub struct VerifyRequest {
    /// A token of either type.
    pub token: String,
}

/// POST /api/users.
#[derive(ToSchema)]
#[allow(non_snake_case)]
pub struct Registration {
    /// 1-150 letters, digits and `@ . + - _`; unique ignoring case.
    #[schema(min_length = 1, max_length = 150)]
    pub username: String,
    /// A valid address; unique ignoring case.
    #[schema(format = Email, max_length = 254)]
    pub email: String,
    /// At least 8 characters, not common, not all digits, not like the
    /// username or email; at most 4096 bytes.
    #[schema(min_length = 8)]
    pub password: String,
    /// Default 1.
    #[schema(minimum = 0)]
    pub level: Option<i64>,
    /// Default "offline".
    pub status: Option<Status>,
    /// `""` or an absolute http(s) URL.
    #[schema(max_length = 2048)]
    pub profilePicture: Option<String>,
}

/// PUT /api/users/{id}.
#[derive(ToSchema)]
#[allow(non_snake_case)]
pub struct UserUpdate {
    /// Required.
    #[schema(min_length = 1, max_length = 150)]
    pub username: String,
    /// Required.
    #[schema(format = Email, max_length = 254)]
    pub email: String,
    /// Left as it is when absent.
    #[schema(minimum = 0)]
    pub level: Option<i64>,
    /// Left as it is when absent.
    pub status: Option<Status>,
    /// Left as it is when absent.
    #[schema(max_length = 2048)]
    pub profilePicture: Option<String>,
}

/// PATCH /api/users/{id}: any subset.
#[derive(ToSchema)]
#[allow(non_snake_case)]
pub struct UserPatch {
    /// New username.
    #[schema(min_length = 1, max_length = 150)]
    pub username: Option<String>,
    /// New email.
    #[schema(format = Email, max_length = 254)]
    pub email: Option<String>,
    /// New level.
    #[schema(minimum = 0)]
    pub level: Option<i64>,
    /// New status.
    pub status: Option<Status>,
    /// New picture URL.
    #[schema(max_length = 2048)]
    pub profilePicture: Option<String>,
}

/// POST /api/users/me/password.
#[derive(ToSchema)]
pub struct PasswordChange {
    /// The current password.
    pub old_password: String,
    /// The new password (same rules as at registration).
    pub new_password: String,
}

/// The query parameters of GET /api/users.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ListQueryDoc {
    /// Case-insensitive substring of username or email.
    search: Option<String>,
    /// Only users with this status.
    status: Option<Status>,
    /// Comma-separated of id, username, level, created_at, updated_at, each
    /// optionally prefixed with `-`.
    ordering: Option<String>,
    /// Page size; with it the reply carries `X-Total-Count` and `Link`.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// Users to skip (with `limit`).
    #[param(minimum = 0)]
    offset: Option<i64>,
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
        super::users::list,
        super::users::create,
        super::users::get_me,
        super::users::get_user,
        super::users::put_user,
        super::users::patch_user,
        super::users::delete,
        super::users::change_password,
        super::users::logout_all,
        super::health_check,
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
