//! Session recordings on the gateway: when a grant says `record` (the session was prepared
//! with `--record`; the approver saw it) or `agent.toml` says `[recording] always = true`,
//! each tunnel connection's bytes both ways are recorded with their times to
//! `DIR/recordings/<id>.rec` (format: `fernwart_recording::format`), compressed, written off
//! the relay's path ([`recorder`]). At the end the file's SHA-256 and size go into the agent's
//! audit chain (`recording.saved`) and into `<id>.json` beside it (the summary that `list`
//! reads; the chain is what proves it).
//!
//! Retention (`[recording] keep_days`, `max_total_bytes`): after each recording and at the
//! agent's start the oldest recordings are deleted first, each with a `recording.deleted`
//! record; a recording still being written is never deleted.
//!
//! Recordings stay on the operator's side: the server only relays a listing or a file when an
//! admin or auditor asks (`fernwart recording list|export`), and only if
//! `export_via_server` is on; `fernwart-agent recording list|export` reads them on the
//! gateway without any server.

use std::{
    collections::HashSet,
    io,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
};

use fernwart_api::RecordingInfo;
use fernwart_recording::{Meta, Reader};
use serde::{Deserialize, Serialize};

pub mod recorder;
pub mod serve;

pub use recorder::{NoTap, Recorder, Tap};

/// The recordings' directory under the agent's data directory.
pub const DIR_NAME: &str = "recordings";

/// `[recording]` in `agent.toml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Recordings older than this are deleted.
    pub keep_days: u32,
    /// The oldest recordings are deleted while all of them take more than this.
    pub max_total_bytes: u64,
    /// Record every session's connections, whatever the grant says (the operator's rule).
    pub always: bool,
    /// The server may list recordings and fetch them for its admins and auditors.
    pub export_via_server: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            keep_days: 90,
            max_total_bytes: 1024 * 1024 * 1024,
            always: false,
            export_via_server: true,
        }
    }
}

impl Settings {
    pub const MIN_TOTAL_BYTES: u64 = 1024 * 1024;

    pub fn validated(
        keep_days: u32,
        max_total_bytes: u64,
        always: bool,
        export_via_server: bool,
    ) -> Result<Self, String> {
        if !(1..=36_500).contains(&keep_days) {
            return Err(format!("recording.keep_days = {keep_days}: must be between 1 and 36500"));
        }
        if max_total_bytes < Self::MIN_TOTAL_BYTES {
            return Err(format!(
                "recording.max_total_bytes = {max_total_bytes}: must be at least {}",
                Self::MIN_TOTAL_BYTES
            ));
        }
        Ok(Self { keep_days, max_total_bytes, always, export_via_server })
    }
}

/// What `<id>.json` holds: a finished recording's summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub id: String,
    pub session: String,
    pub target: String,
    pub address: String,
    pub users: Vec<String>,
    pub started_ms: i64,
    pub ended_ms: i64,
    pub bytes_to_target: u64,
    pub bytes_from_target: u64,
    pub missed_bytes: u64,
    pub file_bytes: u64,
    pub sha256: String,
    /// What ended the connection.
    pub outcome: String,
}

/// The agent's recordings: where they are, the rules, which are being written.
pub struct Recordings {
    dir: PathBuf,
    pub settings: Settings,
    active: Mutex<HashSet<String>>,
    next: AtomicU64,
}

/// A recording deleted by the retention rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deleted {
    pub id: String,
    pub bytes: u64,
    pub sha256: Option<String>,
    pub reason: String,
}

