//! The checks behind the `decode_frame` fuzz target.
//!
//! This file is shared: the fuzz target calls [`check_decode_frame`], and the integration test
//! `crates/proto/tests/corpus_replay.rs` includes this very file (`#[path]`) to replay the seed
//! corpus on stable, so both run exactly the same decode paths. Keep it free of anything but
//! `fernwart_proto`, `serde` and `std`.

use std::fmt::Debug;

use fernwart_proto::codec::{decode_payload, frame_len};
use fernwart_proto::{
    decode, encode, AgentToServer, ClientToServer, DecodeError, OpenReply, OpenRequest,
    RecordingReply, RecordingRequest, ServerToAgent, ServerToClient, StreamRequest, HEADER_LEN,
    MAX_FRAME_LEN,
};
use serde::{de::DeserializeOwned, Serialize};

/// Feeds `data` to every decoder entry point, for every message type, and checks what comes out.
///
/// Panics (which is what the fuzzer looks for) when a decoder panics or when its answers break
/// the codec's contract: `decode` and `frame_len` disagree, a decoded message cannot be encoded
/// again, or encoding and decoding it again gives another value.
pub fn check_decode_frame(data: &[u8]) {
    let header = frame_len(data);
    check_header(data, &header);

    check_type::<AgentToServer>(data, &header);
    check_type::<ServerToAgent>(data, &header);
    check_type::<ClientToServer>(data, &header);
    check_type::<ServerToClient>(data, &header);
    check_type::<OpenRequest>(data, &header);
    check_type::<OpenReply>(data, &header);
    check_type::<StreamRequest>(data, &header);
    check_type::<RecordingRequest>(data, &header);
    check_type::<RecordingReply>(data, &header);
}

/// `frame_len` on its own: a length is only reported when it is within the limit.
fn check_header(data: &[u8], header: &Result<Option<usize>, DecodeError>) {
    match header {
        Ok(None) => {
            assert!(data.len() < HEADER_LEN, "frame_len wants more than {HEADER_LEN} bytes")
        }
        Ok(Some(len)) => assert!((1..=MAX_FRAME_LEN).contains(len), "frame_len gave {len}"),
        Err(DecodeError::TooLarge { len, max }) => {
            assert_eq!(*max, MAX_FRAME_LEN);
            assert!(*len > MAX_FRAME_LEN, "refused a length of {len} as too large");
        }
        Err(DecodeError::Malformed(_)) => {}
    }
}

fn check_type<T>(data: &[u8], header: &Result<Option<usize>, DecodeError>)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    match decode::<T>(data) {
        Ok(Some((msg, used))) => {
            let Ok(Some(len)) = header else {
                panic!("decode succeeded although frame_len said {header:?}");
            };
            assert_eq!(used, HEADER_LEN + len, "decode consumed a different length");
            assert!(used <= data.len(), "decode consumed {used} of {} bytes", data.len());
            // The payload alone decodes to the same message through `decode_payload`.
            assert_eq!(decode_payload::<T>(&data[HEADER_LEN..used]).as_ref(), Ok(&msg));
            check_roundtrip(&msg);
        }
        Ok(None) => match header {
            Ok(None) => {}
            Ok(Some(len)) => assert!(
                data.len() < HEADER_LEN + len,
                "decode wants more although all {len} payload bytes are there"
            ),
            Err(e) => panic!("decode asked for more although frame_len said {e:?}"),
        },
        Err(e) => {
            if let Err(header_err) = header {
                assert_eq!(&e, header_err, "decode and frame_len refuse the header differently");
            } else {
                assert!(
                    matches!(e, DecodeError::Malformed(_)),
                    "a complete frame within the limit was refused with {e:?}"
                );
            }
        }
    }

    // `decode_payload` on its own, on everything after where a header would be: this reaches
    // the JSON decoder even when a mutation has made the length header disagree with the payload.
    let payload = data.get(HEADER_LEN..).unwrap_or_default();
    match decode_payload::<T>(payload) {
        Ok(msg) => check_roundtrip(&msg),
        Err(DecodeError::TooLarge { len, max }) => {
            assert_eq!(len, payload.len());
            assert_eq!(max, MAX_FRAME_LEN);
            assert!(len > MAX_FRAME_LEN);
        }
        Err(DecodeError::Malformed(_)) => {}
    }
}

/// A message the decoder accepted encodes again, and that frame decodes to the same message.
fn check_roundtrip<T>(msg: &T)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let frame = match encode(msg) {
        Ok(frame) => frame,
        Err(e) => panic!("decoded message does not encode again: {e}: {msg:?}"),
    };
    match decode::<T>(&frame) {
        Ok(Some((again, used))) => {
            assert_eq!(&again, msg, "re-encoded message decodes to another value");
            assert_eq!(used, frame.len(), "re-encoded frame not consumed whole");
        }
        other => panic!("re-encoded frame does not decode: {other:?} for {msg:?}"),
    }
}

/// Arbitrary bytes through the WebAuthn checks of `fernwart_proto::webauthn` (what a browser,
/// or a server in the agent's case, hands us): a registration, an assertion in its parts and
/// in its compact form, a key as written. None may panic; none may pass with a made-up key.
pub fn check_webauthn(data: &[u8]) {
    use fernwart_proto::webauthn::{
        client_data_challenge, verify_assertion, verify_registration, Assertion, Es256Key, Expect,
    };
    let mut point = [0x11u8; 65];
    point[0] = 0x04;
    let Ok(key) = Es256Key::new("console.example", point) else { return };
    let expect = Expect {
        rp_id: "console.example",
        origin: Some("https://console.example"),
        challenge: b"challenge",
        user_verified: false,
    };
    let cut = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let (a, b) = data.split_at(cut);
    let _ = verify_registration(data, a, &expect);
    let _ = verify_registration(b, a, &expect);
    let _ = client_data_challenge(data);
    let asr = Assertion {
        authenticator_data: b.to_vec(),
        client_data_json: a.to_vec(),
        signature: data.iter().take(72).copied().collect(),
        credential_id: vec![],
    };
    assert!(
        verify_assertion(&key, &asr, &expect).is_err(),
        "an assertion passed with a made-up key"
    );
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = Assertion::from_compact(s);
        let _ = Es256Key::parse(s);
    }
}
