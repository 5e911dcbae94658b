//! The JSON API and the link endpoints (HTTPS upgraded to HTTP/2), all on the one TLS port.

use axum::{
    extract::{DefaultBodyLimit, FromRequestParts, Path, Query, Request, State},
    http::{header, request::Parts, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use fernwart_proto::LINK_UPGRADE;
use fernwart_transport::{Mode, Mux};
use hyper_util::rt::TokioIo;
use rusqlite::{params, OptionalExtension};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{
    auth,
    relay::{agent_link, tech_link},
    sessions,
    store::{self, StoreError},
    util, App,
};

mod serve;
pub use serve::{serve, ConnInfo};

/// The most any API request body may be.
const MAX_BODY: usize = 64 * 1024;

pub fn router(app: App) -> Router {
    Router::new()
        .route("/", get(console))
        .route("/v1/health", get(|| async { Json(json!({"ok": true})) }))
        .route("/v1/login", post(login))
        .route("/v1/mfa/enroll", post(mfa_enroll))
        .route("/v1/mfa/confirm", post(mfa_confirm))
        .route("/v1/users", post(user_add).get(user_list))
        .route("/v1/users/{name}/disable", post(user_disable))
        .route("/v1/machines", post(machine_add).get(machine_list))
        .route("/v1/machines/{name}/revoke", post(machine_revoke))
        .route("/v1/enroll", post(enroll))
        .route("/v1/sessions", post(session_create).get(session_list))
        .route("/v1/sessions/{name}", get(session_show))
        .route("/v1/sessions/{name}/{action}", post(session_action))
        .route("/v1/audit", get(audit_list))
        .route("/v1/agent/link", get(agent_link_upgrade))
        .route("/v1/connect/{name}", get(connect_upgrade))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(app)
}

// ---------------------------------------------------------------- errors

pub struct ApiError(StatusCode, String);

impl ApiError {
    fn new(code: StatusCode, msg: impl Into<String>) -> Self {
        Self(code, msg.into())
    }
    fn bad(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, msg)
    }
    fn forbidden(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, msg)
    }
    fn not_found(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, msg)
    }
    fn conflict(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, msg)
    }
    fn unauthorized(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, msg)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = ?e, "database error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal database error")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

fn source(parts_or_info: Option<&ConnInfo>) -> String {
    parts_or_info.map(|i| i.remote.ip().to_string()).unwrap_or_default()
}

// ---------------------------------------------------------------- authentication

/// A caller authenticated by a login token.
pub struct Caller {
    pub id: i64,
    pub name: String,
    pub role: String,
    /// `full` after password + second factor; `mfa-setup` may only enrol a second factor.
    pub scope: String,
    pub source: String,
}

impl Caller {
    fn require_full(&self) -> ApiResult<()> {
        if self.scope != "full" {
            return Err(ApiError::forbidden(
                "second factor not set up: run `fernwart mfa enroll` and `fernwart mfa confirm CODE`, then log in with --otp",
            ));
        }
        Ok(())
    }

    fn require_role(&self, roles: &[&str]) -> ApiResult<()> {
        self.require_full()?;
        if !roles.contains(&self.role.as_str()) {
            return Err(ApiError::forbidden(format!(
                "role {} may not do this (needs {})",
                self.role,
                roles.join(" or ")
            )));
        }
        Ok(())
    }
}

impl FromRequestParts<App> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| ApiError::unauthorized("not logged in: run `fernwart login`"))?;
        let hash = util::token_hash(token.trim());
        let now = util::now();
        let row = app.store.read(|c| {
            c.query_row(
                "SELECT u.id, u.name, u.role, t.scope, t.expires_at, u.disabled, u.expires_at FROM auth_tokens t \
                 JOIN users u ON u.id = t.user_id WHERE t.token_hash = ?1",
                [&hash],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?,
                        r.get::<_, i64>(4)?, r.get::<_, i64>(5)?, r.get::<_, Option<i64>>(6)?)),
            )
            .optional()
            .map_err(StoreError::from)
        })?;
        let Some((id, name, role, scope, expires, disabled, account_expires)) = row else {
            return Err(ApiError::unauthorized("login invalid or expired: run `fernwart login`"));
        };
        if expires <= now {
            return Err(ApiError::unauthorized("login expired: run `fernwart login`"));
        }
        if disabled != 0 {
            return Err(ApiError::unauthorized("account disabled"));
        }
        if account_expires.is_some_and(|e| e <= now) {
            return Err(ApiError::unauthorized("account expired"));
        }
        let source = source(parts.extensions.get::<ConnInfo>());
        Ok(Caller { id, name, role, scope, source })
    }
}

