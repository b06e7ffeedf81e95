//! The configuration: typed keys with their defaults, the TOML file, the
//! `ROSTERD_*` environment overrides and the checks run before serving.
//!
//! Precedence: built-in defaults < config file < environment < flags. Flags
//! are applied by the caller (`main.rs`) on the resolved [`Config`].

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// The value `config.example.toml` shows for `auth.secret`; refused at start.
pub const EXAMPLE_SECRET: &str = "change-me-to-64-random-hex-characters-from-rosterd-init-0000000";

/// The shortest signing secret the server accepts, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;

/// The fewest PBKDF2 iterations accepted at all (the pbkdf2 crate's floor).
pub const MIN_PBKDF2_ITERATIONS: u32 = 1_000;

/// The most PBKDF2 iterations a stored hash may ask for, rosterd's own or
/// Django's: at this count one verification already takes seconds.
pub const MAX_PBKDF2_ITERATIONS: u32 = 10_000_000;

/// The default (and OWASP-recommended) PBKDF2-HMAC-SHA256 iteration count.
pub const DEFAULT_PBKDF2_ITERATIONS: u32 = 600_000;

/// The whole configuration, resolved once before anything serves.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[server]`: listening and request limits.
    pub server: ServerConfig,
    /// `[database]`: the SQLite file.
    pub database: DatabaseConfig,
    /// `[auth]`: secret, password hashing, token lifetimes.
    pub auth: AuthConfig,
    /// `[registration]`: who may create accounts.
    pub registration: RegistrationConfig,
    /// `[rate_limit]`: login throttling.
    pub rate_limit: RateLimitConfig,
    /// `[log]`: log format.
    pub log: LogConfig,
    /// `[events]`: the change stream's limits.
    pub events: EventsConfig,
    /// `[presence]`: status kept true by open streams.
    pub presence: PresenceConfig,
    /// `[admin]`: the admin page.
    pub admin: AdminConfig,
}

/// `[admin]` keys.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Serve the admin page at `/admin/`.
    pub enabled: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig { enabled: true }
    }
}

/// `[events]` keys.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Open `GET /api/events` streams one user may hold (429 past it).
    pub max_streams_per_user: usize,
    /// Open streams in all (503 past it).
    pub max_streams: usize,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            max_streams_per_user: 16,
            max_streams: 10_000,
        }
    }
}

/// `[presence]` keys.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PresenceConfig {
    /// Seconds after a user's last stream closes before they go offline.
    pub grace_seconds: u64,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig { grace_seconds: 10 }
    }
}

/// `[log]` keys.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `"text"` for people, `"json"` (one object per line) for machines.
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: "text".to_owned(),
        }
    }
}

/// `[server]` keys.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address and port to listen on.
    pub bind: String,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: u64,
    /// Peers (IP addresses) whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<String>,
    /// Seconds to receive a request's headers; also the longest idle time
    /// of a keep-alive connection, and the longest a reply waits for the
    /// client to read more of it.
    pub header_read_timeout: u64,
    /// Seconds to read a request's body and answer it.
    pub request_timeout: u64,
    /// Open connections at once.
    pub max_connections: usize,
    /// Largest request line + headers, in bytes.
    pub max_header_bytes: usize,
    /// Whole listings (GET /api/users without `limit`) streaming at once;
    /// past it, 503.
    pub max_full_listings: usize,
    /// Origins allowed to call the API from a browser (CORS); empty: none.
    pub cors_origins: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            bind: "127.0.0.1:8000".to_owned(),
            max_body_bytes: 64 * 1024,
            trusted_proxies: Vec::new(),
            header_read_timeout: 10,
            request_timeout: 30,
            max_connections: 1024,
            max_header_bytes: 16 * 1024,
            max_full_listings: 64,
            cors_origins: Vec::new(),
        }
    }
}

/// `[registration]` keys.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrationConfig {
    /// Anyone may register; when false, only staff create users.
    pub open: bool,
}

impl Default for RegistrationConfig {
    fn default() -> Self {
        RegistrationConfig { open: true }
    }
}

/// `[rate_limit]` keys.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Throttle password attempts at all.
    pub enabled: bool,
    /// Failed password attempts per username per minute before further
    /// attempts are refused (at least 2).
    pub per_username_per_minute: u32,
    /// Failed password attempts per client address per minute before
    /// further attempts are refused (at least 2).
    pub per_address_per_minute: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            enabled: true,
            per_username_per_minute: 5,
            per_address_per_minute: 100,
        }
    }
}

