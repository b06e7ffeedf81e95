//! Password hashes made by other software, verified (never made) so that
//! users imported from it keep their passwords:
//!
//! - Django 4.2–5.2, `<algorithm>$<fields>`: `pbkdf2_sha256`, `pbkdf2_sha1`,
//!   `argon2` (argon2id, argon2i, argon2d; with `v=19` or `v=16`, or without
//!   `v=` as old Django stored them, meaning version 0x10), `bcrypt_sha256`,
//!   `bcrypt`, `scrypt` and `md5`;
//! - PocketBase and other plain bcrypt: `$2a$`, `$2b$`, `$2y$`.
//!
//! [`parse`] checks every field and the cost caps before any work is
//! spent, so a crafted import cannot make one login cost minutes or
//! gigabytes; what it refuses is not known and never verifies.

use base64::Engine as _;
use base64::alphabet;
use base64::engine::GeneralPurpose;
use base64::engine::general_purpose::{NO_PAD, STANDARD, STANDARD_NO_PAD};
use md5::Md5;
use sha1::Sha1;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::config::MAX_PBKDF2_ITERATIONS;

/// Argon2: the most memory, in KiB (1 GiB).
const MAX_ARGON2_MEMORY_KIB: u32 = 1 << 20;
/// Argon2: the most passes over that memory.
const MAX_ARGON2_TIME: u32 = 10;
/// Argon2: the most lanes.
const MAX_ARGON2_LANES: u32 = 64;
/// Argon2: the longest salt and output accepted, in bytes.
const MAX_ARGON2_FIELD_BYTES: usize = 1024;
/// Scrypt: the most memory, `(N + p) * r * 128` bytes (1 GiB): the `N`
/// blocks of ROMix and the `p` blocks it mixes.
const MAX_SCRYPT_MEMORY: u128 = 1 << 30;
/// Scrypt: the most work, `N * r * p * 128` bytes through ROMix (4 GiB).
const MAX_SCRYPT_WORK: u128 = 1 << 32;
/// bcrypt: the highest cost (2^16 rounds).
const MAX_BCRYPT_COST: u32 = 16;
/// bcrypt: the lowest cost any implementation makes.
const MIN_BCRYPT_COST: u32 = 4;

/// The base64 alphabet of bcrypt strings (`./A-Za-z0-9`), unpadded.
const BCRYPT_B64: GeneralPurpose = GeneralPurpose::new(&alphabet::BCRYPT, NO_PAD);

/// Whether `password` matches the foreign hash `stored` (constant-time
/// comparison). Unknown, malformed or over-costly hashes never match.
pub(super) fn verify(password: &str, stored: &str) -> bool {
    parse(stored).is_some_and(|foreign| foreign.verify(password.as_bytes()))
}

/// Whether `stored` is a well-formed foreign hash within the cost caps.
pub(super) fn is_known(stored: &str) -> bool {
    parse(stored).is_some()
}

/// The HMAC digest of a Django PBKDF2 hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prf {
    Sha1,
    Sha256,
}

impl Prf {
    /// Django's derived key length: the digest size.
    fn key_len(self) -> usize {
        match self {
            Prf::Sha1 => 20,
            Prf::Sha256 => 32,
        }
    }
}

/// A foreign hash, every field checked and within the caps.
enum Foreign<'a> {
    /// Django `pbkdf2_sha256$<iterations>$<salt>$<base64 key>` (or
    /// `pbkdf2_sha1`): the salt is used as its UTF-8 bytes.
    Pbkdf2 {
        prf: Prf,
        iterations: u32,
        salt: &'a str,
        expected: Vec<u8>,
    },
    /// Django `argon2` and an argon2-cffi PHC string.
    Argon2 {
        hasher: argon2::Argon2<'static>,
        salt: Vec<u8>,
        expected: Vec<u8>,
    },
    /// A bcrypt string over the password, or (Django `bcrypt_sha256`) over
    /// the lowercase hex SHA-256 of the password.
    Bcrypt { sha256_first: bool, hash: &'a str },
    /// Django `scrypt$<N>$<salt>$<r>$<p>$<base64 key, 64 bytes>`.
    Scrypt {
        params: scrypt::Params,
        salt: &'a str,
        expected: Vec<u8>,
    },
    /// Django `md5$<salt>$<hex md5(salt + password)>`.
    Md5 { salt: &'a str, expected: [u8; 16] },
}

impl Foreign<'_> {
    /// Spends the hash's work on `password` and compares in constant time.
    fn verify(&self, password: &[u8]) -> bool {
        match self {
            Foreign::Pbkdf2 {
                prf,
                iterations,
                salt,
                expected,
            } => {
                let mut key = [0u8; 32];
                let Some(key) = key.get_mut(..expected.len()) else {
                    return false;
                };
                match prf {
                    Prf::Sha1 => {
                        pbkdf2::pbkdf2_hmac::<Sha1>(password, salt.as_bytes(), *iterations, key)
                    }
                    Prf::Sha256 => {
                        pbkdf2::pbkdf2_hmac::<Sha256>(password, salt.as_bytes(), *iterations, key)
                    }
                }
                equal(key, expected)
            }
            Foreign::Argon2 {
                hasher,
                salt,
                expected,
            } => {
                let mut key = vec![0u8; expected.len()];
                hasher.hash_password_into(password, salt, &mut key).is_ok() && equal(&key, expected)
            }
            Foreign::Bcrypt { sha256_first, hash } => {
                let result = if *sha256_first {
                    bcrypt::verify(lower_hex(&Sha256::digest(password)), hash)
                } else {
                    bcrypt::verify(password, hash)
                };
                // The crate compares in constant time.
                result.unwrap_or(false)
            }
            Foreign::Scrypt {
                params,
                salt,
                expected,
            } => {
                let mut key = [0u8; 64];
                scrypt::scrypt(password, salt.as_bytes(), params, &mut key).is_ok()
                    && equal(&key, expected)
            }
            Foreign::Md5 { salt, expected } => {
                let digest = Md5::new()
                    .chain_update(salt.as_bytes())
                    .chain_update(password)
                    .finalize();
                equal(&digest, expected)
            }
        }
    }
}

