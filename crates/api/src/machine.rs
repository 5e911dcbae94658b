//! Machines and their enrolment: `/v1/machines`, `/v1/machines/NAME/revoke`, `/v1/enroll`.

use std::fmt;

use fernwart_proto::TargetInfo;
use serde::{Deserialize, Serialize};

use crate::Redacted;

/// `POST /v1/machines`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineAddRequest {
    pub name: String,
    pub org: Option<String>,
}

/// The answer to `POST /v1/machines`: the machine's one-time enrolment token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineAdded {
    pub name: String,
    pub token: String,
    /// When the token expires unused (RFC 3339).
    pub expires: String,
}

impl fmt::Debug for MachineAdded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MachineAdded")
            .field("name", &self.name)
            .field("token", &Redacted)
            .field("expires", &self.expires)
            .finish()
    }
}

/// One row of `GET /v1/machines`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineInfo {
    pub name: String,
    pub org: Option<String>,
    /// Whether its agent is linked now.
    pub online: bool,
    pub switch: SwitchState,
    /// The targets its agent announced last (none before its first link).
    pub targets: Vec<TargetInfo>,
    pub enrolled: bool,
    pub revoked: bool,
    /// When its agent was last linked (RFC 3339).
    pub last_seen: Option<String>,
    /// Whose approval its agent takes: `operator-signed` (only grants signed by the
    /// operator's approver keys), `server` (the server's word), `unknown` (never linked, or an
    /// agent before operator-signed approvals).
    #[serde(default = "unknown")]
    pub trust: String,
    /// The approver keys its agent pins (`ed25519:BASE64`).
    #[serde(default)]
    pub approvers: Vec<String>,
    /// Whether approvals of its sessions must be signed (its agent or its operator says so).
    #[serde(default)]
    pub signature_required: bool,
    /// Its agent's end-to-end key (X25519, base64), recorded from its first link; technicians'
    /// CLIs pin it. None before the agent linked with end-to-end encryption.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e2e_key: Option<String>,
}

fn unknown() -> String {
    "unknown".into()
}

/// The key switch at the machine, as its linked agent reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SwitchState {
    On,
    Off,
    /// No agent linked.
    Unknown,
}

impl SwitchState {
    /// The switch of a machine whose agent is linked (`Some(on)`) or not (`None`).
    pub const fn from_link(on: Option<bool>) -> Self {
        match on {
            Some(true) => SwitchState::On,
            Some(false) => SwitchState::Off,
            None => SwitchState::Unknown,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            SwitchState::On => "on",
            SwitchState::Off => "off",
            SwitchState::Unknown => "unknown",
        }
    }
}

impl fmt::Display for SwitchState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// The answer to `POST /v1/machines/NAME/revoke`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineRevoked {
    pub name: String,
    pub revoked: bool,
}

/// `POST /v1/enroll` (by the agent, without a login): the one-time token and a CSR.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    pub token: String,
    /// PEM certificate signing request for the key made on the device.
    pub csr: String,
    /// The agent's end-to-end key (X25519, base64), made on the device: registered with the
    /// machine at enrolment, so that technicians' CLIs pin the key the token's holder made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e2e_key: Option<String>,
}

impl fmt::Debug for EnrollRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrollRequest").field("token", &Redacted).field("csr", &self.csr).finish()
    }
}

/// The answer to `POST /v1/enroll`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollResponse {
    /// The machine the token was for.
    pub machine: String,
    /// PEM, signed by the server's CA.
    pub certificate: String,
    /// PEM of the server's CA, to pin.
    pub ca: String,
}

#[cfg(test)]
mod tests {
    use fernwart_proto::TargetProtocol;

    use super::*;
    use crate::wire::{hides, parses, refuses_unknown, round_trips};

    #[test]
    fn machine_add_bodies_are_what_cli_and_server_send() {
        let r: MachineAddRequest = parses(r#"{"name":"press-7","org":"acme"}"#);
        round_trips(&r);
        let r: MachineAddRequest = parses(r#"{"name":"press-7","org":null}"#);
        assert_eq!(r.org, None);
        refuses_unknown::<MachineAddRequest>(r#"{"name":"press-7","org":null}"#);

        let a: MachineAdded =
            parses(r#"{"expires":"2030-01-01T00:00:00Z","name":"press-7","token":"enrol-SECRET"}"#);
        round_trips(&a);
        hides(&a, &["enrol-SECRET"]);
    }

    #[test]
    fn machine_list_is_what_the_server_sends() {
        let list: Vec<MachineInfo> = parses(
            r#"[{"enrolled":true,"last_seen":"2030-01-01T00:00:00Z","name":"press-7","online":true,"org":"acme","revoked":false,"switch":"on",
                 "targets":[{"address":"192.168.0.10:102","name":"plc","protocol":"tcp"},{"address":"192.168.0.11:502","name":"hmi","protocol":"udp"}],
                 "trust":"operator-signed","approvers":["ed25519:11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="],"signature_required":true},
                {"enrolled":false,"last_seen":null,"name":"new","online":false,"org":null,"revoked":false,"switch":"unknown","targets":[],
                 "trust":"unknown","approvers":[],"signature_required":false},
                {"enrolled":true,"last_seen":null,"name":"off","online":true,"org":null,"revoked":true,"switch":"off","targets":[],
                 "trust":"server","approvers":[],"signature_required":false}]"#,
        );
        assert_eq!(list[0].trust, "operator-signed");
        // Servers before operator-signed approvals say nothing of trust.
        let old: MachineInfo = serde_json::from_str(
            r#"{"enrolled":false,"last_seen":null,"name":"new","online":false,"org":null,"revoked":false,"switch":"unknown","targets":[]}"#,
        )
        .unwrap();
        assert_eq!((old.trust.as_str(), old.signature_required), ("unknown", false));
        assert_eq!(list[0].switch, SwitchState::On);
        assert_eq!(list[0].targets[0].name, "plc");
        assert_eq!(list[0].targets[1].protocol, TargetProtocol::Udp);
        assert_eq!(list[1].switch, SwitchState::Unknown);
        assert_eq!(list[2].switch, SwitchState::Off);
        round_trips(&list);
    }

    #[test]
    fn the_switch_follows_the_link() {
        assert_eq!(SwitchState::from_link(Some(true)), SwitchState::On);
        assert_eq!(SwitchState::from_link(Some(false)), SwitchState::Off);
        assert_eq!(SwitchState::from_link(None), SwitchState::Unknown);
        assert_eq!(format!("{:<8}|", SwitchState::On), "on      |");
    }

    #[test]
    fn revoke_and_enrol_bodies_are_what_agent_and_server_send() {
        let r: MachineRevoked = parses(r#"{"name":"press-7","revoked":true}"#);
        round_trips(&r);

        let csr = "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n";
        let req = EnrollRequest {
            token: "enrol-SECRET".into(),
            csr: csr.into(),
            e2e_key: Some("m1YeIhon33BJn5BPndzx4r2gpI8/EalkuHPbKJYcIQw=".into()),
        };
        let text = serde_json::to_string(&req).unwrap();
        let back: EnrollRequest = parses(&text);
        assert_eq!(back, req);
        refuses_unknown::<EnrollRequest>(&text);
        hides(&req, &["enrol-SECRET"]);

        let resp: EnrollResponse = parses(
            r#"{"ca":"-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n","certificate":"-----BEGIN CERTIFICATE-----\nM\n-----END CERTIFICATE-----\n","machine":"press-7"}"#,
        );
        assert_eq!(resp.machine, "press-7");
        round_trips(&resp);
    }
}
