//! `user …`, `machine …`, `audit list`.

use fernwart_api::{
    Empty, MachineAddRequest, MachineAdded, MachineInfo, MachineRevoked, Role, UserAddRequest,
    UserAdded, UserDisabled, UserInfo,
};
use zeroize::Zeroize as _;

use crate::{context::read_secret_line, output, Context};

pub async fn user_add(
    ctx: &Context,
    name: &str,
    role: &str,
    org: Option<&str>,
    expires: Option<&str>,
) -> anyhow::Result<()> {
    let role: Role = role.parse()?;
    let mut password = read_secret_line()?;
    // The password moves into the request (no copy) and is wiped once sent.
    let mut req = UserAddRequest {
        name: name.to_owned(),
        role,
        org: org.map(str::to_owned),
        expires: expires.map(str::to_owned),
        password: std::mem::take(&mut *password),
    };
    let resp: anyhow::Result<UserAdded> = ctx.post("/v1/users", &req).await;
    req.password.zeroize();
    let resp = resp?;
    if ctx.json {
        output::print_json(&resp)
    } else {
        crate::out!("user {name} added with role {}", resp.role)
    }
    Ok(())
}

pub async fn user_disable(ctx: &Context, name: &str) -> anyhow::Result<()> {
    let resp: UserDisabled =
        ctx.post(&format!("/v1/users/{}/disable", enc(name)), &Empty {}).await?;
    if ctx.json {
        output::print_json(&resp)
    } else {
        crate::out!("user {name} disabled; their logins and tunnels are closed")
    }
    Ok(())
}

pub async fn user_list(ctx: &Context) -> anyhow::Result<()> {
    let users: Vec<UserInfo> = ctx.get("/v1/users").await?;
    if ctx.json {
        output::print_json(&users);
    } else {
        for u in &users {
            crate::out!("{:<20} {:<14} mfa={} disabled={}", u.name, u.role, u.mfa, u.disabled);
        }
    }
    Ok(())
}

pub async fn machine_add(ctx: &Context, name: &str, org: Option<&str>) -> anyhow::Result<()> {
    let req = MachineAddRequest { name: name.to_owned(), org: org.map(str::to_owned) };
    let resp: MachineAdded = ctx.post("/v1/machines", &req).await?;
    if ctx.json {
        output::print_json(&resp);
    } else {
        crate::out!(
            "machine {name} added; one-time enrolment token (valid until {}):",
            resp.expires
        );
        crate::out!("{}", resp.token);
    }
    Ok(())
}

pub async fn machine_list(ctx: &Context) -> anyhow::Result<()> {
    let machines: Vec<MachineInfo> = ctx.get("/v1/machines").await?;
    if ctx.json {
        output::print_json(&machines);
    } else {
        for m in &machines {
            let targets: Vec<&str> = m.targets.iter().map(|t| t.name.as_str()).collect();
            crate::out!(
                "{:<20} {:<8} switch={:<8} trust={:<15} targets={}",
                m.name,
                if m.online { "online" } else { "offline" },
                m.switch,
                m.trust,
                output::list(&targets)
            );
        }
    }
    Ok(())
}

pub async fn machine_revoke(ctx: &Context, name: &str) -> anyhow::Result<()> {
    let resp: MachineRevoked =
        ctx.post(&format!("/v1/machines/{}/revoke", enc(name)), &Empty {}).await?;
    if ctx.json {
        output::print_json(&resp)
    } else {
        crate::out!("machine {name} revoked; its link is closed")
    }
    Ok(())
}

pub fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
