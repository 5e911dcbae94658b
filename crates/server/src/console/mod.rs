//! The web console on the server's one TLS port: server-rendered HTML; one small script of
//! our own, for security keys ([`webauthn`]).
//!
//! A console login is an API login kept in a cookie (`__Host-fernwart`: Secure, HttpOnly,
//! SameSite=Strict, Path=/): made by the same [`api::account::authenticate`] (lockout,
//! delays, audit), checked on every request by the same [`Authed::from_token`] (expiry, idle
//! timeout), and every action goes through the API's own code path and [`authz`]. Every form
//! carries a token derived from the login (HMAC-SHA256 keyed with the login token); a POST
//! whose token is missing or wrong, or that comes from another site, is refused and recorded
//! as `access.refused`. The login form itself is protected the same way by a random
//! pre-login cookie (double submit), against login CSRF.

use std::collections::HashMap;

use axum::{
    body::Bytes,
    extract::{FromRequestParts, Path, RawQuery, State},
    http::{header, request::Parts, HeaderMap, HeaderValue, Method, StatusCode, Uri},
    middleware,
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
    Router,
};
use fernwart_api::{LoginRequest, Scope};
use hmac::{Hmac, Mac};
use maud::Markup;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::{
    api::{self, ApiError, Authed, ConnInfo},
    audit::{Entry, Event},
    authz::{self, Action, Object},
    domain::names,
    util, App,
};

mod account;
mod admin;
pub mod i18n;
mod live;
mod pages;
mod sessions;
mod trail;
pub mod view;
mod webauthn;

use i18n::{Lang, Msg};
use pages::{Frame, LoginNote};
use view::{Done, MachineRow, SessionActions, SessionRow};

/// The login cookie. `__Host-`: the browser keeps it only if Secure, Path=/ and without
/// Domain, so no sibling host can set or shadow it.
pub const LOGIN_COOKIE: &str = "__Host-fernwart";
/// The login form's double-submit token, before there is a login.
pub const PRE_COOKIE: &str = "__Host-fernwart-pre";
/// The header the console's script sends when it refreshes a page on a live update.
pub const LIVE_HEADER: &str = "x-fernwart-live";
/// The chosen language (not secret).
pub const LANG_COOKIE: &str = "__Host-fernwart-lang";

/// The Content-Security-Policy of every console answer: our own stylesheet and scripts (one
/// fetches pages and listens to `/events` of this origin, one fetches security key challenges),
/// nothing else.
pub const CSP: &str = "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const CSS: &str = include_str!("console.css");

/// The console's routes, merged into the API's router (one port, one TLS stack).
pub fn router() -> Router<App> {
    Router::new()
        .route("/", get(dashboard))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/sessions", get(sessions_page))
        .route("/sessions/new", get(sessions::new_page).post(sessions::create))
        .route("/sessions/{name}", get(sessions::show))
        .route("/sessions/{name}/{action}", post(session_action))
        .route("/machines", get(admin::machines_page))
        .route("/machines/new", post(admin::machine_add))
        .route("/machines/{name}/revoke", post(admin::machine_revoke))
        .route("/users", get(admin::users_page))
        .route("/users/new", post(admin::user_add))
        .route("/users/{name}/disable", post(admin::user_disable))
        .route("/orgs", get(admin::orgs_page))
        .route("/orgs/new", post(admin::org_add))
        .route("/orgs/{name}/rules", post(admin::org_set))
        .route("/contracts/new", post(admin::contract_add))
        .route(account::MFA_PAGE, get(account::mfa_page))
        .route("/account/mfa/enroll", post(account::mfa_enroll))
        .route("/account/mfa/confirm", post(account::mfa_confirm))
        .route("/settings", get(admin::settings_page).post(admin::settings_set))
        .route("/audit", get(trail::audit_page))
        .route("/audit/export.csv", get(trail::export_csv))
        .route("/audit/export.jsonl", get(trail::export_jsonl))
        .route("/console.css", get(css))
        .route("/console.js", get(live::script))
        .route("/events", get(live::events))
        .route("/connections/{id}/cut", post(live::cut))
        .merge(webauthn::routes())
        .layer(middleware::map_response(security_headers))
}

/// The headers every console answer carries; pages are never stored (they show live data).
async fn security_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::HeaderName::from_static("cross-origin-opener-policy"), "same-origin"),
        (header::HeaderName::from_static("cross-origin-resource-policy"), "same-origin"),
        (
            header::HeaderName::from_static("permissions-policy"),
            "camera=(), microphone=(), geolocation=(), usb=(), serial=()",
        ),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    h.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    res
}

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        CSS,
    )
        .into_response()
}

