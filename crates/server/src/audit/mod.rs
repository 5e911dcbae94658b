//! Typed audit events. Each change writes its event in the change's own transaction (the store
//! takes an [`Entry`] with every write); link and tunnel events go through a batching writer.
//! The hash chain and the SIEM sinks build on these records later.

pub mod alerts;
pub mod siem;
pub mod signing;
pub mod verify;
pub mod webhook;

pub mod agent;

use serde_json::{json, Value};

use crate::domain::{Role, SessionEvent, SessionState};

/// One record: who did what, from where.
#[derive(Debug, Clone)]
pub struct Entry {
    /// A user name, a machine name, or `system`.
    pub actor: String,
    /// The IP address the action came from, `local` or `server`.
    pub source: String,
    pub event: Event,
}

impl Entry {
    pub fn new(actor: impl Into<String>, source: impl Into<String>, event: Event) -> Self {
        Self { actor: actor.into(), source: source.into(), event }
    }

    /// An event of the server itself.
    pub fn system(event: Event) -> Self {
        Self::new("system", "server", event)
    }
}

/// Why a login failed (recorded, never shown to the caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginFailure {
    UnknownUser,
    WrongPassword,
    WrongOrReusedCode,
    MissingCode,
    /// A security key's assertion that does not verify, or whose challenge was spent.
    WrongKey,
    /// A security key whose signature counter did not grow: a cloned key, or a replay.
    KeyCounter,
    Locked,
    Disabled,
    Expired,
}

impl LoginFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            LoginFailure::UnknownUser => "unknown user",
            LoginFailure::WrongPassword => "wrong password",
            LoginFailure::WrongOrReusedCode => "wrong or reused code",
            LoginFailure::MissingCode => "second factor missing",
            LoginFailure::WrongKey => "wrong or replayed security key assertion",
            LoginFailure::KeyCounter => "security key counter did not grow (cloned key?)",
            LoginFailure::Locked => "locked",
            LoginFailure::Disabled => "account disabled",
            LoginFailure::Expired => "account expired",
        }
    }
}

