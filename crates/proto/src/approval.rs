//! Operator-signed approvals, free of I/O: what an approver signs, and the agent's check of a
//! grant against the operator's own keys (issue 11).
//!
//! The server carries approvals; it cannot make one. An approver signs, with an Ed25519 key
//! held on their own device, the [`GrantFields`] of a session: machine, session, targets,
//! technicians (and their static keys), time window, recording, and a nonce the server drew
//! for the session. The agent holds the operator's approver keys (its `agent.toml`) and
//! [`verify`]s every grant before it holds it: a server that changes a target, a user or the
//! window, approves without a signature or replays an old approval is refused.
//!
//! The signed bytes are a deterministic encoding, never JSON:
//!
//! ```text
//! "fernwart-grant-approval" || version (u8, 1)
//!   || str machine || str session
//!   || list targets || list users || list tech_keys      (each sorted, duplicates dropped)
//!   || from (i64 BE) || until (i64 BE) || record (u8 0/1) || str nonce
//! str  = length (u32 BE) || UTF-8 bytes
//! list = count (u32 BE) || str ...
//! ```

use std::{collections::BTreeMap, fmt, str::FromStr};

use base64::{engine::general_purpose::STANDARD, engine::general_purpose::STANDARD_NO_PAD, Engine};
use ring::signature::{self, Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{
    webauthn::{self, Es256Key},
    Grant,
};

const DOMAIN: &[u8] = b"fernwart-grant-approval";
/// The version of the signed encoding.
pub const VERSION: u8 = 1;
/// How a public key is written: `ed25519:` and the 32 bytes in base64.
pub const KEY_PREFIX: &str = "ed25519:";
/// The most approvals an agent remembers ([`Nonces`]); beyond it, those whose window ends first
/// are forgotten.
pub const MAX_NONCES: usize = 4096;
/// The longest nonce accepted (the server draws 32 hex digits).
pub const MAX_NONCE_LEN: usize = 128;

/// An approver's signature as a grant carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    /// The approver's public key, `ed25519:BASE64`.
    pub key: String,
    /// Ed25519 over [`GrantFields::to_bytes`], base64.
    pub signature: String,
    /// The server's random number for the session, part of what is signed.
    pub nonce: String,
}

/// What an approver signs: a session's grant at one machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantFields {
    pub machine: String,
    pub session: String,
    pub targets: Vec<String>,
    pub users: Vec<String>,
    /// The technicians' end-to-end keys ([`Grant::tech_keys`]).
    #[serde(default)]
    pub tech_keys: Vec<String>,
    /// The time window, seconds since the Unix epoch.
    pub from: i64,
    pub until: i64,
    #[serde(default)]
    pub record: bool,
    pub nonce: String,
}

impl GrantFields {
    /// The fields of `grant` as the agent of `machine` sees them, with the approval's `nonce`.
    pub fn of(grant: &Grant, machine: &str, nonce: &str) -> Self {
        Self {
            machine: machine.to_owned(),
            session: grant.session.clone(),
            targets: grant.targets.clone(),
            users: grant.users.clone(),
            tech_keys: grant.tech_keys.clone(),
            from: grant.from,
            until: grant.until,
            record: grant.record,
            nonce: nonce.to_owned(),
        }
    }

    /// The bytes an approver signs (see the module's comment).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(DOMAIN);
        out.push(VERSION);
        put_str(&mut out, &self.machine);
        put_str(&mut out, &self.session);
        put_list(&mut out, &self.targets);
        put_list(&mut out, &self.users);
        put_list(&mut out, &self.tech_keys);
        out.extend_from_slice(&self.from.to_be_bytes());
        out.extend_from_slice(&self.until.to_be_bytes());
        out.push(u8::from(self.record));
        put_str(&mut out, &self.nonce);
        out
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Names are at most a few hundred bytes: a string of 4 GiB cannot be signed.
    let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_list(out: &mut Vec<u8>, items: &[String]) {
    let mut sorted: Vec<&str> = items.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let n = u32::try_from(sorted.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&n.to_be_bytes());
    for s in sorted {
        put_str(out, s);
    }
}

// ------------------------------------------------------------------------------ keys

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("{0:?} is not an approver key: expected ed25519: and 32 bytes in base64, or es256:RP-ID: and a security key's 65-byte point in base64")]
    Malformed(String),
    #[error("the private key is not an Ed25519 key in PKCS#8")]
    Private,
    #[error("cannot make a key: the system's random source failed")]
    Random,
}

