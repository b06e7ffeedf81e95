//! `rosterd doctor`: checks what an operator can get wrong and says how to
//! fix each finding.

use std::path::Path;

use crate::config::{self, Config};
use crate::db;

/// One finding.
enum Finding {
    Ok(String),
    Warn(String),
    Fix(String),
}

/// Runs every check, prints one line per finding, and fails when any
/// finding needs fixing.
pub fn run(config_path: &Path, loaded: anyhow::Result<Config>) -> anyhow::Result<()> {
    let mut findings = vec![Finding::Ok(format!("rosterd {}", env!("ROSTERD_VERSION")))];
    check_config_file(config_path, &mut findings);
    match loaded {
        Err(err) => findings.push(Finding::Fix(format!("config: {err:#}"))),
        Ok(config) => {
            findings.push(Finding::Ok("config: loads".to_owned()));
            match config.check_secret(config_path) {
                Ok(()) => findings.push(Finding::Ok("secret: set, long enough".to_owned())),
                Err(err) => findings.push(Finding::Fix(format!("secret: {err:#}"))),
            }
            if config.auth.pbkdf2_iterations < config::DEFAULT_PBKDF2_ITERATIONS {
                findings.push(Finding::Warn(format!(
                    "auth.pbkdf2_iterations is {}: below the recommended {}; remove the key \
                     to use the default",
                    config.auth.pbkdf2_iterations,
                    config::DEFAULT_PBKDF2_ITERATIONS
                )));
            }
            check_keys(&config, &mut findings);
            match db::Target::of(&config.database) {
                Ok(db::Target::Postgres(options)) => check_postgres(&options, &mut findings),
                _ => {
                    if let Some(path) = &config.database.path {
                        check_database(path, &mut findings);
                    }
                }
            }
        }
    }
    let mut problems = 0;
    for finding in &findings {
        match finding {
            Finding::Ok(text) => println!("ok    {text}"),
            Finding::Warn(text) => println!("warn  {text}"),
            Finding::Fix(text) => {
                problems += 1;
                println!("FIX   {text}");
            }
        }
    }
    if problems > 0 {
        anyhow::bail!("{problems} finding(s) to fix");
    }
    Ok(())
}

/// The key files: each private to its owner and readable, and one to sign
/// with under an asymmetric `auth.algorithm`.
fn check_keys(config: &Config, findings: &mut Vec<Finding>) {
    let Some(dir) = &config.auth.keys_dir else {
        return;
    };
    let asymmetric = config.auth.algorithm != "HS256";
    if asymmetric && !dir.exists() {
        findings.push(Finding::Warn(format!(
            "keys: {} does not exist yet; `rosterd serve` or `rosterd keys generate` makes it \
             with a {} key",
            dir.display(),
            config.auth.algorithm
        )));
        return;
    }
    match crate::auth::jwt::Keys::load(&config.auth) {
        Ok(keys) if keys.kids().is_empty() => {
            if asymmetric {
                findings.push(Finding::Fix(format!("keys: none in {}", dir.display())));
            }
        }
        Ok(keys) => findings.push(Finding::Ok(format!(
            "keys: {} key file(s) in {}, private and readable",
            keys.kids().len(),
            dir.display()
        ))),
        Err(err) => findings.push(Finding::Fix(format!("keys: {err:#}"))),
    }
}

fn check_config_file(path: &Path, findings: &mut Vec<Finding>) {
    let shown = path.display();
    let Ok(meta) = std::fs::metadata(path) else {
        findings.push(Finding::Warn(format!(
            "config file {shown} does not exist (the environment alone configures rosterd)"
        )));
        return;
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o004 != 0 {
            findings.push(Finding::Fix(format!(
                "config file {shown} is world-readable (mode {mode:o}) and holds the secret: \
                 run `chmod 600 {shown}`"
            )));
        } else if mode & 0o040 != 0 {
            findings.push(Finding::Warn(format!(
                "config file {shown} is group-readable (mode {mode:o}): `chmod 600 {shown}` \
                 unless the group needs it"
            )));
        } else {
            findings.push(Finding::Ok(format!(
                "config file {shown}: readable by its owner only"
            )));
        }
    }
    #[cfg(not(unix))]
    let _ = meta;
}

/// PostgreSQL: reachable, and a schema this rosterd can serve.
fn check_postgres(options: &db::pg::Options, findings: &mut Vec<Finding>) {
    let shown = db::pg::shown(&options.url);
    match db::pg::schema_version(options) {
        Ok(version) if version > db::pg::latest_version() => findings.push(Finding::Fix(format!(
            "database {shown}: schema version {version} is newer than this rosterd ({}): run \
             the newer rosterd",
            db::pg::latest_version()
        ))),
        Ok(version) if version < db::pg::latest_version() => findings.push(Finding::Warn(format!(
            "database {shown}: schema version {version}, upgraded to {} at the next start",
            db::pg::latest_version()
        ))),
        Ok(_) => findings.push(Finding::Ok(format!(
            "database {shown}: reachable, schema current (back it up with pg_dump)"
        ))),
        Err(err) => findings.push(Finding::Fix(format!("database {shown}: {err:#}"))),
    }
}

fn check_database(path: &Path, findings: &mut Vec<Finding>) {
    let shown = path.display();
    if !path.exists() {
        findings.push(Finding::Warn(format!(
            "database {shown} does not exist yet; `rosterd serve` creates it"
        )));
        return;
    }
    match db::integrity_check(path) {
        Ok(check) if check == "ok" => {
            findings.push(Finding::Ok(format!("database {shown}: integrity ok")));
        }
        Ok(check) => findings.push(Finding::Fix(format!(
            "database {shown} is damaged ({check}): restore a backup with `rosterd restore FILE`"
        ))),
        Err(err) => findings.push(Finding::Fix(format!("database {shown}: {err:#}"))),
    }
    match db::schema_version(path) {
        Ok(version) if version > db::latest_version() => findings.push(Finding::Fix(format!(
            "database schema version {version} is newer than this rosterd ({}): run the newer rosterd",
            db::latest_version()
        ))),
        Ok(version) if version < db::latest_version() => findings.push(Finding::Warn(format!(
            "database schema version {version}: upgraded to {} at the next start",
            db::latest_version()
        ))),
        Ok(version) => findings.push(Finding::Ok(format!("schema version {version}: current"))),
        Err(err) => findings.push(Finding::Fix(format!("database {shown}: {err:#}"))),
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    match fs4::available_space(dir) {
        Ok(free) if free < 100 * 1024 * 1024 => findings.push(Finding::Fix(format!(
            "only {} MiB free on the disk of {}: writes will fail when it is full",
            free / (1024 * 1024),
            dir.display()
        ))),
        Ok(free) => findings.push(Finding::Ok(format!(
            "free disk: {} MiB",
            free / (1024 * 1024)
        ))),
        Err(err) => findings.push(Finding::Warn(format!("free disk: cannot tell ({err})"))),
    }
    match db::last_backup(path) {
        Some(backup) => findings.push(Finding::Ok(format!("last backup: {}", backup.display()))),
        None => findings.push(Finding::Warn(
            "no backup known: take one with `rosterd backup FILE`".to_owned(),
        )),
    }
}
