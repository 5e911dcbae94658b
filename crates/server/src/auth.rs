//! Passwords (argon2id, policy), TOTP second factor with replay protection.

use argon2::{
    password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString},
    Argon2,
};
use subtle::ConstantTimeEq;
use totp_rs::{Algorithm, Secret, TOTP};

use crate::config::PasswordSection;

pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Verifies in constant time (argon2's own comparison). A malformed stored hash verifies false.
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
        .unwrap_or(false)
}

/// A hash of a random password: verified against when the user does not exist, so that
/// unknown and known user names take the same time.
pub fn dummy_hash() -> String {
    hash_password("fernwart-dummy-password-for-timing").unwrap_or_default()
}

/// Checks a new password against the policy; `user` is the account it is for. The message
/// says what to change.
pub fn check_policy(password: &str, policy: &PasswordSection, user: &str) -> Result<(), String> {
    let len = password.chars().count();
    if len < policy.min_length {
        return Err(format!("password too short: at least {} characters", policy.min_length));
    }
    if len > 1024 {
        return Err("password too long: at most 1024 characters".into());
    }
    let classes = [
        password.chars().any(|c| c.is_lowercase()),
        password.chars().any(|c| c.is_uppercase()),
        password.chars().any(|c| c.is_ascii_digit()),
        password.chars().any(|c| !c.is_alphanumeric()),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if classes < policy.min_classes {
        return Err(format!(
            "password too weak: use at least {} of lower case, upper case, digits, other characters",
            policy.min_classes
        ));
    }
    if policy.refuse_common {
        // The user name alone, or with digits and symbols around it, is as common as it gets.
        let core: String =
            password.to_lowercase().chars().filter(|c| c.is_alphanumeric()).collect();
        let user = user.to_lowercase();
        if !user.is_empty()
            && core.contains(&user)
            && core.replacen(&user, "", 1).chars().all(|c| c.is_ascii_digit())
        {
            return Err("password is the user name with digits and symbols: choose another".into());
        }
        if is_common(password) {
            return Err(
                "password is a common one (or a common word with digits and symbols): choose another"
                    .into(),
            );
        }
    }
    Ok(())
}

/// Words that common passwords are made of; a password that is one of them (or two), once
/// digits and symbols are taken away and look-alike digits read as letters, is refused.
const COMMON_WORDS: &[&str] = &[
    "password",
    "passwort",
    "passw",
    "pass",
    "welcome",
    "willkommen",
    "qwerty",
    "qwertz",
    "asdf",
    "asdfgh",
    "yxcvbnm",
    "zxcvbnm",
    "letmein",
    "admin",
    "administrator",
    "root",
    "user",
    "login",
    "test",
    "guest",
    "default",
    "changeme",
    "secret",
    "geheim",
    "master",
    "monkey",
    "dragon",
    "football",
    "fussball",
    "baseball",
    "soccer",
    "iloveyou",
    "love",
    "sunshine",
    "princess",
    "shadow",
    "superman",
    "batman",
    "trustno",
    "abc",
    "abcdef",
    "summer",
    "winter",
    "spring",
    "autumn",
    "fall",
    "sommer",
    "fruehling",
    "herbst",
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
    "januar",
    "februar",
    "maerz",
    "mai",
    "juni",
    "juli",
    "oktober",
    "dezember",
    "monday",
    "friday",
    "hello",
    "hallo",
    "service",
    "support",
    "technik",
    "technician",
    "maintenance",
    "wartung",
    "siemens",
    "fernwart",
    "company",
    "firma",
    "start",
    "access",
    "zugang",
    "system",
    "server",
    "computer",
    "internet",
    "remote",
    "plc",
    "scada",
    "operator",
    "engineer",
    "factory",
    "fabrik",
];

fn is_common(password: &str) -> bool {
    let lower = password.to_lowercase();
    let leet = |s: &str| -> String {
        s.chars()
            .map(|c| match c {
                '0' => 'o',
                '1' | '!' => 'i',
                '3' => 'e',
                '4' | '@' => 'a',
                '5' | '$' => 's',
                '7' => 't',
                c => c,
            })
            .filter(|c| c.is_ascii_lowercase())
            .collect()
    };
    // "P@ssw0rd2026!": the digits and symbols around the word are padding, those inside it
    // stand for letters; also the letters alone ("Pass-Word-99" -> "password").
    let core = lower.trim_matches(|c: char| !c.is_alphabetic());
    let plain: String = lower.chars().filter(|c| c.is_ascii_lowercase()).collect();
    [leet(core), plain].iter().any(|l| {
        l.is_empty()
            || COMMON_WORDS.contains(&l.as_str())
            || COMMON_WORDS.iter().any(|w| {
                l.strip_prefix(w)
                    .is_some_and(|rest| rest.is_empty() || COMMON_WORDS.contains(&rest))
            })
    })
}

pub const TOTP_STEP: u64 = 30;

pub fn new_totp_secret() -> String {
    let bytes: [u8; 20] = rand::random();
    Secret::Raw(bytes.to_vec()).to_encoded().to_string()
}

fn totp(secret_b32: &str, account: &str) -> Option<TOTP> {
    let bytes = Secret::Encoded(secret_b32.to_owned()).to_bytes().ok()?;
    TOTP::new(Algorithm::SHA1, 6, 1, TOTP_STEP, bytes, Some("fernwart".into()), account.into()).ok()
}

pub fn totp_uri(secret_b32: &str, account: &str) -> String {
    totp(secret_b32, account).map(|t| t.get_url()).unwrap_or_default()
}

/// Checks `code` against the steps now−1, now, now+1. Returns the matching step when it was
/// not used before; `used` lists steps already consumed (each code works once).
pub fn verify_totp(secret_b32: &str, code: &str, now: u64, used: &[u64]) -> Option<u64> {
    let t = totp(secret_b32, "x")?;
    let code = code.trim();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let step = now / TOTP_STEP;
    let mut found = None;
    for s in [step.saturating_sub(1), step, step + 1] {
        let expected = t.generate(s * TOTP_STEP);
        if bool::from(expected.as_bytes().ct_eq(code.as_bytes())) && !used.contains(&s) {
            found = Some(s);
        }
    }
    found
}

pub fn parse_steps(s: &str) -> Vec<u64> {
    s.split(',').filter_map(|x| x.parse().ok()).collect()
}

/// Keeps only the steps that could still be replayed.
pub fn remember_step(used: &[u64], step: u64, now: u64) -> String {
    let current = now / TOTP_STEP;
    let mut keep: Vec<u64> =
        used.iter().copied().filter(|s| *s + 2 >= current).chain([step]).collect();
    keep.sort_unstable();
    keep.dedup();
    keep.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_roundtrip_and_wrong_password() {
        let h = hash_password("Corr3ct-Horse!").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("Corr3ct-Horse!", &h));
        assert!(!verify_password("wrong", &h));
        assert!(!verify_password("x", "not a hash"));
    }

    #[test]
    fn policy_enforces_length_and_classes() {
        let p = PasswordSection::default();
        assert!(check_policy("Sh0rt!", &p, "u").unwrap_err().contains("short"));
        assert!(check_policy("alllowercaseletters", &p, "u").is_err());
        assert!(check_policy("T3ch-Passw0rd!2026x", &p, "tech1").is_ok());
        assert!(check_policy("Vq7#mLp2-Rz9wK", &p, "tech1").is_ok());
    }

    #[test]
    fn common_passwords_and_the_user_name_are_refused() {
        let p = PasswordSection::default();
        for common in [
            "Password123!",
            "Welcome2026!",
            "P@ssw0rd2026!",
            "Summer2026!!",
            "Qwertz123456!",
            "Admin-Admin-1",
            "Pass-Word-99!",
        ] {
            let err = check_policy(common, &p, "someone").unwrap_err();
            assert!(err.contains("common"), "{common}: {err}");
        }
        let err = check_policy("Technician-2026!", &p, "technician").unwrap_err();
        assert!(err.contains("user name") || err.contains("common"), "{err}");
        assert!(check_policy("Pw-tech1-Secr3t#2026", &p, "tech1").is_ok());
        assert!(check_policy("!!Tech1#2026#!!", &p, "tech1").unwrap_err().contains("user name"));
        let lax = PasswordSection { refuse_common: false, ..PasswordSection::default() };
        assert!(check_policy("Password123!", &lax, "someone").is_ok());
    }

    #[test]
    fn totp_codes_work_once() {
        let secret = new_totp_secret();
        let t = totp(&secret, "u").unwrap();
        let now = 1_800_000_000u64;
        let code = t.generate(now);
        let step = verify_totp(&secret, &code, now, &[]).unwrap();
        assert_eq!(step, now / TOTP_STEP);
        let used = parse_steps(&remember_step(&[], step, now));
        assert_eq!(verify_totp(&secret, &code, now, &used), None);
        let next = t.generate(now + TOTP_STEP);
        assert!(verify_totp(&secret, &next, now, &used).is_some());
        assert_eq!(verify_totp(&secret, "12345", now, &[]), None);
        assert_eq!(verify_totp(&secret, &t.generate(now + 5 * TOTP_STEP), now, &[]), None);
    }
}
