//! Server memory per idle agent connection, on a fresh server of its own (so that buffers left
//! over from the traffic measurements do not hide the cost of new connections).

use std::{net::SocketAddr, thread, time::Duration};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::{
    fw::{Bins, Server},
    procs::{settled_rss_kib, terminate_all, Proc},
};

#[derive(Debug, Clone, Serialize)]
pub struct IdleResult {
    pub agents: usize,
    pub method: String,
    pub server_rss_before_kib: u64,
    pub server_rss_after_kib: u64,
    /// (after − before) / agents.
    pub per_agent_kib: f64,
    /// Server VmRSS with the first half of the agents connected, and the cost of each agent of
    /// the second half: the marginal cost, free of allocator warm-up (library method only).
    pub server_rss_half_kib: Option<u64>,
    pub marginal_per_agent_kib: Option<f64>,
}

/// Enrols `n` machines and runs one real `fernwart-agent` process for each.
pub fn with_processes(bins: &Bins, n: usize, target: SocketAddr) -> Result<IdleResult> {
    let dir = tempfile::Builder::new().prefix("fernwart-bench-idle").tempdir()?;
    let mut server = Server::start(bins, dir.path())?;
    let mut dirs = Vec::with_capacity(n);
    for i in 0..n {
        let adir = dir.path().join(format!("agent-{i}"));
        server.enroll_agent(&format!("idle{i}"), &adir, &[("echo", target)])?;
        dirs.push(adir);
    }
    // Settle, then take the baseline: a server with n enrolled but unconnected machines.
    thread::sleep(Duration::from_secs(1));
    let before = settled_rss_kib(server.proc.pid()).context("server VmRSS")?;
    let mut agents: Vec<Proc> = Vec::with_capacity(n);
    for (i, adir) in dirs.iter().enumerate() {
        agents.push(server.spawn_agent(&format!("idle{i}"), adir)?);
    }
    server.wait_online(|m| m.starts_with("idle"), n, Duration::from_secs(60 + n as u64 / 10))?;
    thread::sleep(Duration::from_secs(2));
    let after = settled_rss_kib(server.proc.pid()).context("server VmRSS")?;
    let result = IdleResult {
        agents: n,
        method: format!("{n} real fernwart-agent processes"),
        server_rss_before_kib: before,
        server_rss_after_kib: after,
        per_agent_kib: after.saturating_sub(before) as f64 / n as f64,
        server_rss_half_kib: None,
        marginal_per_agent_kib: None,
    };
    // Stop the agents before the server.
    terminate_all(agents, Duration::from_secs(5));
    Ok(result)
}

/// Enrols `n` machines and runs the real agent link code of the `fernwart_agent` library for
/// each, as tasks in this process: one TLS + upgraded HTTP/2 connection per agent, exactly as
/// `fernwart-agent run` keeps it, without the cost of n processes.
pub fn with_library(bins: &Bins, n: usize, target: SocketAddr) -> Result<IdleResult> {
    use fernwart_agent::{identity, Agent, AgentConfig};
    use fernwart_transport::ProxyConfig;

    let dir = tempfile::Builder::new().prefix("fernwart-bench-idle").tempdir()?;
    let mut server = Server::start(bins, dir.path())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building agent runtime")?;

    // Tokens through the CLI contract (a few at a time), enrolment through the agent library.
    let names: Vec<String> = (0..n).map(|i| format!("idle{i}")).collect();
    let mut dirs = Vec::with_capacity(n);
    for chunk in names.chunks(4) {
        let tokens: Vec<Result<String>> = thread::scope(|s| {
            let handles: Vec<_> =
                chunk.iter().map(|name| s.spawn(|| server.add_machine(name))).collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("machine add panicked"))))
                .collect()
        });
        for (name, token) in chunk.iter().zip(tokens) {
            let adir = dir.path().join(name);
            crate::fw::write_agent_toml(&adir, &[("echo", target)])?;
            dirs.push((adir, token?));
        }
    }
    let url = server.url.clone();
    let ca = server.ca.clone();
    rt.block_on(async {
        let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(8));
        let mut set = tokio::task::JoinSet::new();
        for (adir, token) in dirs.clone() {
            let (url, ca, sem) = (url.clone(), ca.clone(), sem.clone());
            set.spawn(async move {
                let _permit = sem.acquire_owned().await;
                identity::enroll(&adir, &url, &token, Some(&ca), ProxyConfig::default())
                    .await
                    .map_err(|e| anyhow::anyhow!("enrolling {}: {e}", adir.display()))
            });
        }
        while let Some(r) = set.join_next().await {
            r.context("enrol task")??;
        }
        Ok::<_, anyhow::Error>(())
    })?;

    thread::sleep(Duration::from_secs(1));
    let before = settled_rss_kib(server.proc.pid()).context("server VmRSS")?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let half = n / 2;
    let mut half_kib = None;
    for (i, (adir, _)) in dirs.iter().enumerate() {
        if i == half && half > 0 {
            server.wait_online(
                |m| m.starts_with("idle"),
                half,
                Duration::from_secs(60 + n as u64 / 10),
            )?;
            thread::sleep(Duration::from_secs(1));
            half_kib = Some(settled_rss_kib(server.proc.pid()).context("server VmRSS")?);
        }
        let cfg = AgentConfig::load(adir).map_err(anyhow::Error::msg)?;
        let id = identity::Identity::load(adir).map_err(anyhow::Error::msg)?;
        let agent = Agent::new(adir.clone(), cfg, id, ProxyConfig::default());
        rt.spawn(fernwart_agent::run(agent, shutdown.clone()));
    }
    server.wait_online(|m| m.starts_with("idle"), n, Duration::from_secs(60 + n as u64 / 10))?;
    thread::sleep(Duration::from_secs(2));
    let after = settled_rss_kib(server.proc.pid()).context("server VmRSS")?;
    shutdown.cancel();
    rt.shutdown_timeout(Duration::from_secs(5));
    Ok(IdleResult {
        agents: n,
        method: format!("{n} in-process agents (fernwart_agent library link code)"),
        server_rss_before_kib: before,
        server_rss_after_kib: after,
        per_agent_kib: after.saturating_sub(before) as f64 / n as f64,
        server_rss_half_kib: half_kib,
        marginal_per_agent_kib: half_kib
            .map(|h| after.saturating_sub(h) as f64 / (n - half).max(1) as f64),
    })
}
