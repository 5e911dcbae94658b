//! Handing the trail to the server (agent link version 2), so that the operator can compare
//! the machine's copy with the server's.
//!
//! When the link starts the server says up to which record it holds the machine's trail
//! (`audit_ack`); the agent sends the records after it in batches ([`read_batch`]), one at a
//! time, each answered `audit_ack` (stored), `audit_retry` (send it again later) or
//! `audit_refused` (it does not link up to what the server holds: nothing more on this link,
//! the operator investigates; the records stay here). [`Uploader`] decides when a batch is
//! due and from where; it does no I/O.
//!
//! A trail behind the server's copy (the server holds records after the last one written
//! here: the trail was deleted or restored from a copy) sends its last record, once per value:
//! the server compares it with its own copy of that place and raises an alert if they differ.

use std::{
    io,
    path::Path,
    time::{Duration, Instant},
};

use fernwart_proto::chain::Linked;

use super::{files, ReadError};

/// A batch the server has not answered after this long is sent again.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// When to send which records.
#[derive(Debug, Default)]
pub struct Uploader {
    /// The last place the server holds; `None` until it said.
    held: Option<u64>,
    /// When the batch waiting for its answer was sent.
    in_flight: Option<Instant>,
    /// Not before this (`audit_retry`).
    not_before: Option<Instant>,
    /// The server refused a batch, or a record cannot be sent: nothing more on this link.
    stopped: bool,
    /// The highest place sent on this link.
    sent_through: u64,
    /// The last record written when a read found nothing to send: read again only once there
    /// are more.
    idle_at: Option<u64>,
}

impl Uploader {
    /// Where the next batch starts, if one is due now; `local_last` is the place of the last
    /// record written here.
    pub fn due(&self, local_last: Option<u64>, now: Instant) -> Option<u64> {
        let held = self.held?;
        let local = local_last?;
        if self.stopped
            || self.in_flight.is_some_and(|t| now.saturating_duration_since(t) < ACK_TIMEOUT)
            || self.not_before.is_some_and(|t| now < t)
            || self.idle_at == Some(local)
        {
            return None;
        }
        if local > held {
            return Some(held + 1);
        }
        // Behind the server's copy: the last record here, for it to compare, once.
        (local < held && local > self.sent_through).then_some(local)
    }

    /// A batch up to place `last` was sent.
    pub fn sent(&mut self, last: u64, now: Instant) {
        self.in_flight = Some(now);
        self.sent_through = self.sent_through.max(last);
    }

    /// A read for the records due found none (the last ones are being written, or were
    /// removed): wait for a record after `local_last`.
    pub fn nothing_found(&mut self, local_last: Option<u64>) {
        self.idle_at = local_last;
    }

    /// `audit_ack`: the server holds up to `seq`.
    pub fn on_ack(&mut self, seq: u64) {
        self.held = Some(seq);
        self.in_flight = None;
        self.idle_at = None;
    }

    /// `audit_retry`: the batch was not taken; again after `after`.
    pub fn on_retry(&mut self, after: Duration, now: Instant) {
        self.in_flight = None;
        self.not_before = Some(now + after);
    }

    /// `audit_refused`, or a record too large to send: nothing more on this link.
    pub fn stop(&mut self) {
        self.in_flight = None;
        self.stopped = true;
    }
}

