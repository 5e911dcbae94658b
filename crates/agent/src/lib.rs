//! fernwart-agent: the machine client on the edge gateway.
//!
//! Connects out to the server with its own certificate, announces the operator's targets and
//! key switch, and forwards session traffic only when its own checks agree (see [`policy`]).

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use fernwart_proto::{chain::Body, Grant};
use fernwart_transport::ProxyConfig;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub mod audit;
pub mod config;
pub mod forward;
pub mod identity;
pub mod link;
pub mod policy;
pub mod recording;
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
        Agent(Arc::new(AgentInner {
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
    /// recorded as a `Grant` frame's is, each dropped one as a revoke, and tunnels of dropped
    /// ones end.
    pub fn set_grants(&self, grants: Vec<Grant>) {
        let keep: Vec<String> = grants.iter().map(|g| g.session.clone()).collect();
        let (fresh, mut dropped) = {
            let held = lock(&self.grants);
            let fresh: Vec<&Grant> =
                grants.iter().filter(|g| held.get(&g.session) != Some(*g)).collect();
            let dropped: Vec<(String, String)> = held
                .sessions()
                .filter(|s| !keep.iter().any(|k| k == s))
                .map(|s| (s.to_owned(), held.get(s).map(|g| g.users.join(",")).unwrap_or_default()))
                .collect();
            (fresh, dropped)
        };
        for grant in fresh {
            self.audit_grant(grant);
        }
        dropped.sort();
        for (session, users) in dropped {
            self.audit_as(
                Some(&users),
                "revoke",
                &session,
                serde_json::json!({"session": session, "reason": "not in the server's welcome"}),
            );
        }
        lock(&self.grants).replace_all(grants);
        lock(&self.grant_tokens).retain(|s, t| {
            let k = keep.contains(s);
            if !k {
                t.cancel();
            }
            k
        });
    }

    pub fn add_grant(&self, grant: Grant) {
        self.audit_grant(&grant);
        lock(&self.grants).insert(grant);
    }

    fn audit_grant(&self, grant: &Grant) {
        self.audit_as(
            Some(&grant.users.join(",")),
            "grant",
            &grant.session,
            serde_json::json!({"session": grant.session, "targets": grant.targets, "from": grant.from, "until": grant.until, "users": grant.users, "record": grant.record}),
        );
    }

    pub fn revoke(&self, session: &str) {
        let removed = lock(&self.grants).remove(session);
        if let Some(t) = lock(&self.grant_tokens).remove(session) {
            t.cancel();
        }
        let users = removed.map(|g| g.users.join(","));
        self.audit_as(
            users.as_deref(),
            "revoke",
            session,
            serde_json::json!({"session": session, "reason": "revoked by the server"}),
        );
    }
}

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
    link::run(agent.clone(), shutdown).await;
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

        a.add_grant(grant("s1", 100));

        a.audit_flush();
        assert_eq!(records(dir.path()), [("grant".to_owned(), "s1".to_owned())]);
    }

    #[test]
    fn a_revoke_names_the_technicians_of_the_grant_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let a = agent(dir.path());
        a.add_grant(grant("s1", 100));

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

        a.add_grant(grant("s1", 100));

        assert!(lock(&a.grants).get("s1").is_some());
        a.audit_flush();
        assert_eq!(a.audit_log.failures(), 1);
        std::fs::remove_file(dir.path().join(audit::DIR_NAME)).unwrap();
        a.add_grant(grant("s2", 100));
        a.audit_flush();
        let (all, _) = audit::list(dir.path(), &audit::Filter::default()).unwrap();
        let actions: Vec<&str> = all.iter().map(|r| r.body.action.as_str()).collect();
        assert_eq!(actions, ["audit.failed", "grant"]);
    }
}
