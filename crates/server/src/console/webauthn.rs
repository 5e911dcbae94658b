//! The console's security keys (WebAuthn): the key page (register, list, remove, and the line
//! an operator pastes into agent.toml), the login's second factor, and approvals signed in the
//! browser. The ceremonies are [`crate::security_keys`]'s; this is HTTP, HTML and the one small
//! script of our own (`/console-webauthn.js`, served from `'self'`), which calls
//! `navigator.credentials` and posts the result with the form's CSRF token.

use axum::{
    body::Bytes,
    extract::{Path, State},
    http::{header, HeaderMap, StatusCode, Uri},
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
    Json, Router,
};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use maud::{html, Markup};

use super::{cookie, foreign, pages, same_token, Form, Viewer, PRE_COOKIE};
use crate::{
    api::{self, ApiError, ApiResult, ConnInfo},
    authz::{Action, Object},
    domain::session::Session,
    security_keys::{self, fingerprint},
    store::{ChallengePurpose, Credential},
    App,
};

use super::i18n::{Lang, Msg};

const SCRIPT: &str = include_str!("webauthn.js");

/// The routes of this module, merged into the console's router.
pub fn routes() -> Router<App> {
    Router::new()
        .route("/console-webauthn.js", get(script))
        .route("/login/key-challenge", post(login_challenge))
        .route("/account/keys", get(keys_page).post(register))
        .route("/account/keys/challenge", post(register_challenge))
        .route("/account/keys/{id}/remove", post(remove))
        .route("/sessions/{name}/sign", get(sign_page).post(sign))
}

async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        SCRIPT,
    )
        .into_response()
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

// ---------------------------------------------------------------- login

/// A challenge for the login form's security key, asked before the password is checked: the
/// form's pre-login token (double submit) must come with it. The key is found by the browser
/// (a discoverable credential); nothing here says whether a user has keys.
async fn login_challenge(
    State(app): State<App>,
    uri: Uri,
    headers: HeaderMap,
    info: Option<axum::Extension<ConnInfo>>,
    body: Bytes,
) -> Response {
    let form = Form::parse(&body);
    let pre = cookie(&headers, PRE_COOKIE).unwrap_or_default();
    if foreign(&headers, &uri) || !same_token(pre, form.get("csrf").unwrap_or_default()) {
        return (StatusCode::FORBIDDEN, "form token missing or wrong").into_response();
    }
    // Asked before any login: each draws on its source's allowance of login attempts, so no
    // one source fills the pending challenges.
    let source = info.map(|i| i.remote.ip());
    if app.limits.source_exhausted(source) {
        return (StatusCode::TOO_MANY_REQUESTS, "too many attempts; wait a few seconds")
            .into_response();
    }
    app.limits.source_failed(source);
    let res = async {
        let rp = security_keys::relying_party(&app)?;
        let challenge = security_keys::new_challenge(&app, ChallengePurpose::Login, None).await?;
        Ok::<_, ApiError>(serde_json::json!({ "challenge": b64(&challenge), "rp_id": rp.id }))
    }
    .await;
    json_answer(res)
}

fn json_answer(res: ApiResult<serde_json::Value>) -> Response {
    match res {
        Ok(v) => Json(v).into_response(),
        Err(e) => (e.status(), e.message().to_owned()).into_response(),
    }
}

/// The login form's security key, if it carries one: the second factor in place of a code.
pub fn login_factor(app: &App, form: &Form) -> Option<api::account::KeyFactor> {
    let assertion = form.get("assertion").map(str::trim).filter(|a| !a.is_empty())?;
    let rp = security_keys::relying_party(app).ok()?;
    Some(api::account::KeyFactor {
        assertion: assertion.to_owned(),
        rp_id: rp.id,
        origin: rp.origin,
    })
}

/// The login form's part: a button that asks the security key (with the script), and the
/// field its answer goes in.
pub fn login_button(lang: Lang) -> Markup {
    let t = |m: Msg| m.text(lang);
    html! {
        input #assertion type="hidden" name="assertion" value="";
        button #wa-login type="button" data-error=(t(Msg::KeyFailed)) { (t(Msg::KeyLogin)) }
        div #wa-error .error role="alert" hidden {}
        script src="/console-webauthn.js" defer {}
    }
}

// ---------------------------------------------------------------- the key page

