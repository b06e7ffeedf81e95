//! Reading a Django project's users: straight from its SQLite database, or
//! from `manage.py dumpdata` JSON (any database backend), with simplejwt's
//! blacklisted refresh tokens from either.

use std::collections::HashMap;
use std::io::{BufReader, Read};
use std::path::Path;

use anyhow::{Context, bail};
use serde::Deserialize;
use serde::de::{SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::found::{Each, Refused, Scanned, timestamp};
use crate::db::import::{Blacklisted, Incoming};
use crate::model::{NewUser, Status};

/// Scans `file`, a SQLite database or dumpdata JSON, for the user model
/// `model` (`app_label.Model`, default `auth.User`), calling `each` with
/// each user.
pub fn scan(file: &Path, model: Option<&str>, each: &mut Each<'_>) -> anyhow::Result<Scanned> {
    let label = model.unwrap_or("auth.User").to_ascii_lowercase();
    let Some((app, name)) = label.split_once('.') else {
        bail!("--model must be app_label.Model, as in accounts.User (got {label:?})");
    };
    let mut head = [0u8; 16];
    let mut opened =
        std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let sqlite = opened.read_exact(&mut head).is_ok() && &head == b"SQLite format 3\0";
    if sqlite {
        from_sqlite(file, &format!("{app}_{name}"), each)
    } else {
        from_json(file, &label, each)
    }
}

/// One user as Django holds it (a dumpdata entry's `pk` and `fields`, or a
/// table row by column name) as the user rosterd will hold.
fn user(pk: &Value, fields: &Map<String, Value>) -> Result<Incoming, Refused> {
    let text = |key: &str| fields.get(key).and_then(Value::as_str).unwrap_or_default();
    let flag = |key: &str| match fields.get(key) {
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0) != 0,
        _ => false,
    };
    let refuse = |reason: String| Refused {
        source_id: pk.to_string(),
        name: format!("{}, {}", text("username"), text("email")),
        reason,
    };
    let id = pk.as_i64().ok_or_else(|| {
        refuse(format!(
            "id {pk} is not a whole number, as rosterd's ids are"
        ))
    })?;
    let created_at = timestamp(text("date_joined")).ok_or_else(|| {
        refuse(format!(
            "date_joined {:?} is not a date",
            text("date_joined")
        ))
    })?;
    let status = match fields.get("status").and_then(Value::as_str) {
        None => Status::Offline,
        Some(s) => Status::parse(s).ok_or_else(|| refuse(format!("unknown status {s:?}")))?,
    };
    let picture = ["profilePicture", "profile_picture"]
        .iter()
        .find_map(|key| fields.get(*key).and_then(Value::as_str))
        .unwrap_or_default();
    Ok(Incoming {
        source_id: id.to_string(),
        id: Some(id),
        new: NewUser {
            username: text("username").to_owned(),
            email: text("email").to_owned(),
            password_hash: text("password").to_owned(),
            level: fields.get("level").and_then(Value::as_i64).unwrap_or(1),
            status,
            profile_picture: picture.to_owned(),
            is_staff: flag("is_staff") || flag("is_superuser"),
        },
        is_active: fields.get("is_active").is_none() || flag("is_active"),
        created_at,
    })
}

fn from_sqlite(file: &Path, table: &str, each: &mut Each<'_>) -> anyhow::Result<Scanned> {
    let conn = rusqlite::Connection::open_with_flags(
        file,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("cannot open the Django database {}", file.display()))?;
    let columns = column_names(&conn, table)?;
    if !columns.iter().any(|c| c == "password") {
        let candidates: Vec<String> = tables(&conn)?
            .into_iter()
            .filter(|t| column_names(&conn, t).is_ok_and(|c| c.iter().any(|c| c == "password")))
            .collect();
        bail!(
            "{} has no user table {table}; tables with a password column: {}. \
             Name the user model with --model app_label.Model",
            file.display(),
            if candidates.is_empty() {
                "none".to_owned()
            } else {
                candidates.join(", ")
            }
        );
    }
    let mut found = Scanned {
        what: format!("{table} in {}", file.display()),
        ..Scanned::default()
    };
    let mut stmt = conn.prepare(&format!("SELECT * FROM \"{table}\" ORDER BY id"))?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let fields = as_fields(row, &columns)?;
        each(user(fields.get("id").unwrap_or(&Value::Null), &fields))?;
    }
    let blacklist_tables = [
        "token_blacklist_outstandingtoken",
        "token_blacklist_blacklistedtoken",
    ];
    if blacklist_tables
        .iter()
        .all(|t| column_names(&conn, t).is_ok_and(|c| !c.is_empty()))
    {
        let mut stmt = conn.prepare(
            "SELECT o.jti, o.user_id, o.expires_at FROM token_blacklist_blacklistedtoken b \
             JOIN token_blacklist_outstandingtoken o ON o.id = b.token_id \
             WHERE o.user_id IS NOT NULL",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let expires: String = row.get(2)?;
            found
                .blacklist
                .extend(blacklisted(row.get(0)?, row.get::<_, i64>(1)?, &expires));
        }
    }
    Ok(found)
}