impl Recordings {
    pub fn new(data: &Path, settings: Settings) -> Self {
        Self {
            dir: dir(data),
            settings,
            active: Mutex::new(HashSet::new()),
            next: AtomicU64::new(1),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A fresh id for a recording of `session` starting at `now_ms`.
    fn new_id(&self, session: &str, now_ms: i64) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{session}-{now_ms}-{n}")
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_active(&self, id: &str) -> bool {
        self.lock().contains(id)
    }

    /// The recordings here (of `session`, or all), oldest first.
    pub fn list(&self, machine: &str, session: Option<&str>) -> io::Result<Vec<RecordingInfo>> {
        let active = self.lock().clone();
        list(&self.dir, machine, session, &active)
    }

    /// Deletes what the retention rules say, oldest first; a recording being written stays.
    pub fn prune(&self, now_ms: i64) -> io::Result<Vec<Deleted>> {
        let mut files = Vec::new();
        for id in ids(&self.dir)? {
            let (rec, sidecar) = (self.dir.join(rec_name(&id)), self.dir.join(json_name(&id)));
            let bytes = file_len(&rec) + file_len(&sidecar);
            let started = started_ms(&id).unwrap_or(0);
            files.push((started, id, bytes));
        }
        files.sort();
        let mut total: u64 = files.iter().map(|f| f.2).sum();
        let oldest_kept = now_ms.saturating_sub(i64::from(self.settings.keep_days) * 86_400_000);
        let mut deleted = Vec::new();
        for (started, id, bytes) in files {
            if self.is_active(&id) {
                continue;
            }
            let reason = if started < oldest_kept {
                format!("older than recording.keep_days ({})", self.settings.keep_days)
            } else if total > self.settings.max_total_bytes {
                format!(
                    "recordings took {total} bytes, more than recording.max_total_bytes ({})",
                    self.settings.max_total_bytes
                )
            } else {
                continue;
            };
            let sha256 = read_summary(&self.dir, &id).map(|s| s.sha256);
            remove_if_there(&self.dir.join(rec_name(&id)))?;
            remove_if_there(&self.dir.join(json_name(&id)))?;
            total = total.saturating_sub(bytes);
            deleted.push(Deleted { id, bytes, sha256, reason });
        }
        Ok(deleted)
    }

    /// The file of recording `id`, if there is one (ids that are no file names are refused).
    pub fn path_of(&self, id: &str) -> Option<PathBuf> {
        if !fernwart_recording::valid_id(id) {
            return None;
        }
        let p = self.dir.join(rec_name(id));
        p.is_file().then_some(p)
    }

    pub fn summary(&self, id: &str) -> Option<Summary> {
        read_summary(&self.dir, id)
    }
}

impl crate::Agent {
    /// Applies the retention rules now, recording each deletion in the audit chain.
    pub fn prune_recordings(&self) {
        let deleted = match self.recordings.prune(crate::audit::now_ms()) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "cannot apply the recordings' retention");
                return;
            }
        };
        for d in deleted {
            let session = fernwart_recording::session_of(&d.id).unwrap_or("").to_owned();
            self.audit_as(
                None,
                "recording.deleted",
                &session,
                serde_json::json!({"id": d.id, "bytes": d.bytes, "sha256": d.sha256, "reason": d.reason}),
            );
        }
    }
}

/// The recordings' directory for the agent data directory `data`.
pub fn dir(data: &Path) -> PathBuf {
    data.join(DIR_NAME)
}

fn rec_name(id: &str) -> String {
    format!("{id}.{}", fernwart_recording::EXTENSION)
}

