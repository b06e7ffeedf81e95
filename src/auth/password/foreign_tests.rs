//! Hashes made by Django and PocketBase (verified by module `foreign`),
//! through the public functions of `password`.

use super::*;
use sha2::{Digest as _, Sha256};

/// The password behind every vector below.
const PASSWORD: &str = "correct horse battery";

// The vectors were made by Django 5.2.19 (Python 3.11, argon2-cffi
// 25.1.0, bcrypt 5.0.0) with `django.conf.settings.configure(
// PASSWORD_HASHERS=[all of Django's hashers])` and
// `make_password(PASSWORD, hasher=...)`, the hashers subclassed to cost
// little: PBKDF2 iterations = 1000; Argon2 memory_cost = 1024,
// time_cost = 1, parallelism = 1 (argon2i and argon2d by overriding
// `params().type`); bcrypt rounds = 4; scrypt work_factor = 2**10,
// parallelism = 1 (block_size 8). Django's `check_password` accepts each.
const DJANGO_PBKDF2_SHA256: &str =
    "pbkdf2_sha256$1000$Wz5eEoH9yCSPEf8T4hGagd$vDBvUN4PEjV+BBjguSYWG8kroqqTigowMe++K0Fzhqk=";
const DJANGO_PBKDF2_SHA1: &str =
    "pbkdf2_sha1$1000$6RvrFIJoDBawBV9KNIdpQP$rzsse6NemCWHeauuAdEQRnhpV+E=";
const DJANGO_ARGON2ID: &str = "argon2$argon2id$v=19$m=1024,t=1,p=1\
    $WllqdjVKR2g4YTRscHUyOEt5TFpXeA$BOAXahLfgt5p14HPQqhG7GSjaCn3FyFXEe7biFflhfI";
const DJANGO_ARGON2I: &str = "argon2$argon2i$v=19$m=1024,t=1,p=1\
    $bEl1N2s4S292TDBNclE3NzhVc0RoSw$xesVI89tYTy/Tl09vuPCiweOWkouUTP/i3DUm0EYfkg";
const DJANGO_ARGON2D: &str = "argon2$argon2d$v=19$m=1024,t=1,p=1\
    $RGZpdFQ4RlZtcDAxNkJsMElKUUZqcg$vmNGR5OTYLPtZ4GYd20OoMRkED3uprCpwzB48bIoScQ";
const DJANGO_BCRYPT_SHA256: &str =
    "bcrypt_sha256$$2b$04$JmTIK7xYJ6IqgCO7y2bHlOS2fmp37H96otWkyJiJ9ZCeD1sL0D11O";
const DJANGO_BCRYPT: &str = "bcrypt$$2b$04$tE19Cv8LRv0lL7kgnNpuGe/jS4meYV/rJzmaO31jkn1dZ6qUyBGxS";
const DJANGO_SCRYPT: &str = "scrypt$1024$iOchw91YEsJK7ncLWIcTOu$8$1\
    $t/cWUAF5cWcdHaU6aLD174llmJMyf96amusXKSOtQOX05aOBaLH+TxE/oDOd0MYxR8qdTP5h5BOBAK4v9TYbAQ==";
/// Django's own MD5PasswordHasher, unmodified.
const DJANGO_MD5: &str = "md5$8XONASAtotOp47Utrp1M8y$5315105cba2ffcb58a87b9ed30fe835b";
/// The PBKDF2-SHA256 subclass above, password [`NON_ASCII_PASSWORD`].
const DJANGO_PBKDF2_NON_ASCII: &str =
    "pbkdf2_sha256$1000$5JWeTCEpYL7fAORNW2jdpT$D+Pldx+g5/8NdAorgrUF+JaIb4Bq5eVSgCkiFZPpSj8=";
const NON_ASCII_PASSWORD: &str = "pässwörd ✓";
/// What old Django (argon2-cffi before 16.3) stored: version 0x10 and
/// no `v=` field. Made by argon2-cffi's `low_level.hash_secret(...,
/// time_cost=1, memory_cost=1024, parallelism=2, hash_len=16,
/// type=Type.I, version=16)` with `v=16$` dropped and `argon2` put in
/// front; Django's `check_password` and argon2-cffi accept it.
const DJANGO_ARGON2_OLD: &str =
    "argon2$argon2i$m=1024,t=1,p=2$b1RHS0NUYkRDb3VFTDhNdVBaUVFobQ$5moMuzja2nxL4Srn20Q7vA";