async fn keys_page(State(app): State<App>, v: Viewer) -> Response {
    let keys = match security_keys::list(&app, &v.a).await {
        Ok(k) => k,
        Err(e) => return v.api_error(&e),
    };
    let done = v.query.get("done").map(String::as_str);
    v.page(StatusCode::OK, keys_markup(&v, &keys, done))
}

fn keys_markup(v: &Viewer, keys: &[Credential], done: Option<&str>) -> Markup {
    let lang = v.ui.lang;
    let t = |m: Msg| m.text(lang);
    let body = html! {
        h1 { (t(Msg::KeysTitle)) }
        @match done {
            Some("added") => p.note role="status" { (t(Msg::KeyAdded)) },
            Some("removed") => p.note role="status" { (t(Msg::KeyRemoved)) },
            _ => {},
        }
        p { (t(Msg::KeysIntro)) }
        @if keys.is_empty() {
            p.empty { (t(Msg::NoKeys)) }
        } @else {
            div.scroll { table {
                thead { tr {
                    th scope="col" { (t(Msg::ColKeyName)) }
                    th scope="col" { (t(Msg::ColFingerprint)) }
                    th scope="col" { (t(Msg::ColAdded)) }
                    th scope="col" { (t(Msg::ColLastUsed)) }
                    th scope="col" { (t(Msg::ColActions)) }
                } }
                tbody { @for k in keys {
                    tr.key {
                        td { (k.name) }
                        td { code { (fingerprint(k)) } }
                        td { (crate::util::rfc3339(k.created_at)) }
                        td { (k.last_used.map(crate::util::rfc3339).unwrap_or_else(|| "–".into())) }
                        td { form.inline method="post" action={ "/account/keys/" (k.id) "/remove" } {
                            input type="hidden" name="csrf" value=(v.csrf);
                            button.reject type="submit" aria-label={ (t(Msg::KeyRemove)) " " (k.name) } { (t(Msg::KeyRemove)) }
                        } }
                    }
                } }
            } }
            section aria-labelledby="for-operator" {
                h2 #for-operator { (t(Msg::KeysForOperator)) }
                p { (t(Msg::KeysForOperatorText)) }
                pre { code #agent-line {
                    "[trust]\napprovers = ["
                    @for (i, k) in keys.iter().enumerate() {
                        @if i > 0 { ", " }
                        "\"" (k.public_key) "\""
                    }
                    "]"
                } }
            }
        }
        section aria-labelledby="add-key" {
            h2 #add-key { (t(Msg::KeyAddTitle)) }
            form #wa-register .login method="post" action="/account/keys" data-error=(t(Msg::KeyFailed)) {
                input type="hidden" name="csrf" value=(v.csrf);
                input type="hidden" name="attestation" value="";
                input type="hidden" name="client_data" value="";
                label for="key-name" { (t(Msg::ColKeyName)) }
                input #key-name name="name" type="text" required maxlength="64";
                button type="submit" { (t(Msg::KeyAdd)) }
            }
            div #wa-error .error role="alert" hidden {}
            script src="/console-webauthn.js" defer {}
        }
    };
    pages::layout(&v.frame(), Msg::KeysTitle, body)
}

/// The options of `navigator.credentials.create` for the viewer: a fresh challenge, and the
/// keys they have (not registered twice).
async fn register_challenge(State(app): State<App>, v: Viewer, body: Bytes) -> Response {
    let form = Form::parse(&body);
    if let Err(res) = v.check_form(&app, &form, "webauthn.add", &v.a.caller.name).await {
        return res;
    }
    let res = async {
        let keys = security_keys::list(&app, &v.a).await?;
        let rp = security_keys::relying_party(&app)?;
        let c = &v.a.caller;
        let challenge =
            security_keys::new_challenge(&app, ChallengePurpose::Register, Some(c.user_id)).await?;
        Ok(serde_json::json!({
            "challenge": b64(&challenge),
            "rp": { "id": rp.id, "name": Msg::Product.text(v.ui.lang) },
            "user": { "id": b64(&c.user_id.to_be_bytes()), "name": c.name },
            "exclude": keys.iter().map(|k| k.credential_id.clone()).collect::<Vec<_>>(),
        }))
    }
    .await;
    json_answer(res)
}

async fn register(State(app): State<App>, v: Viewer, body: Bytes) -> Response {
    let form = Form::parse(&body);
    if let Err(res) = v.check_form(&app, &form, "webauthn.add", &v.a.caller.name).await {
        return res;
    }
    let get = |k| form.get(k).unwrap_or_default();
    match security_keys::register(&app, &v.a, get("name"), get("attestation"), get("client_data"))
        .await
    {
        Ok(_) => v.ui.remember(Redirect::to("/account/keys?done=added").into_response()),
        Err(e) => v.api_error(&e),
    }
}

