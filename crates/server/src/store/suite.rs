//! The store's tests, written against [`Backend`] only: every backend runs all of them
//! (`sqlite::tests` for the embedded one; a PostgreSQL backend calls [`all`] the same way).

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use fernwart_api::{Scope, TargetInfo, TargetProtocol};

use super::{
    AgentBatch, AgentTrust, Attempt, AuditFilter, Backend, IssuedCert, NewSession, NewUser,
    NewWindow, StoreError,
};
use crate::{
    audit::{Entry, Event, LoginFailure},
    authz::{self, PrepareAsk, PrepareFacts, Refusal, Release},
    domain::{window::Days, Caller, Role, Scope as CallerScope, SessionEvent, SessionState},
};

const NOW: i64 = 1_800_000_000;

/// Runs every test, each on a fresh backend from `fresh`.
pub fn all(fresh: &dyn Fn() -> Arc<dyn Backend>) {
    users_are_unique_regardless_of_case(fresh().as_ref());
    a_failed_change_leaves_no_record(fresh().as_ref());
    disabling_a_user_ends_their_logins(fresh().as_ref());
    login_attempts_are_counted_before_they_are_checked(fresh().as_ref());
    concurrent_attempts_never_pass_the_threshold(fresh());
    a_totp_step_is_used_once(fresh());
    a_webauthn_challenge_is_taken_once(fresh());
    security_keys_are_added_listed_counted_and_removed(fresh().as_ref());
    session_transitions_are_compare_and_set(fresh().as_ref());
    revocation_is_final(fresh().as_ref());
    passwords_change_by_compare_and_set(fresh().as_ref());
    api_tokens_act_under_their_own_name(fresh().as_ref());
    a_window_releases_a_session_in_its_transaction(fresh().as_ref());
    agent_records_are_stored_only_where_they_link_up(fresh().as_ref());
    signed_approvals_are_stored_with_their_session(fresh().as_ref());
    an_agents_end_to_end_key_is_recorded_once(fresh().as_ref());
    a_sessions_technician_keys_are_kept_unless_a_signature_covers_them(fresh().as_ref());
    an_orgs_rules_change_whole_or_not_at_all(fresh().as_ref());
    a_trust_anchor_is_recorded_when_it_changes(fresh().as_ref());
    settings_change_by_compare_and_set(fresh().as_ref());
}

fn settings_change_by_compare_and_set(b: &dyn Backend) {
    use super::SettingWrite;
    use crate::domain::settings::{Change, Key};
    let set = || {
        entry(Event::SettingsSet {
            changes: vec![Change { key: Key::LockoutThreshold, old: "10".into(), new: "3".into() }],
        })
    };
    let w = |key: &str, expected: Option<&str>, value: &str| SettingWrite {
        key: key.into(),
        expected: expected.map(str::to_owned),
        value: value.into(),
    };
    assert!(b.settings().unwrap().is_empty());
    let before = actions(b).len();
    // The first change of a key expects none stored.
    assert!(b
        .settings_set(&[w("auth.lockout_threshold", None, "3")], "admin", NOW, &set())
        .unwrap());
    assert_eq!(b.settings().unwrap(), vec![("auth.lockout_threshold".into(), "3".into())]);
    assert_eq!(actions(b).last().map(String::as_str), Some("settings.set"));
    assert_eq!(actions(b).len(), before + 1);
    // A change computed from a stale value writes nothing, not even its other keys.
    let stale = [w("auth.lockout_duration", None, "1h"), w("auth.lockout_threshold", None, "5")];
    assert!(!b.settings_set(&stale, "admin", NOW, &set()).unwrap());
    assert_eq!(b.settings().unwrap().len(), 1);
    assert_eq!(actions(b).len(), before + 1);
    // Computed from the stored value: written.
    let fresh =
        [w("auth.lockout_duration", None, "1h"), w("auth.lockout_threshold", Some("3"), "5")];
    assert!(b.settings_set(&fresh, "admin", NOW, &set()).unwrap());
    assert_eq!(
        b.settings().unwrap(),
        vec![
            ("auth.lockout_duration".into(), "1h".into()),
            ("auth.lockout_threshold".into(), "5".into())
        ]
    );
}

fn a_trust_anchor_is_recorded_when_it_changes(b: &dyn Backend) {
    let (m, _) = machine_with_session(b);
    let trust = |keys: &[&str]| AgentTrust {
        level: Some(fernwart_proto::approval::LEVEL_SIGNED.to_owned()),
        approvers: keys.iter().map(|k| (*k).to_owned()).collect(),
    };
    let e = || {
        entry(Event::TrustChange {
            machine: "m1".into(),
            level: "operator-signed".into(),
            approvers: vec![],
        })
    };
    let before = actions(b).len();
    assert!(b.agent_trust(m, &trust(&["ed25519:a", "ed25519:b"]), &e()).unwrap());
    // The same again (an agent repeating itself): nothing written.
    assert!(!b.agent_trust(m, &trust(&["ed25519:a", "ed25519:b"]), &e()).unwrap());
    assert!(b.agent_trust(m, &trust(&["ed25519:b"]), &e()).unwrap());
    assert_eq!(actions(b).len(), before + 2);
    let held = b.machines(None).unwrap().into_iter().find(|x| x.id == m).unwrap();
    assert_eq!(held.approvers, vec!["ed25519:b".to_owned()]);
}

