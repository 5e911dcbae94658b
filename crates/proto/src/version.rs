//! Protocol version negotiation: the first frame of each side names its version.

/// The protocol version this build speaks: what a technician link offers and accepts, and
/// the base of the agent link.
pub const PROTOCOL_VERSION: u16 = 1;
/// The highest agent link version this build speaks. Version 2 adds the agent's audit records
/// (`audit_records` from the agent; `audit_ack`, `audit_retry`, `audit_refused` from the
/// server). Neither side sends them on a link that agreed on version 1: an agent of version 1
/// would close its link on a message type it does not know, and so would a server of version 1.
/// Version 3 adds `grant_refused` from the agent: the server hears at once why the agent does
/// not hold a grant (and tells the technician), rather than waiting out the acknowledgement;
/// and `trust`: the agent's trust anchor changed while it runs.
/// Version 4 adds held tunnel opens ([`crate::OpenRequest::hold`]): the server passes the open
/// request and the first Noise message on while it checks, and its decision after.
pub const AGENT_LINK_VERSION: u16 = 4;
/// The first agent link version on which the agent's records travel.
pub const AGENT_AUDIT_VERSION: u16 = 2;
/// The first agent link version on which the agent says why it refused a grant.
pub const AGENT_GRANT_REFUSED_VERSION: u16 = 3;
/// The first agent link version on which the server holds tunnel opens.
pub const AGENT_HOLD_VERSION: u16 = 4;
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

/// Agrees on an agent link version with an agent that announced `peer`: every version from
/// [`PROTOCOL_VERSION`] to [`AGENT_LINK_VERSION`] is spoken as it is (the server's welcome
/// names it back).
pub fn negotiate_agent(peer: u16) -> Result<u16, VersionError> {
    if (PROTOCOL_VERSION..=AGENT_LINK_VERSION).contains(&peer) {
        Ok(peer)
    } else {
        Err(VersionError { peer, ours: AGENT_LINK_VERSION })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_links_speak_every_version_up_to_ours() {
        assert_eq!(negotiate_agent(PROTOCOL_VERSION), Ok(PROTOCOL_VERSION));
        assert_eq!(negotiate_agent(AGENT_LINK_VERSION), Ok(AGENT_LINK_VERSION));
        assert!(negotiate_agent(0).is_err());
        let err = negotiate_agent(AGENT_LINK_VERSION + 1).unwrap_err();
        assert_eq!(err.ours, AGENT_LINK_VERSION);
    }

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
