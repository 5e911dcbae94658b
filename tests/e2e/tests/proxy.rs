//! Agent and technician reach the server only through an HTTP CONNECT proxy (tinyproxy).

use std::time::Duration;

use anyhow::{bail, ensure, Result};
use fernwart_e2e::{
    free_port, random_bytes, roundtrip, tinyproxy, Echo, Options, Proxy, World, LOCALHOST,
};

const T: Duration = Duration::from_secs(10);

#[test]
fn agent_and_cli_through_http_connect_proxy() -> Result<()> {
    let Some(bin) = tinyproxy::find() else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            bail!("tinyproxy is not installed (looked in /usr/bin, /usr/sbin and PATH); CI must install it (apt-get install tinyproxy)");
        }
        eprintln!("SKIPPED: proxy test needs tinyproxy (apt-get install tinyproxy)");
        return Ok(());
    };
    let port = free_port(LOCALHOST)?;
    let tmp = tempfile::Builder::new().prefix("fw-proxy-").tempdir()?;
    let proxy = tinyproxy::Tinyproxy::start(&bin, tmp.path(), port)?;
    let echo = Echo::start()?;

    let opts = Options {
        port: Some(port),
        agent_proxy: Some(Proxy::Env(proxy.url.clone())),
        cli_proxy: Some(Proxy::Flag(proxy.url.clone())),
        ..Options::default()
    };
    let mut w = World::standard_with(opts)?;
    let cli_connects = proxy.connect_lines().len();
    ensure!(cli_connects > 0, "the CLI (--proxy) made no CONNECT through tinyproxy");
    let wanted = format!("CONNECT 127.0.0.1:{port}");
    ensure!(
        proxy.connect_lines().iter().all(|l| l.contains(&wanted)),
        "unexpected CONNECT lines: {:?}",
        proxy.connect_lines()
    );

    // enrol with --proxy, run with HTTPS_PROXY
    let token = w.add_machine("m1")?;
    let dir = w.write_agent_toml("m1", &[("echo", echo.addr)])?;
    w.opts.agent_proxy = Some(Proxy::Flag(proxy.url.clone()));
    let before = proxy.connect_lines().len();
    w.enroll_raw(&dir, &token, &w.ca)?.check()?;
    ensure!(
        proxy.connect_lines().len() > before,
        "`fernwart-agent enroll --proxy` bypassed the proxy"
    );
    w.opts.agent_proxy = Some(Proxy::Env(proxy.url.clone()));
    // the CLI goes direct for a moment, so that every new CONNECT is the agent's
    w.opts.cli_proxy = None;
    let before = proxy.connect_lines().len();
    w.run_agent("m1")?;
    w.wait_machine("m1", true, Duration::from_secs(30))?;
    ensure!(
        proxy.connect_lines().len() > before,
        "`fernwart-agent run` with HTTPS_PROXY made no CONNECT"
    );

    // the CLI honours HTTPS_PROXY too
    w.opts.cli_proxy = Some(Proxy::Env(proxy.url.clone()));
    let before = proxy.connect_lines().len();
    w.fw("admin", &["machine", "list", "--json"])?;
    ensure!(proxy.connect_lines().len() > before, "`fernwart` ignored HTTPS_PROXY");
    w.opts.cli_proxy = Some(Proxy::Flag(proxy.url.clone()));

    w.switch("m1", true)?;
    w.create_session("s1", "m1", &["echo"], &["tech1"])?;
    // only connect uses the proxy now: every new CONNECT is its own
    let before = proxy.connect_lines().len();
    let mut conn = w.spawn_connect("s1", "tech1")?;
    w.opts.cli_proxy = None;
    w.wait_session_state("s1", "requested", T)?;
    w.fw("op1", &["session", "approve", "s1"])?;
    conn.wait_forwards(T)?;
    ensure!(proxy.connect_lines().len() > before, "connect did not go through the proxy");
    let fwd = conn.forward("echo")?;
    roundtrip(fwd, b"through the proxy", T)?;
    roundtrip(fwd, &random_bytes(256 * 1024), Duration::from_secs(30))?;
    eprintln!("tinyproxy CONNECT lines: {}", proxy.connect_lines().len());
    Ok(())
}
