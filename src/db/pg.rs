//! PostgreSQL: sessions through the `postgres` crate (tokio-postgres's
//! blocking client: it runs where SQLite's calls run, on the blocking pool
//! and the writer thread, behind the same closures), pooled by r2d2, each
//! with its prepared statements; TLS by rustls when the URL says
//! `sslmode=require`; and the migrations of `schema.pg.sql`.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, bail};
use postgres::config::SslMode;

use postgres::types::ToSql;
use postgres::{Row, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;

/// The pool of sessions, and where they go (for the session that
/// listens).
#[derive(Clone)]
pub struct Pool {
    sessions: r2d2::Pool<Manager>,
    config: std::sync::Arc<postgres::Config>,
    tls: MakeRustlsConnect,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("config", &self.config)
            .finish()
    }
}

impl Pool {
    /// A pooled session, waiting at most the pool's timeout.
    pub fn get(&self) -> Result<r2d2::PooledConnection<Manager>, r2d2::Error> {
        self.sessions.get()
    }
}

/// Parameters of a statement.
pub type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// Where the server is and how many sessions to keep.
#[derive(Clone)]
pub struct Options {
    /// `postgres://user:password@host:port/database?sslmode=...`; the
    /// password never reaches a log or an error.
    pub url: String,
    /// Pooled sessions.
    pub pool_size: u32,
    /// How long to wait for a session.
    pub timeout: Duration,
    /// PEM certificates trusted to sign the server's, beside the public
    /// roots (a private CA, as managed PostgreSQL services use).
    pub ca_file: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("url", &shown(&self.url))
            .field("pool_size", &self.pool_size)
            .finish()
    }
}

/// The URL without its password, for messages.
pub fn shown(url: &str) -> String {
    match url.parse::<postgres::Config>() {
        Ok(config) => {
            let host = match config.get_hosts().first() {
                Some(postgres::config::Host::Tcp(host)) => host.clone(),
                #[cfg(unix)]
                Some(postgres::config::Host::Unix(path)) => path.display().to_string(),
                None => "localhost".to_owned(),
            };
            let port = config.get_ports().first().copied().unwrap_or(5432);
            format!(
                "postgres://{}@{host}:{port}/{}",
                config.get_user().unwrap_or(""),
                config.get_dbname().unwrap_or("")
            )
        }
        Err(_) => "postgres://(unreadable URL)".to_owned(),
    }
}

/// A session and the statements it prepared (each statement is parsed
/// once per session, not once per request).
pub struct Client {
    client: postgres::Client,
    statements: HashMap<String, Statement>,
    in_transaction: bool,
}

/// At most this many prepared statements a session keeps (listings make
/// one per filter and order); past it the cache starts over.
const MAX_STATEMENTS: usize = 256;

impl Client {
    fn new(client: postgres::Client) -> Client {
        Client {
            client,
            statements: HashMap::new(),
            in_transaction: false,
        }
    }

    fn statement(&mut self, sql: &str) -> super::error::Result<Statement> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql)?;
        if self.statements.len() >= MAX_STATEMENTS {
            self.statements.clear();
        }
        self.statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    /// The rows `sql` returns.
    pub fn query(&mut self, sql: &str, params: Params<'_>) -> super::error::Result<Vec<Row>> {
        let statement = self.statement(sql)?;
        Ok(self.client.query(&statement, params)?)
    }

    /// The one row `sql` returns, if any.
    pub fn query_opt(
        &mut self,
        sql: &str,
        params: Params<'_>,
    ) -> super::error::Result<Option<Row>> {
        let statement = self.statement(sql)?;
        Ok(self.client.query_opt(&statement, params)?)
    }

    /// The one row `sql` returns.
    pub fn query_one(&mut self, sql: &str, params: Params<'_>) -> super::error::Result<Row> {
        let statement = self.statement(sql)?;
        Ok(self.client.query_one(&statement, params)?)
    }

    /// How many rows `sql` changed.
    pub fn execute(&mut self, sql: &str, params: Params<'_>) -> super::error::Result<u64> {
        let statement = self.statement(sql)?;
        Ok(self.client.execute(&statement, params)?)
    }

    /// Runs a transaction-control statement, keeping track of whether a
    /// transaction is open (the protocol's own flag is not exposed).
    pub fn control(&mut self, sql: &str) -> super::error::Result<()> {
        let result = self.client.batch_execute(sql);
        match sql {
            "BEGIN" => self.in_transaction = result.is_ok(),
            "COMMIT" | "ROLLBACK" => self.in_transaction = false,
            _ => {}
        }
        Ok(result?)
    }

    /// Whether a transaction is open.
    pub fn in_transaction(&self) -> bool {
        self.in_transaction && !self.client.is_closed()
    }

    /// The blocking client itself, for what is not a plain statement
    /// (`COPY`, notifications).
    pub fn raw(&mut self) -> &mut postgres::Client {
        &mut self.client
    }
}

