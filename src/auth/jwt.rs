//! JWTs as simplejwt 5.5 issues them: HS256, claims `token_type`, `exp`,
//! `iat`, `jti`, `user_id` (a string), plus `iss`/`aud` when configured.
//! Signed and checked by `jsonwebtoken`; decoding pins the algorithm,
//! allows no leeway and checks the type.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use anyhow::Context as _;

use crate::config::AuthConfig;

/// The two kinds of token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    /// Short-lived, sent as `Authorization: Bearer`.
    Access,
    /// Long-lived, exchanged for access tokens.
    Refresh,
}

impl TokenType {
    /// The `token_type` claim.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenType::Access => "access",
            TokenType::Refresh => "refresh",
        }
    }
}

/// The claims of every token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// `"access"` or `"refresh"`.
    pub token_type: String,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Issued at, seconds since the epoch.
    pub iat: u64,
    /// 32 hex characters, unique per token.
    pub jti: String,
    /// The user's id as a string, as simplejwt 5.4+ writes it; older
    /// simplejwt wrote a number, which is read as its digits.
    #[serde(deserialize_with = "string_or_integer")]
    pub user_id: String,
    /// Issuer, when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Audience, when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

impl Claims {
    /// The user id named by the token, if it is a well-formed id.
    pub fn user_id(&self) -> Option<i64> {
        self.user_id.parse().ok().filter(|id| *id > 0)
    }

    /// Whether the token was issued before the user's `tokens_valid_after`.
    pub fn is_void(&self, tokens_valid_after: i64) -> bool {
        i64::try_from(self.iat).map_or(true, |iat| iat < tokens_valid_after)
    }

    /// `exp` as stored in the database.
    pub fn expires_at(&self) -> i64 {
        i64::try_from(self.exp).unwrap_or(i64::MAX)
    }
}

/// A claim given as a string or as an integer, as its text.
fn string_or_integer<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Text(String),
        Integer(i64),
    }
    Ok(match Either::deserialize(d)? {
        Either::Text(text) => text,
        Either::Integer(n) => n.to_string(),
    })
}

/// Why a token was refused; the texts are simplejwt's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// Bad signature, bad format, wrong algorithm, missing claims.
    Invalid,
    /// Past its `exp`.
    Expired,
    /// A valid token of the other type.
    WrongType,
    /// Blacklisted, or void since a logout, password change or theft.
    Blacklisted,
}

impl TokenError {
    /// simplejwt's message.
    pub fn message(self) -> &'static str {
        match self {
            TokenError::Invalid => "Token is invalid",
            TokenError::Expired => "Token is expired",
            TokenError::WrongType => "Token has wrong type",
            TokenError::Blacklisted => "Token is blacklisted",
        }
    }
}

/// Signing and verification keys with the configured lifetimes.
pub struct Keys {
    /// The signing key, with its `kid` when it is an asymmetric one.
    signer: (EncodingKey, Algorithm, Option<String>),
    /// The HS256 secret: it signs under HS256, and verifies tokens without
    /// a `kid`.
    secret: DecodingKey,
    /// Under an asymmetric algorithm, a token without a `kid` (HS256) is
    /// accepted only if issued before this instant: when the first key was
    /// made, so tokens from before the switch live out their lifetime.
    hs256_before: u64,
    /// The asymmetric keys by `kid`: the signing one and the verify-only.
    by_kid: std::collections::HashMap<String, (Algorithm, DecodingKey)>,
    /// The JWKS document, served as is.
    jwks: bytes::Bytes,
    /// The checks of an HS256 token, then of a token of each asymmetric
    /// algorithm.
    validation: Validation,
    asymmetric: Vec<(Algorithm, Validation)>,
    access_lifetime: u64,
    refresh_lifetime: u64,
    issuer: Option<String>,
    audience: Option<String>,
}

/// A signed token with its claims.
#[derive(Debug, Clone)]
pub struct Signed {
    /// The compact JWT.
    pub token: String,
    /// What it says.
    pub claims: Claims,
}

/// A fresh access + refresh pair.
#[derive(Debug, Clone, Serialize)]
pub struct Pair {
    /// Access token.
    pub access: String,
    /// Refresh token.
    pub refresh: String,
}

/// Seconds since the epoch, as claims carry them.
fn now() -> u64 {
    u64::try_from(crate::model::unix_now()).unwrap_or(0)
}

/// 32 random hex characters.
fn new_jti() -> String {
    format!("{:032x}", rand::random::<u128>())
}