/// An approver's public key: an Ed25519 key (`fernwart key`), or the ES256 key of a security
/// key registered in the web console, whose approvals are WebAuthn assertions over the grant's
/// hash ([`webauthn`]).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ApproverKey {
    Ed25519([u8; 32]),
    WebAuthn(Es256Key),
}

impl ApproverKey {
    /// OpenSSH style: `SHA256:` and the SHA-256 of the key bytes in base64 without padding.
    pub fn fingerprint(&self) -> String {
        match self {
            Self::Ed25519(k) => format!("SHA256:{}", STANDARD_NO_PAD.encode(Sha256::digest(k))),
            Self::WebAuthn(k) => k.fingerprint(),
        }
    }

    /// Whether `signature` is this key's over `message`: for Ed25519 the signature in base64;
    /// for a security key an assertion ([`webauthn::Assertion::to_compact`]) whose challenge is
    /// the SHA-256 of `message`, made for the key's relying party with the user present.
    pub fn verifies(&self, message: &[u8], signature: &str) -> bool {
        match self {
            Self::Ed25519(k) => {
                let Ok(sig) = STANDARD.decode(signature.trim()) else { return false };
                signature::UnparsedPublicKey::new(&signature::ED25519, k)
                    .verify(message, &sig)
                    .is_ok()
            }
            Self::WebAuthn(k) => {
                let Ok(a) = webauthn::Assertion::from_compact(signature) else { return false };
                let challenge = webauthn::grant_challenge(message);
                let expect = webauthn::Expect {
                    rp_id: k.rp_id(),
                    origin: None,
                    challenge: &challenge,
                    user_verified: false,
                };
                webauthn::verify_assertion(k, &a, &expect).is_ok()
            }
        }
    }
}

impl FromStr for ApproverKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        let bad = || KeyError::Malformed(s.chars().take(80).collect());
        if s.trim().starts_with(webauthn::KEY_PREFIX) {
            return Es256Key::parse(s).map(Self::WebAuthn).map_err(|_| bad());
        }
        let b64 = s.trim().strip_prefix(KEY_PREFIX).ok_or_else(bad)?;
        let bytes =
            STANDARD.decode(b64).or_else(|_| STANDARD_NO_PAD.decode(b64)).map_err(|_| bad())?;
        <[u8; 32]>::try_from(bytes.as_slice()).map(Self::Ed25519).map_err(|_| bad())
    }
}

impl fmt::Display for ApproverKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ed25519(k) => write!(f, "{KEY_PREFIX}{}", STANDARD.encode(k)),
            Self::WebAuthn(k) => k.fmt(f),
        }
    }
}

impl fmt::Debug for ApproverKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApproverKey({})", self.fingerprint())
    }
}

/// An approver's private key (on their own device only).
pub struct SigningKey(Ed25519KeyPair);

impl SigningKey {
    /// A new key as PKCS#8 (v2, with its public key), from `rng`.
    pub fn generate_pkcs8(rng: &dyn ring::rand::SecureRandom) -> Result<Vec<u8>, KeyError> {
        Ed25519KeyPair::generate_pkcs8(rng)
            .map(|doc| doc.as_ref().to_vec())
            .map_err(|_| KeyError::Random)
    }

    /// The key of a 32-byte seed (tests, and keys kept as seeds elsewhere).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        // A seed of 32 bytes is always a valid Ed25519 private key.
        Self(Ed25519KeyPair::from_seed_unchecked(seed).expect("32 bytes are an Ed25519 seed"))
    }

    pub fn from_pkcs8(der: &[u8]) -> Result<Self, KeyError> {
        Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map(Self).map_err(|_| KeyError::Private)
    }

    pub fn public(&self) -> ApproverKey {
        let mut key = [0u8; 32];
        key.copy_from_slice(self.0.public_key().as_ref());
        ApproverKey::Ed25519(key)
    }

    /// The approval of `fields` by this key.
    pub fn approve(&self, fields: &GrantFields) -> Approval {
        Approval {
            key: self.public().to_string(),
            signature: STANDARD.encode(self.0.sign(&fields.to_bytes())),
            nonce: fields.nonce.clone(),
        }
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({})", self.public().fingerprint())
    }
}

// ------------------------------------------------------------------------------ the check

