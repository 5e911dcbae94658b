//! WebAuthn (FIDO2) security keys, free of I/O: the checks of a registration (attestation
//! `none`) and of an assertion with an ES256 (ECDSA P-256, SHA-256) credential.
//!
//! The server uses them for console logins and key registration; the agent uses
//! [`verify_assertion`] for approvals signed in the browser (issue 12, item 4): the approver's
//! security key signs, as a WebAuthn assertion, a challenge that is the SHA-256 of the grant's
//! canonical bytes ([`crate::approval::GrantFields::to_bytes`]). The agent knows neither the
//! console's origin nor the login: it checks the challenge, the relying party (the hash of its
//! id), the user-present flag and the signature; that is all a relay cannot forge.
//!
//! Signatures are checked with `ring` (already in every binary through rustls, and built for the
//! agent's aarch64-musl and the CLI's Windows targets). CBOR is decoded here, only the small part
//! WebAuthn needs: definite lengths, at most [`MAX_DEPTH`] levels and [`MAX_ITEMS`] entries.

use std::fmt;

use base64::{engine::general_purpose::STANDARD, engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use ring::signature;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The most bytes of authenticator data taken (extensions included).
pub const MAX_AUTH_DATA: usize = 2048;
/// The most bytes of `clientDataJSON` taken.
pub const MAX_CLIENT_DATA: usize = 2048;
/// The most bytes of an attestation object taken.
pub const MAX_ATTESTATION: usize = 4096;
/// The longest credential id (the WebAuthn limit).
pub const MAX_CREDENTIAL_ID: usize = 1023;
/// The longest DER signature of P-256 is 72 bytes.
pub const MAX_SIGNATURE: usize = 80;
/// The longest relying party id (a DNS name).
pub const MAX_RP_ID: usize = 253;
/// CBOR nesting taken.
pub const MAX_DEPTH: usize = 8;
/// CBOR entries of one map or array taken.
pub const MAX_ITEMS: usize = 64;

/// How an ES256 key is written: `es256:` RP-ID `:` and the 65 bytes of the uncompressed point
/// in base64.
pub const KEY_PREFIX: &str = "es256:";

const FLAG_UP: u8 = 0x01;
const FLAG_UV: u8 = 0x04;
const FLAG_AT: u8 = 0x40;
const FLAG_ED: u8 = 0x80;

/// Why WebAuthn data is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("{0} is too long")]
    TooLong(&'static str),
    #[error("malformed {0}")]
    Malformed(&'static str),
    #[error("the client data is not of type {expected}")]
    WrongType { expected: &'static str },
    #[error("the client data's challenge is not the one asked for")]
    WrongChallenge,
    #[error("the client data comes from origin {0:?}, not this console")]
    WrongOrigin(String),
    #[error("the authenticator data is for another relying party")]
    WrongRp,
    #[error("the authenticator did not see the user present")]
    NotPresent,
    #[error("the authenticator did not verify the user (PIN or biometrics)")]
    NotVerified,
    #[error("the attestation format {0:?} is not taken (only none)")]
    Attestation(String),
    #[error("the credential's key is not an ES256 (P-256) key")]
    KeyType,
    #[error("the signature does not verify with the credential's key")]
    BadSignature,
}

/// What a ceremony must show.
#[derive(Debug, Clone, Copy)]
pub struct Expect<'a> {
    /// The relying party id (the console's host name).
    pub rp_id: &'a str,
    /// The origin the browser must report; `None`: not checked (the agent does not know it).
    pub origin: Option<&'a str>,
    /// The challenge as bytes.
    pub challenge: &'a [u8],
    /// The user verified flag must be set (PIN or biometrics), not only user present.
    pub user_verified: bool,
}

/// An ES256 public key of a relying party: what the agent's `[trust] approvers` pins.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Es256Key {
    rp_id: String,
    point: [u8; 65],
}

impl Es256Key {
    pub fn new(rp_id: &str, point: [u8; 65]) -> Result<Self, Error> {
        if !valid_rp_id(rp_id) {
            return Err(Error::Malformed("relying party id"));
        }
        if point[0] != 0x04 {
            return Err(Error::KeyType);
        }
        Ok(Self { rp_id: rp_id.to_owned(), point })
    }

    pub fn rp_id(&self) -> &str {
        &self.rp_id
    }

    /// The uncompressed point (0x04, x, y).
    pub fn point(&self) -> &[u8; 65] {
        &self.point
    }

    /// `SHA256:` and the SHA-256 of the point in base64 without padding.
    pub fn fingerprint(&self) -> String {
        format!(
            "SHA256:{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(Sha256::digest(self.point))
        )
    }

    /// Parses `es256:RPID:BASE64`.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let rest = s.trim().strip_prefix(KEY_PREFIX).ok_or(Error::Malformed("ES256 key"))?;
        let (rp, b64) = rest.split_once(':').ok_or(Error::Malformed("ES256 key"))?;
        let bytes = STANDARD.decode(b64).map_err(|_| Error::Malformed("ES256 key"))?;
        let point = <[u8; 65]>::try_from(bytes.as_slice()).map_err(|_| Error::KeyType)?;
        Self::new(rp, point)
    }
}

