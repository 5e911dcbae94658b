//! Maintenance sessions: the state machine and what a session allows now.
//!
//! `prepared → requested → approved → active → ended`, or `rejected`, `expired`, `revoked`.
//! [`transition`] is the one place that says which event may move a session where; the store
//! applies its answer only if the state is still the one it was decided on (compare-and-set).

pub use fernwart_api::SessionState;

use super::UnixSecs;

/// Something that happens to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEvent {
    /// A technician connects to a session that needs an approver's release.
    Request,
    /// An approver releases it.
    Approve,
    /// An approver refuses it.
    Reject,
    /// A technician connects to a usable session.
    Activate,
    /// Someone ends it.
    End,
    /// Its time window closed.
    Expire,
    /// Its machine was revoked.
    Revoke,
}

impl SessionEvent {
    pub const ALL: [SessionEvent; 7] = [
        SessionEvent::Request,
        SessionEvent::Approve,
        SessionEvent::Reject,
        SessionEvent::Activate,
        SessionEvent::End,
        SessionEvent::Expire,
        SessionEvent::Revoke,
    ];

    /// The verb in the audit trail (`session.approve`, ...).
    pub fn verb(self) -> &'static str {
        match self {
            SessionEvent::Request => "request",
            SessionEvent::Approve => "approve",
            SessionEvent::Reject => "reject",
            SessionEvent::Activate => "activate",
            SessionEvent::End => "end",
            SessionEvent::Expire => "expire",
            SessionEvent::Revoke => "revoke",
        }
    }
}

/// Why an event cannot apply to a session in its state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the session is already {0}")]
    Over(SessionState),
    #[error("the session is {0}, not waiting for approval")]
    NotWaiting(SessionState),
    #[error("the session is {0}; it must be approved first")]
    NotApproved(SessionState),
    #[error("the session does not need an approval")]
    NoApprovalNeeded,
    #[error("the session is already {0}")]
    Already(SessionState),
}

/// The state `event` moves a session in `state` to, or why it cannot.
pub fn transition(
    state: SessionState,
    approval_required: bool,
    event: SessionEvent,
) -> Result<SessionState, Refused> {
    use SessionEvent as E;
    use SessionState as S;
    if state.is_terminal() {
        return Err(Refused::Over(state));
    }
    match (event, state) {
        (E::End, _) => Ok(S::Ended),
        (E::Expire, _) => Ok(S::Expired),
        (E::Revoke, _) => Ok(S::Revoked),
        (E::Request, S::Prepared) if approval_required => Ok(S::Requested),
        (E::Request, S::Prepared) => Err(Refused::NoApprovalNeeded),
        (E::Request, S::Requested) => Err(Refused::Already(state)),
        (E::Request, _) => Err(Refused::NotWaiting(state)),
        (E::Approve | E::Reject, S::Prepared | S::Requested) => {
            Ok(if event == E::Approve { S::Approved } else { S::Rejected })
        }
        (E::Approve | E::Reject, _) => Err(Refused::NotWaiting(state)),
        (E::Activate, S::Approved) => Ok(S::Active),
        (E::Activate, S::Prepared | S::Requested) if !approval_required => Ok(S::Active),
        (E::Activate, S::Active) => Err(Refused::Already(state)),
        (E::Activate, _) => Err(Refused::NotApproved(state)),
    }
}

/// A session as the rules see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: i64,
    pub name: String,
    pub machine_id: i64,
    pub machine: String,
    /// The operator organization that owns the machine, if any.
    pub machine_org: Option<String>,
    pub targets: Vec<String>,
    /// The assigned technicians: (user id, name), ordered by name.
    pub users: Vec<(i64, String)>,
    pub reason: String,
    pub state: SessionState,
    pub approval_required: bool,
    pub from: UnixSecs,
    pub until: UnixSecs,
    pub created_by: String,
    pub created_at: UnixSecs,
    pub decided_by: Option<String>,
    pub ended_by: Option<String>,
    /// The agent records each tunnel connection of the session (set when it is prepared).
    pub record: bool,
    /// The server's random number for the session, part of what an approver signs.
    pub nonce: String,
    /// The approver's signature it was released with (operator-signed approvals).
    pub approval: Option<SignedApproval>,
    /// The end-to-end keys of its technicians' CLIs, each registered when it connected (the
    /// grant names them; an approver's signature covers them).
    pub tech_keys: Vec<String>,
}

