//! Protocol version negotiation: the first frame of each side names its version.

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// The HTTP/1.1 upgrade token of a link: after `101 Switching Protocols` the connection speaks
/// HTTP/2 (with prior knowledge). A peer that asks for anything else is refused.
pub const LINK_UPGRADE: &str = "fernwart-h2/1";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("peer speaks protocol version {peer}, this side speaks {ours}")]
pub struct VersionError {
    pub peer: u16,
    pub ours: u16,
}

/// Agrees on a version with a peer that announced `peer`.
pub fn negotiate(peer: u16) -> Result<u16, VersionError> {
    if peer == PROTOCOL_VERSION {
        Ok(PROTOCOL_VERSION)
    } else {
        Err(VersionError { peer, ours: PROTOCOL_VERSION })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_version_agrees() {
        assert_eq!(negotiate(PROTOCOL_VERSION), Ok(PROTOCOL_VERSION));
    }

    #[test]
    fn other_versions_are_refused_with_both_numbers() {
        let err = negotiate(PROTOCOL_VERSION + 1).unwrap_err();
        assert!(err.to_string().contains(&(PROTOCOL_VERSION + 1).to_string()));
    }
}