impl fmt::Display for Es256Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{KEY_PREFIX}{}:{}", self.rp_id, STANDARD.encode(self.point))
    }
}

impl fmt::Debug for Es256Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Es256Key({}, {})", self.rp_id, self.fingerprint())
    }
}

fn valid_rp_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_RP_ID
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
}

/// A credential as a registration made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub credential_id: Vec<u8>,
    pub key: Es256Key,
    pub sign_count: u32,
    pub user_verified: bool,
}

/// Checks a registration (`navigator.credentials.create`): the client data (type
/// `webauthn.create`, challenge, origin), attestation format `none`, the relying party, the
/// flags, and an ES256 credential key.
pub fn verify_registration(
    attestation_object: &[u8],
    client_data_json: &[u8],
    expect: &Expect<'_>,
) -> Result<Registration, Error> {
    if attestation_object.len() > MAX_ATTESTATION {
        return Err(Error::TooLong("attestation object"));
    }
    check_client_data(client_data_json, "webauthn.create", expect)?;
    let mut r = attestation_object;
    let obj = item(&mut r, 0)?;
    if !r.is_empty() {
        return Err(Error::Malformed("attestation object (trailing bytes)"));
    }
    let Cbor::Map(entries) = obj else { return Err(Error::Malformed("attestation object")) };
    let (mut fmt, mut stmt_empty, mut auth) = (None, false, None);
    for (k, v) in entries {
        match (k, v) {
            (Cbor::Text("fmt"), Cbor::Text(f)) => fmt = Some(f),
            (Cbor::Text("attStmt"), Cbor::Map(m)) => stmt_empty = m.is_empty(),
            (Cbor::Text("authData"), Cbor::Bytes(b)) => auth = Some(b),
            _ => {}
        }
    }
    match fmt {
        Some("none") if stmt_empty => {}
        Some(f) => return Err(Error::Attestation(f.chars().take(32).collect())),
        None => return Err(Error::Malformed("attestation object (no fmt)")),
    }
    let auth = auth.ok_or(Error::Malformed("attestation object (no authData)"))?;
    let data = AuthData::parse(auth)?;
    data.check(expect)?;
    let (credential_id, point) =
        data.attested.ok_or(Error::Malformed("authenticator data (no credential)"))?;
    Ok(Registration {
        credential_id: credential_id.to_vec(),
        key: Es256Key::new(expect.rp_id, point)?,
        sign_count: data.sign_count,
        user_verified: data.flags & FLAG_UV != 0,
    })
}

/// An assertion (`navigator.credentials.get`) as it is carried and stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assertion {
    pub authenticator_data: Vec<u8>,
    pub client_data_json: Vec<u8>,
    /// ECDSA, DER.
    pub signature: Vec<u8>,
    pub credential_id: Vec<u8>,
}

impl Assertion {
    /// The four parts in base64url without padding, joined by `.`: how an approval's
    /// `signature` carries it.
    pub fn to_compact(&self) -> String {
        [&self.authenticator_data, &self.client_data_json, &self.signature, &self.credential_id]
            .map(|p| URL_SAFE_NO_PAD.encode(p))
            .join(".")
    }