fn an_orgs_rules_change_whole_or_not_at_all(b: &dyn Backend) {
    use crate::domain::org::{OrgChange, OrgPolicy};
    let e = entry(Event::OrgAdd {
        name: "plant".into(),
        kind: fernwart_api::OrgKind::Operator,
        require_signed: false,
    });
    b.org_add("plant", fernwart_api::OrgKind::Operator, true, Some(3600), false, NOW, &e).unwrap();
    let set = |policy| entry(Event::OrgSet { name: "plant".into(), policy });
    let before = actions(b).len();
    // Signed approvals while sessions need none: refused, nothing written.
    let sign = OrgChange { require_signed: Some(true), ..Default::default() };
    assert!(matches!(b.org_set("Plant", sign, &set), Err(StoreError::Invalid(_))));
    assert!(matches!(b.org_set("nowhere", sign, &set), Err(StoreError::NotFound(_))));
    assert_eq!(actions(b).len(), before);
    let both = OrgChange { allow_no_approval: Some(false), ..sign };
    let now = b.org_set("plant", both, &set).unwrap();
    assert_eq!(
        now,
        OrgPolicy { allow_no_approval: false, max_session_secs: Some(3600), require_signed: true }
    );
    let o = b.orgs().unwrap().into_iter().find(|o| o.name == "plant").unwrap();
    assert!(o.require_signed && !o.allow_no_approval && o.max_session_secs == Some(3600));
    assert_eq!(actions(b).last().map(String::as_str), Some("org.set"));
}

fn signed_approvals_are_stored_with_their_session(b: &dyn Backend) {
    use crate::domain::session::SignedApproval;
    let (m, sid) = machine_with_session(b);
    let s = b.session_by_id(sid).unwrap().unwrap();
    assert_eq!(s.nonce.len(), 32, "{}", s.nonce);
    assert_eq!(s.approval, None);
    // Nobody asks for signatures yet.
    let facts = b.signing_facts(m).unwrap();
    assert!(!facts.required(), "{facts:?}");
    // The agent pins approvers and requires them.
    let key = "ed25519:11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=".to_owned();
    let trust = AgentTrust { level: Some("operator-signed".into()), approvers: vec![key.clone()] };
    let online = entry(Event::AgentConnect {
        machine: "m1".into(),
        agent: "t".into(),
        switch_on: true,
        targets: vec![],
    });
    let targets = b.machines(None).unwrap()[0].targets.clone();
    b.agent_online(m, &targets, true, &trust, NOW, &online).unwrap();
    let facts = b.signing_facts(m).unwrap();
    assert!(facts.agent_requires && !facts.operator_requires);
    assert_eq!(facts.approvers, vec![key.clone()]);
    let listed = &b.machines(None).unwrap()[0];
    assert_eq!(listed.trust.as_deref(), Some("operator-signed"));
    assert_eq!(listed.approvers, vec![key.clone()]);
    // Approved with a signature: stored with the session, in the same compare-and-set.
    let signed = SignedApproval { key, signature: "c2ln".into() };
    let e = change(SessionEvent::Approve, SessionState::Prepared, SessionState::Approved);
    let lost = b.session_approve(sid, SessionState::Requested, Some(&signed), "op1", NOW, &e);
    assert!(lost.unwrap().is_none());
    assert_eq!(b.session_by_id(sid).unwrap().unwrap().approval, None);
    let done = b.session_approve(sid, SessionState::Prepared, Some(&signed), "op1", NOW, &e);
    let after = done.unwrap().unwrap().after;
    assert_eq!(after.state, SessionState::Approved);
    assert_eq!(after.approval, Some(signed));
    assert_eq!(after.nonce, s.nonce);
}

fn an_agents_end_to_end_key_is_recorded_once(b: &dyn Backend) {
    use super::E2eKeySeen;
    let (m, _) = machine_with_session(b);
    assert_eq!(b.machine_e2e_key(m).unwrap(), None);
    assert_eq!(b.agent_e2e_key(m, "k1").unwrap(), E2eKeySeen::Recorded);
    assert_eq!(b.agent_e2e_key(m, "k1").unwrap(), E2eKeySeen::Same);
    // Another key is refused and changes nothing.
    assert_eq!(b.agent_e2e_key(m, "k2").unwrap(), E2eKeySeen::Different("k1".into()));
    assert_eq!(b.machine_e2e_key(m).unwrap().as_deref(), Some("k1"));
    assert_eq!(b.machine_e2e_keys().unwrap(), vec![(m, "k1".to_owned())]);
}