// ---------------------------------------------------------------- console

async fn console() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        "<!doctype html><title>fernwart</title><h1>fernwart rendezvous server</h1>\
         <p>The web console comes in a later release. Use the <code>fernwart</code> command line; the JSON API lives under <code>/v1</code>.</p>",
    )
}

// ---------------------------------------------------------------- login and MFA

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginReq {
    user: String,
    password: String,
    otp: Option<String>,
}

async fn login(
    State(app): State<App>,
    info: Option<axum::Extension<ConnInfo>>,
    Json(req): Json<LoginReq>,
) -> ApiResult<Json<Value>> {
    let src = source(info.as_deref());
    let now = util::now();
    let invalid = || ApiError::unauthorized("invalid user name, password or code");
    let row = app.store.read(|c| {
        c.query_row(
            "SELECT id, role, password_hash, totp_secret, totp_confirmed, totp_used_steps, disabled, expires_at, failed_logins, locked_until \
             FROM users WHERE name = ?1",
            [&req.user],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, Option<String>>(3)?,
                    r.get::<_, i64>(4)? != 0, r.get::<_, String>(5)?, r.get::<_, i64>(6)? != 0, r.get::<_, Option<i64>>(7)?,
                    r.get::<_, i64>(8)?, r.get::<_, Option<i64>>(9)?)),
        )
        .optional()
        .map_err(StoreError::from)
    })?;
    let (hash, exists) = match &row {
        Some(r) => (r.2.clone(), true),
        None => (app.dummy_hash.clone(), false),
    };
    let password = req.password.clone();
    let pw_ok = tokio::task::spawn_blocking(move || auth::verify_password(&password, &hash))
        .await
        .unwrap_or(false)
        && exists;
    let Some((id, role, _, secret, confirmed, used, disabled, expires, failed, locked_until)) = row
    else {
        audit_now(
            &app,
            &req.user,
            "auth.login_failed",
            &req.user,
            &src,
            json!({"reason": "unknown user"}),
        )?;
        return Err(invalid());
    };
    if locked_until.is_some_and(|t| t > now) {
        audit_now(
            &app,
            &req.user,
            "auth.login_refused",
            &req.user,
            &src,
            json!({"reason": "locked"}),
        )?;
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "account temporarily locked after repeated failures; try later or ask an admin",
        ));
    }
    let mut otp_step = None;
    let mut failure = if !pw_ok { Some("wrong password") } else { None };
    if failure.is_none() && confirmed {
        match req.otp.as_deref() {
            None => {
                return Err(ApiError::unauthorized(
                    "second factor required: log in with --otp CODE",
                ));
            }
            Some(code) => {
                let steps = auth::parse_steps(&used);
                match secret.as_deref().and_then(|s| auth::verify_totp(s, code, now as u64, &steps))
                {
                    Some(step) => otp_step = Some(auth::remember_step(&steps, step, now as u64)),
                    None => failure = Some("wrong or reused code"),
                }
            }
        }
    }
    if let Some(reason) = failure {
        let threshold = i64::from(app.cfg.settings.auth.lockout_threshold);
        let lock_secs = app.cfg.lockout_duration.as_secs() as i64;
        app.store.tx(|tx| {
            let failed = failed + 1;
            let lock = (failed >= threshold).then_some(now + lock_secs);
            tx.execute("UPDATE users SET failed_logins = ?2, locked_until = COALESCE(?3, locked_until) WHERE id = ?1", params![id, if lock.is_some() { 0 } else { failed }, lock])?;
            store::audit(tx, &req.user, "auth.login_failed", &req.user, &src, json!({"reason": reason, "failures": failed}))?;
            if lock.is_some() {
                tracing::warn!(user = %req.user, failures = failed, "ALERT: account locked after repeated login failures");
                store::audit(tx, "system", "auth.lockout", &req.user, &src, json!({"alert": true, "failures": failed, "locked_for_secs": lock_secs}))?;
            }
            Ok::<_, StoreError>(())
        })?;
        return Err(invalid());
    }
    if disabled {
        return Err(ApiError::unauthorized("account disabled"));
    }
    if expires.is_some_and(|e| e <= now) {
        return Err(ApiError::unauthorized("account expired"));
    }
    let token = util::random_token();
    let scope = if confirmed { "full" } else { "mfa-setup" };
    let ttl = if confirmed { app.cfg.login_ttl.as_secs() as i64 } else { 15 * 60 };
    let until = now + ttl;
    app.store.tx(|tx| {
        tx.execute("UPDATE users SET failed_logins = 0, locked_until = NULL WHERE id = ?1", [id])?;
        if let Some(steps) = &otp_step {
            tx.execute("UPDATE users SET totp_used_steps = ?2 WHERE id = ?1", params![id, steps])?;
        }
        tx.execute("DELETE FROM auth_tokens WHERE expires_at <= ?1", [now])?;
        tx.execute(
            "INSERT INTO auth_tokens (token_hash, user_id, scope, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![util::token_hash(&token), id, scope, now, until],
        )?;
        store::audit(tx, &req.user, "auth.login", &req.user, &src, json!({"scope": scope}))
    })?;
    Ok(Json(
        json!({"token": token, "user": req.user, "role": role, "scope": scope, "expires": util::rfc3339(until)}),
    ))
}

