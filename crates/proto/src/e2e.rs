//! End-to-end encryption of a tunnel between `fernwart connect` (the Noise initiator) and the
//! agent (the responder), inside the relayed stream: the server forwards ciphertext only.
//!
//! Each tunnel runs its own `Noise_IK_25519_AESGCM_SHA256` handshake ([`NOISE`]): the
//! technician's CLI knows the agent's static key in advance (pinned per machine), the agent
//! learns the technician's static key from the first message and accepts it only if the
//! session's grant names it. Both sides add fresh ephemeral keys, so no key is shared between
//! tunnels and a stolen static key does not open recorded traffic (forward secrecy).
//!
//! On the stream, after the [`crate::OpenRequest`] / [`crate::OpenReply`] frames, everything is
//! *records*: a 2-byte big-endian length, then that many bytes (at most [`MAX_RECORD`], Noise's
//! message limit):
//!
//! ```text
//! CLI → agent   OpenRequest{e2e: 1}  record(msg1 = e, s, es, ss, payload: time ‖ first bytes)
//! agent → CLI   OpenReply{ok}        record(msg2 = e, ee, se)
//! both ways     record(AES-256-GCM(data)) … record(AES-256-GCM(empty)) = authenticated end
//! ```
//!
//! The handshake's messages ride with the tunnel's open request and answer, so it costs no
//! round trip of its own, and the technician's first bytes travel encrypted in the first
//! message (IK's 0-RTT payload). The prologue binds the handshake to the session and target the
//! relay was asked for. Transport records use the Noise counters as nonces (never reused; a
//! replayed, reordered, dropped or changed record fails to decrypt), rekey every
//! [`REKEY_EVERY`] records each way, and the stream's end is a record of its own, so the relay
//! cannot cut a stream short unnoticed. The first message carries the sender's clock: the agent
//! refuses one older or newer than [`MAX_CLOCK_SKEW_MS`] and remembers those it accepted until
//! they are that old ([`ReplayGuard`]), so a first message (and the bytes it carries to the
//! target) cannot be replayed.
//!
//! No I/O and no clock: bytes, the time and a random seed in; bytes and decisions out.

use std::{collections::HashMap, fmt, str::FromStr};

use base64::Engine as _;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use curve25519_dalek::montgomery::MontgomeryPoint;
use ring::aead;
use snow::{
    params::{CipherChoice, DHChoice, HashChoice},
    resolvers::{CryptoResolver, RingResolver},
    types::{Cipher, Dh, Hash, Random},
    HandshakeState,
};
use zeroize::Zeroizing;

/// The version of this scheme, named in the open request and bound into the prologue.
pub const VERSION: u8 = 1;
/// The Noise protocol: IK (the initiator knows the responder's key), X25519, AES-256-GCM, SHA-256.
pub const NOISE: &str = "Noise_IK_25519_AESGCM_SHA256";
/// Bytes of an X25519 key, public or secret.
pub const KEY_LEN: usize = 32;
/// Bytes of a record's length header.
pub const RECORD_HEADER: usize = 2;
/// The largest record body (Noise's message limit).
pub const MAX_RECORD: usize = 65535;
/// Bytes an AEAD tag adds to each record.
pub const TAG_LEN: usize = 16;
/// The most plaintext one transport record carries.
pub const MAX_PLAINTEXT: usize = MAX_RECORD - TAG_LEN;
/// Records sent (and received) with one key before both sides move to the next (Noise
/// `REKEY`): 2^16 full records are 4 GiB.
pub const REKEY_EVERY: u64 = 1 << 16;
/// How far the technician's clock may be from the agent's.
pub const MAX_CLOCK_SKEW_MS: u64 = 10 * 60 * 1000;
/// How many first messages the agent remembers at most (each for up to twice
/// [`MAX_CLOCK_SKEW_MS`]); when all are in use, new handshakes are refused until some expire.
pub const REPLAY_CAPACITY: usize = 16 * 1024;
/// One technician key may hold at most this share of [`ReplayGuard`]'s memory (a quarter): a
/// technician who opens tunnels in a loop is refused ([`E2eError::Busy`]) before the others.
pub const REPLAY_SHARE: usize = 4;
const TIMESTAMP_LEN: usize = 8;
/// The first message without its payload: `e`, encrypted `s` and the payload's tag.
const FIRST_OVERHEAD: usize = KEY_LEN + (KEY_LEN + TAG_LEN) + TAG_LEN;
/// The most bytes of the technician's first data the first message carries.
pub const MAX_EARLY_DATA: usize = MAX_RECORD - FIRST_OVERHEAD - TIMESTAMP_LEN;
/// The agent's answer: `e` and the empty payload's tag.
const REPLY_LEN: usize = KEY_LEN + TAG_LEN;

