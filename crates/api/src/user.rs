//! Users: `/v1/users`, `/v1/users/NAME/disable`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Redacted, Role};

/// `POST /v1/users`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserAddRequest {
    pub name: String,
    pub role: Role,
    pub org: Option<String>,
    /// When the account ends (RFC 3339); none: it does not.
    pub expires: Option<String>,
    pub password: String,
}

impl fmt::Debug for UserAddRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserAddRequest")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("org", &self.org)
            .field("expires", &self.expires)
            .field("password", &Redacted)
            .finish()
    }
}

/// The answer to `POST /v1/users`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserAdded {
    pub name: String,
    pub role: Role,
}

/// One row of `GET /v1/users`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    pub name: String,
    pub role: Role,
    pub org: Option<String>,
    pub disabled: bool,
    /// Whether a second factor is confirmed.
    pub mfa: bool,
    /// When the account ends (RFC 3339).
    pub expires: Option<String>,
}

/// The answer to `POST /v1/users/NAME/disable`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserDisabled {
    pub name: String,
    pub disabled: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{hides, parses, refuses_unknown, round_trips};

    const ADD: &str = r#"{"expires":"2030-06-30T00:00:00Z","name":"tech1","org":"acme","password":"Correct-Horse-9","role":"technician"}"#;

    #[test]
    fn user_add_request_is_what_the_cli_sends() {
        let r: UserAddRequest = parses(ADD);
        assert_eq!(r.role, Role::Technician);
        round_trips(&r);
        let r: UserAddRequest =
            parses(r#"{"expires":null,"name":"ap1","org":null,"password":"pw","role":"approver"}"#);
        assert_eq!((r.org, r.expires), (None, None));
        refuses_unknown::<UserAddRequest>(ADD);
        hides(&serde_json::from_str::<UserAddRequest>(ADD).unwrap(), &["Correct"]);
    }

    #[test]
    fn an_unknown_role_is_refused() {
        let bad = ADD.replace("technician", "root");
        let err = serde_json::from_str::<UserAddRequest>(&bad).unwrap_err();
        assert!(err.to_string().contains("root"), "{err}");
    }

    #[test]
    fn user_answers_are_what_the_server_sends() {
        let a: UserAdded = parses(r#"{"name":"tech1","role":"technician"}"#);
        round_trips(&a);

        let list: Vec<UserInfo> = parses(
            r#"[{"disabled":false,"expires":null,"mfa":true,"name":"admin","org":null,"role":"admin"},
                {"disabled":true,"expires":"2030-06-30T00:00:00Z","mfa":false,"name":"tech1","org":"acme","role":"technician"}]"#,
        );
        assert_eq!(list[1].org.as_deref(), Some("acme"));
        assert!(list[1].disabled && !list[1].mfa);
        round_trips(&list);

        let d: UserDisabled = parses(r#"{"disabled":true,"name":"tech1"}"#);
        round_trips(&d);
    }
}
