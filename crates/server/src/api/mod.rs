//! The JSON API and the link endpoints (HTTPS upgraded to HTTP/2), all on the one TLS port.
//!
//! HTTP only: each handler extracts, asks [`authz::decide`], calls the store, answers with a
//! type of `fernwart_api`. One file per resource.

use axum::{
    extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request},
    http::{header, request::Parts, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, patch, post},
    Json, Router,
};
use fernwart_api::{ErrorBody, Health};
use serde::de::DeserializeOwned;

use crate::{
    authz::{self, Action, Denial, Object, Refusal},
    domain::Caller,
    sessions::ApplyError,
    store::StoreError,
    util, App,
};

pub(crate) mod account;
pub(crate) mod audit;
mod limits;
mod links;
mod machine_audit;
pub(crate) mod machines;
pub(crate) mod orgs;
mod recordings;
mod serve;
pub(crate) mod sessions;
pub(crate) mod settings;
mod tokens;
pub(crate) mod users;
mod windows;

pub use limits::{LimitError, Limits};
pub use serve::{serve, source_key, ConnInfo};

/// The most any API request body may be.
const MAX_BODY: usize = 64 * 1024;

pub fn router(app: App) -> Router {
    Router::new()
        .route("/v1/health", get(|| async { Json(Health { ok: true }) }))
        .route("/v1/login", post(account::login))
        .route("/v1/logout", post(account::logout))
        .route("/v1/passwd", post(account::passwd))
        .route("/v1/mfa/enroll", post(account::mfa_enroll))
        .route("/v1/mfa/confirm", post(account::mfa_confirm))
        .route("/v1/users", post(users::add).get(users::list))
        .route("/v1/users/{name}/disable", post(users::disable))
        .route("/v1/machines", post(machines::add).get(machines::list))
        .route("/v1/machines/{name}/revoke", post(machines::revoke))
        .route("/v1/machines/{name}/audit", get(machine_audit::list))
        .route("/v1/enroll", post(machines::enroll))
        .route("/v1/sessions", post(sessions::create).get(sessions::list))
        .route("/v1/sessions/{name}", get(sessions::show))
        .route("/v1/sessions/{name}/grant", get(sessions::grant))
        .route("/v1/sessions/{name}/{action}", post(sessions::action))
        .route("/v1/audit", get(audit::list))
        .route("/v1/audit/export", get(audit::export))
        .route("/v1/tokens", post(tokens::create).get(tokens::list))
        .route("/v1/orgs", post(orgs::add).get(orgs::list))
        .route("/v1/orgs/{name}", patch(orgs::set))
        .route("/v1/contracts", post(orgs::contract_add))
        .route("/v1/windows", post(windows::add).get(windows::list))
        .route("/v1/windows/{id}/remove", post(windows::remove))
        .route("/v1/tokens/{id}/revoke", post(tokens::revoke))
        .route("/v1/recordings", get(recordings::list))
        .route("/v1/recordings/{id}", get(recordings::fetch))
        .route("/v1/agent/link", get(links::agent))
        .route("/v1/connect/{name}", get(links::connect))
        .route("/v1/account/keys", get(account::security_keys))
        .route("/v1/settings", get(settings::list).patch(settings::set))
        .merge(crate::console::router())
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(app)
}

// ---------------------------------------------------------------- errors

#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl ApiError {
    pub fn new(code: StatusCode, msg: impl Into<String>) -> Self {
        Self(code, msg.into())
    }
    pub fn bad(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, msg)
    }
    pub fn forbidden(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, msg)
    }
    pub fn not_found(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, msg)
    }
    pub fn conflict(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, msg)
    }
    pub fn unauthorized(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, msg)
    }
    pub fn status(&self) -> StatusCode {
        self.0
    }
    /// The one-line reason.
    pub fn message(&self) -> &str {
        &self.1
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(m) => Self::conflict(m),
            StoreError::NotFound(m) => Self::not_found(m),
            StoreError::Invalid(m) => Self::bad(m),
            StoreError::Forbidden(m) => Self::forbidden(m),
            StoreError::Refused(r) => r.into(),
            e => {
                tracing::error!(error = ?e, "database error");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal database error")
            }
        }
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        let code = match r.denial {
            Denial::Unauthenticated => StatusCode::UNAUTHORIZED,
            Denial::Forbidden => StatusCode::FORBIDDEN,
            Denial::Hidden => StatusCode::NOT_FOUND,
        };
        Self::new(code, r.reason)
    }
}

impl From<ApplyError> for ApiError {
    fn from(e: ApplyError) -> Self {
        match e {
            ApplyError::Gone(_) => Self::not_found(e.to_string()),
            ApplyError::Refused { .. } | ApplyError::Busy(_) => Self::conflict(e.to_string()),
            ApplyError::Store(e) => e.into(),
        }
    }
}

