//! Appending to the trail.
//!
//! Each record is one line written with one `write` to `current.jsonl` (opened `O_APPEND`),
//! then `fdatasync`, before [`AuditLog::append`] returns: a record it returned is on disk, and
//! a crash leaves at most the end of the last line unwritten (a torn line), never two records
//! mixed.
//!
//! When the log opens (at the agent's start, and again after any failed append) it reads
//! `current.jsonl` to continue the chain after its last record (or, with no records there,
//! after the last record of the newest rotated file). A torn last line is cut off the file
//! (it was never acknowledged), and the next record written is `audit.torn`, naming the
//! offset, the length and the start of what was cut, so the crash is in the chain itself. A
//! last line that is a whole, valid record only missing its newline gets its newline instead.
//!
//! A failed append is logged by the caller, counted ([`AuditLog::failures`]) and leaves the
//! file to be reopened (and a torn end cut) before the next record; once writing works again
//! the first record written is `audit.failed` with the number of records lost and the last
//! error. Nothing here panics.

use std::{
    fs::{File, OpenOptions},
    io::{self, Read, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
};

use fernwart_proto::chain::{self, Body, Linked};
use sha2::{Digest, Sha256};

use super::{files, rotated_name, Settings, CURRENT, LEGACY_FILE};

/// What went wrong while appending a record.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not a regular file", .0.display())]
    NotAFile(PathBuf),
    #[error("encoding an audit record")]
    Encode(#[source] serde_json::Error),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io { op, path: path.to_owned(), source }
}

/// The agent's audit trail, appended to by every part of the agent.
pub struct AuditLog {
    data: PathBuf,
    dir: PathBuf,
    source: String,
    settings: Settings,
    state: Mutex<State>,
    failures: AtomicU64,
}

#[derive(Default)]
struct State {
    /// `current.jsonl`, open for appending; `None` until opened, and after a failure.
    file: Option<File>,
    /// The record the next one links to.
    last: Option<(u64, String)>,
    /// The first record in `current.jsonl` (the name it gets when rotated).
    first_in_current: Option<u64>,
    size: u64,
    /// Records about the trail itself, written before the next one.
    pending: Vec<Body>,
    /// Appends that failed since the last record written, and the last error.
    lost: u64,
    last_error: Option<String>,
    legacy_noted: bool,
}

impl AuditLog {
    /// The trail of the agent data directory `data`; `source` is what its own records (torn
    /// line, failures) name as their source. Opens nothing yet: see [`AuditLog::open`].
    pub fn new(data: &Path, source: impl Into<String>, settings: Settings) -> Self {
        Self {
            data: data.to_owned(),
            dir: super::dir(data),
            source: source.into(),
            settings,
            state: Mutex::new(State::default()),
            failures: AtomicU64::new(0),
        }
    }

    /// Opens the trail now (else the first append does), so that a problem shows at start.
    pub fn open(&self) -> Result<(), Error> {
        let mut st = lock(&self.state);
        if st.file.is_none() {
            self.recover(&mut st)?;
        }
        Ok(())
    }

    /// Appends `body` after the last record and syncs it to disk. On an error the record is
    /// not in the trail (or not known to be durable) and is counted in [`AuditLog::failures`].
    pub fn append(&self, body: Body) -> Result<Linked, Error> {
        let mut st = lock(&self.state);
        let result = self.append_locked(&mut st, body).and_then(|r| self.sync(&mut st).map(|()| r));
        if let Err(e) = &result {
            self.failed(&mut st, e, 1);
        }
        result
    }

    /// Appends `bodies` in order and syncs once for all (group commit). On an error the
    /// records from the failing one on are not in the trail (or not known to be durable) and
    /// are counted in [`AuditLog::failures`].
    pub fn append_many(&self, bodies: Vec<Body>) -> Result<(), Error> {
        let mut st = lock(&self.state);
        let total = bodies.len() as u64;
        let mut written = 0u64;
        let mut result = Ok(());
        for body in bodies {
            if let Err(e) = self.append_locked(&mut st, body) {
                result = Err(e);
                break;
            }
            written += 1;
        }
        // What was written is only durable once synced: a failed sync loses the lot.
        let result = result.and_then(|()| self.sync(&mut st)).map_err(|e| (e, written));
        match result {
            Ok(()) => Ok(()),
            Err((e, written)) => {
                let lost = if matches!(e, Error::Io { op: "syncing", .. }) {
                    total
                } else {
                    total - written
                };
                self.failed(&mut st, &e, lost);
                Err(e)
            }
        }
    }

    fn failed(&self, st: &mut State, e: &Error, lost: u64) {
        // Reopen before the next record: that also cuts off a partly written line.
        st.file = None;
        st.lost += lost;
        st.last_error = Some(fernwart_transport::error_chain(e));
        self.failures.fetch_add(lost, Ordering::Relaxed);
    }

    fn sync(&self, st: &mut State) -> Result<(), Error> {
        let path = self.current_path();
        match st.file.as_mut() {
            Some(f) => f.sync_data().map_err(io_err("syncing", &path)),
            None => Err(Error::NotAFile(path)),
        }
    }

    /// The place of the last record written (or found when the trail opened); `None` before
    /// the trail could be opened, or while it holds no record.
    pub fn last_seq(&self) -> Option<u64> {
        lock(&self.state).last.as_ref().map(|(seq, _)| *seq)
    }

    /// Appends that failed since the agent started.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    fn append_locked(&self, st: &mut State, body: Body) -> Result<Linked, Error> {
        if st.file.is_none() {
            self.recover(st)?;
        }
        if st.lost > 0 {
            let details =
                serde_json::json!({"lost": st.lost, "last_error": st.last_error}).to_string();
            let note = self.note("audit.failed", details);
            self.write_one(st, note)?;
            st.lost = 0;
            st.last_error = None;
        }
        while let Some(note) = st.pending.first().cloned() {
            self.write_one(st, note)?;
            st.pending.remove(0);
        }
        self.write_one(st, body)
    }

    fn note(&self, action: &str, details: String) -> Body {
        Body {
            time_ms: super::now_ms(),
            actor: "agent".into(),
            action: action.into(),
            target: String::new(),
            source: self.source.clone(),
            details,
        }
    }

    fn current_path(&self) -> PathBuf {
        self.dir.join(CURRENT)
    }

    fn write_one(&self, st: &mut State, body: Body) -> Result<Linked, Error> {
        let record = chain::link(st.last.as_ref().map(|(s, h)| (*s, h.as_str())), body);
        let mut line = serde_json::to_vec(&record).map_err(Error::Encode)?;
        line.push(b'\n');
        let len = line.len() as u64;
        if st.size > 0 && st.size.saturating_add(len) > self.settings.max_file_bytes {
            self.rotate(st)?;
        }
        let path = self.current_path();
        let file = match st.file.as_mut() {
            Some(f) => f,
            None => return Err(Error::NotAFile(path)),
        };
        // One write (a regular file takes it whole), so a crash tears at most this line; the
        // caller syncs (once for a batch).
        file.write_all(&line).map_err(io_err("writing an audit record to", &path))?;
        st.size += len;
        st.first_in_current.get_or_insert(record.seq);
        st.last = Some((record.seq, record.hash.clone()));
        Ok(record)
    }

    /// Opens `current.jsonl`, cuts a torn last line and finds the record to continue from.
    fn recover(&self, st: &mut State) -> Result<(), Error> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(io_err("creating the audit directory", &self.dir))?;
        let path = self.current_path();
        let existed = match std::fs::symlink_metadata(&path) {
            Ok(m) if !m.is_file() => return Err(Error::NotAFile(path)),
            Ok(_) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(io_err("reading", &path)(e)),
        };
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err("opening", &path))?;
        if !existed {
            sync_dir(&self.dir)?;
        }
        let mut content = Vec::new();
        file.read_to_end(&mut content).map_err(io_err("reading", &path))?;

        let complete = content.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let (first, mut last) = first_and_last(&content[..complete], &path);
        if complete < content.len() {
            let tail = &content[complete..];
            match whole_record_after(tail, last.as_ref()) {
                Some(r) => {
                    tracing::warn!(path = %path.display(), seq = r.seq, "the last audit record lacked its newline (a crash while writing); completed it");
                    file.write_all(b"\n").map_err(io_err("completing the last line of", &path))?;
                    file.sync_data().map_err(io_err("syncing", &path))?;
                    content.push(b'\n');
                    last = Some(r);
                }
                None => {
                    tracing::warn!(path = %path.display(), offset = complete, bytes = tail.len(), "the last audit line was torn (a crash while writing); cut it off, the chain continues from the last whole record");
                    let start: String = String::from_utf8_lossy(tail).chars().take(200).collect();
                    let details = serde_json::json!({
                        "file": CURRENT, "offset": complete, "bytes": tail.len(), "start": start,
                        "continues_after": last.as_ref().map(|r| r.seq),
                    });
                    st.pending.push(self.note("audit.torn", details.to_string()));
                    file.set_len(complete as u64)
                        .map_err(io_err("cutting the torn line of", &path))?;
                    file.sync_data().map_err(io_err("syncing", &path))?;
                    content.truncate(complete);
                }
            }
        }
        let first_seq = first.as_ref().map(|r| r.seq).or_else(|| last.as_ref().map(|r| r.seq));
        if last.is_none() {
            last = self.last_rotated()?;
        }
        if last.is_none() && !st.legacy_noted {
            if let Some(details) = legacy(&self.data.join(LEGACY_FILE)) {
                st.pending.insert(0, self.note("audit.legacy", details));
            }
            st.legacy_noted = true;
        }
        st.first_in_current = first_seq;
        st.last = last.map(|r| (r.seq, r.hash));
        st.size = content.len() as u64;
        st.file = Some(file);
        Ok(())
    }

    /// The last record of the newest rotated file that holds one.
    fn last_rotated(&self) -> Result<Option<Linked>, Error> {
        let all = files(&self.dir).map_err(io_err("listing", &self.dir))?;
        for f in all.iter().rev().filter(|f| f.first_seq.is_some()) {
            let content = std::fs::read(&f.path).map_err(io_err("reading", &f.path))?;
            if let (_, Some(last)) = first_and_last(&content, &f.path) {
                return Ok(Some(last));
            }
        }
        Ok(None)
    }

    /// Renames `current.jsonl` to `audit-<first seq>.jsonl`, starts a new one and deletes the
    /// oldest rotated files beyond `keep_files`.
    fn rotate(&self, st: &mut State) -> Result<(), Error> {
        let first =
            st.first_in_current.or_else(|| st.last.as_ref().map(|(s, _)| s + 1)).unwrap_or(1);
        let current = self.current_path();
        let mut n = 0;
        let to = loop {
            let p = self.dir.join(rotated_name(first, n));
            if !p.exists() {
                break p;
            }
            n += 1;
        };
        // Records of this batch not yet synced go to disk with the file they are in.
        self.sync(st)?;
        st.file = None;
        std::fs::rename(&current, &to).map_err(io_err("rotating", &current))?;
        sync_dir(&self.dir)?;
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&current)
            .map_err(io_err("opening", &current))?;
        sync_dir(&self.dir)?;
        tracing::info!(to = %to.display(), "rotated the audit trail");
        st.file = Some(file);
        st.size = 0;
        st.first_in_current = None;
        self.prune();
        Ok(())
    }

    /// Deletes the oldest rotated files beyond `keep_files`. A failure is logged: it loses
    /// no record, the files stay a little longer.
    fn prune(&self) {
        let all = match files(&self.dir) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(error = %e, dir = %self.dir.display(), "cannot list the audit files to delete the oldest");
                return;
            }
        };
        let rotated: Vec<_> = all.iter().filter(|f| f.first_seq.is_some()).collect();
        let excess = rotated.len().saturating_sub(self.settings.keep_files);
        for f in rotated.iter().take(excess) {
            match std::fs::remove_file(&f.path) {
                Ok(()) => tracing::info!(path = %f.path.display(), "deleted the oldest audit file"),
                Err(e) => {
                    tracing::error!(error = %e, path = %f.path.display(), "cannot delete an old audit file")
                }
            }
        }
        if excess > 0 {
            if let Err(e) = sync_dir(&self.dir) {
                tracing::error!(error = %fernwart_transport::error_chain(&e), "cannot sync the audit directory");
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Makes a file's creation or rename in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("syncing the directory", dir))
}

/// The first and the last line of `content` (whole lines) that are records. Lines that are
/// not are logged: `verify` reports them.
fn first_and_last(content: &[u8], path: &Path) -> (Option<Linked>, Option<Linked>) {
    let mut first = None;
    let mut last = None;
    for (i, line) in content.split(|b| *b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        match serde_json::from_slice::<Linked>(line) {
            Ok(r) => {
                if first.is_none() {
                    first = Some(r.clone());
                }
                last = Some(r);
            }
            Err(e) => {
                tracing::error!(path = %path.display(), line = i + 1, error = %e, "a line of the audit trail is not a record; `fernwart-agent audit verify` reports the break")
            }
        }
    }
    (first, last)
}

/// `tail` if it is a whole record, valid and following `last`.
fn whole_record_after(tail: &[u8], last: Option<&Linked>) -> Option<Linked> {
    let r: Linked = serde_json::from_slice(tail).ok()?;
    let (seq, prev) = match last {
        Some(l) => (l.seq + 1, l.hash.as_str()),
        None => (r.seq, r.prev.as_str()),
    };
    (r.seq == seq && r.prev == prev && chain::hash(&r.prev, r.seq, &r.body) == r.hash).then_some(r)
}

/// The details of `audit.legacy`: the old file's size, lines and SHA-256, if there is one.
fn legacy(path: &Path) -> Option<String> {
    let mut f = File::open(path).ok()?;
    let mut h = Sha256::new();
    let (mut bytes, mut lines) = (0u64, 0u64);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(error = %e, path = %path.display(), "cannot read the old audit file");
                return None;
            }
        };
        let chunk = &buf[..n];
        h.update(chunk);
        bytes += n as u64;
        lines += chunk.iter().filter(|b| **b == b'\n').count() as u64;
    }
    let details = serde_json::json!({
        "file": LEGACY_FILE, "bytes": bytes, "lines": lines, "sha256": chain::hex(&h.finalize()),
        "note": "records of an earlier agent version, not part of this chain",
    });
    Some(details.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{verify, DIR_NAME};

    fn body(i: u64) -> Body {
        Body {
            time_ms: 1_700_000_000_000 + i as i64,
            actor: "tech".into(),
            action: "tunnel.open".into(),
            target: format!("s{i}"),
            source: "m1".into(),
            details: format!("{{\"n\":{i}}}"),
        }
    }

    fn log(data: &Path, settings: Settings) -> AuditLog {
        AuditLog::new(data, "m1", settings)
    }

    fn lines(data: &Path, name: &str) -> Vec<Linked> {
        std::fs::read_to_string(data.join(DIR_NAME).join(name))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn small() -> Settings {
        // About three records a file.
        Settings { max_file_bytes: 1000, keep_files: 2 }
    }

    #[test]
    fn the_chain_continues_after_a_reopen() {
        let data = tempfile::tempdir().unwrap();
        let a = log(data.path(), Settings::default());
        let r1 = a.append(body(1)).unwrap();
        let r2 = a.append(body(2)).unwrap();
        drop(a);

        let b = log(data.path(), Settings::default());
        let r3 = b.append(body(3)).unwrap();

        assert_eq!((r1.seq, r2.seq, r3.seq), (1, 2, 3));
        assert_eq!(r1.prev, chain::GENESIS);
        assert_eq!(r3.prev, r2.hash);
        assert_eq!(lines(data.path(), CURRENT), [r1, r2, r3]);
        assert_eq!(verify(data.path()).unwrap().records, 3);
        assert_eq!(b.failures(), 0);
        assert_eq!(b.last_seq(), Some(3));
        assert_eq!(log(tempfile::tempdir().unwrap().path(), Settings::default()).last_seq(), None);
    }

    #[test]
    fn a_torn_last_line_is_cut_recorded_and_the_chain_goes_on() {
        let data = tempfile::tempdir().unwrap();
        let a = log(data.path(), Settings::default());
        a.append(body(1)).unwrap();
        let r2 = a.append(body(2)).unwrap();
        drop(a);
        // A crash in the middle of writing record 3.
        let path = data.path().join(DIR_NAME).join(CURRENT);
        let whole = std::fs::read(&path).unwrap();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        let torn = b"{\"seq\":3,\"prev\":\"ab";
        f.write_all(torn).unwrap();
        drop(f);
        // verify tolerates (and mentions) a torn end: the agent may be writing it right now.
        let report = verify(data.path()).unwrap();
        assert_eq!(report.records, 2);
        assert!(report.to_string().contains("incomplete"), "{report}");

        let b = log(data.path(), Settings::default());
        b.open().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), whole, "the torn line is cut off");
        let r = b.append(body(3)).unwrap();

        let all = lines(data.path(), CURRENT);
        assert_eq!(all.len(), 4);
        let note = &all[2];
        assert_eq!((note.seq, note.prev.as_str()), (3, r2.hash.as_str()));
        assert_eq!(note.body.action, "audit.torn");
        let d: serde_json::Value = serde_json::from_str(&note.body.details).unwrap();
        assert_eq!(d["offset"], whole.len());
        assert_eq!(d["bytes"], torn.len());
        assert_eq!(d["continues_after"], 2);
        assert_eq!((r.seq, r.body.target.as_str()), (4, "s3"));
        assert_eq!(verify(data.path()).unwrap().records, 4);
    }

    #[test]
    fn a_last_record_missing_only_its_newline_is_kept() {
        let data = tempfile::tempdir().unwrap();
        let a = log(data.path(), Settings::default());
        a.append(body(1)).unwrap();
        let r2 = a.append(body(2)).unwrap();
        drop(a);
        let path = data.path().join(DIR_NAME).join(CURRENT);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.trim_end()).unwrap();

        let b = log(data.path(), Settings::default());
        let r3 = b.append(body(3)).unwrap();

        assert_eq!(r3.prev, r2.hash);
        assert_eq!(lines(data.path(), CURRENT).len(), 3);
        assert_eq!(verify(data.path()).unwrap().records, 3);
    }

    #[test]
    fn rotation_keeps_the_chain_and_deletes_the_oldest() {
        let data = tempfile::tempdir().unwrap();
        let a = log(data.path(), small());
        let mut all = Vec::new();
        for i in 1..=20 {
            all.push(a.append(body(i)).unwrap());
        }
        let dir = data.path().join(DIR_NAME);
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names.len(), 3, "{names:?}"); // keep_files rotated + current
        assert_eq!(names[2], CURRENT);
        for name in &names {
            let size = std::fs::metadata(dir.join(name)).unwrap().len();
            assert!(size <= 1000, "{name}: {size} bytes");
        }
        // Each rotated file is named by its first record, and the files link up.
        let mut kept = Vec::new();
        for name in &names {
            let recs = lines(data.path(), name);
            if name != CURRENT {
                assert_eq!(name, &rotated_name(recs[0].seq, 0));
            }
            kept.extend(recs);
        }
        assert_eq!(kept, all[all.len() - kept.len()..]);
        let report = verify(data.path()).unwrap();
        assert_eq!((report.records as usize, report.last_seq), (kept.len(), 20));
        assert_eq!(report.rotated_away, kept[0].seq - 1);
        assert!(report.rotated_away > 0);
        assert!(report.to_string().contains("rotated away"), "{report}");

        // Reopened: continues after record 20 in the current file.
        drop(a);
        let b = log(data.path(), small());
        assert_eq!(b.append(body(21)).unwrap().prev, all[19].hash);
        assert!(verify(data.path()).is_ok());
    }

    #[test]
    fn after_a_crash_right_after_a_rotation_the_chain_links_to_the_rotated_file() {
        let data = tempfile::tempdir().unwrap();
        let a = log(data.path(), small());
        let mut last = None;
        for i in 1..=3 {
            last = Some(a.append(body(i)).unwrap());
        }
        drop(a);
        let dir = data.path().join(DIR_NAME);
        std::fs::rename(dir.join(CURRENT), dir.join(rotated_name(1, 0))).unwrap();

        let b = log(data.path(), small());
        let r = b.append(body(4)).unwrap();

        assert_eq!((r.seq, r.prev), (4, last.unwrap().hash));
        assert_eq!(verify(data.path()).unwrap().records, 4);
    }

    #[test]
    fn write_and_open_errors_surface_and_are_recorded_once_writing_works() {
        let data = tempfile::tempdir().unwrap();
        let a = log(data.path(), Settings::default());
        a.append(body(1)).unwrap();
        // The handle can no longer write (as on a failing disk): the append says so.
        {
            let mut st = lock(&a.state);
            st.file = Some(File::open(a.current_path()).unwrap());
        }
        let e = a.append(body(2)).unwrap_err();
        assert!(matches!(e, Error::Io { op: "writing an audit record to", .. }), "{e:?}");
        assert_eq!(a.failures(), 1);
        // The directory cannot be opened: no panic, an error, counted.
        let dir = data.path().join(DIR_NAME);
        std::fs::rename(&dir, data.path().join("moved")).unwrap();
        std::fs::write(&dir, "not a directory").unwrap();
        let e = a.append(body(3)).unwrap_err();
        assert!(matches!(e, Error::Io { op: "creating the audit directory", .. }), "{e:?}");
        assert_eq!(a.failures(), 2);
        assert!(a.open().is_err());

        std::fs::remove_file(&dir).unwrap();
        std::fs::rename(data.path().join("moved"), &dir).unwrap();
        let r = a.append(body(4)).unwrap();

        let all = lines(data.path(), CURRENT);
        assert_eq!(all.len(), 3);
        assert_eq!(all[1].body.action, "audit.failed");
        let d: serde_json::Value = serde_json::from_str(&all[1].body.details).unwrap();
        assert_eq!(d["lost"], 2);
        assert!(d["last_error"].as_str().unwrap().contains("audit directory"), "{d}");
        assert_eq!((r.seq, r.body.target.as_str()), (3, "s4"));
        assert_eq!(verify(data.path()).unwrap().records, 3);
    }

    #[test]
    fn a_current_file_that_is_not_a_file_is_refused() {
        let data = tempfile::tempdir().unwrap();
        let dir = data.path().join(DIR_NAME);
        std::fs::create_dir_all(dir.join(CURRENT)).unwrap();
        let a = log(data.path(), Settings::default());
        assert!(matches!(a.append(body(1)), Err(Error::NotAFile(_))));
        assert_eq!(a.failures(), 1);
    }

    #[test]
    fn a_new_chain_next_to_an_old_file_pins_it() {
        let data = tempfile::tempdir().unwrap();
        std::fs::write(data.path().join(LEGACY_FILE), "{\"action\":\"grant\"}\n{}\n").unwrap();
        let a = log(data.path(), Settings::default());
        a.append(body(1)).unwrap();
        drop(a);
        log(data.path(), Settings::default()).append(body(2)).unwrap();

        let all = lines(data.path(), CURRENT);
        let actions: Vec<&str> = all.iter().map(|r| r.body.action.as_str()).collect();
        assert_eq!(actions, ["audit.legacy", "tunnel.open", "tunnel.open"]);
        let d: serde_json::Value = serde_json::from_str(&all[0].body.details).unwrap();
        assert_eq!((d["bytes"].as_u64(), d["lines"].as_u64()), (Some(22), Some(2)));
        assert_eq!(d["sha256"].as_str().map(str::len), Some(64));
    }
}
