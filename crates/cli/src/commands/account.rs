//! `login`, `logout`, `mfa enroll`, `mfa confirm`.

use anyhow::Context as _;
use fernwart_api::{
    CodeRequest, Empty, LoginRequest, LoginResponse, LogoutResponse, MfaConfirmResponse,
    MfaEnrollResponse, PasswdRequest, PasswdResponse, Role, Scope,
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

/// Revokes the login at the server, then forgets it here. A login the server no longer knows
/// is forgotten quietly; one that could not be revoked (server unreachable) is forgotten here
/// and reported as an error.
pub async fn logout(ctx: &Context) -> anyhow::Result<()> {
    let Ok(login) = ctx.load_login() else {
        ctx.forget_login();
        if !ctx.json {
            crate::out!("not logged in");
        }
        return Ok(());
    };
    let client = ctx.client()?;
    let r: Result<LogoutResponse, _> = client
        .json::<Empty, _>(HttpMethod::POST, "/v1/logout", Some(&login.token), Some(&Empty {}))
        .await;
    ctx.forget_login();
    match r {
        Ok(_) => {}
        Err(e) if e.status() == Some(401) => {}
        Err(e) => anyhow::bail!(
            "the login was forgotten here, but the server could not revoke it ({e}); it ends at {}",
            login.expires
        ),
    }
    if ctx.json {
        output::print_json(&LogoutResponse { logged_out: true });
    } else {
        crate::out!("logged out");
    }
    Ok(())
}

/// `fernwart passwd`: the current and the new password on stdin, one a line.
pub async fn passwd(ctx: &Context) -> anyhow::Result<()> {
    let mut current = read_secret_line().context("the current password (first line)")?;
    let mut new = read_secret_line().context("the new password (second line)")?;
    let mut req =
        PasswdRequest { current: std::mem::take(&mut *current), new: std::mem::take(&mut *new) };
    let r: anyhow::Result<PasswdResponse> = ctx.post("/v1/passwd", &req).await;
    req.current.zeroize();
    req.new.zeroize();
    let resp = r?;
    if ctx.json {
        output::print_json(&resp);
    } else {
        crate::out!("password changed; your other logins have ended");
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