/// What PocketBase (Go's x/crypto/bcrypt) stores: made by Python
/// bcrypt's `hashpw(PASSWORD, gensalt(rounds=4, prefix=b"2a"))`.
const POCKETBASE_2A: &str = "$2a$04$Z5wSO.AzfQGu/wYc0mGVZ.d50x8lA3YJvJQAaavttnJdBYVh9s7su";
/// [`POCKETBASE_2A`] with PHP's `$2y$` prefix (the same algorithm).
const PLAIN_2Y: &str = "$2y$04$Z5wSO.AzfQGu/wYc0mGVZ.d50x8lA3YJvJQAaavttnJdBYVh9s7su";

const ALL: [(&str, &str); 13] = [
    (PASSWORD, DJANGO_PBKDF2_SHA256),
    (PASSWORD, DJANGO_PBKDF2_SHA1),
    (PASSWORD, DJANGO_ARGON2ID),
    (PASSWORD, DJANGO_ARGON2I),
    (PASSWORD, DJANGO_ARGON2D),
    (PASSWORD, DJANGO_BCRYPT_SHA256),
    (PASSWORD, DJANGO_BCRYPT),
    (PASSWORD, DJANGO_SCRYPT),
    (PASSWORD, DJANGO_MD5),
    (NON_ASCII_PASSWORD, DJANGO_PBKDF2_NON_ASCII),
    (PASSWORD, DJANGO_ARGON2_OLD),
    (PASSWORD, POCKETBASE_2A),
    (PASSWORD, PLAIN_2Y),
];

/// The right password verifies, wrong ones do not, the hash is known
/// and must be replaced at the first login.
fn check(password: &str, stored: &str) {
    assert!(verify(password, stored), "{stored}");
    assert!(!verify(&format!("{password}x"), stored), "{stored}");
    assert!(!verify(&password[1..], stored), "{stored}");
    assert!(!verify("", stored), "{stored}");
    assert!(is_known(stored), "{stored}");
    assert!(!is_unusable(stored), "{stored}");
    assert!(needs_rehash(stored, 1000), "{stored}");
    assert!(needs_rehash(stored, 600_000), "{stored}");
}

#[test]
fn django_pbkdf2_sha256() {
    check(PASSWORD, DJANGO_PBKDF2_SHA256);
    check(NON_ASCII_PASSWORD, DJANGO_PBKDF2_NON_ASCII);
}

#[test]
fn django_pbkdf2_sha1() {
    check(PASSWORD, DJANGO_PBKDF2_SHA1);
}

#[test]
fn django_argon2id() {
    check(PASSWORD, DJANGO_ARGON2ID);
}

#[test]
fn django_argon2i_and_argon2d() {
    check(PASSWORD, DJANGO_ARGON2I);
    check(PASSWORD, DJANGO_ARGON2D);
}

#[test]
fn django_argon2_without_version_is_version_0x10() {
    check(PASSWORD, DJANGO_ARGON2_OLD);
    // Read as version 0x13 it would not match.
    let as_v19 = DJANGO_ARGON2_OLD.replace("argon2i$", "argon2i$v=19$");
    assert!(is_known(&as_v19));
    assert!(!verify(PASSWORD, &as_v19));
    let as_v16 = DJANGO_ARGON2_OLD.replace("argon2i$", "argon2i$v=16$");
    assert!(verify(PASSWORD, &as_v16));
}