#[derive(Debug, Clone)]
pub enum Event {
    ServerInit {
        public_url: String,
    },
    Login {
        user: String,
        scope: &'static str,
    },
    LoginFailed {
        user: String,
        reason: LoginFailure,
        failures: Option<i64>,
    },
    Logout {
        user: String,
    },
    TokenCreate {
        name: String,
        role: Role,
        org: Option<String>,
        expires: String,
    },
    TokenRevoke {
        name: String,
    },
    OrgAdd {
        name: String,
        kind: fernwart_api::OrgKind,
        /// An operator that requires signed approvals on its machines.
        require_signed: bool,
    },
    /// An admin changed an organization's rules: what it has now.
    OrgSet {
        name: String,
        policy: crate::domain::org::OrgPolicy,
    },
    ContractAdd {
        provider: String,
        operator: String,
    },
    /// An admin changed settings at run time: each with its value before and after.
    SettingsSet {
        changes: Vec<crate::domain::settings::Change>,
    },
    /// The server ended a login (its technician link dropped: resuming needs a fresh login).
    LoginEnded {
        user: String,
        reason: String,
    },
    PasswordChange {
        user: String,
    },
    Lockout {
        user: String,
        failures: i64,
        locked_for_secs: i64,
    },
    MfaEnroll {
        user: String,
    },
    MfaConfirm {
        user: String,
    },
    /// A security key registered (WebAuthn), with its name and key fingerprint.
    WebauthnAdd {
        user: String,
        name: String,
        fingerprint: String,
    },
    WebauthnRemove {
        user: String,
        name: String,
        fingerprint: String,
    },
    UserAdd {
        name: String,
        role: Role,
        org: Option<String>,
        expires: Option<String>,
    },
    UserDisable {
        name: String,
    },
    MachineAdd {
        name: String,
        org: Option<String>,
        token_expires: String,
    },
    MachineRevoke {
        name: String,
    },
    MachineEnrol {
        name: String,
        fingerprint: String,
        not_after: String,
        /// The agent's end-to-end key, sent with its certificate request.
        e2e_key: Option<String>,
    },
    EnrolRefused {
        machine: Option<String>,
        reason: String,
    },
    AgentConnect {
        machine: String,
        agent: String,
        switch_on: bool,
        targets: Vec<String>,
    },
    AgentDisconnect {
        machine: String,
        reason: String,
    },
    AgentRefused {
        machine: Option<String>,
        reason: String,
        fingerprint: Option<String>,
    },
    /// The server began to hold a machine's own records after record 1 (the agent's first
    /// ones were rotated away before any server collected them).
    AgentAuditStart {
        machine: String,
        first_seq: u64,
    },
    /// The oldest of a machine's records held by the server were deleted (over the cap).
    AgentAuditPruned {
        machine: String,
        dropped: u64,
        first_kept: u64,
    },
    /// A batch of a machine's own records does not link to what the server holds, or a record
    /// does not verify: refused, nothing of it stored (`alert.agent_chain`).
    AgentChainBroken {
        machine: String,
        refusal: agent::Refusal,
        /// The places the batch held, and the last one the server holds (0: none).
        batch: (u64, u64),
        held: u64,
    },
    Switch {
        machine: String,
        on: bool,
    },
    /// The machine's operator changed its agent's trust anchor (approver keys) while it runs.
    TrustChange {
        machine: String,
        level: String,
        approvers: Vec<String>,
    },
    /// The machine's agent refused a session's grant (its operator's check failed): an alert.
    GrantRefused {
        machine: String,
        session: String,
        reason: String,
    },
    SessionCreate {
        name: String,
        machine: String,
        targets: Vec<String>,
        users: Vec<String>,
        from: String,
        until: String,
        reason: String,
        approval_required: bool,
        /// The session is recorded at the agent.
        record: bool,
    },
    SessionChange {
        session: String,
        event: SessionEvent,
        from: SessionState,
        to: SessionState,
    },
    /// An approver released a session with a signature by their own key (operator-signed
    /// approvals): `session.approve`, naming the key.
    SessionApproveSigned {
        session: String,
        from: SessionState,
        /// `ed25519:BASE64`.
        key: String,
        fingerprint: String,
    },
    /// A session prepared inside a maintenance window of its technicians' provider: released
    /// by the operator's pre-approval.
    SessionPreapproved {
        session: String,
        window: i64,
        /// `mon-fri 06:00-08:00 Europe/Berlin`.
        schedule: String,
        provider: String,
        /// The approver who set the window.
        approved_by: String,
    },
    WindowAdd {
        machine: String,
        window: i64,
        provider: String,
        schedule: String,
    },
    WindowRemove {
        machine: String,
        window: i64,
        provider: String,
        schedule: String,
    },
    /// Found by an alert rule (`alerts.rs`) in the records before it.
    Alert {
        rule: &'static str,
        subject: String,
        details: Value,
    },
    ConnectRefused {
        session: String,
        reason: String,
    },
    Connect {
        session: String,
        targets: Vec<String>,
    },
    Disconnect {
        session: String,
        reason: String,
    },
    TunnelOpen {
        session: String,
        target: String,
    },
    /// An open tunnel cut at once by someone watching (the console's live connections).
    TunnelCut {
        session: String,
        target: String,
        /// Whose tunnel it was.
        user: String,
    },
    TunnelClose {
        session: String,
        target: String,
        outcome: String,
        seconds: u64,
        /// Bytes from the technician to the target and back (what crossed the server).
        bytes_up: u64,
        bytes_down: u64,
        duration_ms: u64,
    },
    /// A session recording fetched from its machine's agent through the server (the server
    /// relays it; it keeps no copy).
    RecordingFetch {
        machine: String,
        session: String,
        id: String,
    },
    TunnelRefused {
        session: String,
        target: String,
        reason: String,
    },
    /// An action the caller's role, the four-eyes rule or the object's owner does not allow.
    AccessRefused {
        action: &'static str,
        object: String,
        reason: String,
    },
}