fn a_sessions_technician_keys_are_kept_unless_a_signature_covers_them(b: &dyn Backend) {
    use super::{TechKey, MAX_TECH_KEYS};
    use crate::domain::session::SignedApproval;
    let (_, sid) = machine_with_session(b);
    assert_eq!(b.session_tech_key(sid, "t1").unwrap(), TechKey::Added);
    assert_eq!(b.session_tech_key(sid, "t1").unwrap(), TechKey::Named);
    for i in 0..MAX_TECH_KEYS {
        assert_eq!(b.session_tech_key(sid, &format!("x{i}")).unwrap(), TechKey::Added);
    }
    let keys = b.session_by_id(sid).unwrap().unwrap().tech_keys;
    assert_eq!(keys.len(), MAX_TECH_KEYS);
    assert!(!keys.contains(&"t1".to_owned()), "the oldest key stays: {keys:?}");
    // Approved with a signature: the keys it covers are final.
    let signed = SignedApproval { key: "ed25519:x".into(), signature: "c2ln".into() };
    let e = change(SessionEvent::Approve, SessionState::Prepared, SessionState::Approved);
    b.session_approve(sid, SessionState::Prepared, Some(&signed), "op1", NOW, &e).unwrap();
    assert_eq!(b.session_tech_key(sid, "x3").unwrap(), TechKey::Named);
    assert_eq!(b.session_tech_key(sid, "late").unwrap(), TechKey::SignedWithout);
    assert_eq!(b.session_by_id(sid).unwrap().unwrap().tech_keys, keys);
}

/// The rule of staff of no organization preparing a session that needs an approval.
fn staff_rule(facts: &PrepareFacts) -> Result<Release, Refusal> {
    let caller = Caller {
        user_id: 1,
        name: "admin".into(),
        role: Role::Admin,
        scope: CallerScope::Full,
        login_expires: NOW + 60,
        account_expires: None,
        disabled: false,
        source: "local".into(),
        api_token: None,
        org: None,
        serves: vec![],
        last_used: None,
    };
    let ask = PrepareAsk {
        approval_required: true,
        from: NOW,
        until: NOW + 3600,
        no_approval_default: false,
    };
    authz::prepare(&caller, ask, facts)
}

fn a_window_releases_a_session_in_its_transaction(b: &dyn Backend) {
    let (m, _) = machine_with_session(b);
    let e = entry(Event::OrgAdd {
        name: "builder".into(),
        kind: fernwart_api::OrgKind::Provider,
        require_signed: false,
    });
    b.org_add("builder", fernwart_api::OrgKind::Provider, false, None, false, NOW, &e).unwrap();
    let new = NewWindow {
        machine_id: m,
        provider: "builder".into(),
        days: Days::parse("daily").unwrap(),
        start: 0,
        end: 0,
        zone: "UTC".into(),
        created_by: "op1".into(),
        created_at: NOW,
    };
    let added = |id| {
        entry(Event::WindowAdd {
            machine: "m1".into(),
            window: id,
            provider: "builder".into(),
            schedule: String::new(),
        })
    };
    let w = b.window_add(&new, &added).unwrap();
    assert_eq!((w.machine.as_str(), w.provider.as_str()), ("m1", "builder"));
    assert_eq!(b.windows(None).unwrap(), vec![w.clone()]);
    let mut operator = new.clone();
    operator.provider = "nobody".into();
    assert!(matches!(b.window_add(&operator, &added), Err(StoreError::NotFound(_))));
    // The rule sees the machine's windows and releases the session through one.
    let s = NewSession {
        name: "s9".into(),
        machine: "m1".into(),
        targets: vec!["plc".into()],
        users: vec!["tech1".into()],
        reason: "T-9".into(),
        approval_required: true,
        from: NOW,
        until: NOW + 60,
        created_by: "sadmin".into(),
        created_at: NOW,
        record: false,
    };
    let by_window = |facts: &PrepareFacts| {
        assert_eq!(facts.windows.len(), 1);
        Ok(Release::Window(facts.windows[0].clone()))
    };
    let created = entry(Event::SessionCreate {
        name: "s9".into(),
        machine: "m1".into(),
        targets: vec![],
        users: vec![],
        from: String::new(),
        until: String::new(),
        reason: String::new(),
        approval_required: true,
        record: false,
    });
    let session = b.session_create(&s, &by_window, &created).unwrap();
    assert_eq!(session.state, SessionState::Approved);
    assert_eq!(session.decided_by, Some(format!("op1 (window {})", w.id)));
    assert!(actions(b).iter().any(|a| a == "session.preapproved"));
    // Removed, it no longer reaches the rule.
    let removed = entry(Event::WindowRemove {
        machine: "m1".into(),
        window: w.id,
        provider: "builder".into(),
        schedule: String::new(),
    });
    assert!(b.window_remove(w.id, &removed).unwrap());
    assert!(!b.window_remove(w.id, &removed).unwrap());
    let mut again = s.clone();
    again.name = "s10".into();
    let none = |facts: &PrepareFacts| {
        assert!(facts.windows.is_empty());
        Ok(Release::Approver)
    };
    assert_eq!(b.session_create(&again, &none, &created).unwrap().state, SessionState::Prepared);
}