#[derive(Debug, thiserror::Error)]
pub enum E2eError {
    #[error("bad end-to-end key: {0}")]
    BadKey(&'static str),
    #[error("the end-to-end handshake failed (wrong key, or a message changed on the way)")]
    Handshake(#[source] snow::Error),
    #[error("malformed end-to-end handshake message: {0}")]
    Malformed(&'static str),
    #[error(
        "the technician's clock is {skew_s} s away from this machine's (at most {max_s} s allowed)"
    )]
    ClockSkew { skew_s: u64, max_s: u64 },
    #[error("this handshake was seen before (replayed)")]
    Replayed,
    #[error("too many tunnel handshakes lately; try again in a few minutes")]
    Busy,
    #[error("the technician's end-to-end key {0} is not one the session's grant names")]
    NotGranted(PublicKey),
    #[error("an encrypted record failed authentication (changed, replayed, reordered or dropped)")]
    Decrypt,
    #[error("the encrypted stream ended without its closing record (cut short on the way)")]
    Truncated,
    #[error("data after the encrypted stream's closing record")]
    AfterClose,
    #[error("the encrypted stream used up its nonces")]
    NonceExhausted,
}

/// An X25519 public key; shown and parsed as standard base64 (44 characters), as WireGuard's.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; KEY_LEN]);

impl PublicKey {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, E2eError> {
        let key: [u8; KEY_LEN] =
            bytes.try_into().map_err(|_| E2eError::BadKey("a key has 32 bytes"))?;
        Ok(Self(key))
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&base64::engine::general_purpose::STANDARD.encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = E2eError;

    fn from_str(s: &str) -> Result<Self, E2eError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .map_err(|_| E2eError::BadKey("not base64"))?;
        Self::from_bytes(&bytes)
    }
}

/// Whether `key` is one of the technicians' keys a grant names (`Grant::tech_keys`). Entries
/// that do not parse name nobody.
pub fn grant_names(tech_keys: &[String], key: &PublicKey) -> bool {
    tech_keys.iter().any(|k| k.parse::<PublicKey>().is_ok_and(|k| k == *key))
}

/// A static X25519 key pair: the agent's (one per machine) or a technician's (one per CLI
/// home). The secret is wiped when dropped and never printed.
pub struct StaticKey {
    secret: Zeroizing<[u8; KEY_LEN]>,
    public: PublicKey,
}

impl StaticKey {
    /// The key pair of a secret: 32 random bytes make a new one (X25519 clamps them itself).
    pub fn from_secret(secret: &[u8]) -> Result<Self, E2eError> {
        let secret: [u8; KEY_LEN] =
            secret.try_into().map_err(|_| E2eError::BadKey("a secret key has 32 bytes"))?;
        let public = PublicKey(X25519::public_of(&secret));
        Ok(Self { secret: Zeroizing::new(secret), public })
    }

    /// The secret, to store it (owner-only).
    pub fn secret(&self) -> &[u8; KEY_LEN] {
        &self.secret
    }

    pub fn public(&self) -> PublicKey {
        self.public
    }
}

impl fmt::Debug for StaticKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticKey").field("public", &self.public).finish_non_exhaustive()
    }
}

