//! The server's one authorization decision, shaped like the agent's `policy::check`: a pure
//! function of (caller, action, object, now) that allows or refuses with a reason a user can
//! read. Every API handler and every link asks it; the same reason reaches the CLI and the
//! audit trail.

use crate::domain::{session::Session, Caller, Role, Scope, UnixSecs};

/// What a caller wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    MfaEnroll,
    MfaConfirm,
    /// Change one's own password.
    PasswordChange,
    UserAdd,
    UserList,
    UserDisable,
    MachineAdd,
    MachineList,
    MachineRevoke,
    SessionCreate,
    SessionList,
    SessionShow,
    SessionApprove,
    SessionReject,
    SessionEnd,
    /// Withdraw a released session (it becomes `revoked`).
    SessionRevoke,
    /// Open a technician link to the session (`fernwart connect`).
    SessionConnect,
    /// Open one tunnel on a technician link.
    TunnelOpen,
    AuditList,
    TokenCreate,
    TokenList,
    TokenRevoke,
    OrgAdd,
    OrgList,
    ContractAdd,
}

impl Action {
    pub const ALL: [Action; 25] = [
        Action::MfaEnroll,
        Action::MfaConfirm,
        Action::PasswordChange,
        Action::UserAdd,
        Action::UserList,
        Action::UserDisable,
        Action::MachineAdd,
        Action::MachineList,
        Action::MachineRevoke,
        Action::SessionCreate,
        Action::SessionList,
        Action::SessionShow,
        Action::SessionApprove,
        Action::SessionReject,
        Action::SessionEnd,
        Action::SessionRevoke,
        Action::SessionConnect,
        Action::TunnelOpen,
        Action::AuditList,
        Action::TokenCreate,
        Action::TokenList,
        Action::TokenRevoke,
        Action::OrgAdd,
        Action::OrgList,
        Action::ContractAdd,
    ];

    /// The action's name in the audit trail.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::MfaEnroll => "mfa.enroll",
            Action::MfaConfirm => "mfa.confirm",
            Action::PasswordChange => "user.passwd",
            Action::UserAdd => "user.add",
            Action::UserList => "user.list",
            Action::UserDisable => "user.disable",
            Action::MachineAdd => "machine.add",
            Action::MachineList => "machine.list",
            Action::MachineRevoke => "machine.revoke",
            Action::SessionCreate => "session.create",
            Action::SessionList => "session.list",
            Action::SessionShow => "session.show",
            Action::SessionApprove => "session.approve",
            Action::SessionReject => "session.reject",
            Action::SessionEnd => "session.end",
            Action::SessionRevoke => "session.revoke",
            Action::SessionConnect => "session.connect",
            Action::TunnelOpen => "tunnel.open",
            Action::AuditList => "audit.list",
            Action::TokenCreate => "token.create",
            Action::TokenList => "token.list",
            Action::TokenRevoke => "token.revoke",
            Action::OrgAdd => "org.add",
            Action::OrgList => "org.list",
            Action::ContractAdd => "contract.add",
        }
    }

    /// The roles that may take this action at all (the matrix, as data). Object rules (own
    /// sessions, four eyes) narrow it further in [`decide`].
    pub fn roles(self) -> &'static [Role] {
        use Role::*;
        match self {
            Action::MfaEnroll | Action::MfaConfirm | Action::PasswordChange => {
                &[Admin, SessionAdmin, Technician, Approver, Auditor]
            }
            Action::UserAdd | Action::UserDisable => &[Admin],
            Action::UserList => &[Admin, Auditor],
            Action::MachineAdd | Action::MachineRevoke => &[Admin],
            Action::MachineList => &[Admin, SessionAdmin, Technician, Approver, Auditor],
            Action::SessionCreate => &[Admin, SessionAdmin],
            Action::SessionList | Action::SessionShow => {
                &[Admin, SessionAdmin, Technician, Approver, Auditor]
            }
            Action::SessionApprove | Action::SessionReject => &[Approver],
            Action::SessionEnd => &[Admin, SessionAdmin, Approver, Technician],
            Action::SessionRevoke => &[Admin, Approver],
            Action::SessionConnect | Action::TunnelOpen => &[Technician],
            Action::AuditList => &[Admin, Auditor],
            Action::TokenCreate | Action::TokenList | Action::TokenRevoke => &[Admin],
            Action::OrgAdd | Action::ContractAdd => &[Admin],
            Action::OrgList => &[Admin, Auditor],
        }
    }

    fn needs_second_factor(self) -> bool {
        !matches!(self, Action::MfaEnroll | Action::MfaConfirm)
    }

    /// What only a person's own login may do, never an API token.
    fn needs_a_person(self) -> bool {
        matches!(
            self,
            Action::MfaEnroll
                | Action::MfaConfirm
                | Action::PasswordChange
                | Action::TokenCreate
                | Action::TokenList
                | Action::TokenRevoke
                | Action::SessionApprove
                | Action::SessionReject
                | Action::SessionConnect
                | Action::TunnelOpen
        )
    }
}

