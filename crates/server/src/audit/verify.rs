//! `fernwart-server audit verify`: checks the audit chain offline, in a data directory or in
//! an export, and names the first record that was changed, removed, inserted or moved.

use std::path::Path;

use fernwart_api::{AuditExport, EXPORT_FORMAT};
use fernwart_proto::chain::{self, Break, Linked};

use super::signing::{self, SigningKey, KEY_FILE};
use crate::store::{Store, StoreError, DB_FILE};

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("the audit trail does not verify")]
    Broken(#[from] Break),
    #[error("the audit trail does not verify: the checkpoint at record {seq} is not signed by the server's key")]
    BadSignature { seq: u64 },
    #[error("{0}")]
    Setup(String),
    #[error("cannot read the audit trail")]
    Store(#[from] StoreError),
}

/// What a verified trail holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub records: u64,
    pub first_seq: u64,
    pub checkpoints: usize,
    /// The last place a valid signed checkpoint covers.
    pub signed_up_to: u64,
    /// Records after it: intact as a chain, not yet signed (written in the last
    /// checkpoint interval before a crash, or still being written).
    pub unsigned: u64,
    /// The server's public key (hex).
    pub key: String,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "audit trail verified: {} records (from {}), {} signed checkpoints, signed up to record {}",
            self.records, self.first_seq, self.checkpoints, self.signed_up_to
        )?;
        if self.unsigned > 0 {
            write!(f, "; the last {} records are chained but not signed yet", self.unsigned)?;
        }
        write!(f, "; server key {}", self.key)
    }
}

/// Verifies the trail in data directory `dir` (the database and the signing key).
pub fn verify_data(dir: &Path) -> Result<Report, VerifyError> {
    if !dir.join(DB_FILE).exists() {
        return Err(VerifyError::Setup(format!(
            "{} holds no server database ({DB_FILE}): is --data right?",
            dir.display()
        )));
    }
    let key_path = dir.join(KEY_FILE);
    let key = SigningKey::load(&key_path)
        .map_err(|e| VerifyError::Setup(format!("{e} (it is made when the server first runs)")))?
        .public_hex();
    let store = Store::open(dir)?;
    let b = store.blocking();
    let records = b.audit_chain(0, usize::MAX)?;
    let checkpoints: Vec<(u64, String, String)> =
        b.audit_checkpoints()?.into_iter().map(|c| (c.seq, c.hash, c.signature)).collect();
    check(&records, 1, chain::GENESIS, &checkpoints, &key)
}

/// Verifies an export (`fernwart audit export`); `key` is the server key the verifier trusts
/// (else the export's own, which proves only that the export is intact as a whole).
pub fn verify_export(path: &Path, key: Option<&str>) -> Result<Report, VerifyError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| VerifyError::Setup(format!("cannot read {}: {e}", path.display())))?;
    let export: AuditExport = serde_json::from_str(&text).map_err(|e| {
        VerifyError::Setup(format!("{} is not an audit export: {e}", path.display()))
    })?;
    if export.format != EXPORT_FORMAT {
        return Err(VerifyError::Setup(format!(
            "{}: format {:?}, this build reads {EXPORT_FORMAT}",
            path.display(),
            export.format
        )));
    }
    if let Some(k) = key {
        if !k.eq_ignore_ascii_case(&export.server_key) {
            return Err(VerifyError::Setup(format!(
                "the export is signed by key {}, not by {k}",
                export.server_key
            )));
        }
    }
    let checkpoints: Vec<(u64, String, String)> =
        export.checkpoints.into_iter().map(|c| (c.seq, c.hash, c.signature)).collect();
    check(&export.records, export.first_seq, &export.first_prev, &checkpoints, &export.server_key)
}

fn check(
    records: &[Linked],
    first_seq: u64,
    first_prev: &str,
    checkpoints: &[(u64, String, String)],
    key: &str,
) -> Result<Report, VerifyError> {
    for (seq, hash, sig) in checkpoints {
        if !signing::verify(key, &chain::checkpoint_message(*seq, hash), sig) {
            return Err(VerifyError::BadSignature { seq: *seq });
        }
    }
    let pins: Vec<(u64, String)> = checkpoints.iter().map(|(s, h, _)| (*s, h.clone())).collect();
    let v = chain::verify(records, first_seq, first_prev, &pins)?;
    let last = first_seq + v.records;
    Ok(Report {
        records: v.records,
        first_seq,
        checkpoints: checkpoints.len(),
        signed_up_to: v.signed_up_to,
        unsigned: last.saturating_sub(v.signed_up_to.max(first_seq - 1) + 1),
        key: key.to_owned(),
    })
}