fn api_tokens_act_under_their_own_name(b: &dyn Backend) {
    let e = |id| {
        entry(Event::TokenCreate {
            name: super::token_name(id),
            role: Role::Auditor,
            org: None,
            expires: String::new(),
        })
    };
    let id = b
        .api_token_create("tokhash", Role::Auditor, Some("acme"), "admin", NOW, NOW + 60, &e)
        .unwrap();
    let c = b.caller("tokhash").unwrap().unwrap();
    assert_eq!(
        (c.name.as_str(), c.role, c.api_token, c.login_expires, c.disabled),
        ("token-1", Role::Auditor, Some(id), NOW + 60, false)
    );
    let listed = b.api_tokens().unwrap();
    assert_eq!(
        (listed.len(), listed[0].org.as_deref(), listed[0].revoked),
        (1, Some("acme"), false)
    );
    let revoke = entry(Event::TokenRevoke { name: super::token_name(id) });
    assert!(b.api_token_revoke(id, NOW, &revoke).unwrap());
    assert!(!b.api_token_revoke(id, NOW, &revoke).unwrap());
    assert!(matches!(b.api_token_revoke(99, NOW, &revoke), Err(StoreError::NotFound(_))));
    assert!(b.caller("tokhash").unwrap().unwrap().disabled);
    assert_eq!(actions(b).iter().filter(|a| a.starts_with("token.")).count(), 2);
}

fn passwords_change_by_compare_and_set(b: &dyn Backend) {
    let id = add_user(b, "tech1", Role::Technician);
    let login = entry(Event::Login { user: "tech1".into(), scope: "full" });
    b.login_succeeded(id, "this", Scope::Full, NOW, NOW + 60, &login).unwrap();
    b.login_succeeded(id, "other", Scope::Full, NOW, NOW + 60, &login).unwrap();
    let change = entry(Event::PasswordChange { user: "tech1".into() });
    assert!(b.password_change(id, "h", "h2", "this", NOW, &change).unwrap());
    // Decided on a stale password: refused.
    assert!(!b.password_change(id, "h", "h3", "this", NOW, &change).unwrap());
    assert!(b.password_change(id, "h2", "h3", "this", NOW + 1, &change).unwrap());
    assert_eq!(b.password_hashes(id, 5).unwrap(), vec!["h3", "h2", "h"]);
    assert_eq!(b.password_hashes(id, 1).unwrap(), vec!["h3", "h2"]);
    // Every other login ended; this one stays until it logs out.
    assert!(b.caller("other").unwrap().is_none());
    assert!(b.caller("this").unwrap().is_some());
    let out = entry(Event::Logout { user: "tech1".into() });
    assert!(b.logout("this", &out).unwrap());
    assert!(!b.logout("this", &out).unwrap());
    assert!(b.caller("this").unwrap().is_none());
    let kinds = actions(b);
    assert_eq!(kinds.iter().filter(|a| *a == "user.passwd").count(), 2);
    assert_eq!(kinds.iter().filter(|a| *a == "auth.logout").count(), 1);
}

fn entry(event: Event) -> Entry {
    Entry::new("admin", "127.0.0.1", event)
}

fn add_user(b: &dyn Backend, name: &str, role: Role) -> i64 {
    let u =
        NewUser { name: name.into(), role, org: None, password_hash: "h".into(), expires_at: None };
    b.user_add(
        &u,
        NOW,
        &entry(Event::UserAdd { name: name.into(), role, org: None, expires: None }),
    )
    .unwrap()
}

fn actions(b: &dyn Backend) -> Vec<String> {
    let all = AuditFilter { limit: i64::MAX, ..AuditFilter::default() };
    b.audit_list(&all).unwrap().into_iter().map(|r| r.action).collect()
}

fn users_are_unique_regardless_of_case(b: &dyn Backend) {
    add_user(b, "tech1", Role::Technician);
    let u = NewUser {
        name: "Tech1".into(),
        role: Role::Admin,
        org: None,
        password_hash: "h".into(),
        expires_at: None,
    };
    let e =
        entry(Event::UserAdd { name: "Tech1".into(), role: Role::Admin, org: None, expires: None });
    assert!(matches!(b.user_add(&u, NOW, &e), Err(StoreError::Conflict(_))));
    let listed = b.users().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].role, Role::Technician);
    assert_eq!(b.login_subject("TECH1").unwrap().unwrap().name, "tech1");
}

