//! Password hashes. rosterd makes and prefers PBKDF2-HMAC-SHA256 in PHC
//! string form (`$pbkdf2-sha256$i=600000,l=32$<salt>$<hash>`); it also
//! verifies the hashes Django and PocketBase store (module `foreign`), so
//! that imported users keep their passwords until their first login
//! replaces the hash ([`needs_rehash`] is true for every foreign hash).
//!
//! Every function here that verifies or hashes costs one full hash: call
//! them on the blocking pool. Stored hashes whose parameters would make one
//! verification cost more than these caps are not [`is_known`] and never
//! verify, without the work being spent: PBKDF2 (rosterd's and Django's)
//! at most [`MAX_PBKDF2_ITERATIONS`]; Argon2 m ≤ 1 GiB, t ≤ 10, p ≤ 64;
//! scrypt (N + p)·r·128 ≤ 1 GiB of memory and N·r·p·128 ≤ 4 GiB of work;
//! bcrypt cost ≤ 16.

mod foreign;

use pbkdf2::password_hash::phc::PasswordHash;
use pbkdf2::password_hash::{PasswordHasher, PasswordVerifier};
use pbkdf2::{Algorithm, Params, Pbkdf2};

pub use crate::config::MAX_PBKDF2_ITERATIONS;

/// The prefix of a Django "unusable" password: no password matches it.
const UNUSABLE_PREFIX: char = '!';

/// A stand-in hash verified when the username is unknown, so that a login
/// for a missing account spends the same time as one for a real account.
/// Its salt and output are fixed; nothing hashes to it.
const DUMMY_SALT_AND_HASH: &str =
    "$c2FsdHNhbHRzYWx0c2FsdA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

/// Hashes `password` with a fresh random salt and `iterations` rounds.
/// Fails above [`MAX_PBKDF2_ITERATIONS`], as [`verify`] would refuse the
/// hash.
pub fn hash(password: &str, iterations: u32) -> anyhow::Result<String> {
    if iterations > MAX_PBKDF2_ITERATIONS {
        anyhow::bail!(
            "pbkdf2 params: {iterations} iterations is above the maximum of {MAX_PBKDF2_ITERATIONS}"
        );
    }
    let params = Params::new(iterations).map_err(|e| anyhow::anyhow!("pbkdf2 params: {e}"))?;
    let hasher = Pbkdf2::new(Algorithm::Pbkdf2Sha256, params);
    let hash = hasher
        .hash_password(password.as_bytes())
        .map_err(|e| anyhow::anyhow!("pbkdf2 hash: {e}"))?;
    Ok(hash.to_string())
}

/// Whether `password` matches `stored` (constant-time comparison): one of
/// rosterd's own PHC strings, or a Django or PocketBase hash (module
/// `foreign`). A malformed, unknown, unusable (`!`) or over-costly
/// stored hash never matches.
pub fn verify(password: &str, stored: &str) -> bool {
    if is_unusable(stored) {
        return false;
    }
    match own_hash(stored) {
        Some(parsed) => Pbkdf2::SHA256
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        None => foreign::verify(password, stored),
    }
}

/// Whether [`verify`] can check `stored`: rosterd's own PHC string or a
/// well-formed Django or PocketBase hash within the cost caps, or a Django
/// unusable password (which never verifies).
pub fn is_known(stored: &str) -> bool {
    is_unusable(stored) || own_hash(stored).is_some() || foreign::is_known(stored)
}

/// Whether `stored` is a Django unusable password (it starts with `!`):
/// the account has no password that can log in.
pub fn is_unusable(stored: &str) -> bool {
    stored.starts_with(UNUSABLE_PREFIX)
}

/// Spends one verification at `iterations` rounds and returns `false`:
/// what a login for an unknown username costs.
pub fn verify_dummy(password: &str, iterations: u32) -> bool {
    let stored = format!("$pbkdf2-sha256$i={iterations},l=32{DUMMY_SALT_AND_HASH}");
    verify(password, &stored);
    false
}

/// [`verify`], costing at least a login for an unknown username: for a
/// hash rosterd did not make (imported, until its first login replaces it)
/// a verification at `iterations` rounds is spent as well, so a cheap
/// foreign hash (`md5$...`) does not tell a timing attacker which
/// accounts were imported.
pub fn verify_at_our_cost(password: &str, stored: &str, iterations: u32) -> bool {
    let matches = verify(password, stored);
    if !stored.starts_with("$pbkdf2-sha256$") {
        verify_dummy(password, iterations);
    }
    matches
}

/// Whether `stored` was made with other parameters than `iterations`
/// rounds of PBKDF2-HMAC-SHA256 with a 32-byte output: true for every
/// foreign or unknown hash.
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

