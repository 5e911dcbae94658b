//! Reading the trail back, for `fernwart-agent audit verify` and `audit list`: file reads
//! only, so both work on the gateway with or without the agent running and the server
//! reachable.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use fernwart_proto::chain::{self, Break, Linked, GENESIS};

use super::{files, shown, LEGACY_FILE};

/// Why the trail could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("the agent data directory {} does not exist", .0.display())]
    NoDataDir(PathBuf),
    #[error("{op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The trail does not verify.
    #[error("agent audit trail broken: {reason} (at {file} line {line})")]
    Broken {
        reason: String,
        /// The break as [`chain::verify`] names it; `None` for a line that is not a record.
        brk: Option<Break>,
        file: String,
        line: usize,
    },
}

/// All the trail's files, read.
#[derive(Debug, Default)]
pub struct Trail {
    /// The files, in chain order, as shown in messages (relative to the data directory).
    pub files: Vec<String>,
    /// The seq the oldest file's name gives (a rotated file), else `None`.
    pub named_first_seq: Option<u64>,
    pub records: Vec<Linked>,
    /// Where each record is: (index in `files`, line from 1).
    pub places: Vec<(usize, usize)>,
    /// Lines that are not records: (file, line, why).
    pub bad_lines: Vec<(usize, usize, String)>,
    /// Bytes after the last newline of the last file (a record being written, or torn).
    pub torn_tail: Option<u64>,
    /// `DIR/audit.jsonl` of an earlier version is there.
    pub legacy: bool,
}

/// Reads every file of the trail of the agent data directory `data`. A data directory
/// without a trail gives an empty one.
pub fn read(data: &Path) -> Result<Trail, ReadError> {
    if !data.is_dir() {
        return Err(ReadError::NoDataDir(data.to_owned()));
    }
    let mut trail = Trail { legacy: data.join(LEGACY_FILE).is_file(), ..Trail::default() };
    let dir = super::dir(data);
    if !dir.is_dir() {
        return Ok(trail);
    }
    let all = files(&dir).map_err(|source| ReadError::Io { op: "listing", path: dir, source })?;
    trail.named_first_seq = all.first().and_then(|f| f.first_seq);
    let count = all.len();
    for (fi, f) in all.iter().enumerate() {
        let content = std::fs::read(&f.path).map_err(|source| ReadError::Io {
            op: "reading",
            path: f.path.clone(),
            source,
        })?;
        trail.files.push(shown(data, &f.path));
        let mut lines: Vec<&[u8]> = content.split(|b| *b == b'\n').collect();
        // After the last newline: nothing, or a line still being written (or torn by a
        // crash), which only the file being written may have.
        let tail = lines.pop().unwrap_or_default();
        if !tail.is_empty() {
            if fi + 1 == count && f.first_seq.is_none() {
                trail.torn_tail = Some(tail.len() as u64);
            } else {
                lines.push(tail);
            }
        }
        for (li, line) in lines.iter().enumerate() {
            match serde_json::from_slice::<Linked>(line) {
                Ok(r) => {
                    trail.records.push(r);
                    trail.places.push((fi, li + 1));
                }
                Err(e) => trail.bad_lines.push((fi, li + 1, e.to_string())),
            }
        }
    }
    Ok(trail)
}

/// What a trail that verifies holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub dir: String,
    pub records: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub files: usize,
    /// Records before the oldest file kept (deleted by rotation).
    pub rotated_away: u64,
    /// The file ending in an incomplete line, and that line's length.
    pub torn_tail: Option<(String, u64)>,
    pub legacy: bool,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.records == 0 {
            write!(f, "agent audit trail: no records in {}", self.dir)?;
        } else {
            write!(
                f,
                "agent audit trail verified: {} records (seq {}..{}), {} file{}",
                self.records,
                self.first_seq,
                self.last_seq,
                self.files,
                if self.files == 1 { "" } else { "s" }
            )?;
            if self.rotated_away > 0 {
                write!(f, "; {} earlier records were rotated away", self.rotated_away)?;
            }
        }
        if let Some((file, bytes)) = &self.torn_tail {
            write!(f, "\nnote: the last line of {file} is incomplete ({bytes} bytes): a record being written, or torn by a crash (the agent cuts it off when it next starts)")?;
        }
        if self.legacy {
            write!(
                f,
                "\nnote: {LEGACY_FILE} of an earlier agent version is not part of the chain"
            )?;
        }
        Ok(())
    }
}

