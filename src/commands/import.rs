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

use found::{Each, Refused};

use std::collections::HashMap;

use anyhow::{Context, bail};

use crate::auth::password;
use crate::cli::ImportSource;
use crate::db::import::{Clash, Incoming};
use crate::db::sqlite::Pool;
use crate::model::{self, validate};

/// What the first pass learnt of one user: enough to decide, after every
/// user has been seen, whether the second pass writes it.
struct Note {
    source_id: Box<str>,
    /// "username, email", for the report.
    name: Box<str>,
    /// Hashes of the username and e-mail, ASCII case ignored.
    keys: [u64; 2],
    verdict: Verdict,
    /// The username made for a user who had none (PocketBase).
    made_username: Option<Box<str>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Import,
    ImportedBefore,
    Refused,
}

fn key(field: u8, value: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (field, value.to_ascii_lowercase()).hash(&mut hasher);
    hasher.finish()
}

/// Runs `rosterd import ...`. A first pass over the source checks every
/// user and remembers only a few words of each, so a large source is never
/// held whole; after the report, a second pass writes the users to import,
/// in one transaction. The database is opened (by `open`) at the first
/// user, so a source that cannot be read leaves it untouched.
pub fn run(
    source: &ImportSource,
    open: impl FnOnce() -> anyhow::Result<Pool>,
) -> anyhow::Result<()> {
    let (name, dry_run, skip_invalid) = match source {
        ImportSource::Django {
            dry_run,
            skip_invalid,
            ..
        } => ("django", dry_run, skip_invalid),
        ImportSource::Pocketbase {
            dry_run,
            skip_invalid,
            ..
        } => ("pocketbase", dry_run, skip_invalid),
    };
    let scan = |each: &mut Each<'_>| match source {
        ImportSource::Django { file, model, .. } => django::scan(file, model.as_deref(), each),
        ImportSource::Pocketbase {
            path, collection, ..
        } => pocketbase::scan(path, collection, each),
    };
    let mut open = Some(open);
    let mut pool = None;
    let mut notes: Vec<Note> = Vec::new();
    let mut refused: Vec<Refused> = Vec::new();
    let mut unreadable = 0;
    // The position of the first user holding each key.
    let mut first: HashMap<u64, u32> = HashMap::new();
    let scanned = scan(&mut |read| {
        let user = match read {
            Ok(user) => user,
            Err(refusal) => {
                refused.push(refusal);
                unreadable += 1;
                return Ok(());
            }
        };
        if pool.is_none() {
            pool = Some(
                open.take()
                    .map_or_else(|| bail!("opened twice"), |open| open())?,
            );
        }
        let conn = pool
            .as_ref()
            .map(Pool::get)
            .transpose()?
            .context("no database")?;
        let mut user = user;
        let made_username = if user.new.username.is_empty() {
            let made = free_username(&conn, &user.new.email, |name| {
                first.contains_key(&key(0, name))
            })?;
            user.new.username = made.clone();
            Some(made.into_boxed_str())
        } else {
            None
        };
        let keys = [key(0, &user.new.username), key(1, &user.new.email)];
        let position = u32::try_from(notes.len()).context("too many users")?;
        for k in keys {
            first.entry(k).or_insert(position);
        }
        let verdict = match problem(&user) {
            Some(problem) => {
                refused.push(Refused::of(&user, problem));
                Verdict::Refused
            }
            None => match crate::db::import::clash(&conn, name, &user)? {
                None => Verdict::Import,
                Some(Clash::AlreadyImported) => Verdict::ImportedBefore,
                Some(clash) => {
                    refused.push(Refused::of(&user, clash_reason(clash)));
                    Verdict::Refused
                }
            },
        };
        notes.push(Note {
            name: format!("{}, {}", user.new.username, user.new.email).into_boxed_str(),
            source_id: user.source_id.into_boxed_str(),
            keys,
            verdict,
            made_username,
        });
        Ok(())
    })?;
    refuse_twins(&mut notes, &first, &mut refused);
    // The report lists them in the source's order (those the reader could
    // not take, which have no note, last).
    let positions: HashMap<&str, usize> = notes
        .iter()
        .enumerate()
        .map(|(i, n)| (&*n.source_id, i))
        .collect();
    refused.sort_by_key(|r| {
        positions
            .get(r.source_id.as_str())
            .copied()
            .unwrap_or(usize::MAX)
    });
    let count = |v: Verdict| notes.iter().filter(|n| n.verdict == v).count();
    let to_import = count(Verdict::Import);
    println!("{}: {} users", scanned.what, notes.len() + unreadable);
    println!("  to import: {to_import}");
    let before = count(Verdict::ImportedBefore);
    if before > 0 {
        println!("  imported before (left as they are): {before}");
    }
    if !refused.is_empty() {
        println!("  refused: {}", refused.len());
        for r in &refused {
            println!("    id {} ({}): {}", r.source_id, r.name, r.reason);
        }
    }
    if !refused.is_empty() && !skip_invalid {
        bail!(
            "nothing imported: {} users refused (listed above); fix them at the source, \
             or pass --skip-invalid to import the others",
            refused.len()
        );
    }
    if *dry_run {
        println!("dry run: nothing written");
        return Ok(());
    }
    let Some(pool) = pool else {
        println!("imported 0 users");
        return Ok(());
    };
    let mut conn = pool.get()?;
    let mut written = 0;
    crate::db::import::write(
        &mut conn,
        name,
        &scanned.blacklist,
        model::unix_now(),
        |insert| {
            let mut position = 0;
            scan(&mut |read| {
                let Ok(mut user) = read else { return Ok(()) };
                let note = notes
                    .get(position)
                    .context("the source changed while importing")?;
                position += 1;
                if note.verdict != Verdict::Import {
                    return Ok(());
                }
                if *note.source_id != *user.source_id {
                    bail!("the source changed while importing: nothing written");
                }
                if let Some(made) = &note.made_username {
                    user.new.username = made.to_string();
                }
                let id = insert(&user)?;
                written += 1;
                if name == "pocketbase" {
                    println!(
                        "  {} -> id {id}, username {}",
                        user.source_id, user.new.username
                    );
                }
                Ok(())
            })
            .map(drop)
        },
    )?;
    println!("imported {written} users");
    Ok(())
}

