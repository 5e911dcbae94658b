//! The audit trail: `GET /v1/audit`.

use serde::{Deserialize, Serialize};

/// The query of `GET /v1/audit?since=RFC3339`.
///
/// Unknown parameters are let through, as the server does today: a query string may carry
/// more than the API asks for (a cache buster, a proxy's mark).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditQuery {
    /// Only records from this time on (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Only records before this time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// Only records of this user (the actor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Only records of this organization's users or about its machines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// An action (`session.approve`) or a family of them (`session`, `auth`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Only records after this id (the next page starts after the last id of this one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<i64>,
    /// At most this many records (default and maximum 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// `GET /v1/audit/export`: the chain as stored, with what is needed to verify it elsewhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditExport {
    /// `fernwart-audit-export-v1`.
    pub format: String,
    /// The server's Ed25519 public key (hex) that signs the checkpoints; compare it with
    /// `fernwart-server audit key` on the server before trusting the export.
    pub server_key: String,
    /// The place of the first record and the hash it links to.
    pub first_seq: u64,
    pub first_prev: String,
    pub records: Vec<fernwart_proto::chain::Linked>,
    pub checkpoints: Vec<ExportCheckpoint>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportCheckpoint {
    pub seq: u64,
    pub hash: String,
    pub time: String,
    pub signature: String,
}

pub const EXPORT_FORMAT: &str = "fernwart-audit-export-v1";

/// The query of `GET /v1/machines/{name}/audit`: the machine's own records as the server
/// collected them from its agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentAuditQuery {
    /// Only records after this place (the next page starts after the last `seq` of this one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
    /// At most this many records (default and maximum 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// One of a machine's own records, collected from its agent: the record exactly as the agent
/// stored it (the fields of `fernwart-agent audit list --json`), and when the server got it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentAuditRecord {
    #[serde(flatten)]
    pub record: fernwart_proto::chain::Linked,
    /// When the server received it (RFC 3339).
    pub received: String,
}

/// One record of the audit trail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Its place in the trail; increasing.
    pub id: i64,
    /// RFC 3339 with milliseconds.
    pub time: String,
    /// Who did it: a user, a machine, `system` or `unknown`.
    pub actor: String,
    /// The actor's organization, when it is a user of one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    /// What happened, e.g. `session.create`, `auth.login_failed`.
    pub action: String,
    /// What it happened to (may be empty).
    pub target: String,
    /// The peer's IP address (may be empty).
    pub source: String,
    /// The action's own facts; their shape depends on the action.
    pub details: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{parses, round_trips};

    #[test]
    fn audit_records_are_what_the_server_sends() {
        let list: Vec<AuditRecord> = parses(
            r#"[{"action":"auth.login","actor":"admin","details":{"scope":"full"},"id":1,"source":"127.0.0.1","target":"admin","time":"2030-01-01T08:00:00.123Z"},
                {"action":"agent.refused","actor":"unknown","details":null,"id":2,"source":"","target":"","time":"2030-01-01T08:00:01Z"},
                {"action":"session.create","actor":"sa1","details":{"approval_required":true,"targets":["plc"],"users":["tech1"]},"id":3,"source":"::1","target":"s1","time":"2030-01-01T08:00:02.5Z"}]"#,
        );
        assert_eq!(list[0].details["scope"], "full");
        assert!(list[1].details.is_null());
        round_trips(&list);
    }

    #[test]
    fn agent_records_read_like_the_agents_own_list() {
        let line = r#"{"seq":3,"prev":"aa","hash":"bb","time_ms":1796185629309,"actor":"tech1","action":"tunnel.close","target":"s1","source":"m1","details":"{\"outcome\":\"closed\"}"}"#;
        let stored: fernwart_proto::chain::Linked = serde_json::from_str(line).unwrap();
        let listed: Vec<AgentAuditRecord> = parses(&format!(
            "[{},\"received\":\"2030-01-01T08:00:00Z\"}}]",
            line.trim_end_matches('}')
        ));
        assert_eq!(listed[0].record, stored);
        round_trips(&listed);
        assert_eq!(serde_json::to_string(&AgentAuditQuery::default()).unwrap(), "{}");
    }

    #[test]
    fn the_query_carries_since_only_when_given() {
        let q: AuditQuery = serde_json::from_str(r#"{"since":"2030-01-01T00:00:00Z"}"#).unwrap();
        assert_eq!(q.since.as_deref(), Some("2030-01-01T00:00:00Z"));
        round_trips(&q);
        assert_eq!(serde_json::to_string(&AuditQuery::default()).unwrap(), "{}");
        round_trips(&AuditQuery::default());
    }
}
