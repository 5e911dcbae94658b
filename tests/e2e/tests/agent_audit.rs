//! Issue 10 point 4: the agent keeps its own hash chain of what concerned its machine (grants,
//! tunnels with bytes and duration, switch changes, the link), written while the server is
//! unreachable too, and `fernwart-agent audit verify|list` check and show it on the gateway,
//! naming a record changed, removed or moved.

use std::{path::Path, time::Duration};

use anyhow::{ensure, Context, Result};
use fernwart_e2e::{net::poll, process::clip, random_bytes, roundtrip, Options, Output, World};
use serde_json::Value;

const T: Duration = Duration::from_secs(30);
const PAYLOAD: usize = 100_000;

fn path(p: &Path) -> Result<&str> {
    p.to_str().context("a non-UTF-8 path")
}

fn verify(w: &World) -> Result<Output> {
    w.agent_raw(&["audit", "verify", "--data", path(&w.agent_dir("m1"))?])
}

/// `audit list --json` of m1: one object per record.
fn records(w: &World) -> Result<Vec<Value>> {
    let out = w.agent_raw(&["audit", "list", "--json", "--data", path(&w.agent_dir("m1"))?])?;
    Ok(out.check()?.json_list())
}

fn text(v: &Value, field: &str) -> String {
    v.get(field).and_then(Value::as_str).unwrap_or_default().to_owned()
}

/// The record's details, stored as a JSON string.
fn details(v: &Value) -> Value {
    serde_json::from_str(&text(v, "details")).unwrap_or_default()
}

fn find<'a>(all: &'a [Value], action: &str, pred: impl Fn(&Value) -> bool) -> Option<&'a Value> {
    all.iter().find(|r| text(r, "action") == action && pred(r))
}

fn actions(all: &[Value]) -> String {
    all.iter().map(|r| text(r, "action")).collect::<Vec<_>>().join(", ")
}

fn said(out: &Output) -> String {
    format!("{}{}", out.stdout, out.stderr)
}

/// Writes `lines` as the trail's current file, runs verify and expects it to fail saying
/// every one of `words`.
fn expect_break(w: &World, file: &Path, lines: &[&str], what: &str, words: &[&str]) -> Result<()> {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(file, text)?;
    let out = verify(w)?;
    let all = said(&out);
    ensure!(!out.success(), "verify passed a trail with {what}: {}", clip(&all));
    for word in words {
        ensure!(all.contains(word), "verify of a trail with {what} does not say {word:?}: {all}");
    }
    eprintln!("{what}: {}", all.trim());
    Ok(())
}

