//! `token create | list | revoke`: API tokens for automation (admins).

use fernwart_api::{Empty, Role, TokenCreateRequest, TokenCreated, TokenInfo, TokenRevoked};

use super::admin::enc;
use crate::{output, Context};

pub async fn create(
    ctx: &Context,
    role: &str,
    org: Option<&str>,
    expires: &str,
) -> anyhow::Result<()> {
    let role: Role = role.parse()?;
    let req = TokenCreateRequest { role, org: org.map(str::to_owned), expires: expires.to_owned() };
    let resp: TokenCreated = ctx.post("/v1/tokens", &req).await?;
    if ctx.json {
        output::print_json(&resp);
    } else {
        crate::out!("{}", resp.token);
        eprintln!(
            "API token {} ({}) until {}: shown this once; give it to the automation as FERNWART_TOKEN",
            resp.name, resp.role, resp.expires
        );
    }
    Ok(())
}

pub async fn list(ctx: &Context) -> anyhow::Result<()> {
    let tokens: Vec<TokenInfo> = ctx.get("/v1/tokens").await?;
    if ctx.json {
        output::print_json(&tokens);
    } else {
        for t in &tokens {
            crate::out!(
                "{:<10} {:<14} until {} by {}{}",
                t.name,
                t.role,
                t.expires,
                t.created_by,
                if t.revoked { " (revoked)" } else { "" }
            );
        }
    }
    Ok(())
}

pub async fn revoke(ctx: &Context, id: &str) -> anyhow::Result<()> {
    let resp: TokenRevoked = ctx.post(&format!("/v1/tokens/{}/revoke", enc(id)), &Empty {}).await?;
    if ctx.json {
        output::print_json(&resp);
    } else {
        crate::out!("API token token-{} revoked", resp.id);
    }
    Ok(())
}
