//! The server's one authorization decision, shaped like the agent's `policy::check`: a pure
//! function of (caller, action, object, now) that allows or refuses with a reason a user can
//! read. Every API handler and every link asks it; the same reason reaches the CLI and the
//! audit trail.

use fernwart_proto::approval::ApproverKey;

use crate::domain::{session::Session, window::Window, Caller, Role, Scope, UnixSecs};

/// What a caller wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    MfaEnroll,
    MfaConfirm,
    /// Change one's own password.
    PasswordChange,
    /// Register, list and remove one's own security keys (WebAuthn).
    SecurityKeyAdd,
    SecurityKeyList,
    SecurityKeyRemove,
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
    /// Cut one open tunnel of a session at once (the web console's live connections).
    TunnelCut,
    AuditList,
    /// Export the whole chain with its checkpoints.
    AuditExport,
    /// Read the records a machine's agent kept (collected by the server).
    MachineAudit,
    /// List and fetch a machine's session recordings (held at its agent).
    RecordingRead,
    TokenCreate,
    TokenList,
    TokenRevoke,
    OrgAdd,
    /// Change an organization's rules (`org set`).
    OrgSet,
    OrgList,
    ContractAdd,
    /// Pre-approve a provider on a machine inside a recurring maintenance window.
    WindowAdd,
    WindowList,
    WindowRemove,
    /// Read the server's settings (password policy, lockout, session limits).
    SettingsRead,
    /// Change them at run time (over `server.toml`).
    SettingsSet,
}

impl Action {
    pub const ALL: [Action; 38] = [
        Action::MfaEnroll,
        Action::MfaConfirm,
        Action::PasswordChange,
        Action::SecurityKeyAdd,
        Action::SecurityKeyList,
        Action::SecurityKeyRemove,
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
        Action::TunnelCut,
        Action::AuditList,
        Action::AuditExport,
        Action::MachineAudit,
        Action::RecordingRead,
        Action::TokenCreate,
        Action::TokenList,
        Action::TokenRevoke,
        Action::OrgAdd,
        Action::OrgSet,
        Action::OrgList,
        Action::ContractAdd,
        Action::WindowAdd,
        Action::WindowList,
        Action::WindowRemove,
        Action::SettingsRead,
        Action::SettingsSet,
    ];

    /// The action's name in the audit trail.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::MfaEnroll => "mfa.enroll",
            Action::MfaConfirm => "mfa.confirm",
            Action::PasswordChange => "user.passwd",
            Action::SecurityKeyAdd => "webauthn.add",
            Action::SecurityKeyList => "webauthn.list",
            Action::SecurityKeyRemove => "webauthn.remove",
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
            Action::TunnelCut => "tunnel.cut",
            Action::AuditList => "audit.list",
            Action::AuditExport => "audit.export",
            Action::MachineAudit => "machine.audit",
            Action::RecordingRead => "recording.read",
            Action::TokenCreate => "token.create",
            Action::TokenList => "token.list",
            Action::TokenRevoke => "token.revoke",
            Action::OrgAdd => "org.add",
            Action::OrgSet => "org.set",
            Action::OrgList => "org.list",
            Action::ContractAdd => "contract.add",
            Action::WindowAdd => "window.add",
            Action::WindowList => "window.list",
            Action::WindowRemove => "window.remove",
            Action::SettingsRead => "settings.read",
            Action::SettingsSet => "settings.set",
        }
    }

    /// The roles that may take this action at all (the matrix, as data). Object rules (own
    /// sessions, four eyes) narrow it further in [`decide`].
    pub fn roles(self) -> &'static [Role] {
        use Role::*;
        match self {
            Action::MfaEnroll
            | Action::MfaConfirm
            | Action::PasswordChange
            | Action::SecurityKeyAdd
            | Action::SecurityKeyList
            | Action::SecurityKeyRemove => &[Admin, SessionAdmin, Technician, Approver, Auditor],
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
            // The operator's approvers watch who is connected and cut at once; admins too.
            Action::TunnelCut => &[Admin, Approver],
            // Technicians see their own records (what they did, what was refused to them).
            Action::AuditList => &[Admin, Auditor, Technician],
            Action::AuditExport => &[Admin, Auditor],
            // What happened on a machine is for those who check it, not for technicians.
            Action::MachineAudit | Action::RecordingRead => &[Admin, Auditor],
            Action::TokenCreate | Action::TokenList | Action::TokenRevoke => &[Admin],
            Action::OrgAdd | Action::OrgSet | Action::ContractAdd => &[Admin],
            Action::OrgList => &[Admin, Auditor],
            // A pre-approval is an approval given ahead: the operator's approvers give it.
            Action::WindowAdd | Action::WindowRemove => &[Approver],
            Action::WindowList => &[Admin, SessionAdmin, Approver, Auditor],
            // The rules logins and sessions live by: for who sets them and who checks them.
            Action::SettingsRead => &[Admin, Auditor],
            // Weakening the lockout or the password policy is the admin's call alone.
            Action::SettingsSet => &[Admin],
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
                | Action::SecurityKeyAdd
                | Action::SecurityKeyList
                | Action::SecurityKeyRemove
                | Action::TokenCreate
                | Action::TokenList
                | Action::TokenRevoke
                | Action::SessionApprove
                | Action::SessionReject
                | Action::WindowAdd
                | Action::WindowRemove
                | Action::SessionConnect
                | Action::TunnelOpen
                | Action::SettingsSet
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
    /// A machine, with the operator organization that owns it.
    Machine {
        name: &'a str,
        org: Option<&'a str>,
    },
}