/// `[database]` keys.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `postgres://user:password@host:port/database`: keep the accounts in
    /// PostgreSQL instead of the SQLite file (several nodes may share it).
    /// Never logged: it may hold a password.
    pub url: Option<Secret>,
    /// PEM certificates trusted to sign the PostgreSQL server's (beside the
    /// public roots), for `sslmode=require` with a private CA.
    pub ca_file: Option<PathBuf>,
    /// The SQLite file; `None` means `rosterd.sqlite3` in the platform data
    /// directory.
    pub path: Option<PathBuf>,
    /// How long a writer waits for the write lock, in milliseconds.
    pub busy_timeout_ms: u64,
    /// Pooled SQLite connections.
    pub pool_size: u32,
    /// Largest the database may grow, in bytes; 0: as large as the disk
    /// allows. Writes past it answer 507, like a full disk.
    pub max_size: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: None,
            ca_file: None,
            path: None,
            busy_timeout_ms: 5_000,
            pool_size: 8,
            max_size: 0,
        }
    }
}

/// `[auth]` keys.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// HS256 signing secret; required, at least 32 bytes.
    pub secret: Secret,
    /// `HS256` (with the secret), `EdDSA`, `ES256` or `RS256` (with the
    /// key files of `keys_dir`).
    pub algorithm: String,
    /// The directory of the private key files; `keys` beside the config
    /// file when not set.
    pub keys_dir: Option<PathBuf>,
    /// PBKDF2-HMAC-SHA256 iterations for new hashes.
    pub pbkdf2_iterations: u32,
    /// Access token lifetime, in seconds.
    pub access_token_lifetime: u64,
    /// Refresh token lifetime, in seconds.
    pub refresh_token_lifetime: u64,
    /// `iss` claim written into and required from every token, when set.
    pub issuer: Option<String>,
    /// `aud` claim written into and required from every token, when set.
    pub audience: Option<String>,
    /// Password hashes allowed to wait for a CPU before new ones get 503.
    pub max_queued_hashes: usize,
    /// Refresh answers a new refresh token too and retires the old one.
    pub rotate_refresh_tokens: bool,
    /// Seconds a retired refresh token still works (two tabs refreshing).
    pub rotation_grace_period: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            secret: Secret::default(),
            algorithm: "HS256".to_owned(),
            keys_dir: None,
            pbkdf2_iterations: DEFAULT_PBKDF2_ITERATIONS,
            access_token_lifetime: 5 * 60,
            refresh_token_lifetime: 24 * 60 * 60,
            issuer: None,
            audience: None,
            max_queued_hashes: 64,
            rotate_refresh_tokens: false,
            rotation_grace_period: 10,
        }
    }
}

/// A secret string whose `Debug` never shows the value.
#[derive(Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself; only for signing keys.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// How an environment value is read into the TOML tree.
#[derive(Clone, Copy)]
enum Kind {
    Str,
    Int,
    Bool,
    /// Comma-separated strings.
    List,
}

/// Every config key as (section, key, kind), read off the defaults: the
/// source of the `ROSTERD_*` environment names.
fn keys() -> Vec<(String, String, Kind)> {
    use serde_json::Value;
    let defaults = serde_json::to_value(Config::default()).unwrap_or_default();
    let mut keys = Vec::new();
    for (section, table) in defaults.as_object().into_iter().flatten() {
        for (key, default) in table.as_object().into_iter().flatten() {
            let kind = match default {
                Value::Number(_) => Kind::Int,
                Value::Bool(_) => Kind::Bool,
                Value::Array(_) => Kind::List,
                _ => Kind::Str,
            };
            keys.push((section.clone(), key.clone(), kind));
        }
    }
    keys
}

/// Short environment names for the keys everybody sets (all strings).
const SHORT_NAMES: &[(&str, &str, &str)] = &[
    ("ROSTERD_SECRET", "auth", "secret"),
    ("ROSTERD_DB", "database", "path"),
    ("ROSTERD_BIND", "server", "bind"),
];

/// `ROSTERD_*` variables that are not config keys but are read elsewhere.
const OTHER_NAMES: &[&str] = &["ROSTERD_CONFIG"];