/// What a handshake is for: bound into the Noise prologue, so a handshake made for one
/// session's target fails anywhere else.
fn prologue(session: &str, target: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(32 + session.len() + target.len());
    p.extend_from_slice(b"fernwart-e2e");
    p.push(VERSION);
    for part in [session, target] {
        p.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
        p.extend_from_slice(part.as_bytes());
    }
    p
}

fn builder_params() -> snow::params::NoiseParams {
    // A constant that parses: checked by the tests.
    NOISE.parse().expect("NOISE names a protocol snow knows")
}

/// The technician's side of one tunnel's handshake.
pub struct Initiator {
    hs: HandshakeState,
}

impl Initiator {
    /// Starts a handshake with the agent whose key the technician holds. Appends the first
    /// message as one record to `out`, with the time and as much of `early` (the technician's
    /// first bytes) as it takes; returns the handshake and how many bytes of `early` it took.
    /// `seed` (32 random bytes) makes the ephemeral key.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        local: &StaticKey,
        agent: &PublicKey,
        session: &str,
        target: &str,
        seed: [u8; 32],
        now_ms: u64,
        early: &[u8],
        out: &mut BytesMut,
    ) -> Result<(Self, usize), E2eError> {
        let prologue = prologue(session, target);
        let mut hs = snow::Builder::with_resolver(builder_params(), Box::new(Resolver { seed }))
            .local_private_key(&local.secret[..])
            .and_then(|b| b.remote_public_key(agent.as_bytes()))
            .and_then(|b| b.prologue(&prologue))
            .and_then(|b| b.build_initiator())
            .map_err(E2eError::Handshake)?;
        let took = early.len().min(MAX_EARLY_DATA);
        let mut payload = Vec::with_capacity(TIMESTAMP_LEN + took);
        payload.extend_from_slice(&now_ms.to_be_bytes());
        payload.extend_from_slice(&early[..took]);
        let at = begin_record(out, FIRST_OVERHEAD + payload.len());
        let n = hs.write_message(&payload, &mut out[at..]).map_err(E2eError::Handshake)?;
        end_record(out, at, n);
        Ok((Self { hs }, took))
    }

    /// Reads the agent's answer (one record's body, see [`take_record`]) and completes the
    /// handshake.
    pub fn finish(mut self, reply: &[u8]) -> Result<Transport, E2eError> {
        if reply.len() != REPLY_LEN {
            return Err(E2eError::Malformed("the answer has the wrong length"));
        }
        let mut payload = [0u8; 0];
        self.hs.read_message(reply, &mut payload).map_err(E2eError::Handshake)?;
        let (i_to_r, r_to_i) = split(&mut self.hs)?;
        Ok(Transport { sealer: Sealer::new(i_to_r), opener: Opener::new(r_to_i) })
    }
}

/// What the agent learns from a tunnel's first message.
#[derive(Debug)]
pub struct FirstMessage {
    /// The technician's static key: the grant must name it.
    pub initiator: PublicKey,
    /// The technician's clock when it was sent, milliseconds since the Unix epoch.
    pub sent_ms: u64,
    /// The technician's first bytes, for the target.
    pub early: Vec<u8>,
}

/// The agent's side of one tunnel's handshake.
pub struct Responder {
    hs: HandshakeState,
}

impl Responder {
    /// Reads a tunnel's first message (one record's body). Refuses it if the technician's
    /// clock is too far from `now_ms` or `guard` has seen it before.
    pub fn accept(
        local: &StaticKey,
        session: &str,
        target: &str,
        seed: [u8; 32],
        msg: &[u8],
        now_ms: u64,
        guard: &mut ReplayGuard,
    ) -> Result<(Self, FirstMessage), E2eError> {
        Self::accept_inner(local, (session, target), seed, msg, now_ms, guard, None)
    }

    /// [`Responder::accept`] for a grant: a first message from a key that `tech_keys` does
    /// not name is refused before `guard` remembers it. (Remembered first, anyone with a
    /// session could fill the memory with made-up keys and lock every technician out.)
    #[allow(clippy::too_many_arguments)]
    pub fn accept_granted(
        local: &StaticKey,
        session: &str,
        target: &str,
        seed: [u8; 32],
        msg: &[u8],
        now_ms: u64,
        guard: &mut ReplayGuard,
        tech_keys: &[String],
    ) -> Result<(Self, FirstMessage), E2eError> {
        Self::accept_inner(local, (session, target), seed, msg, now_ms, guard, Some(tech_keys))
    }