/// `stored` parsed, if it is a foreign format with well-formed fields and
/// parameters within the caps. Django names the algorithm before the
/// first `$`; a plain bcrypt string starts with `$`.
fn parse(stored: &str) -> Option<Foreign<'_>> {
    let (algorithm, rest) = stored.split_once('$')?;
    match algorithm {
        "pbkdf2_sha256" => parse_pbkdf2(rest, Prf::Sha256),
        "pbkdf2_sha1" => parse_pbkdf2(rest, Prf::Sha1),
        "argon2" => parse_argon2(rest),
        "bcrypt_sha256" => parse_bcrypt(rest, true),
        "bcrypt" => parse_bcrypt(rest, false),
        "" => parse_bcrypt(stored, false),
        "scrypt" => parse_scrypt(rest),
        "md5" => parse_md5(rest),
        _ => None,
    }
}

fn parse_pbkdf2(rest: &str, prf: Prf) -> Option<Foreign<'_>> {
    let [iterations, salt, key] = fields(rest)?;
    let iterations = decimal(iterations).filter(|i| (1..=MAX_PBKDF2_ITERATIONS).contains(i))?;
    let expected = STANDARD
        .decode(key)
        .ok()
        .filter(|key| key.len() == prf.key_len())?;
    (!salt.is_empty()).then_some(Foreign::Pbkdf2 {
        prf,
        iterations,
        salt,
        expected,
    })
}

/// `rest` is a PHC string without its leading `$`:
/// `argon2id$v=19$m=..,t=..,p=..$<salt>$<hash>`, base64 without padding.
fn parse_argon2(rest: &str) -> Option<Foreign<'static>> {
    let parts: Vec<&str> = rest.split('$').collect();
    let (variant, version, params, salt, key) = match parts.as_slice() {
        [variant, version, params, salt, key] => (*variant, Some(*version), *params, *salt, *key),
        [variant, params, salt, key] => (*variant, None, *params, *salt, *key),
        _ => return None,
    };
    let algorithm = match variant {
        "argon2id" => argon2::Algorithm::Argon2id,
        "argon2i" => argon2::Algorithm::Argon2i,
        "argon2d" => argon2::Algorithm::Argon2d,
        _ => return None,
    };
    let version = match version {
        None | Some("v=16") => argon2::Version::V0x10,
        Some("v=19") => argon2::Version::V0x13,
        Some(_) => return None,
    };
    let [m, t, p] = comma_fields(params)?;
    let m = decimal(m.strip_prefix("m=")?).filter(|&m| m <= MAX_ARGON2_MEMORY_KIB)?;
    let t = decimal(t.strip_prefix("t=")?).filter(|&t| t <= MAX_ARGON2_TIME)?;
    let p = decimal(p.strip_prefix("p=")?).filter(|&p| p <= MAX_ARGON2_LANES)?;
    let salt = STANDARD_NO_PAD
        .decode(salt)
        .ok()
        .filter(|salt| (argon2::MIN_SALT_LEN..=MAX_ARGON2_FIELD_BYTES).contains(&salt.len()))?;
    let expected = STANDARD_NO_PAD.decode(key).ok().filter(|key| {
        (argon2::Params::MIN_OUTPUT_LEN..=MAX_ARGON2_FIELD_BYTES).contains(&key.len())
    })?;
    let params = argon2::Params::new(m, t, p, Some(expected.len())).ok()?;
    Some(Foreign::Argon2 {
        hasher: argon2::Argon2::new(algorithm, version, params),
        salt,
        expected,
    })
}

