//! The shapes the OpenAPI document names that are not types the handlers
//! use themselves: request bodies (the handlers read them field by field)
//! and error replies.

#![allow(dead_code)]

use std::collections::BTreeMap;

use utoipa::{IntoParams, ToSchema};

use crate::model::Status;

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
