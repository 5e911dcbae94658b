//! TOTP codes (RFC 6238: SHA-1, 6 digits, 30 s steps) as an authenticator app makes them.

use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use totp_rs::{Algorithm, Secret, TOTP};

pub const STEP: u64 = 30;

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    u64::try_from(crate::time::unix_now()).unwrap_or(0)
}

/// The 30 s step `unix` falls in.
pub fn step_of(unix: u64) -> u64 {
    unix / STEP
}

/// The code of `step` for a base32 `secret` (padding, spaces and case are ignored).
pub fn code(secret: &str, step: u64) -> Result<String> {
    let clean: String = secret
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '=')
        .map(|c| c.to_ascii_uppercase())
        .collect();
    let bytes = Secret::Encoded(clean)
        .to_bytes()
        .map_err(|e| anyhow!("TOTP secret {secret:?} is not base32: {e:?}"))?;
    let totp = TOTP::new_unchecked(Algorithm::SHA1, 6, 1, STEP, bytes, None, String::new());
    Ok(totp.generate(step * STEP))
}

/// The code of the current step.
pub fn current_code(secret: &str) -> Result<String> {
    code(secret, step_of(unix_now())).context("making the current TOTP code")
}

/// Replay protection accepts each step once and at most one step ahead of the clock. This
/// picks the first step after `last_used` that the server accepts now, waiting for the clock
/// when two steps were used up within one 30 s window.
pub fn next_usable_step(last_used: Option<u64>) -> u64 {
    loop {
        let now = step_of(unix_now());
        let step = match last_used {
            Some(last) if last >= now => last + 1,
            _ => now,
        };
        if step <= now + 1 {
            return step;
        }
        // The clock must reach step - 1; sleep until just after that boundary.
        let wait = ((step - 1) * STEP).saturating_sub(unix_now()).max(1);
        std::thread::sleep(Duration::from_secs(wait.min(STEP)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6238_sha1_vector() {
        // RFC 6238 appendix B: secret "12345678901234567890", T = 59 s → 94287082 (8 digits);
        // the 6-digit code is its last six digits.
        let secret = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
        assert_eq!(code(secret, 59 / STEP).unwrap(), "287082");
        assert_eq!(code(&secret.to_lowercase(), 1).unwrap(), "287082");
    }

    #[test]
    fn next_step_moves_forward() {
        let now = step_of(unix_now());
        assert!(next_usable_step(None) >= now);
        assert!(next_usable_step(Some(now)) > now);
    }
}