/// The environment name of a key: `auth.pbkdf2_iterations` ->
/// `ROSTERD_AUTH_PBKDF2_ITERATIONS`.
pub fn env_name(section: &str, key: &str) -> String {
    format!(
        "ROSTERD_{}_{}",
        section.to_ascii_uppercase(),
        key.to_ascii_uppercase()
    )
}

impl Config {
    /// Builds the configuration from an optional TOML text and the
    /// environment (`(name, value)` pairs; only `ROSTERD_*` are looked at).
    /// `origin` names the file in error messages.
    pub fn from_sources(
        toml_text: Option<&str>,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Config> {
        let mut tree: toml::Table = match toml_text {
            Some(text) => toml::from_str(text).with_context(|| format!("cannot read {origin}"))?,
            None => toml::Table::new(),
        };
        let keys = keys();
        // Long names are applied after short ones, so the precise name wins.
        let mut short = BTreeMap::new();
        let mut long = BTreeMap::new();
        for (name, value) in env {
            if !name.starts_with("ROSTERD_") || OTHER_NAMES.contains(&name.as_str()) {
                continue;
            }
            if let Some((_, section, key)) = SHORT_NAMES.iter().find(|(n, _, _)| *n == name) {
                short.insert(
                    name.clone(),
                    (section.to_string(), key.to_string(), Kind::Str, value),
                );
            } else if let Some((section, key, kind)) = keys
                .iter()
                .find(|(section, key, _)| env_name(section, key) == name)
            {
                long.insert(name.clone(), (section.clone(), key.clone(), *kind, value));
            } else {
                bail!(
                    "unknown environment variable {name}: no config key has that name \
                     (see config.example.toml for the keys; unset it to continue)"
                );
            }
        }
        for (name, (section, key, kind, value)) in short.into_iter().chain(long) {
            let value =
                match kind {
                    Kind::Str => toml::Value::String(value),
                    Kind::Int => toml::Value::Integer(value.trim().parse().with_context(|| {
                        format!("{name} must be a whole number, not {value:?}")
                    })?),
                    Kind::Bool => {
                        toml::Value::Boolean(parse_bool(&value).with_context(|| {
                            format!("{name} must be true or false, not {value:?}")
                        })?)
                    }
                    Kind::List => toml::Value::Array(
                        value
                            .split(',')
                            .map(str::trim)
                            .filter(|item| !item.is_empty())
                            .map(|item| toml::Value::String(item.to_owned()))
                            .collect(),
                    ),
                };
            let table = tree
                .entry(section.as_str())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match table {
                toml::Value::Table(table) => {
                    table.insert(key, value);
                }
                _ => bail!("in {origin}: [{section}] must be a table"),
            }
        }
        let config: Config = toml::Value::Table(tree)
            .try_into()
            .with_context(|| format!("invalid configuration in {origin} or ROSTERD_* variables"))?;
        config.check_values()?;
        Ok(config)
    }

    /// Reads `path` (if it exists) and the process environment.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => Some(text),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
            Err(err) => {
                return Err(err).with_context(|| format!("cannot read {}", path.display()));
            }
        };
        Config::from_sources(
            text.as_deref(),
            &path.display().to_string(),
            std::env::vars(),
        )
    }

    /// Range checks that hold for every command (the secret is checked only
    /// by [`Config::check_secret`], as only the server needs it).
    fn check_values(&self) -> anyhow::Result<()> {
        if !(MIN_PBKDF2_ITERATIONS..=MAX_PBKDF2_ITERATIONS).contains(&self.auth.pbkdf2_iterations) {
            bail!(
                "auth.pbkdf2_iterations is {}, outside {MIN_PBKDF2_ITERATIONS} to \
                 {MAX_PBKDF2_ITERATIONS}; the default is {DEFAULT_PBKDF2_ITERATIONS}",
                self.auth.pbkdf2_iterations
            );
        }
        crate::auth::keys::algorithm(&self.auth.algorithm)?;
        if self.auth.access_token_lifetime == 0 || self.auth.refresh_token_lifetime == 0 {
            bail!(
                "auth.access_token_lifetime and auth.refresh_token_lifetime must be at least 1 second"
            );
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            bail!(
                "log.format is {:?}: it must be \"text\" or \"json\"",
                self.log.format
            );
        }
        if self.database.pool_size == 0 {
            bail!("database.pool_size must be at least 1");
        }
        if self.server.max_body_bytes == 0 {
            bail!("server.max_body_bytes must be at least 1");
        }
        if self.server.header_read_timeout == 0
            || self.server.request_timeout == 0
            || self.server.max_connections == 0
        {
            bail!(
                "server.header_read_timeout, server.request_timeout and \
                 server.max_connections must be at least 1"
            );
        }
        for origin in &self.server.cors_origins {
            let valid = origin == "*"
                || ((origin.starts_with("http://") || origin.starts_with("https://"))
                    && !origin.ends_with('/'));
            if !valid {
                bail!(
                    "server.cors_origins: {origin:?} is not an origin like \
                     \"https://app.example.com\" (scheme and host, no path) or \"*\""
                );
            }
        }
        for proxy in &self.server.trusted_proxies {
            if proxy.parse::<std::net::IpAddr>().is_err() {
                bail!("server.trusted_proxies: {proxy:?} is not an IP address");
            }
        }
        if self.rate_limit.per_username_per_minute < 2 || self.rate_limit.per_address_per_minute < 2
        {
            bail!(
                "rate_limit.per_username_per_minute and rate_limit.per_address_per_minute \
                 must be at least 2 (set rate_limit.enabled = false to turn throttling off)"
            );
        }
        Ok(())
    }

    /// Refuses a missing, short or example signing secret, saying how to fix it.
    pub fn check_secret(&self, config_path: &Path) -> anyhow::Result<()> {
        let secret = self.auth.secret.expose();
        let fix = format!(
            "set auth.secret in {} (run `rosterd init` to write a config with a fresh one) \
             or set ROSTERD_SECRET to at least {MIN_SECRET_BYTES} random bytes, \
             e.g. the output of `openssl rand -hex 32`",
            config_path.display()
        );
        if secret.is_empty() {
            bail!("no signing secret is configured: {fix}");
        }
        if secret == EXAMPLE_SECRET {
            bail!("auth.secret is the example value from config.example.toml: {fix}");
        }
        if secret.len() < MIN_SECRET_BYTES {
            bail!(
                "auth.secret is {} bytes long, shorter than {MIN_SECRET_BYTES}: {fix}",
                secret.len()
            );
        }
        Ok(())
    }
}

