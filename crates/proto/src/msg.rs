//! The messages of the protocol. Every enum is tagged by `type`; unknown fields are refused.

use serde::{Deserialize, Serialize};

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
}

/// Agent → server on the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AgentToServer {
    Hello { version: u16, agent: String, targets: Vec<TargetInfo>, switch_on: bool },
    Switch { on: bool },
    GrantAck { session: String },
    Pong { nonce: u64 },
}

/// Server → agent on the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ServerToAgent {
    Welcome { version: u16, machine: String, grants: Vec<Grant> },
    Refused { reason: String },
    Grant { grant: Grant },
    Revoke { session: String },
    Ping { nonce: u64 },
}

/// Technician → server on the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientToServer {
    Hello { version: u16, client: String },
    Pong { nonce: u64 },
}

/// Server → technician on the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ServerToClient {
    /// The session waits for something (approval, its time window); the link stays open.
    Waiting { state: String, message: String },
    /// The session is usable: open one local forward per target.
    Ready { version: u16, session: String, targets: Vec<String> },
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
