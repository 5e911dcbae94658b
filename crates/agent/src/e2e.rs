//! The agent's end-to-end key (`DIR/e2e-key`, owner-only) and its side of each tunnel's
//! handshake ([`fernwart_proto::e2e`]); the relay is [`crate::forward`].

use std::{path::Path, sync::Mutex};

use base64::Engine as _;
use fernwart_proto::e2e::{self, FirstMessage, PublicKey, ReplayGuard, Responder, StaticKey};
use rand::RngCore as _;

use crate::identity;

/// The agent's static X25519 key: base64 of the secret, mode 0600.
pub const KEY_FILE: &str = "e2e-key";

/// The key and the memory of first messages seen.
pub struct E2e {
    /// Why there is no key, if it could not be read or made: every tunnel is then refused.
    key: Result<StaticKey, String>,
    guard: Mutex<ReplayGuard>,
}

impl E2e {
    /// Reads `DIR/e2e-key`, or makes it (agents enrolled before end-to-end encryption make
    /// theirs at their first start with it).
    pub fn load(dir: &Path) -> Self {
        let key = load_or_create(dir);
        if let Err(e) = &key {
            tracing::error!(error = %e, "no end-to-end key: every tunnel will be refused");
        }
        Self { key, guard: Mutex::new(ReplayGuard::default()) }
    }

    /// The public key, for the server (the agent's hello) and the operator.
    pub fn public(&self) -> Option<PublicKey> {
        self.key.as_ref().ok().map(StaticKey::public)
    }

    /// Reads a tunnel's first Noise message, from one of `tech_keys` (the grant's technician
    /// keys; checked before the handshake is remembered). `Err` says why the tunnel is refused.
    pub fn accept(
        &self,
        session: &str,
        target: &str,
        msg: &[u8],
        tech_keys: &[String],
    ) -> Result<(Responder, FirstMessage), String> {
        let key =
            self.key.as_ref().map_err(|e| format!("this machine has no end-to-end key: {e}"))?;
        let seed = rand::random::<[u8; 32]>();
        let mut guard = self.guard.lock().unwrap_or_else(|p| p.into_inner());
        Responder::accept_granted(key, session, target, seed, msg, now_ms(), &mut guard, tech_keys)
            .map_err(|e| fernwart_transport::error_chain(&e))
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The key in `DIR/e2e-key`, made (from the OS's randomness) if the file does not exist.
pub fn load_or_create(dir: &Path) -> Result<StaticKey, String> {
    let path = dir.join(KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let secret = base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|_| format!("{}: not a key", path.display()))?;
            StaticKey::from_secret(&secret).map_err(|e| format!("{}: {e}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut secret = zeroize::Zeroizing::new([0u8; e2e::KEY_LEN]);
            rand::rngs::OsRng.fill_bytes(&mut secret[..]);
            let key = StaticKey::from_secret(&secret[..]).map_err(|e| e.to_string())?;
            let text = zeroize::Zeroizing::new(format!(
                "{}\n",
                base64::engine::general_purpose::STANDARD.encode(key.secret())
            ));
            identity::write(&path, text.as_bytes(), 0o600)?;
            tracing::debug!(public = %key.public(), "made the end-to-end key");
            Ok(key)
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_made_once_and_kept_private() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path()).unwrap();
        let b = load_or_create(dir.path()).unwrap();
        assert_eq!(a.public(), b.public());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(KEY_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0);
        std::fs::write(dir.path().join(KEY_FILE), "junk!").unwrap();
        assert!(load_or_create(dir.path()).unwrap_err().contains("not a key"));
    }
}
