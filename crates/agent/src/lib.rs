//! fernwart-agent: the machine client on the edge gateway.
//!
//! Connects out to the server with its own certificate, announces the operator's targets and
//! key switch, and forwards session traffic only when its own checks agree (see [`policy`]).

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex, RwLock},
};

use fernwart_proto::{
    approval::{self, Nonces, Verdict},
    chain::Body,
    Grant,
};
use fernwart_transport::ProxyConfig;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub mod approvals;
pub mod audit;
pub mod config;
pub mod e2e;
pub mod forward;
pub mod identity;
pub mod link;
pub mod policy;
pub mod recording;
pub mod reload;
pub mod switch;

pub use config::AgentConfig;

#[derive(Clone)]
pub struct Agent(Arc<AgentInner>);

pub struct AgentInner {
    pub dir: PathBuf,
    pub cfg: AgentConfig,
    pub identity: identity::Identity,
    pub proxy: ProxyConfig,
    pub switch: watch::Sender<bool>,
    pub grants: Mutex<policy::Grants>,
    grant_tokens: Mutex<HashMap<String, CancellationToken>>,
    switch_token: Mutex<CancellationToken>,
    /// The machine's own tamper-evident record (see [`audit`]).
    pub audit_log: Arc<audit::AuditLog>,
    /// Writes records to `audit_log` off the relaying thread.
    audit_writer: audit::AuditWriter,
    /// Session recordings kept here (see [`recording`]).
    pub recordings: recording::Recordings,
    /// The operator-signed approvals held (see [`approvals`]).
    approvals: Mutex<Nonces>,
    /// The end-to-end key and the handshakes seen (see [`e2e`]).
    pub e2e: e2e::E2e,
    /// The operator's trust anchor now: `cfg.trust` at the start, then what `agent.toml`
    /// says while the agent runs ([`reload`]).
    trust: RwLock<Arc<approval::Trust>>,
    /// Counts trust anchor changes: the link tells the server.
    pub trust_changes: watch::Sender<u64>,
    /// The tunnels running: a stop waits for them to record their end (`tunnel.close`, a
    /// recording's summary) before it flushes the trail.
    pub tunnels: tokio_util::task::TaskTracker,
}

