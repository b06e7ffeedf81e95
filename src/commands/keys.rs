//! `rosterd keys generate|rotate|prune|list`, and the key `serve` makes on
//! its first run under an asymmetric `auth.algorithm`.

use anyhow::{Context, bail};

use crate::auth::keys;
use crate::cli::KeysCommand;
use crate::config::Config;
use crate::model::unix_now;

fn dir(config: &Config) -> anyhow::Result<&std::path::Path> {
    config
        .auth
        .keys_dir
        .as_deref()
        .context("no keys directory (auth.keys_dir)")
}

/// Under an asymmetric algorithm, makes the first key when the keys
/// directory does not exist yet (a first run); an existing directory is
/// left for the server to read, and to refuse with a fix if needed.
pub fn first_key(config: &Config) -> anyhow::Result<()> {
    let algorithm = keys::algorithm(&config.auth.algorithm)?;
    let dir = dir(config)?;
    if algorithm == jsonwebtoken::Algorithm::HS256 || dir.exists() {
        return Ok(());
    }
    let key = keys::generate(dir, algorithm, unix_now())?;
    println!(
        "rosterd: first run: made the {} signing key {} in {}",
        config.auth.algorithm,
        key.kid,
        dir.display()
    );
    Ok(())
}

/// Runs a `keys` command.
pub fn run(command: &KeysCommand, config: &Config) -> anyhow::Result<()> {
    let dir = dir(config)?;
    let lifetime = config.auth.refresh_token_lifetime;
    match command {
        KeysCommand::Generate { algorithm } => {
            let name = algorithm.as_deref().unwrap_or(&config.auth.algorithm);
            make(dir, name, config, lifetime)
        }
        KeysCommand::Rotate => {
            if keys::list(dir)?.is_empty() {
                bail!(
                    "no key in {} to rotate: run `rosterd keys generate`",
                    dir.display()
                );
            }
            make(dir, &config.auth.algorithm, config, lifetime)
        }
        KeysCommand::Prune => {
            let pruned = keys::prune(dir, lifetime, unix_now())?;
            for key in &pruned {
                println!("deleted {} (its tokens have all expired)", key.kid);
            }
            println!("{} key(s) deleted", pruned.len());
            Ok(())
        }
        KeysCommand::List => {
            let files = keys::list(dir)?;
            let signing = keys::algorithm(&config.auth.algorithm)?;
            let newest = files.iter().rposition(|k| k.algorithm == signing);
            println!("kid\talgorithm\tmade\trole");
            for (i, (key, retired)) in files.iter().zip(keys::retired_at(&files)).enumerate() {
                let role = match retired {
                    _ if Some(i) == newest => "signs".to_owned(),
                    Some(at) => format!(
                        "verifies; prunable after {}",
                        when(at.saturating_add(lifetime as i64))
                    ),
                    None => "verifies".to_owned(),
                };
                println!(
                    "{}\t{:?}\t{}\t{role}",
                    key.kid,
                    key.algorithm,
                    when(key.created)
                );
            }
            Ok(())
        }
    }
}

fn make(dir: &std::path::Path, name: &str, config: &Config, lifetime: u64) -> anyhow::Result<()> {
    let algorithm = keys::algorithm(name)?;
    if algorithm == jsonwebtoken::Algorithm::HS256 {
        bail!(
            "HS256 signs with auth.secret, not a key file: set auth.algorithm to EdDSA, ES256 or RS256"
        );
    }
    let key = keys::generate(dir, algorithm, unix_now())?;
    println!("made {} ({name}) in {}", key.kid, key.path.display());
    if name == config.auth.algorithm {
        println!(
            "a running server signs with it within seconds; the keys before it verify until the \
             tokens they signed expire ({lifetime} s), then `rosterd keys prune` deletes them"
        );
    } else {
        println!("it signs once auth.algorithm is {name}");
    }
    Ok(())
}

/// An instant as RFC 3339 UTC.
fn when(at: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(at)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| at.to_string())
}