fn audit_now(
    app: &App,
    actor: &str,
    action: &str,
    target: &str,
    src: &str,
    details: Value,
) -> ApiResult<()> {
    app.store.tx(|tx| store::audit(tx, actor, action, target, src, details))?;
    Ok(())
}

async fn mfa_enroll(State(app): State<App>, caller: Caller) -> ApiResult<Json<Value>> {
    let confirmed: bool = app.store.read(|c| {
        c.query_row("SELECT totp_confirmed FROM users WHERE id = ?1", [caller.id], |r| {
            r.get::<_, i64>(0)
        })
        .map_err(StoreError::from)
    })? != 0;
    if confirmed {
        return Err(ApiError::conflict(
            "a second factor is already enrolled; an admin must reset it",
        ));
    }
    let secret = auth::new_totp_secret();
    app.store.tx(|tx| {
        tx.execute(
            "UPDATE users SET totp_secret = ?2, totp_used_steps = '' WHERE id = ?1",
            params![caller.id, secret],
        )?;
        store::audit(
            tx,
            &caller.name,
            "mfa.enroll",
            &caller.name,
            &caller.source,
            json!({"kind": "totp"}),
        )
    })?;
    let uri = auth::totp_uri(&secret, &caller.name);
    Ok(Json(json!({"secret": secret, "uri": uri})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CodeReq {
    code: String,
}

async fn mfa_confirm(
    State(app): State<App>,
    caller: Caller,
    Json(req): Json<CodeReq>,
) -> ApiResult<Json<Value>> {
    let (secret, confirmed, used): (Option<String>, i64, String) = app.store.read(|c| {
        c.query_row(
            "SELECT totp_secret, totp_confirmed, totp_used_steps FROM users WHERE id = ?1",
            [caller.id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .map_err(StoreError::from)
    })?;
    if confirmed != 0 {
        return Err(ApiError::conflict("second factor already confirmed"));
    }
    let secret = secret.ok_or_else(|| {
        ApiError::conflict("no second factor pending: run `fernwart mfa enroll` first")
    })?;
    let now = util::now() as u64;
    let steps = auth::parse_steps(&used);
    let step = auth::verify_totp(&secret, &req.code, now, &steps)
        .ok_or_else(|| ApiError::bad("code does not match; check the authenticator's clock"))?;
    app.store.tx(|tx| {
        tx.execute(
            "UPDATE users SET totp_confirmed = 1, totp_used_steps = ?2 WHERE id = ?1",
            params![caller.id, auth::remember_step(&steps, step, now)],
        )?;
        tx.execute(
            "DELETE FROM auth_tokens WHERE user_id = ?1 AND scope = 'mfa-setup'",
            [caller.id],
        )?;
        store::audit(
            tx,
            &caller.name,
            "mfa.confirm",
            &caller.name,
            &caller.source,
            json!({"kind": "totp"}),
        )
    })?;
    Ok(Json(json!({"confirmed": true, "next": "log in again with --otp CODE"})))
}

// ---------------------------------------------------------------- users

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserReq {
    name: String,
    role: String,
    org: Option<String>,
    expires: Option<String>,
    password: String,
}

async fn user_add(
    State(app): State<App>,
    caller: Caller,
    Json(req): Json<UserReq>,
) -> ApiResult<Json<Value>> {
    caller.require_role(&["admin"])?;
    if !util::valid_name(&req.name) {
        return Err(ApiError::bad("user name: 1-64 letters, digits, - _ . @"));
    }
    if !auth::ROLES.contains(&req.role.as_str()) {
        return Err(ApiError::bad(format!(
            "unknown role {:?}: one of {}",
            req.role,
            auth::ROLES.join(", ")
        )));
    }
    let expires = match &req.expires {
        Some(e) => Some(
            util::parse_rfc3339(e)
                .ok_or_else(|| ApiError::bad(format!("--expires {e:?} is not RFC 3339")))?,
        ),
        None => None,
    };
    auth::check_policy(&req.password, &app.cfg.settings.password).map_err(ApiError::bad)?;
    let pw = req.password.clone();
    let hash = tokio::task::spawn_blocking(move || auth::hash_password(&pw))
        .await
        .map_err(|e| ApiError::bad(e.to_string()))?
        .map_err(ApiError::bad)?;
    let exists = app.store.read(|c| {
        Ok::<_, StoreError>(
            c.query_row("SELECT 1 FROM users WHERE name = ?1", [&req.name], |_| Ok(()))
                .optional()?
                .is_some(),
        )
    })?;
    if exists {
        return Err(ApiError::conflict(format!("user {} exists", req.name)));
    }
    app.store.tx(|tx| {
        tx.execute(
            "INSERT INTO users (name, role, org, password_hash, expires_at, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![req.name, req.role, req.org, hash, expires, util::now()],
        )?;
        store::audit(tx, &caller.name, "user.add", &req.name, &caller.source, json!({"role": req.role, "org": req.org, "expires": req.expires}))
    })?;
    Ok(Json(json!({"name": req.name, "role": req.role})))
}

async fn user_list(State(app): State<App>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require_role(&["admin", "auditor"])?;
    let users = app.store.read(|c| {
        let mut stmt = c.prepare("SELECT name, role, org, disabled, totp_confirmed, expires_at FROM users ORDER BY name")?;
        let rows = stmt.query_map([], |r| Ok(json!({
            "name": r.get::<_, String>(0)?, "role": r.get::<_, String>(1)?, "org": r.get::<_, Option<String>>(2)?,
            "disabled": r.get::<_, i64>(3)? != 0, "mfa": r.get::<_, i64>(4)? != 0,
            "expires": r.get::<_, Option<i64>>(5)?.map(util::rfc3339),
        })))?;
        Ok::<_, StoreError>(rows.collect::<Result<Vec<_>, _>>()?)
    })?;
    Ok(Json(Value::Array(users)))
}

async fn user_disable(
    State(app): State<App>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require_role(&["admin"])?;
    if name == caller.name {
        return Err(ApiError::bad("you cannot disable yourself"));
    }
    let id = app.store.tx(|tx| {
        let id: Option<i64> = tx
            .query_row("SELECT id FROM users WHERE name = ?1", [&name], |r| r.get(0))
            .optional()?;
        let Some(id) = id else { return Ok(None) };
        tx.execute("UPDATE users SET disabled = 1 WHERE id = ?1", [id])?;
        tx.execute("DELETE FROM auth_tokens WHERE user_id = ?1", [id])?;
        store::audit(tx, &caller.name, "user.disable", &name, &caller.source, json!({}))?;
        Ok::<_, StoreError>(Some(id))
    })?;
    let id = id.ok_or_else(|| ApiError::not_found(format!("no user {name}")))?;
    app.hub.user_disabled(id);
    Ok(Json(json!({"name": name, "disabled": true})))
}

// ---------------------------------------------------------------- machines and enrolment

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MachineReq {
    name: String,
    org: Option<String>,
}

async fn machine_add(
    State(app): State<App>,
    caller: Caller,
    Json(req): Json<MachineReq>,
) -> ApiResult<Json<Value>> {
    caller.require_role(&["admin"])?;
    if !util::valid_name(&req.name) {
        return Err(ApiError::bad("machine name: 1-64 letters, digits, - _ . @"));
    }
    let token = util::random_token();
    let now = util::now();
    let expires = now + app.cfg.enrol_token_ttl.as_secs() as i64;
    let created = app.store.tx(|tx| {
        if tx.query_row("SELECT 1 FROM machines WHERE name = ?1", [&req.name], |_| Ok(())).optional()?.is_some() {
            return Ok(false);
        }
        tx.execute("INSERT INTO machines (name, org, created_at) VALUES (?1, ?2, ?3)", params![req.name, req.org, now])?;
        let id = tx.last_insert_rowid();
        tx.execute(
            "INSERT INTO enrol_tokens (token_hash, machine_id, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
            params![util::token_hash(&token), id, now, expires],
        )?;
        store::audit(tx, &caller.name, "machine.add", &req.name, &caller.source, json!({"org": req.org, "token_expires": util::rfc3339(expires)}))?;
        Ok::<_, StoreError>(true)
    })?;
    if !created {
        return Err(ApiError::conflict(format!("machine {} exists", req.name)));
    }
    Ok(Json(json!({"name": req.name, "token": token, "expires": util::rfc3339(expires)})))
}

async fn machine_list(State(app): State<App>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require_role(&["admin", "session-admin", "approver", "auditor", "technician"])?;
    let rows = app.store.read(|c| {
        let mut stmt = c.prepare("SELECT id, name, org, targets, enrolled_at, revoked, last_seen, switch_on FROM machines ORDER BY name")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, Option<String>>(2)?, r.get::<_, String>(3)?,
            r.get::<_, Option<i64>>(4)?, r.get::<_, i64>(5)? != 0, r.get::<_, Option<i64>>(6)?, r.get::<_, Option<bool>>(7)?)))?;
        Ok::<_, StoreError>(rows.collect::<Result<Vec<_>, _>>()?)
    })?;
    let out = rows.into_iter().map(|(id, name, org, targets, enrolled, revoked, last_seen, _)| {
        let live = app.hub.online(id);
        json!({
            "name": name, "org": org, "online": live.is_some(),
            "switch": match live { Some(true) => "on", Some(false) => "off", None => "unknown" },
            "targets": serde_json::from_str::<Value>(&targets).unwrap_or(Value::Array(vec![])),
            "enrolled": enrolled.is_some(), "revoked": revoked, "last_seen": last_seen.map(util::rfc3339),
        })
    }).collect();
    Ok(Json(Value::Array(out)))
}

async fn machine_revoke(
    State(app): State<App>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require_role(&["admin"])?;
    let id = app.store.tx(|tx| {
        let id: Option<i64> = tx
            .query_row("SELECT id FROM machines WHERE name = ?1", [&name], |r| r.get(0))
            .optional()?;
        let Some(id) = id else { return Ok(None) };
        tx.execute("UPDATE machines SET revoked = 1 WHERE id = ?1", [id])?;
        store::audit(tx, &caller.name, "machine.revoke", &name, &caller.source, json!({}))?;
        Ok::<_, StoreError>(Some(id))
    })?;
    let id = id.ok_or_else(|| ApiError::not_found(format!("no machine {name}")))?;
    app.hub.disconnect_agent(id);
    Ok(Json(json!({"name": name, "revoked": true})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrollReq {
    token: String,
    csr: String,
}

async fn enroll(
    State(app): State<App>,
    info: Option<axum::Extension<ConnInfo>>,
    Json(req): Json<EnrollReq>,
) -> ApiResult<Json<Value>> {
    let src = source(info.as_deref());
    let now = util::now();
    let hash = util::token_hash(req.token.trim());
    let row: Option<(i64, String, i64, Option<i64>)> = app.store.read(|c| {
        c.query_row(
            "SELECT m.id, m.name, t.expires_at, t.used_at FROM enrol_tokens t JOIN machines m ON m.id = t.machine_id WHERE t.token_hash = ?1",
            [&hash], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        ).optional().map_err(StoreError::from)
    })?;
    let refuse = |why: &str| {
        let _ =
            audit_now(&app, "unknown", "machine.enrol_refused", "", &src, json!({"reason": why}));
        ApiError::unauthorized(format!("enrolment refused: {why}"))
    };
    let Some((machine_id, machine, expires, used)) = row else {
        return Err(refuse("unknown token"));
    };
    if used.is_some() {
        return Err(refuse("token already used"));
    }
    if expires <= now {
        return Err(refuse("token expired"));
    }
    let issued = app
        .ca
        .sign_machine_csr(&req.csr, &machine, app.cfg.cert_ttl)
        .map_err(|e| ApiError::bad(e.to_string()))?;
    let claimed = app.store.tx(|tx| {
        // Claiming the token and recording the certificate happen together, once.
        let n = tx.execute("UPDATE enrol_tokens SET used_at = ?2 WHERE token_hash = ?1 AND used_at IS NULL", params![hash, now])?;
        if n != 1 {
            return Ok(false);
        }
        tx.execute(
            "UPDATE machines SET cert_fingerprint = ?2, cert_not_after = ?3, enrolled_at = ?4, revoked = 0 WHERE id = ?1",
            params![machine_id, issued.fingerprint, issued.not_after, now],
        )?;
        store::audit(tx, &machine, "machine.enrol", &machine, &src, json!({"fingerprint": issued.fingerprint, "not_after": util::rfc3339(issued.not_after)}))?;
        Ok::<_, StoreError>(true)
    })?;
    if !claimed {
        return Err(refuse("token already used"));
    }
    Ok(Json(json!({"machine": machine, "certificate": issued.pem, "ca": app.ca.pem()})))
}

// ---------------------------------------------------------------- sessions

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionReq {
    name: String,
    machine: String,
    targets: Vec<String>,
    users: Vec<String>,
    from: Option<String>,
    until: Option<String>,
    duration_secs: Option<u64>,
    reason: String,
    #[serde(default = "yes")]
    approval: bool,
}

fn yes() -> bool {
    true
}

async fn session_create(
    State(app): State<App>,
    caller: Caller,
    Json(req): Json<SessionReq>,
) -> ApiResult<Json<Value>> {
    caller.require_role(&["admin", "session-admin"])?;
    if !util::valid_name(&req.name) {
        return Err(ApiError::bad("session name: 1-64 letters, digits, - _ . @"));
    }
    if req.reason.trim().is_empty() || req.reason.len() > 1000 {
        return Err(ApiError::bad(
            "a reason (ticket reference) is required, at most 1000 characters",
        ));
    }
    if req.targets.is_empty() || req.users.is_empty() {
        return Err(ApiError::bad("a session needs at least one --target and one --user"));
    }
    if !req.approval && !app.cfg.settings.sessions.allow_no_approval {
        return Err(ApiError::forbidden(
            "policy requires approval for every session (sessions.allow_no_approval = false)",
        ));
    }
    let now = util::now();
    let from = match &req.from {
        Some(f) => util::parse_rfc3339(f)
            .ok_or_else(|| ApiError::bad(format!("--from {f:?} is not RFC 3339")))?,
        None => now,
    };
    let until = match (&req.until, req.duration_secs) {
        (Some(_), Some(_)) => return Err(ApiError::bad("give --until or --duration, not both")),
        (Some(u), None) => util::parse_rfc3339(u)
            .ok_or_else(|| ApiError::bad(format!("--until {u:?} is not RFC 3339")))?,
        (None, Some(d)) => from.saturating_add(i64::try_from(d).unwrap_or(i64::MAX)),
        (None, None) => from + app.cfg.default_session.as_secs() as i64,
    };
    if until <= from || until <= now {
        return Err(ApiError::bad("the time window must end after it starts and in the future"));
    }
    let result = app.store.tx(|tx| {
        if tx.query_row("SELECT 1 FROM sessions WHERE name = ?1", [&req.name], |_| Ok(())).optional()?.is_some() {
            return Ok(Err(ApiError::conflict(format!("session {} exists", req.name))));
        }
        let m: Option<(i64, String, i64)> = tx.query_row("SELECT id, targets, revoked FROM machines WHERE name = ?1", [&req.machine], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).optional()?;
        let Some((machine_id, targets, revoked)) = m else { return Ok(Err(ApiError::not_found(format!("no machine {}", req.machine)))) };
        if revoked != 0 {
            return Ok(Err(ApiError::conflict(format!("machine {} is revoked", req.machine))));
        }
        let offered: Vec<fernwart_proto::TargetInfo> = serde_json::from_str(&targets).unwrap_or_default();
        for t in &req.targets {
            if !offered.iter().any(|o| &o.name == t) {
                let names: Vec<&str> = offered.iter().map(|o| o.name.as_str()).collect();
                return Ok(Err(ApiError::bad(format!("unknown target {t:?}: machine {} offers {}", req.machine,
                    if names.is_empty() { "no targets yet (agent never connected)".to_owned() } else { names.join(", ") }))));
            }
        }
        let mut user_ids = Vec::new();
        for u in &req.users {
            let id: Option<(i64, i64)> = tx.query_row("SELECT id, disabled FROM users WHERE name = ?1", [u], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
            match id {
                Some((id, 0)) => user_ids.push(id),
                Some(_) => return Ok(Err(ApiError::bad(format!("user {u} is disabled")))),
                None => return Ok(Err(ApiError::not_found(format!("no user {u}")))),
            }
        }
        let mut targets = req.targets.clone();
        targets.sort();
        targets.dedup();
        tx.execute(
            "INSERT INTO sessions (name, machine_id, targets, reason, state, approval_required, valid_from, valid_until, created_by, created_at) \
             VALUES (?1, ?2, ?3, ?4, 'prepared', ?5, ?6, ?7, ?8, ?9)",
            params![req.name, machine_id, serde_json::to_string(&targets).unwrap_or_default(), req.reason, req.approval, from, until, caller.name, now],
        )?;
        let sid = tx.last_insert_rowid();
        user_ids.sort_unstable();
        user_ids.dedup();
        for uid in user_ids {
            tx.execute("INSERT INTO session_users (session_id, user_id) VALUES (?1, ?2)", params![sid, uid])?;
        }
        store::audit(tx, &caller.name, "session.create", &req.name, &caller.source, json!({
            "machine": req.machine, "targets": targets, "users": req.users, "from": util::rfc3339(from),
            "until": util::rfc3339(until), "reason": req.reason, "approval_required": req.approval,
        }))?;
        Ok::<_, StoreError>(Ok(sessions::by_id(tx, sid)?))
    })??;
    Ok(Json(serde_json::to_value(result).unwrap_or_default()))
}

fn visible(caller: &Caller, s: &sessions::Session) -> bool {
    caller.role != "technician" || s.users.contains(&caller.name)
}

async fn session_list(State(app): State<App>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require_full()?;
    let list = app
        .store
        .read(|c| sessions::list(c, (caller.role == "technician").then_some(caller.id)))?;
    Ok(Json(serde_json::to_value(list).unwrap_or_default()))
}

async fn session_show(
    State(app): State<App>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require_full()?;
    let s = app.store.read(|c| sessions::by_name(c, &name))?.filter(|s| visible(&caller, s));
    let s = s.ok_or_else(|| ApiError::not_found(format!("no session {name}")))?;
    Ok(Json(serde_json::to_value(s).unwrap_or_default()))
}

async fn session_action(
    State(app): State<App>,
    caller: Caller,
    Path((name, action)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    caller.require_full()?;
    let s = app.store.read(|c| sessions::by_name(c, &name))?.filter(|s| visible(&caller, s));
    let s = s.ok_or_else(|| ApiError::not_found(format!("no session {name}")))?;
    if s.is_terminal() {
        return Err(ApiError::conflict(format!("session {name} is already {}", s.state)));
    }
    let to = match action.as_str() {
        "approve" => {
            caller.require_role(&["approver"])?;
            if s.users.contains(&caller.name) || s.created_by == caller.name {
                return Err(ApiError::forbidden(
                    "four eyes: you cannot approve a session you prepared or use",
                ));
            }
            if !matches!(s.state.as_str(), "prepared" | "requested") {
                return Err(ApiError::conflict(format!(
                    "session {name} is {}, not waiting for approval",
                    s.state
                )));
            }
            "approved"
        }
        "reject" => {
            caller.require_role(&["approver"])?;
            "rejected"
        }
        "end" => {
            let allowed = matches!(caller.role.as_str(), "admin" | "session-admin" | "approver")
                || s.users.contains(&caller.name);
            if !allowed {
                return Err(ApiError::forbidden("only admins, session admins, approvers and the session's technicians may end it"));
            }
            "ended"
        }
        other => {
            return Err(ApiError::not_found(format!(
                "unknown session action {other:?}: approve, reject or end"
            )))
        }
    };
    app.transition(&s, to, &caller.name, &caller.source)?;
    if to == "approved" {
        let app2 = app.clone();
        let s2 = s.clone();
        tokio::spawn(async move {
            if let Ok(Some(fresh)) = app2.store.read(|c| sessions::by_id(c, s2.id)) {
                app2.hub.grant(fresh.machine_id, sessions::grant_for(&fresh)).await;
            }
        });
    }
    let s = app
        .store
        .read(|c| sessions::by_id(c, s.id))?
        .ok_or_else(|| ApiError::not_found("session vanished"))?;
    Ok(Json(serde_json::to_value(s).unwrap_or_default()))
}

// ---------------------------------------------------------------- audit

#[derive(Deserialize)]
struct AuditQuery {
    since: Option<String>,
}

async fn audit_list(
    State(app): State<App>,
    caller: Caller,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<Value>> {
    caller.require_role(&["auditor", "admin"])?;
    let since_ms = match &q.since {
        Some(s) => {
            util::parse_rfc3339(s)
                .ok_or_else(|| ApiError::bad(format!("--since {s:?} is not RFC 3339")))?
                * 1000
        }
        None => 0,
    };
    let events = app.store.audit_list(since_ms)?;
    Ok(Json(serde_json::to_value(events).unwrap_or_default()))
}

// ---------------------------------------------------------------- links

/// Validates a link upgrade and returns the 101 response; the link starts on `on_upgrade`.
fn link_handshake(req: &mut Request) -> ApiResult<(Response, hyper::upgrade::OnUpgrade)> {
    let h = req.headers();
    let has = |name: header::HeaderName, want: &str| {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case(want)))
    };
    if !has(header::CONNECTION, "upgrade") || !has(header::UPGRADE, LINK_UPGRADE) {
        return Err(ApiError::bad(format!(
            "expected a link upgrade (Connection: upgrade, Upgrade: {LINK_UPGRADE})"
        )));
    }
    let on_upgrade = hyper::upgrade::on(req);
    let resp = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, LINK_UPGRADE)
        .body(axum::body::Body::empty())
        .map_err(|e| ApiError::bad(e.to_string()))?;
    Ok((resp, on_upgrade))
}

/// Runs HTTP/2 on an upgraded connection once the 101 has gone out.
async fn start_mux(
    on_upgrade: hyper::upgrade::OnUpgrade,
    mode: Mode,
) -> Option<(Mux, tokio::sync::mpsc::Receiver<fernwart_transport::MuxStream>)> {
    let upgraded = on_upgrade.await.ok()?;
    match Mux::start(TokioIo::new(upgraded), mode).await {
        Ok(link) => Some(link),
        Err(e) => {
            tracing::debug!(error = %fernwart_transport::error_chain(&e), "link handshake failed");
            None
        }
    }
}

async fn agent_link_upgrade(State(app): State<App>, mut req: Request) -> ApiResult<Response> {
    let info = req.extensions().get::<ConnInfo>().cloned();
    let src = source(info.as_ref());
    let fp = info.and_then(|i| i.client_cert).ok_or_else(|| {
        ApiError::unauthorized("agent link needs the machine's client certificate (enrol first)")
    })?;
    let m: Option<(i64, String, i64, Option<i64>)> = app.store.read(|c| {
        c.query_row(
            "SELECT id, name, revoked, cert_not_after FROM machines WHERE cert_fingerprint = ?1",
            [&fp],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()
        .map_err(StoreError::from)
    })?;
    let Some((id, name, revoked, _)) = m else {
        let _ = audit_now(
            &app,
            "unknown",
            "agent.refused",
            "",
            &src,
            json!({"reason": "unknown certificate", "fingerprint": fp}),
        );
        return Err(ApiError::forbidden("machine certificate unknown or replaced"));
    };
    if revoked != 0 {
        let _ = audit_now(&app, &name, "agent.refused", &name, &src, json!({"reason": "revoked"}));
        return Err(ApiError::forbidden(format!("machine {name} is revoked")));
    }
    let (resp, on_upgrade) = link_handshake(&mut req)?;
    tokio::spawn(async move {
        // The server opens the streams of an agent link: it is the HTTP/2 client there.
        if let Some((mux, _)) = start_mux(on_upgrade, Mode::Client).await {
            agent_link::serve(app, mux, id, name, src).await;
        }
    });
    Ok(resp)
}

async fn connect_upgrade(
    State(app): State<App>,
    caller: Caller,
    Path(name): Path<String>,
    mut req: Request,
) -> ApiResult<Response> {
    caller.require_full()?;
    let s = app.store.read(|c| sessions::by_name(c, &name))?;
    let s = s
        .filter(|s| visible(&caller, s))
        .ok_or_else(|| ApiError::not_found(format!("no session {name}")))?;
    if !s.users.contains(&caller.name) {
        let _ = audit_now(
            &app,
            &caller.name,
            "session.connect_refused",
            &name,
            &caller.source,
            json!({"reason": "not assigned"}),
        );
        return Err(ApiError::forbidden(format!("you are not assigned to session {name}")));
    }
    if s.is_terminal() {
        return Err(ApiError::conflict(format!("session {name} is {}", s.state)));
    }
    if util::now() >= s.until_ts {
        app.expire(&s);
        return Err(ApiError::conflict(format!("session {name} is expired")));
    }
    let (resp, on_upgrade) = link_handshake(&mut req)?;
    let who = tech_link::Technician {
        user_id: caller.id,
        name: caller.name.clone(),
        source: caller.source.clone(),
    };
    let sid = s.id;
    tokio::spawn(async move {
        if let Some((mux, inbound)) = start_mux(on_upgrade, Mode::Server).await {
            tech_link::serve(app, mux, inbound, sid, who).await;
        }
    });
    Ok(resp)
}
