//! Issue 10 point 8: session recording. A session prepared with `--record` (the approver sees
//! it) makes the agent record each connection's bytes both ways; the recording's hash goes
//! into the agent's audit chain; `fernwart-agent recording export` on the gateway and
//! `fernwart recording export` through the server write pcapng that tshark reads, showing
//! the Modbus request the technician sent. A session without `--record` leaves nothing.
//!
//! Needs `tshark` (Debian package `tshark`; scripts/test installs it).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{bail, ensure, Context, Result};
use fernwart_e2e::{
    audit_actions, net::poll, process::clip, random_bytes, roundtrip, Echo, Options, Output, World,
};
use serde_json::Value;

const T: Duration = Duration::from_secs(30);

/// Modbus/TCP "read holding registers" (transaction 0x1234, unit 1, function 3, from register
/// 0x006b, 3 registers): what a technician's tool sends to a PLC.
const MODBUS_REQUEST: [u8; 12] =
    [0x12, 0x34, 0x00, 0x00, 0x00, 0x06, 0x01, 0x03, 0x00, 0x6b, 0x00, 0x03];

fn path(p: &Path) -> Result<&str> {
    p.to_str().context("a non-UTF-8 path")
}

fn text(v: &Value, field: &str) -> String {
    v.get(field).and_then(Value::as_str).unwrap_or_default().to_owned()
}

