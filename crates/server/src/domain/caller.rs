//! Who is asking: a user authenticated by a login token, as the authorization rules see them.

pub use fernwart_api::Scope;

use super::{Role, UnixSecs};

/// A caller authenticated by a login token.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user_id: i64,
    pub name: String,
    pub role: Role,
    pub scope: Scope,
    /// When the login token ends.
    pub login_expires: UnixSecs,
    /// When the account ends, if it is temporary.
    pub account_expires: Option<UnixSecs>,
    pub disabled: bool,
    /// The caller's IP address, for the audit trail.
    pub source: String,
    /// Set when the caller is an API token (automation), not a person's login.
    pub api_token: Option<i64>,
    /// The caller's organization; none: the platform's own staff (no organization rules).
    pub org: Option<String>,
    /// The operators whose machines the caller's organization services under contract.
    pub serves: Vec<String>,
    /// When the login was last used (none: never since it was made, or an API token).
    pub last_used: Option<UnixSecs>,
}

impl Caller {
    /// The earlier of the login's and the account's end: no link may outlive it.
    pub fn valid_until(&self) -> UnixSecs {
        match self.account_expires {
            Some(a) => a.min(self.login_expires),
            None => self.login_expires,
        }
    }
}

impl Caller {
    /// Whether the caller may see and work on machines of `machine_org` (none: a machine of no
    /// organization, open to all as before organizations existed).
    pub fn sees_org(&self, machine_org: Option<&str>) -> bool {
        match (self.org.as_deref(), machine_org) {
            (None, _) | (_, None) => true,
            (Some(own), Some(m)) => {
                own.eq_ignore_ascii_case(m) || self.serves.iter().any(|o| o.eq_ignore_ascii_case(m))
            }
        }
    }
}