fn a_failed_change_leaves_no_record(b: &dyn Backend) {
    add_user(b, "tech1", Role::Technician);
    let before = actions(b).len();
    let u = NewUser {
        name: "TECH1".into(),
        role: Role::Admin,
        org: None,
        password_hash: "h".into(),
        expires_at: None,
    };
    let _ = b.user_add(
        &u,
        NOW,
        &entry(Event::UserAdd {
            name: "TECH1".into(),
            role: Role::Admin,
            org: None,
            expires: None,
        }),
    );
    assert_eq!(actions(b).len(), before);
}

fn disabling_a_user_ends_their_logins(b: &dyn Backend) {
    let id = add_user(b, "tech1", Role::Technician);
    let login = entry(Event::Login { user: "tech1".into(), scope: "full" });
    b.login_succeeded(id, "tokenhash", Scope::Full, NOW, NOW + 60, &login).unwrap();
    let c = b.caller("tokenhash").unwrap().unwrap();
    assert_eq!(
        (c.user_id, c.role, c.scope, c.login_expires),
        (id, Role::Technician, Scope::Full, NOW + 60)
    );
    b.user_disable("Tech1", &entry(Event::UserDisable { name: "tech1".into() })).unwrap();
    assert!(b.caller("tokenhash").unwrap().is_none());
    assert!(b.login_subject("tech1").unwrap().unwrap().disabled);
    assert!(matches!(
        b.user_disable("nobody", &entry(Event::UserDisable { name: "x".into() })),
        Err(StoreError::NotFound(_))
    ));
}

fn fail(b: &dyn Backend, attempt: i64) {
    let e = entry(Event::LoginFailed {
        user: "u".into(),
        reason: LoginFailure::WrongPassword,
        failures: Some(attempt),
    });
    b.login_failed(&[e]).unwrap();
}

fn login_attempts_are_counted_before_they_are_checked(b: &dyn Backend) {
    let id = add_user(b, "tech1", Role::Technician);
    let lock = NOW + 900;
    for n in 1..=3 {
        assert_eq!(b.claim_login_attempt(id, NOW, 3, lock).unwrap(), Attempt::Counted(n));
    }
    // The third locked the account at once: a fourth is not even checked, whether or not
    // the first three ever report back (a dropped request cannot leave it locked for good).
    assert_eq!(b.claim_login_attempt(id, NOW, 3, lock).unwrap(), Attempt::Locked);
    fail(b, 1);
    assert_eq!(b.claim_login_attempt(id, NOW + 899, 3, lock).unwrap(), Attempt::Locked);
    // The lock passes; the count starts again.
    assert_eq!(b.claim_login_attempt(id, NOW + 900, 3, NOW + 1800).unwrap(), Attempt::Counted(1));
    assert_eq!(b.claim_login_attempt(id, NOW + 900, 3, NOW + 1800).unwrap(), Attempt::Counted(2));
    // A success resets the count, and the success of the attempt that locked unlocks.
    let login = entry(Event::Login { user: "tech1".into(), scope: "full" });
    b.login_succeeded(id, "t", Scope::Full, NOW + 900, NOW + 960, &login).unwrap();
    assert_eq!(b.claim_login_attempt(id, NOW + 901, 3, NOW + 1800).unwrap(), Attempt::Counted(1));
    assert_eq!(b.claim_login_attempt(id, NOW + 901, 3, NOW + 1800).unwrap(), Attempt::Counted(2));
    assert_eq!(b.claim_login_attempt(id, NOW + 901, 3, NOW + 1800).unwrap(), Attempt::Counted(3));
    b.login_succeeded(id, "t2", Scope::Full, NOW + 901, NOW + 960, &login).unwrap();
    assert_eq!(b.claim_login_attempt(id, NOW + 902, 3, NOW + 1800).unwrap(), Attempt::Counted(1));
}

fn concurrent_attempts_never_pass_the_threshold(b: Arc<dyn Backend>) {
    let id = add_user(b.as_ref(), "tech1", Role::Technician);
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let b = b.clone();
            std::thread::spawn(move || {
                (0..4)
                    .filter(|_| {
                        matches!(
                            b.claim_login_attempt(id, NOW, 5, NOW + 60),
                            Ok(Attempt::Counted(_))
                        )
                    })
                    .count()
            })
        })
        .collect();
    let counted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(counted, 5);
}

fn a_totp_step_is_used_once(b: Arc<dyn Backend>) {
    let id = add_user(b.as_ref(), "tech1", Role::Technician);
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let b = b.clone();
            std::thread::spawn(move || b.use_totp_step(id, 60_000_000).unwrap())
        })
        .collect();
    let used = threads.into_iter().map(|t| t.join().unwrap()).filter(|ok| *ok).count();
    assert_eq!(used, 1);
    assert!(b.use_totp_step(id, 60_000_001).unwrap());
}