/// Verifies the whole trail with [`chain::verify`], across its files: from record 1 (and
/// [`GENESIS`]) when no file was rotated, else from the seq the oldest rotated file's name
/// gives, linked to what its first record names as its predecessor. A break is
/// [`ReadError::Broken`], naming the record and where the walk stopped.
pub fn verify(data: &Path) -> Result<Report, ReadError> {
    let trail = read(data)?;
    let first_seq = trail.named_first_seq.unwrap_or(1);
    let first_prev = match trail.records.first() {
        Some(r) if first_seq > 1 => r.prev.clone(),
        _ => GENESIS.to_owned(),
    };
    let stop = walk(&trail.records, first_seq, &first_prev);
    let stop_place = trail.places.get(stop).copied();
    // A line that is not a record, before where the chain walk stopped, is the first break.
    // (Lines are read in order: the first bad one is the earliest.)
    let first_bad = trail.bad_lines.first().filter(|(fi, line, _)| match stop_place {
        Some(place) => (*fi, *line) < place,
        None => true,
    });
    if let Some((fi, line, why)) = first_bad {
        let before = trail.places.iter().filter(|p| **p < (*fi, *line)).count();
        let after = before
            .checked_sub(1)
            .and_then(|i| trail.records.get(i))
            .map_or("the start".to_owned(), |r| format!("record {}", r.seq));
        return Err(ReadError::Broken {
            reason: format!("a line after {after} is not an audit record ({why})"),
            brk: None,
            file: trail.files.get(*fi).cloned().unwrap_or_default(),
            line: *line,
        });
    }
    if let Err(brk) = chain::verify(&trail.records, first_seq, &first_prev, &[]) {
        let (fi, line) = stop_place.unwrap_or_default();
        return Err(ReadError::Broken {
            reason: brk.to_string(),
            brk: Some(brk),
            file: trail.files.get(fi).cloned().unwrap_or_default(),
            line,
        });
    }
    let torn_tail = trail.torn_tail.map(|n| (trail.files.last().cloned().unwrap_or_default(), n));
    Ok(Report {
        dir: shown(data, &super::dir(data)),
        records: trail.records.len() as u64,
        first_seq: trail.records.first().map_or(0, |r| r.seq),
        last_seq: trail.records.last().map_or(0, |r| r.seq),
        files: trail.files.len(),
        rotated_away: trail.records.first().map_or(0, |r| r.seq.saturating_sub(1)),
        torn_tail,
        legacy: trail.legacy,
    })
}

/// The index of the first record the chain walk does not accept (`records.len()` if none):
/// where [`chain::verify`] stops.
fn walk(records: &[Linked], first_seq: u64, first_prev: &str) -> usize {
    let mut prev = first_prev;
    for (i, r) in records.iter().enumerate() {
        let seq_ok = first_seq.checked_add(i as u64) == Some(r.seq);
        if !seq_ok || r.prev != prev || chain::hash(&r.prev, r.seq, &r.body) != r.hash {
            return i;
        }
        prev = &r.hash;
    }
    records.len()
}

/// Which records `audit list` shows.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Records at or after this time (ms since the Unix epoch).
    pub since_ms: Option<i64>,
    /// Records about this session.
    pub session: Option<String>,
    /// The last N records that match.
    pub limit: Option<usize>,
}

impl Filter {
    fn matches(&self, r: &Linked) -> bool {
        if self.since_ms.is_some_and(|t| r.body.time_ms < t) {
            return false;
        }
        match &self.session {
            Some(s) => r.body.target == *s,
            None => true,
        }
    }
}