/// Makes sessions for the pool; a session that broke, or came back inside
/// a transaction, is dropped instead of lent out again.
pub struct Manager {
    config: postgres::Config,
    tls: MakeRustlsConnect,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("config", &self.config)
            .finish()
    }
}

impl Manager {
    /// A session to the configured server.
    pub fn connect(&self) -> Result<Client, postgres::Error> {
        Ok(Client::new(self.config.connect(self.tls.clone())?))
    }
}

/// The URL's settings, and how to speak TLS: with `sslmode=require`, the
/// session is encrypted and the server's certificate verified against the
/// public roots (webpki-roots) and `ca_file`; otherwise no TLS at all
/// (libpq's default, `prefer`, would try TLS and accept any certificate:
/// rosterd either verifies or says plainly that it does not encrypt).
fn settings(options: &Options) -> anyhow::Result<(postgres::Config, MakeRustlsConnect)> {
    let mut config = config(&options.url)?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(options.timeout);
    }
    if config.get_ssl_mode() != SslMode::Require {
        config.ssl_mode(SslMode::Disable);
    }
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = &options.ca_file {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let shown = path.display();
        let mut added = 0;
        for cert in CertificateDer::pem_file_iter(path)
            .with_context(|| format!("cannot read database.ca_file {shown}"))?
        {
            let cert = cert.with_context(|| format!("database.ca_file {shown} is not PEM"))?;
            roots
                .add(cert)
                .with_context(|| format!("database.ca_file {shown}: a certificate is unusable"))?;
            added += 1;
        }
        if added == 0 {
            bail!("database.ca_file {shown} holds no certificate");
        }
    }
    // ring rather than rustls's default aws-lc-rs: it builds wherever
    // rosterd does (a Pi, a cross build) without cmake. Its key exchange
    // has no post-quantum hybrid, which rustls now marks as deprecated.
    #[allow(deprecated)]
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS set-up")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok((config, MakeRustlsConnect::new(tls)))
}

impl r2d2::ManageConnection for Manager {
    type Connection = Client;
    type Error = postgres::Error;

    fn connect(&self) -> Result<Client, postgres::Error> {
        Manager::connect(self)
    }

    fn is_valid(&self, client: &mut Client) -> Result<(), postgres::Error> {
        client.client.simple_query("").map(drop)
    }

    fn has_broken(&self, client: &mut Client) -> bool {
        client.client.is_closed() || client.in_transaction
    }
}

/// The schema, embedded: `-- migration N` blocks applied in order.
const SCHEMA: &str = include_str!("../../schema.pg.sql");

/// The schema version this binary writes on PostgreSQL.
pub fn latest_version() -> i64 {
    super::sqlite::blocks(SCHEMA).len() as i64
}

/// Reads the URL (a bad one is named without its password).
fn config(url: &str) -> anyhow::Result<postgres::Config> {
    url.parse::<postgres::Config>()
        .map_err(|err| anyhow::anyhow!("database.url is not a PostgreSQL URL ({err})"))
}

/// Connects, refuses a schema from a newer rosterd, applies pending
/// migrations (one node at a time: under an advisory lock) and returns
/// the pool. Runs on a thread of its own: the blocking client refuses to
/// run on an async worker, where a server starts.
pub fn open(options: &Options) -> anyhow::Result<Pool> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| open_here(options))
            .join()
            .unwrap_or_else(|_| bail!("opening the PostgreSQL database panicked"))
    })
}

