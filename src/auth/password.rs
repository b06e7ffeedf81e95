//! PBKDF2-HMAC-SHA256 password hashes in PHC string form
//! (`$pbkdf2-sha256$i=600000,l=32$<salt>$<hash>`).
//!
//! Every function here costs one full hash: call them on the blocking pool.

use pbkdf2::password_hash::phc::PasswordHash;
use pbkdf2::password_hash::{PasswordHasher, PasswordVerifier};
use pbkdf2::{Algorithm, Params, Pbkdf2};

/// A stand-in hash verified when the username is unknown, so that a login
/// for a missing account spends the same time as one for a real account.
/// Its salt and output are fixed; nothing hashes to it.
const DUMMY_SALT_AND_HASH: &str =
    "$c2FsdHNhbHRzYWx0c2FsdA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

/// Hashes `password` with a fresh random salt and `iterations` rounds.
pub fn hash(password: &str, iterations: u32) -> anyhow::Result<String> {
    let params = Params::new(iterations).map_err(|e| anyhow::anyhow!("pbkdf2 params: {e}"))?;
    let hasher = Pbkdf2::new(Algorithm::Pbkdf2Sha256, params);
    let hash = hasher
        .hash_password(password.as_bytes())
        .map_err(|e| anyhow::anyhow!("pbkdf2 hash: {e}"))?;
    Ok(hash.to_string())
}

/// Whether `password` matches the PHC string `stored` (constant-time
/// comparison). A malformed stored hash never matches.
pub fn verify(password: &str, stored: &str) -> bool {
    match PasswordHash::new(stored) {
        Ok(parsed) => Pbkdf2::SHA256
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// Spends one verification at `iterations` rounds and returns `false`:
/// what a login for an unknown username costs.
pub fn verify_dummy(password: &str, iterations: u32) -> bool {
    let stored = format!("$pbkdf2-sha256$i={iterations},l=32{DUMMY_SALT_AND_HASH}");
    verify(password, &stored);
    false
}

/// Whether `stored` was made with other parameters than `iterations`
/// rounds of PBKDF2-HMAC-SHA256 with a 32-byte output.
pub fn needs_rehash(stored: &str, iterations: u32) -> bool {
    let Ok(parsed) = PasswordHash::new(stored) else {
        return true;
    };
    if parsed.algorithm.as_str() != Algorithm::PBKDF2_SHA256_ID {
        return true;
    }
    match Params::try_from(&parsed) {
        Ok(params) => params.rounds() != iterations || params.output_len() != 32,
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only() {
        let stored = hash("correct horse", 1000).unwrap();
        assert!(
            stored.starts_with("$pbkdf2-sha256$i=1000,l=32$"),
            "{stored}"
        );
        assert!(verify("correct horse", &stored));
        assert!(!verify("correct horsE", &stored));
        assert!(!verify("", &stored));
    }

    #[test]
    fn two_hashes_of_one_password_differ_by_salt() {
        assert_ne!(hash("pw", 1000).unwrap(), hash("pw", 1000).unwrap());
    }

    #[test]
    fn malformed_hashes_never_verify() {
        assert!(!verify("x", ""));
        assert!(!verify("x", "pbkdf2_sha256$1$a$b"));
    }

    #[test]
    fn dummy_verification_is_a_well_formed_hash_that_fails() {
        let stored = format!("$pbkdf2-sha256$i=1000,l=32{DUMMY_SALT_AND_HASH}");
        assert!(PasswordHash::new(&stored).is_ok());
        assert!(!verify_dummy("anything", 1000));
    }

    #[test]
    fn rehash_is_needed_when_iterations_differ() {
        let stored = hash("pw", 1000).unwrap();
        assert!(!needs_rehash(&stored, 1000));
        assert!(needs_rehash(&stored, 2000));
        assert!(needs_rehash("garbage", 1000));
    }
}
