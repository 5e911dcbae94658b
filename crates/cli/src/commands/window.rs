//! `window add | list | remove`: recurring maintenance windows (an operator's approvers).

use fernwart_api::{Empty, WindowAddRequest, WindowInfo, WindowRemoved};

use crate::{output, Context};

pub async fn add(ctx: &Context, req: &WindowAddRequest) -> anyhow::Result<()> {
    let w: WindowInfo = ctx.post("/v1/windows", req).await?;
    if ctx.json {
        output::print_json(&w);
    } else {
        crate::out!(
            "window {} on {}: {} pre-approved {} {}-{} {}",
            w.id,
            w.machine,
            w.provider,
            w.days,
            w.from,
            w.to,
            w.zone
        );
        if let Some((open, close)) = &w.next {
            crate::out!("next: {open} to {close}");
        }
    }
    Ok(())
}

pub async fn list(ctx: &Context) -> anyhow::Result<()> {
    let list: Vec<WindowInfo> = ctx.get("/v1/windows").await?;
    if ctx.json {
        output::print_json(&list);
    } else {
        for w in &list {
            let next = w.next.as_ref().map(|(o, c)| format!("next {o} to {c}")).unwrap_or_default();
            crate::out!(
                "{:<4} {:<16} {:<16} {:<12} {}-{} {:<20} {next}",
                w.id,
                w.machine,
                w.provider,
                w.days,
                w.from,
                w.to,
                w.zone
            );
        }
    }
    Ok(())
}

pub async fn remove(ctx: &Context, id: i64) -> anyhow::Result<()> {
    let r: WindowRemoved = ctx.post(&format!("/v1/windows/{id}/remove"), &Empty {}).await?;
    if ctx.json {
        output::print_json(&r);
    } else {
        crate::out!("window {} removed", r.id);
    }
    Ok(())
}