fn a_webauthn_challenge_is_taken_once(b: Arc<dyn Backend>) {
    use super::ChallengePurpose::{Login, Register};
    let id = add_user(b.as_ref(), "op1", Role::Approver);
    assert!(b.webauthn_challenge_new("c1", Login, None, NOW, NOW + 60).unwrap());
    // The same challenge twice is not handed out.
    assert!(!b.webauthn_challenge_new("c1", Login, None, NOW, NOW + 60).unwrap());
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let b = b.clone();
            std::thread::spawn(move || b.webauthn_challenge_take("c1", Login, None, NOW).unwrap())
        })
        .collect();
    let taken = threads.into_iter().map(|t| t.join().unwrap()).filter(|ok| *ok).count();
    assert_eq!(taken, 1, "a challenge is taken once");
    // For another purpose or user, or too late: refused, and spent.
    b.webauthn_challenge_new("c2", Register, Some(id), NOW, NOW + 60).unwrap();
    assert!(!b.webauthn_challenge_take("c2", Login, None, NOW).unwrap());
    assert!(!b.webauthn_challenge_take("c2", Register, Some(id), NOW).unwrap());
    b.webauthn_challenge_new("c3", Register, Some(id), NOW, NOW + 60).unwrap();
    assert!(!b.webauthn_challenge_take("c3", Register, Some(id + 1), NOW).unwrap());
    b.webauthn_challenge_new("c4", Register, Some(id), NOW, NOW + 60).unwrap();
    assert!(!b.webauthn_challenge_take("c4", Register, Some(id), NOW + 60).unwrap());
    b.webauthn_challenge_new("c5", Register, Some(id), NOW, NOW + 60).unwrap();
    assert!(b.webauthn_challenge_take("c5", Register, Some(id), NOW + 59).unwrap());
}

fn security_keys_are_added_listed_counted_and_removed(b: &dyn Backend) {
    let id = add_user(b, "op1", Role::Approver);
    let other = add_user(b, "op2", Role::Approver);
    let e = |name: &str| {
        entry(Event::WebauthnAdd { user: "op1".into(), name: name.into(), fingerprint: "f".into() })
    };
    assert!(b.webauthn_add(id, "yubi", "cred1", "es256:rp:K1", 3, NOW, &e("yubi")).unwrap());
    // A credential id is registered once, whoever asks.
    assert!(!b.webauthn_add(other, "again", "cred1", "es256:rp:K1", 0, NOW, &e("again")).unwrap());
    let listed = b.webauthn_list(id).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].name.as_str(), listed[0].sign_count), ("yubi", 3));
    assert!(b.webauthn_list(other).unwrap().is_empty());
    let c = b.webauthn_credential("cred1").unwrap().unwrap();
    assert_eq!((c.user_id, c.public_key.as_str()), (id, "es256:rp:K1"));
    // The counter moves by compare-and-set: a second use of the old value loses.
    assert!(b.webauthn_counter(c.id, 3, 4, NOW).unwrap());
    assert!(!b.webauthn_counter(c.id, 3, 5, NOW).unwrap());
    assert_eq!(b.webauthn_credential("cred1").unwrap().unwrap().sign_count, 4);
    // Only its owner removes it; the removal is recorded.
    let r = entry(Event::WebauthnRemove {
        user: "op1".into(),
        name: "yubi".into(),
        fingerprint: "f".into(),
    });
    assert!(!b.webauthn_remove(other, c.id, &r).unwrap());
    assert!(b.webauthn_remove(id, c.id, &r).unwrap());
    assert!(b.webauthn_credential("cred1").unwrap().is_none());
    let acts = actions(b);
    assert_eq!(acts.iter().filter(|a| *a == "webauthn.add").count(), 1);
    assert_eq!(acts.iter().filter(|a| *a == "webauthn.remove").count(), 1);
}