    fn accept_inner(
        local: &StaticKey,
        (session, target): (&str, &str),
        seed: [u8; 32],
        msg: &[u8],
        now_ms: u64,
        guard: &mut ReplayGuard,
        tech_keys: Option<&[String]>,
    ) -> Result<(Self, FirstMessage), E2eError> {
        if msg.len() < FIRST_OVERHEAD + TIMESTAMP_LEN {
            return Err(E2eError::Malformed("the first message is too short"));
        }
        let prologue = prologue(session, target);
        let mut hs = snow::Builder::with_resolver(builder_params(), Box::new(Resolver { seed }))
            .local_private_key(&local.secret[..])
            .and_then(|b| b.prologue(&prologue))
            .and_then(|b| b.build_responder())
            .map_err(E2eError::Handshake)?;
        let mut payload = vec![0u8; msg.len()];
        let n = hs.read_message(msg, &mut payload).map_err(E2eError::Handshake)?;
        payload.truncate(n);
        let initiator = PublicKey::from_bytes(
            hs.get_remote_static().ok_or(E2eError::Malformed("no static key"))?,
        )?;
        let (stamp, early) = payload.split_at(TIMESTAMP_LEN);
        let sent_ms = u64::from_be_bytes(stamp.try_into().unwrap_or_default());
        let mut ephemeral = [0u8; KEY_LEN];
        ephemeral.copy_from_slice(&msg[..KEY_LEN]);
        if tech_keys.is_some_and(|keys| !grant_names(keys, &initiator)) {
            return Err(E2eError::NotGranted(initiator));
        }
        guard.admit(&initiator, ephemeral, sent_ms, now_ms)?;
        let early = early.to_vec();
        Ok((Self { hs }, FirstMessage { initiator, sent_ms, early }))
    }

    /// Appends the answer as one record to `out` and completes the handshake.
    pub fn reply(mut self, out: &mut BytesMut) -> Result<Transport, E2eError> {
        let at = begin_record(out, REPLY_LEN);
        let n = self.hs.write_message(&[], &mut out[at..]).map_err(E2eError::Handshake)?;
        end_record(out, at, n);
        let (i_to_r, r_to_i) = split(&mut self.hs)?;
        Ok(Transport { sealer: Sealer::new(r_to_i), opener: Opener::new(i_to_r) })
    }
}

/// Reserves a record of up to `max` body bytes at the end of `out`; returns where its body
/// starts.
fn begin_record(out: &mut BytesMut, max: usize) -> usize {
    out.reserve(RECORD_HEADER + max);
    out.put_u16(0);
    let at = out.len();
    out.resize(at + max, 0);
    at
}

/// Sets the length of the record begun at `at` to `n` and drops what was not used.
fn end_record(out: &mut BytesMut, at: usize, n: usize) {
    out.truncate(at + n);
    // n <= MAX_RECORD: the handshake messages are bounded above.
    let len = u16::try_from(n).unwrap_or(u16::MAX);
    out[at - RECORD_HEADER..at].copy_from_slice(&len.to_be_bytes());
}

/// The two directions' keys: initiator → responder, responder → initiator.
type SplitKeys = (Zeroizing<[u8; 32]>, Zeroizing<[u8; 32]>);

fn split(hs: &mut HandshakeState) -> Result<SplitKeys, E2eError> {
    if !hs.is_handshake_finished() {
        return Err(E2eError::Malformed("the handshake is not complete"));
    }
    let (a, b) = hs.dangerously_get_raw_split();
    Ok((Zeroizing::new(a), Zeroizing::new(b)))
}