/// `stored` parsed, if it is a PBKDF2 PHC string the pbkdf2 crate can
/// verify, with a salt, an output and at most [`MAX_PBKDF2_ITERATIONS`].
fn own_hash(stored: &str) -> Option<PasswordHash> {
    let parsed = PasswordHash::new(stored).ok()?;
    Algorithm::try_from(parsed.algorithm.as_str()).ok()?;
    let params = Params::try_from(&parsed).ok()?;
    let complete = parsed.salt.is_some() && parsed.hash.is_some();
    (complete && params.rounds() <= MAX_PBKDF2_ITERATIONS).then_some(parsed)
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
        assert!(is_known(&stored));
        assert!(!is_unusable(&stored));
    }

    #[test]
    fn two_hashes_of_one_password_differ_by_salt() {
        assert_ne!(hash("pw", 1000).unwrap(), hash("pw", 1000).unwrap());
    }

    #[test]
    fn malformed_hashes_never_verify() {
        assert!(!verify("x", ""));
        assert!(!verify("x", "pbkdf2_sha256$1$a$b"));
        assert!(!is_known("pbkdf2_sha256$1$a$b"));
    }

    #[test]
    fn dummy_verification_is_a_well_formed_hash_that_fails() {
        let stored = format!("$pbkdf2-sha256$i=1000,l=32{DUMMY_SALT_AND_HASH}");
        assert!(PasswordHash::new(&stored).is_ok());
        assert!(is_known(&stored));
        assert!(!verify_dummy("anything", 1000));
    }

    #[test]
    fn rehash_is_needed_when_iterations_differ() {
        let stored = hash("pw", 1000).unwrap();
        assert!(!needs_rehash(&stored, 1000));
        assert!(needs_rehash(&stored, 2000));
        assert!(needs_rehash("garbage", 1000));
    }

    #[test]
    fn own_hashes_over_the_iteration_cap_are_refused() {
        let at_cap = format!("$pbkdf2-sha256$i={MAX_PBKDF2_ITERATIONS},l=32{DUMMY_SALT_AND_HASH}");
        assert!(is_known(&at_cap));
        let over = format!(
            "$pbkdf2-sha256$i={},l=32{DUMMY_SALT_AND_HASH}",
            MAX_PBKDF2_ITERATIONS + 1
        );
        assert!(!is_known(&over));
        assert!(!verify("anything", &over));
        assert!(hash("pw", MAX_PBKDF2_ITERATIONS + 1).is_err());
    }

    #[test]
    fn unusable_passwords_never_verify() {
        // Made by Django's make_password(None): "!" and 40 random characters.
        let stored = "!xMxyzdBUtPRoAL8D9DRrb1pbihcBaZo7Jf3r3NPE";
        assert!(is_unusable(stored));
        assert!(is_known(stored));
        assert!(!verify("", stored));
        assert!(!verify(stored, stored));
        assert!(!verify("xMxyzdBUtPRoAL8D9DRrb1pbihcBaZo7Jf3r3NPE", stored));
        assert!(needs_rehash(stored, 1000));
        // An unusable marker in front of a real hash still never verifies.
        let own = hash("pw", 1000).unwrap();
        assert!(!verify("pw", &format!("!{own}")));
        assert!(!is_unusable(""));
    }

    #[test]
    fn unknown_formats_are_not_known() {
        for stored in [
            "",
            "$",
            "sha1$3kMkJ8bmK0Ha$05ab4e1c2ea9fcbcb8d7b35fcfc1a82e3b6c9e72",
            "sha1$$05ab4e1c2ea9fcbcb8d7b35fcfc1a82e3b6c9e72",
            "unsalted_md5$$5f4dcc3b5aa765d61d8327deb882cf99",
            // Django's UnsaltedMD5PasswordHasher: a bare hex digest, or
            // "md5$$" and one (an empty salt).
            "5f4dcc3b5aa765d61d8327deb882cf99",
            "md5$$5f4dcc3b5aa765d61d8327deb882cf99",
            "crypt$$abN/qM.L/H8EQ",
            "$argon2id$v=19$m=1024,t=1,p=1$c2FsdHNhbHQ$AAAAAAAAAAAAAAAAAAAAAA",
            "$1$saltsalt$qjXMvbEw8oaL.CzflDugX/",
            "plain text password",
        ] {
            assert!(!is_known(stored), "{stored:?}");
            assert!(!verify("password", stored), "{stored:?}");
            assert!(needs_rehash(stored, 1000), "{stored:?}");
        }
    }
}

#[cfg(test)]
mod foreign_tests;