/// The records from place `from` on, in the trail's order, at most `max_records` and (each as
/// JSON, plus a comma) `max_bytes`, though at least one. Reads only the files that can hold
/// them; lines that are not records, and a last line still being written, are left out (the
/// server then finds the gap and says so).
pub fn read_batch(
    data: &Path,
    from: u64,
    max_records: usize,
    max_bytes: usize,
) -> Result<Vec<Linked>, ReadError> {
    let dir = super::dir(data);
    let all = match files(&dir) {
        Ok(all) => all,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(ReadError::Io { op: "listing", path: dir, source }),
    };
    // The newest rotated file starting at or before `from` holds it; older ones cannot.
    let start = all.iter().rposition(|f| f.first_seq.is_some_and(|s| s <= from)).unwrap_or(0);
    let mut out = Vec::new();
    let mut bytes = 0;
    for f in &all[start..] {
        let content = std::fs::read(&f.path).map_err(|source| ReadError::Io {
            op: "reading",
            path: f.path.clone(),
            source,
        })?;
        // Whole lines only: the agent may be writing the last one right now.
        let whole = content.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        for line in content[..whole].split(|b| *b == b'\n') {
            let Ok(r) = serde_json::from_slice::<Linked>(line) else { continue };
            if r.seq < from {
                continue;
            }
            let len = serde_json::to_vec(&r).map_or(usize::MAX, |v| v.len()).saturating_add(1);
            if out.len() >= max_records || (!out.is_empty() && bytes + len > max_bytes) {
                return Ok(out);
            }
            bytes += len;
            out.push(r);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditLog, Settings};
    use fernwart_proto::chain::Body;

    fn body(i: u64, details_len: usize) -> Body {
        Body {
            time_ms: 1_700_000_000_000 + i as i64,
            actor: "tech1".into(),
            action: "tunnel.close".into(),
            target: "s1".into(),
            source: "m1".into(),
            details: format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(details_len)),
        }
    }

    fn trail(n: u64, settings: Settings) -> (tempfile::TempDir, Vec<Linked>) {
        let data = tempfile::tempdir().unwrap();
        let log = AuditLog::new(data.path(), "m1", settings);
        let all = (1..=n).map(|i| log.append(body(i, 10)).unwrap()).collect();
        (data, all)
    }

    fn seqs(v: &[Linked]) -> Vec<u64> {
        v.iter().map(|r| r.seq).collect()
    }

    #[test]
    fn a_batch_starts_where_asked_across_rotated_files_and_keeps_to_its_limits() {
        let (data, all) = trail(30, Settings { max_file_bytes: 1000, keep_files: 100 });
        assert!(std::fs::read_dir(super::super::dir(data.path())).unwrap().count() > 5);

        let b = read_batch(data.path(), 11, 5, usize::MAX).unwrap();
        assert_eq!(seqs(&b), [11, 12, 13, 14, 15]);
        assert_eq!(b[0], all[10], "exactly as stored");
        assert_eq!(seqs(&read_batch(data.path(), 28, 100, usize::MAX).unwrap()), [28, 29, 30]);
        assert!(read_batch(data.path(), 31, 100, usize::MAX).unwrap().is_empty());
        // Bytes: each record is about 250 bytes as JSON.
        let b = read_batch(data.path(), 1, 100, 600).unwrap();
        assert_eq!(seqs(&b), [1, 2]);
        // A record larger than the budget still goes, alone.
        assert_eq!(seqs(&read_batch(data.path(), 1, 100, 10).unwrap()), [1]);
    }

    #[test]
    fn rotated_away_records_are_not_there_and_no_trail_is_no_records() {
        let (data, _) = trail(30, Settings { max_file_bytes: 1000, keep_files: 2 });
        let b = read_batch(data.path(), 1, 100, usize::MAX).unwrap();
        assert!(b[0].seq > 1, "{:?}", seqs(&b));
        assert_eq!(b.last().map(|r| r.seq), Some(30));
        let empty = tempfile::tempdir().unwrap();
        assert!(read_batch(empty.path(), 1, 100, usize::MAX).unwrap().is_empty());
    }

    #[test]
    fn a_line_being_written_and_lines_that_are_not_records_are_left_out() {
        let (data, _) = trail(3, Settings::default());
        let path = super::super::dir(data.path()).join(super::super::CURRENT);
        let mut text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        text = format!("{}\nnot a record\n{}\n{}", lines[0], lines[2], &lines[1][..30]);
        std::fs::write(&path, text).unwrap();
        assert_eq!(seqs(&read_batch(data.path(), 1, 100, usize::MAX).unwrap()), [1, 3]);
    }

    #[test]
    fn batches_follow_the_servers_answers() {
        let t0 = Instant::now();
        let mut u = Uploader::default();
        assert_eq!(u.due(Some(5), t0), None, "nothing before the server said what it holds");
        u.on_ack(2);
        assert_eq!(u.due(Some(5), t0), Some(3));
        u.sent(5, t0);
        assert_eq!(u.due(Some(6), t0), None, "one batch at a time");
        // No answer for too long: sent again.
        assert_eq!(u.due(Some(6), t0 + ACK_TIMEOUT), Some(3));
        u.on_ack(5);
        assert_eq!(u.due(Some(5), t0), None, "all sent");
        assert_eq!(u.due(Some(6), t0), Some(6));
        u.sent(6, t0);
        u.on_retry(Duration::from_secs(2), t0);
        assert_eq!(u.due(Some(6), t0 + Duration::from_secs(1)), None);
        assert_eq!(u.due(Some(6), t0 + Duration::from_secs(2)), Some(6));
        // A read that found nothing: only again once there is a new record.
        u.nothing_found(Some(6));
        assert_eq!(u.due(Some(6), t0 + Duration::from_secs(3)), None);
        assert_eq!(u.due(Some(7), t0 + Duration::from_secs(3)), Some(6));
        u.stop();
        assert_eq!(u.due(Some(9), t0 + Duration::from_secs(9)), None, "refused: nothing more");
    }

    #[test]
    fn a_trail_behind_the_servers_copy_sends_its_last_record_once_each() {
        let t0 = Instant::now();
        let mut u = Uploader::default();
        u.on_ack(100);
        assert_eq!(u.due(Some(4), t0), Some(4));
        u.sent(4, t0);
        u.on_ack(100);
        assert_eq!(u.due(Some(4), t0), None);
        assert_eq!(u.due(Some(5), t0), Some(5));
        assert_eq!(u.due(None, t0), None);
    }
}
