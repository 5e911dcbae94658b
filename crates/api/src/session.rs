//! Maintenance sessions: `/v1/sessions`, `/v1/sessions/NAME`, `/v1/sessions/NAME/ACTION`.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// `POST /v1/sessions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionCreateRequest {
    pub name: String,
    pub machine: String,
    pub targets: Vec<String>,
    pub users: Vec<String>,
    /// Start of the window (RFC 3339); none: now.
    pub from: Option<String>,
    /// End of the window (RFC 3339); give this or `duration_secs`, not both.
    pub until: Option<String>,
    pub duration_secs: Option<u64>,
    /// Why, e.g. a ticket reference.
    pub reason: String,
    /// Whether an approver must release the session; left out: yes.
    #[serde(default = "yes")]
    pub approval: bool,
    /// Whether the agent records each tunnel connection of the session (`--record`); left
    /// out: no.
    #[serde(default)]
    pub record: bool,
}

fn yes() -> bool {
    true
}

/// A session as `GET /v1/sessions[/NAME]` and every session action answer it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub name: String,
    pub machine: String,
    pub targets: Vec<String>,
    pub users: Vec<String>,
    pub reason: String,
    pub state: SessionState,
    pub approval_required: bool,
    /// The window (RFC 3339).
    pub from: String,
    pub until: String,
    pub created_by: String,
    pub created_at: String,
    /// Who approved or rejected it.
    pub decided_by: Option<String>,
    /// Who (or what: `system`) ended, expired or revoked it.
    pub ended_by: Option<String>,
    /// The agent records each tunnel connection (what the approver releases); servers
    /// before recordings leave it out.
    #[serde(default)]
    pub record: bool,
    /// The fingerprint of the approver key that signed its approval (operator-signed
    /// approvals); none: approved on the server's side only, or not approved.
    #[serde(default)]
    pub signed_by: Option<String>,
}

/// `GET /v1/sessions/NAME/grant`: what an approver signs to release the session (the CLI
/// encodes and signs these fields itself, after showing them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionGrant {
    pub grant: fernwart_proto::approval::GrantFields,
    /// Whether the machine takes only signed approvals (its operator or its agent says so).
    pub signature_required: bool,
    /// The approver keys the machine's agent pins (`ed25519:BASE64`); empty: none reported.
    pub approvers: Vec<String>,
}

/// The body of `POST /v1/sessions/NAME/approve` with an approver's signature (without a body,
/// or `{}`, the approval is the server's only).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApproveRequest {
    /// The approver's public key, `ed25519:BASE64`.
    #[serde(default)]
    pub key: Option<String>,
    /// Ed25519 over the grant's fields (`fernwart_proto::approval`), base64.
    #[serde(default)]
    pub signature: Option<String>,
}

/// Where a session is in its life. On the wire: `"prepared"`, `"requested"`, ...
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionState {
    /// Created; waits for an approver (or for use, when no approval is required).
    Prepared,
    /// A technician's `connect` asks for it; waits for an approver.
    Requested,
    Approved,
    /// A technician is connected.
    Active,
    Rejected,
    Ended,
    /// Its window closed.
    Expired,
    /// Cut off before its end.
    Revoked,
}

impl SessionState {
    pub const ALL: [SessionState; 8] = [
        SessionState::Prepared,
        SessionState::Requested,
        SessionState::Approved,
        SessionState::Active,
        SessionState::Rejected,
        SessionState::Ended,
        SessionState::Expired,
        SessionState::Revoked,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            SessionState::Prepared => "prepared",
            SessionState::Requested => "requested",
            SessionState::Approved => "approved",
            SessionState::Active => "active",
            SessionState::Rejected => "rejected",
            SessionState::Ended => "ended",
            SessionState::Expired => "expired",
            SessionState::Revoked => "revoked",
        }
    }

    /// Whether the session is over for good: no transition leaves these states.
    pub const fn is_terminal(self) -> bool {
        matches!(
            self,
            SessionState::Rejected
                | SessionState::Ended
                | SessionState::Expired
                | SessionState::Revoked
        )
    }
}

impl fmt::Display for SessionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, so that `{:<9}` lines up columns.
        f.pad(self.as_str())
    }
}

impl FromStr for SessionState {
    type Err = UnknownSessionState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SessionState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownSessionState(s.to_owned()))
    }
}

/// A state name that is none of [`SessionState::ALL`]; its message lists the valid ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownSessionState(pub String);

impl fmt::Display for UnknownSessionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown session state {:?}: one of ", self.0)?;
        for (i, st) in SessionState::ALL.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(st.as_str())?;
        }
        Ok(())
    }
}

impl std::error::Error for UnknownSessionState {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{parses, refuses_unknown, round_trips};

