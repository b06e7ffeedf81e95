//! Asymmetric signing keys (`auth.algorithm` = EdDSA, ES256 or RS256):
//! PEM files in a directory beside the config, one per key, named by the
//! key's id (`kid`), which says its algorithm and when it was made
//! (`eddsa-20261205T102300Z-3fa1.pem`). The newest key of the configured
//! algorithm signs; every other key verifies only, until `prune` drops the
//! ones whose tokens have all expired. Keys are made here (RustCrypto's
//! `ed25519-dalek`, `p256`, `rsa`) and read, signed with and published as
//! JWKs by `jsonwebtoken`.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};

/// The asymmetric algorithms rosterd signs with.
pub const ASYMMETRIC: [Algorithm; 3] = [Algorithm::EdDSA, Algorithm::ES256, Algorithm::RS256];

/// Parses `auth.algorithm`.
pub fn algorithm(name: &str) -> anyhow::Result<Algorithm> {
    match name {
        "HS256" => Ok(Algorithm::HS256),
        "EdDSA" => Ok(Algorithm::EdDSA),
        "ES256" => Ok(Algorithm::ES256),
        "RS256" => Ok(Algorithm::RS256),
        other => bail!("auth.algorithm is {other:?}: it must be HS256, EdDSA, ES256 or RS256"),
    }
}

fn prefix(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::EdDSA => "eddsa",
        Algorithm::ES256 => "es256",
        Algorithm::RS256 => "rs256",
        _ => "hs256",
    }
}

/// One key file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFile {
    /// Its id, the file name without `.pem`.
    pub kid: String,
    /// What it signs with.
    pub algorithm: Algorithm,
    /// When it was made, seconds since the epoch.
    pub created: i64,
    /// The file.
    pub path: PathBuf,
}

/// The time format inside key ids.
const KID_TIME: &[time::format_description::BorrowedFormatItem<'static>] =
    time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");

fn parse_kid(kid: &str) -> Option<(Algorithm, i64)> {
    let mut parts = kid.splitn(3, '-');
    let name = parts.next()?;
    let alg = ASYMMETRIC.into_iter().find(|a| prefix(*a) == name)?;
    let made = time::PrimitiveDateTime::parse(parts.next()?, KID_TIME).ok()?;
    parts.next()?;
    Some((alg, made.assume_utc().unix_timestamp()))
}

/// The key files in `dir`, oldest first; an absent directory holds none.
pub fn list(dir: &Path) -> anyhow::Result<Vec<KeyFile>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err).with_context(|| format!("cannot read {}", dir.display())),
    };
    let mut keys = Vec::new();
    for entry in entries {
        let path = entry?.path();
        let Some(kid) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".pem"))
        else {
            continue;
        };
        if let Some((algorithm, created)) = parse_kid(kid) {
            keys.push(KeyFile {
                kid: kid.to_owned(),
                algorithm,
                created,
                path,
            });
        }
    }
    keys.sort_by(|a, b| (a.created, &a.kid).cmp(&(b.created, &b.kid)));
    Ok(keys)
}

/// Makes a new key for `alg` in `dir` (created 0700 if missing), written
/// 0600; the newest key of its algorithm, it signs from now on.
pub fn generate(dir: &Path, alg: Algorithm, now: i64) -> anyhow::Result<KeyFile> {
    use ed25519_dalek::pkcs8::EncodePrivateKey as _;
    let pem = match alg {
        Algorithm::EdDSA => {
            let key = ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng);
            // Without the public half (PKCS#8 v1), as jsonwebtoken reads it.
            ed25519_dalek::pkcs8::KeypairBytes {
                secret_key: key.to_bytes(),
                public_key: None,
            }
            .to_pkcs8_pem(Default::default())
        }
        Algorithm::ES256 => {
            p256::SecretKey::random(&mut rand_core::OsRng).to_pkcs8_pem(Default::default())
        }
        Algorithm::RS256 => rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048)
            .context("cannot make an RSA key")?
            .to_pkcs8_pem(Default::default()),
        other => bail!("{other:?} keys are not made here (HS256 uses auth.secret)"),
    }
    .map_err(|err| anyhow::anyhow!("cannot encode the key: {err}"))?;
    let made = time::OffsetDateTime::from_unix_timestamp(now)?.format(KID_TIME)?;
    let kid = format!("{}-{made}-{:04x}", prefix(alg), rand::random::<u16>());
    create_private_dir(dir)?;
    let path = dir.join(format!("{kid}.pem"));
    write_private(&path, pem.as_bytes())?;
    Ok(KeyFile {
        kid,
        algorithm: alg,
        created: now,
        path,
    })
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("cannot create {}", path.display()))
}

/// How long after the next key is made a running server may still sign
/// with a key: it looks at the key files every 5 seconds
/// (`state::KEY_CHECK`); twice that, to be safe.
pub const PICKUP_SECONDS: i64 = 10;

/// When each key stopped signing: [`PICKUP_SECONDS`] after the next key was
/// made (the newest has not). A key retired more than `lifetime` seconds
/// ago signed no token that is still valid.
pub fn retired_at(keys: &[KeyFile]) -> Vec<Option<i64>> {
    (0..keys.len())
        .map(|i| keys.get(i + 1).map(|next| next.created + PICKUP_SECONDS))
        .collect()
}