fn json_name(id: &str) -> String {
    format!("{id}.json")
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

fn remove_if_there(p: &Path) -> io::Result<()> {
    match std::fs::remove_file(p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The start (unix ms) an id carries: `<session>-<ms>-<n>`.
fn started_ms(id: &str) -> Option<i64> {
    let (rest, _) = id.rsplit_once('-')?;
    rest.rsplit_once('-')?.1.parse().ok()
}

/// The ids of the recording files in `dir` (none if it does not exist).
fn ids(dir: &Path) -> io::Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(id) = name.strip_suffix(&format!(".{}", fernwart_recording::EXTENSION)) else {
            continue;
        };
        if fernwart_recording::valid_id(id) && entry.file_type()?.is_file() {
            out.push(id.to_owned());
        }
    }
    Ok(out)
}

fn read_summary(dir: &Path, id: &str) -> Option<Summary> {
    let text = std::fs::read(dir.join(json_name(id))).ok()?;
    serde_json::from_slice(&text).ok()
}

/// The recordings in `dir` (of `session`, or all), oldest first; `active` are being written.
/// A file that is not a readable recording is left out with a warning in the log.
pub fn list(
    dir: &Path,
    machine: &str,
    session: Option<&str>,
    active: &HashSet<String>,
) -> io::Result<Vec<RecordingInfo>> {
    let mut out = Vec::new();
    for id in ids(dir)? {
        let path = dir.join(rec_name(&id));
        let file_bytes = file_len(&path);
        let info = match read_summary(dir, &id) {
            Some(s) if s.id == id => RecordingInfo {
                id,
                machine: machine.to_owned(),
                session: s.session,
                target: s.target,
                address: s.address,
                users: s.users,
                started: rfc3339_ms(s.started_ms),
                ended: Some(rfc3339_ms(s.ended_ms)),
                state: "complete".into(),
                bytes_to_target: Some(s.bytes_to_target),
                bytes_from_target: Some(s.bytes_from_target),
                missed_bytes: Some(s.missed_bytes),
                file_bytes,
                sha256: Some(s.sha256),
            },
            _ => {
                let meta = match std::fs::File::open(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|f| Reader::new(io::BufReader::new(f)).map_err(|e| e.to_string()))
                {
                    Ok(r) => r.meta().clone(),
                    // Just begun: nothing on disk yet but the name.
                    Err(_) if active.contains(&id) => Meta {
                        session: fernwart_recording::session_of(&id).unwrap_or("").to_owned(),
                        started_us: started_ms(&id).unwrap_or(0).saturating_mul(1000),
                        id: id.clone(),
                        machine: machine.to_owned(),
                        users: Vec::new(),
                        target: String::new(),
                        address: String::new(),
                    },
                    Err(e) => {
                        tracing::warn!(id = %id, error = %e, "unreadable recording left out");
                        continue;
                    }
                };
                let state = if active.contains(&id) { "recording" } else { "cut" };
                info_of_meta(&meta, machine, state, file_bytes)
            }
        };
        if session.is_some_and(|s| s != info.session) {
            continue;
        }
        out.push(info);
    }
    out.sort_by(|a, b| (started_ms(&a.id), &a.id).cmp(&(started_ms(&b.id), &b.id)));
    Ok(out)
}

/// One line about a recording, for people.
pub fn human_line(r: &RecordingInfo) -> String {
    let bytes = match (r.bytes_to_target, r.bytes_from_target) {
        (Some(to), Some(from)) => format!("{to}B up {from}B down"),
        _ => "-".to_owned(),
    };
    let missed = match r.missed_bytes {
        Some(m) if m > 0 => format!(" ({m}B not recorded)"),
        _ => String::new(),
    };
    format!(
        "{:<36} {:<9} session={} target={} ({}) started {} {}{} file {}B",
        r.id, r.state, r.session, r.target, r.address, r.started, bytes, missed, r.file_bytes
    )
}

fn info_of_meta(meta: &Meta, machine: &str, state: &str, file_bytes: u64) -> RecordingInfo {
    RecordingInfo {
        id: meta.id.clone(),
        machine: machine.to_owned(),
        session: meta.session.clone(),
        target: meta.target.clone(),
        address: meta.address.clone(),
        users: meta.users.clone(),
        started: rfc3339_ms(meta.started_us / 1000),
        ended: None,
        state: state.into(),
        bytes_to_target: None,
        bytes_from_target: None,
        missed_bytes: None,
        file_bytes,
        sha256: None,
    }
}

/// RFC 3339 with milliseconds, UTC.
pub fn rfc3339_ms(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| ms.to_string())
}

