//! The bodies of fernwart's JSON API (`/v1/...`): what the server sends and receives, what the
//! CLI and the agent send and read. One definition, so the two ends cannot drift apart.
//!
//! Requests refuse unknown fields (a typo is an error, not a silently ignored option);
//! responses accept them, so an older client still reads a newer server. Times are RFC 3339
//! strings; absent optional values travel as `null`. Secrets (passwords, tokens, one-time codes,
//! TOTP secrets) never show in `Debug`.

mod audit;
mod auth;
mod machine;
mod org;
mod recording;
mod role;
mod session;
mod settings;
mod token;
mod user;
mod window;

pub use audit::{
    AgentAuditQuery, AgentAuditRecord, AuditExport, AuditQuery, AuditRecord, ExportCheckpoint,
    EXPORT_FORMAT,
};
pub use auth::{
    CodeRequest, LoginRequest, LoginResponse, LogoutResponse, MfaConfirmResponse,
    MfaEnrollResponse, PasswdRequest, PasswdResponse, Scope, SecurityKeyInfo,
};
pub use fernwart_proto::{TargetInfo, TargetProtocol};
pub use machine::{
    EnrollRequest, EnrollResponse, MachineAddRequest, MachineAdded, MachineInfo, MachineRevoked,
    SwitchState,
};
pub use org::{ContractAddRequest, ContractInfo, OrgAddRequest, OrgInfo, OrgKind, OrgSetRequest};
pub use recording::{RecordingInfo, RecordingQuery};
pub use role::{Role, UnknownRole};
pub use session::{
    ApproveRequest, SessionCreateRequest, SessionGrant, SessionInfo, SessionState,
    UnknownSessionState,
};
pub use settings::{SettingInfo, SettingsSetRequest};
pub use token::{TokenCreateRequest, TokenCreated, TokenInfo, TokenRevoked};
pub use user::{UserAddRequest, UserAdded, UserDisabled, UserInfo};
pub use window::{WindowAddRequest, WindowInfo, WindowRemoved};

use serde::{Deserialize, Serialize};

/// The body of every failed request (any non-2xx status): `{"error": "one-line reason"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// `GET /v1/health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub ok: bool,
}

/// `{}`: the body of a POST whose path says it all (`/v1/users/NAME/disable`, `/v1/mfa/enroll`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// Stands for a secret in `Debug` output.
struct Redacted;

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod wire {
    //! Checks shared by the modules' tests.

    use serde::{de::DeserializeOwned, Serialize};
    use serde_json::Value;

    /// Parses `fixture` (a body as the server sends it today), checks that the typed value
    /// serializes back to the same JSON, and returns it.
    pub fn parses<T: Serialize + DeserializeOwned>(fixture: &str) -> T {
        let typed: T = serde_json::from_str(fixture).unwrap();
        let expected: Value = serde_json::from_str(fixture).unwrap();
        assert_eq!(serde_json::to_value(&typed).unwrap(), expected, "{fixture}");
        typed
    }

    /// Serializes and parses `v` again, checking that nothing is lost.
    pub fn round_trips<T>(v: &T)
    where
        T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        let text = serde_json::to_string(v).unwrap();
        let back: T = serde_json::from_str(&text).unwrap();
        assert_eq!(&back, v, "{text}");
    }

    /// Checks that `fixture` with one field too many is refused, naming that field.
    pub fn refuses_unknown<T: DeserializeOwned>(fixture: &str) {
        let mut v: Value = serde_json::from_str(fixture).unwrap();
        v.as_object_mut().unwrap().insert("surprise".into(), Value::Bool(true));
        let err = serde_json::from_value::<T>(v).err().expect("an unknown field is refused");
        assert!(err.to_string().contains("surprise"), "{err}");
    }

    /// Checks that `Debug` of `v` shows none of `secrets`.
    pub fn hides<T: std::fmt::Debug>(v: &T, secrets: &[&str]) {
        let shown = format!("{v:?}");
        for s in secrets {
            assert!(!shown.contains(s), "{s:?} shows in {shown}");
        }
        assert!(shown.contains("<redacted>"), "{shown}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{parses, refuses_unknown, round_trips};

    #[test]
    fn error_body_is_what_the_server_sends() {
        let e: ErrorBody = parses(r#"{"error":"no session s1"}"#);
        assert_eq!(e.error, "no session s1");
        round_trips(&e);
    }

    #[test]
    fn health_is_what_the_server_sends() {
        let h: Health = parses(r#"{"ok":true}"#);
        assert!(h.ok);
        round_trips(&h);
    }

    #[test]
    fn empty_is_an_empty_object() {
        assert_eq!(serde_json::to_string(&Empty {}).unwrap(), "{}");
        let _: Empty = parses("{}");
        round_trips(&Empty {});
        refuses_unknown::<Empty>("{}");
    }
}