// ---------------------------------------------------------------- requests

/// The language of a request, and whether `?lang=` chose it (then it is remembered).
#[derive(Debug, Clone, Copy)]
pub struct Ui {
    pub lang: Lang,
    chosen: bool,
}

impl Ui {
    pub fn of(parts: &Parts) -> Self {
        let asked = query(parts).get("lang").and_then(|l| Lang::parse(l));
        if let Some(lang) = asked {
            return Self { lang, chosen: true };
        }
        let lang = cookie(&parts.headers, LANG_COOKIE)
            .and_then(Lang::parse)
            .or_else(|| {
                parts
                    .headers
                    .get(header::ACCEPT_LANGUAGE)
                    .and_then(|v| v.to_str().ok())
                    .map(Lang::from_accept_language)
            })
            .unwrap_or_default();
        Self { lang, chosen: false }
    }

    /// Adds the language cookie when `?lang=` chose the language.
    fn remember(self, mut res: Response) -> Response {
        if self.chosen {
            let c = format!(
                "{LANG_COOKIE}={}; Secure; SameSite=Strict; Path=/; Max-Age=31536000",
                self.lang.tag()
            );
            append_cookie(&mut res, &c);
        }
        res
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Ui {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Ui::of(parts))
    }
}

/// A logged-in person looking at the console (a full login, with a second factor).
pub struct Viewer {
    pub a: Authed,
    pub ui: Ui,
    /// The token every form of this login carries.
    pub csrf: String,
    /// The request did not come from a page of this console (`Sec-Fetch-Site`, `Origin`).
    pub foreign: bool,
    pub path: String,
    pub query: HashMap<String, String>,
}

impl Viewer {
    fn frame(&self) -> Frame<'_> {
        let c = &self.a.caller;
        Frame { lang: self.ui.lang, path: &self.path, user: Some((&c.name, c.role, &self.csrf)) }
    }

    fn page(&self, status: StatusCode, markup: Markup) -> Response {
        self.ui.remember(html(status, markup))
    }

    fn error(&self, status: StatusCode, what: Msg, reason: Option<&str>) -> Response {
        self.page(status, pages::error(&self.frame(), what, reason))
    }

    /// The answer to a failed API call on behalf of the viewer: its reason, or (for a
    /// database failure) no detail.
    fn api_error(&self, e: &ApiError) -> Response {
        if e.status().is_server_error() {
            return self.error(e.status(), Msg::ErrorInternal, None);
        }
        if e.status() == StatusCode::UNAUTHORIZED {
            return login_again(self.ui);
        }
        self.error(e.status(), Msg::ErrorRefused, Some(e.message()))
    }

    /// Checks the form token and where the form came from. A refusal is recorded as the
    /// API's refusals are.
    async fn check_form(
        &self,
        app: &App,
        form: &Form,
        action: &'static str,
        object: &str,
    ) -> Result<(), Response> {
        let given = form.get("csrf").unwrap_or_default();
        if !self.foreign && same_token(&self.csrf, given) {
            return Ok(());
        }
        let c = &self.a.caller;
        let reason = if self.foreign {
            "console form from another site"
        } else if given.is_empty() {
            "console form without its CSRF token"
        } else {
            "console form with a wrong CSRF token"
        };
        let entry = Entry::new(
            &c.name,
            &c.source,
            Event::AccessRefused { action, object: object.to_owned(), reason: reason.to_owned() },
        );
        app.relay.audit.record_now(entry).await;
        Err(self.error(StatusCode::FORBIDDEN, Msg::ErrorForm, None))
    }
}

impl FromRequestParts<App> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        Viewer::extract(parts, app, false).await
    }
}

/// A viewer whose login may lack its second factor yet (a password-only login of an account
/// without one): it may only set one up ([`account`]) and log out; [`authz`] refuses it all
/// else anyway.
pub struct SetupViewer(pub Viewer);

impl FromRequestParts<App> for SetupViewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        Viewer::extract(parts, app, true).await.map(SetupViewer)
    }
}

