//! The whole path with the server on [::1].

use std::{
    net::{IpAddr, Ipv6Addr},
    time::Duration,
};

use anyhow::{ensure, Result};
use fernwart_e2e::{random_bytes, roundtrip, Echo, Options, World};

const T: Duration = Duration::from_secs(10);

#[test]
fn full_flow_over_ipv6() -> Result<()> {
    let echo = Echo::start()?;
    let echo6 = Echo::start_on(IpAddr::V6(Ipv6Addr::LOCALHOST), None)?;
    let mut w = World::standard_with(Options { ipv6: true, ..Options::default() })?;
    ensure!(w.url.starts_with("https://[::1]:"), "public URL {}", w.url);
    w.start_agent("m1", &[("echo", echo.addr), ("echo6", echo6.addr)])?;
    w.switch("m1", true)?;
    w.create_session("s1", "m1", &["echo", "echo6"], &["tech1"])?;
    let conn = w.connect_approved("s1", "tech1", "op1")?;
    roundtrip(conn.forward("echo")?, b"over v6", T)?;
    roundtrip(conn.forward("echo")?, &random_bytes(1 << 20), Duration::from_secs(30))?;
    roundtrip(conn.forward("echo6")?, b"to a v6 target", T)?;
    ensure!(echo6.accepted() == 1, "the IPv6 target saw {} connections", echo6.accepted());
    ensure!(w.session_state("s1")? == "active");
    Ok(())
}
