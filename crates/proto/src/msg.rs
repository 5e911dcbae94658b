//! The messages of the protocol. Every enum is tagged by `type`; unknown fields are refused.

use serde::{Deserialize, Serialize};

use crate::chain::Linked;

/// The most records one `audit_records` frame may carry.
pub const AUDIT_BATCH_MAX_RECORDS: usize = 256;
/// The agent fills a batch with records up to this many bytes (each record as JSON, plus a
/// comma): the frame around them stays under [`crate::MAX_FRAME_LEN`].
pub const AUDIT_BATCH_BYTES: usize = 60 * 1024;

/// Target protocols. Only TCP is forwarded today.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetProtocol {
    Tcp,
    Udp,
}

/// A target as the agent announces it: declared in the operator's `agent.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetInfo {
    pub name: String,
    pub address: String,
    pub protocol: TargetProtocol,
}

/// The server's permission for one session at this agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    pub session: String,
    pub targets: Vec<String>,
    /// Start of the session's time window, seconds since the Unix epoch (0: from any time,
    /// as grants of servers before this field).
    #[serde(default)]
    pub from: i64,
    /// End of the session's time window, seconds since the Unix epoch.
    pub until: i64,
    /// Who the session is for, for the agent's own audit record.
    pub users: Vec<String>,
    /// The session is recorded: the agent records each tunnel connection's bytes (see
    /// `fernwart-recording`). Left out when false, so that agents from before recordings still
    /// read grants of sessions without it; an agent that cannot record must refuse a grant
    /// with it (an older one fails on the unknown field, which closes its link).
    #[serde(default, skip_serializing_if = "is_false")]
    pub record: bool,
    /// The technicians' end-to-end keys (X25519 public keys, standard base64): a tunnel's
    /// Noise handshake must come from one of them (end-to-end encryption). Left out when empty,
    /// so that grants without keys look as before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tech_keys: Vec<String>,
    /// An approver's signature over the grant ([`crate::approval`]), carried by the server
    /// from the approver's device; left out when the session was approved on the server's
    /// side only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<crate::approval::Approval>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// What an agent tells the server of its operator's trust anchor (`[trust]` in `agent.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentTrust {
    /// [`crate::approval::LEVEL_SIGNED`] or [`crate::approval::LEVEL_SERVER`].
    pub level: String,
    /// The approvers' public keys, `ed25519:BASE64`.
    pub approvers: Vec<String>,
}

/// Agent → server on the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AgentToServer {
    /// The first frame: the link version offered, the operator's targets, the key switch.
    /// `trust`: the operator's approver keys pinned at the agent, left out when there are
    /// none (a server before operator-signed approvals refuses the field).
    /// `e2e_key`: the agent's end-to-end key ([`crate::e2e`], base64), left out by agents
    /// before end-to-end encryption.
    Hello {
        version: u16,
        agent: String,
        targets: Vec<TargetInfo>,
        switch_on: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        trust: Option<AgentTrust>,
        e2e_key: Option<String>,
    },
    /// The key switch changed.
    Switch { on: bool },
    /// The agent holds the grant of `session`.
    GrantAck { session: String },
    /// Agent link version 3: the agent does not hold the grant of `session` (its operator's
    /// check refused it, see the agent's own trail), and why.
    GrantRefused { session: String, reason: String },
    /// Agent link version 3: the operator changed the agent's trust anchor (`[trust]` in its
    /// `agent.toml`) while it runs; as in `hello`, none means the server's word is enough.
    Trust { trust: Option<AgentTrust> },
    /// The answer to `ping`.
    Pong { nonce: u64 },
    /// Agent link version 2: the agent's own audit records the server does not hold yet, in
    /// chain order, at most [`AUDIT_BATCH_MAX_RECORDS`]; one batch at a time, each answered
    /// by `audit_ack`, `audit_retry` or `audit_refused`.
    AuditRecords { records: Vec<Linked> },
}

/// Server → agent on the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ServerToAgent {
    /// The answer to `hello`: the link version agreed on, the machine's name, its grants.
    Welcome { version: u16, machine: String, grants: Vec<Grant> },
    /// The link is refused (the last frame).
    Refused { reason: String },
    /// A grant for a session, to acknowledge with `grant_ack`.
    Grant { grant: Grant },
    /// The session's grant is withdrawn: its tunnels close.
    Revoke { session: String },
    /// Keepalive: answer with `pong`; an agent silent for 45 s is disconnected.
    Ping { nonce: u64 },
    /// Agent link version 2: the server holds this machine's records up to `seq` (0: none);
    /// the agent sends from `seq + 1`. Sent when the link starts and after each batch stored.
    AuditAck { seq: u64 },
    /// Agent link version 2: the batch was not taken (too many records lately, or the server
    /// could not store it now); send it again after `after_ms`.
    AuditRetry { after_ms: u64 },
    /// Agent link version 2: the batch does not link to the records the server holds, or a
    /// record does not verify. Nothing of it was stored, the server's trail has an alert, and
    /// no more batches are taken on this link: the agent keeps its records for the operator.
    AuditRefused { seq: u64, reason: String },
}