/// Refuses every user whose username or e-mail another user of the source
/// holds too, ignoring case (which one owns it is for the operator to
/// say). Keys are 64-bit hashes: two different names sharing one is
/// vanishingly unlikely, and would only refuse them, never write wrongly.
fn refuse_twins(notes: &mut [Note], first: &HashMap<u64, u32>, refused: &mut Vec<Refused>) {
    let mut holders: HashMap<u64, Vec<u32>> = HashMap::new();
    for (position, note) in notes.iter().enumerate() {
        for k in note.keys {
            if first.get(&k).is_some_and(|f| *f as usize != position) {
                let list = holders.entry(k).or_default();
                if list.is_empty() {
                    list.extend(first.get(&k));
                }
                list.extend(u32::try_from(position).ok());
            }
        }
    }
    for (position, note) in notes.iter().enumerate() {
        for (field, k) in ["username", "email"].into_iter().zip(note.keys) {
            let Some(list) = holders.get(&k) else {
                continue;
            };
            let others: Vec<&str> = list
                .iter()
                .filter(|p| **p as usize != position)
                .filter_map(|p| notes.get(*p as usize).map(|n| &*n.source_id))
                .collect();
            if note.verdict == Verdict::Import {
                refused.push(Refused {
                    source_id: note.source_id.to_string(),
                    name: note.name.to_string(),
                    reason: format!(
                        "{field} collides, ignoring case, with id {}",
                        others.join(", id ")
                    ),
                });
            }
            break;
        }
    }
    for note in notes.iter_mut() {
        if note.verdict == Verdict::Import && note.keys.iter().any(|k| holders.contains_key(k)) {
            note.verdict = Verdict::Refused;
        }
    }
}

fn clash_reason(clash: Clash) -> &'static str {
    match clash {
        Clash::AlreadyImported => "imported before",
        Clash::Username => "username is taken, ignoring case, in this database",
        Clash::Email => "email is taken, ignoring case, in this database",
        Clash::Id => "its id is taken, or was used before, in this database",
    }
}

/// What is wrong with a user on its own, if anything.
fn problem(user: &Incoming) -> Option<String> {
    if !password::is_known(&user.new.password_hash) {
        return Some("unknown password hash format".to_owned());
    }
    let fields = [
        ("username", validate::username(&user.new.username)),
        ("email", validate::email(&user.new.email)),
        (
            "profile picture",
            validate::profile_picture(&user.new.profile_picture),
        ),
    ];
    for (field, errors) in fields {
        if !errors.is_empty() {
            return Some(format!("invalid {field}: {}", errors.join(" ")));
        }
    }
    (user.new.level < 0).then(|| format!("invalid level: {}", user.new.level))
}

/// A username for a user who has none (PocketBase): the e-mail's local
/// part, with the characters a username cannot hold left out, made unique
/// ignoring case with a number.
fn free_username(
    conn: &rusqlite::Connection,
    email: &str,
    taken_here: impl Fn(&str) -> bool,
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
        if !taken_here(&candidate)
            && !crate::db::users::taken(
                &mut crate::db::Conn::Sqlite(conn),
                Some(&candidate),
                None,
                None,
            )?
            .0
        {
            break;
        }
        candidate = format!("{base}{n}");
    }
    Ok(candidate)
}