/// The operator's trust anchor at one machine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trust {
    /// The keys whose approvals count.
    pub approvers: Vec<ApproverKey>,
    /// Grants without a valid approval by one of them are refused (else a grant without one
    /// is held on the server's word; a grant with one is still checked).
    pub required: bool,
}

impl Trust {
    /// What the agent reports: `operator-signed` when it requires approvals, else `server`.
    pub fn level(&self) -> &'static str {
        if self.required {
            LEVEL_SIGNED
        } else {
            LEVEL_SERVER
        }
    }
}

/// The trust level of an agent that holds grants only with an operator's signature.
pub const LEVEL_SIGNED: &str = "operator-signed";
/// The trust level of an agent that holds grants on the server's word.
pub const LEVEL_SERVER: &str = "server";

/// Why a grant is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the grant carries no approver's signature; this machine accepts only operator-signed approvals")]
    Unsigned,
    #[error("the approval's key is malformed ({0})")]
    MalformedKey(String),
    #[error(
        "the approval is signed by {fingerprint}, which is not one of this machine's approvers"
    )]
    UntrustedKey { fingerprint: String },
    #[error("the approval's signature (by {fingerprint}) does not match the grant: its machine, session, targets, users, time window, recording or nonce differ from what the approver signed")]
    BadSignature { fingerprint: String },
    #[error("replayed approval: its nonce was approved for session {first}, not {session}")]
    NonceReused { first: String, session: String },
    #[error("replayed approval: session {session} has ended at this machine")]
    Ended { session: String },
    #[error("the approval's nonce is missing or too long")]
    BadNonce,
    #[error("the signed grant names target {0:?}, which is not in this machine's allow-list")]
    TargetNotAllowed(String),
    #[error("the signed grant's time window ended (until {until})")]
    Expired { until: i64 },
}

/// How a grant was found good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// An approver's valid signature over exactly this grant.
    Signed(ApproverKey),
    /// Held on the server's word: no approval required here (and none checked).
    Server,
}

/// Whether the agent of `machine`, whose allow-list is `allowed`, may hold `grant` at `now`,
/// given the operator's `trust` and the approvals it has `seen`. Nothing is remembered here:
/// on `Verdict::Signed`, the caller adds the approval to `seen` ([`Nonces::admit`]).
pub fn verify(
    grant: &Grant,
    machine: &str,
    trust: &Trust,
    allowed: &[&str],
    seen: &Nonces,
    now: i64,
) -> Result<Verdict, Refusal> {
    let Some(approval) = &grant.approval else {
        return if trust.required { Err(Refusal::Unsigned) } else { Ok(Verdict::Server) };
    };
    if trust.approvers.is_empty() && !trust.required {
        // No anchor to check against: the signature means nothing here.
        return Ok(Verdict::Server);
    }
    if approval.nonce.is_empty() || approval.nonce.len() > MAX_NONCE_LEN {
        return Err(Refusal::BadNonce);
    }
    seen.check(&approval.nonce, &grant.session)?;
    let key: ApproverKey =
        approval.key.parse().map_err(|e: KeyError| Refusal::MalformedKey(e.to_string()))?;
    if !trust.approvers.contains(&key) {
        return Err(Refusal::UntrustedKey { fingerprint: key.fingerprint() });
    }
    let fields = GrantFields::of(grant, machine, &approval.nonce);
    if !key.verifies(&fields.to_bytes(), &approval.signature) {
        return Err(Refusal::BadSignature { fingerprint: key.fingerprint() });
    }
    if let Some(t) = grant.targets.iter().find(|t| !allowed.contains(&t.as_str())) {
        return Err(Refusal::TargetNotAllowed(t.clone()));
    }
    // A grant past its window is no use; refusing it also makes forgetting the nonces of
    // past windows safe.
    if grant.until <= now {
        return Err(Refusal::Expired { until: grant.until });
    }
    Ok(Verdict::Signed(key))
}

/// The approvals an agent has held, by nonce: an approval is good for its own session only,
/// and not again once that session ended. Kept until its window ends (a replay after that is
/// refused as [`Refusal::Expired`]), at most [`MAX_NONCES`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nonces {
    seen: BTreeMap<String, Seen>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Seen {
    session: String,
    until: i64,
    ended: bool,
}

