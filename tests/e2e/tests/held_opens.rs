//! Attacks on the fast connect path (held tunnel opens, agent link version 4) and on the
//! group-committed audit writers: what a stop of the server does to the records of the
//! tunnels and links it ends.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use fernwart_e2e::{open_tunnel, roundtrip, world::path_str, Connect, Echo, Options, World};
use fernwart_proto::{
    e2e::StaticKey, ClientToServer, OpenRequest, ServerToClient, PROTOCOL_VERSION,
};
use fernwart_transport::{
    read_frame, tls, write_frame, Dialer, HttpClient, Mode, Mux, ProxyConfig,
};
use serde_json::Value;

const T: Duration = Duration::from_secs(10);
/// Well below the handshake timeout (10 s) that frees stalled opens by itself.
const QUICK: Duration = Duration::from_secs(4);

fn world(echo: &Echo) -> Result<World> {
    let mut w = World::standard()?;
    w.start_agent("m1", &[("echo", echo.addr)])?;
    w.switch("m1", true)?;
    Ok(w)
}

/// Session s1 with four tunnels: one opened and closed, three still open (returned, with the
/// `connect` that carries them, to be held until the stop under test).
fn four_tunnels(echo: &Echo) -> Result<(World, Connect, Vec<std::net::TcpStream>)> {
    let mut w = world(echo)?;
    w.create_session("s1", "m1", &["echo"], &["tech1"])?;
    let conn = w.connect_approved("s1", "tech1", "op1")?;
    let fwd = conn.forward("echo")?;
    roundtrip(fwd, b"one tunnel that closes before the stop", T)?;
    let open: Vec<_> = (0..3).map(|_| open_tunnel(fwd)).collect::<Result<_>>()?;
    std::thread::sleep(Duration::from_millis(200));
    Ok((w, conn, open))
}

