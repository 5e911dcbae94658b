//! Issue 9 rules 3 and 8: recurring maintenance windows in which an operator pre-approves a
//! provider, and idle tunnels that time out.

use std::{
    io::{Read, Write},
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use fernwart_e2e::{
    audit_actions, audit_has, hhmm, open_tunnel, roundtrip, unix_now, wait_eof, Echo, Options,
    World,
};
use serde_json::Value;

const T: Duration = Duration::from_secs(20);

fn field<'a>(v: &'a Value, name: &str) -> &'a str {
    v.get(name).and_then(Value::as_str).unwrap_or_default()
}

/// `session create NAME` on m1 for tech-b by the provider's session-admin.
fn prepare(w: &World, name: &str, duration: &str) -> Result<fernwart_e2e::Output> {
    w.fw_raw(
        "sadm",
        &[
            "session",
            "create",
            name,
            "--machine",
            "m1",
            "--target",
            "echo",
            "--user",
            "tech-b",
            "--duration",
            duration,
            "--reason",
            "T-42 weekly check",
        ],
        None,
    )
}

#[test]
fn a_maintenance_window_pre_approves_its_provider() -> Result<()> {
    let echo = Echo::start()?;
    let mut w = World::boot()?;
    w.fw("admin", &["org", "add", "plant-a", "--kind", "operator"])?;
    w.fw("admin", &["org", "add", "plant-b", "--kind", "operator"])?;
    w.fw("admin", &["org", "add", "builder", "--kind", "provider"])?;
    w.fw("admin", &["org", "add", "rival", "--kind", "provider"])?;
    w.fw("admin", &["contract", "add", "--provider", "builder", "--operator", "plant-a"])?;
    for (name, role, org) in [
        ("op-a", "approver", "plant-a"),
        ("op-b", "approver", "plant-b"),
        ("sadm", "session-admin", "builder"),
        ("tech-b", "technician", "builder"),
    ] {
        w.add_user_in(name, role, Some(org))?;
        w.login(name)?;
    }
    w.start_agent_in("m1", Some("plant-a"), &[("echo", echo.addr)])?;
    w.switch("m1", true)?;
    w.wait_switch("m1", true, T)?;

    // Daily, from five minutes ago for two hours, in UTC: the test's session lies inside.
    let now = unix_now();
    let (from, to) = (hhmm(now - 300), hhmm(now + 7200));
    let add = |who: &str, provider: &str, tz: &str| {
        w.fw_raw(
            who,
            &[
                "window",
                "add",
                "m1",
                "--provider",
                provider,
                "--days",
                "daily",
                "--from",
                &from,
                "--to",
                &to,
                "--tz",
                tz,
            ],
            None,
        )
    };
    // Only the operator's own approvers, only for a provider under contract, only real zones.
    let refusals = [
        ("op-b", "builder", "UTC", "no machine"),
        ("sadm", "builder", "UTC", "role"),
        ("admin", "builder", "UTC", "role"),
        ("op-a", "rival", "UTC", "no service contract"),
        ("op-a", "builder", "Mars/Olympus", "time zone"),
    ];
    for (who, provider, tz, word) in refusals {
        let out = add(who, provider, tz)?;
        ensure!(!out.success(), "{who} added a window for {provider} in {tz}");
        ensure!(out.stderr.contains(word), "{who}: unclear refusal: {}", out.stderr);
    }
    let bad_days = w.fw_raw(
        "op-a",
        &[
            "window",
            "add",
            "m1",
            "--provider",
            "builder",
            "--days",
            "fri-mon",
            "--from",
            "06:00",
            "--to",
            "08:00",
            "--tz",
            "UTC",
        ],
        None,
    )?;
    ensure!(!bad_days.success() && bad_days.stderr.contains("days"), "{}", bad_days.stderr);
    let added = w.fw_json(
        "op-a",
        &[
            "window",
            "add",
            "m1",
            "--provider",
            "builder",
            "--days",
            "daily",
            "--from",
            &from,
            "--to",
            &to,
            "--tz",
            "UTC",
        ],
    )?;
    let id = added.get("id").and_then(Value::as_i64).context("window add --json has no id")?;
    ensure!(added.get("next").is_some(), "window add shows no occurrence: {added}");

    // The provider sees the window on its contracted machine; plant-b does not.
    let seen = w.fw("sadm", &["window", "list", "--json"])?.json_list();
    ensure!(seen.len() == 1 && field(&seen[0], "provider") == "builder", "{seen:?}");
    ensure!(w.fw("op-b", &["window", "list", "--json"])?.json_list().is_empty());

    // Inside the window: released at once, by the window, and usable without an approver.
    let inside = prepare(&w, "s1", "30m")?;
    ensure!(inside.success(), "session inside the window refused: {}", inside.stderr);
    let s1 = w.session("s1")?;
    ensure!(field(&s1, "state") == "approved", "not pre-approved: {s1}");
    ensure!(
        field(&s1, "decided_by") == format!("op-a (window {id})"),
        "the release does not name the window and who set it: {s1}"
    );
    let mut conn = w.spawn_connect("s1", "tech-b")?;
    conn.wait_forwards(T)?;
    roundtrip(conn.forward("echo")?, b"inside the window", T)?;
    drop(conn);

    // Longer than the window: an approver decides as usual.
    ensure!(prepare(&w, "s2", "3h")?.success());
    ensure!(w.session_state("s2")? == "prepared", "a session beyond the window was released");

    // Removed: no more pre-approval.
    let by_b = w.fw_raw("op-b", &["window", "remove", &id.to_string()], None)?;
    ensure!(!by_b.success(), "plant-b removed plant-a's window");
    w.fw("op-a", &["window", "remove", &id.to_string()])?;
    ensure!(prepare(&w, "s3", "30m")?.success());
    ensure!(w.session_state("s3")? == "prepared", "a removed window still released a session");

    let events = w.audit("admin")?;
    for words in [
        &["window", "add"][..],
        &["session", "preapproved"],
        &["window", "remove"],
        &["access", "refused"],
    ] {
        ensure!(
            audit_has(&events, words),
            "no {words:?} record; actions: {}",
            audit_actions(&events)
        );
    }
    let refused_window = events.iter().any(|e| {
        field(e, "action") == "access.refused"
            && e.to_string().contains("window.add")
            && field(e, "actor") == "op-b"
    });
    ensure!(refused_window, "op-b's refused window is not in the audit trail");
    Ok(())
}