impl Event {
    /// The kind, as stored and listed (`session.approve`, `auth.login_failed`, ...).
    pub fn action(&self) -> String {
        let a = match self {
            Event::ServerInit { .. } => "server.init",
            Event::Login { .. } => "auth.login",
            Event::LoginFailed {
                reason: LoginFailure::Locked | LoginFailure::Disabled | LoginFailure::Expired,
                ..
            } => "auth.login_refused",
            Event::LoginFailed { .. } => "auth.login_failed",
            Event::Lockout { .. } => "auth.lockout",
            Event::Logout { .. } => "auth.logout",
            Event::LoginEnded { .. } => "auth.login_ended",
            Event::TokenCreate { .. } => "token.create",
            Event::TokenRevoke { .. } => "token.revoke",
            Event::OrgAdd { .. } => "org.add",
            Event::OrgSet { .. } => "org.set",
            Event::SettingsSet { .. } => "settings.set",
            Event::ContractAdd { .. } => "contract.add",
            Event::PasswordChange { .. } => "user.passwd",
            Event::MfaEnroll { .. } => "mfa.enroll",
            Event::MfaConfirm { .. } => "mfa.confirm",
            Event::WebauthnAdd { .. } => "webauthn.add",
            Event::WebauthnRemove { .. } => "webauthn.remove",
            Event::UserAdd { .. } => "user.add",
            Event::UserDisable { .. } => "user.disable",
            Event::MachineAdd { .. } => "machine.add",
            Event::MachineRevoke { .. } => "machine.revoke",
            Event::MachineEnrol { .. } => "machine.enrol",
            Event::EnrolRefused { .. } => "machine.enrol_refused",
            Event::AgentConnect { .. } => "agent.connect",
            Event::AgentDisconnect { .. } => "agent.disconnect",
            Event::AgentRefused { .. } => "agent.refused",
            Event::AgentAuditStart { .. } => "agent.audit_start",
            Event::AgentAuditPruned { .. } => "agent.audit_pruned",
            Event::AgentChainBroken { .. } => "alert.agent_chain",
            Event::Switch { .. } => "machine.switch",
            Event::GrantRefused { .. } => "session.grant_refused",
            Event::TrustChange { .. } => "machine.trust",
            Event::SessionCreate { .. } => "session.create",
            Event::SessionChange { event, .. } => return format!("session.{}", event.verb()),
            Event::Alert { rule, .. } => return format!("alert.{rule}"),
            Event::SessionPreapproved { .. } => "session.preapproved",
            Event::SessionApproveSigned { .. } => "session.approve",
            Event::WindowAdd { .. } => "window.add",
            Event::WindowRemove { .. } => "window.remove",
            Event::ConnectRefused { .. } => "session.connect_refused",
            Event::Connect { .. } => "session.connect",
            Event::Disconnect { .. } => "session.disconnect",
            Event::TunnelOpen { .. } => "tunnel.open",
            Event::TunnelClose { .. } => "tunnel.close",
            Event::TunnelCut { .. } => "tunnel.cut",
            Event::TunnelRefused { .. } => "tunnel.refused",
            Event::RecordingFetch { .. } => "recording.fetch",
            Event::AccessRefused { .. } => "access.refused",
        };
        a.to_owned()
    }

    /// The object the event is about (a user, machine or session name).
    pub fn target(&self) -> &str {
        match self {
            Event::ServerInit { .. } => "",
            Event::SettingsSet { .. } => "settings",
            Event::Login { user, .. }
            | Event::LoginFailed { user, .. }
            | Event::Lockout { user, .. }
            | Event::Logout { user }
            | Event::LoginEnded { user, .. }
            | Event::TokenCreate { name: user, .. }
            | Event::TokenRevoke { name: user }
            | Event::OrgAdd { name: user, .. }
            | Event::OrgSet { name: user, .. }
            | Event::ContractAdd { provider: user, .. }
            | Event::PasswordChange { user }
            | Event::MfaEnroll { user }
            | Event::MfaConfirm { user }
            | Event::WebauthnAdd { user, .. }
            | Event::WebauthnRemove { user, .. } => user,
            Event::UserAdd { name, .. } | Event::UserDisable { name } => name,
            Event::MachineAdd { name, .. }
            | Event::MachineRevoke { name, .. }
            | Event::MachineEnrol { name, .. } => name,
            Event::WindowAdd { machine, .. } | Event::WindowRemove { machine, .. } => machine,
            Event::EnrolRefused { machine, .. } | Event::AgentRefused { machine, .. } => {
                machine.as_deref().unwrap_or("")
            }
            Event::AgentConnect { machine, .. }
            | Event::AgentDisconnect { machine, .. }
            | Event::AgentAuditStart { machine, .. }
            | Event::AgentAuditPruned { machine, .. }
            | Event::AgentChainBroken { machine, .. }
            | Event::TrustChange { machine, .. }
            | Event::Switch { machine, .. } => machine,
            Event::SessionCreate { name, .. } => name,
            Event::SessionChange { session, .. }
            | Event::SessionPreapproved { session, .. }
            | Event::SessionApproveSigned { session, .. }
            | Event::ConnectRefused { session, .. }
            | Event::Connect { session, .. }
            | Event::Disconnect { session, .. }
            | Event::TunnelOpen { session, .. }
            | Event::TunnelClose { session, .. }
            | Event::TunnelCut { session, .. }
            | Event::TunnelRefused { session, .. }
            | Event::RecordingFetch { session, .. }
            | Event::GrantRefused { session, .. } => session,
            Event::Alert { subject, .. } => subject,
            Event::AccessRefused { object, .. } => object,
        }
    }

