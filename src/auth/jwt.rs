//! JWTs as simplejwt 5.5 issues them: HS256, claims `token_type`, `exp`,
//! `iat`, `jti`, `user_id` (a string), plus `iss`/`aud` when configured.
//! Decoding pins the algorithm, allows no leeway and checks the type.
//!
//! Tokens are signed here, and a token shaped exactly as this module signs
//! them (its header, its claims and no others) is checked here too, with
//! an HMAC keyed once: `jsonwebtoken` decodes the header and the claims
//! twice and keys its HMAC on every call (1.8 us a decode, 0.8 us a
//! signing on the bench machine, the two largest costs of a refresh after
//! the network). Any other token goes to `jsonwebtoken`, so odd tokens
//! (another header, a `nbf`, an array `aud`, a float `exp`) get its answer;
//! for the tokens checked here, the answer is the one `jsonwebtoken` would
//! give, in the same order (unit tests hold the two to it).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

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
    /// The user's id as a string, as simplejwt writes it.
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

/// The claims of a token shaped as [`Keys::issue`] signs them, and no
/// other: a token with any other claim is left to `jsonwebtoken`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OwnClaims {
    token_type: String,
    exp: u64,
    iat: u64,
    jti: String,
    user_id: String,
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    aud: Option<String>,
}

/// The first part of every token signed here: `{"typ":"JWT","alg":"HS256"}`
/// as `jsonwebtoken` writes it, in base64url.
const HEADER: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9";

/// Tokens remembered as checked at most; past it, the memory starts again.
const MOST_REMEMBERED: usize = 4096;

/// Hashes the remembered tokens by their last 16 bytes, the end of their
/// signature: only tokens whose HMAC checked are stored, so those bytes
/// are as good as random and no one can choose them to crowd the map,
/// and 16 bytes are quick to hash (SipHash over a whole token of about
/// 250 bytes cost ~850 instructions a lookup, by callgrind). A key of any
/// other shape (`str` hashes as its bytes, then 0xff) works the same way.
#[derive(Debug, Clone, Copy, Default)]
struct TailHash;

impl BuildHasher for TailHash {
    type Hasher = Tail;

    fn build_hasher(&self) -> Tail {
        Tail(0)
    }
}

/// [`TailHash`]'s hasher: FxHash's mixing over the last 16 bytes written.
struct Tail(u64);

impl Hasher for Tail {
    fn write(&mut self, bytes: &[u8]) {
        let tail = &bytes[bytes.len().saturating_sub(16)..];
        for chunk in tail.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word))
                .wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Signing and verification keys with the configured lifetimes.
pub struct Keys {
    /// Tokens checked here, by their text, with their claims: everything
    /// about them but the clock held when they were checked and holds for
    /// as long as the secret does, so only the expiry is checked again. A
    /// client sends one access token with every request of its lifetime
    /// (and one refresh token with every refresh); checking it again each
    /// time (base64, JSON, HMAC, allocations) cost about 2 µs a request.
    remembered: Mutex<HashMap<String, Arc<Claims>, TailHash>>,
    /// HMAC-SHA256 keyed with the secret; cloned for each token.
    mac: Hmac<Sha256>,
    decoding: DecodingKey,
    validation: Validation,
    access_lifetime: u64,
    refresh_lifetime: u64,
    issuer: Option<String>,
    audience: Option<String>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("access_lifetime", &self.access_lifetime)
            .field("refresh_lifetime", &self.refresh_lifetime)
            .finish_non_exhaustive()
    }
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
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Pair {
    /// Access token.
    pub access: String,
    /// Refresh token.
    pub refresh: String,
}