    const CREATE: &str = r#"{"approval":false,"duration_secs":7200,"from":null,"machine":"press-7","name":"s1","reason":"ticket 42","record":true,"targets":["plc","hmi"],"until":null,"users":["tech1"]}"#;

    const SHOW: &str = r#"{"approval_required":true,"created_at":"2030-01-01T08:00:00Z","created_by":"sa1","decided_by":"ap1","ended_by":null,"from":"2030-01-01T08:00:00Z","machine":"press-7","name":"s1","reason":"ticket 42","record":true,"signed_by":"SHA256:q0d1m1c6FhLy2fFJ8wYt+6Vj0m3o3zH9c9DSyNbqzHc","state":"approved","targets":["hmi","plc"],"until":"2030-01-01T10:00:00Z","users":["tech1","tech2"]}"#;

    #[test]
    fn create_request_is_what_the_cli_sends() {
        let r: SessionCreateRequest = parses(CREATE);
        assert_eq!(r.duration_secs, Some(7200));
        assert!(!r.approval);
        round_trips(&r);
        refuses_unknown::<SessionCreateRequest>(CREATE);
    }

    #[test]
    fn approval_is_required_unless_said_otherwise() {
        let r: SessionCreateRequest = serde_json::from_str(
            r#"{"name":"s1","machine":"m","targets":["plc"],"users":["t"],"reason":"r"}"#,
        )
        .unwrap();
        assert!(r.approval);
        assert!(!r.record);
        assert_eq!((r.from, r.until, r.duration_secs), (None, None, None));
    }

    #[test]
    fn sessions_of_servers_before_recordings_are_not_recorded() {
        let old = SHOW.replace(r#""record":true,"#, "");
        let s: SessionInfo = serde_json::from_str(&old).unwrap();
        assert!(!s.record);
        assert!(parses::<SessionInfo>(SHOW).record);
    }

    #[test]
    fn sessions_of_servers_before_signed_approvals_are_unsigned() {
        let old = SHOW
            .replace(r#""signed_by":"SHA256:q0d1m1c6FhLy2fFJ8wYt+6Vj0m3o3zH9c9DSyNbqzHc","#, "");
        let s: SessionInfo = serde_json::from_str(&old).unwrap();
        assert_eq!(s.signed_by, None);
    }

    #[test]
    fn the_grant_to_sign_and_the_signed_approval() {
        let g: SessionGrant = parses(
            r#"{"approvers":["ed25519:11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="],"signature_required":true,
                "grant":{"from":1,"machine":"m1","nonce":"00ff","record":false,"session":"s1","targets":["plc"],"tech_keys":[],"until":2,"users":["tech1"]}}"#,
        );
        assert_eq!(g.grant.nonce, "00ff");
        round_trips(&g);
        let a: ApproveRequest = parses(r#"{"key":"ed25519:AA==","signature":"c2ln"}"#);
        refuses_unknown::<ApproveRequest>(r#"{"key":"ed25519:AA==","signature":"c2ln"}"#);
        assert_eq!(a.signature.as_deref(), Some("c2ln"));
        let none: ApproveRequest = serde_json::from_str("{}").unwrap();
        assert_eq!(none, ApproveRequest::default());
    }

    #[test]
    fn session_is_what_the_server_sends() {
        let s: SessionInfo = parses(SHOW);
        assert_eq!(s.state, SessionState::Approved);
        assert_eq!(s.decided_by.as_deref(), Some("ap1"));
        assert_eq!(s.ended_by, None);
        round_trips(&s);
        let list: Vec<SessionInfo> = parses(&format!("[{SHOW},{SHOW}]"));
        round_trips(&list);
    }

    #[test]
    fn states_have_their_wire_names() {
        for st in SessionState::ALL {
            assert_eq!(serde_json::to_string(&st).unwrap(), format!("\"{st}\""));
            assert_eq!(st.as_str().parse::<SessionState>().unwrap(), st);
            let fixture = SHOW.replace("\"approved\"", &format!("\"{st}\""));
            assert_eq!(parses::<SessionInfo>(&fixture).state, st);
        }
        let err = "open".parse::<SessionState>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown session state \"open\": one of prepared, requested, approved, active, rejected, ended, expired, revoked"
        );
        assert!(serde_json::from_str::<SessionState>("\"Approved\"").is_err());
    }

    #[test]
    fn only_the_final_states_are_terminal() {
        let terminal: Vec<_> = SessionState::ALL.into_iter().filter(|s| s.is_terminal()).collect();
        assert_eq!(
            terminal,
            [
                SessionState::Rejected,
                SessionState::Ended,
                SessionState::Expired,
                SessionState::Revoked
            ]
        );
    }
}