/// Takes the first complete record's body off the front of `buf`; `None` while it is
/// incomplete (read more and call again). A record is at most [`MAX_RECORD`] bytes by its
/// header's size, so a caller that reads until this returns buffers at most that much more
/// than it read.
pub fn take_record(buf: &mut BytesMut) -> Option<BytesMut> {
    let len = usize::from(u16::from_be_bytes([*buf.first()?, *buf.get(1)?]));
    if buf.len() < RECORD_HEADER + len {
        return None;
    }
    let mut record = buf.split_to(RECORD_HEADER + len);
    record.advance(RECORD_HEADER);
    Some(record)
}

/// A completed handshake: one key each way.
pub struct Transport {
    pub sealer: Sealer,
    pub opener: Opener,
}

/// One direction's AEAD key and counter (Noise `CipherState`).
struct CipherState {
    key: aead::LessSafeKey,
    raw: Zeroizing<[u8; 32]>,
    nonce: u64,
}

impl CipherState {
    fn new(raw: Zeroizing<[u8; 32]>) -> Self {
        Self { key: aead_key(&raw), raw, nonce: 0 }
    }

    /// The nonce for the next record; the key moves on every [`REKEY_EVERY`] records.
    fn next(&mut self) -> Result<aead::Nonce, E2eError> {
        let n = self.nonce;
        // 2^64 - 1 is reserved for rekeying (Noise §11.3).
        if n == u64::MAX {
            return Err(E2eError::NonceExhausted);
        }
        self.nonce += 1;
        Ok(nonce(n))
    }

    /// Called after a record was sealed or opened with the nonce [`Self::next`] gave.
    fn after_record(&mut self) {
        if self.nonce.is_multiple_of(REKEY_EVERY) {
            self.rekey();
        }
    }

    /// Noise `REKEY`: the first 32 bytes of encrypting 32 zero bytes with nonce 2^64 - 1.
    fn rekey(&mut self) {
        let mut next = Zeroizing::new([0u8; 32]);
        // AES-GCM sealing only fails for inputs above 64 GiB.
        let _tag = self
            .key
            .seal_in_place_separate_tag(nonce(u64::MAX), aead::Aad::empty(), &mut next[..])
            .expect("sealing 32 bytes");
        self.key = aead_key(&next);
        self.raw = next;
    }
}

fn aead_key(raw: &[u8; 32]) -> aead::LessSafeKey {
    // A 32-byte key is what AES-256 takes.
    aead::LessSafeKey::new(aead::UnboundKey::new(&aead::AES_256_GCM, raw).expect("32-byte key"))
}

/// Noise's AES-GCM nonce: 4 zero bytes, then the counter big-endian.
fn nonce(n: u64) -> aead::Nonce {
    let mut bytes = [0u8; 12];
    bytes[4..].copy_from_slice(&n.to_be_bytes());
    aead::Nonce::assume_unique_for_key(bytes)
}

/// Encrypts one direction of a tunnel into records.
pub struct Sealer {
    cs: CipherState,
}

impl Sealer {
    fn new(key: Zeroizing<[u8; 32]>) -> Self {
        Self { cs: CipherState::new(key) }
    }

    /// The bytes [`Sealer::seal`] appends for `len` bytes of plaintext.
    pub fn sealed_len(len: usize) -> usize {
        len + len.div_ceil(MAX_PLAINTEXT) * (RECORD_HEADER + TAG_LEN)
    }

    /// The most plaintext whose records fill at most `room` bytes (for reads sized so that
    /// one read's records fit one link frame).
    pub fn plaintext_for(room: usize) -> usize {
        let per = RECORD_HEADER + MAX_RECORD;
        let full = room / per;
        let rest = (room % per).saturating_sub(RECORD_HEADER + TAG_LEN);
        full * MAX_PLAINTEXT + rest
    }

    /// Appends `plain` to `out` as records of at most [`MAX_PLAINTEXT`] bytes each, encrypted
    /// in place. Empty `plain` appends nothing.
    pub fn seal(&mut self, plain: &[u8], out: &mut BytesMut) -> Result<(), E2eError> {
        out.reserve(Self::sealed_len(plain.len()));
        for part in plain.chunks(MAX_PLAINTEXT) {
            self.record(part, out)?;
        }
        Ok(())
    }

