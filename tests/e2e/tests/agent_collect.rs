//! Issue 10 point 4, second half: the server collects the agent's own records while the link
//! is up, so the operator can compare both sides (`fernwart audit agent MACHINE`). Records
//! written while the server is away arrive once the link is back, in order; a trail changed
//! at the agent is refused with an `alert.agent_chain` in the server's trail.

use std::{path::Path, time::Duration};

use anyhow::{ensure, Context, Result};
use fernwart_e2e::{
    audit_actions, net::poll, random_bytes, roundtrip, Echo, Options, Output, World,
};
use serde_json::Value;

const T: Duration = Duration::from_secs(30);

fn path(p: &Path) -> Result<&str> {
    p.to_str().context("a non-UTF-8 path")
}

/// `fernwart-agent audit list --json` of m1, read on the gateway.
fn at_agent(w: &World) -> Result<Vec<Value>> {
    let out = w.agent_raw(&["audit", "list", "--json", "--data", path(&w.agent_dir("m1"))?])?;
    Ok(out.check()?.json_list())
}

/// `fernwart audit agent m1 --json` as `who`.
fn at_server(w: &World, who: &str) -> Result<Vec<Value>> {
    Ok(w.fw(who, &["audit", "agent", "m1", "--json"])?.json_list())
}

fn text(v: &Value, field: &str) -> String {
    v.get(field).and_then(Value::as_str).unwrap_or_default().to_owned()
}

fn seq(v: &Value) -> u64 {
    v.get("seq").and_then(Value::as_u64).unwrap_or_default()
}

fn details(v: &Value) -> Value {
    serde_json::from_str(&text(v, "details")).unwrap_or_default()
}

/// The fields the agent stores, without what the server adds (`received`).
fn stored(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("received");
    }
    v
}

fn summary(all: &[Value]) -> String {
    let items: Vec<String> =
        all.iter().map(|r| format!("{}:{}", seq(r), text(r, "action"))).collect();
    items.join(", ")
}

fn said(out: &Output) -> String {
    format!("{}{}", out.stdout, out.stderr)
}

/// The last record of the agent's that `pred` accepts, if there are at least `n`.
fn nth_last(all: &[Value], n: usize, pred: impl Fn(&Value) -> bool) -> Option<u64> {
    let hits: Vec<u64> = all.iter().filter(|r| pred(r)).map(seq).collect();
    (hits.len() >= n).then(|| hits.last().copied()).flatten()
}

/// Waits until the server holds the agent's records up to the place `target` picks from the
/// agent's list, and checks that what it holds is the agent's records, unchanged, in order.
fn wait_collected(
    w: &World,
    what: &str,
    target: impl Fn(&[Value]) -> Option<u64>,
) -> Result<(Vec<Value>, Vec<Value>)> {
    let (agent, server) = poll(what, T, Duration::from_millis(200), || {
        let agent = at_agent(w)?;
        let Some(target) = target(&agent) else { return Ok(None) };
        let server = at_server(w, "admin")?;
        let done = server.last().is_some_and(|r| seq(r) >= target);
        Ok(done.then_some((agent, server)))
    })?;
    for (i, r) in server.iter().enumerate() {
        ensure!(
            seq(r) == i as u64 + 1,
            "the server's copy is not numbered 1, 2, ...: {}",
            summary(&server)
        );
        let mine = agent.iter().find(|a| seq(a) == seq(r)).with_context(|| {
            format!("the server holds record {} the agent does not: {r}", seq(r))
        })?;
        ensure!(&stored(r) == mine, "record {} differs:\nserver {r}\nagent  {mine}", seq(r));
        ensure!(text(r, "received").ends_with('Z'), "no time of receipt: {r}");
    }
    Ok((agent, server))
}

