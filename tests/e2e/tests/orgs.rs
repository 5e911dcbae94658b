//! Issue 9 rules 1 and 3: organizations. Operators own machines, providers employ technicians,
//! a service contract says which provider may service which operator's machines; an approver
//! releases only sessions on machines of their own organization; lists show only what the
//! caller's organization may see.

use std::time::Duration;

use anyhow::{ensure, Result};
use fernwart_e2e::{roundtrip, Echo, World};
use serde_json::Value;

const T: Duration = Duration::from_secs(10);

fn names(list: &[Value]) -> Vec<String> {
    list.iter().filter_map(|v| v.get("name").and_then(Value::as_str).map(str::to_owned)).collect()
}

#[test]
fn organizations_and_contracts_decide_who_works_where() -> Result<()> {
    let echo = Echo::start()?;
    let mut w = World::boot()?;
    w.fw("admin", &["org", "add", "plant-a", "--kind", "operator", "--max-session", "2h"])?;
    for (org, kind) in [("plant-b", "operator"), ("builder", "provider")] {
        w.fw("admin", &["org", "add", org, "--kind", kind])?;
    }
    let refused = w.fw_raw(
        "admin",
        &["contract", "add", "--provider", "plant-a", "--operator", "plant-b"],
        None,
    )?;
    ensure!(!refused.success(), "an operator was accepted as the provider of a contract");
    w.fw("admin", &["contract", "add", "--provider", "builder", "--operator", "plant-a"])?;
    let unknown = w.fw_raw("admin", &["machine", "add", "m9", "--org", "nowhere"], None)?;
    ensure!(!unknown.success(), "a machine of an unknown organization was added");
    for (name, role, org) in [
        ("op-a", "approver", "plant-a"),
        ("op-b", "approver", "plant-b"),
        ("sadm", "session-admin", "builder"),
        ("sadm-b", "session-admin", "plant-b"),
        ("tech-b", "technician", "builder"),
        ("tech-x", "technician", "plant-b"),
    ] {
        w.add_user_in(name, role, Some(org))?;
        w.login(name)?;
    }
    w.start_agent_in("m1", Some("plant-a"), &[("echo", echo.addr)])?;
    w.switch("m1", true)?;
    w.wait_switch("m1", true, T)?;

    let create = |w: &World, who: &str, name: &str, tech: &str| {
        w.fw_raw(
            who,
            &[
                "session",
                "create",
                name,
                "--machine",
                "m1",
                "--target",
                "echo",
                "--user",
                tech,
                "--duration",
                "1h",
                "--reason",
                "T-1",
            ],
            None,
        )
    };
    // A provider without a contract with plant-b's... here: a session-admin of plant-b may not
    // prepare sessions on plant-a's machine; a technician of plant-b may not be put on it.
    ensure!(
        !create(&w, "sadm-b", "s0", "tech-b")?.success(),
        "plant-b prepared a session on plant-a's machine"
    );
    ensure!(
        !create(&w, "sadm", "s0", "tech-x")?.success(),
        "a technician of plant-b was put on plant-a's machine"
    );
    let ok = create(&w, "sadm", "s1", "tech-b")?;
    ensure!(ok.success(), "the contracted provider cannot prepare a session: {}", ok.stderr);

    // plant-a's sessions last at most 2 h (issue 9 rule 7).
    let long = w.fw_raw(
        "sadm",
        &[
            "session",
            "create",
            "s3",
            "--machine",
            "m1",
            "--target",
            "echo",
            "--user",
            "tech-b",
            "--duration",
            "3h",
            "--reason",
            "T-3",
        ],
        None,
    )?;
    ensure!(!long.success(), "a 3 h session was accepted on plant-a's machine (at most 2 h)");
    ensure!(long.stderr.contains("at most"), "unclear refusal: {}", long.stderr);

    // Lists: plant-b sees neither the machine nor the session.
    let machines_b = w.fw("op-b", &["machine", "list", "--json"])?.json_list();
    ensure!(!names(&machines_b).contains(&"m1".to_owned()), "op-b sees plant-a's machine");
    let sessions_b = w.fw("op-b", &["session", "list", "--json"])?.json_list();
    ensure!(sessions_b.is_empty(), "op-b sees plant-a's sessions: {sessions_b:?}");
    let sessions_p = w.fw("sadm", &["session", "list", "--json"])?.json_list();
    ensure!(names(&sessions_p) == ["s1"], "the provider does not see its session: {sessions_p:?}");

    // plant-a does not allow sessions without approval; an operator that does, gets them.
    let free = w.fw_raw(
        "sadm",
        &[
            "session",
            "create",
            "s2",
            "--machine",
            "m1",
            "--target",
            "echo",
            "--user",
            "tech-b",
            "--duration",
            "1h",
            "--reason",
            "T-2",
            "--no-approval",
        ],
        None,
    )?;
    ensure!(!free.success(), "--no-approval was accepted on plant-a's machine");
    w.fw("admin", &["org", "add", "plant-c", "--kind", "operator", "--allow-no-approval"])?;
    let orgs = w.fw("admin", &["org", "list", "--json"])?.json_list();
    ensure!(
        orgs.iter().any(|o| o.get("name").and_then(Value::as_str) == Some("plant-c")
            && o.get("allow_no_approval") == Some(&Value::Bool(true))),
        "org list does not show plant-c allowing sessions without approval: {orgs:?}"
    );

    // Only plant-a's approver releases it.
    let mut conn = w.spawn_connect("s1", "tech-b")?;
    w.wait_session_state("s1", "requested", Duration::from_secs(20))?;
    let by_b = w.fw_raw("op-b", &["session", "approve", "s1"], None)?;
    ensure!(!by_b.success(), "an approver of plant-b released a session on plant-a's machine");
    w.fw("op-a", &["session", "approve", "s1"])?;
    conn.wait_forwards(Duration::from_secs(20))?;
    roundtrip(conn.forward("echo")?, b"through the contract", T)?;
    Ok(())
}
