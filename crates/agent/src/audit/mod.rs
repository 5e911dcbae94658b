//! The agent's own tamper-evident audit trail: everything that concerned this machine
//! (grants received, tunnels with their bytes and duration, key switch changes, refusals and
//! why), kept on the gateway whether or not the server is reachable.
//!
//! Records are [`fernwart_proto::chain::Linked`], one JSON object per line, in
//! `DIR/audit/`: `current.jsonl` is written, full files are renamed to
//! `audit-<first seq, 20 digits>.jsonl` and the oldest beyond [`Settings::keep_files`] are
//! deleted. The chain runs on across files: the first record of a file links to the last of
//! the one before. [`AuditLog`] appends (one `write` per record, then one `fdatasync` per batch), fed by
//! [`AuditWriter`]'s thread so that relaying never waits for the disk;
//! [`verify`] and [`list`] only read the files (`fernwart-agent audit verify|list`).
//!
//! The line-per-record files of earlier versions (`DIR/audit.jsonl`, no chain) are left as
//! they are and never written again; when a new chain begins next to one, its first record
//! (`audit.legacy`) holds that file's size and SHA-256.
//!
//! Over a link of version 2 the agent hands its records to the server ([`Uploader`],
//! [`read_batch`]), which keeps a copy for the operator to compare with this one.

use std::{
    io,
    path::{Path, PathBuf},
};

mod log;
mod read;
mod upload;
mod writer;

pub use log::{AuditLog, Error};
pub use read::{human_line, list, parse_since, read, verify, Filter, ReadError, Report, Trail};
pub use upload::{read_batch, Uploader};
pub use writer::AuditWriter;

/// The trail's directory under the agent's data directory.
pub const DIR_NAME: &str = "audit";
/// The file being written.
pub const CURRENT: &str = "current.jsonl";
/// The unchained file of earlier versions, in the data directory.
pub const LEGACY_FILE: &str = "audit.jsonl";

/// How large the trail may grow: `[audit]` in `agent.toml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// `current.jsonl` is rotated before a record would take it past this size.
    pub max_file_bytes: u64,
    /// Rotated files kept besides `current.jsonl` (at least 1, so that the last record of a
    /// rotated file is still there to link to after a crash right after a rotation).
    pub keep_files: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self { max_file_bytes: 4 * 1024 * 1024, keep_files: 8 }
    }
}

impl Settings {
    pub const MIN_FILE_BYTES: u64 = 4 * 1024;
    pub const MAX_FILE_BYTES: u64 = 1024 * 1024 * 1024;
    pub const MAX_KEEP_FILES: usize = 10_000;

    /// Checks the bounds of settings read from `agent.toml`.
    pub fn validated(max_file_bytes: u64, keep_files: usize) -> Result<Self, String> {
        if !(Self::MIN_FILE_BYTES..=Self::MAX_FILE_BYTES).contains(&max_file_bytes) {
            return Err(format!(
                "audit.max_file_bytes = {max_file_bytes}: must be between {} and {}",
                Self::MIN_FILE_BYTES,
                Self::MAX_FILE_BYTES
            ));
        }
        if !(1..=Self::MAX_KEEP_FILES).contains(&keep_files) {
            return Err(format!(
                "audit.keep_files = {keep_files}: must be between 1 and {}",
                Self::MAX_KEEP_FILES
            ));
        }
        Ok(Self { max_file_bytes, keep_files })
    }
}

/// The trail's directory for the agent data directory `data`.
pub fn dir(data: &Path) -> PathBuf {
    data.join(DIR_NAME)
}

/// Milliseconds since the Unix epoch (0 before it).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A file of the trail.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TrailFile {
    path: PathBuf,
    /// The first seq its name gives (rotated files only).
    first_seq: Option<u64>,
}

/// `audit-<seq>.jsonl`, or `audit-<seq>-<n>.jsonl` when that name is taken (a chain that
/// began again: a break `verify` reports).
fn rotated_name(first_seq: u64, n: u32) -> String {
    if n == 0 {
        format!("audit-{first_seq:020}.jsonl")
    } else {
        format!("audit-{first_seq:020}-{n}.jsonl")
    }
}

fn parse_rotated_name(name: &str) -> Option<(u64, u32)> {
    let stem = name.strip_prefix("audit-")?.strip_suffix(".jsonl")?;
    let (seq, n) = match stem.split_once('-') {
        Some((seq, n)) => (seq, n.parse().ok()?),
        None => (stem, 0),
    };
    if seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((seq.parse().ok()?, n))
}

/// The trail's files in chain order: the rotated ones by the seq in their name, then
/// `current.jsonl` if it exists. Other files in the directory are not part of it.
fn files(dir: &Path) -> io::Result<Vec<TrailFile>> {
    let mut rotated: Vec<((u64, u32), PathBuf)> = Vec::new();
    let mut current = None;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !entry.file_type()?.is_file() {
            continue;
        }
        if name == CURRENT {
            current = Some(entry.path());
        } else if let Some(key) = parse_rotated_name(name) {
            rotated.push((key, entry.path()));
        }
    }
    rotated.sort();
    let mut out: Vec<TrailFile> = rotated
        .into_iter()
        .map(|((seq, _), path)| TrailFile { path, first_seq: Some(seq) })
        .collect();
    if let Some(path) = current {
        out.push(TrailFile { path, first_seq: None });
    }
    Ok(out)
}

/// A path for messages: relative to the data directory when it is inside it.
fn shown(data: &Path, path: &Path) -> String {
    path.strip_prefix(data).unwrap_or(path).display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotated_names_sort_by_their_first_record() {
        assert_eq!(rotated_name(17, 0), "audit-00000000000000000017.jsonl");
        assert_eq!(parse_rotated_name(&rotated_name(17, 0)), Some((17, 0)));
        assert_eq!(parse_rotated_name(&rotated_name(17, 2)), Some((17, 2)));
        for bad in
            ["audit-.jsonl", "audit-1x.jsonl", "audit-1.json", "current.jsonl", "audit-1-x.jsonl"]
        {
            assert_eq!(parse_rotated_name(bad), None, "{bad}");
        }
        let dir = tempfile::tempdir().unwrap();
        for name in [CURRENT, &rotated_name(100, 0), &rotated_name(9, 0), "notes.txt"] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        let names: Vec<String> = files(dir.path())
            .unwrap()
            .iter()
            .map(|f| f.path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, [rotated_name(9, 0), rotated_name(100, 0), CURRENT.to_owned()]);
    }

    #[test]
    fn settings_are_bounded() {
        assert!(Settings::validated(4 * 1024 * 1024, 8).is_ok());
        assert!(Settings::validated(100, 8).is_err());
        assert!(Settings::validated(4096, 0).is_err());
        assert!(Settings::validated(u64::MAX, 1).is_err());
    }
}
