//! `/v1/login`, `/v1/mfa/enroll`, `/v1/mfa/confirm`.
//!
//! A login is refused before any work when its user name is malformed or its source or name
//! tries too fast. Each attempt on a known user is counted before its password is checked
//! (atomically, in the store), so parallel attempts cannot pass the lockout threshold; a TOTP
//! step is marked used atomically, so one code logs in once.

use axum::{extract::State, http::StatusCode, Json};
use fernwart_api::{
    CodeRequest, LoginRequest, LoginResponse, MfaConfirmResponse, MfaEnrollResponse, Scope,
};

use super::{source, ApiError, ApiResult, Authed, Body, ConnInfo};
use crate::{
    audit::{Entry, Event, LoginFailure},
    auth,
    authz::{Action, Object},
    domain::names,
    store::Attempt,
    util, App,
};

/// The one answer to every failed login (wrong password, wrong or missing code, unknown,
/// disabled or expired account): from outside they look the same; the audit trail says which.
const INVALID: &str =
    "invalid user name, password or code (an account with a second factor needs --otp CODE)";
const LOCKED: &str =
    "account temporarily locked after repeated failures; try later or ask an admin";

pub async fn login(
    State(app): State<App>,
    info: Option<axum::Extension<ConnInfo>>,
    Body(req): Body<LoginRequest>,
) -> ApiResult<Json<LoginResponse>> {
    let src = source(info.as_deref());
    // Malformed names never cost a hash nor reach the audit trail.
    if !names::valid(&req.user) {
        return Err(ApiError::bad("invalid user name: 1-64 letters, digits, - _ . @"));
    }
    if req.password.len() > 1024 || req.otp.as_ref().is_some_and(|o| o.len() > 16) {
        return Err(ApiError::bad("password or code too long"));
    }
    app.limits.login_attempt(info.as_ref().map(|i| i.remote.ip()), &req.user)?;
    let now = util::now();
    let user = req.user.clone();
    let subject = app.store.run(move |b| b.login_subject(&user)).await?;
    let failed = |reason, failures| {
        Entry::new(&req.user, &src, Event::LoginFailed { user: req.user.clone(), reason, failures })
    };
    let Some(u) = subject else {
        // Unknown users take the time of a known one.
        let (password, hash) = (req.password.clone(), app.dummy_hash.clone());
        app.limits.hash(move || auth::verify_password(&password, &hash)).await?;
        app.relay.audit.record_now(failed(LoginFailure::UnknownUser, None)).await;
        return Err(ApiError::unauthorized(INVALID));
    };
    let threshold = i64::from(app.cfg.settings.auth.lockout_threshold);
    let lock_secs = app.cfg.lockout_duration.as_secs() as i64;
    let attempt = app
        .store
        .run(move |b| b.claim_login_attempt(u.id, now, threshold, now + lock_secs))
        .await?;
    let Attempt::Counted(n) = attempt else {
        app.relay.audit.record_now(failed(LoginFailure::Locked, None)).await;
        return Err(ApiError::new(StatusCode::TOO_MANY_REQUESTS, LOCKED));
    };
    let (password, hash) = (req.password.clone(), u.password_hash.clone());
    let pw_ok = app.limits.hash(move || auth::verify_password(&password, &hash)).await?;
    let failure = if !pw_ok {
        Some(LoginFailure::WrongPassword)
    } else if u.totp_confirmed {
        match (req.otp.as_deref(), u.totp_secret.as_deref()) {
            (None, _) => Some(LoginFailure::MissingCode),
            (Some(code), Some(secret)) => match auth::verify_totp(secret, code, now as u64, &[]) {
                Some(step) if app.store.run(move |b| b.use_totp_step(u.id, step)).await? => None,
                _ => Some(LoginFailure::WrongOrReusedCode),
            },
            (Some(_), None) => Some(LoginFailure::WrongOrReusedCode),
        }
    } else {
        None
    };
    if let Some(reason) = failure {
        let mut entries = vec![failed(reason, Some(n))];
        if n == threshold {
            tracing::warn!(user = %u.name, failures = n, "ALERT: account locked after repeated login failures");
            entries.push(Entry::new(
                "system",
                &src,
                Event::Lockout { user: u.name.clone(), failures: n, locked_for_secs: lock_secs },
            ));
        }
        app.store.run(move |b| b.login_failed(&entries)).await?;
        return Err(ApiError::unauthorized(INVALID));
    }
    if u.disabled {
        app.relay.audit.record_now(failed(LoginFailure::Disabled, None)).await;
        return Err(ApiError::unauthorized(INVALID));
    }
    if u.expires_at.is_some_and(|e| e <= now) {
        app.relay.audit.record_now(failed(LoginFailure::Expired, None)).await;
        return Err(ApiError::unauthorized(INVALID));
    }
    let token = util::random_token();
    let scope = if u.totp_confirmed { Scope::Full } else { Scope::MfaSetup };
    let ttl = if u.totp_confirmed { app.cfg.login_ttl.as_secs() as i64 } else { 15 * 60 };
    let until = now + ttl;
    let entry =
        Entry::new(&u.name, &src, Event::Login { user: u.name.clone(), scope: scope.as_str() });
    let token_hash = util::token_hash(&token);
    app.store.run(move |b| b.login_succeeded(u.id, &token_hash, scope, now, until, &entry)).await?;
    Ok(Json(LoginResponse {
        token,
        user: u.name,
        role: u.role,
        scope,
        expires: util::rfc3339(until),
    }))
}

pub async fn mfa_enroll(State(app): State<App>, a: Authed) -> ApiResult<Json<MfaEnrollResponse>> {
    a.allow(&app, Action::MfaEnroll, Object::None)?;
    let c = &a.caller;
    let secret = auth::new_totp_secret();
    let entry = Entry::new(&c.name, &c.source, Event::MfaEnroll { user: c.name.clone() });
    let (id, s) = (c.user_id, secret.clone());
    if !app.store.run(move |b| b.mfa_begin(id, &s, &entry)).await? {
        return Err(ApiError::conflict(
            "a second factor is already enrolled; an admin must reset it",
        ));
    }
    let uri = auth::totp_uri(&secret, &c.name);
    Ok(Json(MfaEnrollResponse { secret, uri }))
}

pub async fn mfa_confirm(
    State(app): State<App>,
    a: Authed,
    Body(req): Body<CodeRequest>,
) -> ApiResult<Json<MfaConfirmResponse>> {
    a.allow(&app, Action::MfaConfirm, Object::None)?;
    let c = &a.caller;
    let id = c.user_id;
    let (secret, confirmed) = app.store.run(move |b| b.mfa_state(id)).await?;
    if confirmed {
        return Err(ApiError::conflict("second factor already confirmed"));
    }
    let secret = secret.ok_or_else(|| {
        ApiError::conflict("no second factor pending: run `fernwart mfa enroll` first")
    })?;
    let step = auth::verify_totp(&secret, &req.code, util::now() as u64, &[])
        .ok_or_else(|| ApiError::bad("code does not match; check the authenticator's clock"))?;
    let entry = Entry::new(&c.name, &c.source, Event::MfaConfirm { user: c.name.clone() });
    if !app.store.run(move |b| b.mfa_confirm(id, &secret, step, &entry)).await? {
        return Err(ApiError::conflict(
            "the second factor changed meanwhile: run `fernwart mfa enroll` again",
        ));
    }
    Ok(Json(MfaConfirmResponse { confirmed: true, next: "log in again with --otp CODE".into() }))
}
