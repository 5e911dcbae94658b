//! The agents' own records as the server collects them (agent link version 2): the checks a
//! batch passes before anything of it is stored, and how fast one machine's records are
//! taken. Free of I/O: the store runs [`check`] inside the transaction that stores the batch,
//! against the records it holds at that moment.
//!
//! A batch is stored only whole, and only if it continues what the server holds of that
//! machine: its first new record follows the last one held (`seq` + 1, `prev` = its hash) and
//! every record's hash matches its contents ([`chain::verify`]). Records the server holds
//! already (a batch sent again after a lost acknowledgement) must be the very same records.
//! On first contact a trail that starts after record 1 (its beginning was rotated away at the
//! agent before any server collected it) is taken as the start, with a server record saying
//! so. Anything else is refused: nothing of the batch is stored, the server's trail gets an
//! `alert.agent_chain` naming the break, and the agent keeps its records for the operator.

use std::time::{Duration, Instant};

use fernwart_proto::{
    chain::{self, Break, Linked},
    AUDIT_BATCH_MAX_RECORDS,
};

/// The most records the server keeps of one machine. Beyond, the oldest tenth is deleted,
/// with an `agent.audit_pruned` record in the server's trail.
pub const KEEP_PER_MACHINE: u64 = 1_000_000;
/// The longest `actor`, `action`, `target` or `source` of a record, in bytes.
pub const MAX_FIELD_BYTES: usize = 1024;
/// The longest `details` of a record, in bytes.
pub const MAX_DETAILS_BYTES: usize = 16 * 1024;
/// Records taken from one machine: this many at once ...
pub const BURST: u64 = 20_000;
/// ... then this many a second (a batch beyond is answered `audit_retry`).
pub const PER_SECOND: u64 = 100;

/// Why a batch was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The break, as [`chain::verify`] names it; `None` for a record that is malformed.
    pub brk: Option<Break>,
    /// What the alert says.
    pub reason: String,
}

impl Refusal {
    fn malformed(reason: String) -> Self {
        Self { brk: None, reason }
    }

    fn broken(brk: Break, reason: Option<String>) -> Self {
        Self { reason: reason.unwrap_or_else(|| brk.to_string()), brk: Some(brk) }
    }

    /// The break's kind (`changed`, `removed`, ...) or `malformed`, for the alert's details.
    pub fn kind(&self) -> &'static str {
        match &self.brk {
            None => "malformed",
            Some(Break::Changed { .. }) => "changed",
            Some(Break::Removed { .. }) => "removed",
            Some(Break::Inserted { .. }) => "inserted",
            Some(Break::Reordered { .. }) => "moved",
            Some(Break::Truncated { .. }) => "truncated",
            Some(Break::Rewritten { .. }) => "rewritten",
        }
    }

    /// The record the break names.
    pub fn seq(&self) -> Option<u64> {
        match self.brk.as_ref()? {
            Break::Changed { seq }
            | Break::Removed { seq }
            | Break::Inserted { seq }
            | Break::Reordered { seq }
            | Break::Rewritten { seq } => Some(*seq),
            Break::Truncated { from, .. } => Some(*from),
        }
    }
}

/// What to store of a batch that passed [`check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The records at the start of the batch the server holds already (the same ones):
    /// skipped.
    pub known: usize,
    /// The batch is the first the server holds of the machine and starts after record 1:
    /// its first record's place.
    pub starts_at: Option<u64>,
}