    /// The machine the event concerns, if it names one (for filters and organizations).
    pub fn machine(&self) -> Option<&str> {
        match self {
            Event::MachineAdd { name, .. }
            | Event::MachineRevoke { name }
            | Event::MachineEnrol { name, .. } => Some(name),
            Event::EnrolRefused { machine, .. } | Event::AgentRefused { machine, .. } => {
                machine.as_deref()
            }
            Event::AgentConnect { machine, .. }
            | Event::AgentDisconnect { machine, .. }
            | Event::AgentAuditStart { machine, .. }
            | Event::AgentAuditPruned { machine, .. }
            | Event::AgentChainBroken { machine, .. }
            | Event::Switch { machine, .. }
            | Event::SessionCreate { machine, .. }
            | Event::WindowAdd { machine, .. }
            | Event::WindowRemove { machine, .. }
            | Event::GrantRefused { machine, .. }
            | Event::TrustChange { machine, .. }
            | Event::RecordingFetch { machine, .. } => Some(machine),
            _ => None,
        }
    }

    /// The session the event concerns, if any.
    pub fn session(&self) -> Option<&str> {
        match self {
            Event::SessionCreate { name, .. } => Some(name),
            Event::SessionChange { session, .. }
            | Event::SessionPreapproved { session, .. }
            | Event::SessionApproveSigned { session, .. }
            | Event::ConnectRefused { session, .. }
            | Event::Connect { session, .. }
            | Event::Disconnect { session, .. }
            | Event::TunnelOpen { session, .. }
            | Event::TunnelClose { session, .. }
            | Event::TunnelCut { session, .. }
            | Event::TunnelRefused { session, .. }
            | Event::GrantRefused { session, .. }
            | Event::RecordingFetch { session, .. } => Some(session),
            _ => None,
        }
    }

