//! An organization's rules for the machines it operates, and how an admin changes them.

use fernwart_api::OrgKind;

/// What an operator decides about sessions on its machines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OrgPolicy {
    /// Sessions without an approver's release are allowed.
    pub allow_no_approval: bool,
    /// The longest session, in seconds (none: the server's limit).
    pub max_session_secs: Option<i64>,
    /// Approvals must be signed by an approver's own key.
    pub require_signed: bool,
}

/// The shortest and longest limit an operator may set for its sessions.
pub const MAX_SESSION_RANGE: (i64, i64) = (60, 366 * 24 * 3600);

impl OrgPolicy {
    /// Whether an organization of `kind` may have these rules.
    pub fn check(&self, kind: OrgKind) -> Result<(), String> {
        if kind != OrgKind::Operator {
            if self.allow_no_approval || self.require_signed {
                return Err("only an operator decides about approvals on its machines".into());
            }
            if self.max_session_secs.is_some() {
                return Err("only an operator limits sessions on its machines".into());
            }
        }
        if self.allow_no_approval && self.require_signed {
            return Err("--allow-no-approval and --require-signed contradict each other: a signed approval is an approval".into());
        }
        Ok(())
    }
}

/// An admin's change of some of an organization's rules (`fernwart org set`); what it does
/// not name stays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OrgChange {
    pub allow_no_approval: Option<bool>,
    /// `Some(None)` lifts the organization's own limit.
    pub max_session_secs: Option<Option<i64>>,
    pub require_signed: Option<bool>,
}

impl OrgChange {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The rules after this change, if an organization of `kind` may have them.
    pub fn apply(&self, kind: OrgKind, now: OrgPolicy) -> Result<OrgPolicy, String> {
        let next = OrgPolicy {
            allow_no_approval: self.allow_no_approval.unwrap_or(now.allow_no_approval),
            max_session_secs: self.max_session_secs.unwrap_or(now.max_session_secs),
            require_signed: self.require_signed.unwrap_or(now.require_signed),
        };
        next.check(kind)?;
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_keeps_what_it_does_not_name_and_is_checked_whole() {
        let now = OrgPolicy {
            allow_no_approval: true,
            max_session_secs: Some(3600),
            require_signed: false,
        };
        let sign = OrgChange { require_signed: Some(true), ..Default::default() };
        // Signed approvals while sessions need no approval: a contradiction.
        assert!(sign.apply(OrgKind::Operator, now).unwrap_err().contains("contradict"));
        let both = OrgChange { allow_no_approval: Some(false), ..sign };
        let next = both.apply(OrgKind::Operator, now).unwrap();
        assert_eq!(
            next,
            OrgPolicy {
                allow_no_approval: false,
                max_session_secs: Some(3600),
                require_signed: true
            }
        );
        let unlimited = OrgChange { max_session_secs: Some(None), ..Default::default() };
        assert_eq!(unlimited.apply(OrgKind::Operator, next).unwrap().max_session_secs, None);
        assert!(sign.apply(OrgKind::Provider, OrgPolicy::default()).is_err());
        assert!(OrgChange::default().is_empty() && !sign.is_empty());
    }
}