/// Issue 9 rule 8: a tunnel that carries nothing for `sessions.tunnel_idle_timeout` closes;
/// one in use stays open.
#[test]
fn idle_tunnels_time_out() -> Result<()> {
    let echo = Echo::start()?;
    let mut w = World::standard_with(Options {
        server_env: vec![
            ("FERNWART_SESSIONS_TUNNEL_IDLE_TIMEOUT".into(), "2s".into()),
            ("FERNWART_SESSIONS_ALLOW_NO_APPROVAL".into(), "true".into()),
        ],
        ..Options::default()
    })?;
    w.start_agent("m1", &[("echo", echo.addr)])?;
    w.switch("m1", true)?;
    w.wait_switch("m1", true, T)?;
    w.create_session_raw("s1", "m1", &["echo"], &["tech1"], &["--no-approval"])?.check()?;
    let mut conn = w.spawn_connect("s1", "tech1")?;
    conn.wait_forwards(T)?;
    let fwd = conn.forward("echo")?;

    // Busy: a byte every 500 ms for 5 s keeps it open.
    let mut busy = open_tunnel(fwd)?;
    busy.set_read_timeout(Some(Duration::from_secs(5)))?;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        busy.write_all(b"b").context("a busy tunnel was closed")?;
        let mut one = [0u8; 1];
        busy.read_exact(&mut one).context("a busy tunnel stopped echoing")?;
        std::thread::sleep(Duration::from_millis(500));
    }
    // Idle: closed after 2 s (the watcher looks every 500 ms).
    let mut idle = open_tunnel(fwd)?;
    let closed = wait_eof(&mut idle, Duration::from_secs(10));
    let took = closed.context("an idle tunnel stayed open 10 s (timeout 2 s)")?;
    ensure!(took >= Duration::from_millis(1900), "closed before the idle timeout: {took:?}");
    eprintln!("idle tunnel closed after {took:?} (timeout 2 s)");
    // The session and the link stay: a new tunnel works.
    roundtrip(fwd, b"after the idle one", T)?;
    let events = w.audit("aud1")?;
    let idle_close = events.iter().any(|e| {
        field(e, "action") == "tunnel.close" && e.to_string().contains("tunnel_idle_timeout")
    });
    ensure!(idle_close, "no tunnel.close naming the idle timeout; {}", audit_actions(&events));
    Ok(())
}
