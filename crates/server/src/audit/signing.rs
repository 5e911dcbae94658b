//! The server's audit signing key (Ed25519): it signs checkpoints of the audit chain, so that
//! a chain rewritten by someone holding the database file, but not this key, no longer
//! verifies. Kept in `DIR/audit-signing.key` (PKCS#8, owner-only); its public half is printed
//! by `fernwart-server audit key` and travels with every export.

use std::path::{Path, PathBuf};

use ring::{
    rand::SystemRandom,
    signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519},
};

use fernwart_proto::chain::hex;

pub const KEY_FILE: &str = "audit-signing.key";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the audit signing key {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the audit signing key {path}")]
    Write {
        path: String,
        #[source]
        source: crate::ca::CaError,
    },
    #[error("the audit signing key {0} is not an Ed25519 PKCS#8 key")]
    Invalid(String),
    #[error("cannot generate a key: no system randomness")]
    Random,
}

pub struct SigningKey {
    pair: Ed25519KeyPair,
}

impl SigningKey {
    /// Loads `DIR/audit-signing.key`, creating it (owner-only) if it does not exist.
    pub fn load_or_create(dir: &Path) -> Result<Self, KeyError> {
        let path = dir.join(KEY_FILE);
        let shown = path.display().to_string();
        if !path.exists() {
            let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
                .map_err(|_| KeyError::Random)?;
            crate::ca::write_file(&path, doc.as_ref(), 0o600)
                .map_err(|source| KeyError::Write { path: shown.clone(), source })?;
        }
        Self::load(&path)
    }

    pub fn load(path: &PathBuf) -> Result<Self, KeyError> {
        let shown = path.display().to_string();
        let bytes =
            std::fs::read(path).map_err(|source| KeyError::Read { path: shown.clone(), source })?;
        let pair = Ed25519KeyPair::from_pkcs8(&bytes).map_err(|_| KeyError::Invalid(shown))?;
        Ok(Self { pair })
    }

    /// The signature over `msg`, hex.
    pub fn sign(&self, msg: &[u8]) -> String {
        hex(self.pair.sign(msg).as_ref())
    }

    /// The public key, hex (64 characters).
    pub fn public_hex(&self) -> String {
        hex(self.pair.public_key().as_ref())
    }
}

/// Whether `signature_hex` is `public_hex`'s signature over `msg`.
pub fn verify(public_hex: &str, msg: &[u8], signature_hex: &str) -> bool {
    let (Some(public), Some(sig)) = (unhex(public_hex), unhex(signature_hex)) else {
        return false;
    };
    UnparsedPublicKey::new(&ED25519, public).verify(msg, &sig).is_ok()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 1024 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_and_verifies_and_keeps_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let k = SigningKey::load_or_create(dir.path()).unwrap();
        let again = SigningKey::load_or_create(dir.path()).unwrap();
        assert_eq!(k.public_hex(), again.public_hex());
        let sig = k.sign(b"checkpoint");
        assert!(verify(&k.public_hex(), b"checkpoint", &sig));
        assert!(!verify(&k.public_hex(), b"checkpoinT", &sig));
        assert!(!verify(&k.public_hex(), b"checkpoint", "zz"));
        assert!(!verify("00", b"checkpoint", &sig));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(dir.path().join(KEY_FILE), b"junk").unwrap();
        assert!(matches!(SigningKey::load_or_create(dir.path()), Err(KeyError::Invalid(_))));
    }
}
