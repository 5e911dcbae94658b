//! `login`, `logout`, `mfa enroll`, `mfa confirm`.

use anyhow::Context as _;
use fernwart_api::{
    CodeRequest, Empty, LoginRequest, LoginResponse, MfaConfirmResponse, MfaEnrollResponse, Role,
    Scope,
};
use fernwart_transport::http_client::HttpMethod;
use serde::Serialize;
use zeroize::Zeroize as _;

use crate::{
    context::{read_secret_line, Login},
    output, Context,
};

/// `login --json`: the login without its token.
#[derive(Serialize)]
struct LoginOutput<'a> {
    user: &'a str,
    role: Role,
    scope: Scope,
    expires: &'a str,
}

pub async fn login(ctx: &Context, user: &str, otp: Option<&str>) -> anyhow::Result<()> {
    let mut password = read_secret_line()?;
    let client = ctx.client()?;
    // The password moves into the request (no copy) and is wiped once sent.
    let mut req = LoginRequest {
        user: user.to_owned(),
        password: std::mem::take(&mut *password),
        otp: otp.map(str::to_owned),
    };
    let resp: Result<LoginResponse, _> =
        client.json(HttpMethod::POST, "/v1/login", None, Some(&req)).await;
    req.password.zeroize();
    let resp = resp?;
    let login = Login {
        server: ctx.server_url()?,
        user: user.to_owned(),
        token: resp.token,
        scope: resp.scope,
        expires: resp.expires,
    };
    ctx.save_login(&login).context("saving the login")?;
    if ctx.json {
        output::print_json(&LoginOutput {
            user,
            role: resp.role,
            scope: login.scope,
            expires: &login.expires,
        });
    } else if login.scope == Scope::Full {
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
    let resp: MfaEnrollResponse = ctx.post("/v1/mfa/enroll", &Empty {}).await?;
    if ctx.json {
        output::print_json(&resp);
    } else {
        crate::out!("add this to your authenticator app, then run `fernwart mfa confirm CODE`:");
        crate::out!("  secret: {}", resp.secret);
        crate::out!("  uri:    {}", resp.uri);
    }
    Ok(())
}

pub async fn mfa_confirm(ctx: &Context, code: &str) -> anyhow::Result<()> {
    let resp: MfaConfirmResponse =
        ctx.post("/v1/mfa/confirm", &CodeRequest { code: code.to_owned() }).await?;
    if ctx.json {
        output::print_json(&resp);
    } else {
        crate::out!("second factor confirmed; log in again with --otp CODE");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_json_has_no_token() {
        let out = LoginOutput {
            user: "tech1",
            role: Role::Technician,
            scope: Scope::MfaSetup,
            expires: "2030-01-01T00:00:00Z",
        };
        assert_eq!(
            serde_json::to_value(&out).unwrap(),
            serde_json::json!({"user": "tech1", "role": "technician", "scope": "mfa-setup", "expires": "2030-01-01T00:00:00Z"})
        );
    }
}