/// What the action is about.
#[derive(Debug, Clone, Copy)]
pub enum Object<'a> {
    /// Nothing in particular (lists).
    None,
    /// Something named: a user, machine or session to create, a user to disable.
    Named(&'a str),
    Session(&'a Session),
}

impl Object<'_> {
    /// Its name, for the audit trail.
    pub fn name(&self) -> &str {
        match self {
            Object::None => "",
            Object::Named(n) => n,
            Object::Session(s) => &s.name,
        }
    }
}

/// How a refusal is answered: the HTTP status class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// No valid login.
    Unauthenticated,
    /// Logged in, but not allowed.
    Forbidden,
    /// Not visible to the caller: answered as if it did not exist.
    Hidden,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Refusal {
    pub denial: Denial,
    pub reason: String,
}

impl Refusal {
    fn new(denial: Denial, reason: impl Into<String>) -> Self {
        Self { denial, reason: reason.into() }
    }
}

pub const SECOND_FACTOR_FIRST: &str = "second factor not set up: run `fernwart mfa enroll` and `fernwart mfa confirm CODE`, then log in with --otp";

/// Allows `caller` to take `action` on `object` at `now`, or says why not.
pub fn decide(
    caller: &Caller,
    action: Action,
    object: Object<'_>,
    now: UnixSecs,
) -> Result<(), Refusal> {
    authenticated(caller, now)?;
    if action.needs_second_factor() && caller.scope != Scope::Full {
        return Err(Refusal::new(Denial::Forbidden, SECOND_FACTOR_FIRST));
    }
    if caller.api_token.is_some() && action.needs_a_person() {
        return Err(Refusal::new(
            Denial::Forbidden,
            "an API token may not do this: it needs a person's login with a second factor",
        ));
    }
    decide_object(caller, action, object)
}

/// The login and the account are valid at `now` (every action starts with this).
pub fn authenticated(caller: &Caller, now: UnixSecs) -> Result<(), Refusal> {
    if caller.disabled {
        return Err(Refusal::new(Denial::Unauthenticated, "account disabled"));
    }
    if caller.account_expires.is_some_and(|e| e <= now) {
        return Err(Refusal::new(Denial::Unauthenticated, "account expired"));
    }
    if caller.login_expires <= now {
        return Err(Refusal::new(Denial::Unauthenticated, "login expired: run `fernwart login`"));
    }
    Ok(())
}

fn decide_object(caller: &Caller, action: Action, object: Object<'_>) -> Result<(), Refusal> {
    let Object::Session(s) = object else {
        return role_allows(caller, action);
    };
    // Sessions on machines of organizations the caller's does not serve are answered as
    // missing; so are, to a technician, sessions not their own.
    if !caller.sees_org(s.machine_org.as_deref()) {
        return Err(Refusal::new(Denial::Hidden, format!("no session {}", s.name)));
    }
    let own = s.has_user(caller.user_id);
    if caller.role == Role::Technician && !own {
        return Err(Refusal::new(Denial::Hidden, format!("no session {}", s.name)));
    }
    match action {
        Action::SessionApprove | Action::SessionReject => {
            role_allows(caller, action)?;
            // An approver releases only sessions on machines of their own organization.
            if let Some(m) = s.machine_org.as_deref() {
                if !caller.org.as_deref().is_some_and(|o| o.eq_ignore_ascii_case(m)) {
                    return Err(Refusal::new(
                        Denial::Forbidden,
                        format!(
                            "machine {} belongs to {m}: only its own approvers decide",
                            s.machine
                        ),
                    ));
                }
            }
            // Four eyes: whoever prepared or works in a session never releases or refuses it.
            if own || s.created_by == caller.name {
                let verb = if action == Action::SessionApprove { "approve" } else { "reject" };
                return Err(Refusal::new(
                    Denial::Forbidden,
                    format!("four eyes: you cannot {verb} a session you prepared or work in"),
                ));
            }
            Ok(())
        }
        Action::SessionConnect | Action::TunnelOpen => {
            if !own {
                return Err(Refusal::new(
                    Denial::Forbidden,
                    format!("you are not assigned to session {}", s.name),
                ));
            }
            role_allows(caller, action)
        }
        _ => role_allows(caller, action),
    }
}