/// Checks a batch against what the server holds of its machine: `last` is the last record
/// held (place, hash), `held` the hashes held at the places the batch starts with (places the
/// server no longer holds are missing from it).
pub fn check(
    last: Option<(u64, &str)>,
    held: &[(u64, String)],
    records: &[Linked],
) -> Result<Plan, Refusal> {
    if records.len() > AUDIT_BATCH_MAX_RECORDS {
        return Err(Refusal::malformed(format!(
            "a batch of {} records (at most {AUDIT_BATCH_MAX_RECORDS})",
            records.len()
        )));
    }
    for r in records {
        well_formed(r).map_err(|e| Refusal::malformed(format!("record {}: {e}", r.seq)))?;
    }
    let Some(first) = records.first() else {
        return Ok(Plan { known: 0, starts_at: None });
    };
    // The batch holds together on its own: every record in its place, linked, unchanged.
    chain::verify(records, first.seq, &first.prev, &[]).map_err(|b| Refusal::broken(b, None))?;
    let Some((last_seq, last_hash)) = last else {
        if first.seq == 1 {
            chain::verify(records, 1, chain::GENESIS, &[]).map_err(|b| Refusal::broken(b, None))?;
            return Ok(Plan { known: 0, starts_at: None });
        }
        return Ok(Plan { known: 0, starts_at: Some(first.seq) });
    };
    let known = records.iter().take_while(|r| r.seq <= last_seq).count();
    for r in &records[..known] {
        match held.iter().find(|(s, _)| *s == r.seq) {
            Some((_, h)) if *h != r.hash => {
                let reason = format!(
                    "record {} differs from the copy the server collected earlier (changed at the agent after it was collected, or its trail began again)",
                    r.seq
                );
                return Err(Refusal::broken(Break::Changed { seq: r.seq }, Some(reason)));
            }
            // The same record; or one the server no longer holds (pruned) or never held
            // (before the start it took): nothing to compare with.
            _ => {}
        }
    }
    let rest = &records[known..];
    let Some(next) = rest.first() else {
        return Ok(Plan { known, starts_at: None });
    };
    let expected = last_seq + 1;
    if next.seq > expected {
        let reason = format!(
            "the agent sent record {} next, the server holds up to record {last_seq}: records {expected} to {} are missing at the agent (removed, or rotated away before the server collected them)",
            next.seq,
            next.seq - 1
        );
        return Err(Refusal::broken(Break::Removed { seq: expected }, Some(reason)));
    }
    if let Err(b) = chain::verify(rest, expected, last_hash, &[]) {
        let reason = matches!(b, Break::Inserted { seq } if seq == expected).then(|| {
            format!(
                "record {expected} does not link to record {last_seq} as the server collected it: the agent's records up to {last_seq} were rewritten after they were collected, or record {expected} was inserted"
            )
        });
        return Err(Refusal::broken(b, reason));
    }
    Ok(Plan { known, starts_at: None })
}

/// Sizes and shapes a record must have before anything else is looked at.
fn well_formed(r: &Linked) -> Result<(), String> {
    if r.seq == 0 || i64::try_from(r.seq).is_err() {
        return Err("its place is out of range".into());
    }
    for (name, h) in [("hash", &r.hash), ("prev", &r.prev)] {
        if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(format!("its {name} is not 64 lower-case hex digits"));
        }
    }
    let b = &r.body;
    for (name, v) in
        [("actor", &b.actor), ("action", &b.action), ("target", &b.target), ("source", &b.source)]
    {
        if v.len() > MAX_FIELD_BYTES {
            return Err(format!("its {name} has {} bytes (at most {MAX_FIELD_BYTES})", v.len()));
        }
    }
    if b.details.len() > MAX_DETAILS_BYTES {
        return Err(format!(
            "its details have {} bytes (at most {MAX_DETAILS_BYTES})",
            b.details.len()
        ));
    }
    Ok(())
}

/// How many records one machine may still hand in: [`BURST`] at once, refilled at
/// [`PER_SECOND`].
#[derive(Debug, Clone)]
pub struct Budget {
    tokens: u64,
    /// When the tokens were last refilled.
    since: Instant,
}

impl Budget {
    const PER_TOKEN: Duration = Duration::from_millis(1000 / PER_SECOND);

    pub fn new(now: Instant) -> Self {
        Self { tokens: BURST, since: now }
    }

