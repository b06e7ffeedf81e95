//! The user as the API renders it, the shapes of new users and changes, and
//! the validation of client input into them (DRF's field rules and messages).

pub mod validate;

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value};

/// A user as rendered everywhere: exactly the eight public keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    /// Assigned by the database, never reused.
    pub id: i64,
    /// 1-150 letters, digits and `@ . + - _`; unique ignoring case.
    pub username: String,
    /// Unique ignoring case.
    pub email: String,
    /// At least 0; new users get 1.
    pub level: i64,
    /// Presence status.
    pub status: Status,
    /// `""` or an absolute http(s) URL.
    #[serde(rename = "profilePicture")]
    pub profile_picture: String,
    /// RFC 3339 UTC; never changes.
    pub created_at: String,
    /// RFC 3339 UTC; set on every change.
    pub updated_at: String,
}

/// A user row with the fields that are never rendered.
#[derive(Debug, Clone)]
pub struct Account {
    /// The public part.
    pub user: User,
    /// PHC string.
    pub password_hash: String,
    /// May edit any user.
    pub is_staff: bool,
    /// May log in and use tokens.
    pub is_active: bool,
    /// Tokens issued (`iat`) before this second are void.
    pub tokens_valid_after: i64,
}

/// Presence status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Online.
    Online,
    /// Offline; the default for new users.
    Offline,
    /// Busy.
    Busy,
}

impl Status {
    /// The stored and rendered name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Online => "online",
            Status::Offline => "offline",
            Status::Busy => "busy",
        }
    }

    /// Parses a stored or submitted name.
    pub fn parse(value: &str) -> Option<Status> {
        match value {
            "online" => Some(Status::Online),
            "offline" => Some(Status::Offline),
            "busy" => Some(Status::Busy),
            _ => None,
        }
    }
}

/// A user to insert (the password already hashed).
#[derive(Debug, Clone)]
pub struct NewUser {
    /// Validated username.
    pub username: String,
    /// Validated email.
    pub email: String,
    /// PHC string.
    pub password_hash: String,
    /// Level.
    pub level: i64,
    /// Status.
    pub status: Status,
    /// Picture URL or `""`.
    pub profile_picture: String,
    /// Staff flag (only the CLI sets it).
    pub is_staff: bool,
}

/// Seconds since the epoch, as the database stores instants.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The first second from which tokens are valid again after a revocation
/// whose instant, taken inside its write, is `now`. Two seconds on, not
/// one: a read that began before the write committed (a refresh, a login)
/// can still mint a token in the next second, and the commit is well under
/// a second away from `now`.
pub fn valid_after(now: i64) -> i64 {
    now + 2
}

/// Now as stored and rendered: RFC 3339 UTC with microseconds and `Z`.
pub fn timestamp_now() -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    time::OffsetDateTime::now_utc()
        .format(&format)
        .unwrap_or_else(|_| "1970-01-01T00:00:00.000000Z".to_owned())
}

/// Changes to a user: `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserChanges {
    /// New username.
    pub username: Option<String>,
    /// New email.
    pub email: Option<String>,
    /// New level.
    pub level: Option<i64>,
    /// New status.
    pub status: Option<Status>,
    /// New picture URL.
    pub profile_picture: Option<String>,
}

/// Field errors, DRF-shaped: field name -> messages.
pub type FieldErrors = BTreeMap<String, Vec<String>>;

/// A user body read field by field: the valid fields, and the errors of
/// the others (DRF reports every bad field at once).
#[derive(Debug, Clone, Default)]
pub struct ParsedUser {
    /// The fields that were given and valid.
    pub changes: UserChanges,
    /// The password in clear, when given and valid (registration only).
    pub password: Option<String>,
    /// Errors of the fields that were missing or invalid.
    pub errors: FieldErrors,
}

impl ParsedUser {
    /// Adds DRF's "already exists" errors for a username / email that
    /// another account holds.
    pub fn add_taken(&mut self, username_taken: bool, email_taken: bool) {
        for (taken, field, message) in [
            (username_taken, "username", USERNAME_TAKEN),
            (email_taken, "email", EMAIL_TAKEN),
        ] {
            if taken {
                self.errors
                    .entry(field.to_owned())
                    .or_default()
                    .push(message.to_owned());
            }
        }
    }
}

/// Which fields a body must carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Required {
    /// POST /api/users: username, email and password.
    Registration,
    /// PUT: username and email.
    Full,
    /// PATCH: nothing.
    Partial,
}

const REQUIRED: &str = "This field is required.";
const NULL: &str = "This field may not be null.";
const NOT_A_STRING: &str = "Not a valid string.";

