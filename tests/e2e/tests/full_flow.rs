//! The maintenance path end to end with the real binaries on loopback.

use std::{thread, time::Duration};

use anyhow::{bail, ensure, Context, Result};
use fernwart_e2e::{
    audit_actions, audit_has, open_tunnel, poll, random_bytes, roundtrip, wait_closed, Echo, World,
};
use serde_json::Value;

const T: Duration = Duration::from_secs(10);

#[test]
fn full_flow() -> Result<()> {
    let echo = Echo::start()?;
    let other = Echo::start()?;
    let mut w = World::standard()?;
    w.start_agent("m1", &[("echo", echo.addr), ("other", other.addr)])?;

    // machine list shows the agent's own targets
    let m = w.machine("m1")?.context("machine m1 not listed")?;
    let names: Vec<&str> = m
        .get("targets")
        .and_then(Value::as_array)
        .map(|ts| ts.iter().filter_map(|t| t.get("name").and_then(Value::as_str)).collect())
        .unwrap_or_default();
    ensure!(names.contains(&"echo") && names.contains(&"other"), "machine list targets: {m}");

    w.switch("m1", true)?;
    w.wait_switch("m1", true, T)?;
    w.create_session("s1", "m1", &["echo"], &["tech1"])?;
    ensure!(
        w.session_state("s1")? == "prepared",
        "a new session is prepared: {}",
        w.session("s1")?
    );

    // connect asks for approval and waits; the approver releases the session
    let mut conn = w.connect_approved("s1", "tech1", "op1")?;
    let fwd = conn.forward("echo")?;
    ensure!(!conn.forwards.contains_key("other"), "forwards {:?} include 'other'", conn.forwards);

    roundtrip(fwd, b"fernwart-probe-0123456789", T)?;
    roundtrip(fwd, &random_bytes(1 << 20), Duration::from_secs(30)).context("1 MB both ways")?;

    // 20 parallel connections on one session
    let workers: Vec<_> = (0..20)
        .map(|i| {
            thread::spawn(move || {
                roundtrip(fwd, &random_bytes(64 * 1024 + i), Duration::from_secs(30))
                    .with_context(|| format!("parallel connection {i}"))
            })
        })
        .collect();
    for h in workers {
        match h.join() {
            Ok(r) => r?,
            Err(_) => bail!("a parallel connection thread panicked"),
        }
    }
    ensure!(other.accepted() == 0, "the target not in the session was reached");

    let show = w.session("s1")?;
    ensure!(show.get("state").and_then(Value::as_str) == Some("active"), "session show: {show}");
    for key in
        ["name", "machine", "targets", "users", "from", "until", "reason", "approval_required"]
    {
        ensure!(show.get(key).is_some(), "session show --json lacks {key:?}: {show}");
    }

    // the audit trail, read by the auditor
    let events = w.audit("aud1")?;
    for words in [
        &["login"][..],
        &["user", "add"],
        &["machine", "add"],
        &["enrol"],
        &["session", "create"],
        &["approv"],
        &["connect"],
    ] {
        ensure!(
            audit_has(&events, words),
            "audit list has no event for {words:?}; actions: {}",
            audit_actions(&events)
        );
    }

    // session end closes the open tunnel connection and ends connect
    let mut open = open_tunnel(fwd)?;
    w.fw("admin", &["session", "end", "s1"])?;
    let closed = wait_closed(&mut open, Duration::from_secs(3));
    ensure!(closed.is_some(), "a tunnel connection stayed open 3 s after `session end`");
    let status = conn.wait_exit(Duration::from_secs(5));
    let Some(status) = status else {
        bail!("connect still runs 5 s after `session end`: {}", conn.log_tail());
    };
    ensure!(status.success(), "connect exited {status} after `session end`: {}", conn.log_tail());
    ensure!(w.session_state("s1")? == "ended", "session show after end: {}", w.session("s1")?);
    poll(
        "the agent to close its target connections",
        Duration::from_secs(3),
        Duration::from_millis(50),
        || Ok((echo.active() == 0).then_some(())),
    )?;
    // a new connect on an ended session is refused
    let mut late = w.spawn_connect("s1", "tech1")?;
    let Some(status) = late.wait_exit(T) else {
        bail!("connect on an ended session still runs after {T:?}: {}", late.log_tail());
    };
    ensure!(!status.success(), "connect on an ended session exited 0");
    Ok(())
}