    pub fn from_compact(s: &str) -> Result<Self, Error> {
        if s.len() > 2 * (MAX_AUTH_DATA + MAX_CLIENT_DATA + MAX_SIGNATURE + MAX_CREDENTIAL_ID) {
            return Err(Error::TooLong("assertion"));
        }
        let mut parts = s.trim().split('.');
        let mut next = |what| {
            let p = parts.next().ok_or(Error::Malformed(what))?;
            URL_SAFE_NO_PAD.decode(p).map_err(|_| Error::Malformed(what))
        };
        let a = Self {
            authenticator_data: next("authenticator data")?,
            client_data_json: next("client data")?,
            signature: next("signature")?,
            credential_id: next("credential id")?,
        };
        if parts.next().is_some() {
            return Err(Error::Malformed("assertion (trailing parts)"));
        }
        a.check_sizes()?;
        Ok(a)
    }

    pub fn check_sizes(&self) -> Result<(), Error> {
        if self.authenticator_data.len() > MAX_AUTH_DATA {
            return Err(Error::TooLong("authenticator data"));
        }
        if self.client_data_json.len() > MAX_CLIENT_DATA {
            return Err(Error::TooLong("client data"));
        }
        if self.signature.len() > MAX_SIGNATURE {
            return Err(Error::TooLong("signature"));
        }
        if self.credential_id.len() > MAX_CREDENTIAL_ID {
            return Err(Error::TooLong("credential id"));
        }
        Ok(())
    }
}

/// What a good assertion showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asserted {
    pub sign_count: u32,
    pub user_verified: bool,
}

/// Checks an assertion by `key`: the client data (type `webauthn.get`, challenge, origin if
/// expected), the relying party, the flags, and the signature over the authenticator data and
/// the client data's hash. The signature counter is the caller's to compare ([`counter_ok`]).
pub fn verify_assertion(
    key: &Es256Key,
    a: &Assertion,
    expect: &Expect<'_>,
) -> Result<Asserted, Error> {
    a.check_sizes()?;
    if key.rp_id != expect.rp_id {
        return Err(Error::WrongRp);
    }
    check_client_data(&a.client_data_json, "webauthn.get", expect)?;
    let data = AuthData::parse(&a.authenticator_data)?;
    data.check(expect)?;
    let mut signed = Vec::with_capacity(a.authenticator_data.len() + 32);
    signed.extend_from_slice(&a.authenticator_data);
    signed.extend_from_slice(&Sha256::digest(&a.client_data_json));
    signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, &key.point[..])
        .verify(&signed, &a.signature)
        .map_err(|_| Error::BadSignature)?;
    Ok(Asserted { sign_count: data.sign_count, user_verified: data.flags & FLAG_UV != 0 })
}

/// Whether a signature counter `new` may follow `stored`: it must grow, unless the
/// authenticator keeps none (both zero). A counter that does not grow is a sign of a cloned
/// key.
pub fn counter_ok(stored: u32, new: u32) -> bool {
    (stored == 0 && new == 0) || new > stored
}

/// The challenge of an approval signed in the browser: the SHA-256 of the grant's bytes.
pub fn grant_challenge(grant_bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(grant_bytes).into()
}

// ------------------------------------------------------------------ client data

/// The challenge a client data names (base64url decoded), to find which ceremony it answers;
/// it is checked again in [`verify_registration`] and [`verify_assertion`].
pub fn client_data_challenge(json: &[u8]) -> Result<Vec<u8>, Error> {
    if json.len() > MAX_CLIENT_DATA {
        return Err(Error::TooLong("client data"));
    }
    let cd: ClientData =
        serde_json::from_slice(json).map_err(|_| Error::Malformed("client data"))?;
    URL_SAFE_NO_PAD.decode(&cd.challenge).map_err(|_| Error::Malformed("client data challenge"))
}

/// Owned strings: a browser may escape characters in them (JSON allows `\/`).
#[derive(Deserialize)]
struct ClientData {
    #[serde(rename = "type")]
    kind: String,
    challenge: String,
    origin: String,
    #[serde(rename = "crossOrigin", default)]
    cross_origin: bool,
}