/// Technician → server on the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientToServer {
    /// `e2e_key`: the technician's end-to-end key ([`crate::e2e`], base64), which the
    /// session's grant then names.
    Hello {
        version: u16,
        client: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        e2e_key: Option<String>,
    },
    Pong {
        nonce: u64,
    },
}

/// Server → technician on the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ServerToClient {
    /// The session waits for something (approval, its time window); the link stays open.
    Waiting { state: String, message: String },
    /// The session is usable: open one local forward per target. `machine` and its agent's
    /// end-to-end key (`agent_key`, none while its agent never said it) let the CLI check
    /// the key it pinned for the machine.
    Ready {
        version: u16,
        session: String,
        targets: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        machine: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent_key: Option<String>,
    },
    /// The session is over (ended, rejected, expired, revoked) or the link is refused.
    Closed { state: String, reason: String },
    /// Keepalive: answer with `pong`; a technician silent for 45 s is disconnected.
    Ping { nonce: u64 },
    /// Something the technician should know while the session runs (its window ends soon).
    Notice { message: String },
}

/// First frame on a data stream: which target to reach. The agent also sees the session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenRequest {
    pub session: String,
    pub target: String,
    /// The tunnel is end-to-end encrypted with this version of [`crate::e2e`]: the first
    /// Noise message follows the frame. The server passes it on unchanged; agents refuse
    /// tunnels without it, and agents before it refuse the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e2e: Option<u8>,
    /// Server to agent only (link version [`crate::AGENT_HOLD_VERSION`]): the server sends
    /// this request and the first Noise message while it still checks the tunnel, then its
    /// decision as an [`OpenReply`] frame. The agent checks and computes its part meanwhile,
    /// but touches the target only after an `ok` decision; any other end drops the tunnel.
    /// Agents before it refuse the field.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hold: bool,
}

/// Answer to an [`OpenRequest`]; on `ok` the stream carries the target's bytes from then on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenReply {
    pub ok: bool,
    pub error: Option<String>,
}

impl OpenReply {
    pub fn ok() -> Self {
        Self { ok: true, error: None }
    }

    pub fn refused(reason: impl Into<String>) -> Self {
        Self { ok: false, error: Some(reason.into()) }
    }
}

/// What the agent reads first on a stream the server opened: a tunnel to a target, or a
/// question about its session recordings. Agents from before recordings read only
/// [`OpenRequest`]s; they close a stream that starts with a [`RecordingRequest`] (unknown
/// fields), which the server reports as an agent that keeps no recordings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StreamRequest {
    Open(OpenRequest),
    Recording(RecordingRequest),
}

/// First frame on a data stream that asks the agent about its recordings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordingRequest {
    pub recording: RecordingAsk,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum RecordingAsk {
    /// The recordings the agent holds (of one session, or all): the answer's bytes are a JSON
    /// array of `fernwart_api::RecordingInfo`.
    List { session: Option<String> },
    /// One recording file as stored: the answer's bytes are the file. `by` names who asked at
    /// the server, for the agent's own audit record.
    Fetch { id: String, by: String },
}

/// The agent's answer to a [`RecordingRequest`]; on `ok` the stream carries the answer's
/// bytes until it ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordingReply {
    pub ok: bool,
    pub error: Option<String>,
    /// For a fetch of a finished recording: its length and SHA-256 (hex), as in the agent's
    /// `recording.saved` audit record.
    pub size: Option<u64>,
    pub sha256: Option<String>,
}

