//! The viewer's own second factor: an authenticator app (TOTP) set up in the browser, through
//! the same code as `fernwart mfa enroll` and `fernwart mfa confirm`. A login without a second
//! factor comes here straight from the login form and can do nothing else; once the code is
//! confirmed, that login ends and the next one asks for a code.

use axum::{
    body::Bytes,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Redirect, Response},
};
use fernwart_api::{CodeRequest, Scope};
use maud::{html, Markup};

use super::{
    append_cookie, clear_cookie,
    i18n::{Lang, Msg},
    pages::{self, Frame},
    Form, SetupViewer, Viewer, LOGIN_COOKIE,
};
use crate::{
    api::{self, ApiError, Authed, Body},
    auth, App,
};

pub const MFA_PAGE: &str = "/account/mfa";

/// Where the viewer's second factor stands.
enum MfaState {
    /// Set up and confirmed.
    Confirmed,
    /// Enrolled, waiting for a code: the secret and its `otpauth://` link.
    Pending {
        secret: String,
        uri: String,
    },
    None,
}

fn authed(v: &Viewer) -> Authed {
    Authed { caller: v.a.caller.clone(), token_hash: v.a.token_hash.clone() }
}

/// A login without its second factor sees no navigation: it may press nothing there.
fn frame(v: &Viewer) -> Frame<'_> {
    if v.a.caller.scope == Scope::Full {
        v.frame()
    } else {
        Frame { lang: v.ui.lang, path: MFA_PAGE, user: None }
    }
}

async fn state(app: &App, v: &Viewer) -> Result<MfaState, ApiError> {
    let id = v.a.caller.user_id;
    let (secret, confirmed) = app.store.run(move |b| b.mfa_state(id)).await?;
    Ok(match (secret, confirmed) {
        (_, true) => MfaState::Confirmed,
        (Some(secret), false) => {
            let uri = auth::totp_uri(&secret, &v.a.caller.name);
            MfaState::Pending { secret, uri }
        }
        (None, false) => MfaState::None,
    })
}

pub async fn mfa_page(State(app): State<App>, SetupViewer(v): SetupViewer) -> Response {
    let note = (v.query.get("done").map(String::as_str) == Some("1")).then_some(Msg::MfaDone);
    show(&app, &v, StatusCode::OK, note, None).await
}

async fn show(
    app: &App,
    v: &Viewer,
    status: StatusCode,
    note: Option<Msg>,
    error: Option<Msg>,
) -> Response {
    let st = match state(app, v).await {
        Ok(s) => s,
        Err(e) => return v.api_error(&e),
    };
    let setup_only = v.a.caller.scope != Scope::Full;
    let body = mfa_body(v.ui.lang, &st, setup_only, note, error, &v.csrf);
    v.page(status, pages::layout(&frame(v), Msg::MfaTitle, body))
}

fn mfa_body(
    lang: Lang,
    st: &MfaState,
    setup_only: bool,
    note: Option<Msg>,
    error: Option<Msg>,
    csrf: &str,
) -> Markup {
    let t = |m: Msg| m.text(lang);
    html! {
        h1 { (t(Msg::MfaTitle)) }
        @if let Some(n) = note { p.note role="status" { (t(n)) } }
        @if let Some(e) = error { p.error role="alert" { (t(e)) } }
        @if setup_only { p { (t(Msg::MfaSetupOnly)) } }
        @match st {
            MfaState::Confirmed => { p.mfa-confirmed { (t(Msg::MfaIsSetUp)) } }
            MfaState::None => {
                p { (t(Msg::MfaNone)) }
                form #mfa-enroll method="post" action="/account/mfa/enroll" {
                    input type="hidden" name="csrf" value=(csrf);
                    button type="submit" { (t(Msg::MfaStart)) }
                }
            }
            MfaState::Pending { secret, uri } => {
                p { (t(Msg::MfaAddSecret)) }
                label for="mfa-secret" { (t(Msg::MfaSecret)) }
                div.copyline { input #mfa-secret type="text" readonly value=(secret) spellcheck="false"; }
                label for="mfa-uri" { (t(Msg::MfaUri)) }
                div.copyline { input #mfa-uri type="text" readonly value=(uri) spellcheck="false"; }
                p { a #mfa-link href=(uri) { (t(Msg::MfaUri)) } }
                form.stack #mfa-confirm method="post" action="/account/mfa/confirm" {
                    input type="hidden" name="csrf" value=(csrf);
                    label for="code" { (t(Msg::MfaCode)) }
                    input #code name="code" type="text" required inputmode="numeric" pattern="[0-9]{6}" maxlength="6" autocomplete="one-time-code" autofocus;
                    button type="submit" { (t(Msg::MfaConfirm)) }
                }
                form #mfa-enroll method="post" action="/account/mfa/enroll" {
                    input type="hidden" name="csrf" value=(csrf);
                    button.secondary type="submit" { (t(Msg::MfaRestart)) }
                }
            }
        }
        @if setup_only {
            form.inline method="post" action="/logout" {
                input type="hidden" name="csrf" value=(csrf);
                button.secondary type="submit" { (t(Msg::Logout)) }
            }
        }
    }
}

