//! Keys other services verify (`auth.algorithm` = EdDSA, ES256, RS256):
//! the real binary makes its first key, signs with it (`kid` in the
//! header), serves the public keys at `/.well-known/jwks.json`, and a
//! verifier holding nothing but that JWKS (the `jsonwebtoken` crate here)
//! accepts its tokens; rotation without a restart; prune; start-up
//! refusals.

use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use reqwest::StatusCode;
use reqwest::header::CACHE_CONTROL;
use serde_json::{Value, json};

use crate::helpers::{RunningServer, SECRET, expect_json, read_json, spawn_app};
use crate::operations::Site;

const PASSWORD: &str = "a-long-enough-passphrase-42";

fn site(algorithm: &str) -> Site {
    Site::new()
        .with_env("ROSTERD_AUTH_ALGORITHM", algorithm)
        .with_env("ROSTERD_AUTH_REFRESH_TOKEN_LIFETIME", "2")
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// Registers `name` and logs in: (access, refresh).
async fn login(server: &RunningServer, name: &str) -> (String, String) {
    let client = client();
    let body =
        json!({"username": name, "email": format!("{name}@example.com"), "password": PASSWORD});
    let resp = client
        .post(server.url("/api/users"))
        .json(&body)
        .send()
        .await
        .expect("register");
    assert!(resp.status().is_success() || resp.status() == StatusCode::BAD_REQUEST);
    let body = json!({"username": name, "password": PASSWORD});
    let resp = client
        .post(server.url("/api/token"))
        .json(&body)
        .send()
        .await
        .expect("login");
    let body = expect_json(resp, StatusCode::OK).await;
    let token = |k: &str| body[k].as_str().expect(k).to_owned();
    (token("access"), token("refresh"))
}

async fn jwks(server: &RunningServer) -> JwkSet {
    let resp = client()
        .get(server.url("/.well-known/jwks.json"))
        .send()
        .await
        .expect("jwks");
    assert_eq!(
        resp.headers()
            .get(CACHE_CONTROL)
            .and_then(|v| v.to_str().ok()),
        Some("public, max-age=300")
    );
    let body = expect_json(resp, StatusCode::OK).await;
    for key in body["keys"].as_array().expect("keys") {
        for private in ["d", "p", "q", "dp", "dq", "qi", "k"] {
            assert!(
                key.get(private).is_none(),
                "private part {private} in {key}"
            );
        }
        assert_eq!(key["use"], "sig", "{key}");
    }
    serde_json::from_value(body).expect("a JWK set")
}

/// Verifies `token` with the JWKS alone, as another service would.
fn verify_with(set: &JwkSet, token: &str) -> Result<Value, String> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
    let kid = header.kid.ok_or("no kid")?;
    let jwk = set.find(&kid).ok_or("kid not in the JWKS")?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    let mut checks = Validation::new(header.alg);
    checks.set_required_spec_claims(&["exp"]);
    jsonwebtoken::decode::<Value>(token, &key, &checks)
        .map(|t| t.claims)
        .map_err(|e| e.to_string())
}

async fn me(server: &RunningServer, access: &str) -> StatusCode {
    client()
        .get(server.url("/api/users/me"))
        .bearer_auth(access)
        .send()
        .await
        .expect("me")
        .status()
}

#[tokio::test]
async fn under_hs256_the_jwks_is_empty_and_cacheable() {
    let app = spawn_app().await;
    let resp = app
        .client
        .get(format!("{}/.well-known/jwks.json", app.base_url))
        .send()
        .await
        .expect("jwks");
    assert_eq!(
        resp.headers()
            .get(CACHE_CONTROL)
            .and_then(|v| v.to_str().ok()),
        Some("public, max-age=300")
    );
    assert_eq!(expect_json(resp, StatusCode::OK).await, json!({"keys": []}));
    let post = app
        .client
        .post(format!("{}/.well-known/jwks.json", app.base_url))
        .send()
        .await
        .expect("post");
    assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
}