impl RecordingReply {
    pub fn refused(reason: impl Into<String>) -> Self {
        Self { ok: false, error: Some(reason.into()), size: None, sha256: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{chain, codec, MAX_FRAME_LEN};

    fn record(last: Option<&Linked>, details_len: usize) -> Linked {
        let body = chain::Body {
            time_ms: 1_700_000_000_000,
            actor: "tech1,tech2".into(),
            action: "tunnel.close".into(),
            target: "s1".into(),
            source: "m1".into(),
            // Quotes are escaped once more inside the frame: the worst case for the budget.
            details: format!("{{\"x\":\"{}\"}}", "\"".repeat(details_len)),
        };
        chain::link(last.map(|l| (l.seq, l.hash.as_str())), body)
    }

    #[test]
    fn a_batch_filled_to_its_budget_fits_in_a_frame() {
        let mut records: Vec<Linked> = Vec::new();
        let mut used = 0;
        loop {
            let r = record(records.last(), 300);
            let len = serde_json::to_vec(&r).unwrap().len() + 1;
            if used + len > AUDIT_BATCH_BYTES || records.len() == AUDIT_BATCH_MAX_RECORDS {
                break;
            }
            used += len;
            records.push(r);
        }
        let msg = AgentToServer::AuditRecords { records };
        let frame = codec::encode(&msg).unwrap();
        assert!(frame.len() <= MAX_FRAME_LEN, "{}", frame.len());
        let (back, _): (AgentToServer, usize) = codec::decode(&frame).unwrap().unwrap();
        assert_eq!(back, msg);
    }

    #[test]
    fn the_audit_messages_on_the_wire() {
        let ack = serde_json::to_string(&ServerToAgent::AuditAck { seq: 7 }).unwrap();
        assert_eq!(ack, r#"{"type":"audit_ack","seq":7}"#);
        let retry: ServerToAgent =
            serde_json::from_str(r#"{"type":"audit_retry","after_ms":500}"#).unwrap();
        assert_eq!(retry, ServerToAgent::AuditRetry { after_ms: 500 });
        let r = record(None, 1);
        let text = serde_json::to_string(&AgentToServer::AuditRecords { records: vec![r.clone()] })
            .unwrap();
        assert!(text.starts_with(r#"{"type":"audit_records","records":[{"seq":1,"#), "{text}");
        // A record as the agent stores it travels unchanged: its hash still verifies.
        let back: AgentToServer = serde_json::from_str(&text).unwrap();
        let AgentToServer::AuditRecords { records } = back else { panic!("{text}") };
        assert_eq!(chain::hash(&records[0].prev, 1, &records[0].body), r.hash);
    }
}

#[cfg(test)]
mod recording_tests {
    use super::*;

    fn grant(record: bool) -> Grant {
        Grant {
            session: "s1".into(),
            targets: vec!["plc".into()],
            from: 0,
            until: 10,
            users: vec!["tech1".into()],
            record,
            tech_keys: vec![],
            approval: None,
        }
    }

    #[test]
    fn grants_without_recording_look_as_before() {
        let text = serde_json::to_string(&grant(false)).unwrap();
        assert!(!text.contains("record"), "{text}");
        let old: Grant = serde_json::from_str(
            r#"{"session":"s1","targets":["plc"],"from":0,"until":10,"users":["tech1"]}"#,
        )
        .unwrap();
        assert_eq!(old, grant(false));
        let text = serde_json::to_string(&grant(true)).unwrap();
        assert!(text.ends_with(r#""record":true}"#), "{text}");
        assert_eq!(serde_json::from_str::<Grant>(&text).unwrap(), grant(true));
    }

    #[test]
    fn the_first_frame_of_a_stream_is_a_tunnel_or_a_recording_question() {
        let open =
            OpenRequest { session: "s1".into(), target: "plc".into(), e2e: Some(1), hold: false };
        let text = serde_json::to_string(&open).unwrap();
        assert_eq!(
            serde_json::from_str::<StreamRequest>(&text).unwrap(),
            StreamRequest::Open(open)
        );

        let ask = RecordingRequest {
            recording: RecordingAsk::Fetch { id: "s1-1-1".into(), by: "aud1".into() },
        };
        let text = serde_json::to_string(&ask).unwrap();
        assert_eq!(text, r#"{"recording":{"op":"fetch","id":"s1-1-1","by":"aud1"}}"#);
        assert_eq!(
            serde_json::from_str::<StreamRequest>(&text).unwrap(),
            StreamRequest::Recording(ask)
        );
        // What an agent from before recordings reads first: it refuses the question.
        assert!(serde_json::from_str::<OpenRequest>(&text).is_err());
        let list = r#"{"recording":{"op":"list","session":null}}"#;
        assert!(matches!(
            serde_json::from_str::<StreamRequest>(list).unwrap(),
            StreamRequest::Recording(RecordingRequest { recording: RecordingAsk::List { .. } })
        ));
        assert!(serde_json::from_str::<StreamRequest>(r#"{"recording":{"op":"delete"}}"#).is_err());
    }
}
