//! fernwart-agent: the machine client on the edge gateway.
//!
//! Connects out to the server with its own certificate, announces the operator's targets and
//! key switch, and forwards session traffic only when its own checks agree (see [`policy`]).

use std::{
    collections::HashMap,
    io::Write,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use fernwart_proto::Grant;
use fernwart_transport::ProxyConfig;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub mod config;
pub mod forward;
pub mod identity;
pub mod link;
pub mod policy;
pub mod switch;

pub use config::AgentConfig;

pub const AUDIT_FILE: &str = "audit.jsonl";

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
    audit_file: Mutex<Option<std::fs::File>>,
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
        let audit_file =
            std::fs::OpenOptions::new().create(true).append(true).open(dir.join(AUDIT_FILE)).ok();
        Agent(Arc::new(AgentInner {
            switch: watch::channel(on).0,
            dir,
            cfg,
            identity,
            proxy,
            grants: Mutex::new(policy::Grants::default()),
            grant_tokens: Mutex::new(HashMap::new()),
            switch_token: Mutex::new(CancellationToken::new()),
            audit_file: Mutex::new(audit_file),
        }))
    }

    /// The machine-side record of what happened here (the operator's copy).
    pub fn audit(&self, action: &str, details: serde_json::Value) {
        tracing::info!(%action, %details, "audit");
        let line = serde_json::json!({"time": now(), "machine": self.identity.machine, "action": action, "details": details});
        if let Some(f) = lock(&self.audit_file).as_mut() {
            // One write per line, so that a crash leaves no half-written record.
            let _ = f.write_all(format!("{line}\n").as_bytes());
        }
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
        self.audit("switch", serde_json::json!({"switch": if on { "on" } else { "off" }}));
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
            let dropped: Vec<String> = held
                .sessions()
                .filter(|s| !keep.iter().any(|k| k == s))
                .map(str::to_owned)
                .collect();
            (fresh, dropped)
        };
        for grant in fresh {
            self.audit_grant(grant);
        }
        dropped.sort();
        for session in dropped {
            self.audit(
                "revoke",
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
        self.audit("grant", serde_json::json!({"session": grant.session, "targets": grant.targets, "until": grant.until, "users": grant.users}));
    }

    pub fn revoke(&self, session: &str) {
        lock(&self.grants).remove(session);
        if let Some(t) = lock(&self.grant_tokens).remove(session) {
            t.cancel();
        }
        self.audit("revoke", serde_json::json!({"session": session}));
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
    let a = agent.clone();
    let reactor = tokio::spawn(async move {
        let initial = *rx.borrow_and_update();
        a.on_switch(initial);
        while rx.changed().await.is_ok() {
            let on = *rx.borrow_and_update();
            a.on_switch(on);
        }
    });
    link::run(agent, shutdown).await;
    watcher.abort();
    reactor.abort();
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
        }
    }

    /// `(action, session)` of each record in the agent's audit file.
    fn records(dir: &std::path::Path) -> Vec<(String, String)> {
        std::fs::read_to_string(dir.join(AUDIT_FILE))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["action"] != "switch")
            .map(|v| {
                (
                    v["action"].as_str().unwrap().to_owned(),
                    v["details"]["session"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn welcome_grants_are_recorded_like_grant_frames() {
        let dir = tempfile::tempdir().unwrap();
        let a = agent(dir.path());

        a.set_grants(vec![grant("s1", 100), grant("s2", 100)]);

        let rec = records(dir.path());
        assert_eq!(rec, [("grant".into(), "s1".into()), ("grant".into(), "s2".into())]);
        let line = std::fs::read_to_string(dir.path().join(AUDIT_FILE)).unwrap();
        let first: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
        assert_eq!(first["machine"], "m1");
        assert_eq!(first["details"]["users"], serde_json::json!(["tech"]));
        assert_eq!(first["details"]["targets"], serde_json::json!(["plc"]));
        assert_eq!(first["details"]["until"], 100);
    }

    #[test]
    fn a_second_welcome_records_only_changes() {
        let dir = tempfile::tempdir().unwrap();
        let a = agent(dir.path());
        a.set_grants(vec![grant("s1", 100), grant("s2", 100)]);
        let s2 = a.grant_token("s2");

        a.set_grants(vec![grant("s1", 100), grant("s3", 100)]);

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

        assert_eq!(records(dir.path()), [("grant".to_owned(), "s1".to_owned())]);
    }
}