/// A blacklisted token, when its expiry reads as a date.
fn blacklisted(jti: String, user: i64, expires_at: &str) -> Option<Blacklisted> {
    let expires = timestamp(expires_at)?;
    let format = time::format_description::well_known::Rfc3339;
    let at = time::OffsetDateTime::parse(&expires, &format).ok()?;
    Some(Blacklisted {
        jti,
        source_user: user.to_string(),
        expires_at: at.unix_timestamp(),
    })
}

/// A row as JSON fields by column name.
fn as_fields(row: &rusqlite::Row<'_>, columns: &[String]) -> rusqlite::Result<Map<String, Value>> {
    use rusqlite::types::ValueRef;
    let mut fields = Map::new();
    for (i, column) in columns.iter().enumerate() {
        let value = match row.get_ref(i)? {
            ValueRef::Integer(n) => Value::from(n),
            ValueRef::Real(f) => Value::from(f),
            ValueRef::Text(t) => Value::from(String::from_utf8_lossy(t).into_owned()),
            ValueRef::Null | ValueRef::Blob(_) => Value::Null,
        };
        fields.insert(column.clone(), value);
    }
    Ok(fields)
}

fn column_names(conn: &rusqlite::Connection, table: &str) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare("SELECT name FROM pragma_table_info(?1) ORDER BY cid")?;
    let names = stmt.query_map([table], |row| row.get(0))?;
    names.collect()
}

fn tables(conn: &rusqlite::Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt =
        conn.prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")?;
    let names = stmt.query_map([], |row| row.get(0))?;
    names.collect()
}

/// One dumpdata entry.
#[derive(Deserialize)]
struct Entry {
    model: String,
    #[serde(default)]
    pk: Value,
    #[serde(default)]
    fields: Map<String, Value>,
}

/// Calls the closure with each entry of a JSON array, one at a time, so a
/// large dump is never held whole; the closure's first error ends the scan
/// and is kept.
struct EachEntry<'e, F> {
    call: F,
    error: &'e mut Option<anyhow::Error>,
}

impl<'de, F: FnMut(Entry) -> anyhow::Result<()>> Visitor<'de> for EachEntry<'_, F> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a dumpdata array of {\"model\", \"pk\", \"fields\"} objects")
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        while let Some(entry) = seq.next_element::<Entry>()? {
            if let Err(err) = (self.call)(entry) {
                *self.error = Some(err);
                return Err(serde::de::Error::custom("stopped"));
            }
        }
        Ok(())
    }
}

fn from_json(file: &Path, label: &str, each: &mut Each<'_>) -> anyhow::Result<Scanned> {
    let reader = BufReader::new(
        std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?,
    );
    let mut found = Scanned {
        what: format!("{label} in {}", file.display()),
        ..Scanned::default()
    };
    let mut users = 0_usize;
    // Outstanding tokens by pk; dumpdata writes them before the
    // blacklist entries that point at them.
    let mut outstanding: HashMap<i64, (String, i64, String)> = HashMap::new();
    let mut models_seen = std::collections::BTreeSet::new();
    let mut call = |entry: Entry| -> anyhow::Result<()> {
        match entry.model.as_str() {
            m if m == label => {
                users += 1;
                each(user(&entry.pk, &entry.fields))?;
            }
            "token_blacklist.outstandingtoken" => {
                let f = &entry.fields;
                if let (Some(pk), Some(jti), Some(user)) = (
                    entry.pk.as_i64(),
                    f.get("jti").and_then(Value::as_str),
                    f.get("user").and_then(Value::as_i64),
                ) {
                    let expires = f
                        .get("expires_at")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    outstanding.insert(pk, (jti.to_owned(), user, expires.to_owned()));
                }
            }
            "token_blacklist.blacklistedtoken" => {
                let token = entry.fields.get("token").and_then(Value::as_i64);
                if let Some((jti, user, expires)) = token.and_then(|pk| outstanding.remove(&pk)) {
                    found.blacklist.extend(blacklisted(jti, user, &expires));
                }
            }
            other => {
                models_seen.insert(other.to_owned());
            }
        }
        Ok(())
    };
    let mut error = None;
    let mut de = serde_json::Deserializer::from_reader(reader);
    let visitor = EachEntry {
        call: &mut call,
        error: &mut error,
    };
    let parsed = serde::Deserializer::deserialize_seq(&mut de, visitor).and_then(|()| de.end());
    if let Some(err) = error {
        return Err(err);
    }
    parsed.with_context(|| {
        format!(
            "{} is neither a SQLite database nor dumpdata JSON",
            file.display()
        )
    })?;
    if users == 0 && !models_seen.is_empty() {
        let seen: Vec<String> = models_seen.into_iter().collect();
        bail!(
            "{} holds no {label} entries (it holds {}); name the user model with --model",
            file.display(),
            seen.join(", ")
        );
    }
    Ok(found)
}