/// A new secret (`fernwart mfa enroll`'s handler), shown on the page until confirmed.
pub async fn mfa_enroll(
    State(app): State<App>,
    SetupViewer(v): SetupViewer,
    body: Bytes,
) -> Response {
    let form = Form::parse(&body);
    let me = v.a.caller.name.clone();
    if let Err(res) = v.check_form(&app, &form, "mfa.enroll", &me).await {
        return res;
    }
    match api::account::mfa_enroll(State(app.clone()), authed(&v)).await {
        Ok(_) => v.ui.remember(Redirect::to(MFA_PAGE).into_response()),
        Err(e) => v.api_error(&e),
    }
}

/// The code from the app (`fernwart mfa confirm`'s handler). A login that had no second
/// factor ends then: the next one is made with the code.
pub async fn mfa_confirm(
    State(app): State<App>,
    SetupViewer(v): SetupViewer,
    body: Bytes,
) -> Response {
    let form = Form::parse(&body);
    let me = v.a.caller.name.clone();
    if let Err(res) = v.check_form(&app, &form, "mfa.confirm", &me).await {
        return res;
    }
    let code = form.get("code").unwrap_or_default().trim().to_owned();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return show(&app, &v, StatusCode::BAD_REQUEST, None, Some(Msg::MfaWrongCode)).await;
    }
    match api::account::mfa_confirm(State(app.clone()), authed(&v), Body(CodeRequest { code }))
        .await
    {
        Ok(_) if v.a.caller.scope == Scope::Full => {
            v.ui.remember(Redirect::to(&format!("{MFA_PAGE}?done=1")).into_response())
        }
        Ok(_) => {
            if let Err(e) = api::account::end_login(&app, &v.a).await {
                return v.api_error(&e);
            }
            let mut r = Redirect::to("/login?mfa=1").into_response();
            append_cookie(&mut r, &clear_cookie(LOGIN_COOKIE));
            v.ui.remember(r)
        }
        Err(e) if e.status() == StatusCode::BAD_REQUEST => {
            show(&app, &v, StatusCode::BAD_REQUEST, None, Some(Msg::MfaWrongCode)).await
        }
        Err(e) => v.api_error(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_setup_page_offers_what_fits_the_state() {
        let none = mfa_body(Lang::En, &MfaState::None, true, None, None, "tok").into_string();
        assert!(none.contains(r#"action="/account/mfa/enroll""#));
        assert!(!none.contains("/account/mfa/confirm"));
        assert!(none.contains(r#"action="/logout""#), "a setup-only login can leave");
        let pending = MfaState::Pending {
            secret: "JBSWY3DPEHPK3PXP".into(),
            uri: "otpauth://totp/fernwart:a?secret=JBSWY3DPEHPK3PXP".into(),
        };
        let page = mfa_body(Lang::De, &pending, false, None, None, "tok").into_string();
        assert!(
            page.contains("JBSWY3DPEHPK3PXP") && page.contains(r#"action="/account/mfa/confirm""#)
        );
        assert!(page.contains(r#"for="code""#) && !page.contains(r#"action="/logout""#));
        let done = mfa_body(Lang::En, &MfaState::Confirmed, false, None, None, "tok").into_string();
        assert!(!done.contains("<form"), "nothing to press once set up");
    }
}