fn check_client_data(json: &[u8], kind: &'static str, expect: &Expect<'_>) -> Result<(), Error> {
    if json.len() > MAX_CLIENT_DATA {
        return Err(Error::TooLong("client data"));
    }
    let cd: ClientData =
        serde_json::from_slice(json).map_err(|_| Error::Malformed("client data"))?;
    if cd.kind != kind {
        return Err(Error::WrongType { expected: kind });
    }
    let challenge = URL_SAFE_NO_PAD
        .decode(cd.challenge)
        .map_err(|_| Error::Malformed("client data challenge"))?;
    // The challenge is public (a grant's hash, or sent to the browser): plain comparison.
    if challenge != expect.challenge {
        return Err(Error::WrongChallenge);
    }
    if let Some(origin) = expect.origin {
        if cd.origin != origin || cd.cross_origin {
            return Err(Error::WrongOrigin(cd.origin.chars().take(100).collect()));
        }
    }
    Ok(())
}

// ------------------------------------------------------------------ authenticator data

struct AuthData<'a> {
    rp_id_hash: &'a [u8],
    flags: u8,
    sign_count: u32,
    attested: Option<(&'a [u8], [u8; 65])>,
}

impl<'a> AuthData<'a> {
    fn parse(b: &'a [u8]) -> Result<Self, Error> {
        if b.len() > MAX_AUTH_DATA {
            return Err(Error::TooLong("authenticator data"));
        }
        if b.len() < 37 {
            return Err(Error::Malformed("authenticator data (short)"));
        }
        let (rp_id_hash, rest) = b.split_at(32);
        let flags = rest[0];
        let sign_count = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]);
        let mut r = &rest[5..];
        let attested = if flags & FLAG_AT != 0 {
            if r.len() < 18 {
                return Err(Error::Malformed("attested credential data"));
            }
            let len = usize::from(u16::from_be_bytes([r[16], r[17]]));
            r = &r[18..];
            if len == 0 || len > MAX_CREDENTIAL_ID || r.len() < len {
                return Err(Error::Malformed("credential id"));
            }
            let (id, rest) = r.split_at(len);
            r = rest;
            let cose = item(&mut r, 0)?;
            Some((id, cose_es256(&cose)?))
        } else {
            None
        };
        if flags & FLAG_ED != 0 {
            let _extensions = item(&mut r, 0)?;
        }
        if !r.is_empty() {
            return Err(Error::Malformed("authenticator data (trailing bytes)"));
        }
        Ok(Self { rp_id_hash, flags, sign_count, attested })
    }

    fn check(&self, expect: &Expect<'_>) -> Result<(), Error> {
        // Public data: plain comparison.
        if self.rp_id_hash != Sha256::digest(expect.rp_id.as_bytes()).as_slice() {
            return Err(Error::WrongRp);
        }
        if self.flags & FLAG_UP == 0 {
            return Err(Error::NotPresent);
        }
        if expect.user_verified && self.flags & FLAG_UV == 0 {
            return Err(Error::NotVerified);
        }
        Ok(())
    }
}

/// The uncompressed point of a COSE EC2 key: kty 2, alg -7 (ES256), crv 1 (P-256).
fn cose_es256(key: &Cbor<'_>) -> Result<[u8; 65], Error> {
    let Cbor::Map(entries) = key else { return Err(Error::Malformed("credential key")) };
    let (mut kty, mut alg, mut crv, mut x, mut y) = (None, None, None, None, None);
    for (k, v) in entries {
        match (k, v) {
            (Cbor::Int(1), Cbor::Int(v)) => kty = Some(*v),
            (Cbor::Int(3), Cbor::Int(v)) => alg = Some(*v),
            (Cbor::Int(-1), Cbor::Int(v)) => crv = Some(*v),
            (Cbor::Int(-2), Cbor::Bytes(b)) => x = Some(*b),
            (Cbor::Int(-3), Cbor::Bytes(b)) => y = Some(*b),
            _ => {}
        }
    }
    match (kty, alg, crv, x, y) {
        (Some(2), Some(-7), Some(1), Some(x), Some(y)) if x.len() == 32 && y.len() == 32 => {
            let mut p = [0u8; 65];
            p[0] = 0x04;
            p[1..33].copy_from_slice(x);
            p[33..].copy_from_slice(y);
            Ok(p)
        }
        _ => Err(Error::KeyType),
    }
}

// ------------------------------------------------------------------ CBOR (the part needed)

