//! The tamper-evident audit chain, shared by the server's trail and the agent's: free of I/O.
//!
//! Each record carries its place (`seq`, 1, 2, 3, ... without gaps), the hash of the record
//! before it (`prev`; 64 zeros for the first) and its own hash:
//!
//! ```text
//! hash = SHA-256("fernwart-audit-v1" || prev || seq (u64 BE) || for each of
//!        time_ms, actor, action, target, source, details: u64 BE length || bytes)
//! ```
//!
//! over the exact stored bytes (`details` is hashed as stored, never re-serialized). A
//! record changed in place no longer matches its hash; one removed, inserted or moved breaks
//! the links or the numbering. Whoever can rewrite the whole chain can rewrite the hashes too:
//! signed checkpoints (the server's key over `seq` and `hash`, see [`checkpoint_message`]) and
//! copies held elsewhere (the SIEM, an export) pin it.
//!
//! [`verify`] walks a chain and names the first record that was changed, removed, inserted or
//! moved.

use std::collections::HashSet;

use sha2::{Digest, Sha256};

/// A SHA-256 hash, lower-case hex (64 characters).
pub type HashHex = String;

/// The `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

const DOMAIN: &[u8] = b"fernwart-audit-v1";

/// What a record says, as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Body {
    pub time_ms: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub source: String,
    /// JSON object, exactly as stored.
    pub details: String,
}

/// A record in its chain.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Linked {
    pub seq: u64,
    pub prev: HashHex,
    pub hash: HashHex,
    #[serde(flatten)]
    pub body: Body,
}

/// The hash of a record with `body` at `seq` after `prev`.
pub fn hash(prev: &str, seq: u64, body: &Body) -> HashHex {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update(prev.as_bytes());
    h.update(seq.to_be_bytes());
    let time = body.time_ms.to_string();
    for field in [
        time.as_bytes(),
        body.actor.as_bytes(),
        body.action.as_bytes(),
        body.target.as_bytes(),
        body.source.as_bytes(),
        body.details.as_bytes(),
    ] {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field);
    }
    hex(&h.finalize())
}

/// Links `body` after the record (`seq`, `hash`) it follows (none: it is the first).
pub fn link(last: Option<(u64, &str)>, body: Body) -> Linked {
    let (seq, prev) = match last {
        Some((seq, hash)) => (seq + 1, hash.to_owned()),
        None => (1, GENESIS.to_owned()),
    };
    Linked { seq, hash: hash(&prev, seq, &body), prev, body }
}

/// The bytes a checkpoint signs: the chain's length and its last hash.
pub fn checkpoint_message(seq: u64, hash: &str) -> Vec<u8> {
    format!("fernwart-audit-checkpoint-v1\n{seq}\n{hash}\n").into_bytes()
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Where a chain breaks, by the place (`seq`) the record had or should have had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Break {
    #[error("record {seq} was changed (its contents do not match its hash)")]
    Changed { seq: u64 },
    #[error("record {seq} was removed")]
    Removed { seq: u64 },
    #[error("a record was inserted at place {seq} (it is not part of the chain)")]
    Inserted { seq: u64 },
    #[error("record {seq} was moved out of its place")]
    Reordered { seq: u64 },
    #[error("records from {from} on were removed (a signed checkpoint covers {checkpoint})")]
    Truncated { from: u64, checkpoint: u64 },
    #[error("record {seq} does not match the signed checkpoint (the chain was rewritten)")]
    Rewritten { seq: u64 },
}

/// What a chain that verifies holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verified {
    pub records: u64,
    pub last_hash: Option<HashHex>,
    /// The highest place a checkpoint covers.
    pub signed_up_to: u64,
}

