//! Alert rules over the audit trail. The rules read the trail as it grows (a cursor of their
//! own, like the SIEM sinks) and write what they find back into it as `alert.*` records with
//! `"alert": true`, so an alert is chained, signed, exported and delivered like any record
//! (the syslog sink sends it with high severity).
//!
//! Rules: a burst of failed logins from one source or for one user; a lockout; use outside a
//! session's window (a connect or tunnel refused because the window is over or has not
//! begun); the key switch turned while a session is released on the machine; a machine
//! certificate near its end; a grant the machine's agent refused (its operator's check failed:
//! a server that hands out what the operator did not sign). [`Rules`] is pure: records and `now` in, alerts out.

use std::collections::{BTreeSet, HashMap, VecDeque};

use fernwart_proto::chain::Linked;
use serde_json::{json, Value};

use super::{Entry, Event};
use crate::{store::Store, util, App};

/// Failed logins within [`BURST_WINDOW_MS`] from one source (or for one user) that raise an
/// alert.
pub const BURST_THRESHOLD: usize = 5;
pub const BURST_WINDOW_MS: i64 = 60_000;
/// One burst alert per source or user in this time.
const BURST_QUIET_MS: i64 = 300_000;
/// Certificates ending within this time raise an alert (once a day per machine).
pub const CERT_WARN_SECS: i64 = 30 * 24 * 3600;

/// An alert found by a rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub rule: &'static str,
    /// What it is about: a source address, a user, a machine, a session.
    pub subject: String,
    pub details: Value,
}

/// The rules' memory between records.
#[derive(Debug, Default)]
pub struct Rules {
    failures: HashMap<String, VecDeque<i64>>,
    quiet_until: HashMap<String, i64>,
    cert_warned: HashMap<String, i64>,
    /// Each session's machine, from its `session.create`.
    machine_of: HashMap<String, String>,
    /// The sessions released on each machine, as the records tell.
    released: HashMap<String, BTreeSet<String>>,
}

impl Rules {
    /// Rules that know the sessions released at their start: (session, machine).
    pub fn new(released: Vec<(String, String)>) -> Self {
        let mut r = Rules::default();
        for (session, machine) in released {
            r.machine_of.insert(session.clone(), machine.clone());
            r.released.entry(machine).or_default().insert(session);
        }
        r
    }

    /// Follows the sessions' states through their records.
    fn track_session(&mut self, action: &str, session: &str, details: &Value) {
        if action == "session.create" {
            if let Some(m) = details.get("machine").and_then(Value::as_str) {
                self.machine_of.insert(session.to_owned(), m.to_owned());
            }
            return;
        }
        let Some(to) = details.get("to").and_then(Value::as_str) else { return };
        let Some(machine) = self.machine_of.get(session).cloned() else { return };
        let set = self.released.entry(machine).or_default();
        match to {
            "approved" | "active" => {
                set.insert(session.to_owned());
            }
            "ended" | "expired" | "revoked" | "rejected" => {
                set.remove(session);
                self.machine_of.remove(session);
            }
            _ => {}
        }
    }

    /// The alerts `rec` raises.
    pub fn on_record(&mut self, rec: &Linked) -> Vec<Alert> {
        let b = &rec.body;
        if b.action.starts_with("alert.") {
            return Vec::new();
        }
        let details: Value = serde_json::from_str(&b.details).unwrap_or(Value::Null);
        let reason = details.get("reason").and_then(Value::as_str).unwrap_or_default();
        if b.action.starts_with("session.") {
            self.track_session(&b.action, &b.target, &details);
        }
        let mut out = Vec::new();
        match b.action.as_str() {
            "auth.login_failed" => {
                for key in [format!("source {}", b.source), format!("user {}", b.target)] {
                    if let Some(a) = self.burst(&key, b.time_ms, rec.seq) {
                        out.push(a);
                    }
                }
            }
            "session.grant_refused" => out.push(Alert {
                rule: "grant_refused",
                subject: b.target.clone(),
                details: json!({
                    "session": b.target, "machine": details.get("machine"), "reason": reason,
                    "record": rec.seq,
                }),
            }),
            "auth.lockout" => out.push(Alert {
                rule: "lockout",
                subject: b.target.clone(),
                details: json!({"user": b.target, "source": b.source, "record": rec.seq}),
            }),
            "session.connect_refused" | "tunnel.refused" if outside_window(reason) => {
                out.push(Alert {
                    rule: "outside_window",
                    subject: b.target.clone(),
                    details: json!({
                        "session": b.target, "user": b.actor, "source": b.source,
                        "reason": reason, "record": rec.seq,
                    }),
                })
            }
            "machine.switch" => {
                let sessions: Vec<&String> =
                    self.released.get(&b.target).map(|s| s.iter().collect()).unwrap_or_default();
                if !sessions.is_empty() {
                    out.push(Alert {
                        rule: "switch_during_session",
                        subject: b.target.clone(),
                        details: json!({
                            "machine": b.target,
                            "switch": details.get("switch"),
                            "sessions": sessions,
                            "record": rec.seq,
                        }),
                    });
                }
            }
            _ => {}
        }
        out
    }