/// The actions in the server's trail, read from its database while it is stopped.
fn trail_actions(w: &World) -> Result<Vec<String>> {
    let db = rusqlite::Connection::open(w.srv_dir.join("fernwart.db"))?;
    let mut q = db.prepare("SELECT action FROM audit ORDER BY id")?;
    let rows = q.query_map([], |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// Promise 7: a clean stop of the server ends the open tunnels and the technician's link;
/// their `tunnel.close` and the link's end are in the trail afterwards. With the audit queue
/// gathering for 5 ms and the shutdown flush running as soon as the listener stops, the
/// records the ending tunnels write a moment later were lost with the runtime.
#[test]
fn a_server_stop_keeps_the_records_of_the_tunnels_it_ends() -> Result<()> {
    let echo = Echo::start()?;
    let (mut w, _conn, open) = four_tunnels(&echo)?;

    w.stop_server()?;
    drop(open);
    let actions = trail_actions(&w)?;
    let opens = actions.iter().filter(|a| *a == "tunnel.open").count();
    let closes = actions.iter().filter(|a| *a == "tunnel.close").count();
    ensure!(opens == 4, "{opens} tunnel.open in the trail (4 expected): {actions:?}");
    ensure!(
        closes == opens,
        "{opens} tunnels opened but only {closes} tunnel.close in the trail after a clean stop: {:?}",
        &actions[actions.len().saturating_sub(12)..]
    );
    Ok(())
}

/// The agent's side of the same: a stop of the agent ends its tunnels, and its own trail (the
/// operator's record) has a `tunnel.close` for each `tunnel.open`.
#[test]
fn an_agent_stop_keeps_the_records_of_the_tunnels_it_ends() -> Result<()> {
    let echo = Echo::start()?;
    let (mut w, _conn, open) = four_tunnels(&echo)?;

    w.stop_agent("m1");
    drop(open);
    let dir = w.agent_dir("m1");
    let out = w.agent_raw(&["audit", "list", "--json", "--data", path_str(&dir)?])?;
    let records = out.check()?.json_list();
    let count = |what: &str| records.iter().filter(|r| r["action"] == what).count();
    let (opens, closes) = (count("tunnel.open"), count("tunnel.close"));
    ensure!(opens == 4, "{opens} tunnel.open in the agent's trail (4 expected)");
    ensure!(
        closes == opens,
        "{opens} tunnels opened but only {closes} tunnel.close in the agent's trail after a clean stop"
    );
    Ok(())
}

/// A raw technician link of `who` on session s1, past its hello (the CLI's login file).
async fn raw_link(w: &World, who: &str) -> Result<Mux> {
    let login: Value = serde_json::from_str(&std::fs::read_to_string(
        w.root.join(format!("home-{who}/login.json")),
    )?)?;
    let token = login.get("token").and_then(Value::as_str).context("no token")?;
    let cfg = tls::client_config(tls::roots(Some(&w.ca))?, None)?;
    let dialer = Dialer::new(url::Url::parse(&w.url)?, cfg, ProxyConfig::default())?;
    let io = HttpClient::new(dialer).link("/v1/connect/s1", Some(token)).await?;
    let (mux, _inbound) = Mux::start(io, Mode::Client).await?;
    let mut control = mux.open().await?;
    let key = StaticKey::from_secret(&[1; 32])?;
    let hello = ClientToServer::Hello {
        version: PROTOCOL_VERSION,
        client: "stall".into(),
        e2e_key: Some(key.public().to_string()),
    };
    write_frame(&mut control, &hello).await?;
    loop {
        match tokio::time::timeout(T, read_frame::<ServerToClient, _>(&mut control)).await?? {
            ServerToClient::Ready { .. } => break,
            ServerToClient::Closed { reason, .. } => bail!("closed: {reason}"),
            _ => {}
        }
    }
    // The control stream stays open with the link.
    std::mem::forget(control);
    Ok(mux)
}

/// A technician who sends tunnel open requests and never the handshake message behind them
/// (or trickles it) holds each of them at the server and at the agent for the handshake
/// timeout. Hundreds of them, on two links, took every stream of the machine's link (512):
/// another technician's tunnel to the same machine waited until they timed out. Now a
/// technician has only a few opens in progress at a time; the others wait their turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_opens_of_one_technician_do_not_block_the_machine_for_others() -> Result<()> {
    let echo = Echo::start()?;
    let (w, conn) = tokio::task::block_in_place(|| -> Result<_> {
        let mut w = World::standard_with(Options {
            server_env: vec![("FERNWART_SESSIONS_ALLOW_NO_APPROVAL".into(), "true".into())],
            ..Options::default()
        })?;
        w.start_agent("m1", &[("echo", echo.addr)])?;
        w.switch("m1", true)?;
        w.wait_switch("m1", true, T)?;
        w.create_session_raw("s1", "m1", &["echo"], &["tech1", "tech2"], &["--no-approval"])?
            .check()?;
        let conn = w.spawn_connect("s1", "tech2")?;
        let mut conn = conn;
        conn.wait_forwards(T)?;
        w.login("tech1")?;
        Ok((w, conn))
    })?;
    let fwd = conn.forward("echo")?;
    let mut links = Vec::new();
    let mut stalled = Vec::new();
    for l in 0..2 {
        let mux = raw_link(&w, "tech1").await.with_context(|| format!("link {l}"))?;
        for n in 0..300 {
            if n % 16 == 0 {
                // The link takes new streams 64 at a time: a flood beyond is reset.
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            let mut s = mux.open().await.with_context(|| format!("link {l} stream {n}"))?;
            let req = OpenRequest {
                session: "s1".into(),
                target: "echo".into(),
                e2e: Some(1),
                hold: false,
            };
            write_frame(&mut s, &req).await.with_context(|| format!("link {l} request {n}"))?;
            // One byte of the handshake record's length, and no more.
            tokio::io::AsyncWriteExt::write_all(&mut s, &[0])
                .await
                .with_context(|| format!("link {l} byte {n}"))?;
            stalled.push(s);
        }
        links.push(mux);
    }
    // Let the server pass them on to the agent.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let started = Instant::now();
    let ok = tokio::task::block_in_place(|| roundtrip(fwd, b"tech2 still gets through", QUICK));
    let took = started.elapsed();
    drop(stalled);
    for mux in &links {
        mux.close();
    }
    tokio::task::block_in_place(|| {
        drop(conn);
        drop(w);
    });
    ok.with_context(|| {
        format!("tech2's tunnel did not open within {QUICK:?} while tech1 stalls 600 opens")
    })?;
    eprintln!("tech2's roundtrip took {took:?} next to 600 stalled opens");
    Ok(())
}