impl std::ops::Deref for Agent {
    type Target = AgentInner;
    fn deref(&self) -> &AgentInner {
        &self.0
    }
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Agent {
    pub fn new(
        dir: PathBuf,
        cfg: AgentConfig,
        identity: identity::Identity,
        proxy: ProxyConfig,
    ) -> Self {
        let on = switch::read(&dir, &cfg.switch);
        let audit_log = Arc::new(audit::AuditLog::new(&dir, identity.machine.clone(), cfg.audit));
        let recordings = recording::Recordings::new(&dir, cfg.recording);
        if let Err(e) = audit_log.open() {
            tracing::error!(error = %fernwart_transport::error_chain(&e), "cannot open the agent's audit trail; trying again at each record");
        }
        let approvals = Mutex::new(approvals::load(&dir));
        let e2e = e2e::E2e::load(&dir);
        Agent(Arc::new(AgentInner {
            approvals,
            e2e,
            trust: RwLock::new(Arc::new(cfg.trust.clone())),
            trust_changes: watch::channel(0).0,
            switch: watch::channel(on).0,
            dir,
            cfg,
            identity,
            proxy,
            grants: Mutex::new(policy::Grants::default()),
            grant_tokens: Mutex::new(HashMap::new()),
            switch_token: Mutex::new(CancellationToken::new()),
            audit_writer: audit::AuditWriter::start(audit_log.clone()),
            audit_log,
            recordings,
            tunnels: tokio_util::task::TaskTracker::new(),
        }))
    }

    /// The machine-side record of what happened here (the operator's copy) about `session`
    /// ("" for none), by the technicians of its grant if the agent holds it, else "agent".
    pub fn audit(&self, action: &str, session: &str, details: serde_json::Value) {
        let actor = lock(&self.grants).get(session).map(|g| g.users.join(","));
        self.audit_as(actor.as_deref(), action, session, details);
    }

    /// [`Agent::audit`] by `actor` (the technicians, comma-separated; `None`: "agent"). The
    /// record is queued and on disk a few milliseconds later, in order ([`Agent::audit_flush`]
    /// waits for it); a failure is logged and counted ([`audit::AuditLog::failures`]), and
    /// recorded in the trail once writing works again.
    pub fn audit_as(
        &self,
        actor: Option<&str>,
        action: &str,
        session: &str,
        details: serde_json::Value,
    ) {
        tracing::info!(%action, %session, %details, "audit");
        let body = Body {
            time_ms: audit::now_ms(),
            actor: actor.filter(|a| !a.is_empty()).unwrap_or("agent").to_owned(),
            action: action.to_owned(),
            target: session.to_owned(),
            source: self.identity.machine.clone(),
            details: details.to_string(),
        };
        self.audit_writer.record(body);
    }

    /// Waits until every record so far is on disk.
    pub fn audit_flush(&self) {
        self.audit_writer.flush();
    }

    pub fn switch_off_token(&self) -> CancellationToken {
        lock(&self.switch_token).clone()
    }

    fn on_switch(&self, on: bool) {
        let mut t = lock(&self.switch_token);
        if on {
            if t.is_cancelled() {
                *t = CancellationToken::new();
            }
        } else {
            t.cancel();
        }
        drop(t);
        let word = if on { "on" } else { "off" };
        let source = match &self.cfg.switch {
            config::SwitchSource::Local => "local".to_owned(),
            config::SwitchSource::File(p) => format!("file:{}", p.display()),
            config::SwitchSource::Gpio { chip, line, .. } => {
                format!("gpio:{}:{line}", chip.display())
            }
        };
        self.audit_as(None, "switch", "", serde_json::json!({"switch": word, "source": source}));
    }

    pub fn grant_token(&self, session: &str) -> CancellationToken {
        lock(&self.grant_tokens).entry(session.to_owned()).or_default().clone()
    }

    /// The grants of the server's `Welcome`, replacing those held: each new or changed one is
    /// checked ([`Agent::admit`]) and recorded as a `Grant` frame's is, each dropped one as a
    /// revoke (its session ended: its approval is not taken again), and tunnels of dropped ones
    /// end. A refused grant is not held, and neither is an earlier grant of its session.
    pub fn set_grants(&self, grants: Vec<Grant>) {
        let mut admitted: Vec<(Grant, Verdict)> = Vec::new();
        let mut refused: Vec<String> = Vec::new();
        for g in grants {
            match self.admit(&g) {
                Ok(v) => admitted.push((g, v)),
                Err(r) => {
                    self.grant_refused(&g, &r);
                    refused.push(g.session);
                }
            }
        }
        let keep: Vec<String> = admitted.iter().map(|(g, _)| g.session.clone()).collect();
        let (fresh, mut dropped) = {
            let held = lock(&self.grants);
            let fresh: Vec<&(Grant, Verdict)> =
                admitted.iter().filter(|(g, _)| held.get(&g.session) != Some(g)).collect();
            let dropped: Vec<(String, String)> = held
                .sessions()
                .filter(|s| !keep.iter().any(|k| k == s))
                .map(|s| (s.to_owned(), held.get(s).map(|g| g.users.join(",")).unwrap_or_default()))
                .collect();
            (fresh, dropped)
        };
        for (grant, verdict) in fresh {
            self.audit_grant(grant, verdict);
        }
        dropped.sort();
        let mut ended = Vec::new();
        for (session, users) in dropped {
            let reason = if refused.contains(&session) {
                "its new grant was refused"
            } else {
                ended.push(session.clone());
                "not in the server's welcome"
            };
            self.audit_as(
                Some(&users),
                "revoke",
                &session,
                serde_json::json!({"session": session, "reason": reason}),
            );
        }
        self.sessions_ended(&ended);
        lock(&self.grants).replace_all(admitted.into_iter().map(|(g, _)| g).collect());
        lock(&self.grant_tokens).retain(|s, t| {
            let k = keep.contains(s);
            if !k {
                t.cancel();
            }
            k
        });
    }

    /// A `Grant` frame: held if it passes [`Agent::admit`] (true: acknowledge it), else
    /// refused, and an earlier grant of its session is dropped with its tunnels.
    /// Takes a grant the server pushed, after the operator's check; a refused one is not held
    /// (and replaces nothing): the error says why, for the server and the technician.
    pub fn add_grant(&self, grant: Grant) -> Result<(), String> {
        match self.admit(&grant) {
            Ok(verdict) => {
                self.audit_grant(&grant, &verdict);
                lock(&self.grants).insert(grant);
                Ok(())
            }
            Err(r) => {
                let held = lock(&self.grants).remove(&grant.session);
                self.grant_refused(&grant, &r);
                if let Some(t) = lock(&self.grant_tokens).remove(&grant.session) {
                    t.cancel();
                }
                if let Some(held) = held {
                    self.audit_as(
                        Some(&held.users.join(",")),
                        "revoke",
                        &grant.session,
                        serde_json::json!({"session": grant.session, "reason": "its new grant was refused"}),
                    );
                }
                Err(r.to_string())
            }
        }
    }

    /// The operator's check of a grant ([`approval::verify`]): a signed one is remembered, so
    /// that its approval serves no other session and not this one once it ended.
    pub fn admit(&self, grant: &Grant) -> Result<Verdict, approval::Refusal> {
        let allowed = self.cfg.target_names();
        let now = now();
        let mut seen = lock(&self.approvals);
        let pruned = seen.prune(now);
        let trust = self.trust();
        let verdict = approval::verify(grant, &self.identity.machine, &trust, &allowed, &seen, now);
        let admitted = match (&verdict, &grant.approval) {
            (Ok(Verdict::Signed(_)), Some(a)) => {
                let before = seen.clone();
                seen.admit(&a.nonce, &grant.session, grant.until);
                *seen != before
            }
            _ => false,
        };
        if pruned || admitted {
            approvals::save(&self.dir, &seen);
        }
        verdict
    }

    /// Sessions that ended: their approvals are not taken again.
    fn sessions_ended(&self, sessions: &[String]) {
        let mut seen = lock(&self.approvals);
        let mut changed = false;
        for s in sessions {
            changed |= seen.ended(s);
        }
        if changed {
            approvals::save(&self.dir, &seen);
        }
    }

    /// `grant.refused`: an alert in the operator's trail, with what the server sent.
    fn grant_refused(&self, grant: &Grant, why: &approval::Refusal) {
        tracing::error!(session = %grant.session, reason = %why, "grant refused: not held, its tunnels are refused");
        let signed_by = grant.approval.as_ref().map(|a| {
            a.key
                .parse::<approval::ApproverKey>()
                .map_or_else(|_| a.key.clone(), |k| k.fingerprint())
        });
        self.audit_as(
            Some(&grant.users.join(",")),
            "grant.refused",
            &grant.session,
            serde_json::json!({
                "alert": true,
                "session": grant.session,
                "reason": why.to_string(),
                "targets": grant.targets,
                "users": grant.users,
                "from": grant.from,
                "until": grant.until,
                "signed_by": signed_by,
            }),
        );
        lock(&self.grants).refused(grant.session.clone(), why.to_string());
    }

    fn audit_grant(&self, grant: &Grant, verdict: &Verdict) {
        let mut details = serde_json::json!({"session": grant.session, "targets": grant.targets, "from": grant.from, "until": grant.until, "users": grant.users, "record": grant.record});
        if let Verdict::Signed(key) = verdict {
            details["approved_by"] = serde_json::Value::String(key.fingerprint());
        }
        self.audit_as(Some(&grant.users.join(",")), "grant", &grant.session, details);
    }

    /// The operator's trust anchor now.
    pub fn trust(&self) -> Arc<approval::Trust> {
        self.trust.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The operator changed `[trust]` while the agent runs: recorded with the keys that came
    /// and went, then every grant held is checked again under it (one no longer signed by a
    /// pinned key is dropped and its tunnels close, as at a restart), and the server is told.
    pub fn set_trust(&self, trust: approval::Trust) {
        let before = self.trust();
        if config::same_trust(&before, &trust) {
            return;
        }
        let fingerprints = |t: &approval::Trust, other: &approval::Trust| -> Vec<String> {
            t.approvers
                .iter()
                .filter(|k| !other.approvers.contains(k))
                .map(|k| k.fingerprint())
                .collect()
        };
        self.audit_as(
            None,
            "trust.change",
            "",
            serde_json::json!({
                "level": trust.level(),
                "added": fingerprints(&trust, &before),
                "removed": fingerprints(&before, &trust),
                "approvers": trust.approvers.len(),
            }),
        );
        *self.trust.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(trust);
        let held: Vec<Grant> = lock(&self.grants).all().cloned().collect();
        self.set_grants(held);
        self.trust_changes.send_modify(|n| *n += 1);
    }

    pub fn revoke(&self, session: &str) {
        let removed = lock(&self.grants).remove(session);
        if let Some(t) = lock(&self.grant_tokens).remove(session) {
            t.cancel();
        }
        self.sessions_ended(&[session.to_owned()]);
        let users = removed.map(|g| g.users.join(","));
        self.audit_as(
            users.as_deref(),
            "revoke",
            session,
            serde_json::json!({"session": session, "reason": "revoked by the server"}),
        );
    }
}

/// How long a stop waits for its tunnels to end and record it.
const TUNNELS_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// `fernwart-agent run`: watch the switch, keep the link up, until `shutdown`.
pub async fn run(agent: Agent, shutdown: CancellationToken) {
    let watcher = tokio::spawn(switch::watch_source(
        agent.dir.clone(),
        agent.cfg.switch.clone(),
        agent.switch.clone(),
    ));
    let mut rx = agent.switch.subscribe();
    agent.audit_as(
        None,
        "agent.start",
        "",
        serde_json::json!({"version": env!("CARGO_PKG_VERSION"), "server": agent.identity.server}),
    );
    agent.prune_recordings();
    let a = agent.clone();
    let reactor = tokio::spawn(async move {
        let initial = *rx.borrow_and_update();
        a.on_switch(initial);
        while rx.changed().await.is_ok() {
            let on = *rx.borrow_and_update();
            a.on_switch(on);
        }
    });
    let reloader = tokio::spawn(reload::watch(agent.clone(), shutdown.clone()));
    link::run(agent.clone(), shutdown).await;
    // The link's end ends its tunnels; each records its close a moment later (and finishes its
    // recording). Flushed before that, those records would be lost with the process.
    agent.tunnels.close();
    if tokio::time::timeout(TUNNELS_GRACE, agent.tunnels.wait()).await.is_err() {
        tracing::warn!(left = agent.tunnels.len(), "tunnels still running at shutdown");
    }
    reloader.abort();
    watcher.abort();
    reactor.abort();
    agent.audit_as(None, "agent.stop", "", serde_json::json!({}));
    // Everything recorded is on disk before the agent exits.
    agent.audit_flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(dir: &std::path::Path) -> Agent {
        let cfg = AgentConfig::parse(
            "switch = \"local\"\n[[target]]\nname = \"plc\"\naddress = \"192.168.0.10:102\"\nprotocol = \"tcp\"\n",
        )
        .unwrap();
        let identity =
            identity::Identity { server: "https://127.0.0.1:8443".into(), machine: "m1".into() };
        Agent::new(dir.to_owned(), cfg, identity, ProxyConfig::default())
    }

    fn grant(session: &str, until: i64) -> Grant {
        Grant {
            session: session.into(),
            targets: vec!["plc".into()],
            from: 0,
            until,
            users: vec!["tech".into()],
            record: false,
            tech_keys: vec![],
            approval: None,
        }
    }

    /// `(action, session)` of each record in the agent's audit trail, which verifies.
    fn records(dir: &std::path::Path) -> Vec<(String, String)> {
        audit::verify(dir).unwrap();
        let (all, warnings) = audit::list(dir, &audit::Filter::default()).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        all.into_iter()
            .filter(|r| r.body.action != "switch")
            .map(|r| (r.body.action, r.body.target))
            .collect()
    }

    #[test]
    fn welcome_grants_are_recorded_like_grant_frames() {
        let dir = tempfile::tempdir().unwrap();
        let a = agent(dir.path());

        a.set_grants(vec![grant("s1", 100), grant("s2", 100)]);

        a.audit_flush();
        let rec = records(dir.path());
        assert_eq!(rec, [("grant".into(), "s1".into()), ("grant".into(), "s2".into())]);
        let (all, _) = audit::list(dir.path(), &audit::Filter::default()).unwrap();
        let first = &all[0].body;
        assert_eq!((first.source.as_str(), first.actor.as_str()), ("m1", "tech"));
        let details: serde_json::Value = serde_json::from_str(&first.details).unwrap();
        assert_eq!(details["session"], "s1");
        assert_eq!(details["users"], serde_json::json!(["tech"]));
        assert_eq!(details["targets"], serde_json::json!(["plc"]));
        assert_eq!(details["until"], 100);
    }

    #[test]
    fn a_second_welcome_records_only_changes() {
        let dir = tempfile::tempdir().unwrap();
        let a = agent(dir.path());
        a.set_grants(vec![grant("s1", 100), grant("s2", 100)]);
        let s2 = a.grant_token("s2");

        a.set_grants(vec![grant("s1", 100), grant("s3", 100)]);

        a.audit_flush();
        let rec = records(dir.path());
        assert_eq!(
            rec[2..],
            [("grant".to_owned(), "s3".to_owned()), ("revoke".to_owned(), "s2".to_owned())]
        );
        assert!(s2.is_cancelled());
        assert!(lock(&a.grants).get("s2").is_none());
        assert!(lock(&a.grants).get("s3").is_some());
    }

    #[test]
    fn grant_frames_are_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let a = agent(dir.path());

        a.add_grant(grant("s1", 100)).unwrap();

        a.audit_flush();
        assert_eq!(records(dir.path()), [("grant".to_owned(), "s1".to_owned())]);
    }

    #[test]
    fn a_revoke_names_the_technicians_of_the_grant_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let a = agent(dir.path());
        a.add_grant(grant("s1", 100)).unwrap();

        a.revoke("s1");
        a.audit("tunnel.refused", "s1", serde_json::json!({"reason": "no grant"}));
        a.audit_flush();

        let (all, _) = audit::list(dir.path(), &audit::Filter::default()).unwrap();
        let by: Vec<(&str, &str)> =
            all.iter().map(|r| (r.body.action.as_str(), r.body.actor.as_str())).collect();
        assert_eq!(by, [("grant", "tech"), ("revoke", "tech"), ("tunnel.refused", "agent")]);
    }

