//! Cryptography: password hashes and JWTs. Nothing here touches HTTP or SQL.

pub mod jwt;
pub mod keys;
pub mod password;