fn non_empty(value: &Option<String>) -> Option<String> {
    value.clone().filter(|v| !v.is_empty())
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// 32 random hex characters.
fn new_jti() -> String {
    format!("{:032x}", rand::random::<u128>())
}

impl Keys {
    /// Keys from the `[auth]` config (the secret already checked).
    pub fn new(auth: &AuthConfig) -> Keys {
        let secret = auth.secret.expose().as_bytes();
        let issuer = non_empty(&auth.issuer);
        let audience = non_empty(&auth.audience);
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
            remembered: Mutex::new(HashMap::with_hasher(TailHash)),
            // HMAC takes a key of any length.
            mac: Hmac::<Sha256>::new_from_slice(secret)
                .unwrap_or_else(|_| unreachable!("HMAC accepts any key length")),
            decoding: DecodingKey::from_secret(secret),
            validation,
            access_lifetime: auth.access_token_lifetime,
            refresh_lifetime: auth.refresh_token_lifetime,
            issuer,
            audience,
        }
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
        let token = self.sign(&claims)?;
        Ok(Signed { token, claims })
    }

    /// The compact JWT of `claims`, byte for byte as `jsonwebtoken::encode`
    /// writes it with an HS256 header.
    fn sign(&self, claims: &Claims) -> serde_json::Result<String> {
        let json = serde_json::to_vec(claims)?;
        let mut token = String::with_capacity(HEADER.len() + json.len() * 4 / 3 + 48);
        token.push_str(HEADER);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&json, &mut token);
        let mut mac = self.mac.clone();
        mac.update(token.as_bytes());
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(mac.finalize().into_bytes(), &mut token);
        Ok(token)
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
    pub fn decode(&self, token: &str, expected: TokenType) -> Result<Arc<Claims>, TokenError> {
        let claims = self.decode_any(token)?;
        if claims.token_type != expected.as_str() {
            return Err(TokenError::WrongType);
        }
        Ok(claims)
    }

    /// Verifies `token` as a token of either type.
    pub fn decode_any(&self, token: &str) -> Result<Arc<Claims>, TokenError> {
        self.decode_any_at(token, now())
    }

    /// [`Keys::decode_any`] at `now`, for tokens checked here.
    fn decode_any_at(&self, token: &str, now: u64) -> Result<Arc<Claims>, TokenError> {
        if let Some(claims) = self.recall(token) {
            return self.validate(&claims, now).map(|()| claims);
        }
        match self.decode_own(token, now) {
            Some(checked) => {
                let claims = Arc::new(Self::well_formed(checked?)?);
                self.remember(token, &claims);
                Ok(claims)
            }
            None => Self::well_formed(self.decode_other(token)?).map(Arc::new),
        }
    }

    fn remembered(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Claims>, TailHash>> {
        // Nothing can panic under this lock; a poisoned map is still whole.
        self.remembered.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The claims of `token` if it passed every check here before.
    fn recall(&self, token: &str) -> Option<Arc<Claims>> {
        self.remembered().get(token).cloned()
    }

    /// Remembers `token`, which passed every check here, with its claims.
    fn remember(&self, token: &str, claims: &Arc<Claims>) {
        let mut remembered = self.remembered();
        if remembered.len() >= MOST_REMEMBERED {
            remembered.clear();
        }
        remembered.insert(token.to_owned(), claims.clone());
    }

    /// A token signed as [`Keys::sign`] signs: its header, a valid
    /// signature, and claims of [`OwnClaims`] only, checked as
    /// `jsonwebtoken` checks them with `self.validation`. `None` for any
    /// other token, whose answer is `jsonwebtoken`'s.
    fn decode_own(&self, token: &str, now: u64) -> Option<Result<Claims, TokenError>> {
        // Split as jsonwebtoken splits: the signature after the last dot,
        // the claims after the one before.
        let (message, signature) = token.rsplit_once('.')?;
        let (header, payload) = message.rsplit_once('.')?;
        if header != HEADER {
            return None;
        }
        let mut mac = self.mac.clone();
        mac.update(message.as_bytes());
        let signed = URL_SAFE_NO_PAD
            .decode(signature)
            .is_ok_and(|signature| mac.verify_slice(&signature).is_ok());
        if !signed {
            return Some(Err(TokenError::Invalid));
        }
        let json = URL_SAFE_NO_PAD.decode(payload).ok()?;
        let own: OwnClaims = serde_json::from_slice(&json).ok()?;
        let claims = Claims {
            token_type: own.token_type,
            exp: own.exp,
            iat: own.iat,
            jti: own.jti,
            user_id: own.user_id,
            iss: own.iss,
            aud: own.aud,
        };
        Some(self.validate(&claims, now).map(|()| claims))
    }

    /// `jsonwebtoken`'s checks of `self.validation`, in its order, then
    /// simplejwt's expiry (`exp` now or past), for claims without `nbf`.
    fn validate(&self, claims: &Claims, now: u64) -> Result<(), TokenError> {
        let missing =
            |wanted: &Option<String>, got: &Option<String>| wanted.is_some() && got.is_none();
        if missing(&self.issuer, &claims.iss) || missing(&self.audience, &claims.aud) {
            return Err(TokenError::Invalid);
        }
        if claims.exp < now {
            return Err(TokenError::Expired);
        }
        if let (Some(wanted), Some(got)) = (&self.issuer, &claims.iss)
            && wanted != got
        {
            return Err(TokenError::Invalid);
        }
        match (&self.audience, &claims.aud) {
            (None, Some(_)) => return Err(TokenError::Invalid),
            (Some(wanted), Some(got)) if wanted != got => return Err(TokenError::Invalid),
            _ => {}
        }
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        Ok(())
    }

    /// Any other token, checked by `jsonwebtoken`.
    fn decode_other(&self, token: &str) -> Result<Claims, TokenError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|err| match err.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })?;
        let claims = data.claims;
        // jsonwebtoken checks `exp < now - leeway`; simplejwt refuses a
        // token whose exp is now or past.
        if claims.exp <= now() {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }

    /// Claims rosterd would have written: a 32-hex `jti`, a positive
    /// numeric `user_id`, a known `token_type`.
    fn well_formed(claims: Claims) -> Result<Claims, TokenError> {
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
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    /// The key of [`keys`], for tokens signed by `jsonwebtoken`.
    fn encoding() -> EncodingKey {
        EncodingKey::from_secret("k".repeat(40).as_bytes())
    }

    #[test]
    fn tokens_are_signed_byte_for_byte_as_jsonwebtoken_signs_them() {
        let keys = keys();
        for kind in [TokenType::Access, TokenType::Refresh] {
            let signed = keys.issue(kind, 42, 0).unwrap();
            let theirs =
                jsonwebtoken::encode(&Header::new(Algorithm::HS256), &signed.claims, &encoding())
                    .unwrap();
            assert_eq!(signed.token, theirs);
            assert!(signed.token.starts_with(&format!("{HEADER}.")));
        }
    }

    /// Claims of every shape worth checking, as JSON.
    fn claim_sets() -> Vec<serde_json::Value> {
        let now = now();
        let base = json!({
            "token_type": "access", "exp": now + 100, "iat": now,
            "jti": "0123456789abcdef0123456789abcdef", "user_id": "5",
        });
        let with = |changes: serde_json::Value| {
            let mut claims = base.clone();
            for (key, value) in changes.as_object().unwrap() {
                if value.is_null() && key.starts_with('-') {
                    claims.as_object_mut().unwrap().remove(&key[1..]);
                } else {
                    claims[key] = value.clone();
                }
            }
            claims
        };
        vec![
            base.clone(),
            with(json!({"exp": now})),
            with(json!({"exp": now - 1})),
            with(json!({"exp": 0})),
            with(json!({"exp": (now + 100) as f64 + 0.5})),
            with(json!({"exp": -5})),
            with(json!({"-exp": null})),
            with(json!({"-jti": null})),
            with(json!({"jti": "short"})),
            with(json!({"user_id": 5})),
            with(json!({"user_id": "0"})),
            with(json!({"token_type": "refresh"})),
            with(json!({"token_type": "other"})),
            with(json!({"iss": "rosterd"})),
            with(json!({"iss": "someone"})),
            with(json!({"iss": "someone", "exp": now - 1})),
            with(json!({"iss": null})),
            with(json!({"aud": "app"})),
            with(json!({"aud": "other"})),
            with(json!({"aud": ["app"]})),
            with(json!({"aud": null})),
            with(json!({"iss": "rosterd", "aud": "app"})),
            with(json!({"iss": "rosterd", "aud": "app", "exp": now - 1})),
            with(json!({"iss": "rosterd", "aud": "other", "exp": now - 1})),
            with(json!({"iss": "rosterd", "aud": "app", "nbf": now + 50})),
            with(json!({"iss": "rosterd", "aud": "app", "extra": 1})),
        ]
    }

    #[test]
    fn a_token_checked_here_gets_the_answer_jsonwebtoken_gives() {
        let plain = keys();
        let strict = Keys::new(&AuthConfig {
            secret: Secret::new("k".repeat(40)),
            issuer: Some("rosterd".into()),
            audience: Some("app".into()),
            ..AuthConfig::default()
        });
        let mut checked_here = 0;
        for claims in claim_sets() {
            let token =
                jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &encoding()).unwrap();
            let mut tampered = token.clone();
            tampered.insert(HEADER.len() + 3, 'x');
            for keys in [&plain, &strict] {
                for token in [&token, &tampered] {
                    if let Some(own) = keys.decode_own(token, now()) {
                        checked_here += 1;
                        assert_eq!(own, keys.decode_other(token), "{claims}");
                    }
                    // Twice: the second answer may come from memory.
                    for _ in 0..2 {
                        assert_eq!(
                            keys.decode_any(token).map(Arc::unwrap_or_clone),
                            keys.decode_other(token).and_then(Keys::well_formed),
                            "{claims}"
                        );
                    }
                }
            }
        }
        // Most of them are checked here; the odd ones are not.
        assert!(checked_here > 60, "{checked_here}");
        let odd = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &json!({"token_type": "access", "exp": now() + 9, "iat": 1,
                    "jti": "0123456789abcdef0123456789abcdef", "user_id": "5",
                    "aud": ["app"]}),
            &encoding(),
        )
        .unwrap();
        assert!(plain.decode_own(&odd, now()).is_none());
        assert!(
            plain
                .decode_own(&plain.issue(TokenType::Access, 1, 0).unwrap().token, now())
                .is_some()
        );
    }

    fn keys() -> Keys {
        let auth = AuthConfig {
            secret: Secret::new("k".repeat(40)),
            ..AuthConfig::default()
        };
        Keys::new(&auth)
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

    #[test]
    fn a_remembered_token_still_expires_and_only_good_tokens_are_remembered() {
        let keys = keys();
        let signed = keys.issue(TokenType::Access, 3, 0).unwrap();
        let (token, exp) = (&signed.token, signed.claims.exp);
        assert_eq!(*keys.decode_any_at(token, exp - 1).unwrap(), signed.claims);
        assert!(keys.remembered().contains_key(token.as_str()));
        // From memory: the same claims, the same type check, and expiry
        // against the clock of each request.
        assert_eq!(*keys.decode_any_at(token, exp - 1).unwrap(), signed.claims);
        assert_eq!(
            keys.decode(token, TokenType::Refresh).unwrap_err(),
            TokenError::WrongType
        );
        assert_eq!(
            keys.decode_any_at(token, exp).unwrap_err(),
            TokenError::Expired
        );
        assert_eq!(
            keys.decode_any_at(token, exp + 9).unwrap_err(),
            TokenError::Expired
        );
        assert_eq!(keys.remembered().len(), 1);

        // A token refused, or checked by jsonwebtoken, is not remembered.
        let mut tampered = token.clone().into_bytes();
        let last = tampered.len() - 1;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        let expired = keys.issue(TokenType::Access, 3, 0).unwrap();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k1".into());
        let theirs = jsonwebtoken::encode(&header, &signed.claims, &encoding()).unwrap();
        for _ in 0..2 {
            assert_eq!(keys.decode_any(&tampered).unwrap_err(), TokenError::Invalid);
            assert_eq!(
                keys.decode_any_at(&expired.token, expired.claims.exp)
                    .unwrap_err(),
                TokenError::Expired
            );
            assert_eq!(*keys.decode_any(&theirs).unwrap(), signed.claims);
        }
        assert_eq!(keys.remembered().len(), 1);
    }

    #[test]
    fn tokens_with_the_same_tail_are_still_told_apart() {
        let mut map = HashMap::with_hasher(TailHash);
        let tail = "0123456789abcdef";
        for (i, head) in ["a.", "b.", "", "a.b.c."].iter().enumerate() {
            map.insert(format!("{head}{tail}"), i);
        }
        map.insert("short".to_owned(), 9);
        assert_eq!(map.len(), 5);
        assert_eq!(map.get("b.0123456789abcdef"), Some(&1));
        assert_eq!(map.get(tail), Some(&2));
        assert_eq!(map.get("short"), Some(&9));
        assert_eq!(map.get("c.0123456789abcdef"), None);
        let hash = |text: &str| TailHash.hash_one(text);
        assert_eq!(hash("x.0123456789abcdef"), hash("y.0123456789abcdef"));
        assert_ne!(hash("x.0123456789abcdeg"), hash("x.0123456789abcdef"));
    }

    #[test]
    fn a_full_memory_starts_again() {
        let keys = keys();
        let tokens: Vec<_> = (0..MOST_REMEMBERED + 1)
            .map(|id| keys.issue(TokenType::Access, id as i64 + 1, 0).unwrap())
            .collect();
        for signed in &tokens {
            assert_eq!(*keys.decode_any(&signed.token).unwrap(), signed.claims);
        }
        assert_eq!(keys.remembered().len(), 1);
        for signed in &tokens {
            assert_eq!(*keys.decode_any(&signed.token).unwrap(), signed.claims);
        }
        assert!(keys.remembered().len() <= MOST_REMEMBERED);
    }

    #[test]
    fn an_expired_token_is_expired() {
        let keys = keys();
        let claims = Claims {
            token_type: "access".into(),
            exp: now() - 1,
            iat: now() - 10,
            jti: "0".repeat(32),
            user_id: "1".into(),
            iss: None,
            aud: None,
        };
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &encoding()).unwrap();
        assert_eq!(
            keys.decode(&token, TokenType::Access).unwrap_err(),
            TokenError::Expired
        );
    }

    #[test]
    fn issuer_and_audience_are_written_and_required() {
        let auth = AuthConfig {
            secret: Secret::new("k".repeat(40)),
            issuer: Some("rosterd".into()),
            audience: Some("app".into()),
            ..AuthConfig::default()
        };
        let strict = Keys::new(&auth);
        let token = strict.issue(TokenType::Access, 3, 0).unwrap().token;
        let claims = strict.decode(&token, TokenType::Access).unwrap();
        assert_eq!(claims.iss.as_deref(), Some("rosterd"));
        let plain = keys().issue(TokenType::Access, 3, 0).unwrap().token;
        assert_eq!(
            strict.decode(&plain, TokenType::Access).unwrap_err(),
            TokenError::Invalid
        );
    }

    #[test]
    fn other_algorithms_are_refused() {
        let keys = keys();
        let claims = Claims {
            token_type: "access".into(),
            exp: now() + 100,
            iat: now(),
            jti: "0".repeat(32),
            user_id: "1".into(),
            iss: None,
            aud: None,
        };
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS512), &claims, &encoding()).unwrap();
        assert_eq!(
            keys.decode(&token, TokenType::Access).unwrap_err(),
            TokenError::Invalid
        );
    }
}