/// Each algorithm: the first `serve` makes a key (mode 0600), tokens carry
/// its `kid` and verify with the JWKS alone, and work at the API.
#[tokio::test]
async fn each_algorithm_signs_tokens_that_verify_with_the_jwks_alone() {
    for (name, alg) in [
        ("EdDSA", Algorithm::EdDSA),
        ("ES256", Algorithm::ES256),
        ("RS256", Algorithm::RS256),
    ] {
        let site = site(name);
        let server = site.serve(&[]);
        assert!(
            server
                .stdout
                .iter()
                .any(|l| l.contains("first run: made the")),
            "{:?}",
            server.stdout
        );
        let (access, refresh) = login(&server, "keyed").await;
        let set = jwks(&server).await;
        assert_eq!(set.keys.len(), 1, "{name}");
        let header = jsonwebtoken::decode_header(&access).expect("header");
        assert_eq!(header.alg, alg);
        assert_eq!(header.kid, set.keys[0].common.key_id, "{name}");
        let claims = verify_with(&set, &access).expect("verified with the JWKS");
        assert_eq!(claims["token_type"], "access");
        verify_with(&set, &refresh).expect("the refresh token too");
        assert_eq!(me(&server, &access).await, StatusCode::OK, "{name}");
        let resp = client()
            .post(server.url("/api/token/refresh"))
            .json(&json!({"refresh": refresh}))
            .send()
            .await
            .expect("refresh");
        let body = expect_json(resp, StatusCode::OK).await;
        verify_with(&set, body["access"].as_str().expect("access")).expect("refreshed");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let dir = site.path("keys");
            for entry in std::fs::read_dir(&dir).expect("keys dir") {
                let mode = entry
                    .expect("entry")
                    .metadata()
                    .expect("meta")
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o777, 0o600);
            }
        }
    }
}

/// A token whose `alg` is not the configured one is refused (401
/// `token_not_valid`): HS256 with the shared secret once EdDSA signs, and
/// HS256 naming the EdDSA key's `kid`; so is an unknown `kid`.
#[tokio::test]
async fn tokens_of_another_algorithm_or_an_unknown_kid_are_refused() {
    let site = site("EdDSA");
    let server = site.serve(&[]);
    let (access, _) = login(&server, "mixed").await;
    let set = jwks(&server).await;
    let claims = verify_with(&set, &access).expect("valid");
    let kid = set.keys[0].common.key_id.clone().expect("kid");
    let secret = EncodingKey::from_secret(SECRET.as_bytes());
    let mut forged = Vec::new();
    forged.push(
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &secret).expect("hs256"),
    );
    let mut with_kid = Header::new(Algorithm::HS256);
    with_kid.kid = Some(kid);
    forged.push(jsonwebtoken::encode(&with_kid, &claims, &secret).expect("hs256 + kid"));
    let mut unknown = access.split('.').map(str::to_owned).collect::<Vec<_>>();
    let other = json!({"alg": "EdDSA", "typ": "JWT", "kid": "eddsa-20200101T000000Z-0000"});
    unknown[0] = base64_url(&other.to_string());
    forged.push(unknown.join("."));
    for token in forged {
        let resp = client()
            .get(server.url("/api/users/me"))
            .bearer_auth(&token)
            .send()
            .await
            .expect("me");
        let (status, body) = read_json(resp).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert_eq!(body["code"], "token_not_valid", "{body}");
    }
}