impl Viewer {
    /// The viewer of a request; `setup_too`: a login without a second factor is taken too.
    async fn extract(parts: &mut Parts, app: &App, setup_too: bool) -> Result<Self, Response> {
        let ui = Ui::of(parts);
        let Some(token) = cookie(&parts.headers, LOGIN_COOKIE).and_then(api::token_shape) else {
            return Err(ui.remember(Redirect::to("/login").into_response()));
        };
        let token = token.to_owned();
        // The script's own refresh of a page (a live update) is not someone at work.
        let in_use = !parts.headers.contains_key(LIVE_HEADER);
        let info = parts.extensions.get::<ConnInfo>();
        let a = match Authed::from_token_as(app, &token, info, in_use).await {
            Ok(a) if a.caller.scope == Scope::Full || setup_too => a,
            Ok(_) => return Err(login_again(ui)),
            Err(e) if e.status() == StatusCode::UNAUTHORIZED => return Err(login_again(ui)),
            Err(e) => {
                tracing::warn!(status = %e.status(), error = e.message(), "console login check failed");
                let f = Frame { lang: ui.lang, path: "/", user: None };
                return Err(html(e.status(), pages::error(&f, Msg::ErrorInternal, None)));
            }
        };
        Ok(Viewer {
            a,
            ui,
            csrf: csrf_token(&token),
            foreign: foreign(&parts.headers, &parts.uri),
            // The language switch links to the page shown; after a form, that is the overview.
            path: if parts.method == Method::GET { parts.uri.path() } else { "/" }.to_owned(),
            query: query(parts),
        })
    }
}

/// The login is gone (ended, expired, idle): to the login page, with the cookie removed.
fn login_again(ui: Ui) -> Response {
    let mut res = Redirect::to("/login?ended=1").into_response();
    append_cookie(&mut res, &clear_cookie(LOGIN_COOKIE));
    ui.remember(res)
}

fn html(status: StatusCode, markup: Markup) -> Response {
    (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], markup.into_string())
        .into_response()
}

/// The value of cookie `name`, if the request carries it once.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let mut found = None;
    for v in headers.get_all(header::COOKIE) {
        let Ok(v) = v.to_str() else { continue };
        for pair in v.split(';') {
            if let Some((k, val)) = pair.trim().split_once('=') {
                if k == name {
                    if found.is_some() {
                        // Two of them: someone set a second one; trust neither.
                        return None;
                    }
                    found = Some(val.trim());
                }
            }
        }
    }
    found
}

fn append_cookie(res: &mut Response, cookie: &str) {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
}

fn secret_cookie(name: &str, value: &str) -> String {
    format!("{name}={value}; Secure; HttpOnly; SameSite=Strict; Path=/")
}

fn clear_cookie(name: &str) -> String {
    format!("{name}=; Secure; HttpOnly; SameSite=Strict; Path=/; Max-Age=0")
}

fn query(parts: &Parts) -> HashMap<String, String> {
    parse_query(parts.uri.query())
}

fn parse_query(q: Option<&str>) -> HashMap<String, String> {
    q.map(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .take(16)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    })
    .unwrap_or_default()
}

/// Whether the browser says the request comes from another site. `Sec-Fetch-Site` (set by
/// the browser, beyond a page's reach) decides where present: only same-origin and none (typed
/// by the user) pass. Else an `Origin` that is not this host is foreign (the host: HTTP/2's
/// `:authority`, which arrives in the URI, else the `Host` header). `Origin: null` alone
/// proves nothing: under `Referrer-Policy: no-referrer` browsers send it for our own forms;
/// the form token decides then.
pub fn foreign(headers: &HeaderMap, uri: &Uri) -> bool {
    let get = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    if let Some(site) = get("sec-fetch-site") {
        return site != "same-origin" && site != "none";
    }
    let host = uri.authority().map(|a| a.as_str()).or_else(|| get("host"));
    match (get("origin"), host) {
        (None | Some("null"), _) => false,
        (Some(origin), Some(host)) => {
            !origin.strip_prefix("https://").is_some_and(|o| o.eq_ignore_ascii_case(host))
        }
        (Some(_), None) => true,
    }
}

/// The form token of the login whose token is `login_token`: only who holds the login (the
/// HttpOnly cookie) can know it; it changes with every login.
pub fn csrf_token(login_token: &str) -> String {
    // HMAC takes a key of any length; `new_from_slice` cannot fail for it.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(login_token.as_bytes()) else {
        return String::new();
    };
    mac.update(b"fernwart console form token v1");
    hex::encode(mac.finalize().into_bytes())
}

