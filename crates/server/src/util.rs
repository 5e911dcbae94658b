//! Small helpers: clocks, random tokens, hashing.

use base64::Engine;
use sha2::{Digest, Sha256};

pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

pub fn rfc3339(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

pub fn rfc3339_ms(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

pub fn parse_rfc3339(s: &str) -> Option<i64> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

/// 256 random bits, URL-safe base64 behind a `fw_` prefix: login and enrolment tokens. The
/// prefix keeps a token from starting with `-`, which a command line would read as an option.
pub fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("fw_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// Tokens are stored only as their SHA-256; lookup by hash keeps the secret out of the database.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod token_tests {
    #[test]
    fn tokens_never_look_like_options() {
        for _ in 0..2000 {
            let t = super::random_token();
            assert!(t.starts_with("fw_") && t.len() == 46, "{t}");
        }
    }
}