fn base64_url(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

/// Polls the JWKS until it holds `n` keys (the server looks at its key
/// files every few seconds).
async fn wait_for_keys(server: &RunningServer, n: usize) -> JwkSet {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let set = jwks(server).await;
        if set.keys.len() == n || Instant::now() > deadline {
            return set;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `keys rotate` while the server runs: within seconds the JWKS holds both
/// keys, new tokens carry the new `kid`, tokens signed before still work.
/// After the refresh lifetime (2 s here) and the 10 s a server may take to
/// notice a rotation, `keys prune` deletes the old key and a token signed
/// with it (forged here from its file) is refused.
#[tokio::test]
async fn a_rotation_needs_no_restart_and_prune_retires_the_old_key() {
    let site = site("EdDSA");
    let server = site.serve(&[]);
    let (before, _) = login(&server, "rotated").await;
    let first = jwks(&server).await;
    let old_kid = first.keys[0].common.key_id.clone().expect("kid");
    let old_pem = std::fs::read(site.path(&format!("keys/{old_kid}.pem"))).expect("old key");

    std::thread::sleep(Duration::from_millis(1100)); // a new second: a new kid
    let out = site.run(&["keys", "rotate"]).ok();
    assert!(out.stdout.contains("made eddsa-"), "{}", out.stdout);
    let both = wait_for_keys(&server, 2).await;
    assert_eq!(
        both.keys.len(),
        2,
        "the running server published the new key"
    );
    let (after, _) = login(&server, "rotated").await;
    let new_kid = jsonwebtoken::decode_header(&after)
        .expect("header")
        .kid
        .expect("kid");
    assert_ne!(new_kid, old_kid);
    assert_eq!(
        me(&server, &before).await,
        StatusCode::OK,
        "signed before the rotation"
    );
    assert_eq!(me(&server, &after).await, StatusCode::OK);

    let early = site.run(&["keys", "prune"]).ok();
    assert!(
        early.stdout.contains("0 key(s) deleted"),
        "{}",
        early.stdout
    );
    std::thread::sleep(Duration::from_secs(13));
    let out = site.run(&["keys", "prune"]).ok();
    assert!(
        out.stdout.contains(&format!("deleted {old_kid}")),
        "{}",
        out.stdout
    );
    let left = wait_for_keys(&server, 1).await;
    assert_eq!(
        left.keys[0].common.key_id.as_deref(),
        Some(new_kid.as_str())
    );
    let claims = verify_with(&both, &after).expect("claims");
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(old_kid);
    let key = EncodingKey::from_ed_pem(&old_pem).expect("old key");
    let forged = jsonwebtoken::encode(&header, &claims, &key).expect("sign");
    assert_eq!(me(&server, &forged).await, StatusCode::UNAUTHORIZED);
    let list = site.run(&["keys", "list"]).ok();
    assert!(
        list.stdout.contains(&new_kid) && list.stdout.contains("signs"),
        "{}",
        list.stdout
    );
}

/// Start-up refuses a key file others may read, and a keys directory with
/// no key of the configured algorithm, each with a one-line fix.
#[tokio::test]
async fn start_up_refuses_a_readable_or_missing_key() {
    let site = site("ES256");
    let out = site.run(&["keys", "generate"]).ok();
    assert!(out.stdout.contains("made es256-"), "{}", out.stdout);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let key = std::fs::read_dir(site.path("keys"))
            .expect("keys")
            .next()
            .expect("a key")
            .expect("entry")
            .path();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let out = site.run(&["serve", "--bind", "127.0.0.1:0"]);
        assert!(!out.success);
        assert_eq!(out.stderr.trim_end().lines().count(), 1, "{}", out.stderr);
        assert!(out.stderr.contains("chmod 600"), "{}", out.stderr);
        let doctor = site.run(&["doctor"]);
        assert!(!doctor.success);
        assert!(doctor.stdout.contains("chmod 600"), "{}", doctor.stdout);
        std::fs::remove_file(&key).expect("rm");
    }
    let out = site.run(&["serve", "--bind", "127.0.0.1:0"]);
    assert!(!out.success);
    assert_eq!(out.stderr.trim_end().lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("rosterd keys generate"),
        "{}",
        out.stderr
    );
    let hs = site.run(&["keys", "generate", "--algorithm", "HS256"]);
    assert!(!hs.success);
}