impl Object<'_> {
    /// Its name, for the audit trail.
    pub fn name(&self) -> &str {
        match self {
            Object::None => "",
            Object::Named(n) => n,
            Object::Session(s) => &s.name,
            Object::Machine { name, .. } => name,
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
    if action == Action::AuditExport {
        role_allows(caller, action)?;
        // An export is the whole chain (a part could not be verified): staff of no
        // organization only.
        if let Some(org) = &caller.org {
            return Err(Refusal::new(
                Denial::Forbidden,
                format!("an export holds the whole trail, of every organization: you are with {org}; `fernwart audit list` shows yours"),
            ));
        }
        return Ok(());
    }
    if let Object::Machine { name, org } = object {
        if !caller.sees_org(org) {
            return Err(Refusal::new(Denial::Hidden, format!("no machine {name}")));
        }
        role_allows(caller, action)?;
        if matches!(action, Action::WindowAdd | Action::WindowRemove) {
            own_operator(caller, name, org)?;
        }
        // Recordings show the plant's own traffic: its operator's staff (or the platform's)
        // read them, not a provider's.
        if action == Action::RecordingRead {
            if let (Some(op), Some(own)) = (org, caller.org.as_deref()) {
                if !own.eq_ignore_ascii_case(op) {
                    return Err(Refusal::new(
                        Denial::Forbidden,
                        format!("the recordings of machine {name} belong to its operator {op}"),
                    ));
                }
            }
        }
        return Ok(());
    }
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
            own_operator(caller, &s.machine, s.machine_org.as_deref())?;
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
        Action::TunnelCut => {
            role_allows(caller, action)?;
            // An approver cuts only on machines of their own operator (like a decision).
            if caller.role == Role::Approver {
                own_operator(caller, &s.machine, s.machine_org.as_deref())?;
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

/// An approver releases only on machines of their own organization (a machine of none: any).
fn own_operator(caller: &Caller, machine: &str, org: Option<&str>) -> Result<(), Refusal> {
    match org {
        Some(m) if !caller.org.as_deref().is_some_and(|o| o.eq_ignore_ascii_case(m)) => {
            Err(Refusal::new(
                Denial::Forbidden,
                format!("machine {machine} belongs to {m}: only its own approvers decide"),
            ))
        }
        _ => Ok(()),
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

// ------------------------------------------------------------------ what lists show

/// Which sessions a list shows the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionScope {
    /// Only sessions this user works in (technicians).
    pub only_user: Option<i64>,
    /// Only sessions on machines this organization may see (its own, its contracted
    /// operators'); none: all.
    pub org: Option<String>,
}

pub fn session_scope(caller: &Caller) -> SessionScope {
    SessionScope {
        only_user: (caller.role == Role::Technician).then_some(caller.user_id),
        org: caller.org.clone(),
    }
}

/// Which audit records the caller sees: (only its own, only its organization's).
pub fn audit_scope(caller: &Caller) -> (Option<String>, Option<String>) {
    if caller.role == Role::Technician {
        return (Some(caller.name.clone()), None);
    }
    (None, caller.org.clone())
}

/// Which machines a list shows the caller: those of organizations it may see (none: all).
pub fn machine_scope(caller: &Caller) -> Option<String> {
    caller.org.clone()
}

/// Whether the caller sees where targets are (address and port). Technicians see machine and
/// target names only: the plant's network layout is none of their business.
pub fn sees_addresses(caller: &Caller) -> bool {
    caller.role != Role::Technician
}

/// Whether the caller sees a user, organization or record of organization `org` in a list:
/// staff of no organization see all; others their own and the operators they serve.
pub fn sees_org_listed(caller: &Caller, org: Option<&str>) -> bool {
    match (caller.org.as_deref(), org) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(_), Some(o)) => caller.sees_org(Some(o)),
    }
}

/// The roles an API token may have: never one that acts as a person (approvals, connects).
pub fn token_role(role: Role) -> Result<(), Refusal> {
    // Approvers and technicians exist to approve and to connect: both need a person.
    if matches!(role, Role::Admin | Role::SessionAdmin | Role::Auditor) {
        return Ok(());
    }
    Err(Refusal::new(
        Denial::Forbidden,
        format!(
            "an API token cannot have role {role}: approvals, connects and tunnels need a person (admin, session-admin or auditor)"
        ),
    ))
}

/// A window pre-approves only a provider under contract with the machine's operator.
pub fn window_provider(
    machine: &str,
    machine_org: Option<&str>,
    providers: &[String],
    provider: &str,
) -> Result<(), Refusal> {
    match machine_org {
        Some(op) if !providers.iter().any(|p| p.eq_ignore_ascii_case(provider)) => {
            Err(Refusal::new(
                Denial::Forbidden,
                format!(
                    "{provider} has no service contract with {op}, which owns machine {machine}"
                ),
            ))
        }
        _ => Ok(()),
    }
}

// ------------------------------------------------------------------ preparing a session

/// What the store knows, inside the transaction that prepares a session, for the rules of
/// organizations, contracts and windows to decide on.
#[derive(Debug, Clone, Default)]
pub struct PrepareFacts {
    pub machine: String,
    /// The operator organization that owns the machine (none: no organization rules).
    pub machine_org: Option<String>,
    /// The providers under contract with that operator.
    pub providers: Vec<String>,
    /// Whether that operator allows sessions without approval on its machines.
    pub operator_allows_no_approval: bool,
    /// The longest session that operator allows, in seconds.
    pub operator_max_session: Option<i64>,
    /// The users to be put on the session, as found.
    pub users: Vec<UserFacts>,
    /// The machine's recurring maintenance windows.
    pub windows: Vec<Window>,
    /// Approvals on the machine must be signed by an approver's key ([`SigningFacts`]).
    pub signatures_required: bool,
}

#[derive(Debug, Clone)]
pub struct UserFacts {
    pub name: String,
    pub role: Role,
    pub disabled: bool,
    pub org: Option<String>,
}

/// What the session asks for.
#[derive(Debug, Clone, Copy)]
pub struct PrepareAsk {
    pub approval_required: bool,
    pub from: UnixSecs,
    pub until: UnixSecs,
    /// `sessions.allow_no_approval`: for machines of no organization.
    pub no_approval_default: bool,
}

/// Who releases a session that may be prepared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Release {
    /// An approver of the machine's operator, later.
    Approver,
    /// Nobody: the operator (or the server setting) allows sessions without approval.
    NotNeeded,
    /// The operator did ahead: the session lies inside this maintenance window for the
    /// provider of all its technicians.
    Window(Window),
}

impl PrepareFacts {
    /// Whether `org` may work on the machine: it is its operator, or a provider under contract.
    fn serves(&self, org: Option<&str>) -> bool {
        match (&self.machine_org, org) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(op), Some(o)) => {
                op.eq_ignore_ascii_case(o)
                    || self.providers.iter().any(|p| p.eq_ignore_ascii_case(o))
            }
        }
    }
}