    #[test]
    fn an_unwritable_trail_is_counted_and_does_not_stop_the_agent() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(audit::DIR_NAME), "in the way").unwrap();
        let a = agent(dir.path());

        a.add_grant(grant("s1", 100)).unwrap();

        assert!(lock(&a.grants).get("s1").is_some());
        a.audit_flush();
        assert_eq!(a.audit_log.failures(), 1);
        std::fs::remove_file(dir.path().join(audit::DIR_NAME)).unwrap();
        a.add_grant(grant("s2", 100)).unwrap();
        a.audit_flush();
        let (all, _) = audit::list(dir.path(), &audit::Filter::default()).unwrap();
        let actions: Vec<&str> = all.iter().map(|r| r.body.action.as_str()).collect();
        assert_eq!(actions, ["audit.failed", "grant"]);
    }

    // ------------------------------------------------------------ operator-signed approvals

    use fernwart_proto::approval::{GrantFields, SigningKey};

    fn approver(n: u8) -> SigningKey {
        SigningKey::from_seed(&[n; 32])
    }

    /// An agent of machine m1 whose operator pins `approvers` (targets plc and hmi).
    fn pinned(dir: &std::path::Path, approvers: &[&SigningKey]) -> Agent {
        let keys: Vec<String> = approvers.iter().map(|k| format!("\"{}\"", k.public())).collect();
        let cfg = AgentConfig::parse(&format!(
            "[[target]]\nname = \"plc\"\naddress = \"192.168.0.10:102\"\n[[target]]\nname = \"hmi\"\naddress = \"192.168.0.11:5900\"\n[trust]\napprovers = [{}]\n",
            keys.join(", ")
        ))
        .unwrap();
        let identity =
            identity::Identity { server: "https://127.0.0.1:8443".into(), machine: "m1".into() };
        Agent::new(dir.to_owned(), cfg, identity, ProxyConfig::default())
    }

    fn signed(k: &SigningKey, g: Grant, nonce: &str) -> Grant {
        let approval = k.approve(&GrantFields::of(&g, "m1", nonce));
        Grant { approval: Some(approval), ..g }
    }

    /// The reasons of the `grant.refused` records, each an alert.
    fn refusals(dir: &std::path::Path) -> Vec<(String, String)> {
        let (all, _) = audit::list(dir, &audit::Filter::default()).unwrap();
        all.into_iter()
            .filter(|r| r.body.action == "grant.refused")
            .map(|r| {
                let d: serde_json::Value = serde_json::from_str(&r.body.details).unwrap();
                assert_eq!(d["alert"], true, "{d}");
                (r.body.target, d["reason"].as_str().unwrap_or_default().to_owned())
            })
            .collect()
    }

    fn open(a: &Agent, session: &str) -> Result<(), String> {
        policy::check(&a.cfg, &lock(&a.grants), true, session, "plc", now())
    }

    #[test]
    fn a_trust_anchor_changed_while_running_drops_what_it_no_longer_signs() {
        let dir = tempfile::tempdir().unwrap();
        let (k1, k2) = (approver(1), approver(2));
        let a = pinned(dir.path(), &[&k1, &k2]);
        let until = now() + 3600;
        a.add_grant(signed(&k1, grant("s1", until), "n1")).unwrap();
        a.add_grant(signed(&k2, grant("s2", until), "n2")).unwrap();
        let s1_tunnels = a.grant_token("s1");
        let changes = a.trust_changes.subscribe();
        let toml = |keys: &[&SigningKey]| {
            let keys: Vec<String> = keys.iter().map(|k| format!("\"{}\"", k.public())).collect();
            format!(
                "[[target]]\nname = \"plc\"\naddress = \"192.168.0.10:102\"\n[[target]]\nname = \"hmi\"\naddress = \"192.168.0.11:5900\"\n[trust]\napprovers = [{}]\n",
                keys.join(", ")
            )
        };

        // A file that does not parse changes nothing.
        reload::apply(&a, "[trust]\napprovers = [\"nonsense\"]\n");
        assert_eq!(a.trust().approvers.len(), 2);
        assert!(open(&a, "s1").is_ok());
        // The same anchor: nothing happens.
        reload::apply(&a, &toml(&[&k2, &k1]));
        assert!(!changes.has_changed().unwrap());
        // k1 leaves: s1 (signed by k1) is dropped, its tunnels end; s2 stays.
        reload::apply(&a, &toml(&[&k2]));
        assert!(changes.has_changed().unwrap());
        assert!(s1_tunnels.is_cancelled());
        assert!(open(&a, "s1").is_err());
        assert!(open(&a, "s2").is_ok());
        a.audit_flush();
        let (all, _) = audit::list(dir.path(), &audit::Filter::default()).unwrap();
        let actions: Vec<&str> = all.iter().map(|r| r.body.action.as_str()).collect();
        assert!(actions.contains(&"config.invalid"), "{actions:?}");
        let change = all.iter().find(|r| r.body.action == "trust.change").unwrap();
        let d: serde_json::Value = serde_json::from_str(&change.body.details).unwrap();
        assert_eq!(d["removed"], serde_json::json!([k1.public().fingerprint()]));
        assert_eq!(refusals(dir.path()).len(), 1);
        assert!(refusals(dir.path())[0].1.contains("not one of this machine's approvers"));
        // A grant signed by k1 is refused from now on.
        assert!(a.add_grant(signed(&k1, grant("s3", until), "n3")).is_err());
    }

    #[test]
    fn only_grants_signed_by_a_pinned_approver_are_held() {
        let dir = tempfile::tempdir().unwrap();
        let k = approver(1);
        let a = pinned(dir.path(), &[&k]);
        let until = now() + 3600;

        assert!(a.add_grant(signed(&k, grant("s1", until), "n1")).is_ok());
        assert!(a.add_grant(grant("s2", until)).is_err());
        let mut widened = signed(&k, grant("s3", until), "n3");
        widened.until += 3600;
        assert!(a.add_grant(widened).is_err());
        let mut more = signed(&k, grant("s4", until), "n4");
        more.targets.push("hmi".into());
        more.users.push("intruder".into());
        assert!(a.add_grant(more).is_err());
        assert!(a.add_grant(signed(&approver(2), grant("s5", until), "n5")).is_err());

        a.audit_flush();
        let r = refusals(dir.path());
        let sessions: Vec<&str> = r.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(sessions, ["s2", "s3", "s4", "s5"]);
        assert!(r[0].1.contains("no approver's signature"), "{r:?}");
        assert!(r[1].1.contains("does not match"), "{r:?}");
        assert!(r[3].1.contains("not one of this machine's approvers"), "{r:?}");
        // The grant held names its approver; tunnels of refused ones say why.
        let (all, _) = audit::list(dir.path(), &audit::Filter::default()).unwrap();
        let held = all.iter().find(|r| r.body.action == "grant").unwrap();
        assert!(held.body.details.contains(&k.public().fingerprint()), "{}", held.body.details);
        assert!(open(&a, "s1").is_ok());
        let why = open(&a, "s3").unwrap_err();
        assert!(why.contains("refused the grant of session s3"), "{why}");
    }

    #[test]
    fn a_changed_grant_drops_the_one_held_and_its_tunnels() {
        let dir = tempfile::tempdir().unwrap();
        let k = approver(1);
        let a = pinned(dir.path(), &[&k]);
        let good = signed(&k, grant("s1", now() + 3600), "n1");
        a.set_grants(vec![good.clone()]);
        let tunnels = a.grant_token("s1");

        let mut bad = good.clone();
        bad.targets.push("hmi".into());
        a.set_grants(vec![bad]);

        assert!(tunnels.is_cancelled());
        assert!(lock(&a.grants).get("s1").is_none());
        a.audit_flush();
        let rec = records(dir.path());
        let actions: Vec<&str> = rec.iter().map(|(a, _)| a.as_str()).collect();
        assert_eq!(actions, ["grant", "grant.refused", "revoke"]);
        // The approval was not spent: the session's true grant is held again.
        a.set_grants(vec![good.clone()]);
        assert!(lock(&a.grants).get("s1").is_some());
        // A grant frame changed in flight does the same.
        let tunnels = a.grant_token("s1");
        let mut later = good;
        later.until += 60;
        assert!(a.add_grant(later).is_err());
        assert!(tunnels.is_cancelled());
        assert!(lock(&a.grants).get("s1").is_none());
        a.audit_flush();
        let rec = records(dir.path());
        let actions: Vec<&str> = rec.iter().map(|(a, _)| a.as_str()).collect();
        assert_eq!(actions[3..], ["grant", "grant.refused", "revoke"]);
    }

    #[test]
    fn an_approval_is_not_replayed_on_another_session_nor_after_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let k = approver(1);
        let until = now() + 3600;
        let old = signed(&k, grant("s1", until), "n1");
        {
            let a = pinned(dir.path(), &[&k]);
            assert!(a.add_grant(old.clone()).is_ok());
            // Its approval moved onto another session.
            let copied = Grant { session: "s2".into(), ..old.clone() };
            assert!(a.add_grant(copied).is_err());
            a.revoke("s1");
            a.audit_flush();
        }
        // After a restart, the ended session's grant is refused when sent again.
        let a = pinned(dir.path(), &[&k]);
        assert!(a.add_grant(old.clone()).is_err());
        a.set_grants(vec![old]);
        assert!(lock(&a.grants).get("s1").is_none());
        a.audit_flush();
        let r = refusals(dir.path());
        assert!(
            r[0].1.contains("replayed approval: its nonce was approved for session s1"),
            "{r:?}"
        );
        assert!(r[1].1.contains("replayed approval: session s1 has ended"), "{r:?}");
        assert_eq!(r.len(), 3);
    }

    #[test]
    fn keys_rotate_with_the_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (approver(1), approver(2));
        let until = now() + 3600;
        let by_old = signed(&old, grant("s1", until), "n1");
        let by_new = signed(&new, grant("s2", until), "n2");
        {
            let a = pinned(dir.path(), &[&old]);
            a.set_grants(vec![by_old.clone()]);
            assert!(lock(&a.grants).get("s1").is_some());
            a.audit_flush();
        }
        // The operator adds the new key and removes the old one; the agent restarts and the
        // server's welcome brings both grants again.
        let a = pinned(dir.path(), &[&new]);
        a.set_grants(vec![by_old, by_new]);
        assert!(lock(&a.grants).get("s1").is_none());
        assert!(lock(&a.grants).get("s2").is_some());
        a.audit_flush();
        let r = refusals(dir.path());
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].0, "s1");
        assert!(r[0].1.contains(&old.public().fingerprint()), "{r:?}");
    }
}
