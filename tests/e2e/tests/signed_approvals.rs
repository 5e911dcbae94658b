//! Issue 11 part 2: operator-signed approvals, checked at the agent. The operator pins its
//! approvers' keys in the agent's `agent.toml`; an approver signs a session's grant with a key
//! on their own device (`fernwart key`, `session approve`); the agent holds only grants signed
//! by a pinned key over exactly what it was sent.
//!
//! The compromised server: the test edits the server's database while the server is stopped
//! (an approval without a signature, a target added, a user added, a window widened, an
//! approval replayed on another session, an ended session brought back) and starts it again;
//! its welcome hands the agent every approved session, and the agent refuses each, saying why
//! in its own trail. Then the operator rotates its approver keys at the agent.

use std::{
    io::{Read, Write},
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use fernwart_e2e::{net::poll, roundtrip, Echo, World};
use serde_json::Value;

const T: Duration = Duration::from_secs(30);

fn text(v: &Value, field: &str) -> String {
    v.get(field).and_then(Value::as_str).unwrap_or_default().to_owned()
}

/// The agent's own records (`fernwart-agent audit list --json`).
fn agent_records(w: &World) -> Result<Vec<Value>> {
    let dir = w.agent_dir("m1");
    let dir = dir.to_str().context("a non-UTF-8 path")?;
    Ok(w.agent_raw(&["audit", "list", "--json", "--data", dir])?.check()?.json_list())
}

fn details(r: &Value) -> Value {
    serde_json::from_str(&text(r, "details")).unwrap_or_default()
}

/// Waits until the agent's trail holds at least `n` records of `action` about `session`;
/// returns their details.
fn wait_records(w: &World, action: &str, session: &str, n: usize) -> Result<Vec<Value>> {
    let what = format!("{n} {action} record(s) of {session} in the agent's trail");
    poll(&what, T, Duration::from_millis(200), || {
        let found: Vec<Value> = agent_records(w)?
            .iter()
            .filter(|r| text(r, "action") == action && text(r, "target") == session)
            .map(details)
            .collect();
        Ok((found.len() >= n).then_some(found))
    })
}

/// The last `grant.refused` of `session` says every one of `words` and is an alert.
fn refused_because(w: &World, session: &str, n: usize, words: &[&str]) -> Result<()> {
    let found = wait_records(w, "grant.refused", session, n)?;
    let last = found.last().context("no record")?;
    ensure!(last["alert"] == true, "grant.refused of {session} is no alert: {last}");
    let reason = last["reason"].as_str().unwrap_or_default();
    for word in words {
        ensure!(reason.contains(word), "grant.refused of {session} does not say {word:?}: {last}");
    }
    eprintln!("{session}: refused: {reason}");
    Ok(())
}

/// `agent.toml` of m1: two targets, the key switch local, and `[trust]`.
fn write_agent_toml(w: &World, plc: &Echo, hmi: &Echo, approvers: &[&str]) -> Result<()> {
    w.write_agent_toml("m1", &[("plc", plc.addr), ("hmi", hmi.addr)])?;
    let path = w.agent_dir("m1").join("agent.toml");
    let mut toml = std::fs::read_to_string(&path)?;
    let keys: Vec<String> = approvers.iter().map(|k| format!("\"{k}\"")).collect();
    toml.push_str(&format!("\n[trust]\napprovers = [{}]\n", keys.join(", ")));
    std::fs::write(&path, toml)?;
    Ok(())
}

fn key_init(w: &World, who: &str) -> Result<(String, String)> {
    let js = w.fw_json(who, &["key", "init"])?;
    let public = js.get("public").and_then(Value::as_str).context("no public key")?;
    let fp = js.get("fingerprint").and_then(Value::as_str).context("no fingerprint")?;
    ensure!(public.starts_with("ed25519:"), "{js}");
    Ok((public.to_owned(), fp.to_owned()))
}

fn create(w: &World, name: &str, targets: &[&str], users: &[&str]) -> Result<()> {
    let mut args = vec!["session", "create", name, "--machine", "m1"];
    for t in targets {
        args.extend(["--target", t]);
    }
    for u in users {
        args.extend(["--user", u]);
    }
    args.extend(["--duration", "1h", "--reason", "TICKET-11 signed approvals"]);
    w.fw("admin", &args)?;
    Ok(())
}

/// Runs SQL on the stopped server's database.
fn edit_db(w: &World, sql: &str) -> Result<()> {
    let db = rusqlite::Connection::open(w.srv_dir.join("fernwart.db"))?;
    db.execute_batch(sql).with_context(|| format!("editing the database: {sql}"))?;
    Ok(())
}

fn restart_agent(w: &mut World) -> Result<()> {
    w.stop_agent("m1");
    w.run_agent("m1")?;
    w.wait_machine("m1", true, T)?;
    Ok(())
}

#[test]
fn the_agent_holds_only_grants_its_operators_approvers_signed() -> Result<()> {
    let (plc, hmi) = (Echo::start()?, Echo::start()?);
    let mut w = World::boot()?;
    w.fw("admin", &["org", "add", "plant", "--kind", "operator", "--require-signed"])?;
    for (name, role) in
        [("ap1", "approver"), ("ap2", "approver"), ("t1", "technician"), ("t2", "technician")]
    {
        w.add_user_in(name, role, Some("plant"))?;
        w.login(name)?;
    }
    let (k1, fp1) = key_init(&w, "ap1")?;
    let (k2, fp2) = key_init(&w, "ap2")?;
    let shown = w.fw_json("ap1", &["key", "show"])?;
    ensure!(text(&shown, "public") == k1, "key show: {shown}");

    // The operator pins ap1's key on site, before the agent first runs.
    let token = w.add_machine_in("m1", Some("plant"))?;
    write_agent_toml(&w, &plc, &hmi, &[&k1])?;
    let dir = w.agent_dir("m1");
    let ca = w.ca.clone();
    w.enroll_raw(&dir, &token, &ca)?.check()?;
    w.run_agent("m1")?;
    let m = w.wait_machine("m1", true, T)?;
    ensure!(text(&m, "trust") == "operator-signed", "machine list: {m}");
    ensure!(m["signature_required"] == true && m["approvers"] == serde_json::json!([k1]), "{m}");
    w.switch("m1", true)?;
    w.wait_switch("m1", true, T)?;

    // --- An admin changes the operator's rule after the fact (`org set`); nobody else may,
    // and a contradiction is refused whole.
    let plant = |w: &World| -> Result<Value> {
        let orgs = w.fw("admin", &["org", "list", "--json"])?.json_list();
        orgs.into_iter().find(|o| text(o, "name") == "plant").context("no org plant")
    };
    let off = w.fw_json("admin", &["org", "set", "plant", "--require-signed", "false"])?;
    ensure!(off["require_signed"] == false, "org set: {off}");
    // (m1 still needs signatures: its agent pins approvers, whatever the server's rule.)
    let m = w.machine("m1")?.context("no m1")?;
    ensure!(m["signature_required"] == true, "after org set: {m}");
    let both = w.fw_raw(
        "admin",
        &["org", "set", "plant", "--require-signed", "true", "--allow-no-approval", "true"],
        None,
    )?;
    ensure!(both.reason()?.contains("contradict"), "{}", both.reason()?);
    let by_approver =
        w.fw_raw("ap1", &["org", "set", "plant", "--require-signed", "true"], None)?;
    ensure!(by_approver.reason()?.contains("may not do this"), "{}", by_approver.reason()?);
    ensure!(plant(&w)?["require_signed"] == false, "a refused change changed something");
    w.fw("admin", &["org", "set", "plant", "--require-signed", "true"])?;
    ensure!(plant(&w)?["require_signed"] == true, "{}", plant(&w)?);
    let m = w.machine("m1")?.context("no m1")?;
    ensure!(m["signature_required"] == true, "after org set: {m}");
    let change = w.fw("admin", &["audit", "list", "--kind", "org.set", "--json"])?.json_list();
    ensure!(change.len() == 2, "org.set records: {change:?}");

    // --- The server's own rules: no release without a signature on such a machine.
    let free = w.create_session_raw("s0", "m1", &["plc"], &["t1"], &["--no-approval"])?;
    ensure!(free.reason()?.contains("signed"), "--no-approval: {}", free.reason()?);
    create(&w, "s1", &["plc"], &["t1"])?;
    std::fs::rename(w.root.join("home-ap2/approver-key.pem"), w.root.join("ap2-key.pem"))?;
    let unsigned = w.fw_raw("ap2", &["session", "approve", "s1"], None)?;
    let why = unsigned.reason()?;
    ensure!(why.contains("takes only approvals signed") && why.contains("plant"), "{why}");
    std::fs::rename(w.root.join("ap2-key.pem"), w.root.join("home-ap2/approver-key.pem"))?;
    let wrong = w.fw_raw("ap2", &["session", "approve", "s1"], None)?;
    ensure!(wrong.reason()?.contains("not one of machine m1's approvers"), "{}", wrong.reason()?);

    // --- A signed approval: held, and traffic flows. The technician connects first: the
    // approver signs the end-to-end keys of the technicians who connected.
    let mut conn = w.spawn_connect("s1", "t1")?;
    w.wait_session_state("s1", "requested", T)?;
    let approved = w.fw_json("ap1", &["session", "approve", "s1"])?;
    ensure!(text(&approved, "signed_by") == fp1, "session approve: {approved}");
    let held = wait_records(&w, "grant", "s1", 1)?;
    ensure!(held[0]["approved_by"] == fp1.as_str(), "{:?}", held);
    conn.wait_forwards(T)?;
    roundtrip(conn.forward("plc")?, b"signed", T)?;

    // How often the agent recorded s1's grant (pushed at approval and at activation).
    let s1_grants = wait_records(&w, "grant", "s1", 1)?.len();

    // Sessions the compromised server will tamper with, approved properly first where a
    // signature is needed.
    create(&w, "s2", &["plc"], &["t1"])?;
    for s in ["s3", "s4", "s5", "s7"] {
        create(&w, s, &["plc"], &["t1"])?;
        w.fw("ap1", &["session", "approve", s])?;
        wait_records(&w, "grant", s, 1)?;
    }
    create(&w, "s6", &["plc"], &["t1"])?;
    w.fw("admin", &["session", "end", "s7"])?;
    wait_records(&w, "revoke", "s7", 1)?;

    // --- The compromised server.
    w.stop_server()?;
    edit_db(
        &w,
        "UPDATE sessions SET state = 'approved', decided_by = 'ap1' WHERE name = 's2';
         UPDATE sessions SET targets = '[\"hmi\",\"plc\"]' WHERE name = 's3';
         INSERT INTO session_users (session_id, user_id)
             SELECT s.id, u.id FROM sessions s, users u WHERE s.name = 's4' AND u.name = 't2';
         UPDATE sessions SET valid_until = valid_until + 7200 WHERE name = 's5';
         UPDATE sessions SET state = 'approved', decided_by = 'ap1',
             approval_nonce = (SELECT approval_nonce FROM sessions WHERE name = 's1'),
             approval_key = (SELECT approval_key FROM sessions WHERE name = 's1'),
             approval_signature = (SELECT approval_signature FROM sessions WHERE name = 's1')
             WHERE name = 's6';
         UPDATE sessions SET state = 'approved', ended_by = NULL, ended_at = NULL WHERE name = 's7';",
    )?;
    w.start_server()?;
    // The agent links again; the welcome hands it every approved session.
    refused_because(&w, "s2", 1, &["no approver's signature"])?;
    for s in ["s3", "s4", "s5"] {
        refused_because(&w, s, 1, &["does not match the grant", &fp1])?;
    }
    refused_because(&w, "s6", 1, &["replayed approval", "session s1"])?;
    refused_because(&w, "s7", 1, &["replayed approval", "session s7 has ended"])?;
    let widened = wait_records(&w, "grant.refused", "s5", 1)?;
    ensure!(widened[0]["signed_by"] == fp1.as_str(), "{widened:?}");
    // The true grant stays held (unchanged, so not recorded again); the tampered ones carry
    // nothing.
    let again = wait_records(&w, "grant", "s1", 1)?.len();
    ensure!(again == s1_grants, "s1's grant was recorded again though it did not change");
    // A technician of the tampered s3 hears at once (no waiting out the acknowledgement) that
    // the machine refused it, and why; the server's trail has it as an alert.
    let started = Instant::now();
    let mut tampered = w.spawn_connect("s3", "t1")?;
    let status = tampered.wait_exit(T).context("connect to a refused grant did not stop")?;
    let took = started.elapsed();
    let said = tampered.log_tail();
    ensure!(!status.success(), "connect to a refused grant exited 0: {said}");
    ensure!(
        said.contains("the machine refused the session's grant")
            && said.contains("does not match the grant"),
        "connect does not say why: {said}"
    );
    ensure!(took < Duration::from_secs(4), "connect to a refused grant took {took:?}");
    eprintln!("s3: connect refused in {took:?}: {}", said.trim());
    for action in ["session.grant_refused", "alert.grant_refused"] {
        poll(
            &format!("{action} of s3 in the server's trail"),
            T,
            Duration::from_millis(200),
            || {
                let trail =
                    w.fw("admin", &["audit", "list", "--kind", action, "--json"])?.json_list();
                Ok(trail.iter().any(|r| text(r, "target") == "s3").then_some(()))
            },
        )?;
    }
    drop(tampered);

    // --- Rotation: the operator adds ap2's key, restarts the agent.
    write_agent_toml(&w, &plc, &hmi, &[&k1, &k2])?;
    restart_agent(&mut w)?;
    let m = w.machine("m1")?.context("no m1")?;
    ensure!(m["approvers"] == serde_json::json!([k1, k2]), "{m}");
    create(&w, "s8", &["plc"], &["t1"])?;
    w.fw("ap2", &["session", "approve", "s8"])?;
    let held = wait_records(&w, "grant", "s8", 1)?;
    ensure!(held[0]["approved_by"] == fp2.as_str(), "{held:?}");
    // s1 is held again after the restart (signed by a pinned key).
    wait_records(&w, "grant", "s1", s1_grants + 1)?;
    drop(conn);

    // --- Removal, while the agent runs: ap1's key goes from agent.toml, no restart. Within
    // seconds its approvals stop counting: s1's open tunnel closes, ap2's s8 stays held, and
    // the server shows the new anchor.
    w.login("t1")?;
    let mut conn = w.spawn_connect("s1", "t1")?;
    conn.wait_forwards(T)?;
    let mut open = std::net::TcpStream::connect(conn.forward("plc")?)?;
    open.set_read_timeout(Some(T))?;
    open.write_all(b"before")?;
    let mut buf = [0u8; 64];
    let n = open.read(&mut buf)?;
    ensure!(&buf[..n] == b"before", "the tunnel echoed {:?}", &buf[..n]);
    let removed_at = Instant::now();
    write_agent_toml(&w, &plc, &hmi, &[&k2])?;
    refused_because(&w, "s1", 1, &["not one of this machine's approvers", &fp1])?;
    // The tunnel ends: end of stream, or an error once the relay cut it.
    let closed = matches!(open.read(&mut buf), Ok(0) | Err(_));
    ensure!(closed, "s1's tunnel stayed open after ap1's key was removed");
    eprintln!("s1's tunnel closed {:?} after ap1's key left agent.toml", removed_at.elapsed());
    let change = wait_records(&w, "trust.change", "", 1)?;
    ensure!(change[0]["removed"] == serde_json::json!([fp1]), "{change:?}");
    poll("the server to show ap2's key alone", T, Duration::from_millis(200), || {
        let m = w.machine("m1")?.context("no m1")?;
        Ok((m["approvers"] == serde_json::json!([k2])).then_some(()))
    })?;
    drop(conn);
    let all = agent_records(&w)?;
    let s8_refused =
        all.iter().any(|r| text(r, "action") == "grant.refused" && text(r, "target") == "s8");
    ensure!(!s8_refused, "ap2's approval was refused after ap1's key was removed");
    // A technician of s1 gets no forwards: the machine refused its grant (a fresh login: the
    // links dropped above ended t1's).
    w.login("t1")?;
    let mut conn = w.spawn_connect("s1", "t1")?;
    ensure!(conn.wait_exit(T).is_some_and(|s| !s.success()), "connect to s1 did not fail");
    let said = conn.log_tail();
    ensure!(said.contains("not one of this machine's approvers"), "connect says: {said}");
    Ok(())
}