#[test]
fn django_bcrypt_sha256() {
    check(PASSWORD, DJANGO_BCRYPT_SHA256);
    // The bcrypt part alone is over the hex digest, not the password.
    let bare = DJANGO_BCRYPT_SHA256.trim_start_matches("bcrypt_sha256$");
    assert!(!verify(PASSWORD, bare));
    let hex: String = Sha256::digest(PASSWORD.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    assert!(verify(&hex, bare));
}

#[test]
fn django_bcrypt() {
    check(PASSWORD, DJANGO_BCRYPT);
}

#[test]
fn django_scrypt() {
    check(PASSWORD, DJANGO_SCRYPT);
}

#[test]
fn django_md5() {
    check(PASSWORD, DJANGO_MD5);
}

#[test]
fn verifying_at_our_cost_answers_as_verify() {
    let ours = hash(PASSWORD, 1000).unwrap();
    for stored in [DJANGO_MD5, ours.as_str()] {
        assert!(verify_at_our_cost(PASSWORD, stored, 1000), "{stored}");
        assert!(!verify_at_our_cost("wrong", stored, 1000), "{stored}");
    }
}

#[test]
fn pocketbase_and_plain_bcrypt() {
    check(PASSWORD, POCKETBASE_2A);
    check(PASSWORD, PLAIN_2Y);
    let as_2b = POCKETBASE_2A.replace("$2a$", "$2b$");
    check(PASSWORD, &as_2b);
    // $2x$ (PHP's marker for hashes of a buggy implementation) is not
    // supported.
    assert!(!is_known(&POCKETBASE_2A.replace("$2a$", "$2x$")));
}

#[test]
fn argon2_over_the_caps_is_not_known_and_does_not_verify() {
    let with = |params: &str| DJANGO_ARGON2ID.replace("m=1024,t=1,p=1", params);
    // 4 GiB: refused without allocating it.
    let huge = with("m=4194304,t=1,p=1");
    assert!(!is_known(&huge));
    assert!(!verify(PASSWORD, &huge));
    for over in ["m=1048577,t=1,p=1", "m=1024,t=11,p=1", "m=1024,t=1,p=65"] {
        assert!(!is_known(&with(over)), "{over}");
        assert!(!verify(PASSWORD, &with(over)), "{over}");
    }
    // At the caps: known (not verified here, it would cost 1 GiB).
    assert!(is_known(&with("m=1048576,t=10,p=64")));
    // Argon2 itself needs m >= 8 p.
    assert!(!is_known(&with("m=8,t=1,p=2")));
}

#[test]
fn scrypt_over_the_caps_is_not_known_and_does_not_verify() {
    let with = |n: &str, r: &str, p: &str| {
        DJANGO_SCRYPT
            .replacen("1024", n, 1)
            .replace("$8$1$", &format!("${r}${p}$"))
    };
    assert_eq!(with("1024", "8", "1"), DJANGO_SCRYPT);
    // N * r * 128 = 1 GiB leaves no room for the p blocks.
    for (n, r, p) in [
        ("1048576", "8", "1"),
        ("2097152", "8", "1"),
        ("1024", "1048576", "1"),
        // 8 GiB of work through 1 MiB.
        ("1024", "8", "8192"),
        ("2", "1", "4294967295"),
    ] {
        let stored = with(n, r, p);
        assert!(!is_known(&stored), "{stored}");
        assert!(!verify(PASSWORD, &stored), "{stored}");
    }
    assert!(is_known(&with("524288", "8", "1")));
    assert!(is_known(&with("1024", "8", "4096")));
    // N must be a power of two above 1; r and p at least 1.
    for (n, r, p) in [("1000", "8", "1"), ("1", "8", "1"), ("1024", "0", "1")] {
        assert!(!is_known(&with(n, r, p)), "{n} {r} {p}");
    }
    assert!(!is_known(&with("1024", "8", "0")));
}

#[test]
fn pbkdf2_and_bcrypt_over_the_caps_are_not_known() {
    let iterations = |i: u32| DJANGO_PBKDF2_SHA256.replace("$1000$", &format!("${i}$"));
    assert!(is_known(&iterations(MAX_PBKDF2_ITERATIONS)));
    assert!(!is_known(&iterations(MAX_PBKDF2_ITERATIONS + 1)));
    assert!(!verify(PASSWORD, &iterations(MAX_PBKDF2_ITERATIONS + 1)));
    assert!(!is_known(&iterations(u32::MAX)));
    assert!(!is_known(&iterations(0)));
    let cost = |c: &str| POCKETBASE_2A.replace("$04$", &format!("${c}$"));
    assert!(is_known(&cost("16")));
    assert!(!is_known(&cost("17")));
    assert!(!verify(PASSWORD, &cost("31")));
    assert!(!is_known(&cost("03")));
    assert!(!is_known(&cost("+4")));
}

#[test]
fn near_misses_are_not_known() {
    for stored in [
        // Wrong key lengths and encodings.
        "pbkdf2_sha1$1000$Wz5eEoH9yCSPEf8T4hGagd$vDBvUN4PEjV+BBjguSYWG8kroqqTigowMe++K0Fzhqk=",
        "pbkdf2_sha256$1000$Wz5eEoH9yCSPEf8T4hGagd$vDBvUN4PEjV+BBjguSYWG8kroqqTigowMe++K0Fzhqk",
        "pbkdf2_sha256$01000$Wz5eEoH9yCSPEf8T4hGagd$vDBvUN4PEjV+BBjguSYWG8kroqqTigowMe++K0Fzhqk=",
        "pbkdf2_sha256$1000$$vDBvUN4PEjV+BBjguSYWG8kroqqTigowMe++K0Fzhqk=",
        "pbkdf2_sha512$1000$Wz5eEoH9yCSPEf8T4hGagd$vDBvUN4PEjV+BBjguSYWG8kroqqTigowMe++K0Fzhqk=",
        "md5$8XONASAtotOp47Utrp1M8y$5315105CBA2FFCB58A87B9ED30FE835B",
        "md5$8XONASAtotOp47Utrp1M8y$5315105cba2ffcb58a87b9ed30fe835",
        "md5$a$b$5315105cba2ffcb58a87b9ed30fe835b",
        "argon2$argon2id$v=18$m=1024,t=1,p=1$WllqdjVKR2g4YTRscHUyOEt5TFpXeA$BOAXahLfgt5p14HPQqhG7GSjaCn3FyFXEe7biFflhfI",
        "argon2$argon2x$v=19$m=1024,t=1,p=1$WllqdjVKR2g4YTRscHUyOEt5TFpXeA$BOAXahLfgt5p14HPQqhG7GSjaCn3FyFXEe7biFflhfI",
        "argon2$argon2id$v=19$t=1,m=1024,p=1$WllqdjVKR2g4YTRscHUyOEt5TFpXeA$BOAXahLfgt5p14HPQqhG7GSjaCn3FyFXEe7biFflhfI",
        "argon2$argon2id$v=19$m=1024,t=1,p=1$c2FsdA$BOAXahLfgt5p14HPQqhG7GSjaCn3FyFXEe7biFflhfI",
        "argon2$$argon2id$v=19$m=1024,t=1,p=1$WllqdjVKR2g4YTRscHUyOEt5TFpXeA$BOAXahLfgt5p14HPQqhG7GSjaCn3FyFXEe7biFflhfI",
        "bcrypt$$2b$04$tE19Cv8LRv0lL7kgnNpuGe/jS4meYV/rJzmaO31jkn1dZ6qUyBGx",
        "bcrypt$2b$04$tE19Cv8LRv0lL7kgnNpuGe/jS4meYV/rJzmaO31jkn1dZ6qUyBGxS",
        "scrypt$1024$iOchw91YEsJK7ncLWIcTOu$8$1$t/cWUAF5cWcdHaU6aLD174llmJMyf96amusXKSOtQOX05aOBaLH+TxE/oDOd0MYxR8qdTP5h5BOBAK4v9TYbAQ",
    ] {
        assert!(!is_known(stored), "{stored}");
        assert!(!verify(PASSWORD, stored), "{stored}");
    }
}

/// Truncated, shortened and garbled variants of every vector: none may
/// panic, and only an unchanged vector verifies.
#[test]
fn garbled_hashes_never_panic() {
    for (password, stored) in ALL {
        let cuts = stored.char_indices().map(|(i, _)| i);
        let mut variants: Vec<String> = cuts.clone().map(|i| stored[..i].to_owned()).collect();
        for i in cuts {
            let (head, tail) = stored.split_at(i);
            let mut rest = tail.chars();
            rest.next();
            let rest = rest.as_str();
            variants.push(format!("{head}{rest}"));
            for garble in ["$", "9", "A", "=", ",", "é", "$$"] {
                variants.push(format!("{head}{garble}{rest}"));
            }
        }
        variants.push(format!("{stored}$"));
        variants.push(format!("{stored}="));
        variants.push(format!("!{stored}"));
        for variant in variants.iter().filter(|variant| *variant != stored) {
            let _ = is_known(variant);
            let _ = needs_rehash(variant, 1000);
            // Even a dropped base64 padding character: Django's
            // encodings are taken strictly.
            assert!(!verify(password, variant), "{variant}");
        }
    }
}