/// Writes `summary` as `<id>.json` (a temporary file renamed into place).
fn write_summary(dir: &Path, summary: &Summary) -> io::Result<()> {
    let path = dir.join(json_name(&summary.id));
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_vec_pretty(summary).map_err(io::Error::other)?;
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, &path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(id: &str, session: &str) -> Summary {
        Summary {
            id: id.into(),
            session: session.into(),
            target: "plc".into(),
            address: "127.0.0.1:502".into(),
            users: vec!["tech1".into()],
            started_ms: started_ms(id).unwrap(),
            ended_ms: started_ms(id).unwrap() + 10,
            bytes_to_target: 1,
            bytes_from_target: 2,
            missed_bytes: 0,
            file_bytes: 3,
            sha256: format!("hash-of-{id}"),
            outcome: "closed".into(),
        }
    }

    /// A finished recording of `len` bytes (not a valid file; `list` reads the summary).
    fn put(dir: &Path, id: &str, session: &str, len: usize) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(rec_name(id)), vec![0u8; len]).unwrap();
        write_summary(dir, &summary(id, session)).unwrap();
    }

    const DAY: i64 = 86_400_000;

    #[test]
    fn the_oldest_go_first_and_a_recording_being_written_stays() {
        let data = tempfile::tempdir().unwrap();
        let settings =
            Settings { keep_days: 10, max_total_bytes: 2_000_000, ..Settings::default() };
        let r = Recordings::new(data.path(), settings);
        let now = 100 * DAY;
        put(r.dir(), "s1-1000-1", "s1", 10); // 100 days old
        put(r.dir(), &format!("s2-{}-2", now - 5 * DAY), "s2", 1_500_000);
        put(r.dir(), &format!("s2-{}-3", now - 4 * DAY), "s2", 1_000_000);
        put(r.dir(), &format!("s3-{}-4", now - DAY), "s3", 10);
        r.lock().insert(format!("s2-{}-2", now - 5 * DAY));

        let deleted = r.prune(now).unwrap();

        let ids: Vec<&str> = deleted.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["s1-1000-1".to_owned(), format!("s2-{}-3", now - 4 * DAY)]);
        assert!(deleted[0].reason.contains("keep_days"));
        assert!(deleted[1].reason.contains("max_total_bytes"));
        assert_eq!(deleted[0].sha256.as_deref(), Some("hash-of-s1-1000-1"));
        let left = r.list("m1", None).unwrap();
        let left: Vec<&str> = left.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(left, [format!("s2-{}-2", now - 5 * DAY), format!("s3-{}-4", now - DAY)]);
    }

    #[test]
    fn listing_filters_by_session_and_refuses_path_ids() {
        let data = tempfile::tempdir().unwrap();
        let r = Recordings::new(data.path(), Settings::default());
        assert!(r.list("m1", None).unwrap().is_empty());
        put(r.dir(), "s1-1000-1", "s1", 10);
        put(r.dir(), "s10-2000-2", "s10", 10);
        std::fs::write(r.dir().join("notes.txt"), "x").unwrap();

        let s1 = r.list("m1", Some("s1")).unwrap();

        assert_eq!(s1.len(), 1);
        assert_eq!(s1[0].state, "complete");
        assert_eq!(s1[0].machine, "m1");
        assert_eq!(s1[0].sha256.as_deref(), Some("hash-of-s1-1000-1"));
        assert!(r.path_of("s1-1000-1").is_some());
        assert!(r.path_of("../recordings/s1-1000-1").is_none());
        assert!(r.path_of("s9-1-1").is_none());
    }

    #[test]
    fn ids_carry_their_start() {
        let r = Recordings::new(Path::new("/nonexistent"), Settings::default());
        let id = r.new_id("s-1", 1234);
        assert_eq!(id, "s-1-1234-1");
        assert_eq!(started_ms(&id), Some(1234));
        assert_eq!(fernwart_recording::session_of(&id), Some("s-1"));
        assert_eq!(r.new_id("s-1", 1234), "s-1-1234-2");
    }
}
