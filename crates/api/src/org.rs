//! Organizations and service contracts: `/v1/orgs`, `/v1/contracts`.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// What an organization is to fernwart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OrgKind {
    /// Owns machines; its approvers release sessions on them.
    Operator,
    /// A service provider or machine builder: employs technicians.
    Provider,
}

impl OrgKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            OrgKind::Operator => "operator",
            OrgKind::Provider => "provider",
        }
    }
}

impl fmt::Display for OrgKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for OrgKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "operator" => Ok(OrgKind::Operator),
            "provider" => Ok(OrgKind::Provider),
            other => Err(format!("unknown organization kind {other:?}: operator or provider")),
        }
    }
}

/// `POST /v1/orgs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrgAddRequest {
    pub name: String,
    pub kind: OrgKind,
    /// An operator allows sessions without an approver's release on its machines.
    #[serde(default)]
    pub allow_no_approval: bool,
    /// An operator's longest session on its machines, e.g. "8h" (none: the server's limit).
    #[serde(default)]
    pub max_session: Option<String>,
    /// An operator releases sessions on its machines only with approvals signed by an
    /// approver's own key (`fernwart key init`).
    #[serde(default)]
    pub require_signed: bool,
}

/// `PATCH /v1/orgs/{name}`: changes some of an operator's rules; what it leaves out stays.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrgSetRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_no_approval: Option<bool>,
    /// The longest session, e.g. "8h"; "none" lifts the organization's own limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_session: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_signed: Option<bool>,
}

/// One organization (`GET /v1/orgs`, and the answer to `POST /v1/orgs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgInfo {
    pub name: String,
    pub kind: OrgKind,
    /// For a provider: the operators it may service; for an operator: its providers.
    pub contracts: Vec<String>,
    /// Sessions without approval allowed on its machines (operators).
    pub allow_no_approval: bool,
    /// The longest session on its machines, in seconds (operators; none: the server's limit).
    pub max_session_secs: Option<i64>,
    /// Approvals on its machines must be signed (operators).
    #[serde(default)]
    pub require_signed: bool,
}

/// `POST /v1/contracts`: `provider` may service `operator`'s machines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContractAddRequest {
    pub provider: String,
    pub operator: String,
}

/// The answer to `POST /v1/contracts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContractInfo {
    pub provider: String,
    pub operator: String,
}