fn said(out: &Output) -> String {
    format!("{}{}", out.stdout, out.stderr)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn tshark() -> Result<PathBuf> {
    for p in ["/usr/bin/tshark", "/usr/local/bin/tshark"] {
        if Path::new(p).exists() {
            return Ok(PathBuf::from(p));
        }
    }
    bail!("tshark not found: install the Debian package tshark (scripts/test does)")
}

/// `tshark -r FILE ARGS...`, its standard output.
fn run_tshark(file: &Path, args: &[&str]) -> Result<String> {
    let mut cmd = Command::new(tshark()?);
    cmd.arg("-r").arg(file).args(args);
    let out = fernwart_e2e::process::run(cmd, None, T)?;
    ensure!(out.success(), "tshark failed on {}: {}", file.display(), clip(&said(&out)));
    Ok(out.stdout)
}

/// The TCP payloads tshark sees, one hex string per packet with one.
fn payloads(file: &Path) -> Result<Vec<String>> {
    let out = run_tshark(file, &["-T", "fields", "-e", "tcp.payload"])?;
    Ok(out
        .lines()
        .map(|l| l.replace(':', "").trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect())
}

fn sha256_of(file: &Path) -> Result<String> {
    let out = fernwart_e2e::process::run(
        {
            let mut c = Command::new("sha256sum");
            c.arg(file);
            c
        },
        None,
        T,
    )?;
    let out = out.check()?;
    Ok(out.stdout.split_whitespace().next().unwrap_or_default().to_owned())
}

/// The agent's recordings (`fernwart-agent recording list --json` on the gateway).
fn gateway_list(w: &World, session: &str) -> Result<Vec<Value>> {
    let dir = w.agent_dir("m1");
    let out =
        w.agent_raw(&["recording", "list", "--json", "--session", session, "--data", path(&dir)?])?;
    let list: Value = out.check()?.json()?;
    Ok(list.as_array().cloned().unwrap_or_default())
}

/// The agent's audit records (`fernwart-agent audit list --json`), with details parsed.
fn agent_records(w: &World) -> Result<Vec<(String, Value)>> {
    let out = w.agent_raw(&["audit", "list", "--json", "--data", path(&w.agent_dir("m1"))?])?;
    Ok(out
        .check()?
        .json_list()
        .iter()
        .map(|r| (text(r, "action"), serde_json::from_str(&text(r, "details")).unwrap_or_default()))
        .collect())
}

fn setup() -> Result<(World, Echo, SocketAddr)> {
    let echo = Echo::start()?;
    let mut w = World::standard_with(Options {
        server_env: vec![("FERNWART_SESSIONS_ALLOW_NO_APPROVAL".into(), "true".into())],
        ..Options::default()
    })?;
    w.start_agent("m1", &[("echo", echo.addr)])?;
    w.switch("m1", true)?;
    w.wait_switch("m1", true, T)?;
    let addr = echo.addr;
    Ok((w, echo, addr))
}

#[test]
fn a_recorded_session_exports_to_pcapng_that_tshark_reads() -> Result<()> {
    tshark()?;
    let (w, _echo, target) = setup()?;
    let mut w = w;
    w.create_session_raw("s1", "m1", &["echo"], &["tech1"], &["--no-approval", "--record"])?
        .check()?;
    // The approver sees that the session is recorded before anything happens.
    let show = w.fw_json("op1", &["session", "show", "s1"])?;
    ensure!(show.get("record") == Some(&Value::Bool(true)), "session show: {show}");
    let human = w.fw("op1", &["session", "show", "s1"])?;
    ensure!(human.stdout.contains("recording   on"), "session show: {}", human.stdout);

    let mut conn = w.spawn_connect("s1", "tech1")?;
    conn.wait_forwards(T)?;
    let fwd = conn.forward("echo")?;
    roundtrip(fwd, &MODBUS_REQUEST, T)?;
    let bulk = random_bytes(5000);
    roundtrip(fwd, &bulk, T)?;

    // Each connection is one recording, complete once its tunnel closed at the agent.
    let list = poll("two complete recordings of s1", T, Duration::from_millis(200), || {
        let list = gateway_list(&w, "s1")?;
        let done = list.iter().filter(|r| text(r, "state") == "complete").count();
        Ok((done == 2).then_some(list))
    })?;
    let first = &list[0];
    let id = text(first, "id");
    ensure!(first.get("bytes_to_target") == Some(&Value::from(12)), "{first}");
    ensure!(first.get("bytes_from_target") == Some(&Value::from(12)), "{first}");
    let rec_file = w.agent_dir("m1").join("recordings").join(format!("{id}.rec"));
    let sha = sha256_of(&rec_file)?;
    ensure!(text(first, "sha256") == sha, "listed hash differs from the file's: {first}");
    let records = agent_records(&w)?;
    let saved = records
        .iter()
        .find(|(a, d)| a == "recording.saved" && text(d, "id") == id)
        .with_context(|| format!("no recording.saved for {id} in the agent's trail"))?;
    ensure!(text(&saved.1, "sha256") == sha, "recording.saved hash: {}", saved.1);
    let out = w.agent_raw(&["audit", "verify", "--data", path(&w.agent_dir("m1"))?])?;
    ensure!(out.success(), "the agent's chain does not verify: {}", said(&out));

    // On the gateway, no server needed.
    let on_gateway = w.root.join("gateway.pcapng");
    let out = w.agent_raw(&[
        "recording",
        "export",
        &id,
        "--pcap",
        path(&on_gateway)?,
        "--data",
        path(&w.agent_dir("m1"))?,
    ])?;
    ensure!(out.success(), "gateway export: {}", said(&out));
    let seen = payloads(&on_gateway)?;
    eprintln!("tshark -e tcp.payload on the gateway's export: {seen:?}");
    ensure!(seen == [hex(&MODBUS_REQUEST), hex(&MODBUS_REQUEST)], "payloads: {seen:?}");
    // tshark dissects the request as Modbus/TCP (the echo listens on an unusual port).
    let port = target.port().to_string();
    let modbus = run_tshark(
        &on_gateway,
        &[
            "-d",
            &format!("tcp.port=={port},mbtcp"),
            "-Y",
            "mbtcp",
            "-T",
            "fields",
            "-e",
            "ip.src",
            "-e",
            "tcp.dstport",
            "-e",
            "mbtcp.trans_id",
            "-e",
            "modbus.func_code",
        ],
    )?;
    eprintln!("tshark Modbus fields:\n{modbus}");
    let first_line = modbus.lines().next().unwrap_or_default();
    ensure!(
        first_line.split('\t').collect::<Vec<_>>() == ["10.0.0.1", port.as_str(), "4660", "3"],
        "tshark's Modbus view: {modbus}"
    );
    // Every IPv4 and TCP checksum verifies (tshark checks them when asked to).
    let sums = run_tshark(
        &on_gateway,
        &[
            "-o",
            "ip.check_checksum:TRUE",
            "-o",
            "tcp.check_checksum:TRUE",
            "-T",
            "fields",
            "-e",
            "ip.checksum.status",
            "-e",
            "tcp.checksum.status",
        ],
    )?;
    ensure!(
        sums.lines().count() >= 8 && sums.lines().all(|l| l.trim() == "1\t1"),
        "checksum status (1: good) per packet:\n{sums}"
    );

    // Through the server, by the auditor: the same bytes, checked against the agent's hash.
    let listed = w.fw_json("aud1", &["recording", "list", "--session", "s1"])?;
    let listed = listed.as_array().cloned().unwrap_or_default();
    ensure!(listed.iter().any(|r| text(r, "id") == id), "aud1's list: {listed:?}");
    let via_server = w.root.join("server.pcapng");
    let raw = w.root.join("fetched.rec");
    let out = w.fw_json(
        "aud1",
        &["recording", "export", &id, "--pcap", path(&via_server)?, "--raw", path(&raw)?],
    )?;
    ensure!(out.get("sha256_checked") == Some(&Value::Bool(true)), "{out}");
    ensure!(text(&out, "sha256") == sha, "{out}");
    ensure!(sha256_of(&raw)? == sha, "the fetched recording differs from the agent's file");
    ensure!(
        std::fs::read(&via_server)? == std::fs::read(&on_gateway)?,
        "the server's export differs from the gateway's"
    );
    let second = payloads(&w.root.join("server.pcapng"))?;
    ensure!(second.contains(&hex(&MODBUS_REQUEST)), "{second:?}");
    // The bulk connection: split into segments, all bytes there in order.
    let bulk_id = text(&list[1], "id");
    let bulk_pcap = w.root.join("bulk.pcapng");
    w.fw("aud1", &["recording", "export", &bulk_id, "--pcap", path(&bulk_pcap)?])?;
    let hexes = payloads(&bulk_pcap)?;
    let half = hexes.len() / 2;
    ensure!(hexes.len() >= 8, "5000 bytes each way in segments of at most 1400: {hexes:?}");
    let up: String = hexes.iter().take(half).cloned().collect();
    ensure!(up.contains(&hex(&bulk[..1400])), "the first segment is not the first bytes sent");
    let all: String = hexes.concat();
    ensure!(
        all.matches(&hex(&bulk[4000..])).count() == 2,
        "the last bytes are not there both ways"
    );

    // Both sides record who fetched it.
    let server_audit = w.audit("aud1")?;
    ensure!(
        server_audit.iter().any(|e| text(e, "action") == "recording.fetch"),
        "no recording.fetch at the server: {}",
        audit_actions(&server_audit)
    );
    let create = server_audit
        .iter()
        .find(|e| text(e, "action") == "session.create")
        .context("no session.create")?;
    ensure!(create.to_string().contains("\"record\":true"), "session.create: {create}");
    ensure!(
        agent_records(&w)?.iter().any(|(a, d)| a == "recording.fetch" && text(d, "by") == "aud1"),
        "no recording.fetch by aud1 in the agent's trail"
    );

    // Technicians do not download recordings, nor list them.
    let out = w.fw_raw("tech1", &["recording", "export", &id, "--pcap", "/dev/null"], None)?;
    ensure!(!out.success(), "a technician exported a recording: {}", said(&out));
    ensure!(said(&out).contains("needs admin or auditor"), "{}", said(&out));
    let out = w.fw_raw("tech1", &["recording", "list", "--machine", "m1"], None)?;
    ensure!(!out.success(), "a technician listed recordings: {}", said(&out));
    Ok(())
}

#[test]
fn a_session_without_record_leaves_no_recording() -> Result<()> {
    let (mut w, _echo, _) = setup()?;
    w.create_session_raw("s2", "m1", &["echo"], &["tech1"], &["--no-approval"])?.check()?;
    let show = w.session("s2")?;
    ensure!(show.get("record") == Some(&Value::Bool(false)), "session show: {show}");
    let mut conn = w.spawn_connect("s2", "tech1")?;
    conn.wait_forwards(T)?;
    roundtrip(conn.forward("echo")?, &MODBUS_REQUEST, T)?;
    poll("the agent's tunnel.close of s2", T, Duration::from_millis(200), || {
        Ok(agent_records(&w)?.iter().any(|(a, _)| a == "tunnel.close").then_some(()))
    })?;
    ensure!(gateway_list(&w, "s2")?.is_empty(), "a recording of an unrecorded session");
    let dir = w.agent_dir("m1").join("recordings");
    let files = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
    ensure!(files == 0, "{files} files in {}", dir.display());
    let records = agent_records(&w)?;
    ensure!(
        !records.iter().any(|(a, _)| a.starts_with("recording.")),
        "recording records for an unrecorded session"
    );
    let listed = w.fw_json("aud1", &["recording", "list"])?;
    ensure!(listed.as_array().is_some_and(|a| a.is_empty()), "{listed}");
    Ok(())
}