#[test]
fn the_agent_keeps_a_verifiable_trail_while_the_server_is_away() -> Result<()> {
    let echo = fernwart_e2e::Echo::start()?;
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
    roundtrip(conn.forward("echo")?, &random_bytes(PAYLOAD), T)?;

    // The tunnel's end, with its bytes, is in the agent's trail once both directions closed.
    let close =
        poll("the agent to record the tunnel's close", T, Duration::from_millis(100), || {
            Ok(find(&records(&w)?, "tunnel.close", |r| text(r, "target") == "s1").cloned())
        })?;
    let d = details(&close);
    ensure!(
        d["bytes_to_target"] == PAYLOAD && d["bytes_from_target"] == PAYLOAD,
        "tunnel.close does not carry {PAYLOAD} bytes each way: {close}"
    );
    ensure!(d["duration_ms"].is_u64() && d["outcome"] == "closed", "tunnel.close: {close}");
    ensure!(text(&close, "actor") == "tech1", "tunnel.close is not by tech1: {close}");

    // The server goes away: the agent goes on recording (the link's end, the switch).
    drop(conn);
    w.stop_server()?;
    w.switch("m1", false)?;
    let all = poll(
        "the agent to record the switch while the server is away",
        T,
        Duration::from_millis(100),
        || {
            let all = records(&w)?;
            let off = find(&all, "switch", |r| details(r)["switch"] == "off").is_some();
            let down = find(&all, "link.down", |_| true).is_some();
            Ok((off && down).then_some(all))
        },
    )?;
    w.stop_agent("m1");

    let out = verify(&w)?.check()?;
    ensure!(out.stdout.contains("agent audit trail verified: "), "verify: {}", said(&out));
    eprintln!("{}", out.stdout.trim());
    let grant = find(&all, "grant", |r| text(r, "target") == "s1")
        .with_context(|| format!("no grant for s1 in the agent's trail: {}", actions(&all)))?;
    ensure!(text(grant, "actor") == "tech1" && text(grant, "source") == "m1", "grant: {grant}");
    ensure!(details(grant)["targets"] == serde_json::json!(["echo"]), "grant: {grant}");
    let open = find(&all, "tunnel.open", |r| text(r, "target") == "s1")
        .with_context(|| format!("no tunnel.open: {}", actions(&all)))?;
    ensure!(details(open)["target"] == "echo", "tunnel.open: {open}");
    for (i, r) in all.iter().enumerate() {
        ensure!(r["seq"] == i as u64 + 1, "records are not numbered 1, 2, ...: {}", actions(&all));
        ensure!(text(r, "hash").len() == 64, "a record without its hash: {r}");
    }
    let human = w
        .agent_raw(&["audit", "list", "--session", "s1", "--data", path(&w.agent_dir("m1"))?])?
        .check()?;
    ensure!(
        human.stdout.lines().count() >= 3 && human.stdout.lines().all(|l| l.contains("s1")),
        "audit list --session s1: {}",
        human.stdout
    );

    // Tampering: each edit of the file is named by verify, with the record's place.
    let file = w.agent_dir("m1").join("audit").join("current.jsonl");
    let original = std::fs::read_to_string(&file)?;
    let lines: Vec<&str> = original.lines().collect();
    let at = |action: &str| -> Result<usize> {
        lines
            .iter()
            .position(|l| l.contains(&format!("\"action\":\"{action}\"")))
            .with_context(|| format!("no {action} line"))
    };
    let close_at = at("tunnel.close")?;
    let seq = |i: usize| -> Result<u64> {
        let v: Value = serde_json::from_str(lines[i])?;
        v["seq"].as_u64().context("a record without seq")
    };

    let mut edited = lines.clone();
    let fewer = lines[close_at]
        .replace(&format!("bytes_to_target\\\":{PAYLOAD}"), "bytes_to_target\\\":12");
    ensure!(fewer != lines[close_at], "the byte count is not where expected: {}", lines[close_at]);
    edited[close_at] = &fewer;
    let s = seq(close_at)?;
    expect_break(
        &w,
        &file,
        &edited,
        "a changed byte count",
        &[&format!("record {s} was changed"), "current.jsonl"],
    )?;

    let open_at = at("tunnel.open")?;
    let mut removed = lines.clone();
    removed.remove(open_at);
    let s = seq(open_at)?;
    expect_break(
        &w,
        &file,
        &removed,
        "a removed tunnel.open",
        &[&format!("record {s} was removed")],
    )?;

    let mut swapped = lines.clone();
    swapped.swap(open_at, close_at);
    expect_break(
        &w,
        &file,
        &swapped,
        "two records swapped",
        &[&format!("record {} was moved", seq(open_at)?)],
    )?;

    std::fs::write(&file, &original)?;
    verify(&w)?.check()?;
    Ok(())
}

#[test]
fn verify_without_a_trail() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let w = World::new()?;
    let out = w.agent_raw(&["audit", "verify", "--data", path(dir.path())?])?.check()?;
    ensure!(out.stdout.contains("no records"), "verify of an empty data directory: {}", said(&out));
    let missing = dir.path().join("missing");
    let out = w.agent_raw(&["audit", "verify", "--data", path(&missing)?])?;
    ensure!(
        !out.success() && out.stderr.contains("does not exist"),
        "verify of a missing directory: {}",
        said(&out)
    );
    Ok(())
}