impl Keys {
    /// HS256 keys from the `[auth]` config (the secret already checked).
    pub fn new(auth: &AuthConfig) -> Keys {
        let secret = auth.secret.expose().as_bytes();
        let issuer = auth.issuer.clone().filter(|v| !v.is_empty());
        let audience = auth.audience.clone().filter(|v| !v.is_empty());
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        if let Some(iss) = &issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        if let Some(aud) = &audience {
            validation.set_audience(&[aud]);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        Keys {
            signer: (EncodingKey::from_secret(secret), Algorithm::HS256, None),
            secret: DecodingKey::from_secret(secret),
            hs256_before: u64::MAX,
            by_kid: std::collections::HashMap::new(),
            jwks: bytes::Bytes::from_static(br#"{"keys":[]}"#),
            asymmetric: super::keys::ASYMMETRIC
                .iter()
                .map(|alg| {
                    let mut checks = validation.clone();
                    checks.algorithms = vec![*alg];
                    (*alg, checks)
                })
                .collect(),
            validation,
            access_lifetime: auth.access_token_lifetime,
            refresh_lifetime: auth.refresh_token_lifetime,
            issuer,
            audience,
        }
    }

    /// The keys of the config and of the key files `loaded` (see
    /// [`super::keys`]): the newest file of `auth.algorithm` signs, unless
    /// that is HS256; every file verifies.
    pub fn with_files(auth: &AuthConfig, loaded: Vec<super::keys::Loaded>) -> anyhow::Result<Keys> {
        let mut keys = Keys::new(auth);
        let algorithm = super::keys::algorithm(&auth.algorithm)?;
        keys.jwks = serde_json::to_vec(&super::keys::jwks(&loaded))?.into();
        if algorithm != Algorithm::HS256 {
            let first = loaded.iter().map(|k| k.file.created).min().unwrap_or(0);
            keys.hs256_before = u64::try_from(first).unwrap_or(0);
            let newest = loaded
                .iter()
                .rev()
                .find(|k| k.file.algorithm == algorithm)
                .with_context(|| {
                    format!(
                        "no {algorithm:?} key in {}: run `rosterd keys generate`",
                        auth.keys_dir
                            .as_deref()
                            .unwrap_or(std::path::Path::new(""))
                            .display()
                    )
                })?;
            keys.signer = (
                newest.encoding.clone(),
                algorithm,
                Some(newest.file.kid.clone()),
            );
        }
        keys.by_kid = loaded
            .into_iter()
            .map(|k| (k.file.kid, (k.file.algorithm, k.decoding)))
            .collect();
        Ok(keys)
    }

    /// The keys the config names: with `auth.keys_dir`, its key files
    /// (see [`Keys::with_files`]); without, HS256 with the secret.
    pub fn load(auth: &AuthConfig) -> anyhow::Result<Keys> {
        match &auth.keys_dir {
            Some(dir) => Keys::with_files(auth, super::keys::load(dir)?),
            None => Keys::with_files(auth, Vec::new()),
        }
    }

    /// The key ids loaded, sorted.
    pub fn kids(&self) -> Vec<&str> {
        let mut kids: Vec<&str> = self.by_kid.keys().map(String::as_str).collect();
        kids.sort_unstable();
        kids
    }

    /// The JWKS document: the public keys, never a private or shared one.
    pub fn jwks(&self) -> bytes::Bytes {
        self.jwks.clone()
    }

    /// Signs one token of `kind` for `user_id`. Its `iat` is at least
    /// `not_before` (the user's `tokens_valid_after`), so a token issued
    /// right after a revocation, within the same second, is not void.
    pub fn issue(&self, kind: TokenType, user_id: i64, not_before: i64) -> anyhow::Result<Signed> {
        let iat = now().max(u64::try_from(not_before).unwrap_or(0));
        let lifetime = match kind {
            TokenType::Access => self.access_lifetime,
            TokenType::Refresh => self.refresh_lifetime,
        };
        let claims = Claims {
            token_type: kind.as_str().to_owned(),
            exp: iat.saturating_add(lifetime),
            iat,
            jti: new_jti(),
            user_id: user_id.to_string(),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
        };
        let (key, algorithm, kid) = &self.signer;
        let mut header = Header::new(*algorithm);
        header.kid.clone_from(kid);
        let token = jsonwebtoken::encode(&header, &claims, key)?;
        Ok(Signed { token, claims })
    }

    /// A fresh pair for `user_id`; the refresh token's claims come along.
    pub fn issue_pair(&self, user_id: i64, not_before: i64) -> anyhow::Result<(Pair, Claims)> {
        let access = self.issue(TokenType::Access, user_id, not_before)?;
        let refresh = self.issue(TokenType::Refresh, user_id, not_before)?;
        Ok((
            Pair {
                access: access.token,
                refresh: refresh.token,
            },
            refresh.claims,
        ))
    }

    /// Verifies `token` as a token of `expected` type.
    pub fn decode(&self, token: &str, expected: TokenType) -> Result<Claims, TokenError> {
        let claims = self.decode_any(token)?;
        if claims.token_type != expected.as_str() {
            return Err(TokenError::WrongType);
        }
        Ok(claims)
    }

    /// Verifies `token` as a token of either type: signature, algorithm,
    /// expiry, `nbf`, issuer and audience by `jsonwebtoken`, then the
    /// claims rosterd writes.
    pub fn decode_any(&self, token: &str) -> Result<Claims, TokenError> {
        // A `kid` names an asymmetric key, whose algorithm the token's must
        // be; without one, the token is HS256 (simplejwt's), checked with
        // the secret.
        let kid = if self.by_kid.is_empty() {
            None
        } else {
            jsonwebtoken::decode_header(token)
                .map_err(|_| TokenError::Invalid)?
                .kid
        };
        let checked = match &kid {
            None => jsonwebtoken::decode::<Claims>(token, &self.secret, &self.validation),
            Some(kid) => {
                let (algorithm, key) = self.by_kid.get(kid).ok_or(TokenError::Invalid)?;
                let (_, checks) = self
                    .asymmetric
                    .iter()
                    .find(|(alg, _)| alg == algorithm)
                    .ok_or(TokenError::Invalid)?;
                jsonwebtoken::decode::<Claims>(token, key, checks)
            }
        };
        let claims = checked
            .map_err(|err| match err.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })?
            .claims;
        if kid.is_none() && claims.iat >= self.hs256_before {
            return Err(TokenError::Invalid);
        }
        // jsonwebtoken refuses `exp < now - leeway`; simplejwt refuses a
        // token whose exp is now or past.
        if claims.exp <= now() {
            return Err(TokenError::Expired);
        }
        let well_formed = claims.jti.len() == 32
            && claims.jti.bytes().all(|b| b.is_ascii_hexdigit())
            && claims.user_id().is_some()
            && matches!(claims.token_type.as_str(), "access" | "refresh");
        if !well_formed {
            return Err(TokenError::Invalid);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use serde_json::json;

    fn keys() -> Keys {
        let auth = AuthConfig {
            secret: Secret::new("k".repeat(40)),
            ..AuthConfig::default()
        };
        Keys::new(&auth)
    }

    fn signed(claims: &serde_json::Value) -> String {
        let key = EncodingKey::from_secret("k".repeat(40).as_bytes());
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key).unwrap()
    }

    #[test]
    fn an_issued_token_decodes_as_its_type_only() {
        let keys = keys();
        let (pair, _) = keys.issue_pair(7, 0).unwrap();
        let claims = keys.decode(&pair.access, TokenType::Access).unwrap();
        assert_eq!(claims.user_id, "7");
        assert_eq!(claims.exp - claims.iat, 300);
        assert_eq!(claims.jti.len(), 32);
        assert_eq!(
            keys.decode(&pair.access, TokenType::Refresh).unwrap_err(),
            TokenError::WrongType
        );
        let refresh = keys.decode(&pair.refresh, TokenType::Refresh).unwrap();
        assert_eq!(refresh.exp - refresh.iat, 86_400);
        assert_ne!(claims.jti, refresh.jti);
    }

    #[test]
    fn expired_malformed_and_foreign_claims_are_refused() {
        let keys = keys();
        let now = now();
        let base = json!({
            "token_type": "access", "exp": now + 100, "iat": now,
            "jti": "0123456789abcdef0123456789abcdef", "user_id": "5",
        });
        assert!(keys.decode_any(&signed(&base)).is_ok());
        // Older simplejwt wrote the id as a number.
        let mut numeric = base.clone();
        numeric["user_id"] = json!(5);
        assert_eq!(
            keys.decode_any(&signed(&numeric)).unwrap().user_id(),
            Some(5)
        );
        for (change, want) in [
            (json!({"exp": now}), TokenError::Expired),
            (json!({"exp": now - 10}), TokenError::Expired),
            (json!({"jti": "short"}), TokenError::Invalid),
            (json!({"user_id": "0"}), TokenError::Invalid),
            (json!({"user_id": 5.5}), TokenError::Invalid),
            (json!({"user_id": true}), TokenError::Invalid),
            (json!({"user_id": -5}), TokenError::Invalid),
            (json!({"token_type": "other"}), TokenError::Invalid),
            (json!({"aud": "app"}), TokenError::Invalid),
            (json!({"nbf": now + 50}), TokenError::Invalid),
        ] {
            let mut claims = base.clone();
            for (key, value) in change.as_object().unwrap() {
                claims[key] = value.clone();
            }
            assert_eq!(
                keys.decode_any(&signed(&claims)).unwrap_err(),
                want,
                "{claims}"
            );
        }
    }

    #[test]
    fn another_secret_or_a_changed_byte_is_invalid() {
        let token = keys().issue(TokenType::Access, 1, 0).unwrap().token;
        let other = Keys::new(&AuthConfig {
            secret: Secret::new("z".repeat(40)),
            ..AuthConfig::default()
        });
        assert_eq!(
            other.decode(&token, TokenType::Access).unwrap_err(),
            TokenError::Invalid
        );
        let mut tampered = token.into_bytes();
        let last = tampered.len() - 1;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert_eq!(
            keys().decode(&tampered, TokenType::Access).unwrap_err(),
            TokenError::Invalid
        );
    }

    #[test]
    fn a_token_issued_after_a_revocation_in_the_same_second_is_not_void() {
        let keys = keys();
        let valid_after = i64::try_from(now()).unwrap() + 1;
        let signed = keys.issue(TokenType::Access, 1, valid_after).unwrap();
        assert!(!signed.claims.is_void(valid_after));
        let before = keys.issue(TokenType::Access, 1, 0).unwrap();
        assert!(before.claims.is_void(valid_after));
    }

    fn asymmetric(algorithm: &str, dir: &std::path::Path) -> Keys {
        let auth = AuthConfig {
            secret: Secret::new("k".repeat(40)),
            algorithm: algorithm.to_owned(),
            keys_dir: Some(dir.to_owned()),
            ..AuthConfig::default()
        };
        Keys::load(&auth).unwrap()
    }

    #[test]
    fn asymmetric_tokens_carry_their_kid_and_verify_with_the_public_key_alone() {
        let dir = tempfile::tempdir().unwrap();
        for (i, (name, alg)) in [
            ("EdDSA", Algorithm::EdDSA),
            ("ES256", Algorithm::ES256),
            ("RS256", Algorithm::RS256),
        ]
        .into_iter()
        .enumerate()
        {
            let made =
                super::super::keys::generate(dir.path(), alg, 1_700_000_000 + i as i64).unwrap();
            let keys = asymmetric(name, dir.path());
            let (pair, _) = keys.issue_pair(3, 0).unwrap();
            let header = jsonwebtoken::decode_header(&pair.access).unwrap();
            assert_eq!(
                (header.alg, header.kid.as_deref()),
                (alg, Some(made.kid.as_str()))
            );
            assert_eq!(
                keys.decode(&pair.access, TokenType::Access)
                    .unwrap()
                    .user_id(),
                Some(3)
            );
            // A verifier with nothing but the JWKS.
            let set: jsonwebtoken::jwk::JwkSet = serde_json::from_slice(&keys.jwks()).unwrap();
            let jwk = set.find(&made.kid).unwrap();
            let mut checks = Validation::new(alg);
            checks.set_required_spec_claims(&["exp"]);
            let key = DecodingKey::from_jwk(jwk).unwrap();
            jsonwebtoken::decode::<Claims>(&pair.access, &key, &checks).unwrap();
        }
    }

    #[test]
    fn unknown_kids_other_algorithms_and_hs256_after_the_switch_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let made =
            super::super::keys::generate(dir.path(), Algorithm::EdDSA, now() as i64 - 100).unwrap();
        let keys = asymmetric("EdDSA", dir.path());
        let base = json!({
            "token_type": "access", "exp": now() + 100, "iat": now(),
            "jti": "0123456789abcdef0123456789abcdef", "user_id": "5",
        });
        // HS256 with the secret, issued after the switch: refused; before: kept.
        assert_eq!(
            keys.decode_any(&signed(&base)).unwrap_err(),
            TokenError::Invalid
        );
        let mut before = base.clone();
        before["iat"] = json!(now() - 200);
        assert!(keys.decode_any(&signed(&before)).is_ok());
        // HS256 naming the EdDSA key's kid, or an unknown kid.
        for kid in [made.kid.as_str(), "eddsa-20200101T000000Z-0000"] {
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some(kid.to_owned());
            let key = EncodingKey::from_secret("k".repeat(40).as_bytes());
            let token = jsonwebtoken::encode(&header, &base, &key).unwrap();
            assert_eq!(
                keys.decode_any(&token).unwrap_err(),
                TokenError::Invalid,
                "{kid}"
            );
        }
    }
}