/// The records that match `filter`, in chain order, and warnings about lines that are not
/// records. Does not verify the chain (`verify` does).
pub fn list(data: &Path, filter: &Filter) -> Result<(Vec<Linked>, Vec<String>), ReadError> {
    let trail = read(data)?;
    let mut warnings: Vec<String> = trail
        .bad_lines
        .iter()
        .map(|(fi, line, why)| {
            let file = trail.files.get(*fi).map_or("", String::as_str);
            format!("{file} line {line} is not an audit record, skipped ({why})")
        })
        .collect();
    if let (Some(n), Some(file)) = (trail.torn_tail, trail.files.last()) {
        warnings.push(format!("the last line of {file} is incomplete ({n} bytes), skipped"));
    }
    let mut records: Vec<Linked> =
        trail.records.into_iter().filter(|r| filter.matches(r)).collect();
    if let Some(n) = filter.limit {
        let skip = records.len().saturating_sub(n);
        records.drain(..skip);
    }
    Ok((records, warnings))
}

/// `--since`: an RFC 3339 time, as ms since the Unix epoch.
pub fn parse_since(s: &str) -> Result<i64, String> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| {
            format!("--since {s:?} is not an RFC 3339 time ({e}), e.g. 2025-01-31T08:00:00Z")
        })?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000)
        .map_err(|_| format!("--since {s:?} is out of range"))
}