/// Reads a JSON body into validated user changes (and, for a registration,
/// the password), collecting every field's errors as DRF does. Only a body
/// that is not an object fails outright.
pub fn parse_user_body(body: &Value, required: Required) -> Result<ParsedUser, FieldErrors> {
    let object = expect_object(body)?;
    let mut errors = FieldErrors::new();
    let mut changes = UserChanges::default();
    let must = required != Required::Partial;

    // DRF's CharField trims surrounding whitespace before validating.
    changes.username = string_field(object, "username", must, &mut errors).and_then(|v| {
        checked(
            v.trim().to_owned(),
            validate::username,
            "username",
            &mut errors,
        )
    });
    changes.email = string_field(object, "email", must, &mut errors)
        .and_then(|v| checked(v.trim().to_owned(), validate::email, "email", &mut errors));
    changes.level = level_field(object, &mut errors);
    changes.status = status_field(object, &mut errors);
    changes.profile_picture = match object.get("profilePicture") {
        None => None,
        Some(Value::Null) => field_error(&mut errors, "profilePicture", NULL),
        Some(Value::String(url)) => checked(
            url.trim().to_owned(),
            validate::profile_picture,
            "profilePicture",
            &mut errors,
        ),
        Some(_) => field_error(&mut errors, "profilePicture", NOT_A_STRING),
    };

    let mut password = None;
    if required == Required::Registration
        && let Some(clear) = string_field(object, "password", true, &mut errors)
    {
        let username = raw_str(object, "username");
        let email = raw_str(object, "email");
        password = checked(
            clear,
            |clear| validate::password(clear, username, email),
            "password",
            &mut errors,
        );
    }
    Ok(ParsedUser {
        changes,
        password,
        errors,
    })
}

/// DRF's answer to a body that is not a JSON object.
pub fn expect_object(body: &Value) -> Result<&Map<String, Value>, FieldErrors> {
    match body {
        Value::Object(object) => Ok(object),
        other => {
            let kind = match other {
                Value::Array(_) => "list",
                Value::String(_) => "str",
                Value::Bool(_) => "bool",
                Value::Number(n) if n.is_f64() => "float",
                Value::Number(_) => "int",
                _ => "NoneType",
            };
            Err(FieldErrors::from([(
                "non_field_errors".to_owned(),
                vec![format!(
                    "Invalid data. Expected a dictionary, but got {kind}."
                )],
            )]))
        }
    }
}

fn raw_str<'a>(object: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    object.get(key).and_then(Value::as_str)
}

fn field_error<T>(errors: &mut FieldErrors, field: &str, message: &str) -> Option<T> {
    errors
        .entry(field.to_owned())
        .or_default()
        .push(message.to_owned());
    None
}

fn checked(
    value: String,
    rules: impl FnOnce(&str) -> Vec<String>,
    field: &str,
    errors: &mut FieldErrors,
) -> Option<String> {
    let problems = rules(&value);
    if problems.is_empty() {
        Some(value)
    } else {
        errors.entry(field.to_owned()).or_default().extend(problems);
        None
    }
}

/// A string field as DRF's CharField reads it (no coercion of other types:
/// a number where a string belongs is refused).
pub fn string_field(
    object: &Map<String, Value>,
    field: &str,
    required: bool,
    errors: &mut FieldErrors,
) -> Option<String> {
    match object.get(field) {
        None if required => field_error(errors, field, REQUIRED),
        None => None,
        Some(Value::Null) => field_error(errors, field, NULL),
        // DRF refuses NUL in every CharField. For a password it matters:
        // HMAC zero-pads short keys, so "pw" and "pw\0" hash alike.
        Some(Value::String(s)) if s.contains('\0') => field_error(errors, field, NUL_CHARACTERS),
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => field_error(errors, field, NOT_A_STRING),
    }
}

/// A required string field that may not be blank (DRF's default
/// CharField), trimmed of surrounding whitespace when `trim` is set.
pub fn required_text(
    object: &Map<String, Value>,
    field: &str,
    trim: bool,
    errors: &mut FieldErrors,
) -> Option<String> {
    let value = string_field(object, field, true, errors)?;
    match clean_text(&value, trim) {
        Ok(clean) => Some(clean.to_owned()),
        Err(message) => field_error(errors, field, message),
    }
}

/// A string as [`required_text`] takes it (no NUL; trimmed when `trim`;
/// not blank), or the message refusing it.
pub fn clean_text(value: &str, trim: bool) -> Result<&str, &'static str> {
    if value.contains('\0') {
        return Err(NUL_CHARACTERS);
    }
    let value = if trim { value.trim() } else { value };
    if value.is_empty() {
        return Err("This field may not be blank.");
    }
    Ok(value)
}

/// DRF's message for a NUL in a CharField.
const NUL_CHARACTERS: &str = "Null characters are not allowed.";

/// The message for a username held by another account.
pub const USERNAME_TAKEN: &str = "A user with that username already exists.";

