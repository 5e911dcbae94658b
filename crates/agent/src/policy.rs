//! The agent's own check of DESIGN §4 promise 2: the server's word is not enough.

use std::collections::{BTreeMap, HashMap};

use fernwart_proto::Grant;

use crate::config::AgentConfig;

/// The most refusals remembered (for the reason a tunnel of a refused session gets).
const MAX_REFUSALS: usize = 256;

#[derive(Debug, Default)]
pub struct Grants {
    by_session: HashMap<String, Grant>,
    /// Why the last grant of a session was refused (operator-signed approvals).
    refused: BTreeMap<String, String>,
}

impl Grants {
    pub fn replace_all(&mut self, grants: Vec<Grant>) {
        for g in &grants {
            self.refused.remove(&g.session);
        }
        self.by_session = grants.into_iter().map(|g| (g.session.clone(), g)).collect();
    }

    pub fn insert(&mut self, g: Grant) {
        self.refused.remove(&g.session);
        self.by_session.insert(g.session.clone(), g);
    }

    /// The grant of `session` was refused, for `reason`.
    pub fn refused(&mut self, session: String, reason: String) {
        self.refused.insert(session, reason);
        while self.refused.len() > MAX_REFUSALS {
            self.refused.pop_first();
        }
    }

    /// Why the grant of `session` was refused, if it was.
    pub fn refusal(&self, session: &str) -> Option<&str> {
        self.refused.get(session).map(String::as_str)
    }

    pub fn remove(&mut self, session: &str) -> Option<Grant> {
        self.by_session.remove(session)
    }

    pub fn get(&self, session: &str) -> Option<&Grant> {
        self.by_session.get(session)
    }

    /// The grants held, in no particular order.
    pub fn all(&self) -> impl Iterator<Item = &Grant> {
        self.by_session.values()
    }

    /// The sessions held, in no particular order.
    pub fn sessions(&self) -> impl Iterator<Item = &str> {
        self.by_session.keys().map(String::as_str)
    }
}

/// Whether a tunnel to `target` for `session` may open now. `Err` says why not.
pub fn check(
    cfg: &AgentConfig,
    grants: &Grants,
    switch_on: bool,
    session: &str,
    target: &str,
    now: i64,
) -> Result<(), String> {
    if !switch_on {
        return Err("the key switch is off".into());
    }
    if cfg.target(target).is_none() {
        return Err(format!("target {target:?} is not in this machine's allow-list"));
    }
    let grant = grants.get(session).ok_or_else(|| match grants.refusal(session) {
        Some(why) => format!("this machine refused the grant of session {session}: {why}"),
        None => format!("no grant for session {session}"),
    })?;
    if !grant.targets.iter().any(|t| t == target) {
        return Err(format!("session {session} does not include target {target:?}"));
    }
    if now < grant.from {
        return Err(format!("session {session}'s time window has not begun"));
    }
    if now >= grant.until {
        return Err(format!("session {session} is past its time window"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> AgentConfig {
        AgentConfig::parse("[[target]]\nname = \"plc\"\naddress = \"127.0.0.1:1\"\n[[target]]\nname = \"hmi\"\naddress = \"127.0.0.1:2\"\n").unwrap()
    }

    fn grants(targets: &[&str], until: i64) -> Grants {
        let mut g = Grants::default();
        g.insert(Grant {
            session: "s1".into(),
            targets: targets.iter().map(|s| s.to_string()).collect(),
            from: 0,
            until,
            users: vec![],
            record: false,
            tech_keys: vec![],
            approval: None,
        });
        g
    }

    #[test]
    fn every_condition_must_hold() {
        let c = cfg();
        assert!(check(&c, &grants(&["plc"], 100), true, "s1", "plc", 50).is_ok());
        assert!(check(&c, &grants(&["plc"], 100), false, "s1", "plc", 50)
            .unwrap_err()
            .contains("switch"));
        assert!(check(&c, &grants(&["plc"], 100), true, "s2", "plc", 50)
            .unwrap_err()
            .contains("no grant"));
        assert!(check(&c, &grants(&["plc"], 100), true, "s1", "hmi", 50)
            .unwrap_err()
            .contains("does not include"));
        assert!(check(&c, &grants(&["plc"], 100), true, "s1", "plc", 100)
            .unwrap_err()
            .contains("time window"));
    }

    #[test]
    fn a_grant_is_good_only_from_its_start() {
        let c = cfg();
        let mut g = grants(&["plc"], 100);
        if let Some(grant) = g.by_session.get_mut("s1") {
            grant.from = 40;
        }
        assert!(check(&c, &g, true, "s1", "plc", 39).unwrap_err().contains("not begun"));
        assert!(check(&c, &g, true, "s1", "plc", 40).is_ok());
        // A grant without a start (an older server) is good from any time.
        let old: Grant =
            serde_json::from_str(r#"{"session":"s1","targets":["plc"],"until":100,"users":[]}"#)
                .unwrap();
        assert_eq!(old.from, 0);
    }

    #[test]
    fn a_confused_server_cannot_open_unlisted_targets() {
        let c = cfg();
        let err = check(&c, &grants(&["plc", "ssh"], 100), true, "s1", "ssh", 50).unwrap_err();
        assert!(err.contains("allow-list"));
    }
}