/// One record on one line, for people: seq, time (UTC), action, actor, session, details.
pub fn human_line(r: &Linked) -> String {
    let time =
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(r.body.time_ms) * 1_000_000)
            .ok()
            .and_then(|t| {
                t.format(time::macros::format_description!(
                    "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
                ))
                .ok()
            })
            .unwrap_or_else(|| r.body.time_ms.to_string());
    let session = if r.body.target.is_empty() { "-" } else { r.body.target.as_str() };
    format!(
        "{:>6}  {time}  {:<14} {:<12} {:<16} {}",
        r.seq, r.body.action, r.body.actor, session, r.body.details
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{dir, rotated_name, AuditLog, Settings, CURRENT};
    use fernwart_proto::chain::Body;

    fn body(i: u64, session: &str) -> Body {
        Body {
            time_ms: 1_700_000_000_000 + i as i64 * 1000,
            actor: "tech".into(),
            action: "tunnel.close".into(),
            target: session.into(),
            source: "m1".into(),
            details: format!("{{\"bytes_to_target\":{i}}}"),
        }
    }

    /// A trail of `n` records over several files (about three records a file, all kept).
    fn trail(n: u64) -> tempfile::TempDir {
        let data = tempfile::tempdir().unwrap();
        let log =
            AuditLog::new(data.path(), "m1", Settings { max_file_bytes: 1000, keep_files: 100 });
        for i in 1..=n {
            log.append(body(i, if i % 2 == 0 { "even" } else { "odd" })).unwrap();
        }
        data
    }

    /// The trail's lines, by file name.
    fn lines(data: &Path) -> Vec<(String, Vec<String>)> {
        let mut names: Vec<String> = std::fs::read_dir(dir(data))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort(); // audit-... before current.jsonl
        names
            .into_iter()
            .map(|n| {
                let text = std::fs::read_to_string(dir(data).join(&n)).unwrap();
                (n, text.lines().map(str::to_owned).collect())
            })
            .collect()
    }

    fn write(data: &Path, name: &str, lines: &[String]) {
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(dir(data).join(name), text).unwrap();
    }

    fn broken(data: &Path) -> (Option<Break>, String, usize, String) {
        match verify(data) {
            Err(e @ ReadError::Broken { .. }) => {
                let msg = e.to_string();
                let ReadError::Broken { brk, file, line, .. } = e else { unreachable!() };
                (brk, file, line, msg)
            }
            other => panic!("expected a break, got {other:?}"),
        }
    }

    #[test]
    fn an_untouched_trail_over_several_files_verifies() {
        let data = trail(10);
        let files = lines(data.path());
        assert!(files.len() >= 3, "{files:?}");

        let r = verify(data.path()).unwrap();

        assert_eq!((r.records, r.first_seq, r.last_seq, r.files), (10, 1, 10, files.len()));
        assert_eq!(r.rotated_away, 0);
        let text = r.to_string();
        assert!(text.starts_with("agent audit trail verified: 10 records (seq 1..10), "), "{text}");
    }

    #[test]
    fn no_trail_or_no_directory() {
        let data = tempfile::tempdir().unwrap();
        let r = verify(data.path()).unwrap();
        assert_eq!(r.records, 0);
        assert!(r.to_string().contains("no records"), "{r}");
        let missing = data.path().join("nope");
        assert!(matches!(verify(&missing), Err(ReadError::NoDataDir(_))));
        assert!(list(&missing, &Filter::default()).is_err());
    }

    #[test]
    fn a_changed_record_is_named_with_its_file() {
        let data = trail(10);
        let files = lines(data.path());
        let (name, mut ls) = files[1].clone();
        let mut v: serde_json::Value = serde_json::from_str(&ls[1]).unwrap();
        let seq = v["seq"].as_u64().unwrap();
        v["details"] = "{\"bytes_to_target\":999999}".into();
        ls[1] = v.to_string();
        write(data.path(), &name, &ls);

        let (brk, file, line, msg) = broken(data.path());

        assert_eq!(brk, Some(Break::Changed { seq }));
        assert_eq!((file.as_str(), line), (format!("audit/{name}").as_str(), 2));
        assert!(msg.contains(&format!("record {seq} was changed")), "{msg}");
    }

    #[test]
    fn a_removed_record_is_named_even_across_files() {
        // The first line of a rotated file (the link between two files).
        let data = trail(10);
        let (name, mut ls) = lines(data.path())[1].clone();
        let gone: Linked = serde_json::from_str(&ls.remove(0)).unwrap();
        write(data.path(), &name, &ls);

        let (brk, file, _, _) = broken(data.path());

        assert_eq!(brk, Some(Break::Removed { seq: gone.seq }));
        assert_eq!(file, format!("audit/{name}"));
    }

    #[test]
    fn a_whole_file_removed_shows() {
        let data = trail(10);
        let files = lines(data.path());
        let (name, ls) = &files[1];
        let first: Linked = serde_json::from_str(&ls[0]).unwrap();
        std::fs::remove_file(dir(data.path()).join(name)).unwrap();

        assert_eq!(broken(data.path()).0, Some(Break::Removed { seq: first.seq }));
    }

    #[test]
    fn the_oldest_file_removed_is_rotation_unless_its_first_line_is_missing() {
        let data = trail(10);
        let files = lines(data.path());
        std::fs::remove_file(dir(data.path()).join(&files[0].0)).unwrap();
        let r = verify(data.path()).unwrap();
        let first: Linked = serde_json::from_str(&files[1].1[0]).unwrap();
        assert_eq!((r.first_seq, r.rotated_away), (first.seq, first.seq - 1));

        // Its name says where it starts: a missing first line is a removal.
        let (name, mut ls) = files[1].clone();
        ls.remove(0);
        write(data.path(), &name, &ls);
        assert_eq!(broken(data.path()).0, Some(Break::Removed { seq: first.seq }));
    }

    #[test]
    fn a_trail_never_rotated_starts_at_record_one() {
        let data = tempfile::tempdir().unwrap();
        let log = AuditLog::new(data.path(), "m1", Settings::default());
        for i in 1..=4 {
            log.append(body(i, "s")).unwrap();
        }
        let (_, mut ls) = lines(data.path())[0].clone();
        ls.remove(0);
        write(data.path(), CURRENT, &ls);
        assert_eq!(broken(data.path()).0, Some(Break::Removed { seq: 1 }));
    }

    #[test]
    fn moved_and_inserted_lines_are_named() {
        // Two lines swapped across a file boundary.
        let data = trail(10);
        let files = lines(data.path());
        let (a, mut la) = files[0].clone();
        let (b, mut lb) = files[1].clone();
        let last_a = la.pop().unwrap();
        let first_b = lb.remove(0);
        la.push(first_b.clone());
        lb.insert(0, last_a.clone());
        write(data.path(), &a, &la);
        write(data.path(), &b, &lb);
        let moved: Linked = serde_json::from_str(&last_a).unwrap();
        let (brk, file, line, _) = broken(data.path());
        assert_eq!(brk, Some(Break::Reordered { seq: moved.seq }));
        assert_eq!((file, line), (format!("audit/{a}"), la.len()));

        // A record copied from elsewhere in the chain into another place.
        let data = trail(10);
        let files = lines(data.path());
        let (name, mut ls) = files[2].clone();
        ls.insert(1, files[0].1[0].clone());
        write(data.path(), &name, &ls);
        assert!(matches!(broken(data.path()).0, Some(Break::Reordered { .. })));

        // A forged record with a proper link, slipped in after the first of a file.
        let data = trail(10);
        let files = lines(data.path());
        let (name, mut ls) = files[1].clone();
        let after: Linked = serde_json::from_str(&ls[0]).unwrap();
        let fake = chain::link(Some((after.seq, &after.hash)), body(99, "forged"));
        ls.insert(1, serde_json::to_string(&fake).unwrap());
        write(data.path(), &name, &ls);
        assert_eq!(broken(data.path()).0, Some(Break::Inserted { seq: after.seq + 1 }));
    }

    #[test]
    fn a_line_that_is_not_a_record_is_a_break_but_list_skips_it() {
        let data = trail(4);
        let files = lines(data.path());
        let (name, mut ls) = files[0].clone();
        ls[1] = ls[1][..40].to_owned();
        write(data.path(), &name, &ls);

        let (brk, file, line, msg) = broken(data.path());
        assert_eq!((brk, file, line), (None, format!("audit/{name}"), 2));
        assert!(msg.contains("after record 1 is not an audit record"), "{msg}");

        let (records, warnings) = list(data.path(), &Filter::default()).unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
    }

    #[test]
    fn list_filters_by_session_time_and_count() {
        let data = trail(10);
        let all = |f: Filter| -> Vec<u64> {
            list(data.path(), &f).unwrap().0.iter().map(|r| r.seq).collect()
        };
        assert_eq!(all(Filter::default()), (1..=10).collect::<Vec<_>>());
        assert_eq!(
            all(Filter { session: Some("even".into()), ..Filter::default() }),
            [2, 4, 6, 8, 10]
        );
        assert_eq!(all(Filter { limit: Some(3), ..Filter::default() }), [8, 9, 10]);
        let since = parse_since("2023-11-14T22:13:27Z").unwrap(); // 1_700_000_007_000
        assert_eq!(since, 1_700_000_007_000);
        assert_eq!(
            all(Filter { since_ms: Some(since), session: Some("odd".into()), limit: Some(5) }),
            [7, 9]
        );
        assert!(parse_since("yesterday").is_err());
    }

    #[test]
    fn a_human_line_has_the_time_in_utc() {
        let r = chain::link(None, body(1, "s1"));
        let l = human_line(&r);
        assert!(l.contains("2023-11-14T22:13:21.000Z"), "{l}");
        assert!(l.contains("tunnel.close") && l.contains("s1"), "{l}");
    }

    #[test]
    fn rotated_names_are_checked_against_the_first_record() {
        // The oldest file renamed to claim an earlier start: record(s) before are missing.
        let data = trail(10);
        let files = lines(data.path());
        std::fs::remove_file(dir(data.path()).join(&files[0].0)).unwrap();
        let (name, _) = &files[1];
        std::fs::rename(dir(data.path()).join(name), dir(data.path()).join(rotated_name(1, 0)))
            .unwrap();
        assert_eq!(broken(data.path()).0, Some(Break::Removed { seq: 1 }));
    }
}
