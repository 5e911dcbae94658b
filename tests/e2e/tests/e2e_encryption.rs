//! Issue 11: tunnels are end-to-end encrypted between `fernwart connect` and the agent (Noise
//! IK), so the server relays ciphertext only; the CLI pins the agent's key, the agent takes
//! only the technician keys its grant names.

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::Path,
    time::Duration,
};

use anyhow::{bail, ensure, Context, Result};
use bytes::BytesMut;
use fernwart_e2e::{roundtrip, Echo, Options, World};
use fernwart_proto::{
    e2e::{self, Initiator, PublicKey, StaticKey},
    ClientToServer, OpenReply, OpenRequest, ServerToClient, PROTOCOL_VERSION,
};
use fernwart_transport::{
    frame_io::read_frame_within, read_frame, tls, write_frame, Dialer, HttpClient, Mode, Mux,
    ProxyConfig,
};
use serde_json::Value;

const T: Duration = Duration::from_secs(20);
const MARKER: &[u8] = b"FERNWART-PLAINTEXT-MARKER-5d1c9a";

/// A world whose server writes what it relays into `tap`, with m1 (target `echo`) online and
/// session s1 for tech1 and tech2, released without approval.
fn world(tap: Option<&Path>, echo: &Echo) -> Result<World> {
    let mut server_env = vec![("FERNWART_SESSIONS_ALLOW_NO_APPROVAL".into(), "true".into())];
    if let Some(tap) = tap {
        server_env.push(("FERNWART_TEST_TAP".into(), tap.display().to_string()));
    }
    let mut w = World::standard_with(Options { server_env, ..Options::default() })?;
    w.start_agent("m1", &[("echo", echo.addr)])?;
    w.switch("m1", true)?;
    w.wait_switch("m1", true, T)?;
    w.create_session_raw("s1", "m1", &["echo"], &["tech1", "tech2"], &["--no-approval"])?
        .check()?;
    Ok(w)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn machine_key(w: &World) -> Result<String> {
    let m = w.machine("m1")?.context("m1 is not listed")?;
    let key = m.get("e2e_key").and_then(Value::as_str).context("no e2e_key in machine list")?;
    key.parse::<PublicKey>().map_err(|e| anyhow::anyhow!("e2e_key {key}: {e}"))?;
    Ok(key.to_owned())
}

#[test]
fn the_server_relays_ciphertext_only() -> Result<()> {
    let echo = Echo::start()?;
    let tap = tempfile::tempdir()?;
    let mut w = world(Some(tap.path()), &echo)?;
    let key = machine_key(&w)?;
    let mut conn = w.spawn_connect("s1", "tech1")?;
    conn.wait_forwards(T)?;
    let fwd = conn.forward("echo")?;

    // The marker as a tunnel's first bytes (they travel inside the handshake), then amid bulk
    // data both ways (the target echoes it), in records of every size.
    let mut s = TcpStream::connect(fwd)?;
    s.set_read_timeout(Some(T))?;
    s.write_all(MARKER)?;
    let mut back = vec![0u8; MARKER.len()];
    s.read_exact(&mut back).context("the marker did not come back from the target")?;
    ensure!(back == MARKER, "the target echoed {back:?}");
    let mut bulk = Vec::new();
    for i in 0..20_000u32 {
        bulk.extend_from_slice(&i.to_be_bytes());
        bulk.extend_from_slice(MARKER);
    }
    roundtrip(fwd, &bulk, T)?;
    drop(s);
    roundtrip(fwd, MARKER, T)?;

    // Everything the server relayed, each tunnel each way.
    let mut seen = 0usize;
    let mut files = 0;
    for entry in std::fs::read_dir(tap.path())? {
        let bytes = std::fs::read(entry?.path())?;
        seen += bytes.len();
        files += 1;
        ensure!(!contains(&bytes, MARKER), "the marker passed the server in plaintext");
        ensure!(!contains(&bytes, &bulk[..64]), "bulk plaintext passed the server");
    }
    ensure!(files >= 6, "expected both directions of 3 tunnels in the tap, got {files} files");
    ensure!(seen > 2 * bulk.len(), "the tap saw only {seen} bytes");

    // The CLI pinned the key the server lists for the machine.
    let pins = std::fs::read_to_string(w.root.join("home-tech1").join("known_agents.json"))?;
    ensure!(pins.contains(&key), "known_agents.json does not hold m1's key {key}: {pins}");
    Ok(())
}

#[test]
fn a_changed_agent_key_is_refused_until_the_pin_is_forgotten() -> Result<()> {
    let echo = Echo::start()?;
    let mut w = world(None, &echo)?;
    let mut conn = w.spawn_connect("s1", "tech1")?;
    conn.wait_forwards(T)?;
    roundtrip(conn.forward("echo")?, b"pinned", T)?;
    // tech2's CLI holds another key for m1, as if the machine the server names now were not
    // the one it saw before (the pin file as tech1's CLI wrote it, with another key).
    let key = machine_key(&w)?;
    let other = StaticKey::from_secret(&[9; 32])?.public().to_string();
    let pins = std::fs::read_to_string(w.root.join("home-tech1").join("known_agents.json"))?;
    let tech2_pins = w.root.join("home-tech2").join("known_agents.json");
    std::fs::write(&tech2_pins, pins.replace(&key, &other))?;
    let out = w.fw_raw("tech2", &["connect", "s1", "--json", "--wait", "20s"], None)?;
    ensure!(!out.success(), "connect went on with a changed agent key");
    ensure!(
        out.stderr.contains("has changed") && out.stderr.contains("forget-key"),
        "unclear refusal: {}",
        out.stderr
    );
    ensure!(out.stdout.trim().is_empty(), "forwards were opened: {}", out.stdout);
    // Forgotten, the next connection pins the server's key again (as tech1's did).
    w.fw("tech2", &["machine", "forget-key", "m1"])?;
    let left = std::fs::read_to_string(&tech2_pins)?;
    ensure!(!left.contains(&other) && !left.contains("m1"), "the pin is still there: {left}");
    // tech1's tunnels were never affected.
    roundtrip(conn.forward("echo")?, b"still pinned", T)?;
    Ok(())
}

/// A technician link speaking the protocol itself, so that its tunnel's handshake can use
/// another key than the one its hello named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_refuses_a_technician_key_its_grant_does_not_name() -> Result<()> {
    let echo = Echo::start()?;
    let w = tokio::task::block_in_place(|| world(None, &echo))?;
    let agent_key: PublicKey = machine_key(&w)?.parse()?;
    let login: Value =
        serde_json::from_str(&std::fs::read_to_string(w.root.join("home-tech1/login.json"))?)?;
    let token = login.get("token").and_then(Value::as_str).context("no token")?;
    let cfg = tls::client_config(tls::roots(Some(&w.ca))?, None)?;
    let dialer = Dialer::new(url::Url::parse(&w.url)?, cfg, ProxyConfig::default())?;
    let io = HttpClient::new(dialer).link("/v1/connect/s1", Some(token)).await?;
    let (mux, _inbound) = Mux::start(io, Mode::Client).await?;
    let named = StaticKey::from_secret(&[1; 32])?;
    let stranger = StaticKey::from_secret(&[2; 32])?;
    let mut control = mux.open().await?;
    let hello = ClientToServer::Hello {
        version: PROTOCOL_VERSION,
        client: "test".into(),
        e2e_key: Some(named.public().to_string()),
    };
    write_frame(&mut control, &hello).await?;
    loop {
        match tokio::time::timeout(T, read_frame::<ServerToClient, _>(&mut control)).await?? {
            ServerToClient::Ready { agent_key: Some(k), .. } => {
                ensure!(k == agent_key.to_string(), "Ready names another key: {k}");
                break;
            }
            ServerToClient::Closed { reason, .. } => bail!("closed: {reason}"),
            _ => {}
        }
    }
    // The key the grant names opens a tunnel; another one is refused by the agent.
    for (key, opens) in [(&named, true), (&stranger, false)] {
        let mut s = mux.open().await?;
        let req =
            OpenRequest { session: "s1".into(), target: "echo".into(), e2e: Some(1), hold: false };
        write_frame(&mut s, &req).await?;
        let mut msg1 = BytesMut::new();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
        let now = u64::try_from(now.as_millis())?;
        let seed = if opens { [7; 32] } else { [8; 32] };
        Initiator::start(key, &agent_key, "s1", "echo", seed, now, b"hi", &mut msg1)?;
        tokio::io::AsyncWriteExt::write_all(&mut s, &msg1).await?;
        let reply: OpenReply = read_frame_within(&mut s, T).await?;
        ensure!(reply.ok == opens, "key {}: {reply:?}", key.public());
        if !opens {
            let why = reply.error.unwrap_or_default();
            ensure!(why.contains("grant names"), "unclear refusal: {why}");
        }
    }
    // A tunnel without end-to-end encryption is refused too.
    let mut s = mux.open().await?;
    write_frame(
        &mut s,
        &OpenRequest { session: "s1".into(), target: "echo".into(), e2e: None, hold: false },
    )
    .await?;
    let reply: OpenReply = read_frame_within(&mut s, T).await?;
    ensure!(!reply.ok, "a plaintext tunnel opened");
    ensure!(reply.error.unwrap_or_default().contains("end-to-end"), "unclear refusal");
    let _ = e2e::VERSION;
    mux.close();
    tokio::task::block_in_place(|| drop(w));
    Ok(())
}

/// The agent makes its end-to-end key when it enrols and the server registers it with the
/// machine in the same request: the key technicians pin is the one the token's holder made,
/// before any link.
#[test]
fn the_agents_key_is_registered_at_enrolment() -> Result<()> {
    let w = World::boot()?;
    let ca = w.ca.clone();
    // (`machine_key` asks as admin.)
    let shown = |dir: &Path| -> Result<String> {
        let out = w.agent_raw(&["e2e-key", "--data", dir.to_str().context("path")?])?.check()?;
        Ok(out.stdout.trim().to_owned())
    };
    let token = w.add_machine_in("m1", None)?;
    let dir = w.agent_dir("m1");
    w.enroll_raw(&dir, &token, &ca)?.check()?;
    let first = shown(&dir)?;
    first.parse::<PublicKey>().map_err(|e| anyhow::anyhow!("e2e-key printed {first:?}: {e}"))?;
    ensure!(machine_key(&w)? == first, "the server holds another key than the agent made");
    let enrolled = w.fw("admin", &["audit", "list", "--kind", "machine.enrol", "--json"])?;
    ensure!(enrolled.stdout.contains(&first), "machine.enrol does not name the key");

    Ok(())
}
