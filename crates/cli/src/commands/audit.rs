//! `audit list | export | agent`: the trail, filtered and paged; the chain for offline
//! verification; a machine's own records as the server collected them from its agent.

use std::path::Path;

use anyhow::Context as _;
use fernwart_api::{AgentAuditRecord, AuditExport, AuditRecord};

use super::admin::enc;
use crate::{output, Context};

/// The server's page size: a shorter page is the last.
const PAGE: usize = 1000;

#[derive(clap::Args, Debug, Default)]
pub struct ListArgs {
    /// From this time on (RFC 3339).
    #[arg(long)]
    pub since: Option<String>,
    /// Before this time (RFC 3339).
    #[arg(long)]
    pub until: Option<String>,
    /// Only this user's records.
    #[arg(long)]
    pub user: Option<String>,
    /// Only records of this organization's users or about its machines.
    #[arg(long)]
    pub org: Option<String>,
    #[arg(long)]
    pub machine: Option<String>,
    #[arg(long)]
    pub session: Option<String>,
    /// An action (session.approve) or a family (session, auth, tunnel).
    #[arg(long)]
    pub kind: Option<String>,
    /// Only records after this id (the next page).
    #[arg(long)]
    pub after: Option<i64>,
    /// At most this many records (one page; without it, all pages).
    #[arg(long)]
    pub limit: Option<u32>,
}

fn query(args: &ListArgs, after: Option<i64>, limit: Option<u32>) -> String {
    let mut parts = Vec::new();
    for (k, v) in [
        ("since", &args.since),
        ("until", &args.until),
        ("user", &args.user),
        ("org", &args.org),
        ("machine", &args.machine),
        ("session", &args.session),
        ("kind", &args.kind),
    ] {
        if let Some(v) = v {
            parts.push(format!("{k}={}", enc(v)));
        }
    }
    if let Some(a) = after {
        parts.push(format!("after={a}"));
    }
    if let Some(l) = limit {
        parts.push(format!("limit={l}"));
    }
    if parts.is_empty() {
        "/v1/audit".to_owned()
    } else {
        format!("/v1/audit?{}", parts.join("&"))
    }
}

pub async fn list(ctx: &Context, args: ListArgs) -> anyhow::Result<()> {
    let mut after = args.after;
    loop {
        let page: Vec<AuditRecord> = ctx.get(&query(&args, after, args.limit)).await?;
        print(ctx, &page);
        let full = page.len() >= args.limit.map_or(PAGE, |l| l as usize);
        match page.last() {
            Some(last) if full => {
                if args.limit.is_some() {
                    eprintln!("more records follow: --after {}", last.id);
                    return Ok(());
                }
                after = Some(last.id);
            }
            _ => return Ok(()),
        }
    }
}

fn print(ctx: &Context, events: &[AuditRecord]) {
    if ctx.json {
        output::print_json_lines(events);
    } else {
        for e in events {
            crate::out!(
                "{:>6} {} {:<12} {:<24} {:<16} {} {}",
                e.id,
                e.time,
                e.actor,
                e.action,
                e.target,
                e.source,
                e.details
            );
        }
    }
}

/// `audit agent MACHINE`: every page, or one with `--limit`.
pub async fn agent(
    ctx: &Context,
    machine: &str,
    mut after: Option<u64>,
    limit: Option<u32>,
) -> anyhow::Result<()> {
    loop {
        let mut path = format!("/v1/machines/{}/audit", enc(machine));
        let params: Vec<String> =
            [after.map(|a| format!("after={a}")), limit.map(|l| format!("limit={l}"))]
                .into_iter()
                .flatten()
                .collect();
        if !params.is_empty() {
            path = format!("{path}?{}", params.join("&"));
        }
        let page: Vec<AgentAuditRecord> = ctx.get(&path).await?;
        if ctx.json {
            output::print_json_lines(&page);
        } else {
            for r in &page {
                let b = &r.record.body;
                let session = if b.target.is_empty() { "-" } else { b.target.as_str() };
                crate::out!(
                    "{:>6} {} {:<14} {:<12} {:<16} {}",
                    r.record.seq,
                    time_ms(b.time_ms),
                    b.action,
                    b.actor,
                    session,
                    b.details
                );
            }
        }
        let full = page.len() >= limit.map_or(PAGE, |l| l as usize);
        match page.last() {
            Some(last) if full => {
                if limit.is_some() {
                    eprintln!("more records follow: --after {}", last.record.seq);
                    return Ok(());
                }
                after = Some(last.record.seq);
            }
            _ => return Ok(()),
        }
    }
}

/// A record's time (ms since the Unix epoch), RFC 3339 in UTC with milliseconds.
fn time_ms(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

pub async fn export(ctx: &Context, out: &Path, after: Option<i64>) -> anyhow::Result<()> {
    let path = match after {
        Some(a) => format!("/v1/audit/export?after={a}"),
        None => "/v1/audit/export".to_owned(),
    };
    let export: AuditExport = ctx.get(&path).await?;
    let text = serde_json::to_string(&export).context("encoding the export")?;
    std::fs::write(out, text).with_context(|| format!("writing {}", out.display()))?;
    let signed = export.checkpoints.last().map_or(0, |c| c.seq);
    if ctx.json {
        output::print_json(&serde_json::json!({
            "file": out.display().to_string(),
            "records": export.records.len(),
            "signed_up_to": signed,
            "server_key": export.server_key,
        }));
    } else {
        crate::out!(
            "{} records written to {} (signed up to record {signed}); server key {}",
            export.records.len(),
            out.display(),
            export.server_key
        );
        crate::out!(
            "verify: fernwart-server audit verify --export {} --key {}",
            out.display(),
            export.server_key
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_carries_every_filter_encoded() {
        let args = ListArgs {
            since: Some("2026-12-02T00:00:00+01:00".into()),
            user: Some("tech1".into()),
            kind: Some("session".into()),
            ..ListArgs::default()
        };
        assert_eq!(
            query(&args, Some(5), Some(10)),
            "/v1/audit?since=2026-12-02T00%3A00%3A00%2B01%3A00&user=tech1&kind=session&after=5&limit=10"
        );
        assert_eq!(query(&ListArgs::default(), None, None), "/v1/audit");
    }
}