/// Compares form tokens in constant time; an empty expected token never matches.
pub fn same_token(expected: &str, given: &str) -> bool {
    !expected.is_empty() && bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
}

/// A form body (`application/x-www-form-urlencoded`); the last of a repeated field counts.
struct Form(HashMap<String, String>);

impl Form {
    fn parse(body: &[u8]) -> Self {
        Form(
            url::form_urlencoded::parse(body)
                .take(32)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
}

// ---------------------------------------------------------------- login, logout

async fn login_page(ui: Ui, RawQuery(q): RawQuery) -> Response {
    let q = parse_query(q.as_deref());
    let note = if q.contains_key("ended") {
        LoginNote::Ended
    } else if q.contains_key("bye") {
        LoginNote::LoggedOut
    } else if q.contains_key("mfa") {
        LoginNote::MfaSetUp
    } else {
        LoginNote::None
    };
    login_form(ui, StatusCode::OK, "", note)
}

/// The login form with a fresh pre-login token (cookie and hidden field).
fn login_form(ui: Ui, status: StatusCode, user: &str, note: LoginNote) -> Response {
    let pre = util::random_token();
    let mut res = html(status, pages::login(ui.lang, &pre, user, note));
    append_cookie(&mut res, &secret_cookie(PRE_COOKIE, &pre));
    ui.remember(res)
}

async fn login(
    State(app): State<App>,
    ui: Ui,
    uri: Uri,
    headers: HeaderMap,
    info: Option<axum::Extension<ConnInfo>>,
    body: Bytes,
) -> Response {
    let form = Form::parse(&body);
    let user = form.get("user").unwrap_or_default().trim().to_owned();
    let shown_user = if names::valid(&user) { user.as_str() } else { "" };
    let pre = cookie(&headers, PRE_COOKIE).unwrap_or_default();
    if foreign(&headers, &uri) || !same_token(pre, form.get("csrf").unwrap_or_default()) {
        let src = api::source(info.as_deref());
        let actor = if shown_user.is_empty() { "unknown" } else { shown_user };
        let entry = Entry::new(
            actor,
            &src,
            Event::AccessRefused {
                action: "login",
                object: actor.to_owned(),
                reason: "console login form without its CSRF token, or from another site"
                    .to_owned(),
            },
        );
        app.relay.audit.record_now(entry).await;
        let f = Frame { lang: ui.lang, path: "/login", user: None };
        return ui.remember(html(StatusCode::FORBIDDEN, pages::error(&f, Msg::ErrorForm, None)));
    }
    let otp = form.get("otp").map(str::trim).filter(|o| !o.is_empty()).map(str::to_owned);
    let req = LoginRequest {
        user: user.clone(),
        password: form.get("password").unwrap_or_default().to_owned(),
        otp,
    };
    let key = webauthn::login_factor(&app, &form);
    let res = match api::account::authenticate_with(&app, info.as_deref(), req, key).await {
        Ok(r) => r,
        Err(e) => {
            let (status, note) = match e.status() {
                StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                    (e.status(), LoginNote::TooFast)
                }
                s if s.is_server_error() => (s, LoginNote::Invalid),
                _ => (StatusCode::UNAUTHORIZED, LoginNote::Invalid),
            };
            return login_form(ui, status, shown_user, note);
        }
    };
    // A login without a second factor may only set one up: to that page.
    let to = if res.scope == Scope::Full { "/" } else { account::MFA_PAGE };
    let mut r = Redirect::to(to).into_response();
    append_cookie(&mut r, &secret_cookie(LOGIN_COOKIE, &res.token));
    append_cookie(&mut r, &clear_cookie(PRE_COOKIE));
    ui.remember(r)
}

async fn logout(State(app): State<App>, SetupViewer(v): SetupViewer, body: Bytes) -> Response {
    let form = Form::parse(&body);
    if let Err(res) = v.check_form(&app, &form, "logout", &v.a.caller.name).await {
        return res;
    }
    if let Err(e) = api::account::end_login(&app, &v.a).await {
        return v.api_error(&e);
    }
    let mut r = Redirect::to("/login?bye=1").into_response();
    append_cookie(&mut r, &clear_cookie(LOGIN_COOKIE));
    v.ui.remember(r)
}

// ---------------------------------------------------------------- pages

async fn dashboard(State(app): State<App>, v: Viewer) -> Response {
    let c = v.a.caller.clone();
    let now = util::now();
    let sees_machines = authz::decide(&c, Action::MachineList, Object::None, now).is_ok();
    let sees_sessions = authz::decide(&c, Action::SessionList, Object::None, now).is_ok();
    let machines = if sees_machines {
        match machine_rows(&app, &c).await {
            Ok(m) => Some(m),
            Err(e) => return v.api_error(&e),
        }
    } else {
        None
    };
    let waiting = if sees_sessions {
        match session_rows(&app, &c, true).await {
            Ok(s) => Some(s),
            Err(e) => return v.api_error(&e),
        }
    } else {
        None
    };
    let connections = if sees_sessions {
        match live::connection_rows(&app, &c).await {
            Ok(rows) => Some(rows),
            Err(e) => return v.api_error(&e),
        }
    } else {
        None
    };
    let done = Done::parse(
        v.query.get("done").map(String::as_str),
        v.query.get("session").map(String::as_str),
    );
    v.page(
        StatusCode::OK,
        pages::dashboard(
            &v.frame(),
            done.as_ref(),
            machines.as_deref(),
            waiting.as_deref(),
            connections.as_deref(),
            &v.csrf,
        ),
    )
}

async fn sessions_page(State(app): State<App>, v: Viewer) -> Response {
    if let Err(e) = v.a.allow(&app, Action::SessionList, Object::None) {
        return v.api_error(&e);
    }
    let rows = match session_rows(&app, &v.a.caller, false).await {
        Ok(r) => r,
        Err(e) => return v.api_error(&e),
    };
    let done = Done::parse(
        v.query.get("done").map(String::as_str),
        v.query.get("session").map(String::as_str),
    );
    let prepares =
        authz::decide(&v.a.caller, Action::SessionCreate, Object::None, util::now()).is_ok();
    v.page(StatusCode::OK, pages::sessions(&v.frame(), done.as_ref(), &rows, prepares, &v.csrf))
}

async fn machine_rows(app: &App, c: &crate::domain::Caller) -> Result<Vec<MachineRow>, ApiError> {
    let org = authz::machine_scope(c);
    let (machines, certs) =
        app.store.run(move |b| Ok((b.machines(org.as_deref())?, b.machine_cert_ends()?))).await?;
    let certs: HashMap<String, i64> = certs.into_iter().collect();
    Ok(machines
        .into_iter()
        .map(|m| {
            let live = app.relay.hub.online(m.id).zip(app.relay.hub.software(m.id));
            let cert = certs.get(&m.name).copied();
            MachineRow::new(m, live, cert)
        })
        .collect())
}

/// The sessions the caller may see (only those waiting for approval: `waiting_only`), each
/// with the buttons the caller may press.
async fn session_rows(
    app: &App,
    c: &crate::domain::Caller,
    waiting_only: bool,
) -> Result<Vec<SessionRow>, ApiError> {
    let scope = authz::session_scope(c);
    let (list, signed) = app
        .store
        .run(move |b| {
            let list: Vec<_> = b
                .sessions(scope.only_user, scope.org.as_deref())?
                .into_iter()
                .filter(|s| !waiting_only || view::waiting(s))
                .collect();
            // Whose approvals must be signed: asked only for sessions still waiting.
            let mut signed = HashMap::new();
            for s in list.iter().filter(|s| view::waiting(s)) {
                if let std::collections::hash_map::Entry::Vacant(e) = signed.entry(s.machine_id) {
                    e.insert(b.signing_facts(s.machine_id)?.required());
                }
            }
            Ok((list, signed))
        })
        .await?;
    let now = util::now();
    Ok(list
        .iter()
        .map(|s| {
            let required = signed.get(&s.machine_id).copied().unwrap_or(false);
            SessionRow::new(s, SessionActions::decide(c, s, required, now))
        })
        .collect())
}

/// A session's button: approve, reject or end, through the API's own code path.
async fn session_action(
    State(app): State<App>,
    v: Viewer,
    Path((name, action)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let form = Form::parse(&body);
    let audit_action = match action.as_str() {
        "approve" => Action::SessionApprove,
        "reject" => Action::SessionReject,
        "end" => Action::SessionEnd,
        _ => return v.error(StatusCode::NOT_FOUND, Msg::ErrorNotFound, None),
    };
    if let Err(res) = v.check_form(&app, &form, audit_action.as_str(), &name).await {
        return res;
    }
    // An unsigned approval: a machine that takes only signed ones refuses it in `authz`.
    if let Err(e) = api::sessions::decide(&app, &v.a, &name, &action, b"").await {
        return v.api_error(&e);
    }
    let own_page = format!("/sessions/{name}");
    let back = match form.get("back") {
        Some("/sessions") => "/sessions",
        Some(b) if b == own_page => &own_page,
        _ => "/",
    };
    let to = format!(
        "{back}?done={action}&session={}",
        url::form_urlencoded::byte_serialize(name.as_bytes()).collect::<String>()
    );
    v.ui.remember(Redirect::to(&to).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_tokens_belong_to_their_login() {
        let a = csrf_token("fw_login-a");
        assert_eq!(a.len(), 64);
        assert_eq!(a, csrf_token("fw_login-a"));
        assert_ne!(a, csrf_token("fw_login-b"));
        assert!(same_token(&a, &a));
        assert!(!same_token(&a, ""));
        assert!(!same_token(&a, &a[..63]));
        assert!(!same_token(&a, &csrf_token("fw_login-b")));
        assert!(!same_token("", ""));
    }

    #[test]
    fn cookies_are_read_once_and_exactly() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=1; __Host-fernwart=tok; b=2"));
        assert_eq!(cookie(&h, LOGIN_COOKIE), Some("tok"));
        assert_eq!(cookie(&h, "__Host-fernwar"), None);
        h.append(header::COOKIE, HeaderValue::from_static("__Host-fernwart=other"));
        assert_eq!(cookie(&h, LOGIN_COOKIE), None, "two login cookies: neither is trusted");
    }

    #[test]
    fn requests_from_other_sites_are_foreign() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("fw.example:8443"));
        let path = Uri::from_static("/login");
        let foreign = |h: &HeaderMap| foreign(h, &path);
        assert!(!foreign(&h), "no Origin, no Sec-Fetch-Site: a plain client");
        h.insert(header::ORIGIN, HeaderValue::from_static("https://fw.example:8443"));
        assert!(!foreign(&h));
        h.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        assert!(!foreign(&h));
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(foreign(&h));
        h.insert("sec-fetch-site", HeaderValue::from_static("same-site"));
        assert!(foreign(&h));
        h.remove("sec-fetch-site");
        h.insert(header::ORIGIN, HeaderValue::from_static("https://evil.example"));
        assert!(foreign(&h));
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(!foreign(&h), "no-referrer pages send Origin: null; the token decides");
        h.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        assert!(!foreign(&h), "a form of our own under no-referrer");
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(foreign(&h));
        h.remove("sec-fetch-site");
        h.insert(header::ORIGIN, HeaderValue::from_static("http://fw.example:8443"));
        assert!(foreign(&h), "not over TLS");
        // HTTP/2: the host is the URI's authority, there is no Host header.
        let mut h2 = HeaderMap::new();
        h2.insert(header::ORIGIN, HeaderValue::from_static("https://fw.example:8443"));
        assert!(!super::foreign(&h2, &Uri::from_static("https://fw.example:8443/login")));
        assert!(super::foreign(&h2, &Uri::from_static("https://other.example/login")));
        assert!(super::foreign(&h2, &path), "no host at all");
    }

    #[test]
    fn pages_escape_what_users_typed() {
        let row = SessionRow {
            name: "s1".into(),
            state: crate::domain::SessionState::Requested,
            approval_required: true,
            machine: "m1".into(),
            targets: vec!["plc".into()],
            users: vec!["tech1".into()],
            from: "2026-01-01T00:00:00Z".into(),
            until: "2026-01-01T01:00:00Z".into(),
            reason: "<script>alert(1)</script>".into(),
            created_by: "admin".into(),
            decided_by: None,
            actions: SessionActions { approve: true, ..Default::default() },
        };
        let f = Frame {
            lang: Lang::De,
            path: "/sessions",
            user: Some(("op1", crate::domain::Role::Approver, "tok")),
        };
        let page = pages::sessions(&f, None, &[row], false, "tok").into_string();
        assert!(!page.contains("<script>"), "{page}");
        assert!(page.contains("&lt;script&gt;"));
        assert!(page.contains(r#"action="/sessions/s1/approve""#));
        assert!(page.contains(r#"name="csrf" value="tok""#));
        assert!(page.contains(Msg::Approve.text(Lang::De)));
        assert!(page.contains(r#"<html lang="de">"#));
        assert!(!page.contains("style="), "the CSP allows no inline style");
    }
}
