//! The fernwart wire protocol, free of I/O.
//!
//! Every link (agent ↔ server, technician ↔ server) is an HTTPS connection upgraded
//! ([`LINK_UPGRADE`]) to HTTP/2. The first stream of a link is the *control* stream; every
//! further stream carries one TCP connection to one target and starts with an
//! [`OpenRequest`] frame.
//!
//! On every stream, control data travels as frames: a 4-byte big-endian length followed by
//! that many bytes of JSON. A length above [`MAX_FRAME_LEN`] is refused before anything is
//! allocated, trailing bytes inside a frame are an error, and an incomplete frame is told
//! apart from a malformed one. The first frame of each side names the protocol version.

pub mod approval;
pub mod chain;
pub mod codec;
pub mod e2e;
pub mod msg;
pub mod version;
pub mod webauthn;

pub use codec::{decode, encode, DecodeError, EncodeError, HEADER_LEN, MAX_FRAME_LEN};
pub use msg::*;
pub use version::{
    negotiate, negotiate_agent, VersionError, AGENT_AUDIT_VERSION, AGENT_GRANT_REFUSED_VERSION,
    AGENT_HOLD_VERSION, AGENT_LINK_VERSION, LINK_UPGRADE, PROTOCOL_VERSION,
};

/// How long either side waits for a handshake frame before it closes the link.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