/// Whether `caller` may prepare a session with `ask` on a machine with `facts`, and who must
/// release it.
pub fn prepare(caller: &Caller, ask: PrepareAsk, facts: &PrepareFacts) -> Result<Release, Refusal> {
    let forbid = |why: String| Err(Refusal::new(Denial::Forbidden, why));
    let op = facts.machine_org.as_deref();
    // A session-admin prepares sessions only where a contract allows (staff of no
    // organization anywhere).
    if let (Some(op), Some(own)) = (op, caller.org.as_deref()) {
        if !facts.serves(Some(own)) {
            return forbid(format!(
                "{own} has no service contract with {op}, which owns machine {}",
                facts.machine
            ));
        }
    }
    for u in &facts.users {
        if u.disabled {
            return forbid(format!("user {} is disabled", u.name));
        }
        if u.role != Role::Technician {
            return forbid(format!(
                "user {} is {}: only technicians work in sessions",
                u.name, u.role
            ));
        }
        // Only technicians of the operator or of a provider under contract with it.
        if let Some(op) = op {
            if !facts.serves(u.org.as_deref()) {
                return forbid(format!(
                    "user {} is not with {op} nor with a provider under contract with it",
                    u.name
                ));
            }
        }
    }
    if let (Some(op), Some(max)) = (op, facts.operator_max_session) {
        if ask.until - ask.from > max {
            return forbid(format!(
                "sessions on machines of {op} may last at most {} min",
                max / 60
            ));
        }
    }
    // Only an approver's own key can sign: neither the server (--no-approval) nor a window
    // releases a session whose approval must be signed.
    if !ask.approval_required && facts.signatures_required {
        return forbid(format!(
            "sessions on machine {} need an approval signed by an approver's key: --no-approval is not possible there",
            facts.machine
        ));
    }
    if !ask.approval_required {
        return match op {
            Some(_) if facts.operator_allows_no_approval => Ok(Release::NotNeeded),
            None if ask.no_approval_default => Ok(Release::NotNeeded),
            Some(op) => forbid(format!(
                "sessions on machines of {op} need an approver's release: {op} does not allow --no-approval"
            )),
            None => forbid(
                "sessions need an approver's release: --no-approval is off (server setting sessions.allow_no_approval)"
                    .to_owned(),
            ),
        };
    }
    Ok(pre_approval(ask, facts).map_or(Release::Approver, |w| Release::Window(w.clone())))
}