/// The message for an email held by another account.
pub const EMAIL_TAKEN: &str = "user with this email already exists.";

fn level_field(object: &Map<String, Value>, errors: &mut FieldErrors) -> Option<i64> {
    const INVALID: &str = "A valid integer is required.";
    let level = match object.get("level")? {
        Value::Null => return field_error(errors, "level", NULL),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => i,
            (None, Some(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => f as i64,
            _ => return field_error(errors, "level", INVALID),
        },
        // DRF's IntegerField also reads numeric strings.
        Value::String(s) => match s.trim().parse::<i64>() {
            Ok(i) => i,
            Err(_) => return field_error(errors, "level", INVALID),
        },
        _ => return field_error(errors, "level", INVALID),
    };
    if level < 0 {
        return field_error(
            errors,
            "level",
            "Ensure this value is greater than or equal to 0.",
        );
    }
    Some(level)
}

fn status_field(object: &Map<String, Value>, errors: &mut FieldErrors) -> Option<Status> {
    match object.get("status")? {
        Value::Null => field_error(errors, "status", NULL),
        Value::String(s) => Status::parse(s)
            .or_else(|| field_error(errors, "status", &format!("\"{s}\" is not a valid choice."))),
        other => field_error(
            errors,
            "status",
            &format!("\"{other}\" is not a valid choice."),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn user_renders_exactly_the_eight_keys() {
        let user = User {
            id: 7,
            username: "u".into(),
            email: "u@example.com".into(),
            level: 1,
            status: Status::Offline,
            profile_picture: String::new(),
            created_at: "2023-04-01T12:00:00.000000Z".into(),
            updated_at: "2023-04-01T12:00:00.000000Z".into(),
        };
        let value = serde_json::to_value(&user).unwrap();
        let keys: Vec<_> = value.as_object().unwrap().keys().cloned().collect();
        let mut expected = vec![
            "id",
            "username",
            "email",
            "level",
            "status",
            "profilePicture",
            "created_at",
            "updated_at",
        ];
        expected.sort_unstable();
        assert_eq!(keys, expected);
        assert_eq!(value["status"], "offline");
    }

    #[test]
    fn registration_requires_username_email_and_password() {
        let errors = parse_user_body(&json!({}), Required::Registration)
            .unwrap()
            .errors;
        for field in ["username", "email", "password"] {
            assert_eq!(errors[field], vec![REQUIRED.to_owned()], "{field}");
        }
    }

    #[test]
    fn partial_requires_nothing_and_reads_given_fields() {
        let parsed =
            parse_user_body(&json!({"status": "busy", "level": "3"}), Required::Partial).unwrap();
        assert!(parsed.errors.is_empty());
        assert_eq!(parsed.changes.status, Some(Status::Busy));
        assert_eq!(parsed.changes.level, Some(3));
        assert_eq!(parsed.changes.username, None);
        assert_eq!(parsed.password, None);
    }

    #[test]
    fn wrong_types_are_field_errors() {
        let errors = parse_user_body(
            &json!({"username": 123, "email": null, "level": "abc", "status": "xyz",
                    "profilePicture": 5}),
            Required::Full,
        )
        .unwrap()
        .errors;
        assert_eq!(errors["username"], vec![NOT_A_STRING.to_owned()]);
        assert_eq!(errors["email"], vec![NULL.to_owned()]);
        assert_eq!(
            errors["level"],
            vec!["A valid integer is required.".to_owned()]
        );
        assert_eq!(
            errors["status"],
            vec!["\"xyz\" is not a valid choice.".to_owned()]
        );
        assert!(errors.contains_key("profilePicture"));
    }

    #[test]
    fn nul_characters_are_refused_in_every_string_field() {
        let errors = parse_user_body(
            &json!({"username": "a\0", "email": "a@b.io\0", "password": "pw\0"}),
            Required::Registration,
        )
        .unwrap()
        .errors;
        for field in ["username", "email", "password"] {
            assert_eq!(
                errors[field],
                vec!["Null characters are not allowed.".to_owned()],
                "{field}"
            );
        }
    }

    #[test]
    fn negative_and_fractional_levels_are_refused() {
        let errors = |body| parse_user_body(&body, Required::Partial).unwrap().errors;
        assert!(errors(json!({"level": -1}))["level"][0].contains("greater than or equal to 0"));
        assert!(errors(json!({"level": 1.5})).contains_key("level"));
        assert!(errors(json!({"level": 1e300})).contains_key("level"));
    }

    #[test]
    fn non_objects_are_non_field_errors() {
        let errors = parse_user_body(&json!([1]), Required::Partial).unwrap_err();
        assert_eq!(
            errors["non_field_errors"],
            vec!["Invalid data. Expected a dictionary, but got list.".to_owned()]
        );
    }
}
