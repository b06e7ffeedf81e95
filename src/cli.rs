//! The command line: clap types for commands and flags. What each command
//! does lives in `commands`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// rosterd: user accounts in one SQLite file, with JWTs and a JSON API.
#[derive(Debug, Parser)]
#[command(name = "rosterd", version = env!("ROSTERD_VERSION"), about)]
pub struct Cli {
    /// Config file [default: the platform config directory's config.toml;
    /// also ROSTERD_CONFIG]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// SQLite database file (overrides database.path and ROSTERD_DB)
    #[arg(long, global = true, value_name = "FILE")]
    pub db: Option<PathBuf>,

    /// PostgreSQL instead of the SQLite file: postgres://user@host:port/db
    /// (overrides database.url and ROSTERD_DATABASE_URL; put a password in
    /// those, not on the command line, where other users can read it)
    #[arg(long, global = true, value_name = "URL")]
    pub database_url: Option<String>,

    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the API (the default command)
    Serve {
        /// Address to listen on (overrides server.bind and ROSTERD_BIND)
        #[arg(long, value_name = "ADDR")]
        bind: Option<String>,
    },
    /// Write a config file with a fresh random secret
    Init,
    /// Write a consistent copy of the database to FILE (safe while serving)
    Backup {
        /// Where to write the copy; must not exist yet
        file: PathBuf,
    },
    /// Replace the database with the backup FILE (the server must be stopped)
    Restore {
        /// The backup to restore
        file: PathBuf,
    },
    /// Check the config, secret, file permissions, database and disk
    Doctor,
    /// Copy every account into another, empty database (SQLite to
    /// PostgreSQL or back): ids, password hashes, refresh tokens and
    /// imported ids kept, so nobody logs in again; events and presence are
    /// not copied. Stop the servers first
    CopyDb {
        /// The empty database to fill: a postgres:// URL or a SQLite file
        #[arg(long, value_name = "URL_OR_FILE")]
        to: String,
    },
    /// Bring users in from Django or PocketBase, passwords and tokens kept
    Import {
        /// Where from.
        #[command(subcommand)]
        source: ImportSource,
    },
    /// Manage the signing keys of an asymmetric auth.algorithm
    Keys {
        /// The keys command.
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Manage users directly in the database
    User {
        /// The user command.
        #[command(subcommand)]
        command: UserCommand,
    },
}

/// `rosterd import ...`
#[derive(Debug, Subcommand)]
pub enum ImportSource {
    /// Users from a Django SQLite database, or `manage.py dumpdata` JSON
    Django {
        /// The database file or the JSON dump
        file: PathBuf,
        /// The user model, when not auth.User (as in AUTH_USER_MODEL)
        #[arg(long, value_name = "APP_LABEL.MODEL")]
        model: Option<String>,
        /// Check and report only; write nothing
        #[arg(long)]
        dry_run: bool,
        /// Import the others when some users are refused
        #[arg(long)]
        skip_invalid: bool,
    },
    /// Users from PocketBase's pb_data folder or its data.db
    Pocketbase {
        /// The pb_data folder or data.db
        path: PathBuf,
        /// The auth collection to read
        #[arg(long, default_value = "users")]
        collection: String,
        /// Check and report only; write nothing
        #[arg(long)]
        dry_run: bool,
        /// Import the others when some users are refused
        #[arg(long)]
        skip_invalid: bool,
    },
}

/// `rosterd keys ...`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make a signing key (for auth.algorithm, or --algorithm)
    Generate {
        /// EdDSA, ES256 or RS256 [default: auth.algorithm]
        #[arg(long)]
        algorithm: Option<String>,
    },
    /// Make a new signing key; the old ones verify until their tokens expire
    Rotate,
    /// Delete keys that signed nothing still valid
    Prune,
    /// The keys: id, algorithm, made, and what each does
    List,
}

/// `rosterd user ...`
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user (prompts for the password unless --password-stdin)
    Create {
        /// The username
        #[arg(long)]
        username: String,
        /// The email address
        #[arg(long)]
        email: String,
        /// Make the user staff (may edit any user)
        #[arg(long)]
        staff: bool,
        /// Read the password from standard input instead of prompting
        #[arg(long)]
        password_stdin: bool,
    },
    /// Set a user's password (prompts unless --password-stdin)
    SetPassword {
        /// The username
        #[arg(long)]
        username: String,
        /// Read the password from standard input instead of prompting
        #[arg(long)]
        password_stdin: bool,
    },
    /// List every user with their flags
    List,
    /// Deactivate a user: they cannot log in, and their tokens stop working
    Deactivate {
        /// The username
        #[arg(long)]
        username: String,
    },
    /// Activate a deactivated user
    Activate {
        /// The username
        #[arg(long)]
        username: String,
    },
    /// Delete a user for good (their id is never reused)
    Delete {
        /// The username
        #[arg(long)]
        username: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn no_command_means_serve_and_global_flags_go_anywhere() {
        let cli = Cli::parse_from(["rosterd"]);
        assert!(cli.command.is_none());
        let cli = Cli::parse_from(["rosterd", "user", "list", "--db", "x.sqlite3"]);
        assert_eq!(cli.db, Some(PathBuf::from("x.sqlite3")));
    }
}
