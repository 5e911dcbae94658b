//! `/v1/login`, `/v1/mfa/enroll`, `/v1/mfa/confirm`.
//!
//! A login is refused before any work when its user name is malformed or its source or name
//! tries too fast. Each attempt on a known user is counted before its password is checked
//! (atomically, in the store), so parallel attempts cannot pass the lockout threshold; a TOTP
//! step is marked used atomically, so one code logs in once.

use axum::{extract::State, Json};
use fernwart_api::{
    CodeRequest, LoginRequest, LoginResponse, LogoutResponse, MfaConfirmResponse,
    MfaEnrollResponse, PasswdRequest, PasswdResponse, Scope, SecurityKeyInfo,
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

pub async fn login(
    State(app): State<App>,
    info: Option<axum::Extension<ConnInfo>>,
    Body(req): Body<LoginRequest>,
) -> ApiResult<Json<LoginResponse>> {
    authenticate(&app, info.as_deref(), req).await.map(Json)
}

/// A login with password and (once enrolled) TOTP code, wherever it comes from (the API, the
/// console's form): the same checks, lockout, delays and audit records.
pub async fn authenticate(
    app: &App,
    info: Option<&ConnInfo>,
    req: LoginRequest,
) -> ApiResult<LoginResponse> {
    authenticate_with(app, info, req, None).await
}

/// A security key's assertion as the console's login form carries it: the second factor in
/// place of a TOTP code, checked after the password under the same lockout.
#[derive(Debug, Clone)]
pub struct KeyFactor {
    /// [`fernwart_proto::webauthn::Assertion::to_compact`].
    pub assertion: String,
    pub rp_id: String,
    pub origin: String,
}

/// [`authenticate`], with a security key as the second factor when `key` is given.
pub async fn authenticate_with(
    app: &App,
    info: Option<&ConnInfo>,
    req: LoginRequest,
    key: Option<KeyFactor>,
) -> ApiResult<LoginResponse> {
    let app = app.clone();
    let src = source(info);
    // Malformed names never cost a hash nor reach the audit trail.
    if !names::valid(&req.user) {
        return Err(ApiError::bad("invalid user name: 1-64 letters, digits, - _ . @"));
    }
    if req.password.len() > 1024 || req.otp.as_ref().is_some_and(|o| o.len() > 16) {
        return Err(ApiError::bad("password or code too long"));
    }
    app.limits.login_attempt(info.map(|i| i.remote.ip()), &req.user)?;
    let now = util::now();
    let user = req.user.clone();
    let subject = app.store.run(move |b| b.login_subject(&user)).await?;
    let failed = |reason, failures| {
        Entry::new(&req.user, &src, Event::LoginFailed { user: req.user.clone(), reason, failures })
    };
    // Every failure is answered alike, after a delay that grows with each failure in a row.
    let refuse = |app: &App, name: &str| {
        let delay = app.limits.login_failed(name);
        async move {
            tokio::time::sleep(delay).await;
            ApiError::unauthorized(INVALID)
        }
    };
    let Some(u) = subject else {
        // Unknown users take the time of a known one.
        let (password, hash) = (req.password.clone(), app.dummy_hash.clone());
        app.limits.hash(move || auth::verify_password(&password, &hash)).await?;
        app.relay.audit.record_now(failed(LoginFailure::UnknownUser, None)).await;
        return Err(refuse(&app, &req.user).await);
    };
    // The settings in force now: a change made in the console counts from the next attempt.
    let live = app.settings.get();
    let threshold = i64::from(live.lockout_threshold);
    let lock_secs = live.lockout_duration.as_secs() as i64;
    let attempt = app
        .store
        .run(move |b| b.claim_login_attempt(u.id, now, threshold, now + lock_secs))
        .await?;
    let Attempt::Counted(n) = attempt else {
        // Locked looks like wrong from outside; the audit trail says which.
        app.relay.audit.record_now(failed(LoginFailure::Locked, None)).await;
        return Err(refuse(&app, &req.user).await);
    };
    let (password, hash) = (req.password.clone(), u.password_hash.clone());
    let pw_ok = app.limits.hash(move || auth::verify_password(&password, &hash)).await?;
    let mut key_ok = false;
    let failure = if !pw_ok {
        Some(LoginFailure::WrongPassword)
    } else if let Some(k) = &key {
        let f = crate::security_keys::login_factor(&app, u.id, k, now).await?;
        key_ok = f.is_none();
        f
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
        let entries =
            counted_failure(failed(reason, Some(n)), &u.name, &src, n, threshold, lock_secs);
        app.store.run(move |b| b.login_failed(&entries)).await?;
        return Err(refuse(&app, &req.user).await);
    }
    if u.disabled {
        app.relay.audit.record_now(failed(LoginFailure::Disabled, None)).await;
        return Err(refuse(&app, &req.user).await);
    }
    if u.expires_at.is_some_and(|e| e <= now) {
        app.relay.audit.record_now(failed(LoginFailure::Expired, None)).await;
        return Err(refuse(&app, &req.user).await);
    }
    app.limits.login_succeeded(&req.user);
    let token = util::random_token();
    let second = u.totp_confirmed || key_ok;
    let scope = if second { Scope::Full } else { Scope::MfaSetup };
    let ttl = if second { live.login_ttl.as_secs() as i64 } else { 15 * 60 };
    let until = now + ttl;
    let entry =
        Entry::new(&u.name, &src, Event::Login { user: u.name.clone(), scope: scope.as_str() });
    let token_hash = util::token_hash(&token);
    app.store.run(move |b| b.login_succeeded(u.id, &token_hash, scope, now, until, &entry)).await?;
    Ok(LoginResponse { token, user: u.name, role: u.role, scope, expires: util::rfc3339(until) })
}

/// The records of a counted attempt that failed: the failure, and when it was the attempt
/// that reached the threshold (and so locked the account at its claim), the lock as an alert.
fn counted_failure(
    failed: Entry,
    user: &str,
    source: &str,
    n: i64,
    threshold: i64,
    lock_secs: i64,
) -> Vec<Entry> {
    let mut entries = vec![failed];
    if n == threshold {
        tracing::warn!(%user, failures = n, "ALERT: account locked after repeated login failures");
        entries.push(Entry::new(
            "system",
            source,
            Event::Lockout { user: user.to_owned(), failures: n, locked_for_secs: lock_secs },
        ));
    }
    entries
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

/// `fernwart logout`: the login that makes the request ends at the server.
pub async fn logout(State(app): State<App>, a: Authed) -> ApiResult<Json<LogoutResponse>> {
    let logged_out = end_login(&app, &a).await?;
    Ok(Json(LogoutResponse { logged_out }))
}

/// Ends the caller's login at the server (recorded as a logout); false if it had ended.
pub async fn end_login(app: &App, a: &Authed) -> ApiResult<bool> {
    let c = &a.caller;
    let entry = Entry::new(&c.name, &c.source, Event::Logout { user: c.name.clone() });
    let hash = a.token_hash.clone();
    Ok(app.store.run(move |b| b.logout(&hash, &entry)).await?)
}

/// `fernwart passwd`: one's own password, with the current one. A wrong current password
/// counts as a failed login (a stolen token cannot try passwords); the new one must meet the
/// policy and differ from the current and the `password.history` earlier ones. Every other
/// login of the user ends.
pub async fn passwd(
    State(app): State<App>,
    a: Authed,
    Body(req): Body<PasswdRequest>,
) -> ApiResult<Json<PasswdResponse>> {
    a.allow(&app, Action::PasswordChange, Object::Named(&a.caller.name))?;
    if req.current.len() > 1024 {
        return Err(ApiError::bad("current password too long"));
    }
    let c = &a.caller;
    let policy = app.settings.password();
    auth::check_policy(&req.new, &policy, &c.name).map_err(ApiError::bad)?;
    let (id, earlier) = (c.user_id, policy.history);
    let hashes = app.store.run(move |b| b.password_hashes(id, earlier)).await?;
    let Some(current_hash) = hashes.first().cloned() else {
        return Err(ApiError::not_found("no such user"));
    };
    let now = util::now();
    let live = app.settings.get();
    let threshold = i64::from(live.lockout_threshold);
    let lock_secs = live.lockout_duration.as_secs() as i64;
    let attempt =
        app.store.run(move |b| b.claim_login_attempt(id, now, threshold, now + lock_secs)).await?;
    let Attempt::Counted(n) = attempt else {
        return Err(ApiError::bad("the current password is wrong (or the account is locked)"));
    };
    let (current, h) = (req.current.clone(), current_hash.clone());
    if !app.limits.hash(move || auth::verify_password(&current, &h)).await? {
        let failed = Entry::new(
            &c.name,
            &c.source,
            Event::LoginFailed {
                user: c.name.clone(),
                reason: LoginFailure::WrongPassword,
                failures: Some(n),
            },
        );
        let entries = counted_failure(failed, &c.name, &c.source, n, threshold, lock_secs);
        app.store.run(move |b| b.login_failed(&entries)).await?;
        tokio::time::sleep(app.limits.login_failed(&c.name)).await;
        return Err(ApiError::bad("the current password is wrong (or the account is locked)"));
    }
    // The current password was right: this attempt is no failure, whatever comes next.
    app.store.run(move |b| b.clear_failures(id)).await?;
    for old in hashes {
        let (new, h) = (req.new.clone(), old);
        if app.limits.hash(move || auth::verify_password(&new, &h)).await? {
            return Err(ApiError::bad(format!(
                "the new password was used before: choose one that is not among your last {}",
                earlier + 1
            )));
        }
    }
    let new = req.new.clone();
    let new_hash =
        app.limits.hash(move || auth::hash_password(&new)).await?.map_err(ApiError::bad)?;
    let entry = Entry::new(&c.name, &c.source, Event::PasswordChange { user: c.name.clone() });
    let keep = a.token_hash.clone();
    let changed = app
        .store
        .run(move |b| b.password_change(id, &current_hash, &new_hash, &keep, now, &entry))
        .await?;
    if !changed {
        return Err(ApiError::conflict("the password changed meanwhile: try again"));
    }
    Ok(Json(PasswdResponse { changed: true }))
}

/// `GET /v1/account/keys`: the caller's security keys, registered in the web console (a
/// browser is needed for that); their public keys are what an operator pins in `agent.toml`.
pub async fn security_keys(
    State(app): State<App>,
    a: Authed,
) -> ApiResult<Json<Vec<SecurityKeyInfo>>> {
    let keys = crate::security_keys::list(&app, &a).await?;
    Ok(Json(
        keys.iter()
            .map(|k| SecurityKeyInfo {
                id: k.id,
                name: k.name.clone(),
                fingerprint: crate::security_keys::fingerprint(k),
                public_key: k.public_key.clone(),
                created: util::rfc3339(k.created_at),
                last_used: k.last_used.map(util::rfc3339),
            })
            .collect(),
    ))
}