    fn burst(&mut self, key: &str, at_ms: i64, seq: u64) -> Option<Alert> {
        let times = self.failures.entry(key.to_owned()).or_default();
        times.push_back(at_ms);
        while times.front().is_some_and(|t| at_ms - *t > BURST_WINDOW_MS) {
            times.pop_front();
        }
        if times.len() < BURST_THRESHOLD {
            return None;
        }
        if self.quiet_until.get(key).is_some_and(|q| at_ms < *q) {
            return None;
        }
        self.quiet_until.insert(key.to_owned(), at_ms + BURST_QUIET_MS);
        Some(Alert {
            rule: "login_burst",
            subject: key.to_owned(),
            details: json!({
                "failures": times.len(),
                "within_secs": BURST_WINDOW_MS / 1000,
                "record": seq,
            }),
        })
    }

    /// Machines whose certificate ends before `now + CERT_WARN_SECS`: (machine, not_after),
    /// each at most once a day.
    pub fn on_certificates(&mut self, certs: &[(String, i64)], now: i64) -> Vec<Alert> {
        let mut out = Vec::new();
        for (machine, not_after) in certs {
            if *not_after > now + CERT_WARN_SECS {
                continue;
            }
            if self.cert_warned.get(machine).is_some_and(|t| now - *t < 24 * 3600) {
                continue;
            }
            self.cert_warned.insert(machine.clone(), now);
            out.push(Alert {
                rule: "cert_expiry",
                subject: machine.clone(),
                details: json!({
                    "machine": machine,
                    "not_after": util::rfc3339(*not_after),
                    "days_left": (not_after - now).div_euclid(86_400),
                }),
            });
        }
        out
    }
}

/// Whether a refusal's reason says the session's window is over or has not begun.
fn outside_window(reason: &str) -> bool {
    let r = reason.to_ascii_lowercase();
    r.contains("window") || r.ends_with(" is expired") || r.contains("not yet")
}

/// The cursor of the rules in the delivery table.
const CURSOR: &str = "alerts";

/// Runs the rules over the trail as it grows, until shutdown.
pub async fn run(app: App) {
    let mut rules = match app.store.run(|b| b.released_sessions()).await {
        Ok(released) => Rules::new(released),
        Err(e) => {
            tracing::error!(error = %e, "alert rules cannot start");
            return;
        }
    };
    let mut last_cert_check = 0i64;
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = app.shutdown.cancelled() => return,
        }
        if let Err(e) = step(&app.store, &mut rules, &mut last_cert_check).await {
            tracing::error!(error = %e, "alert rules");
        }
    }
}

async fn step(
    store: &Store,
    rules: &mut Rules,
    last_cert_check: &mut i64,
) -> Result<(), crate::store::StoreError> {
    let after = store.run(|b| b.delivery_cursor(CURSOR)).await?;
    let batch = store.run(move |b| b.audit_chain(after, 256)).await?;
    let mut alerts = Vec::new();
    // A new certificate is checked at once, the others hourly.
    if batch.iter().any(|r| r.body.action == "machine.enrol") {
        *last_cert_check = 0;
    }
    if let Some(last) = batch.last().map(|r| r.seq) {
        for rec in &batch {
            alerts.extend(rules.on_record(rec));
        }
        write(store, std::mem::take(&mut alerts), Some(last)).await?;
    }
    let now = util::now();
    if now - *last_cert_check >= 3600 {
        *last_cert_check = now;
        let certs = store.run(|b| b.machine_cert_ends()).await?;
        write(store, rules.on_certificates(&certs, now), None).await?;
    }
    Ok(())
}

