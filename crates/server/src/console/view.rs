//! What a page shows its caller: rows built from the store's records, and for each session the
//! buttons the caller may press, asked of [`authz::decide`] and the session state machine (the
//! rules the server applies when the button is pressed; no rule of the console's own).

use super::i18n::Msg;
use crate::{
    authz::{self, Action, Object},
    domain::{
        session::{transition, Session},
        Caller, SessionEvent, SessionState, UnixSecs,
    },
    store::MachineRecord,
    util,
};

/// A machine as the dashboard lists it.
#[derive(Debug, Clone)]
pub struct MachineRow {
    pub name: String,
    pub org: Option<String>,
    pub enrolled: bool,
    pub revoked: bool,
    pub online: bool,
    pub switch: fernwart_api::SwitchState,
    /// The agent takes signed approvals only (`Some(true)`), the server's (`Some(false)`);
    /// none: not reported.
    pub trust: Option<bool>,
    pub last_seen: Option<String>,
    pub cert_until: Option<String>,
    /// What its linked agent says it is (`fernwart-agent 0.1.0`); none: not linked.
    pub software: Option<String>,
}

impl MachineRow {
    /// `live`: the linked agent's key switch and software; none: no agent linked.
    pub fn new(
        m: MachineRecord,
        live: Option<(bool, String)>,
        cert_until: Option<UnixSecs>,
    ) -> Self {
        let (live, software) = live.map_or((None, None), |(on, sw)| (Some(on), Some(sw)));
        let trust = m.trust.as_deref().map(|t| t == fernwart_proto::approval::LEVEL_SIGNED);
        Self {
            name: m.name,
            org: m.org,
            enrolled: m.enrolled_at.is_some(),
            revoked: m.revoked,
            online: live.is_some(),
            switch: fernwart_api::SwitchState::from_link(live),
            trust: if m.operator_requires_signed { Some(true) } else { trust },
            last_seen: m.last_seen.map(util::rfc3339),
            cert_until: cert_until.map(util::rfc3339),
            software,
        }
    }
}

/// The buttons a session row offers its caller.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionActions {
    pub approve: bool,
    /// The caller may approve, but the machine takes only signed approvals: the page offers
    /// signing with a security key (`/sessions/NAME/sign`) or the CLI, no plain button.
    pub signed_only: bool,
    pub reject: bool,
    pub end: bool,
}

impl SessionActions {
    /// What `caller` may do to `s` at `now`; `signature_required`: the machine takes only
    /// approvals signed by an approver's key.
    pub fn decide(caller: &Caller, s: &Session, signature_required: bool, now: UnixSecs) -> Self {
        let may = |action: Action, event: SessionEvent| {
            transition(s.state, s.approval_required, event).is_ok()
                && authz::decide(caller, action, Object::Session(s), now).is_ok()
        };
        let approve = may(Action::SessionApprove, SessionEvent::Approve);
        Self {
            approve: approve && !signature_required,
            signed_only: approve && signature_required,
            reject: may(Action::SessionReject, SessionEvent::Reject),
            end: may(Action::SessionEnd, SessionEvent::End),
        }
    }
}

/// A session as the pages list it.
#[derive(Debug, Clone)]
pub struct SessionRow {
    pub name: String,
    pub state: SessionState,
    pub approval_required: bool,
    pub machine: String,
    pub targets: Vec<String>,
    pub users: Vec<String>,
    pub from: String,
    pub until: String,
    pub reason: String,
    pub created_by: String,
    pub decided_by: Option<String>,
    pub actions: SessionActions,
}

impl SessionRow {
    pub fn new(s: &Session, actions: SessionActions) -> Self {
        Self {
            name: s.name.clone(),
            state: s.state,
            approval_required: s.approval_required,
            machine: s.machine.clone(),
            targets: s.targets.clone(),
            users: s.user_names(),
            from: util::rfc3339(s.from),
            until: util::rfc3339(s.until),
            reason: s.reason.clone(),
            created_by: s.created_by.clone(),
            decided_by: s.decided_by.clone(),
            actions,
        }
    }
}

/// Whether a session waits for an approver's decision.
pub fn waiting(s: &Session) -> bool {
    s.approval_required && matches!(s.state, SessionState::Prepared | SessionState::Requested)
}

/// What the last button did, shown once on the page it led back to.
#[derive(Debug, Clone)]
pub struct Done {
    pub what: Msg,
    pub session: String,
}

