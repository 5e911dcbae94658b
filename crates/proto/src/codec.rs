//! Length-prefixed JSON frames, decoded from a borrowed slice.

use serde::{de::DeserializeOwned, Serialize};

/// Bytes in a frame header (the big-endian payload length).
pub const HEADER_LEN: usize = 4;
/// The largest payload any frame may carry. Control messages are small; anything bigger is hostile.
pub const MAX_FRAME_LEN: usize = 64 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("malformed frame: {0}")]
    Malformed(String),
}

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("message of {len} bytes exceeds the frame limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("message could not be serialized")]
    Serialize(#[source] serde_json::Error),
}

/// Encodes one message as a frame.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, EncodeError> {
    let payload = serde_json::to_vec(msg).map_err(EncodeError::Serialize)?;
    if payload.len() > MAX_FRAME_LEN {
        return Err(EncodeError::TooLarge { len: payload.len(), max: MAX_FRAME_LEN });
    }
    let len = u32::try_from(payload.len())
        .map_err(|_| EncodeError::TooLarge { len: payload.len(), max: MAX_FRAME_LEN })?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Reads the payload length from a frame header, checking it against the limit.
///
/// Returns `Ok(None)` while fewer than [`HEADER_LEN`] bytes are available.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, DecodeError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let mut be = [0u8; HEADER_LEN];
    be.copy_from_slice(header);
    let len = u32::from_be_bytes(be) as usize;
    if len > MAX_FRAME_LEN {
        return Err(DecodeError::TooLarge { len, max: MAX_FRAME_LEN });
    }
    if len == 0 {
        return Err(DecodeError::Malformed("empty frame".into()));
    }
    Ok(Some(len))
}

/// Decodes the first frame in `buf`.
///
/// `Ok(None)` means the frame is incomplete: read more and call again. On success the number
/// of bytes consumed is returned beside the message; bytes after the frame belong to the peer's
/// next frame (or, after an open handshake, to the tunnelled stream).
pub fn decode<T: DeserializeOwned>(buf: &[u8]) -> Result<Option<(T, usize)>, DecodeError> {
    let Some(len) = frame_len(buf)? else {
        return Ok(None);
    };
    let Some(payload) = buf.get(HEADER_LEN..HEADER_LEN + len) else {
        return Ok(None);
    };
    decode_payload(payload).map(|msg| Some((msg, HEADER_LEN + len)))
}

/// Decodes a complete payload (the bytes after the header). Trailing bytes are an error.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, DecodeError> {
    if payload.len() > MAX_FRAME_LEN {
        return Err(DecodeError::TooLarge { len: payload.len(), max: MAX_FRAME_LEN });
    }
    // serde_json rejects trailing non-whitespace itself; its recursion limit (128) bounds nesting.
    serde_json::from_slice(payload).map_err(|e| DecodeError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::{OpenReply, OpenRequest, ServerToAgent};
    use proptest::prelude::*;

    fn open(target: &str) -> OpenRequest {
        OpenRequest { session: "s1".into(), target: target.into(), e2e: None, hold: false }
    }

    #[test]
    fn roundtrip_open_request() {
        let frame = encode(&open("plc")).unwrap();
        let (msg, used): (OpenRequest, usize) = decode(&frame).unwrap().unwrap();
        assert_eq!(msg, open("plc"));
        assert_eq!(used, frame.len());
    }

    #[test]
    fn incomplete_is_not_malformed() {
        let frame = encode(&open("plc")).unwrap();
        for cut in 0..frame.len() {
            assert_eq!(decode::<OpenRequest>(&frame[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn oversized_length_is_refused_before_payload_arrives() {
        let header = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes();
        assert_eq!(
            decode::<OpenRequest>(&header),
            Err(DecodeError::TooLarge { len: MAX_FRAME_LEN + 1, max: MAX_FRAME_LEN })
        );
        let huge = u32::MAX.to_be_bytes();
        assert!(matches!(decode::<OpenRequest>(&huge), Err(DecodeError::TooLarge { .. })));
    }

    #[test]
    fn empty_frame_is_malformed() {
        assert!(matches!(decode::<OpenRequest>(&[0, 0, 0, 0]), Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn trailing_bytes_inside_a_frame_are_refused() {
        let mut payload = serde_json::to_vec(&open("plc")).unwrap();
        payload.extend_from_slice(b"{}");
        let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&payload);
        assert!(matches!(decode::<OpenRequest>(&frame), Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn unknown_fields_and_types_are_refused() {
        let bad = [
            &br#"{"session":"s","target":"t","extra":1}"#[..],
            br#"{"session":1,"target":"t"}"#,
            br#"{"type":"grant"}"#,
            b"\xff\xfe",
            b"[]",
        ];
        for payload in bad {
            let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
            frame.extend_from_slice(payload);
            assert!(
                matches!(decode::<OpenRequest>(&frame), Err(DecodeError::Malformed(_))),
                "{payload:?}"
            );
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let payload = "[".repeat(10_000);
        let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(payload.as_bytes());
        assert!(matches!(decode::<ServerToAgent>(&frame), Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn encode_refuses_oversized_messages() {
        let msg = OpenReply { ok: false, error: Some("x".repeat(MAX_FRAME_LEN)) };
        assert!(matches!(encode(&msg), Err(EncodeError::TooLarge { .. })));
    }

    proptest! {
        #[test]
        fn prop_roundtrip(session in ".{0,64}", target in ".{0,64}") {
            let msg = OpenRequest { session, target, e2e: None, hold: false };
            let frame = encode(&msg).unwrap();
            let (back, used): (OpenRequest, usize) = decode(&frame).unwrap().unwrap();
            prop_assert_eq!(back, msg);
            prop_assert_eq!(used, frame.len());
        }

        #[test]
        fn prop_arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<ServerToAgent>(&bytes);
            let _ = decode::<crate::msg::AgentToServer>(&bytes);
            let _ = decode::<crate::msg::ServerToClient>(&bytes);
        }

        #[test]
        fn prop_concatenated_frames_split_cleanly(a in ".{0,32}", b in ".{0,32}") {
            let mut buf = encode(&open(&a)).unwrap();
            buf.extend(encode(&open(&b)).unwrap());
            let (first, used): (OpenRequest, usize) = decode(&buf).unwrap().unwrap();
            let (second, _): (OpenRequest, usize) = decode(&buf[used..]).unwrap().unwrap();
            prop_assert_eq!(first.target, a);
            prop_assert_eq!(second.target, b);
        }
    }
}