/// Walks `records` in their stored order and checks every hash and link, then the
/// checkpoints `(seq, hash)` whose signatures the caller has checked. `first_seq` and
/// `first_prev` are where the walk starts (1 and [`GENESIS`] for a whole chain; later for a
/// rotated-away beginning or an export of a part).
pub fn verify(
    records: &[Linked],
    first_seq: u64,
    first_prev: &str,
    checkpoints: &[(u64, HashHex)],
) -> Result<Verified, Break> {
    let seqs: HashSet<u64> = records.iter().map(|r| r.seq).collect();
    let mut expected = first_seq;
    let mut last_hash = first_prev.to_owned();
    // The hash of the record before the last accepted one (an inserted record shows by the
    // next genuine record linking past it).
    let mut before_last: Option<HashHex> = None;
    for r in records {
        let content_ok = hash(&r.prev, r.seq, &r.body) == r.hash;
        let link_ok = r.prev == last_hash;
        if r.seq == expected && content_ok && link_ok {
            before_last = Some(std::mem::replace(&mut last_hash, r.hash.clone()));
            expected += 1;
            continue;
        }
        if r.seq == expected && !content_ok && link_ok {
            return Err(Break::Changed { seq: r.seq });
        }
        if r.seq < expected {
            // A place seen already: the previous record was slipped in before this one, or
            // this one comes after its successor.
            if before_last.as_deref() == Some(r.prev.as_str()) {
                return Err(Break::Inserted { seq: expected - 1 });
            }
            return Err(Break::Reordered { seq: r.seq });
        }
        if r.seq > expected {
            // The expected place is missing here: later in the list (moved) or nowhere.
            return Err(if seqs.contains(&expected) {
                Break::Reordered { seq: expected }
            } else {
                Break::Removed { seq: expected }
            });
        }
        // Right place, wrong link: a record foreign to the chain, or changed with its hash
        // recomputed.
        return Err(if content_ok {
            Break::Inserted { seq: r.seq }
        } else {
            Break::Changed { seq: r.seq }
        });
    }
    let mut signed_up_to = 0;
    for (seq, h) in checkpoints {
        if *seq < first_seq {
            continue;
        }
        if *seq >= expected {
            return Err(Break::Truncated { from: expected, checkpoint: *seq });
        }
        let idx = usize::try_from(seq - first_seq).unwrap_or(usize::MAX);
        match records.get(idx) {
            Some(r) if &r.hash == h => signed_up_to = signed_up_to.max(*seq),
            _ => return Err(Break::Rewritten { seq: *seq }),
        }
    }
    Ok(Verified {
        records: expected - first_seq,
        last_hash: (expected > first_seq).then_some(last_hash),
        signed_up_to,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(i: u64) -> Body {
        Body {
            time_ms: 1_700_000_000_000 + i as i64,
            actor: format!("user{i}"),
            action: "session.create".into(),
            target: format!("s{i}"),
            source: "127.0.0.1".into(),
            details: format!("{{\"n\":{i}}}"),
        }
    }

    fn chain(n: u64) -> Vec<Linked> {
        let mut out: Vec<Linked> = Vec::new();
        for i in 1..=n {
            let last = out.last().map(|r| (r.seq, r.hash.as_str()));
            out.push(link(last, body(i)));
        }
        out
    }

    fn check(c: &[Linked]) -> Result<Verified, Break> {
        verify(c, 1, GENESIS, &[])
    }

    #[test]
    fn an_untouched_chain_verifies() {
        let c = chain(10);
        let v = verify(&c, 1, GENESIS, &[(5, c[4].hash.clone()), (10, c[9].hash.clone())]).unwrap();
        assert_eq!((v.records, v.signed_up_to), (10, 10));
        assert_eq!(v.last_hash.as_deref(), Some(c[9].hash.as_str()));
        assert_eq!(check(&[]).unwrap().records, 0);
        // A part of it, from where the part starts.
        assert_eq!(verify(&c[4..], 5, &c[3].hash, &[]).unwrap().records, 6);
    }

    #[test]
    fn every_field_is_covered() {
        let c = chain(3);
        for edit in 0..7 {
            let mut c = c.clone();
            let b = &mut c[1].body;
            match edit {
                0 => b.time_ms += 1,
                1 => b.actor.push('x'),
                2 => b.action.push('x'),
                3 => b.target.push('x'),
                4 => b.source.push('x'),
                5 => b.details = "{\"n\": 2}".into(),
                _ => c[1].seq = 2, // unchanged: must still verify
            }
            let r = check(&c);
            if edit == 6 {
                assert!(r.is_ok());
            } else {
                assert_eq!(r, Err(Break::Changed { seq: 2 }), "edit {edit}");
            }
        }
        // Fields run into each other only with their lengths: "ab"+"c" is not "a"+"bc".
        let mut a = body(1);
        a.actor = "ab".into();
        a.action = "c".into();
        let mut b = body(1);
        b.actor = "a".into();
        b.action = "bc".into();
        assert_ne!(hash(GENESIS, 1, &a), hash(GENESIS, 1, &b));
    }

    #[test]
    fn removals_insertions_and_moves_are_named() {
        let c = chain(6);
        let mut removed = c.clone();
        removed.remove(2);
        assert_eq!(check(&removed), Err(Break::Removed { seq: 3 }));

        // Slipped in after record 2 with a proper link: the genuine record 3 after it still
        // links to record 2.
        let mut forged = c.clone();
        let fake = link(Some((2, &c[1].hash)), body(99));
        forged.insert(2, fake);
        assert_eq!(check(&forged), Err(Break::Inserted { seq: 3 }));

        // Inserted with a made-up link.
        let mut foreign = c.clone();
        let mut f = link(Some((2, GENESIS)), body(98));
        f.seq = 3;
        foreign.insert(2, f);
        assert_eq!(check(&foreign), Err(Break::Inserted { seq: 3 }));

        let mut moved = c.clone();
        moved.swap(2, 3);
        assert_eq!(check(&moved), Err(Break::Reordered { seq: 3 }));

        // Cut at the end: only a checkpoint tells.
        let cut = &c[..4];
        assert!(check(cut).is_ok());
        assert_eq!(
            verify(cut, 1, GENESIS, &[(5, c[4].hash.clone())]),
            Err(Break::Truncated { from: 5, checkpoint: 5 })
        );
        // Rewritten from record 3 on, consistently: the checkpoint over 4 no longer matches.
        let mut rewritten: Vec<Linked> = c[..2].to_vec();
        for i in 3..=6 {
            let last = rewritten.last().map(|r| (r.seq, r.hash.as_str()));
            rewritten.push(link(last, body(i + 100)));
        }
        assert!(check(&rewritten).is_ok());
        assert_eq!(
            verify(&rewritten, 1, GENESIS, &[(4, c[3].hash.clone())]),
            Err(Break::Rewritten { seq: 4 })
        );
    }
}
