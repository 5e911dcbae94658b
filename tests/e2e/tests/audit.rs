//! The audit trail: who, what, when, from where for every event; verifiable; usable in pipes.

use std::{process::Stdio, time::Duration};

use anyhow::{bail, ensure, Context, Result};
use fernwart_e2e::{process::run, roundtrip, Echo, World};
use serde_json::Value;

const T: Duration = Duration::from_secs(10);

/// A world that has been through the whole path once: users, machine, session, bytes.
fn busy_world(echo: &Echo) -> Result<World> {
    let mut w = World::standard()?;
    w.start_agent("m1", &[("echo", echo.addr)])?;
    w.switch("m1", true)?;
    w.create_session("s1", "m1", &["echo"], &["tech1"])?;
    let conn = w.connect_approved("s1", "tech1", "op1")?;
    roundtrip(conn.forward("echo")?, b"for the record", T)?;
    w.fw("admin", &["session", "end", "s1"])?;
    Ok(w)
}

fn field<'a>(e: &'a Value, key: &str) -> &'a str {
    e.get(key).and_then(Value::as_str).unwrap_or_default()
}

#[test]
fn audit_events_say_who_what_when_where() -> Result<()> {
    let echo = Echo::start()?;
    let w = busy_world(&echo)?;
    let events = w.audit("aud1")?;
    ensure!(events.len() > 10, "only {} audit events", events.len());
    // Gather every shortfall, so that one report shows them all.
    let mut problems = Vec::new();
    for e in &events {
        for key in ["time", "actor", "action", "source"] {
            if field(e, key).trim().is_empty() {
                problems.push(format!("{} lacks {key}: {e}", field(e, "action")));
            }
        }
        if field(e, "action").starts_with("session.") && field(e, "target") != "s1" {
            problems.push(format!(
                "{} names target {:?}, not the session s1: {e}",
                field(e, "action"),
                field(e, "target")
            ));
        }
    }

    // the technician's steps are on record: link up, each TCP connection, link down
    for action in ["session.connect", "tunnel.open", "tunnel.close", "session.disconnect"] {
        if !events.iter().any(|e| field(e, "action") == action && field(e, "actor") == "tech1") {
            problems.push(format!("no {action} event by tech1"));
        }
    }

    // `--since` narrows the list
    let last_time = events.last().map(|e| field(e, "time").to_owned()).unwrap_or_default();
    let recent = w.fw("aud1", &["audit", "list", "--since", &last_time, "--json"])?.json_list();
    if recent.is_empty() || recent.len() >= events.len() {
        problems.push(format!(
            "audit list --since {last_time} gave {} of {} events",
            recent.len(),
            events.len()
        ));
    }

    // a technician reads only their own records, and cannot export the trail
    let own = w.fw("tech1", &["audit", "list", "--json"])?.json_list();
    let others: Vec<&Value> =
        own.iter().filter(|e| e.get("actor").and_then(Value::as_str) != Some("tech1")).collect();
    if own.is_empty() || !others.is_empty() {
        problems.push(format!(
            "audit list as a technician: {} records, {} of others",
            own.len(),
            others.len()
        ));
    }
    let out = w.fw_raw("tech1", &["audit", "export", "--out", "/dev/null"], None)?;
    if let Err(e) = out.reason() {
        problems.push(format!("audit export as a technician: {e:#}"));
    }

    // `fernwart audit list --json | head -1`: a closed pipe is no crash
    let mut cmd = w.cli("aud1");
    cmd.args(["audit", "list", "--json"]).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    drop(child.stdout.take());
    let out = child.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("panicked") {
        problems.push(format!(
            "`fernwart audit list --json | head -1` panics on the closed pipe: {}",
            stderr.lines().take(2).collect::<Vec<_>>().join(" / ")
        ));
    }
    ensure!(problems.is_empty(), "audit trail shortfalls:\n{}", problems.join("\n"));
    Ok(())
}

#[test]
#[ignore = "fernwart-server audit verify does not verify a hash chain yet (it says so)"]
fn audit_verify_detects_tampering() -> Result<()> {
    let echo = Echo::start()?;
    let mut w = busy_world(&echo)?;
    w.stop_server()?;
    let data = w.srv_dir.to_str().context("utf-8 path")?.to_owned();
    let verify = || run(w.server_cmd(&["audit", "verify", "--data", &data]), None, T);
    verify()?.check().context("audit verify on an untouched store")?;

    // an insider edits one event in the database behind the server's back
    let db = rusqlite::Connection::open(w.srv_dir.join("fernwart.db"))?;
    let changed = db.execute("UPDATE audit SET actor = 'mallory' WHERE action = 'user.add'", [])?;
    ensure!(changed > 0, "no user.add event to tamper with");
    drop(db);
    let out = verify()?;
    if out.success() {
        bail!("audit verify accepts a tampered trail: {}", out.stdout.trim());
    }
    out.reason().context("audit verify on a tampered store")?;
    Ok(())
}