impl Nonces {
    /// Whether an approval with `nonce` may be held for `session`.
    pub fn check(&self, nonce: &str, session: &str) -> Result<(), Refusal> {
        match self.seen.get(nonce) {
            Some(s) if s.session != session => {
                Err(Refusal::NonceReused { first: s.session.clone(), session: session.to_owned() })
            }
            Some(s) if s.ended => Err(Refusal::Ended { session: session.to_owned() }),
            _ => Ok(()),
        }
    }

    /// Remembers a verified approval of `session` (window until `until`). Approvals that share
    /// a nonce (a session approved again) are remembered until the last of their windows ends.
    pub fn admit(&mut self, nonce: &str, session: &str, until: i64) {
        let (ended, until) = match self.seen.get(nonce) {
            Some(s) => (s.ended, s.until.max(until)),
            None => (false, until),
        };
        self.seen.insert(nonce.to_owned(), Seen { session: session.to_owned(), until, ended });
        while self.seen.len() > MAX_NONCES {
            let first = self.seen.iter().min_by_key(|(_, s)| s.until).map(|(n, _)| n.clone());
            match first {
                Some(n) => self.seen.remove(&n),
                None => break,
            };
        }
    }

    /// `session` ended: its approvals are not taken again. True if that changed anything.
    pub fn ended(&mut self, session: &str) -> bool {
        let mut changed = false;
        for s in self.seen.values_mut().filter(|s| s.session == session && !s.ended) {
            s.ended = true;
            changed = true;
        }
        changed
    }

