//! `login`, `logout`, `mfa enroll`, `mfa confirm`.

use anyhow::Context as _;
use fernwart_transport::http_client::HttpMethod;
use serde_json::{json, Value};

use crate::{
    context::{read_secret_line, Login},
    output, Context,
};

pub async fn login(ctx: &Context, user: &str, otp: Option<&str>) -> anyhow::Result<()> {
    let password = read_secret_line()?;
    let client = ctx.client()?;
    let body = json!({"user": user, "password": password.as_str(), "otp": otp});
    let resp: Value = client.json(HttpMethod::POST, "/v1/login", None, Some(&body)).await?;
    let login = Login {
        server: ctx.server_url()?,
        user: user.to_owned(),
        token: output::s(&resp, "token").to_owned(),
        scope: output::s(&resp, "scope").to_owned(),
        expires: output::s(&resp, "expires").to_owned(),
    };
    ctx.save_login(&login).context("saving the login")?;
    if ctx.json {
        output::print_json(
            &json!({"user": user, "role": resp.get("role"), "scope": login.scope, "expires": login.expires}),
        );
    } else if login.scope == "full" {
        crate::out!("logged in as {user} until {}", login.expires);
    } else {
        crate::out!("logged in as {user} for second-factor setup only: run `fernwart mfa enroll`, then `fernwart mfa confirm CODE`, then log in again with --otp");
    }
    Ok(())
}

pub fn logout(ctx: &Context) -> anyhow::Result<()> {
    ctx.forget_login();
    if !ctx.json {
        crate::out!("logged out");
    }
    Ok(())
}

pub async fn mfa_enroll(ctx: &Context) -> anyhow::Result<()> {
    let resp: Value = ctx.call(HttpMethod::POST, "/v1/mfa/enroll", Some(json!({}))).await?;
    if ctx.json {
        output::print_json(&resp);
    } else {
        crate::out!("add this to your authenticator app, then run `fernwart mfa confirm CODE`:");
        crate::out!("  secret: {}", output::s(&resp, "secret"));
        crate::out!("  uri:    {}", output::s(&resp, "uri"));
    }
    Ok(())
}

pub async fn mfa_confirm(ctx: &Context, code: &str) -> anyhow::Result<()> {
    let resp: Value =
        ctx.call(HttpMethod::POST, "/v1/mfa/confirm", Some(json!({"code": code}))).await?;
    if ctx.json {
        output::print_json(&resp);
    } else {
        crate::out!("second factor confirmed; log in again with --otp CODE");
    }
    Ok(())
}
