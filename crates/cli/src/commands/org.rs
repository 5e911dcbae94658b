//! `org add | set | list`, `contract add`: organizations and service contracts (admins).

use fernwart_api::{
    ContractAddRequest, ContractInfo, OrgAddRequest, OrgInfo, OrgKind, OrgSetRequest,
};

use fernwart_transport::http_client::HttpMethod;

use crate::{output, Context};

pub async fn add(
    ctx: &Context,
    name: &str,
    kind: &str,
    allow_no_approval: bool,
    max_session: Option<String>,
    require_signed: bool,
) -> anyhow::Result<()> {
    let kind: OrgKind = kind.parse().map_err(anyhow::Error::msg)?;
    let req = OrgAddRequest {
        name: name.to_owned(),
        kind,
        allow_no_approval,
        max_session,
        require_signed,
    };
    let resp: OrgInfo = ctx.post("/v1/orgs", &req).await?;
    if ctx.json {
        output::print_json(&resp);
    } else {
        crate::out!(
            "organization {} added ({}){}",
            resp.name,
            resp.kind,
            if resp.require_signed { "; approvals on its machines must be signed" } else { "" }
        );
    }
    Ok(())
}

/// `org set NAME`: changes some of an operator's rules; what is not given stays.
pub async fn set(ctx: &Context, name: &str, req: OrgSetRequest) -> anyhow::Result<()> {
    let path = format!("/v1/orgs/{}", super::admin::enc(name));
    let resp: OrgInfo = ctx.call(HttpMethod::PATCH, &path, Some(&req)).await?;
    if ctx.json {
        output::print_json(&resp);
    } else {
        let limit = match resp.max_session_secs {
            Some(s) => humantime::format_duration(std::time::Duration::from_secs(s.max(0) as u64))
                .to_string(),
            None => "the server's".to_owned(),
        };
        crate::out!(
            "organization {}: signed approvals {}, sessions without approval {}, longest session {}",
            resp.name,
            if resp.require_signed { "required" } else { "not required" },
            if resp.allow_no_approval { "allowed" } else { "refused" },
            limit
        );
    }
    Ok(())
}

pub async fn list(ctx: &Context) -> anyhow::Result<()> {
    let orgs: Vec<OrgInfo> = ctx.get("/v1/orgs").await?;
    if ctx.json {
        output::print_json(&orgs);
    } else {
        for o in &orgs {
            crate::out!(
                "{:<24} {:<9} {}{}",
                o.name,
                o.kind,
                o.contracts.join(","),
                if o.require_signed { " require-signed" } else { "" }
            );
        }
    }
    Ok(())
}

pub async fn contract_add(ctx: &Context, provider: &str, operator: &str) -> anyhow::Result<()> {
    let req = ContractAddRequest { provider: provider.to_owned(), operator: operator.to_owned() };
    let resp: ContractInfo = ctx.post("/v1/contracts", &req).await?;
    if ctx.json {
        output::print_json(&resp);
    } else {
        crate::out!("{} may service the machines of {}", resp.provider, resp.operator);
    }
    Ok(())
}
