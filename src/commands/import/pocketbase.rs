//! Reading a PocketBase auth collection (`users` by default) from its
//! `data.db`: v0.23+ (`password`, no username) and the older layout
//! (`passwordHash`, `username`). PocketBase ids are 15 characters; the
//! users get fresh rosterd ids (`imported_users` keeps the map) and, with
//! no username, one made from their e-mail (see `free_username`).

use std::path::Path;

use anyhow::{Context, bail};
use rusqlite::OptionalExtension;

use super::found::{Each, Refused, Scanned, timestamp};
use crate::db::import::Incoming;
use crate::model::{NewUser, Status};

/// Scans the auth collection `collection` of `path` (a `pb_data` folder or
/// its `data.db`), calling `each` with each user.
pub fn scan(path: &Path, collection: &str, each: &mut Each<'_>) -> anyhow::Result<Scanned> {
    let file = if path.is_dir() {
        path.join("data.db")
    } else {
        path.to_path_buf()
    };
    let conn = rusqlite::Connection::open_with_flags(
        &file,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("cannot open the PocketBase database {}", file.display()))?;
    let kind: Option<String> = conn
        .query_row(
            "SELECT type FROM _collections WHERE name = ?1",
            [collection],
            |row| row.get(0),
        )
        .optional()
        .with_context(|| format!("{} is not a PocketBase database", file.display()))?;
    match kind.as_deref() {
        Some("auth") => {}
        Some(other) => bail!("collection {collection:?} is a {other} collection, not an auth one"),
        None => bail!("{} has no collection {collection:?}", file.display()),
    }
    let mut stmt = conn.prepare("SELECT name FROM pragma_table_info(?1)")?;
    let columns: Vec<String> = stmt
        .query_map([collection], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    let has = |name: &str| columns.iter().any(|c| c == name);
    let pick = |name: &str, otherwise: &str| {
        if has(name) {
            format!("\"{name}\"")
        } else {
            otherwise.to_owned()
        }
    };
    let password = if has("password") {
        "password"
    } else {
        "passwordHash"
    };
    let sql = format!(
        "SELECT id, email, \"{password}\", created, {}, {}, {} FROM \"{collection}\" ORDER BY created, id",
        pick("username", "''"),
        pick("level", "1"),
        pick("status", "'offline'"),
    );
    let found = Scanned {
        what: format!("collection {collection} in {}", file.display()),
        ..Scanned::default()
    };
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let id: String = row.get(0)?;
        let email: String = row.get::<_, Option<String>>(1)?.unwrap_or_default();
        let created: String = row.get(3)?;
        let status: String = row.get::<_, Option<String>>(6)?.unwrap_or_default();
        let refuse = |reason: String| Refused {
            source_id: id.clone(),
            name: format!(", {email}"),
            reason,
        };
        let Some(created_at) = timestamp(&created) else {
            each(Err(refuse(format!("created {created:?} is not a date"))))?;
            continue;
        };
        each(Ok(Incoming {
            source_id: id.clone(),
            id: None,
            new: NewUser {
                username: row.get::<_, Option<String>>(4)?.unwrap_or_default(),
                email: email.clone(),
                password_hash: row.get(2)?,
                level: row.get::<_, Option<i64>>(5)?.unwrap_or(1),
                status: Status::parse(&status).unwrap_or(Status::Offline),
                profile_picture: String::new(),
                is_staff: false,
            },
            is_active: true,
            created_at,
        }))?;
    }
    Ok(found)
}
