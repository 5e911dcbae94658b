//! API tokens for automation: `/v1/tokens`, `/v1/tokens/ID/revoke`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Redacted, Role};

/// `POST /v1/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenCreateRequest {
    pub role: Role,
    pub org: Option<String>,
    /// When the token stops working (RFC 3339).
    pub expires: String,
}

/// The answer to `POST /v1/tokens`: the secret, shown this once.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenCreated {
    pub id: i64,
    /// The name the token acts under in the audit trail (`token-ID`).
    pub name: String,
    pub token: String,
    pub role: Role,
    pub org: Option<String>,
    pub expires: String,
}

impl fmt::Debug for TokenCreated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCreated")
            .field("id", &self.id)
            .field("token", &Redacted)
            .field("role", &self.role)
            .field("expires", &self.expires)
            .finish()
    }
}

/// One row of `GET /v1/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub id: i64,
    pub name: String,
    pub role: Role,
    pub org: Option<String>,
    pub created_by: String,
    pub created_at: String,
    pub expires: String,
    pub revoked: bool,
}

/// The answer to `POST /v1/tokens/ID/revoke`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRevoked {
    pub id: i64,
    pub revoked: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_stays_out_of_debug() {
        let t = TokenCreated {
            id: 1,
            name: "token-1".into(),
            token: "fw_secret".into(),
            role: Role::Auditor,
            org: None,
            expires: "2030-01-01T00:00:00Z".into(),
        };
        assert!(!format!("{t:?}").contains("fw_secret"));
    }

    #[test]
    fn requests_refuse_unknown_fields() {
        let r: Result<TokenCreateRequest, _> =
            serde_json::from_str(r#"{"role":"auditor","org":null,"expires":"x","scope":"all"}"#);
        assert!(r.is_err());
    }
}
