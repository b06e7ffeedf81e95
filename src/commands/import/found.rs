//! What a reader hands over while it scans a source: each user, as rosterd
//! will hold it or refused with the reason; then what the source is and
//! its blacklisted tokens. Also the source's timestamps, read as rosterd
//! writes them.

use crate::db::import::{Blacklisted, Incoming};

/// What is called with each user of a source, in the source's order.
pub type Each<'a> = dyn FnMut(Result<Incoming, Refused>) -> anyhow::Result<()> + 'a;

/// What a scan found besides the users.
#[derive(Debug, Default)]
pub struct Scanned {
    /// What was read, for the report ("auth_user in FILE").
    pub what: String,
    /// Blacklisted refresh tokens.
    pub blacklist: Vec<Blacklisted>,
}

/// A user left out, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Its id in the source.
    pub source_id: String,
    /// Its username or e-mail there.
    pub name: String,
    /// Why.
    pub reason: String,
}

impl Refused {
    pub fn of(user: &Incoming, reason: impl Into<String>) -> Refused {
        Refused {
            source_id: user.source_id.clone(),
            name: format!("{}, {}", user.new.username, user.new.email),
            reason: reason.into(),
        }
    }
}

/// A source's timestamp (Django's `2024-01-02 03:04:05.123456`, its JSON
/// `2024-01-02T03:04:05.123Z`, PocketBase's `2024-01-02 03:04:05.123Z`,
/// with or without an offset; no offset means UTC) as rosterd stores
/// them: RFC 3339 UTC with microseconds.
pub fn timestamp(text: &str) -> Option<String> {
    use time::format_description::well_known::Rfc3339;
    let mut text = text.trim().replacen(' ', "T", 1);
    let has_offset = text.ends_with('Z')
        || text
            .get(19..)
            .is_some_and(|rest| rest.contains('+') || rest.contains('-'));
    if !has_offset {
        text.push('Z');
    }
    let parsed = time::OffsetDateTime::parse(&text, &Rfc3339).ok()?;
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    parsed.to_offset(time::UtcOffset::UTC).format(&format).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_of_each_source_become_rfc3339_utc_micros() {
        for (given, want) in [
            ("2024-01-02 03:04:05.123456", "2024-01-02T03:04:05.123456Z"),
            ("2024-01-02 03:04:05", "2024-01-02T03:04:05.000000Z"),
            ("2024-01-02T03:04:05.123Z", "2024-01-02T03:04:05.123000Z"),
            ("2024-01-02 03:04:05.123Z", "2024-01-02T03:04:05.123000Z"),
            ("2024-01-02T05:04:05+02:00", "2024-01-02T03:04:05.000000Z"),
            (
                "2024-01-02 03:04:05.123456+00:00",
                "2024-01-02T03:04:05.123456Z",
            ),
        ] {
            assert_eq!(timestamp(given).as_deref(), Some(want), "{given}");
        }
        for bad in ["", "yesterday", "2024-13-02 03:04:05", "2024-01-02"] {
            assert_eq!(timestamp(bad), None, "{bad}");
        }
    }
}