    /// Everything else about the event, as a JSON object.
    pub fn details(&self) -> Value {
        match self {
            Event::ServerInit { public_url } => json!({"public_url": public_url}),
            Event::Login { scope, .. } => json!({"scope": scope}),
            Event::LoginFailed { reason, failures, .. } => match failures {
                Some(n) => json!({"reason": reason.as_str(), "failures": n}),
                None => json!({"reason": reason.as_str()}),
            },
            Event::Lockout { failures, locked_for_secs, .. } => {
                json!({"alert": true, "failures": failures, "locked_for_secs": locked_for_secs})
            }
            Event::MfaEnroll { .. } | Event::MfaConfirm { .. } => json!({"kind": "totp"}),
            Event::WebauthnAdd { name, fingerprint, .. }
            | Event::WebauthnRemove { name, fingerprint, .. } => {
                json!({"kind": "webauthn", "name": name, "fingerprint": fingerprint})
            }
            Event::Logout { .. } | Event::PasswordChange { .. } => json!({}),
            Event::LoginEnded { reason, .. } => json!({"reason": reason}),
            Event::TokenCreate { role, org, expires, .. } => {
                json!({"role": role, "org": org, "expires": expires})
            }
            Event::TokenRevoke { .. } => json!({}),
            Event::OrgAdd { kind, require_signed, .. } => {
                json!({"kind": kind, "require_signed": require_signed})
            }
            Event::SettingsSet { changes } => {
                let list: Vec<Value> = changes
                    .iter()
                    .map(|c| json!({"key": c.key.as_str(), "old": c.old, "new": c.new}))
                    .collect();
                json!({"changes": list})
            }
            Event::OrgSet { policy, .. } => json!({
                "allow_no_approval": policy.allow_no_approval,
                "max_session_secs": policy.max_session_secs,
                "require_signed": policy.require_signed,
            }),
            Event::ContractAdd { operator, .. } => json!({"operator": operator}),
            Event::UserAdd { role, org, expires, .. } => {
                json!({"role": role, "org": org, "expires": expires})
            }
            Event::UserDisable { .. } => json!({}),
            Event::MachineAdd { org, token_expires, .. } => {
                json!({"org": org, "token_expires": token_expires})
            }
            Event::MachineRevoke { .. } => json!({}),
            Event::MachineEnrol { fingerprint, not_after, e2e_key, .. } => {
                json!({"fingerprint": fingerprint, "not_after": not_after, "e2e_key": e2e_key})
            }
            Event::EnrolRefused { reason, .. } => json!({"reason": reason}),
            Event::AgentConnect { agent, switch_on, targets, .. } => json!({
                "agent": agent, "switch": if *switch_on { "on" } else { "off" }, "targets": targets,
            }),
            Event::AgentDisconnect { reason, .. } => json!({"reason": reason}),
            Event::AgentRefused { reason, fingerprint, .. } => match fingerprint {
                Some(fp) => json!({"reason": reason, "fingerprint": fp}),
                None => json!({"reason": reason}),
            },
            Event::AgentAuditStart { first_seq, .. } => json!({
                "first_seq": first_seq,
                "note": "the agent's earlier records were rotated away before the server collected them",
            }),
            Event::AgentAuditPruned { dropped, first_kept, .. } => {
                json!({"dropped": dropped, "first_kept": first_kept})
            }
            Event::AgentChainBroken { refusal, batch, held, .. } => json!({
                "alert": true,
                "break": refusal.kind(),
                "seq": refusal.seq(),
                "reason": refusal.reason,
                "batch_first": batch.0,
                "batch_last": batch.1,
                "held_up_to": held,
            }),
            Event::Switch { on, .. } => json!({"switch": if *on { "on" } else { "off" }}),
            Event::TrustChange { level, approvers, .. } => {
                json!({"level": level, "approvers": approvers})
            }
            Event::GrantRefused { machine, reason, .. } => {
                json!({"alert": true, "machine": machine, "reason": reason})
            }
            Event::SessionCreate {
                machine,
                targets,
                users,
                from,
                until,
                reason,
                approval_required,
                record,
                ..
            } => json!({
                "machine": machine, "targets": targets, "users": users, "from": from, "until": until,
                "reason": reason, "approval_required": approval_required, "record": record,
            }),
            Event::SessionChange { from, to, .. } => json!({"from": from, "to": to}),
            Event::SessionApproveSigned { from, key, fingerprint, .. } => json!({
                "from": from, "to": SessionState::Approved, "signed_by": fingerprint, "key": key,
            }),
            Event::SessionPreapproved { window, schedule, provider, approved_by, .. } => json!({
                "window": window, "schedule": schedule, "provider": provider,
                "approved_by": approved_by, "to": SessionState::Approved,
            }),
            Event::WindowAdd { window, provider, schedule, .. }
            | Event::WindowRemove { window, provider, schedule, .. } => {
                json!({"window": window, "provider": provider, "schedule": schedule})
            }
            Event::Alert { details, .. } => {
                let mut d = details.clone();
                if let Value::Object(m) = &mut d {
                    m.insert("alert".into(), Value::Bool(true));
                    d
                } else {
                    json!({"alert": true, "details": d})
                }
            }
            Event::ConnectRefused { reason, .. } => json!({"reason": reason}),
            Event::Connect { targets, .. } => json!({"targets": targets}),
            Event::Disconnect { reason, .. } => json!({"reason": reason}),
            Event::TunnelOpen { target, .. } => json!({"target": target}),
            Event::TunnelCut { target, user, .. } => json!({"target": target, "user": user}),
            Event::RecordingFetch { id, .. } => json!({"id": id}),
            Event::TunnelClose {
                target,
                outcome,
                seconds,
                bytes_up,
                bytes_down,
                duration_ms,
                ..
            } => {
                json!({
                    "target": target, "outcome": outcome, "seconds": seconds,
                    "bytes_up": bytes_up, "bytes_down": bytes_down, "duration_ms": duration_ms,
                })
            }
            Event::TunnelRefused { target, reason, .. } => {
                json!({"target": target, "reason": reason})
            }
            Event::AccessRefused { action, reason, .. } => {
                json!({"action": action, "reason": reason})
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_targets() {
        let e = Event::SessionChange {
            session: "s1".into(),
            event: SessionEvent::Approve,
            from: SessionState::Requested,
            to: SessionState::Approved,
        };
        assert_eq!(e.action(), "session.approve");
        assert_eq!(e.target(), "s1");
        assert_eq!(e.details(), json!({"from": "requested", "to": "approved"}));
        let locked =
            Event::LoginFailed { user: "u".into(), reason: LoginFailure::Locked, failures: None };
        assert_eq!(locked.action(), "auth.login_refused");
        let wrong = Event::LoginFailed {
            user: "u".into(),
            reason: LoginFailure::WrongPassword,
            failures: Some(2),
        };
        assert_eq!(wrong.action(), "auth.login_failed");
        assert_eq!(wrong.details()["failures"], 2);
    }
}