#[test]
fn the_server_collects_the_agents_records_and_refuses_a_changed_trail() -> Result<()> {
    let echo = Echo::start()?;
    let mut w = World::standard_with(Options {
        server_env: vec![("FERNWART_SESSIONS_ALLOW_NO_APPROVAL".into(), "true".into())],
        ..Options::default()
    })?;
    w.start_agent("m1", &[("echo", echo.addr)])?;
    w.switch("m1", true)?;
    w.wait_switch("m1", true, T)?;
    w.create_session_raw("s1", "m1", &["echo"], &["tech1"], &["--no-approval"])?.check()?;
    let mut conn = w.spawn_connect("s1", "tech1")?;
    conn.wait_forwards(T)?;
    roundtrip(conn.forward("echo")?, &random_bytes(10_000), T)?;
    drop(conn);

    // Switch, grant and tunnel records show up at the server with the agent's hashes.
    let (agent, server) = wait_collected(&w, "the server to collect the tunnel's close", |all| {
        nth_last(all, 1, |r| text(r, "action") == "tunnel.close" && text(r, "target") == "s1")
    })?;
    for action in ["agent.start", "switch", "link.up", "grant", "tunnel.open", "tunnel.close"] {
        ensure!(
            server.iter().any(|r| text(r, "action") == action),
            "the server holds no {action}: {}",
            summary(&server)
        );
    }
    eprintln!("collected {} of {} records: {}", server.len(), agent.len(), summary(&server));
    let human = w.fw("aud1", &["audit", "agent", "m1"])?.check()?;
    ensure!(human.stdout.contains("tunnel.close"), "audit agent (human): {}", human.stdout);
    let page =
        w.fw("admin", &["audit", "agent", "m1", "--json", "--after", "2", "--limit", "2"])?;
    let page = page.check()?;
    let seqs: Vec<u64> = page.json_list().iter().map(seq).collect();
    ensure!(seqs == [3, 4], "--after 2 --limit 2 gave {seqs:?}");
    ensure!(page.stderr.contains("--after 4"), "no hint for the next page: {}", page.stderr);
    // Technicians do not read a machine's trail (tech1's login ended with its link: tech2);
    // unknown machines are not found.
    let out = w.fw_raw("tech2", &["audit", "agent", "m1", "--json"], None)?;
    ensure!(
        !out.success() && said(&out).contains("needs admin or auditor"),
        "tech2: {}",
        said(&out)
    );
    let out = w.fw_raw("admin", &["audit", "agent", "nope"], None)?;
    ensure!(!out.success() && said(&out).contains("no machine nope"), "nope: {}", said(&out));

    // Written while the server is away: collected once the link is back, in order.
    w.stop_server()?;
    w.switch("m1", false)?;
    poll(
        "the agent to record the switch while the server is away",
        T,
        Duration::from_millis(100),
        || {
            let all = at_agent(&w)?;
            let Some(down) = all.iter().position(|r| text(r, "action") == "link.down") else {
                return Ok(None);
            };
            let off = all[down..]
                .iter()
                .any(|r| text(r, "action") == "switch" && details(r)["switch"] == "off");
            Ok(off.then_some(()))
        },
    )?;
    w.switch("m1", true)?;
    w.start_server()?;
    let (agent, server) = wait_collected(&w, "the records written offline to arrive", |all| {
        nth_last(all, 2, |r| text(r, "action") == "link.up")
    })?;
    let down = server.iter().position(|r| text(r, "action") == "link.down");
    let off =
        server.iter().rposition(|r| text(r, "action") == "switch" && details(r)["switch"] == "off");
    let up_again = server.iter().rposition(|r| text(r, "action") == "link.up");
    ensure!(
        matches!((down, off, up_again), (Some(d), Some(o), Some(u)) if d < o && o < u),
        "offline records out of order at the server: {}",
        summary(&server)
    );
    eprintln!("after the server was away: {} of {} records", server.len(), agent.len());

    // A record the server has not collected yet is changed while the agent is stopped: the
    // server refuses the batch, keeps its copy as it was, and raises an alert.
    w.stop_agent("m1");
    let held = at_server(&w, "admin")?.last().map(seq).unwrap_or_default();
    let file = w.agent_dir("m1").join("audit").join("current.jsonl");
    let original = std::fs::read_to_string(&file)?;
    let mut tampered_seq = None;
    let lines: Vec<String> = original
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_default();
            if tampered_seq.is_none() && seq(&v) > held && l.contains("\"actor\":\"agent\"") {
                tampered_seq = Some(seq(&v));
                return l.replace("\"actor\":\"agent\"", "\"actor\":\"tech9\"");
            }
            l.to_owned()
        })
        .collect();
    let tampered = tampered_seq.with_context(|| format!("no record after {held} to change"))?;
    std::fs::write(&file, lines.iter().map(|l| format!("{l}\n")).collect::<String>())?;
    let out = w.agent_raw(&["audit", "verify", "--data", path(&w.agent_dir("m1"))?])?;
    ensure!(
        !out.success() && said(&out).contains(&format!("record {tampered} was changed")),
        "verify of the changed trail: {}",
        said(&out)
    );
    w.run_agent("m1")?;
    w.wait_machine("m1", true, T)?;
    let alert =
        poll("an alert.agent_chain in the server's trail", T, Duration::from_millis(200), || {
            let all = w.audit("admin")?;
            Ok(all.into_iter().find(|e| text(e, "action") == "alert.agent_chain"))
        })?;
    ensure!(text(&alert, "target") == "m1", "the alert does not name m1: {alert}");
    let d = &alert["details"];
    ensure!(
        d["alert"] == true && d["break"] == "changed" && d["seq"] == tampered,
        "the alert does not name record {tampered} as changed: {alert}"
    );
    ensure!(
        text(d, "reason").contains(&format!("record {tampered} was changed")),
        "the alert's reason: {alert}"
    );
    eprintln!("alert: {d}");
    let server = at_server(&w, "admin")?;
    ensure!(
        server.last().map(seq) == Some(held),
        "the server stored records of a refused batch: held {held}, now {}",
        summary(&server)
    );
    // The agent keeps its records and notes the refusal in its own trail.
    poll("the agent to record the refusal", T, Duration::from_millis(200), || {
        Ok(at_agent(&w)?.into_iter().find(|r| text(r, "action") == "audit.refused"))
    })?;
    let events = w.audit("aud1")?;
    ensure!(
        events.iter().any(|e| text(e, "action") == "alert.agent_chain"),
        "the auditor does not see the alert: {}",
        audit_actions(&events)
    );
    Ok(())
}
