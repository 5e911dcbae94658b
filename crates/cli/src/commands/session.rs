//! `session create | approve | reject | end | list | show`.

use anyhow::bail;
use fernwart_api::{ApproveRequest, Empty, SessionCreateRequest, SessionGrant, SessionInfo};

use super::admin::enc;
use crate::{output, Context};

// `fernwart session create`: these fields are its command line.
#[derive(clap::Args)]
pub struct CreateArgs {
    pub name: String,
    #[arg(long)]
    pub machine: String,
    #[arg(long = "target", required = true)]
    pub targets: Vec<String>,
    #[arg(long = "user", required = true)]
    pub users: Vec<String>,
    #[arg(long)]
    pub from: Option<String>,
    #[arg(long, conflicts_with = "duration")]
    pub until: Option<String>,
    #[arg(long)]
    pub duration: Option<String>,
    #[arg(long)]
    pub reason: String,
    #[arg(long)]
    pub no_approval: bool,
    /// The agent records each connection of the session (bytes both ways, with their times);
    /// the approver sees it before releasing. `fernwart recording list|export` read them.
    #[arg(long)]
    pub record: bool,
}

pub async fn create(ctx: &Context, a: CreateArgs) -> anyhow::Result<()> {
    let duration_secs = match &a.duration {
        Some(d) => Some(
            humantime::parse_duration(d)
                .map_err(|e| anyhow::anyhow!("--duration {d:?}: {e}"))?
                .as_secs(),
        ),
        None => None,
    };
    if a.until.is_some() && duration_secs.is_some() {
        bail!("give --until or --duration, not both");
    }
    let req = SessionCreateRequest {
        name: a.name,
        machine: a.machine,
        targets: a.targets,
        users: a.users,
        from: a.from,
        until: a.until,
        duration_secs,
        reason: a.reason,
        approval: !a.no_approval,
        record: a.record,
    };
    let s: SessionInfo = ctx.post("/v1/sessions", &req).await?;
    if ctx.json {
        output::print_json(&s);
    } else {
        crate::out!(
            "session {} prepared on {} for {} ({} to {}){}{}",
            req.name,
            req.machine,
            req.users.join(","),
            s.from,
            s.until,
            if s.record { "; recorded" } else { "" },
            if req.approval { "; needs an approver's release" } else { "" }
        );
    }
    Ok(())
}

/// `session approve NAME`: with an approver key in FERNWART_HOME, the session's grant is
/// fetched, shown and signed here, and the signature goes with the approval; without one, the
/// approval is the server's only (refused where the machine takes only signed approvals).
pub async fn approve(ctx: &Context, name: &str) -> anyhow::Result<()> {
    let Some(key) = super::key::load(&super::key::key_path(ctx))? else {
        return action(ctx, name, "approve").await;
    };
    let grant: SessionGrant = ctx.get(&format!("/v1/sessions/{}/grant", enc(name))).await?;
    let approval = super::key::sign(ctx, &key, name, &grant)?;
    let req = ApproveRequest { key: Some(approval.key), signature: Some(approval.signature) };
    let s: SessionInfo = ctx.post(&format!("/v1/sessions/{}/approve", enc(name)), &req).await?;
    if ctx.json {
        output::print_json(&s)
    } else {
        crate::out!(
            "session {name} is {} (signed by {})",
            s.state,
            s.signed_by.as_deref().unwrap_or("?")
        )
    }
    Ok(())
}

pub async fn action(ctx: &Context, name: &str, action: &str) -> anyhow::Result<()> {
    let s: SessionInfo =
        ctx.post(&format!("/v1/sessions/{}/{action}", enc(name)), &Empty {}).await?;
    if ctx.json {
        output::print_json(&s)
    } else {
        crate::out!("session {name} is {}", s.state)
    }
    Ok(())
}

pub async fn list(ctx: &Context) -> anyhow::Result<()> {
    let sessions: Vec<SessionInfo> = ctx.get("/v1/sessions").await?;
    if ctx.json {
        output::print_json(&sessions);
    } else {
        for s in &sessions {
            print_line(s);
        }
    }
    Ok(())
}

pub async fn show(ctx: &Context, name: &str) -> anyhow::Result<()> {
    let s: SessionInfo = ctx.get(&format!("/v1/sessions/{}", enc(name))).await?;
    if ctx.json {
        output::print_json(&s);
    } else {
        let state = s.state.as_str();
        for (key, v) in [
            ("name", Some(s.name.as_str())),
            ("state", Some(state)),
            ("machine", Some(s.machine.as_str())),
            ("from", Some(s.from.as_str())),
            ("until", Some(s.until.as_str())),
            ("reason", Some(s.reason.as_str())),
            ("created_by", Some(s.created_by.as_str())),
            ("decided_by", s.decided_by.as_deref()),
            ("signed_by", s.signed_by.as_deref()),
            ("ended_by", s.ended_by.as_deref()),
        ] {
            if let Some(v) = v {
                crate::out!("{key:<11} {v}");
            }
        }
        crate::out!("{:<11} {}", "targets", output::list(&s.targets));
        crate::out!("{:<11} {}", "users", output::list(&s.users));
        crate::out!(
            "{:<11} {}",
            "approval",
            if s.approval_required { "required" } else { "not required" }
        );
        crate::out!(
            "{:<11} {}",
            "recording",
            if s.record { "on: the agent records each connection" } else { "off" }
        );
    }
    Ok(())
}

fn print_line(s: &SessionInfo) {
    crate::out!(
        "{:<16} {:<9} {:<12} targets={} users={} until {}{}",
        s.name,
        s.state,
        s.machine,
        output::list(&s.targets),
        output::list(&s.users),
        s.until,
        if s.record { " recorded" } else { "" }
    );
}