fn machine_with_session(b: &dyn Backend) -> (i64, i64) {
    let tech = add_user(b, "tech1", Role::Technician);
    let e = entry(Event::MachineAdd { name: "m1".into(), org: None, token_expires: String::new() });
    let m = b.machine_add("m1", None, "enrolhash", NOW, NOW + 3600, &e).unwrap();
    let targets = [TargetInfo {
        name: "plc".into(),
        address: "127.0.0.1:102".into(),
        protocol: TargetProtocol::Tcp,
    }];
    let online = entry(Event::AgentConnect {
        machine: "m1".into(),
        agent: "t".into(),
        switch_on: true,
        targets: vec![],
    });
    let trust = AgentTrust::default();
    assert!(b.agent_online(m, &targets, true, &trust, NOW, &online).unwrap().is_empty());
    let s = NewSession {
        name: "s1".into(),
        machine: "m1".into(),
        targets: vec!["plc".into()],
        users: vec!["TECH1".into()],
        reason: "T-1".into(),
        approval_required: true,
        from: NOW,
        until: NOW + 3600,
        created_by: "admin".into(),
        created_at: NOW,
        record: false,
    };
    let created = entry(Event::SessionCreate {
        name: "s1".into(),
        machine: "m1".into(),
        targets: vec![],
        users: vec![],
        from: String::new(),
        until: String::new(),
        reason: String::new(),
        approval_required: true,
        record: false,
    });
    let session = b.session_create(&s, &staff_rule, &created).unwrap();
    assert_eq!(session.users, vec![(tech, "tech1".to_owned())]);
    assert_eq!(session.state, SessionState::Prepared);
    let mut unknown = s.clone();
    unknown.name = "s2".into();
    unknown.targets = vec!["hmi".into()];
    assert!(matches!(
        b.session_create(&unknown, &staff_rule, &created),
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(b.session_create(&s, &staff_rule, &created), Err(StoreError::Conflict(_))));
    add_user(b, "op1", Role::Approver);
    let mut approver = s.clone();
    approver.name = "s3".into();
    approver.users = vec!["op1".into()];
    assert!(
        matches!(b.session_create(&approver, &staff_rule, &created), Err(StoreError::Refused(r)) if r.reason.contains("only technicians"))
    );
    (m, session.id)
}

fn change(event: SessionEvent, from: SessionState, to: SessionState) -> Entry {
    entry(Event::SessionChange { session: "s1".into(), event, from, to })
}

fn session_transitions_are_compare_and_set(b: &dyn Backend) {
    let (_, sid) = machine_with_session(b);
    use SessionState as S;
    let ended = b
        .session_transition(
            sid,
            S::Prepared,
            S::Ended,
            "admin",
            NOW,
            &change(SessionEvent::End, S::Prepared, S::Ended),
        )
        .unwrap();
    let ended = ended.unwrap();
    assert_eq!((ended.before.state, ended.after.state), (S::Prepared, S::Ended));
    assert_eq!(ended.after.ended_by.as_deref(), Some("admin"));
    // An approve decided on the stale state does not bring the session back.
    let stale = b.session_transition(
        sid,
        S::Prepared,
        S::Approved,
        "op1",
        NOW,
        &change(SessionEvent::Approve, S::Prepared, S::Approved),
    );
    assert!(stale.unwrap().is_none());
    assert_eq!(b.session_by_id(sid).unwrap().unwrap().state, S::Ended);
    let kinds = actions(b);
    assert_eq!(kinds.iter().filter(|a| *a == "session.end").count(), 1);
    assert!(!kinds.iter().any(|a| a == "session.approve"));
    assert!(b.sessions_overdue(NOW + 7200).unwrap().is_empty());
}

fn revocation_is_final(b: &dyn Backend) {
    let (m, sid) = machine_with_session(b);
    assert!(!b.enrol_token("enrolhash").unwrap().unwrap().used);
    let e = entry(Event::MachineRevoke { name: "m1".into() });
    let (id, revoked) = b.machine_revoke("m1", NOW, &e).unwrap();
    assert_eq!(id, m);
    assert_eq!(revoked.len(), 1);
    assert_eq!(b.session_by_id(sid).unwrap().unwrap().state, SessionState::Revoked);
    // The unused token is gone, and a claim would not clear the revocation.
    assert!(b.enrol_token("enrolhash").unwrap().is_none());
    let cert = IssuedCert { fingerprint: "fp".into(), not_after: NOW + 1, e2e_key: None };
    let enrol = entry(Event::MachineEnrol {
        name: "m1".into(),
        fingerprint: "fp".into(),
        not_after: String::new(),
        e2e_key: None,
    });
    assert!(!b.enrol("enrolhash", &cert, NOW, &enrol).unwrap());
    assert!(b.machines(None).unwrap()[0].revoked);
    assert!(b.machine_by_cert("fp").unwrap().is_none());
}

/// A machine's own chain of `n` records, as its agent writes it.
fn agent_trail(n: u64) -> Vec<fernwart_proto::chain::Linked> {
    use fernwart_proto::chain;
    let mut out: Vec<chain::Linked> = Vec::new();
    for i in 1..=n {
        let body = chain::Body {
            time_ms: NOW * 1000 + i as i64,
            actor: "tech1".into(),
            action: "tunnel.open".into(),
            target: "s1".into(),
            source: "m1".into(),
            details: format!("{{\"n\":{i}}}"),
        };
        let last = out.last().map(|r| (r.seq, r.hash.as_str()));
        out.push(chain::link(last, body));
    }
    out
}

/// The server's records of what became of a batch, as the agent link writes them.
fn batch_notes(o: &AgentBatch) -> Vec<Entry> {
    let m = || "m1".to_owned();
    let mut out = Vec::new();
    match o {
        AgentBatch::Refused { last, refusal } => out.push(entry(Event::AgentChainBroken {
            machine: m(),
            refusal: refusal.clone(),
            batch: (0, 0),
            held: *last,
        })),
        AgentBatch::Stored { starts_at, pruned, .. } => {
            if let Some(first_seq) = starts_at {
                out.push(entry(Event::AgentAuditStart { machine: m(), first_seq: *first_seq }));
            }
            if let Some((dropped, first_kept)) = pruned {
                out.push(entry(Event::AgentAuditPruned {
                    machine: m(),
                    dropped: *dropped,
                    first_kept: *first_kept,
                }));
            }
        }
    }
    out
}

fn agent_records_are_stored_only_where_they_link_up(b: &dyn Backend) {
    use fernwart_proto::chain::Break;
    let (m, _) = machine_with_session(b);
    let e = entry(Event::MachineAdd { name: "m2".into(), org: None, token_expires: String::new() });
    let m2 = b.machine_add("m2", None, "enrolhash2", NOW, NOW + 3600, &e).unwrap();
    let t = agent_trail(12);
    let keep = 1_000;
    let append = |recs: &[fernwart_proto::chain::Linked], keep: u64| {
        b.agent_audit_append(m, recs, NOW, keep, &batch_notes).unwrap()
    };
    assert_eq!(b.agent_audit_last(m).unwrap(), 0);

    // First contact after the agent rotated records 1 and 2 away: taken as the start.
    let o = append(&t[2..5], keep);
    assert_eq!(o, AgentBatch::Stored { last: 5, added: 3, starts_at: Some(3), pruned: None });
    assert_eq!(actions(b).last().map(String::as_str), Some("agent.audit_start"));
    let o = append(&t[5..8], keep);
    assert_eq!(o, AgentBatch::Stored { last: 8, added: 3, starts_at: None, pruned: None });
    // Sent again after a lost acknowledgement, with one new record: only that one is added.
    let o = append(&t[6..9], keep);
    assert_eq!(o, AgentBatch::Stored { last: 9, added: 1, starts_at: None, pruned: None });
    assert_eq!(b.agent_audit_last(m).unwrap(), 9);

    // A gap, and a record changed at the agent: refused whole, with an alert; nothing stored.
    let before = actions(b).len();
    let o = append(&t[10..], keep);
    assert!(
        matches!(&o, AgentBatch::Refused { last: 9, refusal } if refusal.brk == Some(Break::Removed { seq: 10 })),
        "{o:?}"
    );
    let mut changed = t[9..].to_vec();
    changed[1].body.details = "{\"n\":0}".into();
    let o = append(&changed, keep);
    assert!(
        matches!(&o, AgentBatch::Refused { refusal, .. } if refusal.brk == Some(Break::Changed { seq: 11 })),
        "{o:?}"
    );
    // A record collected earlier that the agent now has otherwise.
    let mut rewritten = t[8..10].to_vec();
    rewritten[0].body.actor = "nobody".into();
    rewritten[0].hash = fernwart_proto::chain::hash(&rewritten[0].prev, 9, &rewritten[0].body);
    rewritten[1] = fernwart_proto::chain::link(Some((9, &rewritten[0].hash)), t[9].body.clone());
    let o = append(&rewritten, keep);
    assert!(
        matches!(&o, AgentBatch::Refused { refusal, .. } if refusal.brk == Some(Break::Changed { seq: 9 })),
        "{o:?}"
    );
    let all = actions(b);
    assert_eq!(all[before..], ["alert.agent_chain", "alert.agent_chain", "alert.agent_chain"]);
    assert_eq!(b.agent_audit_last(m).unwrap(), 9);

    // Read back exactly as the agent wrote them, in pages.
    let held = b.agent_audit(m, 0, 100).unwrap();
    let seqs: Vec<u64> = held.iter().map(|r| r.record.seq).collect();
    assert_eq!(seqs, (3..=9).collect::<Vec<_>>());
    assert!(held.iter().all(|r| r.record == t[r.record.seq as usize - 1] && r.received_at == NOW));
    let page: Vec<u64> = b.agent_audit(m, 5, 2).unwrap().iter().map(|r| r.record.seq).collect();
    assert_eq!(page, [6, 7]);

    // Over the cap, the oldest go (down to nine tenths of it), with a record saying so.
    let o = append(&t[9..], 5);
    assert_eq!(o, AgentBatch::Stored { last: 12, added: 3, starts_at: None, pruned: Some((5, 8)) });
    assert_eq!(b.agent_audit(m, 0, 100).unwrap().first().map(|r| r.record.seq), Some(8));
    assert_eq!(actions(b).last().map(String::as_str), Some("agent.audit_pruned"));
    // Records the server no longer holds cannot be compared: sent again, they are skipped.
    let o = append(&t[5..12], 5);
    assert_eq!(o, AgentBatch::Stored { last: 12, added: 0, starts_at: None, pruned: None });

    // Each machine has its own chain.
    let o = b.agent_audit_append(m2, &t[..2], NOW, keep, &|_| Vec::new()).unwrap();
    assert_eq!(o, AgentBatch::Stored { last: 2, added: 2, starts_at: None, pruned: None });
    assert_eq!(b.agent_audit(m2, 0, 100).unwrap().len(), 2);
    assert_eq!(b.agent_audit_last(m).unwrap(), 12);
}
