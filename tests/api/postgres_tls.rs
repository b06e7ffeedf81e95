//! TLS to PostgreSQL (run when the suite runs on PostgreSQL): the test
//! server (`tests/postgres/start.sh`) speaks TLS with a certificate signed
//! by its own CA, and its role `tlsonly` may only connect over TLS.
//! `sslmode=require` encrypts and verifies the certificate against the
//! public roots and `database.ca_file`; without it rosterd does not use TLS.

use reqwest::StatusCode;
use rosterd::config::{Config, Secret};

use crate::helpers::{SECRET, TestUser, expect_json, postgres, spawn_app_with};

/// The test database's URL for `tlsonly` (with a password to keep out of
/// messages), and the CA; `None` off PostgreSQL.
fn tls_database() -> Option<(String, String)> {
    let ca = std::env::var("ROSTERD_TEST_POSTGRES_CA").ok()?;
    let url = postgres::fresh_database()?;
    let url = url.replacen(
        "postgres://postgres@",
        "postgres://tlsonly:hunter2-secret@",
        1,
    );
    Some((url, ca))
}

fn config(url: &str, ca: Option<&str>) -> Config {
    let dir = std::env::temp_dir();
    let mut config = Config::default();
    config.auth.secret = Secret::new(SECRET);
    config.database.path = Some(dir.join("unused.sqlite3"));
    config.database.url = Some(Secret::new(url));
    config.database.ca_file = ca.map(Into::into);
    config
}

/// The error `AppState::new` gives, as one string with its causes.
fn refusal(config: Config) -> String {
    match rosterd::AppState::new(config) {
        Ok(_) => panic!("the server started"),
        Err(err) => format!("{err:#}"),
    }
}

#[tokio::test]
async fn sslmode_require_encrypts_and_verifies_the_certificate() {
    let Some((url, ca)) = tls_database() else {
        eprintln!("skipped: needs the test PostgreSQL (ROSTERD_TEST_POSTGRES_CA)");
        return;
    };
    // Without sslmode=require there is no TLS, and this role needs it.
    let plain = refusal(config(&url, None));
    assert!(plain.contains("cannot connect"), "{plain}");
    assert!(
        !plain.contains("hunter2-secret"),
        "the password leaked: {plain}"
    );

    // TLS, but a certificate from a CA nobody trusts: refused.
    let required = format!("{url}?sslmode=require");
    let unknown = refusal(config(&required, None));
    assert!(unknown.contains("cannot connect"), "{unknown}");
    assert!(
        !unknown.contains("hunter2-secret"),
        "the password leaked: {unknown}"
    );

    // A ca_file that is not PEM: a one-line error naming it.
    let junk = std::env::temp_dir().join(format!("not-a-ca-{}.pem", std::process::id()));
    std::fs::write(&junk, "no certificate here").expect("write");
    let bad = refusal(config(&required, junk.to_str()));
    assert!(bad.contains("database.ca_file"), "{bad}");
    let _ = std::fs::remove_file(&junk);

    // Trusting the server's CA: it serves.
    let app = spawn_app_with(move |c| {
        c.database.url = Some(Secret::new(required));
        c.database.ca_file = Some(ca.into());
    })
    .await;
    let user = TestUser::generate();
    let (id, access, _) = app.create_user(&user).await;
    let me = expect_json(app.get_me(&access).await, StatusCode::OK).await;
    assert_eq!(me["id"], id);
}
