//! `rosterd import django|pocketbase`: users from the server rosterd
//! replaces, with their passwords (the foreign hash is kept and replaced
//! at the first login), their Django ids and their blacklisted tokens, so
//! that the move logs nobody out.
//!
//! A source is read whole first (`django`, `pocketbase`); then every user
//! is checked (hash format, username, e-mail, collisions ignoring case
//! within the source and with the database, ids used before); then, unless
//! a check refused someone (without `--skip-invalid`) or it is a dry run,
//! everything is written in one transaction.

mod django;
mod found;
mod pocketbase;

use found::Refused;

use std::collections::HashMap;

use anyhow::bail;

use crate::auth::password;
use crate::cli::ImportSource;
use crate::db::Pool;
use crate::db::import::{Clash, Incoming};
use crate::model::{self, validate};

/// The options both sources share.
struct Options {
    dry_run: bool,
    skip_invalid: bool,
}

/// Runs `rosterd import ...`; the database is opened (by `open`) once the
/// source has been read.
pub fn run(
    source: &ImportSource,
    open: impl FnOnce() -> anyhow::Result<Pool>,
) -> anyhow::Result<()> {
    let (name, found, options) = match source {
        ImportSource::Django {
            file,
            model,
            dry_run,
            skip_invalid,
        } => (
            "django",
            django::read(file, model.as_deref())?,
            Options {
                dry_run: *dry_run,
                skip_invalid: *skip_invalid,
            },
        ),
        ImportSource::Pocketbase {
            path,
            collection,
            dry_run,
            skip_invalid,
        } => (
            "pocketbase",
            pocketbase::read(path, collection)?,
            Options {
                dry_run: *dry_run,
                skip_invalid: *skip_invalid,
            },
        ),
    };
    let pool = open()?;
    let mut conn = pool.get()?;
    let read = found.users.len() + found.refused.len();
    let checked = check(&conn, name, found.users)?;
    let mut refused = found.refused;
    refused.extend(checked.refused);
    println!("{}: {read} users", found.what);
    println!("  to import: {}", checked.accepted.len());
    if checked.already > 0 {
        println!("  imported before (left as they are): {}", checked.already);
    }
    if !refused.is_empty() {
        println!("  refused: {}", refused.len());
        for r in &refused {
            println!("    id {} ({}): {}", r.source_id, r.name, r.reason);
        }
    }
    if !refused.is_empty() && !options.skip_invalid {
        bail!(
            "nothing imported: {} users refused (listed above); fix them at the source, \
             or pass --skip-invalid to import the others",
            refused.len()
        );
    }
    if options.dry_run {
        println!("dry run: nothing written");
        return Ok(());
    }
    let ids = crate::db::import::write(
        &mut conn,
        name,
        &checked.accepted,
        &found.blacklist,
        model::unix_now(),
    )?;
    if name == "pocketbase" {
        for (user, id) in checked.accepted.iter().zip(&ids) {
            println!(
                "  {} -> id {id}, username {}",
                user.source_id, user.username
            );
        }
    }
    println!("imported {} users", ids.len());
    Ok(())
}

/// The users that pass every check, and the others.
#[derive(Debug, Default)]
struct Checked {
    accepted: Vec<Incoming>,
    refused: Vec<Refused>,
    already: usize,
}

/// Checks each user: on its own, against the others of the source (two
/// that collide ignoring case are both refused: which one is the real
/// owner is for the operator to say), then against the database.
fn check(
    conn: &rusqlite::Connection,
    source: &str,
    mut users: Vec<Incoming>,
) -> anyhow::Result<Checked> {
    let mut taken_here: HashMap<String, String> = HashMap::new();
    for user in users.iter_mut().filter(|u| u.username.is_empty()) {
        user.username = free_username(conn, &user.email, &taken_here)?;
        taken_here.insert(user.username.to_ascii_lowercase(), user.source_id.clone());
    }
    let mut holders: HashMap<(&str, String), Vec<&str>> = HashMap::new();
    for user in &users {
        for (field, value) in [("username", &user.username), ("email", &user.email)] {
            let key = (field, value.to_ascii_lowercase());
            holders.entry(key).or_default().push(&user.source_id);
        }
    }
    let twins = |user: &Incoming| {
        [("username", &user.username), ("email", &user.email)]
            .into_iter()
            .find_map(|(field, value)| {
                let others: Vec<&str> = holders
                    .get(&(field, value.to_ascii_lowercase()))?
                    .iter()
                    .copied()
                    .filter(|id| *id != user.source_id)
                    .collect();
                (!others.is_empty()).then(|| {
                    format!(
                        "{field} collides, ignoring case, with id {}",
                        others.join(", id ")
                    )
                })
            })
    };
    let verdicts: Vec<Option<String>> = users
        .iter()
        .map(|u| problem(u).or_else(|| twins(u)))
        .collect();
    let mut checked = Checked::default();
    for (user, verdict) in users.into_iter().zip(verdicts) {
        if let Some(problem) = verdict {
            checked.refused.push(Refused::of(&user, problem));
            continue;
        }
        let clash = match crate::db::import::clash(conn, source, &user)? {
            None => {
                checked.accepted.push(user);
                continue;
            }
            Some(Clash::AlreadyImported) => {
                checked.already += 1;
                continue;
            }
            Some(Clash::Username) => "username is taken, ignoring case, in this database",
            Some(Clash::Email) => "email is taken, ignoring case, in this database",
            Some(Clash::Id) => "its id is taken, or was used before, in this database",
        };
        checked.refused.push(Refused::of(&user, clash));
    }
    Ok(checked)
}

/// What is wrong with a user on its own, if anything.
fn problem(user: &Incoming) -> Option<String> {
    if !password::is_known(&user.password_hash) {
        return Some("unknown password hash format".to_owned());
    }
    let fields = [
        ("username", validate::username(&user.username)),
        ("email", validate::email(&user.email)),
        (
            "profile picture",
            validate::profile_picture(&user.profile_picture),
        ),
    ];
    for (field, errors) in fields {
        if !errors.is_empty() {
            return Some(format!("invalid {field}: {}", errors.join(" ")));
        }
    }
    (user.level < 0).then(|| format!("invalid level: {}", user.level))
}

/// A username for a user who has none (PocketBase): the e-mail's local
/// part, with the characters a username cannot hold left out, made unique
/// ignoring case with a number.
fn free_username(
    conn: &rusqlite::Connection,
    email: &str,
    names: &HashMap<String, String>,
) -> anyhow::Result<String> {
    let local = email.split('@').next().unwrap_or_default();
    let mut base: String = local
        .chars()
        .filter(|c| c.is_alphanumeric() || "@.+-_".contains(*c))
        .take(140)
        .collect();
    if base.is_empty() {
        base = "user".to_owned();
    }
    let mut candidate = base.clone();
    for n in 2.. {
        let free_here = !names.contains_key(&candidate.to_ascii_lowercase());
        if free_here && !crate::db::users::taken(conn, Some(&candidate), None, None)?.0 {
            break;
        }
        candidate = format!("{base}{n}");
    }
    Ok(candidate)
}
