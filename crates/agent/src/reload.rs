//! `agent.toml` read again while the agent runs: the operator rotates or removes approver keys
//! (`[trust]`) without a restart, so a key that leaves stops counting within seconds.
//!
//! The file is polled (every [`POLL_EVERY`]; portable, no file-system notification API): a
//! change of its bytes is parsed, and a `[trust]` that differs from the one in force is
//! applied ([`Agent::set_trust`]). A file that no longer parses changes nothing: the agent
//! records `config.invalid` with the error, once per version of the file, and keeps what it
//! has. Other changes (targets, key switch, proxy, audit, recording) take effect at the next
//! start; the agent records `config.pending` saying so.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::{config::AgentConfig, Agent};

/// How often `agent.toml` is looked at.
pub const POLL_EVERY: Duration = Duration::from_secs(2);

/// The largest `agent.toml` read (a few hundred targets fit many times over).
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Watches `DIR/agent.toml` until `stop`.
pub async fn watch(agent: Agent, stop: CancellationToken) {
    let path = agent.dir.join(crate::config::FILE_NAME);
    let mut seen = read(&path);
    let mut tick = tokio::time::interval(POLL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let now = read(&path);
        if now == seen {
            continue;
        }
        seen = now;
        match &seen {
            Ok(text) => apply(&agent, text),
            Err(e) => {
                tracing::error!(error = %e, "agent.toml: cannot read it; keeping the settings in force");
                agent.audit_as(None, "config.invalid", "", serde_json::json!({ "error": e }));
            }
        }
    }
}

/// The file's text, or why it cannot be read.
fn read(path: &std::path::Path) -> Result<String, String> {
    let len = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?.len();
    if len > MAX_FILE_BYTES {
        return Err(format!("{}: larger than {MAX_FILE_BYTES} bytes", path.display()));
    }
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// A new version of the file: its `[trust]` applied, the rest noted for the next start.
pub fn apply(agent: &Agent, text: &str) {
    let cfg = match AgentConfig::parse(text) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "agent.toml no longer parses; keeping the settings in force");
            agent.audit_as(None, "config.invalid", "", serde_json::json!({ "error": e }));
            return;
        }
    };
    if cfg.announced() != agent.cfg.announced()
        || cfg.switch != agent.cfg.switch
        || cfg.proxy != agent.cfg.proxy
    {
        tracing::warn!("agent.toml changed beyond [trust]: targets, key switch and proxy take effect when the agent restarts");
        agent.audit_as(
            None,
            "config.pending",
            "",
            serde_json::json!({"reason": "changes other than [trust] take effect when the agent restarts"}),
        );
    }
    if !crate::config::same_trust(&agent.trust(), &cfg.trust) {
        tracing::info!(
            level = cfg.trust.level(),
            approvers = cfg.trust.approvers.len(),
            "agent.toml: the operator's trust anchor changed; applying it"
        );
        agent.set_trust(cfg.trust);
    }
}