    /// Appends the closing record: the stream ends here, and the peer knows it was not cut.
    pub fn close(&mut self, out: &mut BytesMut) -> Result<(), E2eError> {
        self.record(&[], out)
    }

    fn record(&mut self, plain: &[u8], out: &mut BytesMut) -> Result<(), E2eError> {
        let nonce = self.cs.next()?;
        // plain.len() <= MAX_PLAINTEXT, so the body fits the header.
        let len = u16::try_from(plain.len() + TAG_LEN).unwrap_or(u16::MAX);
        out.put_u16(len);
        let at = out.len();
        out.extend_from_slice(plain);
        let tag = self
            .cs
            .key
            .seal_in_place_separate_tag(nonce, aead::Aad::empty(), &mut out[at..])
            .map_err(|_| E2eError::Decrypt)?;
        out.extend_from_slice(tag.as_ref());
        self.cs.after_record();
        Ok(())
    }
}

/// What [`Opener::open_next`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Opened {
    /// Plaintext, in order.
    Data(Bytes),
    /// The peer's closing record: this direction ended as the peer meant it to.
    Closed,
}

/// Decrypts one direction of a tunnel from records that arrive in arbitrary pieces.
pub struct Opener {
    cs: CipherState,
    buf: BytesMut,
    closed: bool,
}

impl Opener {
    fn new(key: Zeroizing<[u8; 32]>) -> Self {
        Self { cs: CipherState::new(key), buf: BytesMut::new(), closed: false }
    }

    /// Adds bytes as they came off the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next record's plaintext, or `None` until a whole record has been pushed. Any error
    /// is final: the tunnel must close.
    pub fn open_next(&mut self) -> Result<Option<Opened>, E2eError> {
        if self.closed {
            return if self.buf.is_empty() { Ok(None) } else { Err(E2eError::AfterClose) };
        }
        let Some(mut record) = take_record(&mut self.buf) else {
            return Ok(None);
        };
        let nonce = self.cs.next()?;
        let len = self
            .cs
            .key
            .open_in_place(nonce, aead::Aad::empty(), &mut record[..])
            .map_err(|_| E2eError::Decrypt)?
            .len();
        self.cs.after_record();
        if len == 0 {
            self.closed = true;
            return if self.buf.is_empty() {
                Ok(Some(Opened::Closed))
            } else {
                Err(E2eError::AfterClose)
            };
        }
        record.truncate(len);
        Ok(Some(Opened::Data(record.freeze())))
    }

    /// The stream under the records ended: fine only after the closing record.
    pub fn end(&self) -> Result<(), E2eError> {
        if self.closed && self.buf.is_empty() {
            Ok(())
        } else {
            Err(E2eError::Truncated)
        }
    }

    /// Whether the peer's closing record has been read.
    pub fn is_closed(&self) -> bool {
        self.closed
    }
}

/// The agent's memory of first messages it accepted: each is refused a second time for as
/// long as its clock reading would still pass.
#[derive(Debug)]
pub struct ReplayGuard {
    /// Ephemeral key of each accepted first message → when it may be forgotten (agent ms)
    /// and the technician key that sent it.
    seen: HashMap<[u8; KEY_LEN], (u64, PublicKey)>,
    /// How many of `seen` each technician key holds.
    held: HashMap<PublicKey, usize>,
    capacity: usize,
}

impl Default for ReplayGuard {
    fn default() -> Self {
        Self::new(REPLAY_CAPACITY)
    }
}

impl ReplayGuard {
    pub fn new(capacity: usize) -> Self {
        Self { seen: HashMap::new(), held: HashMap::new(), capacity }
    }

    /// Forgets what the clock check would refuse anyway.
    fn prune(&mut self, now_ms: u64) {
        let held = &mut self.held;
        self.seen.retain(|_, (forget_at, by)| {
            let keep = *forget_at > now_ms;
            if !keep {
                if let Some(n) = held.get_mut(by) {
                    *n = n.saturating_sub(1);
                }
            }
            keep
        });
        held.retain(|_, n| *n > 0);
    }

