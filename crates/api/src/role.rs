//! The roles a user can hold.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// What a user may do; one role per user. On the wire: `"admin"`, `"session-admin"`, ...
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Users, machines, sessions.
    Admin,
    /// Prepares sessions.
    SessionAdmin,
    /// Connects to the sessions they are assigned to.
    Technician,
    /// Releases or rejects sessions (four eyes: never their own).
    Approver,
    /// Reads the audit trail.
    Auditor,
}

impl Role {
    pub const ALL: [Role; 5] =
        [Role::Admin, Role::SessionAdmin, Role::Technician, Role::Approver, Role::Auditor];

    /// The name on the wire and on the command line.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::SessionAdmin => "session-admin",
            Role::Technician => "technician",
            Role::Approver => "approver",
            Role::Auditor => "auditor",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, so that `{:<14}` lines up columns.
        f.pad(self.as_str())
    }
}

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL.into_iter().find(|r| r.as_str() == s).ok_or_else(|| UnknownRole(s.to_owned()))
    }
}

/// A role name that is none of [`Role::ALL`]; its message lists the valid ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownRole(pub String);

impl fmt::Display for UnknownRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown role {:?}: one of ", self.0)?;
        for (i, r) in Role::ALL.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(r.as_str())?;
        }
        Ok(())
    }
}

impl std::error::Error for UnknownRole {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_wire_names() {
        for r in Role::ALL {
            assert_eq!(serde_json::to_string(&r).unwrap(), format!("\"{}\"", r.as_str()));
            assert_eq!(serde_json::from_str::<Role>(&format!("\"{r}\"")).unwrap(), r);
            assert_eq!(r.as_str().parse::<Role>().unwrap(), r);
        }
        assert_eq!(Role::SessionAdmin.to_string(), "session-admin");
        assert_eq!(format!("{:<9}|", Role::Admin), "admin    |");
    }

    #[test]
    fn an_unknown_role_is_refused_with_the_valid_ones() {
        let err = "root".parse::<Role>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown role \"root\": one of admin, session-admin, technician, approver, auditor"
        );
        assert!(serde_json::from_str::<Role>("\"Admin\"").is_err());
        assert!(serde_json::from_str::<Role>("\"session_admin\"").is_err());
    }
}