    /// Forgets approvals whose window ended before `now`. True if any were.
    pub fn prune(&mut self, now: i64) -> bool {
        let before = self.seen.len();
        self.seen.retain(|_, s| s.until > now);
        self.seen.len() != before
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use ring::rand::SystemRandom;

    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn key() -> SigningKey {
        SigningKey::from_pkcs8(&SigningKey::generate_pkcs8(&SystemRandom::new()).unwrap()).unwrap()
    }

    fn grant() -> Grant {
        Grant {
            session: "s1".into(),
            targets: vec!["plc".into(), "hmi".into()],
            from: NOW - 60,
            until: NOW + 3600,
            users: vec!["tech1".into()],
            record: false,
            tech_keys: vec!["tk1".into()],
            approval: None,
        }
    }

    fn signed(k: &SigningKey, g: &Grant, nonce: &str) -> Grant {
        let approval = k.approve(&GrantFields::of(g, "m1", nonce));
        Grant { approval: Some(approval), ..g.clone() }
    }

    fn trust(keys: &[&SigningKey]) -> Trust {
        Trust { approvers: keys.iter().map(|k| k.public()).collect(), required: true }
    }

    const ALLOWED: &[&str] = &["plc", "hmi", "ssh"];

    #[test]
    fn a_grant_signed_by_an_approver_is_held() {
        let k = key();
        let g = signed(&k, &grant(), "n1");
        let v = verify(&g, "m1", &trust(&[&k]), ALLOWED, &Nonces::default(), NOW);
        assert_eq!(v, Ok(Verdict::Signed(k.public())));
    }

    #[test]
    fn a_grant_approved_with_a_security_key_is_held_and_tampering_refused() {
        use crate::webauthn::tests::{Token, RP};
        let token = Token::new();
        let key = ApproverKey::WebAuthn(token.key(RP));
        let t = Trust { approvers: vec![key.clone()], required: true };
        let g = grant();
        let fields = GrantFields::of(&g, "m1", "n1");
        let challenge = crate::webauthn::grant_challenge(&fields.to_bytes());
        let a = token.assert(RP, &challenge, 1, 0x01);
        let approval =
            Approval { key: key.to_string(), signature: a.to_compact(), nonce: "n1".into() };
        let signed = Grant { approval: Some(approval.clone()), ..g.clone() };
        assert_eq!(
            verify(&signed, "m1", &t, ALLOWED, &Nonces::default(), NOW),
            Ok(Verdict::Signed(key.clone()))
        );
        // A widened grant, or the assertion of another grant, is refused.
        let mut wider = signed.clone();
        wider.targets.push("ssh".into());
        assert!(matches!(
            verify(&wider, "m1", &t, ALLOWED, &Nonces::default(), NOW),
            Err(Refusal::BadSignature { .. })
        ));
        let other = token.assert(RP, &crate::webauthn::grant_challenge(b"another grant"), 2, 0x01);
        let forged = Grant {
            approval: Some(Approval { signature: other.to_compact(), ..approval.clone() }),
            ..g.clone()
        };
        assert!(matches!(
            verify(&forged, "m1", &t, ALLOWED, &Nonces::default(), NOW),
            Err(Refusal::BadSignature { .. })
        ));
        // A key of the same device pinned for another relying party does not count.
        let elsewhere = ApproverKey::WebAuthn(token.key("other.example"));
        let t2 = Trust { approvers: vec![elsewhere], required: true };
        assert!(matches!(
            verify(&signed, "m1", &t2, ALLOWED, &Nonces::default(), NOW),
            Err(Refusal::UntrustedKey { .. })
        ));
        // The key's written form round-trips.
        assert_eq!(key.to_string().parse::<ApproverKey>(), Ok(key));
    }

    #[test]
    fn every_signed_field_counts() {
        let k = key();
        let t = trust(&[&k]);
        let g = signed(&k, &grant(), "n1");
        type Change = fn(&mut Grant);
        let changes: Vec<(&str, Change)> = vec![
            ("a target added", |g| g.targets.push("ssh".into())),
            ("a target swapped", |g| g.targets[0] = "ssh".into()),
            ("a user added", |g| g.users.push("tech2".into())),
            ("a user swapped", |g| g.users[0] = "tech2".into()),
            ("earlier start", |g| g.from -= 1),
            ("later end", |g| g.until += 1),
            ("recording off/on", |g| g.record = !g.record),
            ("a technician key added", |g| g.tech_keys.push("tk2".into())),
            ("a technician key swapped", |g| g.tech_keys[0] = "tk2".into()),
            ("another session", |g| g.session = "s2".into()),
            ("another nonce", |g| g.approval.as_mut().unwrap().nonce = "n2".into()),
        ];
        for (what, change) in changes {
            let mut bad = g.clone();
            change(&mut bad);
            let r = verify(&bad, "m1", &t, ALLOWED, &Nonces::default(), NOW);
            assert!(matches!(r, Err(Refusal::BadSignature { .. })), "{what}: {r:?}");
        }
        // Signed for another machine.
        let r = verify(&g, "m2", &t, ALLOWED, &Nonces::default(), NOW);
        assert!(matches!(r, Err(Refusal::BadSignature { .. })), "{r:?}");
        // The order of targets and users is not part of what is signed.
        let mut same = g.clone();
        same.targets.reverse();
        assert!(verify(&same, "m1", &t, ALLOWED, &Nonces::default(), NOW).is_ok());
    }

    #[test]
    fn unsigned_grants_only_where_the_operator_allows() {
        let k = key();
        let g = grant();
        assert_eq!(
            verify(&g, "m1", &trust(&[&k]), ALLOWED, &Nonces::default(), NOW),
            Err(Refusal::Unsigned)
        );
        let open = Trust { approvers: vec![k.public()], required: false };
        assert_eq!(verify(&g, "m1", &open, ALLOWED, &Nonces::default(), NOW), Ok(Verdict::Server));
        // With keys, a signature present is checked even where none is required.
        let mut bad = signed(&k, &g, "n1");
        bad.targets.push("ssh".into());
        assert!(verify(&bad, "m1", &open, ALLOWED, &Nonces::default(), NOW).is_err());
        // Without keys, there is nothing to check it against.
        let none = Trust::default();
        assert_eq!(
            verify(&bad, "m1", &none, ALLOWED, &Nonces::default(), NOW),
            Ok(Verdict::Server)
        );
        assert_eq!(none.level(), "server");
        assert_eq!(trust(&[&k]).level(), "operator-signed");
    }

    #[test]
    fn keys_the_operator_did_not_pin_are_refused() {
        let (k, other) = (key(), key());
        let g = signed(&other, &grant(), "n1");
        let r = verify(&g, "m1", &trust(&[&k]), ALLOWED, &Nonces::default(), NOW);
        assert_eq!(r, Err(Refusal::UntrustedKey { fingerprint: other.public().fingerprint() }));
        // Rotation: the new key is pinned, the old one removed.
        let old = signed(&k, &grant(), "n2");
        let rotated = trust(&[&other]);
        assert!(verify(&g, "m1", &rotated, ALLOWED, &Nonces::default(), NOW).is_ok());
        assert!(matches!(
            verify(&old, "m1", &rotated, ALLOWED, &Nonces::default(), NOW),
            Err(Refusal::UntrustedKey { .. })
        ));
        let mut garbled = g.clone();
        garbled.approval.as_mut().unwrap().key = "ed25519:AAAA".into();
        assert!(matches!(
            verify(&garbled, "m1", &rotated, ALLOWED, &Nonces::default(), NOW),
            Err(Refusal::MalformedKey(_))
        ));
    }

    #[test]
    fn signed_targets_stay_inside_the_allow_list_and_windows_end() {
        let k = key();
        let g = signed(&k, &grant(), "n1");
        let r = verify(&g, "m1", &trust(&[&k]), &["plc"], &Nonces::default(), NOW);
        assert_eq!(r, Err(Refusal::TargetNotAllowed("hmi".into())));
        let r = verify(&g, "m1", &trust(&[&k]), ALLOWED, &Nonces::default(), NOW + 3600);
        assert_eq!(r, Err(Refusal::Expired { until: NOW + 3600 }));
    }

    #[test]
    fn approvals_are_not_replayed() {
        let k = key();
        let t = trust(&[&k]);
        let g = signed(&k, &grant(), "n1");
        let mut seen = Nonces::default();
        assert!(verify(&g, "m1", &t, ALLOWED, &seen, NOW).is_ok());
        seen.admit("n1", "s1", g.until);
        // The same grant again (a reconnect) is fine.
        assert!(verify(&g, "m1", &t, ALLOWED, &seen, NOW).is_ok());
        // Its approval on another session is not.
        let mut other = g.clone();
        other.session = "s2".into();
        assert_eq!(
            verify(&other, "m1", &t, ALLOWED, &seen, NOW),
            Err(Refusal::NonceReused { first: "s1".into(), session: "s2".into() })
        );
        // Nor the session once it ended.
        assert!(seen.ended("s1"));
        assert!(!seen.ended("s1"));
        assert_eq!(
            verify(&g, "m1", &t, ALLOWED, &seen, NOW),
            Err(Refusal::Ended { session: "s1".into() })
        );
        // Held again, it stays ended.
        seen.admit("n1", "s1", g.until);
        assert!(verify(&g, "m1", &t, ALLOWED, &seen, NOW).is_err());
        // Past its window the nonce is forgotten: the grant is refused as expired anyway.
        assert!(seen.prune(g.until));
        assert!(seen.is_empty());
        assert!(matches!(
            verify(&g, "m1", &t, ALLOWED, &seen, g.until),
            Err(Refusal::Expired { .. })
        ));
        let mut empty = g.clone();
        empty.approval.as_mut().unwrap().nonce = String::new();
        assert_eq!(verify(&empty, "m1", &t, ALLOWED, &seen, NOW), Err(Refusal::BadNonce));
    }

    #[test]
    fn a_nonce_is_kept_until_the_last_window_of_its_approvals_ends() {
        // The same session approved twice with its nonce: a long window, then a short one.
        let k = key();
        let t = trust(&[&k]);
        let long = signed(&k, &grant(), "n1");
        let short = signed(&k, &Grant { until: NOW + 60, ..grant() }, "n1");
        let mut seen = Nonces::default();
        for g in [&long, &short] {
            assert!(verify(g, "m1", &t, ALLOWED, &seen, NOW).is_ok());
            seen.admit("n1", "s1", g.until);
        }
        assert!(seen.ended("s1"));
        // After the short window, the long approval is still inside its own: still ended.
        assert!(!seen.prune(NOW + 61));
        assert_eq!(
            verify(&long, "m1", &t, ALLOWED, &seen, NOW + 61),
            Err(Refusal::Ended { session: "s1".into() })
        );
    }

    #[test]
    fn nonces_are_bounded_and_round_trip() {
        let mut seen = Nonces::default();
        for i in 0..(MAX_NONCES as i64 + 10) {
            seen.admit(&format!("n{i}"), &format!("s{i}"), NOW + i);
        }
        assert_eq!(seen.len(), MAX_NONCES);
        // The first to end were forgotten.
        assert!(seen.check("n0", "other").is_ok());
        assert!(seen.check(&format!("n{}", MAX_NONCES + 9), "other").is_err());
        let text = serde_json::to_string(&seen).unwrap();
        assert_eq!(serde_json::from_str::<Nonces>(&text).unwrap(), seen);
    }

    #[test]
    fn keys_are_written_and_read() {
        let k = key();
        let text = k.public().to_string();
        assert!(text.starts_with("ed25519:"), "{text}");
        assert_eq!(text.parse::<ApproverKey>().unwrap(), k.public());
        assert_eq!(text.trim_end_matches('=').parse::<ApproverKey>().unwrap(), k.public());
        assert!(k.public().fingerprint().starts_with("SHA256:"));
        assert_eq!(k.public().fingerprint().len(), 7 + 43);
        for bad in ["", "ed25519:", "ssh-ed25519 AAAA", "ed25519:AAAA", "ed25519:!!!"] {
            assert!(bad.parse::<ApproverKey>().is_err(), "{bad}");
        }
        assert!(SigningKey::from_pkcs8(b"not a key").is_err());
        assert!(!format!("{k:?}").contains(&text[8..]));
    }

    #[test]
    fn the_encoding_is_fixed() {
        let f = GrantFields {
            machine: "m".into(),
            session: "s".into(),
            targets: vec!["b".into(), "a".into(), "a".into()],
            users: vec!["u".into()],
            tech_keys: Vec::new(),
            from: 1,
            until: 2,
            record: true,
            nonce: "n".into(),
        };
        let mut want = b"fernwart-grant-approval\x01".to_vec();
        want.extend_from_slice(b"\0\0\0\x01m\0\0\0\x01s");
        want.extend_from_slice(b"\0\0\0\x02\0\0\0\x01a\0\0\0\x01b");
        want.extend_from_slice(b"\0\0\0\x01\0\0\0\x01u\0\0\0\0");
        want.extend_from_slice(&1i64.to_be_bytes());
        want.extend_from_slice(&2i64.to_be_bytes());
        want.extend_from_slice(b"\x01\0\0\0\x01n");
        assert_eq!(f.to_bytes(), want);
    }

    fn name() -> impl Strategy<Value = String> {
        "[a-z0-9]{0,6}"
    }

    fn fields() -> impl Strategy<Value = GrantFields> {
        (
            (name(), name(), prop::collection::vec(name(), 0..4)),
            (prop::collection::vec(name(), 0..4), prop::collection::vec(name(), 0..3)),
            (any::<i64>(), any::<i64>(), any::<bool>(), name()),
        )
            .prop_map(
                |(
                    (machine, session, targets),
                    (users, tech_keys),
                    (from, until, record, nonce),
                )| {
                    GrantFields {
                        machine,
                        session,
                        targets,
                        users,
                        tech_keys,
                        from,
                        until,
                        record,
                        nonce,
                    }
                },
            )
    }

    fn canonical(f: &GrantFields) -> GrantFields {
        let set = |v: &[String]| {
            let mut v = v.to_vec();
            v.sort();
            v.dedup();
            v
        };
        GrantFields {
            targets: set(&f.targets),
            users: set(&f.users),
            tech_keys: set(&f.tech_keys),
            ..f.clone()
        }
    }

    proptest! {
        // Two grants encode alike exactly when they are the same grant (lists as sets): any
        // change of a field, however small, changes the bytes, so it breaks the signature.
        #[test]
        fn prop_the_encoding_is_injective(a in fields(), b in fields()) {
            prop_assert_eq!(a.to_bytes() == b.to_bytes(), canonical(&a) == canonical(&b));
        }

        #[test]
        fn prop_any_single_change_breaks_the_signature(f in fields(), which in 0usize..9, extra in "[a-z]{1,3}") {
            let k = key();
            let approval = k.approve(&f);
            let mut g = f.clone();
            match which {
                0 => g.machine.push_str(&extra),
                1 => g.session.push_str(&extra),
                2 => g.targets.push(format!("{extra}-t")),
                3 => g.users.push(format!("{extra}-u")),
                4 => g.tech_keys.push(format!("{extra}-k")),
                5 => g.from = g.from.wrapping_add(1),
                6 => g.until = g.until.wrapping_sub(1),
                7 => g.record = !g.record,
                _ => g.nonce.push_str(&extra),
            }
            let key: ApproverKey = approval.key.parse().unwrap();
            prop_assert!(key.verifies(&f.to_bytes(), &approval.signature));
            // A list entry that was there already changes nothing; anything else does.
            let same = canonical(&g) == canonical(&f);
            prop_assert_eq!(key.verifies(&g.to_bytes(), &approval.signature), same);
        }
    }
}