fn open_here(options: &Options) -> anyhow::Result<Pool> {
    let (config, tls) = settings(options)?;
    let manager = Manager {
        config: config.clone(),
        tls: tls.clone(),
    };
    let shown = shown(&options.url);
    let mut client = manager
        .connect()
        .with_context(|| format!("cannot connect to {shown}"))?;
    migrate(&mut client.client).with_context(|| format!("cannot migrate {shown}"))?;
    drop(client);
    let sessions = r2d2::Pool::builder()
        .max_size(options.pool_size)
        .min_idle(Some(1))
        .test_on_check_out(false)
        .connection_timeout(options.timeout.max(Duration::from_secs(1)))
        .build(manager)
        .with_context(|| format!("cannot connect to {shown}"))?;
    Ok(Pool {
        sessions,
        config: std::sync::Arc::new(config),
        tls,
    })
}

/// Calls `wake` whenever a change commits on any node (`NOTIFY
/// rosterd_events`, sent by the trigger that writes each event row), on a
/// thread of its own with its own session, until `stop` says so. A lost
/// session is opened again every second; the stream's poll covers the gap.
pub fn listen(
    pool: &Pool,
    wake: impl Fn() + Send + 'static,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::io::Result<()> {
    use postgres::fallible_iterator::FallibleIterator;
    use std::sync::atomic::Ordering;
    let config = postgres::Config::clone(&pool.config);
    let tls = pool.tls.clone();
    std::thread::Builder::new()
        .name("rosterd-listen".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let mut client = match config.connect(tls.clone()) {
                    Ok(client) => client,
                    Err(err) => {
                        tracing::warn!(%err, "events: cannot LISTEN; retrying in 1 s");
                        std::thread::sleep(Duration::from_secs(1));
                        continue;
                    }
                };
                if let Err(err) = client.batch_execute("LISTEN rosterd_events") {
                    tracing::warn!(%err, "events: cannot LISTEN; retrying in 1 s");
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
                // Changes made while no session listened are read now.
                wake();
                let mut notifications = client.notifications();
                let mut waiting = notifications.timeout_iter(Duration::from_millis(500));
                while !stop.load(Ordering::Relaxed) {
                    match waiting.next() {
                        Ok(Some(_)) => wake(),
                        Ok(None) => {}
                        Err(err) => {
                            tracing::warn!(%err, "events: the LISTEN session broke");
                            break;
                        }
                    }
                }
            }
        })
        .map(drop)
}

/// The advisory lock key that serializes migrations across nodes.
const MIGRATION_LOCK: i64 = i64::from_be_bytes(*b"rosterd\0");

fn migrate(client: &mut postgres::Client) -> anyhow::Result<()> {
    client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])?;
    let result = migrate_locked(client);
    let _ = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]);
    result
}

fn migrate_locked(client: &mut postgres::Client) -> anyhow::Result<()> {
    client.batch_execute(
        "CREATE TABLE IF NOT EXISTS rosterd_schema (
             one     INTEGER PRIMARY KEY CHECK (one = 1),
             version BIGINT  NOT NULL
         );
         INSERT INTO rosterd_schema (one, version) VALUES (1, 0) ON CONFLICT DO NOTHING;",
    )?;
    let current = version(client)?;
    let latest = latest_version();
    if current > latest {
        bail!(
            "the database has schema version {current}, newer than this rosterd knows \
             ({latest}): it was written by a newer rosterd. Run that version; nothing was changed"
        );
    }
    for (index, sql) in super::sqlite::blocks(SCHEMA).iter().enumerate() {
        let version = index as i64 + 1;
        if version <= current {
            continue;
        }
        let mut tx = client.transaction()?;
        tx.batch_execute(sql)
            .with_context(|| format!("migration {version} failed"))?;
        tx.execute(
            "UPDATE rosterd_schema SET version = $1 WHERE one = 1",
            &[&version],
        )?;
        tx.commit()?;
    }
    Ok(())
}

/// The schema version of the database (0 before the first start), read
/// without changing anything.
pub fn schema_version(options: &Options) -> anyhow::Result<i64> {
    let (config, tls) = settings(options)?;
    let mut client = config.connect(tls).context("cannot connect")?;
    let exists: bool = client
        .query_one("SELECT to_regclass('rosterd_schema') IS NOT NULL", &[])?
        .try_get(0)?;
    if !exists {
        return Ok(0);
    }
    version(&mut client)
}

/// The schema version recorded in the database.
fn version(client: &mut postgres::Client) -> anyhow::Result<i64> {
    Ok(client
        .query_one("SELECT version FROM rosterd_schema WHERE one = 1", &[])?
        .try_get(0)?)
}