impl Done {
    /// From the query `?done=approve&session=NAME` (anything else: nothing).
    pub fn parse(done: Option<&str>, session: Option<&str>) -> Option<Self> {
        let what = match done? {
            "approve" => Msg::DoneApprove,
            "reject" => Msg::DoneReject,
            "end" => Msg::DoneEnd,
            "cut" => Msg::DoneCut,
            "prepare" => Msg::DonePrepare,
            _ => return None,
        };
        let session = session.filter(|s| crate::domain::names::valid(s))?.to_owned();
        Some(Self { what, session })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Role, Scope};

    const NOW: UnixSecs = 1_000;

    fn caller(role: Role, id: i64, name: &str, org: Option<&str>) -> Caller {
        Caller {
            user_id: id,
            name: name.into(),
            role,
            scope: Scope::Full,
            login_expires: NOW + 3600,
            account_expires: None,
            disabled: false,
            source: "127.0.0.1".into(),
            api_token: None,
            org: org.map(str::to_owned),
            serves: vec![],
            last_used: None,
        }
    }

    fn session(state: SessionState, org: Option<&str>) -> Session {
        Session {
            id: 1,
            name: "s1".into(),
            machine_id: 7,
            machine: "m1".into(),
            machine_org: org.map(str::to_owned),
            targets: vec!["plc".into()],
            users: vec![(10, "tech1".into())],
            reason: "T-1".into(),
            state,
            approval_required: true,
            from: NOW - 10,
            until: NOW + 3600,
            created_by: "admin".into(),
            created_at: NOW - 20,
            decided_by: None,
            ended_by: None,
            record: false,
            nonce: "n".into(),
            approval: None,
            tech_keys: vec![],
        }
    }

    #[test]
    fn an_approver_gets_approve_and_reject_on_a_waiting_session() {
        let op = caller(Role::Approver, 20, "op1", None);
        let a = SessionActions::decide(&op, &session(SessionState::Requested, None), false, NOW);
        assert_eq!(
            a,
            SessionActions { approve: true, signed_only: false, reject: true, end: true }
        );
    }

    #[test]
    fn signed_machines_get_no_approve_button() {
        let op = caller(Role::Approver, 20, "op1", None);
        let a = SessionActions::decide(&op, &session(SessionState::Requested, None), true, NOW);
        assert!(!a.approve && a.signed_only && a.reject);
    }

    #[test]
    fn no_buttons_that_the_server_would_refuse() {
        let s = session(SessionState::Requested, Some("plant-a"));
        // A technician: not an approver; ends only its own sessions.
        let tech = caller(Role::Technician, 10, "tech1", None);
        assert_eq!(
            SessionActions::decide(&tech, &s, false, NOW),
            SessionActions { end: true, ..Default::default() }
        );
        let other_tech = caller(Role::Technician, 11, "tech2", None);
        assert_eq!(SessionActions::decide(&other_tech, &s, false, NOW), SessionActions::default());
        // An approver of another operator.
        let foreign = caller(Role::Approver, 21, "op2", Some("plant-b"));
        assert_eq!(SessionActions::decide(&foreign, &s, false, NOW), SessionActions::default());
        // The approver of the machine's own operator.
        let own = caller(Role::Approver, 22, "op3", Some("plant-a"));
        assert!(SessionActions::decide(&own, &s, false, NOW).approve);
        // An auditor presses nothing.
        let aud = caller(Role::Auditor, 30, "aud1", None);
        assert_eq!(SessionActions::decide(&aud, &s, false, NOW), SessionActions::default());
        // Four eyes: who prepared it does not decide it.
        let mut mine = s.clone();
        mine.created_by = "op3".into();
        let a = SessionActions::decide(&own, &mine, false, NOW);
        assert!(!a.approve && !a.reject && !a.signed_only);
        // A session that is over offers nothing.
        let ended = session(SessionState::Ended, None);
        let op = caller(Role::Approver, 20, "op1", None);
        assert_eq!(SessionActions::decide(&op, &ended, false, NOW), SessionActions::default());
        // An approved one can no longer be approved, only ended.
        let a = SessionActions::decide(&op, &session(SessionState::Approved, None), false, NOW);
        assert_eq!(a, SessionActions { end: true, ..Default::default() });
    }

    #[test]
    fn done_notes_come_from_a_fixed_set() {
        assert!(Done::parse(Some("approve"), Some("s1")).is_some());
        assert!(Done::parse(Some("<script>"), Some("s1")).is_none());
        assert!(Done::parse(Some("approve"), Some("<b>")).is_none());
        assert!(Done::parse(None, Some("s1")).is_none());
    }
}