async fn remove(State(app): State<App>, v: Viewer, Path(id): Path<i64>, body: Bytes) -> Response {
    let form = Form::parse(&body);
    if let Err(res) = v.check_form(&app, &form, "webauthn.remove", &id.to_string()).await {
        return res;
    }
    match security_keys::remove(&app, &v.a, id).await {
        Ok(()) => v.ui.remember(Redirect::to("/account/keys?done=removed").into_response()),
        Err(e) => v.api_error(&e),
    }
}

// ---------------------------------------------------------------- approvals signed here

async fn approvable(app: &App, v: &Viewer, name: &str) -> ApiResult<Session> {
    let n = name.to_owned();
    let s = app
        .store
        .run(move |b| b.session_by_name(&n))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no session {name}")))?;
    v.a.allow(app, Action::SessionApprove, Object::Session(&s))?;
    Ok(s)
}

/// The page where the approver signs a session's grant with their security key: what is
/// signed, and the button.
async fn sign_page(State(app): State<App>, v: Viewer, Path(name): Path<String>) -> Response {
    let res = async {
        let s = approvable(&app, &v, &name).await?;
        let keys = security_keys::list(&app, &v.a).await?;
        let rp = security_keys::relying_party(&app)?;
        Ok::<_, ApiError>((s, keys, rp))
    }
    .await;
    let (s, keys, rp) = match res {
        Ok(x) => x,
        Err(e) => return v.api_error(&e),
    };
    let lang = v.ui.lang;
    let t = |m: Msg| m.text(lang);
    let challenge = b64(&security_keys::approval_challenge(&s));
    let allow: Vec<&str> = keys.iter().map(|k| k.credential_id.as_str()).collect();
    let body = html! {
        h1 { (t(Msg::SignTitle)) " " (s.name) }
        p { (t(Msg::SignIntro)) }
        dl {
            dt { (t(Msg::ColMachine)) } dd { (s.machine) }
            dt { (t(Msg::ColTargets)) } dd { (s.targets.join(", ")) }
            dt { (t(Msg::ColTechnicians)) } dd { (s.user_names().join(", ")) }
            dt { (t(Msg::ColWindow)) } dd { (crate::util::rfc3339(s.from)) " " (t(Msg::WindowTo)) " " (crate::util::rfc3339(s.until)) }
            dt { (t(Msg::ColReason)) } dd { (s.reason) }
            dt { (t(Msg::SignRecording)) } dd { (t(if s.record { Msg::Yes } else { Msg::No })) }
            dt { (t(Msg::SignTechKeys)) } dd { (s.tech_keys.len()) }
        }
        p.note { (t(Msg::SignReload)) }
        @if keys.is_empty() {
            p.error { (t(Msg::NoKeys)) " " a href="/account/keys" { (t(Msg::KeysTitle)) } }
        } @else {
            form #wa-sign method="post" action={ "/sessions/" (s.name) "/sign" }
                data-challenge=(challenge) data-rp=(rp.id) data-allow=(allow.join(","))
                data-error=(t(Msg::KeyFailed)) {
                input type="hidden" name="csrf" value=(v.csrf);
                input type="hidden" name="assertion" value="";
                button.approve type="submit" { (t(Msg::SignButton)) }
            }
            div #wa-error .error role="alert" hidden {}
            script src="/console-webauthn.js" defer {}
        }
    };
    v.page(StatusCode::OK, pages::layout(&v.frame(), Msg::SignTitle, body))
}

async fn sign(
    State(app): State<App>,
    v: Viewer,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let form = Form::parse(&body);
    if let Err(res) = v.check_form(&app, &form, Action::SessionApprove.as_str(), &name).await {
        return res;
    }
    let res = async {
        let s = approvable(&app, &v, &name).await?;
        let approve =
            security_keys::approval_body(&app, &v.a, &s, form.get("assertion").unwrap_or_default())
                .await?;
        api::sessions::decide(&app, &v.a, &name, "approve", &approve).await
    }
    .await;
    if let Err(e) = res {
        return v.api_error(&e);
    }
    let to = format!(
        "/sessions?done=approve&session={}",
        url::form_urlencoded::byte_serialize(name.as_bytes()).collect::<String>()
    );
    v.ui.remember(Redirect::to(&to).into_response())
}