/// Deletes the keys retired more than `lifetime` seconds before `now`;
/// returns them.
pub fn prune(dir: &Path, lifetime: u64, now: i64) -> anyhow::Result<Vec<KeyFile>> {
    let keys = list(dir)?;
    let lifetime = i64::try_from(lifetime).unwrap_or(i64::MAX);
    let mut pruned = Vec::new();
    for (key, retired) in keys.iter().zip(retired_at(&keys)) {
        if retired.is_some_and(|at| at.saturating_add(lifetime) < now) {
            std::fs::remove_file(&key.path)
                .with_context(|| format!("cannot delete {}", key.path.display()))?;
            pruned.push(key.clone());
        }
    }
    Ok(pruned)
}

/// A loaded key: what it signs with, and how it verifies.
pub struct Loaded {
    /// The key file.
    pub file: KeyFile,
    /// The private key.
    pub encoding: EncodingKey,
    /// The public key.
    pub decoding: DecodingKey,
    /// The public key as a JWK (`kid`, `alg`, `use: sig`).
    pub jwk: Jwk,
}

/// Reads every key of `dir`, refusing a file others may read.
pub fn load(dir: &Path) -> anyhow::Result<Vec<Loaded>> {
    let mut loaded = Vec::new();
    for file in list(dir)? {
        check_private(&file.path)?;
        let pem = std::fs::read(&file.path)
            .with_context(|| format!("cannot read key file {}", file.path.display()))?;
        let encoding = match file.algorithm {
            Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
            Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
            _ => EncodingKey::from_rsa_pem(&pem),
        }
        .with_context(|| {
            format!(
                "key file {} is not a {:?} private key in PEM: delete it, or run \
                 `rosterd keys generate`",
                file.path.display(),
                file.algorithm
            )
        })?;
        let mut jwk = Jwk::from_encoding_key(&encoding, file.algorithm)
            .with_context(|| format!("cannot read the public key of {}", file.path.display()))?;
        jwk.common.key_id = Some(file.kid.clone());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        let decoding = DecodingKey::from_jwk(&jwk)?;
        loaded.push(Loaded {
            file,
            encoding,
            decoding,
            jwk,
        });
    }
    Ok(loaded)
}

/// The JWKS of `keys`: their public halves only.
pub fn jwks(keys: &[Loaded]) -> JwkSet {
    JwkSet {
        keys: keys.iter().map(|k| k.jwk.clone()).collect(),
    }
}

/// Refuses a key file that its group or others may read or write.
#[cfg(unix)]
pub fn check_private(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .with_context(|| format!("cannot read key file {}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        bail!(
            "key file {} is readable by others (mode {:o}): run `chmod 600 {}`",
            path.display(),
            mode & 0o777,
            path.display()
        );
    }
    Ok(())
}

#[cfg(not(unix))]
pub fn check_private(_path: &Path) -> anyhow::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kids_say_their_algorithm_and_time() {
        assert_eq!(
            parse_kid("eddsa-20261205T102300Z-3fa1"),
            Some((Algorithm::EdDSA, 1_796_466_180))
        );
        for bad in [
            "eddsa-20261205T102300Z",
            "hs256-20261205T102300Z-1",
            "x",
            "",
        ] {
            assert_eq!(parse_kid(bad), None, "{bad}");
        }
    }

    #[test]
    fn every_algorithm_makes_a_key_that_loads_and_publishes_its_public_half() {
        let dir = tempfile::tempdir().unwrap();
        for (i, alg) in ASYMMETRIC.into_iter().enumerate() {
            generate(dir.path(), alg, 1_800_000_000 + i as i64).unwrap();
        }
        let loaded = load(dir.path()).unwrap();
        assert_eq!(loaded.len(), 3);
        let set = serde_json::to_value(jwks(&loaded)).unwrap();
        for key in set["keys"].as_array().unwrap() {
            assert_eq!(key["use"], "sig", "{key}");
            assert!(key["kid"].is_string(), "{key}");
            assert!(key.get("d").is_none(), "a private part in {key}");
        }
        assert_eq!(set["keys"][0]["alg"], "EdDSA");
        assert_eq!(set["keys"][1]["crv"], "P-256");
        assert_eq!(set["keys"][2]["kty"], "RSA");
    }

    #[test]
    fn prune_drops_keys_retired_longer_ago_than_the_lifetime() {
        let dir = tempfile::tempdir().unwrap();
        let old = generate(dir.path(), Algorithm::EdDSA, 1_800_000_000).unwrap();
        let new = generate(dir.path(), Algorithm::EdDSA, 1_800_000_100).unwrap();
        let retired = 1_800_000_100 + PICKUP_SECONDS;
        assert!(prune(dir.path(), 1000, retired + 1000).unwrap().is_empty());
        let pruned = prune(dir.path(), 1000, retired + 1001).unwrap();
        assert_eq!(pruned, [old]);
        assert_eq!(list(dir.path()).unwrap(), [new]);
    }

    #[cfg(unix)]
    #[test]
    fn a_key_others_may_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = generate(dir.path(), Algorithm::ES256, 1_800_000_000).unwrap();
        std::fs::set_permissions(&key.path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load(dir.path()).err().unwrap().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }
}