    /// Accepts a first message from technician key `by`, sent at `sent_ms` (the technician's
    /// clock) with ephemeral key `ephemeral`, now (`now_ms`, the agent's clock), at most once;
    /// one key may hold at most 1/[`REPLAY_SHARE`] of the memory.
    pub fn admit(
        &mut self,
        by: &PublicKey,
        ephemeral: [u8; KEY_LEN],
        sent_ms: u64,
        now_ms: u64,
    ) -> Result<(), E2eError> {
        let skew = sent_ms.abs_diff(now_ms);
        if skew > MAX_CLOCK_SKEW_MS {
            return Err(E2eError::ClockSkew {
                skew_s: skew / 1000,
                max_s: MAX_CLOCK_SKEW_MS / 1000,
            });
        }
        if self.seen.contains_key(&ephemeral) {
            return Err(E2eError::Replayed);
        }
        let share = (self.capacity / REPLAY_SHARE).max(1);
        let full =
            |g: &Self| g.seen.len() >= g.capacity || g.held.get(by).copied().unwrap_or(0) >= share;
        if full(self) {
            self.prune(now_ms);
            if full(self) {
                return Err(E2eError::Busy);
            }
        }
        // A copy passes the clock check until the agent's clock reads sent + skew (and the
        // agent's clock may step back: keep it for the whole width of the window).
        self.seen.insert(ephemeral, (now_ms.max(sent_ms) + 2 * MAX_CLOCK_SKEW_MS, *by));
        *self.held.entry(*by).or_default() += 1;
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// Crypto for snow: X25519 from the default resolver, AES-GCM and SHA-256 from ring, and the
/// caller's seed for the ephemeral key (the caller draws it from the OS).
struct Resolver {
    seed: [u8; 32],
}

impl CryptoResolver for Resolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(SeededRng { seed: Zeroizing::new(self.seed), counter: 0 }))
    }

    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        match choice {
            DHChoice::Curve25519 => Some(Box::new(X25519::default())),
            _ => None,
        }
    }

    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        RingResolver.resolve_hash(choice)
    }

    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        RingResolver.resolve_cipher(choice)
    }
}

/// X25519 as snow's own (RFC 7748, the same bytes in and out), made faster for the handshake
/// on the connect path: public keys from the basepoint table; shared secrets through the
/// Edwards form, whose variable-base multiplication uses AVX2 where the CPU has it (points
/// that have no Edwards form, on the twist, take the Montgomery ladder); and a static key's
/// public half and its shared secret with a static peer (`ss`, the same for every tunnel
/// between one CLI home and one agent) remembered in a small table.
#[derive(Default)]
struct X25519 {
    secret: Zeroizing<[u8; KEY_LEN]>,
    public: [u8; KEY_LEN],
    /// Set with [`Dh::set`]: a static key (ephemeral keys come from [`Dh::generate`]).
    fixed: bool,
}

impl X25519 {
    fn public_of(secret: &[u8; KEY_LEN]) -> [u8; KEY_LEN] {
        MontgomeryPoint::mul_base_clamped(*secret).to_bytes()
    }

    fn shared(secret: &[u8; KEY_LEN], peer: &[u8; KEY_LEN]) -> [u8; KEY_LEN] {
        let point = MontgomeryPoint(*peer);
        match point.to_edwards(0) {
            // [k]P and [k](-P) have the same u: either sign gives X25519's answer.
            Some(p) => p.mul_clamped(*secret).to_montgomery().to_bytes(),
            None => point.mul_clamped(*secret).to_bytes(),
        }
    }
}

/// Static keys' public halves and static-static shared secrets, remembered (they are as
/// secret as the static keys, which the process holds anyway).
struct StaticCache {
    publics: Vec<(Zeroizing<[u8; KEY_LEN]>, [u8; KEY_LEN])>,
    /// Peers a static key met once: a shared secret is kept from the second time on, so that
    /// ephemeral peers (never seen twice) do not push out the static ones.
    met: std::collections::VecDeque<([u8; KEY_LEN], [u8; KEY_LEN])>,
    shared: std::collections::VecDeque<SharedSecret>,
}

