//! Maintenance sessions: loading, state transitions, what a technician may use now.

use rusqlite::{params, Connection};
use serde::Serialize;

use crate::{
    store::{optional, StoreError},
    util,
};

#[derive(Debug, Clone, Serialize)]
pub struct Session {
    #[serde(skip)]
    pub id: i64,
    pub name: String,
    #[serde(skip)]
    pub machine_id: i64,
    pub machine: String,
    pub targets: Vec<String>,
    pub users: Vec<String>,
    pub reason: String,
    pub state: String,
    pub approval_required: bool,
    pub from: String,
    pub until: String,
    #[serde(skip)]
    pub from_ts: i64,
    #[serde(skip)]
    pub until_ts: i64,
    pub created_by: String,
    pub created_at: String,
    pub decided_by: Option<String>,
    pub ended_by: Option<String>,
}

pub const TERMINAL: &[&str] = &["ended", "rejected", "expired", "revoked"];

impl Session {
    pub fn is_terminal(&self) -> bool {
        TERMINAL.contains(&self.state.as_str())
    }

    /// Whether traffic may flow now (state and window; the rest is checked per tunnel).
    pub fn usable(&self, now: i64) -> bool {
        now >= self.from_ts
            && now < self.until_ts
            && match self.state.as_str() {
                "approved" | "active" => true,
                "prepared" | "requested" => !self.approval_required,
                _ => false,
            }
    }
}

const SELECT: &str = "SELECT s.id, s.name, s.machine_id, m.name, s.targets, s.reason, s.state, \
     s.approval_required, s.valid_from, s.valid_until, s.created_by, s.created_at, s.decided_by, s.ended_by \
     FROM sessions s JOIN machines m ON m.id = s.machine_id";

fn row(c: &Connection, r: &rusqlite::Row<'_>) -> rusqlite::Result<Session> {
    let id: i64 = r.get(0)?;
    let targets: String = r.get(4)?;
    let from_ts: i64 = r.get(8)?;
    let until_ts: i64 = r.get(9)?;
    let created_at: i64 = r.get(11)?;
    let mut stmt = c.prepare_cached(
        "SELECT u.name FROM session_users su JOIN users u ON u.id = su.user_id WHERE su.session_id = ?1 ORDER BY u.name",
    )?;
    let users = stmt.query_map([id], |r| r.get(0))?.collect::<Result<Vec<String>, _>>()?;
    Ok(Session {
        id,
        name: r.get(1)?,
        machine_id: r.get(2)?,
        machine: r.get(3)?,
        targets: serde_json::from_str(&targets).unwrap_or_default(),
        users,
        reason: r.get(5)?,
        state: r.get(6)?,
        approval_required: r.get::<_, i64>(7)? != 0,
        from: util::rfc3339(from_ts),
        until: util::rfc3339(until_ts),
        from_ts,
        until_ts,
        created_by: r.get(10)?,
        created_at: util::rfc3339(created_at),
        decided_by: r.get(12)?,
        ended_by: r.get(13)?,
    })
}

pub fn by_name(c: &Connection, name: &str) -> Result<Option<Session>, StoreError> {
    let mut stmt = c.prepare_cached(&format!("{SELECT} WHERE s.name = ?1"))?;
    optional(stmt.query_row([name], |r| row(c, r)))
}

pub fn by_id(c: &Connection, id: i64) -> Result<Option<Session>, StoreError> {
    let mut stmt = c.prepare_cached(&format!("{SELECT} WHERE s.id = ?1"))?;
    optional(stmt.query_row([id], |r| row(c, r)))
}

pub fn list(c: &Connection, only_user: Option<i64>) -> Result<Vec<Session>, StoreError> {
    let (sql, args): (String, Vec<i64>) = match only_user {
        Some(u) => (
            format!("{SELECT} WHERE s.id IN (SELECT session_id FROM session_users WHERE user_id = ?1) ORDER BY s.id"),
            vec![u],
        ),
        None => (format!("{SELECT} ORDER BY s.id"), vec![]),
    };
    let mut stmt = c.prepare(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| row(c, r))?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// Sessions whose agent should hold a grant (approved or active, window open).
pub fn grantable_for_machine(
    c: &Connection,
    machine: i64,
    now: i64,
) -> Result<Vec<Session>, StoreError> {
    let mut stmt = c.prepare(&format!(
        "{SELECT} WHERE s.machine_id = ?1 AND s.state IN ('approved', 'active') AND s.valid_until > ?2"
    ))?;
    let rows = stmt.query_map(params![machine, now], |r| row(c, r))?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// Non-terminal sessions whose window has closed.
pub fn overdue(c: &Connection, now: i64) -> Result<Vec<(i64, i64, String)>, StoreError> {
    let mut stmt = c.prepare(
        "SELECT id, machine_id, name FROM sessions WHERE valid_until <= ?1 \
         AND state NOT IN ('ended', 'rejected', 'expired', 'revoked')",
    )?;
    let rows = stmt.query_map([now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

pub fn set_state(c: &Connection, id: i64, state: &str, by: Option<&str>) -> Result<(), StoreError> {
    let now = util::now();
    match state {
        "approved" | "rejected" => c.execute(
            "UPDATE sessions SET state = ?2, decided_by = ?3, decided_at = ?4 WHERE id = ?1",
            params![id, state, by, now],
        )?,
        "ended" | "expired" | "revoked" => c.execute(
            "UPDATE sessions SET state = ?2, ended_by = ?3, ended_at = ?4 WHERE id = ?1",
            params![id, state, by, now],
        )?,
        _ => c.execute("UPDATE sessions SET state = ?2 WHERE id = ?1", params![id, state])?,
    };
    Ok(())
}

pub fn grant_for(s: &Session) -> fernwart_proto::Grant {
    fernwart_proto::Grant {
        session: s.name.clone(),
        targets: s.targets.clone(),
        until: s.until_ts,
        users: s.users.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(state: &str, approval: bool) -> Session {
        Session {
            id: 1,
            name: "s1".into(),
            machine_id: 1,
            machine: "m1".into(),
            targets: vec!["plc".into()],
            users: vec!["tech1".into()],
            reason: "t".into(),
            state: state.into(),
            approval_required: approval,
            from: String::new(),
            until: String::new(),
            from_ts: 100,
            until_ts: 200,
            created_by: "admin".into(),
            created_at: String::new(),
            decided_by: None,
            ended_by: None,
        }
    }

    #[test]
    fn approval_is_needed_when_the_rule_asks() {
        assert!(!session("prepared", true).usable(150));
        assert!(!session("requested", true).usable(150));
        assert!(session("approved", true).usable(150));
        assert!(session("active", true).usable(150));
        assert!(session("prepared", false).usable(150));
    }

    #[test]
    fn only_inside_the_window() {
        let s = session("approved", true);
        assert!(!s.usable(99));
        assert!(s.usable(100));
        assert!(!s.usable(200));
    }

    #[test]
    fn terminal_states_are_never_usable() {
        for state in TERMINAL {
            let s = session(state, false);
            assert!(s.is_terminal());
            assert!(!s.usable(150), "{state}");
        }
    }
}