/// An approver's signature over a session's grant, made on their own device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedApproval {
    /// `ed25519:BASE64`.
    pub key: String,
    /// Base64.
    pub signature: String,
}

impl Session {
    pub fn is_terminal(&self) -> bool {
        self.state.is_terminal()
    }

    pub fn has_user(&self, user_id: i64) -> bool {
        self.users.iter().any(|(id, _)| *id == user_id)
    }

    pub fn user_names(&self) -> Vec<String> {
        self.users.iter().map(|(_, n)| n.clone()).collect()
    }

    /// Whether traffic may flow now (state and window; the rest is checked per tunnel).
    pub fn usable(&self, now: UnixSecs) -> bool {
        now >= self.from
            && now < self.until
            && match self.state {
                SessionState::Approved | SessionState::Active => true,
                SessionState::Prepared | SessionState::Requested => !self.approval_required,
                _ => false,
            }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SessionEvent as E;
    use SessionState as S;

    const STATES: [SessionState; 8] = [
        S::Prepared,
        S::Requested,
        S::Approved,
        S::Active,
        S::Rejected,
        S::Ended,
        S::Expired,
        S::Revoked,
    ];

    /// The expected table, written out by hand: (state, approval required, event) → new state.
    fn expected(state: SessionState, approval: bool, event: SessionEvent) -> Option<SessionState> {
        let open = !matches!(state, S::Rejected | S::Ended | S::Expired | S::Revoked);
        if !open {
            return None;
        }
        match event {
            E::End => Some(S::Ended),
            E::Expire => Some(S::Expired),
            E::Revoke => Some(S::Revoked),
            E::Request => (state == S::Prepared && approval).then_some(S::Requested),
            E::Approve => matches!(state, S::Prepared | S::Requested).then_some(S::Approved),
            E::Reject => matches!(state, S::Prepared | S::Requested).then_some(S::Rejected),
            E::Activate => match state {
                S::Approved => Some(S::Active),
                S::Prepared | S::Requested if !approval => Some(S::Active),
                _ => None,
            },
        }
    }

    #[test]
    fn every_state_and_event() {
        let mut checked = 0;
        for state in STATES {
            for approval in [true, false] {
                for event in E::ALL {
                    let got = transition(state, approval, event).ok();
                    assert_eq!(
                        got,
                        expected(state, approval, event),
                        "{state} {approval} {event:?}"
                    );
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 8 * 2 * 7);
    }

    #[test]
    fn nothing_leaves_a_terminal_state() {
        for state in STATES.into_iter().filter(|s| s.is_terminal()) {
            for event in E::ALL {
                assert_eq!(transition(state, true, event), Err(Refused::Over(state)));
            }
        }
    }

    #[test]
    fn refusals_say_why() {
        assert_eq!(transition(S::Active, true, E::Approve), Err(Refused::NotWaiting(S::Active)));
        assert_eq!(
            transition(S::Requested, true, E::Activate),
            Err(Refused::NotApproved(S::Requested))
        );
        assert_eq!(transition(S::Prepared, false, E::Request), Err(Refused::NoApprovalNeeded));
        assert_eq!(
            transition(S::Ended, true, E::End).unwrap_err().to_string(),
            "the session is already ended"
        );
    }

    fn session(state: SessionState, approval: bool) -> Session {
        Session {
            id: 1,
            name: "s1".into(),
            machine_id: 1,
            machine: "m1".into(),
            machine_org: None,
            targets: vec!["plc".into()],
            users: vec![(7, "tech1".into())],
            reason: "t".into(),
            state,
            approval_required: approval,
            from: 100,
            until: 200,
            created_by: "admin".into(),
            created_at: 0,
            decided_by: None,
            ended_by: None,
            record: false,
            nonce: "n1".into(),
            approval: None,
            tech_keys: vec![],
        }
    }

    #[test]
    fn usable_only_when_released_and_inside_the_window() {
        assert!(!session(S::Prepared, true).usable(150));
        assert!(!session(S::Requested, true).usable(150));
        assert!(session(S::Approved, true).usable(150));
        assert!(session(S::Active, true).usable(150));
        assert!(session(S::Prepared, false).usable(150));
        let s = session(S::Approved, true);
        assert!(!s.usable(99));
        assert!(s.usable(100));
        assert!(!s.usable(200));
        for state in STATES.into_iter().filter(|s| s.is_terminal()) {
            assert!(!session(state, false).usable(150), "{state}");
        }
    }
}
