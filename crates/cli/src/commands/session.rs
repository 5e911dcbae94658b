//! `session create | approve | reject | end | list | show`.

use anyhow::bail;
use fernwart_transport::http_client::HttpMethod;
use serde_json::{json, Value};

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
    let body = json!({
        "name": a.name, "machine": a.machine, "targets": a.targets, "users": a.users, "from": a.from,
        "until": a.until, "duration_secs": duration_secs, "reason": a.reason, "approval": !a.no_approval,
    });
    let resp: Value = ctx.call(HttpMethod::POST, "/v1/sessions", Some(body)).await?;
    if ctx.json {
        output::print_json(&resp);
    } else {
        crate::out!(
            "session {} prepared on {} for {} ({} to {}){}",
            a.name,
            a.machine,
            a.users.join(","),
            output::s(&resp, "from"),
            output::s(&resp, "until"),
            if a.no_approval { "" } else { "; needs an approver's release" }
        );
    }
    Ok(())
}

pub async fn action(ctx: &Context, name: &str, action: &str) -> anyhow::Result<()> {
    let resp: Value = ctx
        .call(HttpMethod::POST, &format!("/v1/sessions/{}/{action}", enc(name)), Some(json!({})))
        .await?;
    if ctx.json {
        output::print_json(&resp)
    } else {
        crate::out!("session {name} is {}", output::s(&resp, "state"))
    }
    Ok(())
}

pub async fn list(ctx: &Context) -> anyhow::Result<()> {
    let resp: Value = ctx.call(HttpMethod::GET, "/v1/sessions", None).await?;
    if ctx.json {
        output::print_json(&resp);
    } else {
        for s in resp.as_array().into_iter().flatten() {
            print_line(s);
        }
    }
    Ok(())
}

pub async fn show(ctx: &Context, name: &str) -> anyhow::Result<()> {
    let s: Value = ctx.call(HttpMethod::GET, &format!("/v1/sessions/{}", enc(name)), None).await?;
    if ctx.json {
        output::print_json(&s);
    } else {
        for key in [
            "name",
            "state",
            "machine",
            "from",
            "until",
            "reason",
            "created_by",
            "decided_by",
            "ended_by",
        ] {
            if let Some(v) = s.get(key).and_then(Value::as_str) {
                crate::out!("{key:<11} {v}");
            }
        }
        crate::out!("{:<11} {}", "targets", output::list(&s, "targets"));
        crate::out!("{:<11} {}", "users", output::list(&s, "users"));
        crate::out!(
            "{:<11} {}",
            "approval",
            if s["approval_required"].as_bool() == Some(true) {
                "required"
            } else {
                "not required"
            }
        );
    }
    Ok(())
}

fn print_line(s: &Value) {
    crate::out!(
        "{:<16} {:<9} {:<12} targets={} users={} until {}",
        output::s(s, "name"),
        output::s(s, "state"),
        output::s(s, "machine"),
        output::list(s, "targets"),
        output::list(s, "users"),
        output::s(s, "until")
    );
}