/// The maintenance window that pre-approves the session, if any: every technician on it is
/// with the window's provider, and its whole time window lies inside one occurrence.
fn pre_approval(ask: PrepareAsk, facts: &PrepareFacts) -> Option<&Window> {
    if facts.users.is_empty() || facts.signatures_required {
        return None;
    }
    facts.windows.iter().find(|w| {
        facts.serves(Some(&w.provider))
            && facts
                .users
                .iter()
                .all(|u| u.org.as_deref().is_some_and(|o| o.eq_ignore_ascii_case(&w.provider)))
            && w.covers(ask.from, ask.until)
    })
}

// ------------------------------------------------------------------ operator-signed approvals

/// What the store knows about whose signature a machine's approvals need.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SigningFacts {
    pub machine: String,
    /// The operator that owns it, if any.
    pub machine_org: Option<String>,
    /// That operator requires signed approvals on all its machines.
    pub operator_requires: bool,
    /// The machine's agent holds grants only with an approver's signature (its trust level).
    pub agent_requires: bool,
    /// The approver keys its agent reported (`ed25519:BASE64`); empty: none known.
    pub approvers: Vec<String>,
}

impl SigningFacts {
    pub fn required(&self) -> bool {
        self.operator_requires || self.agent_requires
    }
}

/// The signature an approval comes with, as the server found it.
#[derive(Debug, Clone, Copy)]
pub enum Signature<'a> {
    /// None: the server's approval only.
    None,
    /// It verifies over the session's grant with this key.
    Valid(&'a ApproverKey),
    /// It does not verify, or is malformed: why.
    Invalid(&'a str),
}

/// Whether an approval with `signature` may release a session on the machine of `facts`.
pub fn approval_signature(facts: &SigningFacts, signature: Signature<'_>) -> Result<(), Refusal> {
    let forbid = |why: String| Err(Refusal::new(Denial::Forbidden, why));
    let m = &facts.machine;
    match signature {
        Signature::Invalid(why) => {
            forbid(format!("the approval's signature is not valid for this session's grant: {why}"))
        }
        Signature::Valid(key) => {
            let pinned =
                facts.approvers.iter().any(|a| a.parse::<ApproverKey>().ok().as_ref() == Some(key));
            if facts.approvers.is_empty() || pinned {
                return Ok(());
            }
            forbid(format!(
                "key {} is not one of machine {m}'s approvers: its agent would refuse the grant; the operator pins approver keys in the agent's agent.toml ([trust] approvers)",
                key.fingerprint()
            ))
        }
        Signature::None if facts.required() => {
            let who = match (&facts.machine_org, facts.operator_requires) {
                (Some(op), true) => format!("its operator {op} requires it"),
                _ => "its agent takes no other".to_owned(),
            };
            forbid(format!(
                "machine {m} takes only approvals signed by an approver's key ({who}): make one with `fernwart key init`, have the operator pin it in the agent's agent.toml, and approve again"
            ))
        }
        Signature::None => Ok(()),
    }
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
            record: false,
            nonce: "n1".into(),
            approval: None,
            tech_keys: vec![],
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
            (SecurityKeyAdd,  [true,  true,   true,  true,   true ]),
            (SecurityKeyList, [true,  true,   true,  true,   true ]),
            (SecurityKeyRemove, [true, true,  true,  true,   true ]),
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
            (TunnelCut,       [true,  false,  false, true,   false]),
            (AuditList,       [true,  false,  true,  false,  true ]),
            (AuditExport,     [true,  false,  false, false,  true ]),
            (MachineAudit,    [true,  false,  false, false,  true ]),
            (RecordingRead,   [true,  false,  false, false,  true ]),
            (TokenCreate,     [true,  false,  false, false,  false]),
            (TokenList,       [true,  false,  false, false,  false]),
            (TokenRevoke,     [true,  false,  false, false,  false]),
            (OrgAdd,          [true,  false,  false, false,  false]),
            (OrgSet,          [true,  false,  false, false,  false]),
            (OrgList,         [true,  false,  false, false,  true ]),
            (ContractAdd,     [true,  false,  false, false,  false]),
            (WindowAdd,       [false, false,  false, true,   false]),
            (WindowList,      [true,  true,   false, true,   true ]),
            (WindowRemove,    [false, false,  false, true,   false]),
            (SettingsRead,    [true,  false,  false, false,  true ]),
            (SettingsSet,     [true,  false,  false, false,  false]),
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
                    | SessionConnect | TunnelOpen | TunnelCut => Object::Session(&s),
                    UserDisable => Object::Named("someone"),
                    WindowAdd | WindowRemove | MachineAudit | RecordingRead => {
                        Object::Machine { name: "m1", org: None }
                    }
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
        for action in [
            Action::TokenCreate,
            Action::TokenRevoke,
            Action::PasswordChange,
            Action::MfaEnroll,
            Action::SettingsSet,
        ] {
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

    /// Where the caller's organization stands to the machine's operator `plant-a`.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Rel {
        /// Staff of no organization.
        Staff,
        /// The operator itself.
        Operator,
        /// A provider under contract with it.
        Provider,
        /// Anyone else.
        Stranger,
    }

    fn caller_in(role: Role, rel: Rel) -> Caller {
        let mut c = caller(role, if role == Role::Technician { 10 } else { 20 }, "x");
        match rel {
            Rel::Staff => {}
            Rel::Operator => c.org = Some("plant-a".into()),
            Rel::Provider => {
                c.org = Some("builder".into());
                c.serves = vec!["PLANT-A".into()];
            }
            Rel::Stranger => {
                c.org = Some("plant-b".into());
                c.serves = vec!["plant-c".into()];
            }
        }
        c
    }

    /// The role matrix again, on a machine of operator `plant-a`, for each organization
    /// relation: `A` allowed, `F` forbidden, `H` hidden (answered as missing), `-` the role
    /// may not do it anyway (forbidden).
    #[test]
    fn the_role_matrix_by_organization() {
        use Action::*;
        use Rel::*;
        use Role::*;
        let mut s = session();
        s.machine_org = Some("plant-a".into());
        let rels = [Staff, Operator, Provider, Stranger];
        #[rustfmt::skip]
        let table: &[(Role, Action, [char; 4])] = &[
            //                                   staff operator provider stranger
            (Approver,     SessionApprove,      ['F', 'A',     'F',     'H']),
            (Approver,     SessionReject,       ['F', 'A',     'F',     'H']),
            (Approver,     SessionShow,         ['A', 'A',     'A',     'H']),
            (Approver,     SessionRevoke,       ['A', 'A',     'A',     'H']),
            (Approver,     TunnelCut,           ['F', 'A',     'F',     'H']),
            (Admin,        TunnelCut,           ['A', 'A',     'A',     'H']),
            (Technician,   TunnelCut,           ['-', '-',     '-',     'H']),
            (Approver,     WindowAdd,           ['F', 'A',     'F',     'H']),
            (Approver,     WindowRemove,        ['F', 'A',     'F',     'H']),
            (SessionAdmin, SessionShow,         ['A', 'A',     'A',     'H']),
            (SessionAdmin, SessionEnd,          ['A', 'A',     'A',     'H']),
            (SessionAdmin, WindowAdd,           ['-', '-',     '-',     'H']),
            (Technician,   SessionConnect,      ['A', 'A',     'A',     'H']),
            (Technician,   TunnelOpen,          ['A', 'A',     'A',     'H']),
            (Technician,   SessionEnd,          ['A', 'A',     'A',     'H']),
            (Auditor,      SessionShow,         ['A', 'A',     'A',     'H']),
            (Auditor,      SessionEnd,          ['-', '-',     '-',     'H']),
            (Admin,        SessionRevoke,       ['A', 'A',     'A',     'H']),
            (Admin,        SessionApprove,      ['-', '-',     '-',     'H']),
            (Auditor,      MachineAudit,        ['A', 'A',     'A',     'H']),
            (Auditor,      RecordingRead,       ['A', 'A',     'F',     'H']),
            (Technician,   RecordingRead,       ['-', '-',     '-',     'H']),
        ];
        for (role, action, want) in table {
            for (rel, want) in rels.iter().zip(want) {
                let c = caller_in(*role, *rel);
                let object = match action {
                    WindowAdd | WindowRemove | MachineAudit | RecordingRead => {
                        Object::Machine { name: "m1", org: Some("plant-a") }
                    }
                    _ => Object::Session(&s),
                };
                let got = decide(&c, *action, object, NOW);
                let got = match got {
                    Ok(()) => 'A',
                    Err(r) if r.denial == Denial::Hidden => 'H',
                    Err(r) if r.reason.starts_with("role ") => '-',
                    Err(_) => 'F',
                };
                assert_eq!(got, *want, "{role} {action:?} as {rel:?}");
            }
        }
    }

    fn facts() -> PrepareFacts {
        PrepareFacts {
            machine: "m1".into(),
            machine_org: Some("plant-a".into()),
            providers: vec!["builder".into()],
            operator_allows_no_approval: false,
            operator_max_session: Some(2 * 3600),
            users: vec![UserFacts {
                name: "tech1".into(),
                role: Role::Technician,
                disabled: false,
                org: Some("builder".into()),
            }],
            windows: vec![],
            signatures_required: false,
        }
    }

    fn ask(from: UnixSecs, until: UnixSecs) -> PrepareAsk {
        PrepareAsk { approval_required: true, from, until, no_approval_default: false }
    }

    #[test]
    fn who_prepares_what_by_organization() {
        let f = facts();
        let a = ask(NOW, NOW + 3600);
        // Staff, the operator and the contracted provider prepare; others do not.
        for rel in [Rel::Staff, Rel::Operator, Rel::Provider] {
            let c = caller_in(Role::SessionAdmin, rel);
            assert_eq!(prepare(&c, a, &f), Ok(Release::Approver), "{rel:?}");
        }
        let r = prepare(&caller_in(Role::SessionAdmin, Rel::Stranger), a, &f).unwrap_err();
        assert!(r.reason.contains("no service contract"), "{r:?}");
        // Only technicians of the operator or a contracted provider, enabled.
        let staff = caller_in(Role::SessionAdmin, Rel::Staff);
        for (org, role, disabled, word) in [
            (Some("plant-b"), Role::Technician, false, "not with plant-a"),
            (None, Role::Technician, false, "not with plant-a"),
            (Some("builder"), Role::Approver, false, "only technicians"),
            (Some("builder"), Role::Technician, true, "disabled"),
        ] {
            let mut f = facts();
            f.users[0].org = org.map(str::to_owned);
            f.users[0].role = role;
            f.users[0].disabled = disabled;
            let r = prepare(&staff, a, &f).unwrap_err();
            assert!(r.reason.contains(word), "{org:?} {role}: {r:?}");
        }
        let mut f = facts();
        f.users[0].org = Some("Plant-A".into());
        assert_eq!(prepare(&staff, a, &f), Ok(Release::Approver));
        // The operator's longest session.
        let r = prepare(&staff, ask(NOW, NOW + 3 * 3600), &facts()).unwrap_err();
        assert!(r.reason.contains("at most 120 min"), "{r:?}");
        // Without approval only where allowed.
        let free = PrepareAsk { approval_required: false, ..a };
        assert!(prepare(&staff, free, &facts()).is_err());
        let mut f = facts();
        f.operator_allows_no_approval = true;
        assert_eq!(prepare(&staff, free, &f), Ok(Release::NotNeeded));
        let mut f = facts();
        f.machine_org = None;
        assert!(prepare(&staff, free, &f).is_err());
        let on = PrepareAsk { no_approval_default: true, ..free };
        assert_eq!(prepare(&staff, on, &f), Ok(Release::NotNeeded));
    }

    #[test]
    fn a_maintenance_window_pre_approves_its_provider_inside_it() {
        use crate::domain::window::{parse_time, Days, Window};
        // Wednesday 2 December 2026, 06:00-08:00 Berlin = 05:00-07:00Z.
        let open: UnixSecs = 1_796_187_600;
        let w = Window {
            id: 7,
            machine_id: 1,
            machine: "m1".into(),
            provider: "builder".into(),
            days: Days::parse("mon-fri").unwrap(),
            start: parse_time("06:00").unwrap(),
            end: parse_time("08:00").unwrap(),
            zone: "Europe/Berlin".into(),
            created_by: "op-a".into(),
            created_at: 0,
        };
        let mut f = facts();
        f.operator_max_session = None;
        f.windows = vec![w.clone()];
        let staff = caller_in(Role::SessionAdmin, Rel::Provider);
        assert_eq!(prepare(&staff, ask(open, open + 7200), &f), Ok(Release::Window(w.clone())));
        // A minute too long, or too early: an approver decides.
        assert_eq!(prepare(&staff, ask(open, open + 7260), &f), Ok(Release::Approver));
        assert_eq!(prepare(&staff, ask(open - 60, open + 60), &f), Ok(Release::Approver));
        // A technician of another organization on it: an approver decides.
        let mut mixed = f.clone();
        mixed.users.push(UserFacts {
            name: "tech-a".into(),
            role: Role::Technician,
            disabled: false,
            org: Some("plant-a".into()),
        });
        assert_eq!(prepare(&staff, ask(open, open + 60), &mixed), Ok(Release::Approver));
        // A window of a provider whose contract is gone pre-approves nothing.
        let mut lapsed = f.clone();
        lapsed.providers.clear();
        lapsed.users[0].org = Some("plant-a".into());
        lapsed.windows[0].provider = "plant-a".into();
        assert_eq!(
            prepare(&caller_in(Role::SessionAdmin, Rel::Operator), ask(open, open + 60), &lapsed),
            Ok(Release::Window(lapsed.windows[0].clone()))
        );
        let mut lapsed = f.clone();
        lapsed.providers.clear();
        let r = prepare(&caller_in(Role::SessionAdmin, Rel::Staff), ask(open, open + 60), &lapsed);
        assert!(r.is_err(), "{r:?}");
        // The window also names who set it, for the record.
        assert_eq!(w.describe(), "mon-fri 06:00-08:00 Europe/Berlin");
        // Where approvals must be signed, a window cannot release: an approver signs.
        let signed = PrepareFacts { signatures_required: true, ..f.clone() };
        assert_eq!(prepare(&staff, ask(open, open + 7200), &signed), Ok(Release::Approver));
    }

    #[test]
    fn where_approvals_must_be_signed_only_an_approver_key_releases() {
        // Preparing: no session without approval there, whatever the operator allows.
        let mut f = facts();
        f.operator_allows_no_approval = true;
        f.signatures_required = true;
        let free = PrepareAsk { approval_required: false, ..ask(NOW, NOW + 60) };
        let r = prepare(&caller_in(Role::SessionAdmin, Rel::Operator), free, &f).unwrap_err();
        assert!(r.reason.contains("signed"), "{r:?}");

        let key = |s: &str| s.parse::<ApproverKey>().unwrap();
        let pinned = "ed25519:11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";
        let other = key("ed25519:PUAXw+hDiVqStwqnTRt+vJyYLM8uxJaMwM1V8Sr0Zgw=");
        let mut s = SigningFacts {
            machine: "m1".into(),
            machine_org: Some("plant-a".into()),
            operator_requires: true,
            agent_requires: false,
            approvers: vec![],
        };
        // Approving: required by the operator, a signature by any key (the agent names none).
        let r = approval_signature(&s, Signature::None).unwrap_err();
        assert!(r.reason.contains("plant-a requires it"), "{r:?}");
        assert!(approval_signature(&s, Signature::Valid(&other)).is_ok());
        // The agent names its approvers: only theirs.
        s.approvers = vec![pinned.into()];
        let r = approval_signature(&s, Signature::Valid(&other)).unwrap_err();
        assert!(r.reason.contains("not one of machine m1's approvers"), "{r:?}");
        assert!(approval_signature(&s, Signature::Valid(&key(pinned))).is_ok());
        assert!(approval_signature(&s, Signature::Invalid("bad")).is_err());
        // Required by the agent only.
        s.operator_requires = false;
        s.agent_requires = true;
        let r = approval_signature(&s, Signature::None).unwrap_err();
        assert!(r.reason.contains("its agent takes no other"), "{r:?}");
        // Nobody requires it: the server's approval, or a signature (checked all the same).
        s.agent_requires = false;
        assert!(approval_signature(&s, Signature::None).is_ok());
        assert!(approval_signature(&s, Signature::Invalid("bad")).is_err());
    }

    #[test]
    fn windows_name_only_providers_under_contract() {
        let providers = vec!["builder".to_owned()];
        assert!(window_provider("m1", Some("plant-a"), &providers, "BUILDER").is_ok());
        assert!(window_provider("m1", Some("plant-a"), &providers, "other").is_err());
        assert!(window_provider("m1", None, &[], "anyone").is_ok());
    }

    #[test]
    fn lists_and_addresses() {
        let t = caller(Role::Technician, 10, "tech1");
        assert_eq!(session_scope(&t).only_user, Some(10));
        assert_eq!(audit_scope(&t), (Some("tech1".into()), None));
        assert_eq!(
            audit_scope(&caller_in(Role::Auditor, Rel::Operator)),
            (None, Some("plant-a".into()))
        );
        assert_eq!(audit_scope(&caller(Role::Auditor, 1, "staff")), (None, None));
        let r = decide(
            &caller_in(Role::Auditor, Rel::Operator),
            Action::AuditExport,
            Object::None,
            NOW,
        );
        assert!(r.unwrap_err().reason.contains("whole trail"));
        assert!(!sees_addresses(&t));
        let a = caller_in(Role::Auditor, Rel::Provider);
        assert_eq!(
            session_scope(&a),
            SessionScope { only_user: None, org: Some("builder".into()) }
        );
        assert!(sees_addresses(&a));
        assert!(sees_org_listed(&a, Some("plant-a")));
        assert!(sees_org_listed(&a, Some("builder")));
        assert!(!sees_org_listed(&a, Some("plant-b")));
        assert!(!sees_org_listed(&a, None));
        assert!(sees_org_listed(&caller(Role::Auditor, 1, "staff"), None));
        for role in Role::ALL {
            assert_eq!(
                token_role(role).is_ok(),
                matches!(role, Role::Admin | Role::SessionAdmin | Role::Auditor),
                "{role}"
            );
        }
    }
}
