//! JWTs as simplejwt 5.5 issues them: HS256, claims `token_type`, `exp`,
//! `iat`, `jti`, `user_id` (a string), plus `iss`/`aud` when configured.
//! Signed and checked by `jsonwebtoken`; decoding pins the algorithm,
//! allows no leeway and checks the type.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

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
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
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
    /// Keys from the `[auth]` config (the secret already checked).
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
            encoding: EncodingKey::from_secret(secret),
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
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)?;
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
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|err| match err.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })?
            .claims;
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
}