/// `hash` is a whole bcrypt string: `$2b$12$` and 53 characters (22 of
/// salt, 31 of hash).
fn parse_bcrypt(hash: &str, sha256_first: bool) -> Option<Foreign<'_>> {
    if hash.len() != 60 || !hash.is_ascii() {
        return None;
    }
    let ["", "2a" | "2b" | "2y", cost, salt_and_hash] = fields(hash)? else {
        return None;
    };
    if cost.len() != 2 || !cost.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let cost: u32 = cost.parse().ok()?;
    if !(MIN_BCRYPT_COST..=MAX_BCRYPT_COST).contains(&cost) || salt_and_hash.len() != 53 {
        return None;
    }
    let (salt, digest) = salt_and_hash.split_at_checked(22)?;
    let salt_ok = BCRYPT_B64.decode(salt).is_ok_and(|salt| salt.len() == 16);
    let digest_ok = BCRYPT_B64
        .decode(digest)
        .is_ok_and(|digest| digest.len() == 23);
    (salt_ok && digest_ok).then_some(Foreign::Bcrypt { sha256_first, hash })
}

fn parse_scrypt(rest: &str) -> Option<Foreign<'_>> {
    let [n, salt, r, p, key] = fields(rest)?;
    let n = decimal(n).filter(|&n| n >= 2 && n.is_power_of_two())?;
    let r = decimal(r).filter(|&r| r >= 1)?;
    let p = decimal(p).filter(|&p| p >= 1)?;
    let (big_n, big_r, big_p) = (u128::from(n), u128::from(r), u128::from(p));
    if (big_n + big_p) * big_r * 128 > MAX_SCRYPT_MEMORY
        || big_n * big_r * big_p * 128 > MAX_SCRYPT_WORK
        || salt.is_empty()
    {
        return None;
    }
    let expected = STANDARD.decode(key).ok().filter(|key| key.len() == 64)?;
    let log_n = u8::try_from(n.trailing_zeros()).ok()?;
    let params = scrypt::Params::new(log_n, r, p).ok()?;
    Some(Foreign::Scrypt {
        params,
        salt,
        expected,
    })
}

/// An empty salt is Django's unsalted MD5 (`md5$$<hex>`), not supported.
fn parse_md5(rest: &str) -> Option<Foreign<'_>> {
    let [salt, hex] = fields(rest)?;
    let expected = from_lower_hex(hex)?;
    (!salt.is_empty()).then_some(Foreign::Md5 { salt, expected })
}

/// `s` split at every `$` into exactly `N` fields.
fn fields<const N: usize>(s: &str) -> Option<[&str; N]> {
    let fields: Vec<&str> = s.split('$').collect();
    fields.try_into().ok()
}

/// `s` split at every `,` into exactly `N` fields.
fn comma_fields<const N: usize>(s: &str) -> Option<[&str; N]> {
    let fields: Vec<&str> = s.split(',').collect();
    fields.try_into().ok()
}

/// A decimal `u32` as Python's `%d` writes it: ASCII digits, no sign, no
/// leading zero.
fn decimal(s: &str) -> Option<u32> {
    let digits = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits || (s.len() > 1 && s.starts_with('0')) {
        return None;
    }
    s.parse().ok()
}

/// The lowercase hex of `bytes`, as Python's `hexdigest()` writes it.
fn lower_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut hex = String::with_capacity(bytes.len() * 2);
    for &byte in bytes {
        hex.push(char::from(DIGITS[usize::from(byte >> 4)]));
        hex.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    hex
}

/// 16 bytes from 32 lowercase hex digits.
fn from_lower_hex(hex: &str) -> Option<[u8; 16]> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    let hex = hex.as_bytes();
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        let [high, low] = pair else { return None };
        *byte = (nibble(*high)? << 4) | nibble(*low)?;
    }
    Some(out)
}

/// Constant-time equality (the lengths are not secret).
fn equal(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_written_as_python_writes_them() {
        assert_eq!(decimal("0"), Some(0));
        assert_eq!(decimal("1000"), Some(1000));
        assert_eq!(decimal("4294967295"), Some(u32::MAX));
        for bad in [
            "",
            "01000",
            "+1000",
            "-1",
            " 1000",
            "1000 ",
            "1e3",
            "4294967296",
            "١٠",
        ] {
            assert_eq!(decimal(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn hex_round_trips_in_lowercase_only() {
        let bytes: [u8; 16] = core::array::from_fn(|i| (i as u8) * 17);
        let hex = lower_hex(&bytes);
        assert_eq!(hex, "00112233445566778899aabbccddeeff");
        assert_eq!(from_lower_hex(&hex), Some(bytes));
        assert_eq!(from_lower_hex(&hex.to_uppercase()), None);
        assert_eq!(from_lower_hex(&hex[1..]), None);
        assert_eq!(from_lower_hex("é0112233445566778899aabbccddeef"), None);
    }
}