fn role_allows(caller: &Caller, action: Action) -> Result<(), Refusal> {
    let roles = action.roles();
    if roles.contains(&caller.role) {
        return Ok(());
    }
    let needed: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
    Err(Refusal::new(
        Denial::Forbidden,
        format!("role {} may not do this (needs {})", caller.role, needed.join(" or ")),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::SessionState;

    const NOW: UnixSecs = 1_000;

    fn caller(role: Role, id: i64, name: &str) -> Caller {
        Caller {
            user_id: id,
            name: name.into(),
            role,
            scope: Scope::Full,
            login_expires: NOW + 100,
            account_expires: None,
            disabled: false,
            source: "127.0.0.1".into(),
            api_token: None,
            org: None,
            serves: vec![],
            last_used: None,
        }
    }

    fn session() -> Session {
        Session {
            id: 1,
            name: "s1".into(),
            machine_id: 1,
            machine: "m1".into(),
            machine_org: None,
            targets: vec!["plc".into()],
            users: vec![(10, "tech1".into())],
            reason: "T-1".into(),
            state: SessionState::Requested,
            approval_required: true,
            from: 0,
            until: NOW + 100,
            created_by: "sadmin".into(),
            created_at: 0,
            decided_by: None,
            ended_by: None,
        }
    }

    /// Every role against every action, on a session that is neither theirs nor prepared by
    /// them (and for technicians: one that is theirs). `true` = allowed.
    #[test]
    fn the_role_matrix() {
        use Action::*;
        use Role::*;
        #[rustfmt::skip]
        let table: &[(Action, [bool; 5])] = &[
            //                 admin  s-admin tech   approver auditor
            (MfaEnroll,       [true,  true,   true,  true,   true ]),
            (MfaConfirm,      [true,  true,   true,  true,   true ]),
            (PasswordChange,  [true,  true,   true,  true,   true ]),
            (UserAdd,         [true,  false,  false, false,  false]),
            (UserList,        [true,  false,  false, false,  true ]),
            (UserDisable,     [true,  false,  false, false,  false]),
            (MachineAdd,      [true,  false,  false, false,  false]),
            (MachineList,     [true,  true,   true,  true,   true ]),
            (MachineRevoke,   [true,  false,  false, false,  false]),
            (SessionCreate,   [true,  true,   false, false,  false]),
            (SessionList,     [true,  true,   true,  true,   true ]),
            (SessionShow,     [true,  true,   true,  true,   true ]),
            (SessionApprove,  [false, false,  false, true,   false]),
            (SessionReject,   [false, false,  false, true,   false]),
            (SessionEnd,      [true,  true,   true,  true,   false]),
            (SessionRevoke,   [true,  false,  false, true,   false]),
            (SessionConnect,  [false, false,  true,  false,  false]),
            (TunnelOpen,      [false, false,  true,  false,  false]),
            (AuditList,       [true,  false,  false, false,  true ]),
            (TokenCreate,     [true,  false,  false, false,  false]),
            (TokenList,       [true,  false,  false, false,  false]),
            (TokenRevoke,     [true,  false,  false, false,  false]),
            (OrgAdd,          [true,  false,  false, false,  false]),
            (OrgList,         [true,  false,  false, false,  true ]),
            (ContractAdd,     [true,  false,  false, false,  false]),
        ];
        assert_eq!(table.len(), Action::ALL.len());
        let s = session();
        let roles = [Admin, SessionAdmin, Technician, Approver, Auditor];
        for (action, allowed) in table {
            for (role, want) in roles.iter().zip(allowed) {
                // Technicians act on their own session; everyone else on someone else's.
                let c = if *role == Technician {
                    caller(*role, 10, "tech1")
                } else {
                    caller(*role, 20, "other")
                };
                let object = match action {
                    SessionShow | SessionApprove | SessionReject | SessionEnd | SessionRevoke
                    | SessionConnect | TunnelOpen => Object::Session(&s),
                    UserDisable => Object::Named("someone"),
                    _ => Object::None,
                };
                let got = decide(&c, *action, object, NOW);
                assert_eq!(got.is_ok(), *want, "{role} {action:?}: {got:?}");
            }
        }
    }

    #[test]
    fn technicians_see_only_their_own_sessions() {
        let s = session();
        let other = caller(Role::Technician, 11, "tech2");
        for action in
            [Action::SessionShow, Action::SessionEnd, Action::SessionConnect, Action::TunnelOpen]
        {
            let r = decide(&other, action, Object::Session(&s), NOW).unwrap_err();
            assert_eq!(r.denial, Denial::Hidden, "{action:?}");
        }
    }

    #[test]
    fn organizations_bound_what_is_seen_and_released() {
        let mut s = session();
        s.machine_org = Some("plant-a".into());
        let mut own = caller(Role::Approver, 20, "op-a");
        own.org = Some("plant-a".into());
        assert!(decide(&own, Action::SessionApprove, Object::Session(&s), NOW).is_ok());
        let mut other = caller(Role::Approver, 21, "op-b");
        other.org = Some("plant-b".into());
        let r = decide(&other, Action::SessionApprove, Object::Session(&s), NOW).unwrap_err();
        assert_eq!(r.denial, Denial::Hidden);
        // A provider's approver under contract sees it but may not release it.
        let mut provider = caller(Role::Approver, 22, "op-p");
        provider.org = Some("builder".into());
        provider.serves = vec!["plant-a".into()];
        assert!(decide(&provider, Action::SessionShow, Object::Session(&s), NOW).is_ok());
        let r = decide(&provider, Action::SessionApprove, Object::Session(&s), NOW).unwrap_err();
        assert_eq!(r.denial, Denial::Forbidden);
        // Staff of no organization see all; a machine of none is open to all.
        assert!(decide(
            &caller(Role::Auditor, 23, "aud"),
            Action::SessionShow,
            Object::Session(&s),
            NOW
        )
        .is_ok());
        s.machine_org = None;
        assert!(decide(&other, Action::SessionApprove, Object::Session(&s), NOW).is_ok());
    }

    #[test]
    fn four_eyes() {
        let mut s = session();
        let approver = caller(Role::Approver, 20, "op1");
        assert!(decide(&approver, Action::SessionApprove, Object::Session(&s), NOW).is_ok());
        s.created_by = "op1".into();
        for action in [Action::SessionApprove, Action::SessionReject] {
            let r = decide(&approver, action, Object::Session(&s), NOW).unwrap_err();
            assert!(r.reason.contains("four eyes"), "{r:?}");
        }
        let mut s = session();
        s.users.push((20, "op1".into()));
        assert!(decide(&approver, Action::SessionReject, Object::Session(&s), NOW).is_err());
    }

    #[test]
    fn expired_logins_accounts_and_disabled_users_do_nothing() {
        let s = session();
        let mut c = caller(Role::Technician, 10, "tech1");
        assert!(decide(&c, Action::TunnelOpen, Object::Session(&s), NOW).is_ok());
        c.login_expires = NOW;
        assert_eq!(
            decide(&c, Action::TunnelOpen, Object::Session(&s), NOW).unwrap_err().denial,
            Denial::Unauthenticated
        );
        let mut c = caller(Role::Technician, 10, "tech1");
        c.account_expires = Some(NOW - 1);
        assert_eq!(
            decide(&c, Action::TunnelOpen, Object::Session(&s), NOW).unwrap_err().reason,
            "account expired"
        );
        let mut c = caller(Role::Technician, 10, "tech1");
        c.disabled = true;
        assert!(decide(&c, Action::MachineList, Object::None, NOW).is_err());
        assert_eq!(caller(Role::Admin, 1, "a").valid_until(), NOW + 100);
        let mut c = caller(Role::Admin, 1, "a");
        c.account_expires = Some(NOW + 5);
        assert_eq!(c.valid_until(), NOW + 5);
    }

    #[test]
    fn api_tokens_act_by_their_role_but_never_as_a_person() {
        let s = session();
        let mut t = caller(Role::Admin, 0, "token-1");
        t.api_token = Some(1);
        assert!(decide(&t, Action::UserAdd, Object::Named("x"), NOW).is_ok());
        assert!(decide(&t, Action::SessionEnd, Object::Session(&s), NOW).is_ok());
        for action in
            [Action::TokenCreate, Action::TokenRevoke, Action::PasswordChange, Action::MfaEnroll]
        {
            assert!(decide(&t, action, Object::None, NOW).is_err(), "{action:?}");
        }
        let mut approver = caller(Role::Approver, 0, "token-2");
        approver.api_token = Some(2);
        assert!(decide(&approver, Action::SessionApprove, Object::Session(&s), NOW).is_err());
    }

    #[test]
    fn without_a_second_factor_only_mfa_setup() {
        let mut c = caller(Role::Admin, 1, "admin");
        c.scope = Scope::MfaSetup;
        for action in Action::ALL {
            let r = decide(&c, action, Object::None, NOW);
            assert_eq!(
                r.is_ok(),
                matches!(action, Action::MfaEnroll | Action::MfaConfirm),
                "{action:?}"
            );
        }
    }
}
