//! `user …`, `machine …`, `audit list`.

use fernwart_transport::http_client::HttpMethod;
use serde_json::{json, Value};

use crate::{context::read_secret_line, output, Context};

pub async fn user_add(
    ctx: &Context,
    name: &str,
    role: &str,
    org: Option<&str>,
    expires: Option<&str>,
) -> anyhow::Result<()> {
    let password = read_secret_line()?;
    let body = json!({"name": name, "role": role, "org": org, "expires": expires, "password": password.as_str()});
    let resp: Value = ctx.call(HttpMethod::POST, "/v1/users", Some(body)).await?;
    if ctx.json {
        output::print_json(&resp)
    } else {
        crate::out!("user {name} added with role {role}")
    }
    Ok(())
}

pub async fn user_disable(ctx: &Context, name: &str) -> anyhow::Result<()> {
    let resp: Value = ctx
        .call(HttpMethod::POST, &format!("/v1/users/{}/disable", enc(name)), Some(json!({})))
        .await?;
    if ctx.json {
        output::print_json(&resp)
    } else {
        crate::out!("user {name} disabled; their logins and tunnels are closed")
    }
    Ok(())
}

pub async fn user_list(ctx: &Context) -> anyhow::Result<()> {
    let resp: Value = ctx.call(HttpMethod::GET, "/v1/users", None).await?;
    if ctx.json {
        output::print_json(&resp);
    } else {
        for u in resp.as_array().into_iter().flatten() {
            crate::out!(
                "{:<20} {:<14} mfa={} disabled={}",
                output::s(u, "name"),
                output::s(u, "role"),
                u["mfa"],
                u["disabled"]
            );
        }
    }
    Ok(())
}

pub async fn machine_add(ctx: &Context, name: &str, org: Option<&str>) -> anyhow::Result<()> {
    let resp: Value =
        ctx.call(HttpMethod::POST, "/v1/machines", Some(json!({"name": name, "org": org}))).await?;
    if ctx.json {
        output::print_json(&resp);
    } else {
        crate::out!(
            "machine {name} added; one-time enrolment token (valid until {}):",
            output::s(&resp, "expires")
        );
        crate::out!("{}", output::s(&resp, "token"));
    }
    Ok(())
}

pub async fn machine_list(ctx: &Context) -> anyhow::Result<()> {
    let resp: Value = ctx.call(HttpMethod::GET, "/v1/machines", None).await?;
    if ctx.json {
        output::print_json(&resp);
    } else {
        for m in resp.as_array().into_iter().flatten() {
            crate::out!(
                "{:<20} {:<8} switch={:<8} targets={}",
                output::s(m, "name"),
                if m["online"].as_bool() == Some(true) { "online" } else { "offline" },
                output::s(m, "switch"),
                output::list(m, "targets")
            );
        }
    }
    Ok(())
}

pub async fn machine_revoke(ctx: &Context, name: &str) -> anyhow::Result<()> {
    let resp: Value = ctx
        .call(HttpMethod::POST, &format!("/v1/machines/{}/revoke", enc(name)), Some(json!({})))
        .await?;
    if ctx.json {
        output::print_json(&resp)
    } else {
        crate::out!("machine {name} revoked; its link is closed")
    }
    Ok(())
}

pub async fn audit_list(ctx: &Context, since: Option<&str>) -> anyhow::Result<()> {
    let path = match since {
        Some(s) => format!("/v1/audit?since={}", enc(s)),
        None => "/v1/audit".to_owned(),
    };
    let resp: Value = ctx.call(HttpMethod::GET, &path, None).await?;
    let events = resp.as_array().cloned().unwrap_or_default();
    if ctx.json {
        output::print_json_lines(&events);
    } else {
        for e in &events {
            crate::out!(
                "{} {:<12} {:<24} {:<16} {} {}",
                output::s(e, "time"),
                output::s(e, "actor"),
                output::s(e, "action"),
                output::s(e, "target"),
                output::s(e, "source"),
                e.get("details").map(Value::to_string).unwrap_or_default()
            );
        }
    }
    Ok(())
}

pub fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
