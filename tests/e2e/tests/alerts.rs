//! Issue 10 point 7: alert rules over the trail. Each alert is itself an `alert.*` record with
//! `"alert": true` (so it is chained, signed, exported and sent to the SIEM with high
//! severity).

use std::time::Duration;

use anyhow::{ensure, Result};
use fernwart_e2e::{audit_actions, https::Https, poll, Echo, Options, World};
use serde_json::Value;

const T: Duration = Duration::from_secs(20);

fn wait_alert(w: &World, rule: &str) -> Result<Value> {
    poll(&format!("an alert.{rule} record"), T, Duration::from_millis(200), || {
        let events = w.audit("admin")?;
        Ok(events.into_iter().find(|e| {
            e.get("action").and_then(Value::as_str) == Some(&format!("alert.{rule}"))
                && e["details"]["alert"] == Value::Bool(true)
        }))
    })
    .map_err(|e| {
        let actions = w.audit("admin").map(|ev| audit_actions(&ev)).unwrap_or_default();
        e.context(format!("actions: {actions}"))
    })
}

#[test]
fn the_rules_raise_alerts_as_records() -> Result<()> {
    let echo = Echo::start()?;
    let mut w = World::standard_with(Options {
        server_env: vec![
            ("FERNWART_AUTH_LOCKOUT_THRESHOLD".into(), "5".into()),
            ("FERNWART_ENROLMENT_CERT_TTL".into(), "10d".into()),
        ],
        ..Options::default()
    })?;
    // Failed logins: a burst from one address, then the lock.
    let api = Https::new(&w.ca, w.listen)?;
    for _ in 0..6 {
        let _ = api.login("tech2", "wrong password 1!", None)?;
    }
    let burst = wait_alert(&w, "login_burst")?;
    ensure!(burst["target"]
        .as_str()
        .is_some_and(|t| t.contains("127.0.0.1") || t.contains("tech2")));
    wait_alert(&w, "lockout")?;

    // A machine with a certificate of 10 days: near its end.
    w.start_agent("m1", &[("echo", echo.addr)])?;
    let cert = wait_alert(&w, "cert_expiry")?;
    ensure!(cert["details"]["days_left"].as_i64().is_some_and(|d| d <= 10), "{cert}");

    // The key switch turned while a session is released.
    w.switch("m1", true)?;
    w.wait_switch("m1", true, T)?;
    w.create_session("s1", "m1", &["echo"], &["tech1"])?;
    let conn = w.connect_approved("s1", "tech1", "op1")?;
    w.switch("m1", false)?;
    let sw = wait_alert(&w, "switch_during_session")?;
    ensure!(sw["details"]["sessions"][0] == "s1", "{sw}");
    let switch_alerts =
        w.audit("admin")?.iter().filter(|e| e["action"] == "alert.switch_during_session").count();
    ensure!(switch_alerts == 1, "{switch_alerts} switch alerts for one switch during a session");
    drop(conn);

    // A connect after the session's window: refused, and an alert (an ended session is not
    // outside its window; an expired one is).
    w.fw("admin", &["session", "end", "s1"])?;
    // The dropped link ended tech1's login: log in again.
    w.login("tech1")?;
    let refused = w.fw_raw("tech1", &["connect", "s1", "--wait", "2s"], None)?;
    ensure!(!refused.success(), "connect to an ended session worked");
    let until = fernwart_e2e::rfc3339_in(2);
    w.fw(
        "admin",
        &[
            "session",
            "create",
            "s4",
            "--machine",
            "m1",
            "--target",
            "echo",
            "--user",
            "tech1",
            "--until",
            &until,
            "--reason",
            "T-4",
        ],
    )?;
    std::thread::sleep(Duration::from_secs(4));
    let expired = w.fw_raw("tech1", &["connect", "s4", "--wait", "2s"], None)?;
    ensure!(!expired.success(), "connect to an expired session worked");
    wait_alert(&w, "outside_window")?;
    Ok(())
}