fn parse_bool(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// A fresh random secret: 64 hex characters (32 bytes of entropy).
pub fn generate_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The text of a new config file holding `secret`.
pub fn new_config_text(secret: &str) -> String {
    format!(
        "# rosterd configuration, written by `rosterd init`.\n\
         # Every key and its default: see config.example.toml in the rosterd sources.\n\
         # Keep this file private: it holds the token signing secret.\n\
         \n\
         [auth]\n\
         secret = \"{secret}\"\n"
    )
}

/// Writes a new config file with a fresh secret, readable by its owner
/// only. Refuses to overwrite an existing file.
pub fn write_new_config(path: &Path) -> anyhow::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create directory {}", dir.display()))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).with_context(|| {
        if path.exists() {
            format!(
                "{} already exists; not overwriting it (its secret signs live tokens)",
                path.display()
            )
        } else {
            format!("cannot create {}", path.display())
        }
    })?;
    file.write_all(new_config_text(&generate_secret()).as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_apply_without_file_or_environment() {
        let config = Config::from_sources(None, "test", env(&[])).unwrap();
        assert_eq!(config.server.bind, "127.0.0.1:8000");
        assert_eq!(config.auth.pbkdf2_iterations, 600_000);
        assert_eq!(config.auth.access_token_lifetime, 300);
        assert_eq!(config.auth.refresh_token_lifetime, 86_400);
        assert_eq!(config.server.max_body_bytes, 65_536);
    }

    #[test]
    fn environment_overrides_the_file() {
        let text = "[auth]\npbkdf2_iterations = 2000\n[server]\nbind = \"127.0.0.1:1\"\n";
        let config = Config::from_sources(
            Some(text),
            "test",
            env(&[
                ("ROSTERD_AUTH_PBKDF2_ITERATIONS", "3000"),
                ("ROSTERD_BIND", "127.0.0.1:2"),
                ("ROSTERD_SECRET", "s"),
                ("PATH", "/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(config.auth.pbkdf2_iterations, 3000);
        assert_eq!(config.server.bind, "127.0.0.1:2");
        assert_eq!(config.auth.secret.expose(), "s");
    }

    #[test]
    fn long_environment_name_wins_over_short_one() {
        let config = Config::from_sources(
            None,
            "test",
            env(&[("ROSTERD_SERVER_BIND", "a:1"), ("ROSTERD_BIND", "b:2")]),
        )
        .unwrap();
        assert_eq!(config.server.bind, "a:1");
    }

    #[test]
    fn unknown_key_in_file_is_an_error() {
        let err =
            Config::from_sources(Some("[auth]\nsecrt = \"x\"\n"), "test", env(&[])).unwrap_err();
        assert!(format!("{err:#}").contains("secrt"), "{err:#}");
    }

    #[test]
    fn unknown_environment_variable_is_an_error() {
        let err =
            Config::from_sources(None, "test", env(&[("ROSTERD_AUTH_SECRT", "x")])).unwrap_err();
        assert!(err.to_string().contains("ROSTERD_AUTH_SECRT"));
    }

    #[test]
    fn non_numeric_environment_value_is_an_error() {
        let err = Config::from_sources(
            None,
            "test",
            env(&[("ROSTERD_AUTH_PBKDF2_ITERATIONS", "many")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("ROSTERD_AUTH_PBKDF2_ITERATIONS"));
    }

    #[test]
    fn every_key_has_an_environment_twin_that_reaches_the_config() {
        for (section, key, kind) in keys() {
            let (section, key) = (section.as_str(), key.as_str());
            let value = match kind {
                Kind::Str if key == "format" => "json",
                Kind::Str if key == "algorithm" => "EdDSA",
                Kind::Str => "some-value",
                Kind::Int => "4242",
                Kind::Bool => "false",
                Kind::List if key == "cors_origins" => "https://app.example",
                Kind::List => "127.0.0.1",
            };
            let config =
                Config::from_sources(None, "test", env(&[(&env_name(section, key), value)]))
                    .unwrap_or_else(|e| panic!("{section}.{key}: {e:#}"));
            let tree = toml::Value::try_from(&config).unwrap();
            let got = tree.get(section).and_then(|s| s.get(key));
            let rendered = match got {
                Some(toml::Value::String(s)) => s.clone(),
                Some(toml::Value::Array(items)) => items
                    .iter()
                    .filter_map(toml::Value::as_str)
                    .collect::<Vec<_>>()
                    .join(","),
                Some(other) => other.to_string(),
                None => panic!("{section}.{key} not in config"),
            };
            assert_eq!(rendered, value, "{section}.{key}");
        }
    }

    #[test]
    fn example_config_documents_every_key_and_parses_when_uncommented() {
        let example = include_str!("../config.example.toml");
        for (section, key, _) in keys() {
            assert!(
                example.contains(&format!("# {key} = ")),
                "config.example.toml lacks {section}.{key}"
            );
        }
        let uncommented: String = example
            .lines()
            .map(|l| {
                l.strip_prefix("# ")
                    .filter(|r| r.contains(" = "))
                    .unwrap_or(l)
            })
            .collect::<Vec<_>>()
            .join("\n");
        let config = Config::from_sources(Some(&uncommented), "example", env(&[])).unwrap();
        assert_eq!(config.auth.secret.expose(), EXAMPLE_SECRET);
        assert!(config.check_secret(Path::new("x")).is_err());
    }

    #[test]
    fn secret_checks_refuse_missing_short_and_example() {
        let mut config = Config::default();
        let path = Path::new("/etc/rosterd.toml");
        assert!(
            config
                .check_secret(path)
                .unwrap_err()
                .to_string()
                .contains("rosterd init")
        );
        config.auth.secret = Secret::new("short");
        assert!(
            config
                .check_secret(path)
                .unwrap_err()
                .to_string()
                .contains("32")
        );
        config.auth.secret = Secret::new(EXAMPLE_SECRET);
        assert!(config.check_secret(path).is_err());
        config.auth.secret = Secret::new(generate_secret());
        config.check_secret(path).unwrap();
    }

    #[test]
    fn secret_debug_is_redacted() {
        let secret = Secret::new("hunter2-hunter2");
        assert!(!format!("{secret:?}").contains("hunter2"));
    }

    #[test]
    fn too_few_or_too_many_iterations_are_refused() {
        for count in ["10", "10000001"] {
            let err = Config::from_sources(
                None,
                "test",
                env(&[("ROSTERD_AUTH_PBKDF2_ITERATIONS", count)]),
            )
            .unwrap_err();
            assert!(err.to_string().contains("pbkdf2_iterations"), "{count}");
        }
    }
}