#[derive(Debug, PartialEq)]
enum Cbor<'a> {
    Int(i64),
    Bytes(&'a [u8]),
    Text(&'a str),
    Array(Vec<Cbor<'a>>),
    Map(Vec<(Cbor<'a>, Cbor<'a>)>),
    Simple(u8),
}

fn take<'a>(r: &mut &'a [u8], n: usize) -> Result<&'a [u8], Error> {
    if r.len() < n {
        return Err(Error::Malformed("CBOR (truncated)"));
    }
    let (head, tail) = r.split_at(n);
    *r = tail;
    Ok(head)
}

fn item<'a>(r: &mut &'a [u8], depth: usize) -> Result<Cbor<'a>, Error> {
    if depth > MAX_DEPTH {
        return Err(Error::Malformed("CBOR (nested too deep)"));
    }
    let first = take(r, 1)?[0];
    let (major, info) = (first >> 5, first & 0x1f);
    let arg: u64 = match info {
        0..=23 => u64::from(info),
        24 => u64::from(take(r, 1)?[0]),
        25 => {
            let b = take(r, 2)?;
            u64::from(u16::from_be_bytes([b[0], b[1]]))
        }
        26 => {
            let b = take(r, 4)?;
            u64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        }
        27 => {
            let b = take(r, 8)?;
            u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
        }
        // Indefinite lengths and reserved values: not in WebAuthn's canonical CBOR.
        _ => return Err(Error::Malformed("CBOR (indefinite or reserved length)")),
    };
    let len = |arg: u64| usize::try_from(arg).map_err(|_| Error::Malformed("CBOR (length)"));
    match major {
        0 => i64::try_from(arg).map(Cbor::Int).map_err(|_| Error::Malformed("CBOR (integer)")),
        1 => i64::try_from(arg)
            .map(|n| Cbor::Int(-1 - n))
            .map_err(|_| Error::Malformed("CBOR (integer)")),
        2 => Ok(Cbor::Bytes(take(r, len(arg)?)?)),
        3 => std::str::from_utf8(take(r, len(arg)?)?)
            .map(Cbor::Text)
            .map_err(|_| Error::Malformed("CBOR (text)")),
        4 | 5 => {
            let n = len(arg)?;
            if n > MAX_ITEMS {
                return Err(Error::Malformed("CBOR (too many entries)"));
            }
            if major == 4 {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(item(r, depth + 1)?);
                }
                Ok(Cbor::Array(v))
            } else {
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    let k = item(r, depth + 1)?;
                    v.push((k, item(r, depth + 1)?));
                }
                Ok(Cbor::Map(v))
            }
        }
        // Tags are not used in WebAuthn's structures.
        6 => Err(Error::Malformed("CBOR (tag)")),
        _ => match info {
            // false, true, null, undefined
            20..=23 => Ok(Cbor::Simple(info)),
            _ => Err(Error::Malformed("CBOR (float or simple value)")),
        },
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use proptest::prelude::*;
    use ring::{
        rand::SystemRandom,
        signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING},
    };

    use super::*;

    pub(crate) const RP: &str = "console.example";
    pub(crate) const ORIGIN: &str = "https://console.example";

    /// A software authenticator: a P-256 key and a counter.
    pub(crate) struct Token {
        pair: EcdsaKeyPair,
        rng: SystemRandom,
        pub id: Vec<u8>,
    }

    impl Token {
        pub fn new() -> Self {
            let rng = SystemRandom::new();
            let der = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
            let pair =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, der.as_ref(), &rng)
                    .unwrap();
            Self { pair, rng, id: vec![7; 16] }
        }

        pub fn key(&self, rp: &str) -> Es256Key {
            let point = <[u8; 65]>::try_from(self.pair.public_key().as_ref()).unwrap();
            Es256Key::new(rp, point).unwrap()
        }

        fn cose(&self) -> Vec<u8> {
            let p = self.pair.public_key().as_ref();
            let mut c = vec![0xa5, 0x01, 0x02, 0x03, 0x26, 0x20, 0x01, 0x21, 0x58, 0x20];
            c.extend_from_slice(&p[1..33]);
            c.extend_from_slice(&[0x22, 0x58, 0x20]);
            c.extend_from_slice(&p[33..]);
            c
        }

        fn client_data(kind: &str, challenge: &[u8], origin: &str) -> Vec<u8> {
            format!(
                r#"{{"type":"{kind}","challenge":"{}","origin":"{origin}","crossOrigin":false}}"#,
                URL_SAFE_NO_PAD.encode(challenge)
            )
            .into_bytes()
        }

        pub fn register(&self, rp: &str, challenge: &[u8]) -> (Vec<u8>, Vec<u8>) {
            let mut auth = Sha256::digest(rp.as_bytes()).to_vec();
            auth.push(FLAG_UP | FLAG_UV | FLAG_AT);
            auth.extend_from_slice(&0u32.to_be_bytes());
            auth.extend_from_slice(&[0; 16]);
            auth.extend_from_slice(&(self.id.len() as u16).to_be_bytes());
            auth.extend_from_slice(&self.id);
            auth.extend_from_slice(&self.cose());
            // {"fmt": "none", "attStmt": {}, "authData": h'...'}
            let mut obj = vec![0xa3, 0x63];
            obj.extend_from_slice(b"fmt");
            obj.push(0x64);
            obj.extend_from_slice(b"none");
            obj.push(0x67);
            obj.extend_from_slice(b"attStmt");
            obj.push(0xa0);
            obj.push(0x68);
            obj.extend_from_slice(b"authData");
            obj.extend_from_slice(&[0x59, (auth.len() >> 8) as u8, auth.len() as u8]);
            obj.extend_from_slice(&auth);
            (obj, Self::client_data("webauthn.create", challenge, ORIGIN))
        }

        pub fn assert(&self, rp: &str, challenge: &[u8], count: u32, flags: u8) -> Assertion {
            let mut auth = Sha256::digest(rp.as_bytes()).to_vec();
            auth.push(flags);
            auth.extend_from_slice(&count.to_be_bytes());
            let client = Self::client_data("webauthn.get", challenge, ORIGIN);
            let mut signed = auth.clone();
            signed.extend_from_slice(&Sha256::digest(&client));
            let sig = self.pair.sign(&self.rng, &signed).unwrap().as_ref().to_vec();
            Assertion {
                authenticator_data: auth,
                client_data_json: client,
                signature: sig,
                credential_id: self.id.clone(),
            }
        }
    }

    fn expect<'a>(challenge: &'a [u8]) -> Expect<'a> {
        Expect { rp_id: RP, origin: Some(ORIGIN), challenge, user_verified: true }
    }

    #[test]
    fn a_registration_yields_the_credential() {
        let t = Token::new();
        let (obj, client) = t.register(RP, b"c1");
        let reg = verify_registration(&obj, &client, &expect(b"c1")).unwrap();
        assert_eq!(reg.key, t.key(RP));
        assert_eq!(reg.credential_id, t.id);
        assert!(reg.user_verified);
        assert_eq!(verify_registration(&obj, &client, &expect(b"c2")), Err(Error::WrongChallenge));
        let other = Expect { rp_id: "other.example", ..expect(b"c1") };
        assert_eq!(verify_registration(&obj, &client, &other), Err(Error::WrongRp));
        let origin = Expect { origin: Some("https://evil.example"), ..expect(b"c1") };
        assert!(matches!(verify_registration(&obj, &client, &origin), Err(Error::WrongOrigin(_))));
        // An assertion's client data does not register.
        let a = t.assert(RP, b"c1", 1, FLAG_UP);
        assert!(matches!(
            verify_registration(&obj, &a.client_data_json, &expect(b"c1")),
            Err(Error::WrongType { .. })
        ));
    }

    #[test]
    fn a_good_assertion_verifies() {
        let t = Token::new();
        let a = t.assert(RP, b"challenge", 5, FLAG_UP | FLAG_UV);
        let ok = verify_assertion(&t.key(RP), &a, &expect(b"challenge")).unwrap();
        assert_eq!(ok, Asserted { sign_count: 5, user_verified: true });
        // Through its compact form, as an approval carries it.
        let back = Assertion::from_compact(&a.to_compact()).unwrap();
        assert_eq!(back, a);
    }

    #[test]
    fn bad_assertions_are_refused() {
        let t = Token::new();
        let key = t.key(RP);
        let good = t.assert(RP, b"challenge", 5, FLAG_UP | FLAG_UV);
        assert_eq!(verify_assertion(&key, &good, &expect(b"other")), Err(Error::WrongChallenge));
        // Made for another relying party (a phishing site's).
        let rp = t.assert("evil.example", b"challenge", 5, FLAG_UP | FLAG_UV);
        assert_eq!(verify_assertion(&key, &rp, &expect(b"challenge")), Err(Error::WrongRp));
        // A key pinned for another relying party.
        let other = Expect { rp_id: "other.example", ..expect(b"challenge") };
        assert_eq!(verify_assertion(&key, &good, &other), Err(Error::WrongRp));
        // Not present; present but not verified where verification is asked.
        let absent = t.assert(RP, b"challenge", 5, FLAG_UV);
        assert_eq!(verify_assertion(&key, &absent, &expect(b"challenge")), Err(Error::NotPresent));
        let unverified = t.assert(RP, b"challenge", 5, FLAG_UP);
        assert_eq!(
            verify_assertion(&key, &unverified, &expect(b"challenge")),
            Err(Error::NotVerified)
        );
        let lax = Expect { user_verified: false, origin: None, ..expect(b"challenge") };
        assert!(verify_assertion(&key, &unverified, &lax).is_ok());
        // Another key.
        let stranger = Token::new().key(RP);
        assert_eq!(
            verify_assertion(&stranger, &good, &expect(b"challenge")),
            Err(Error::BadSignature)
        );
        // Every flipped byte of the signed parts is refused.
        for i in 0..good.authenticator_data.len() {
            let mut bad = good.clone();
            bad.authenticator_data[i] ^= 0x01;
            assert!(verify_assertion(&key, &bad, &lax).is_err(), "auth data byte {i}");
        }
        for i in 0..good.client_data_json.len() {
            let mut bad = good.clone();
            bad.client_data_json[i] ^= 0x20;
            assert!(verify_assertion(&key, &bad, &lax).is_err(), "client data byte {i}");
        }
        for i in 0..good.signature.len() {
            let mut bad = good.clone();
            bad.signature[i] ^= 0x01;
            assert!(verify_assertion(&key, &bad, &lax).is_err(), "signature byte {i}");
        }
    }

    #[test]
    fn client_data_with_escapes_is_read() {
        let json =
            br#"{"type":"webauthn.get","challenge":"Yw","origin":"https:\/\/console.example"}"#;
        assert_eq!(client_data_challenge(json), Ok(b"c".to_vec()));
        let e = Expect { rp_id: RP, origin: Some(ORIGIN), challenge: b"c", user_verified: false };
        assert_eq!(check_client_data(json, "webauthn.get", &e), Ok(()));
    }

    #[test]
    fn counters_must_grow() {
        assert!(counter_ok(0, 0));
        assert!(counter_ok(4, 5));
        assert!(!counter_ok(5, 5));
        assert!(!counter_ok(5, 4));
        assert!(!counter_ok(5, 0));
    }

    #[test]
    fn keys_round_trip_and_malformed_ones_are_refused() {
        let k = Token::new().key(RP);
        assert_eq!(Es256Key::parse(&k.to_string()), Ok(k.clone()));
        assert!(k.to_string().starts_with("es256:console.example:"));
        for bad in ["", "es256:", "es256:console.example", "es256:UPPER:AAAA", "ed25519:abc"] {
            assert!(Es256Key::parse(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn random_input_never_panics(
            a in proptest::collection::vec(any::<u8>(), 0..400),
            b in proptest::collection::vec(any::<u8>(), 0..200),
            c in proptest::collection::vec(any::<u8>(), 0..80),
            s in ".{0,300}",
        ) {
            let key = Token::new().key(RP);
            let e = Expect { rp_id: RP, origin: Some(ORIGIN), challenge: b"x", user_verified: false };
            let _ = verify_registration(&a, &b, &e);
            let asr = Assertion { authenticator_data: a.clone(), client_data_json: b, signature: c, credential_id: vec![] };
            let _ = verify_assertion(&key, &asr, &e);
            let _ = Assertion::from_compact(&s);
            let _ = Es256Key::parse(&s);
            let mut r = a.as_slice();
            let _ = item(&mut r, 0);
        }

        #[test]
        fn mutated_registrations_never_panic(i in 0usize..400, x in any::<u8>()) {
            let t = Token::new();
            let (mut obj, client) = t.register(RP, b"c");
            let n = obj.len();
            obj[i % n] ^= x;
            let _ = verify_registration(&obj, &client, &expect(b"c"));
        }
    }
}