impl From<LimitError> for ApiError {
    fn from(e: LimitError) -> Self {
        let code = match e {
            LimitError::TooFast => StatusCode::TOO_MANY_REQUESTS,
            LimitError::Busy => StatusCode::SERVICE_UNAVAILABLE,
        };
        Self::new(code, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// A JSON body whose problems are answered as `{"error": ...}` with 400 (or 413), like every
/// other failure.
pub struct Body<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(e) => Err(ApiError::new(
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    e.status()
                } else {
                    StatusCode::BAD_REQUEST
                },
                e.body_text(),
            )),
        }
    }
}

/// The caller's IP address, as recorded in the audit trail.
pub fn source(info: Option<&ConnInfo>) -> String {
    info.map(|i| i.remote.ip().to_string()).unwrap_or_default()
}

// ---------------------------------------------------------------- authentication

/// A request with a login token; what it may do is decided per action with [`Authed::allow`].
pub struct Authed {
    pub caller: Caller,
    /// The token's hash: links keep it to check the login again at every tunnel.
    pub token_hash: String,
}

impl Authed {
    /// Asks the authorization rules whether the caller may take `action` on `object` now.
    /// A refusal is recorded in the audit trail (a login that is no longer valid is not: it
    /// did not get this far as anyone).
    pub fn allow(&self, app: &App, action: Action, object: Object<'_>) -> ApiResult<()> {
        authz::decide(&self.caller, action, object, util::now())
            .map_err(|r| self.refused(app, action, object.name(), r))
    }

    /// Records a refusal of the authorization rules (decided here or inside a store
    /// transaction) and turns it into the answer.
    pub fn refused(&self, app: &App, action: Action, object: &str, r: Refusal) -> ApiError {
        if r.denial != Denial::Unauthenticated {
            let c = &self.caller;
            app.relay.audit.record(crate::audit::Entry::new(
                &c.name,
                &c.source,
                crate::audit::Event::AccessRefused {
                    action: action.as_str(),
                    object: object.to_owned(),
                    reason: r.reason.clone(),
                },
            ));
        }
        r.into()
    }
}

impl Authed {
    /// Checks a login token however it came (a bearer header, the console's cookie): the same
    /// validity, idle timeout and audit for both.
    pub async fn from_token(app: &App, token: &str, info: Option<&ConnInfo>) -> ApiResult<Self> {
        Self::from_token_as(app, token, info, true).await
    }

    /// [`Authed::from_token`]; `counts_as_use`: false for a console page that refreshes itself
    /// on a live update, which is checked like any request but does not keep the login from
    /// going idle (a page left open is no one at work).
    pub async fn from_token_as(
        app: &App,
        token: &str,
        info: Option<&ConnInfo>,
        counts_as_use: bool,
    ) -> ApiResult<Self> {
        let token_hash = util::token_hash(token);
        let hash = token_hash.clone();
        let caller = app.store.run(move |b| b.caller(&hash)).await?;
        let Some(mut caller) = caller else {
            return Err(ApiError::unauthorized("login invalid or expired: run `fernwart login`"));
        };
        caller.source = source(info);
        // Expired logins and accounts, disabled users: refused for every action alike.
        let now = util::now();
        authz::authenticated(&caller, now)?;
        if let Some(last) = caller.last_used {
            let idle = i64::try_from(app.settings.get().idle_timeout.as_secs()).unwrap_or(i64::MAX);
            if now - last >= idle {
                let entry = crate::audit::Entry::new(
                    &caller.name,
                    &caller.source,
                    crate::audit::Event::LoginEnded {
                        user: caller.name.clone(),
                        reason: format!("unused for {} min", (now - last) / 60),
                    },
                );
                let hash = token_hash.clone();
                app.store.run(move |b| b.logout(&hash, &entry)).await?;
                return Err(ApiError::unauthorized("login unused too long: run `fernwart login`"));
            }
            // Written at most once a minute (or a third of the timeout): the idle clock needs
            // no finer grain.
            if counts_as_use && now - last >= (idle / 3).clamp(1, 60) {
                let hash = token_hash.clone();
                app.store.run(move |b| b.login_used(&hash, now)).await?;
            }
        }
        // A full login (second factor) is someone known: the connection no longer counts
        // against its source (technicians behind one NAT address).
        if let (Some(info), fernwart_api::Scope::Full) = (info, caller.scope) {
            info.slots.proven();
        }
        Ok(Authed { caller, token_hash })
    }
}

/// A login token as the API and the console accept it: not empty, at most 128 bytes.
pub fn token_shape(token: &str) -> Option<&str> {
    let t = token.trim();
    (!t.is_empty() && t.len() <= 128).then_some(t)
}

impl FromRequestParts<App> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .and_then(token_shape)
            .ok_or_else(|| ApiError::unauthorized("not logged in: run `fernwart login`"))?;
        Authed::from_token(app, token, parts.extensions.get::<ConnInfo>()).await
    }
}