/// (our public key, the peer's public key, the shared secret).
type SharedSecret = ([u8; KEY_LEN], [u8; KEY_LEN], Zeroizing<[u8; KEY_LEN]>);

const STATIC_CACHE: usize = 32;

fn static_cache() -> std::sync::MutexGuard<'static, StaticCache> {
    static CACHE: std::sync::Mutex<StaticCache> = std::sync::Mutex::new(StaticCache {
        publics: Vec::new(),
        met: std::collections::VecDeque::new(),
        shared: std::collections::VecDeque::new(),
    });
    CACHE.lock().unwrap_or_else(|p| p.into_inner())
}

impl Dh for X25519 {
    fn name(&self) -> &'static str {
        "25519"
    }

    fn pub_len(&self) -> usize {
        KEY_LEN
    }

    fn priv_len(&self) -> usize {
        KEY_LEN
    }

    fn set(&mut self, privkey: &[u8]) {
        let mut secret = Zeroizing::new([0u8; KEY_LEN]);
        let n = privkey.len().min(KEY_LEN);
        secret[..n].copy_from_slice(&privkey[..n]);
        let known = static_cache().publics.iter().find(|(s, _)| **s == *secret).map(|(_, p)| *p);
        self.public = match known {
            Some(p) => p,
            None => {
                let p = Self::public_of(&secret);
                let mut cache = static_cache();
                if cache.publics.len() >= STATIC_CACHE {
                    cache.publics.remove(0);
                }
                cache.publics.push((secret.clone(), p));
                p
            }
        };
        self.secret = secret;
        self.fixed = true;
    }

    fn generate(&mut self, rng: &mut dyn Random) -> Result<(), snow::Error> {
        rng.try_fill_bytes(&mut self.secret[..])?;
        self.public = Self::public_of(&self.secret);
        self.fixed = false;
        Ok(())
    }

    fn pubkey(&self) -> &[u8] {
        &self.public
    }

    fn privkey(&self) -> &[u8] {
        &self.secret[..]
    }

    fn dh(&self, pubkey: &[u8], out: &mut [u8]) -> Result<(), snow::Error> {
        let peer: [u8; KEY_LEN] =
            pubkey.get(..KEY_LEN).and_then(|p| p.try_into().ok()).ok_or(snow::Error::Dh)?;
        let out = out.get_mut(..KEY_LEN).ok_or(snow::Error::Dh)?;
        if !self.fixed {
            out.copy_from_slice(&Self::shared(&self.secret, &peer));
            return Ok(());
        }
        {
            let cache = static_cache();
            let hit = cache.shared.iter().find(|(me, p, _)| *me == self.public && *p == peer);
            if let Some((_, _, secret)) = hit {
                out.copy_from_slice(&secret[..]);
                return Ok(());
            }
        }
        let secret = Zeroizing::new(Self::shared(&self.secret, &peer));
        out.copy_from_slice(&secret[..]);
        let mut cache = static_cache();
        let pair = (self.public, peer);
        if let Some(at) = cache.met.iter().position(|m| *m == pair) {
            cache.met.remove(at);
            if cache.shared.len() >= STATIC_CACHE {
                cache.shared.pop_front();
            }
            cache.shared.push_back((self.public, peer, secret));
        } else {
            if cache.met.len() >= 4 * STATIC_CACHE {
                cache.met.pop_front();
            }
            cache.met.push_back(pair);
        }
        Ok(())
    }
}

/// Bytes from a seed: SHA-256(seed ‖ counter) blocks (a handshake draws one ephemeral key).
struct SeededRng {
    seed: Zeroizing<[u8; 32]>,
    counter: u64,
}

impl Random for SeededRng {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        for part in dest.chunks_mut(32) {
            let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
            ctx.update(&self.seed[..]);
            ctx.update(&self.counter.to_be_bytes());
            self.counter += 1;
            let block = ctx.finish();
            part.copy_from_slice(&block.as_ref()[..part.len()]);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
