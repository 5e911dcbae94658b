//! Attacks on the fast connect path (held tunnel opens, agent link version 4) and on the
//! group-committed audit writers: what a stop of the server does to the records of the
//! tunnels and links it ends.

use std::time::Duration;

use anyhow::{ensure, Result};
use fernwart_e2e::{open_tunnel, roundtrip, world::path_str, Echo, World};

const T: Duration = Duration::from_secs(10);

fn world(echo: &Echo) -> Result<World> {
    let mut w = World::standard()?;
    w.start_agent("m1", &[("echo", echo.addr)])?;
    w.switch("m1", true)?;
    Ok(w)
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
    let mut w = world(&echo)?;
    w.create_session("s1", "m1", &["echo"], &["tech1"])?;
    let conn = w.connect_approved("s1", "tech1", "op1")?;
    let fwd = conn.forward("echo")?;
    roundtrip(fwd, b"one tunnel that closes before the stop", T)?;
    // Three tunnels still open when the server stops.
    let open: Vec<_> = (0..3).map(|_| open_tunnel(fwd)).collect::<Result<_>>()?;
    std::thread::sleep(Duration::from_millis(200));

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
    let mut w = world(&echo)?;
    w.create_session("s1", "m1", &["echo"], &["tech1"])?;
    let conn = w.connect_approved("s1", "tech1", "op1")?;
    let fwd = conn.forward("echo")?;
    roundtrip(fwd, b"one tunnel that closes before the stop", T)?;
    let open: Vec<_> = (0..3).map(|_| open_tunnel(fwd)).collect::<Result<_>>()?;
    std::thread::sleep(Duration::from_millis(200));

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