    /// Takes `n` records' worth, or says how long until there are that many.
    pub fn take(&mut self, n: u64, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.since);
        let added =
            u64::try_from(elapsed.as_millis() / Self::PER_TOKEN.as_millis()).unwrap_or(u64::MAX);
        if added > 0 {
            self.tokens = self.tokens.saturating_add(added);
            // Keep the fraction of a token already earned, unless the bucket is full.
            self.since = if self.tokens >= BURST {
                now
            } else {
                self.since + Self::PER_TOKEN * u32::try_from(added).unwrap_or(u32::MAX)
            };
            self.tokens = self.tokens.min(BURST);
        }
        if self.tokens >= n {
            self.tokens -= n;
            return Ok(());
        }
        let missing = u32::try_from(n - self.tokens).unwrap_or(u32::MAX);
        Err(Self::PER_TOKEN * missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fernwart_proto::chain::Body;

    fn body(i: u64) -> Body {
        Body {
            time_ms: 1_700_000_000_000 + i as i64,
            actor: "tech1".into(),
            action: "tunnel.open".into(),
            target: format!("s{i}"),
            source: "m1".into(),
            details: format!("{{\"n\":{i}}}"),
        }
    }

    fn trail(n: u64) -> Vec<Linked> {
        let mut out: Vec<Linked> = Vec::new();
        for i in 1..=n {
            let last = out.last().map(|r| (r.seq, r.hash.as_str()));
            out.push(chain::link(last, body(i)));
        }
        out
    }

    fn held(t: &[Linked]) -> Vec<(u64, String)> {
        t.iter().map(|r| (r.seq, r.hash.clone())).collect()
    }

    fn at(t: &[Linked], seq: u64) -> Option<(u64, &str)> {
        t.iter().find(|r| r.seq == seq).map(|r| (r.seq, r.hash.as_str()))
    }

    #[test]
    fn a_batch_that_continues_what_is_held_passes() {
        let t = trail(10);
        assert_eq!(check(None, &[], &t[..4]), Ok(Plan { known: 0, starts_at: None }));
        assert_eq!(check(at(&t, 4), &[], &t[4..]), Ok(Plan { known: 0, starts_at: None }));
        assert_eq!(check(at(&t, 4), &[], &[]), Ok(Plan { known: 0, starts_at: None }));
    }

    #[test]
    fn records_held_already_are_skipped_if_they_are_the_same() {
        let t = trail(10);
        // Sent again after a lost acknowledgement: records 3 and 4 are held.
        assert_eq!(
            check(at(&t, 4), &held(&t[2..4]), &t[2..]),
            Ok(Plan { known: 2, starts_at: None })
        );
        // Entirely held.
        assert_eq!(check(at(&t, 10), &held(&t), &t[5..8]), Ok(Plan { known: 3, starts_at: None }));

        // The agent's record 4 is no longer what was collected: rewritten with new hashes.
        let mut other = t[..3].to_vec();
        for i in 4..=6 {
            let last = other.last().map(|r| (r.seq, r.hash.as_str()));
            other.push(chain::link(last, body(i + 100)));
        }
        let r = check(at(&t, 5), &held(&t[3..5]), &other[3..]).unwrap_err();
        assert_eq!(r.brk, Some(Break::Changed { seq: 4 }));
        assert!(r.reason.contains("differs from the copy the server collected"), "{}", r.reason);
    }

    #[test]
    fn a_batch_that_does_not_continue_is_refused_naming_the_break() {
        let t = trail(10);
        // A gap: records 5 and 6 never arrive.
        let r = check(at(&t, 4), &[], &t[6..]).unwrap_err();
        assert_eq!(r.brk, Some(Break::Removed { seq: 5 }));
        assert!(r.reason.contains("records 5 to 6 are missing"), "{}", r.reason);
        assert_eq!((r.kind(), r.seq()), ("removed", Some(5)));

        // Record 5 was changed in place (its hash no longer matches).
        let mut changed = t[4..].to_vec();
        changed[0].body.details = "{\"n\":99}".into();
        let r = check(at(&t, 4), &[], &changed).unwrap_err();
        assert_eq!(r.brk, Some(Break::Changed { seq: 5 }));

        // Records 4.. rewritten with fresh hashes after record 4 was collected: the rest no
        // longer links to the copy held.
        let mut rewritten = t[..3].to_vec();
        for i in 4..=6 {
            let last = rewritten.last().map(|r| (r.seq, r.hash.as_str()));
            rewritten.push(chain::link(last, body(i + 100)));
        }
        let r = check(at(&t, 4), &[], &rewritten[4..]).unwrap_err();
        assert_eq!(r.brk, Some(Break::Inserted { seq: 5 }));
        assert!(r.reason.contains("does not link to record 4"), "{}", r.reason);

        // Two records swapped inside the batch.
        let mut swapped = t[4..].to_vec();
        swapped.swap(1, 2);
        assert_eq!(
            check(at(&t, 4), &[], &swapped).unwrap_err().brk,
            Some(Break::Reordered { seq: 6 })
        );
    }

    #[test]
    fn a_first_batch_after_record_one_is_a_start_but_record_one_must_be_genuine() {
        let t = trail(10);
        assert_eq!(check(None, &[], &t[3..]), Ok(Plan { known: 0, starts_at: Some(4) }));
        let mut forged = t[..2].to_vec();
        forged[0].prev = "1".repeat(64);
        forged[0].hash = chain::hash(&forged[0].prev, 1, &forged[0].body);
        forged[1] = chain::link(Some((1, &forged[0].hash)), body(2));
        assert_eq!(check(None, &[], &forged).unwrap_err().brk, Some(Break::Inserted { seq: 1 }));
    }

    #[test]
    fn malformed_records_and_oversized_batches_are_refused() {
        let t = trail(3);
        let mut bad = t.clone();
        bad[1].body.details = "x".repeat(MAX_DETAILS_BYTES + 1);
        let r = check(None, &[], &bad).unwrap_err();
        assert_eq!((r.brk.clone(), r.kind()), (None, "malformed"));
        assert!(r.reason.starts_with("record 2: its details have"), "{}", r.reason);

        let mut bad = t.clone();
        bad[0].hash = bad[0].hash.to_uppercase();
        assert!(check(None, &[], &bad).unwrap_err().reason.contains("hash is not 64"));
        let mut bad = t.clone();
        bad[2].seq = u64::MAX;
        assert!(check(None, &[], &bad).unwrap_err().reason.contains("out of range"));
        let mut bad = t.clone();
        bad[0].body.actor = "a".repeat(MAX_FIELD_BYTES + 1);
        assert!(check(None, &[], &bad).unwrap_err().reason.contains("actor has"));

        let many = trail(AUDIT_BATCH_MAX_RECORDS as u64 + 1);
        assert!(check(None, &[], &many).unwrap_err().reason.contains("a batch of 257 records"));
    }

    #[test]
    fn the_budget_allows_a_burst_then_a_steady_rate() {
        let t0 = Instant::now();
        let mut b = Budget::new(t0);
        assert_eq!(b.take(BURST, t0), Ok(()));
        assert_eq!(b.take(10, t0), Err(Duration::from_millis(100)));
        // 50 ms later: 5 records' worth.
        let t1 = t0 + Duration::from_millis(55);
        assert_eq!(b.take(10, t1), Err(Duration::from_millis(50)));
        assert_eq!(b.take(5, t1), Ok(()));
        // The 5 ms earned past the last token count towards the next one.
        assert_eq!(b.take(1, t0 + Duration::from_millis(60)), Ok(()));
        // Long idle: full again, never more.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(b.take(BURST, later), Ok(()));
        assert!(b.take(1, later).is_err());
    }
}
