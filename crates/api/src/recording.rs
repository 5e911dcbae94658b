//! Session recordings, kept at the agent: `/v1/recordings`, `/v1/recordings/ID`.

use serde::{Deserialize, Serialize};

/// One recording as `GET /v1/recordings` lists it (the agent's answer, relayed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordingInfo {
    /// `<session>-<unix ms>-<n>`.
    pub id: String,
    pub machine: String,
    pub session: String,
    pub target: String,
    /// The target's `HOST:PORT` in the agent's configuration.
    pub address: String,
    /// The session's technicians.
    pub users: Vec<String>,
    /// When the connection opened and closed (RFC 3339); no end while it is still open.
    pub started: String,
    pub ended: Option<String>,
    /// `complete`, `recording` (the connection is still open) or `cut` (the agent stopped
    /// before the connection closed; what it holds is still readable).
    pub state: String,
    /// Bytes each way, and bytes the recorder missed (it fell behind): known once complete.
    pub bytes_to_target: Option<u64>,
    pub bytes_from_target: Option<u64>,
    pub missed_bytes: Option<u64>,
    /// The file's size and SHA-256 (hex), as in the agent's `recording.saved` audit record.
    pub file_bytes: u64,
    pub sha256: Option<String>,
}

/// `GET /v1/recordings?machine=M&session=S`: which recordings to list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordingQuery {
    pub machine: Option<String>,
    pub session: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{parses, refuses_unknown, round_trips};

    const INFO: &str = r#"{"address":"192.168.0.10:502","bytes_from_target":13,"bytes_to_target":12,"ended":"2030-01-01T08:00:01Z","file_bytes":321,"id":"s1-1893484800000-1","machine":"m1","missed_bytes":0,"session":"s1","sha256":"ab","started":"2030-01-01T08:00:00Z","state":"complete","target":"plc","users":["tech1"]}"#;

    #[test]
    fn a_recording_is_what_the_agent_sends() {
        let r: RecordingInfo = parses(INFO);
        assert_eq!(r.state, "complete");
        round_trips(&r);
        let q: RecordingQuery = parses(r#"{"machine":"m1","session":null}"#);
        refuses_unknown::<RecordingQuery>(r#"{"machine":"m1","session":null}"#);
        round_trips(&q);
    }
}