/// Writes the alerts as records, then moves the rules' cursor past what they read.
async fn write(
    store: &Store,
    alerts: Vec<Alert>,
    read_up_to: Option<u64>,
) -> Result<(), crate::store::StoreError> {
    let entries: Vec<Entry> = alerts
        .into_iter()
        .map(|a| {
            tracing::warn!(rule = a.rule, subject = %a.subject, "alert");
            Entry::system(Event::Alert { rule: a.rule, subject: a.subject, details: a.details })
        })
        .collect();
    if !entries.is_empty() {
        store.run(move |b| b.record(&entries)).await?;
    }
    if let Some(seq) = read_up_to {
        store.run(move |b| b.delivery_advance(CURSOR, seq)).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use fernwart_proto::chain::{link, Body};

    use super::*;

    fn rec(
        seq: u64,
        time_ms: i64,
        action: &str,
        target: &str,
        source: &str,
        details: Value,
    ) -> Linked {
        let mut l = link(
            None,
            Body {
                time_ms,
                actor: "x".into(),
                action: action.into(),
                target: target.into(),
                source: source.into(),
                details: details.to_string(),
            },
        );
        l.seq = seq;
        l
    }

    #[test]
    fn a_burst_of_failed_logins_alerts_once() {
        let mut r = Rules::default();
        let mut alerts = Vec::new();
        for i in 0..12 {
            let user = format!("u{}", i % 3);
            let e =
                rec(i, 1_000 + i as i64 * 1000, "auth.login_failed", &user, "10.0.0.9", json!({}));
            alerts.extend(r.on_record(&e));
        }
        // From one source: one alert (then quiet); per user only 4 each: none.
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        assert_eq!(alerts[0].subject, "source 10.0.0.9");
        // Spread over more than a minute: no burst.
        let mut r = Rules::default();
        let slow: Vec<Alert> = (0..10)
            .flat_map(|i| {
                let e = rec(i, i as i64 * 20_000, "auth.login_failed", "u", "10.0.0.8", json!({}));
                r.on_record(&e)
            })
            .collect();
        assert!(slow.is_empty(), "{slow:?}");
    }

    #[test]
    fn a_grant_the_agent_refused_alerts() {
        let mut r = Rules::default();
        let refused = rec(
            1,
            0,
            "session.grant_refused",
            "s1",
            "10.1.1.1",
            json!({"alert": true, "machine": "m1", "reason": "no approver's signature"}),
        );
        let alerts = r.on_record(&refused);
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        assert_eq!((alerts[0].rule, alerts[0].subject.as_str()), ("grant_refused", "s1"));
        assert_eq!(alerts[0].details["machine"], "m1");
        assert_eq!(alerts[0].details["reason"], "no approver's signature");
    }

    #[test]
    fn lockouts_windows_and_switches() {
        let mut r = Rules::default();
        let lock = rec(1, 0, "auth.lockout", "tech1", "::1", json!({"alert": true}));
        assert_eq!(r.on_record(&lock)[0].rule, "lockout");
        let late = rec(
            2,
            0,
            "session.connect_refused",
            "s1",
            "::1",
            json!({"reason": "session s1 is expired"}),
        );
        assert_eq!(r.on_record(&late)[0].rule, "outside_window");
        let early = rec(
            3,
            0,
            "tunnel.refused",
            "s1",
            "::1",
            json!({"reason": "session window opens at 2030-01-01T00:00:00Z"}),
        );
        assert_eq!(r.on_record(&early).len(), 1);
        let other =
            rec(4, 0, "tunnel.refused", "s1", "::1", json!({"reason": "machine m1 is offline"}));
        assert!(r.on_record(&other).is_empty());
        let switch = rec(5, 0, "machine.switch", "m1", "agent", json!({"switch": "off"}));
        assert!(r.on_record(&switch).is_empty());
        // A session on m1, released: a switch now alerts; ended: no more.
        r.on_record(&rec(6, 0, "session.create", "s1", "::1", json!({"machine": "m1"})));
        r.on_record(&rec(7, 0, "session.request", "s1", "::1", json!({"to": "requested"})));
        assert!(r.on_record(&switch).is_empty());
        r.on_record(&rec(8, 0, "session.approve", "s1", "::1", json!({"to": "approved"})));
        let a = r.on_record(&switch);
        assert_eq!(
            (a[0].rule, a[0].details["sessions"][0].as_str()),
            ("switch_during_session", Some("s1"))
        );
        r.on_record(&rec(9, 0, "session.end", "s1", "::1", json!({"to": "ended"})));
        assert!(r.on_record(&switch).is_empty());
        // Known at the start.
        let mut r = Rules::new(vec![("s2".into(), "m1".into())]);
        assert_eq!(r.on_record(&switch).len(), 1);
        // Alerts do not raise alerts.
        let again = rec(10, 0, "alert.lockout", "tech1", "server", json!({"alert": true}));
        assert!(r.on_record(&again).is_empty());
    }

    #[test]
    fn certificates_near_their_end_alert_once_a_day() {
        let mut r = Rules::default();
        let now = 1_800_000_000;
        let certs = vec![("m1".to_owned(), now + 5 * 86_400), ("m2".to_owned(), now + 90 * 86_400)];
        let a = r.on_certificates(&certs, now);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].details["days_left"], 5);
        assert!(r.on_certificates(&certs, now + 3600).is_empty());
        assert_eq!(r.on_certificates(&certs, now + 86_400).len(), 1);
    }
}
