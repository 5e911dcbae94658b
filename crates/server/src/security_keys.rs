//! Security keys (WebAuthn, FIDO2) of console users: the server's side of the ceremonies, no
//! HTTP. The checks themselves are [`fernwart_proto::webauthn`]'s, the state the store's:
//!
//! - a challenge is 32 random bytes, stored with its purpose (and user) for
//!   [`CHALLENGE_TTL`] seconds and taken once (compare-and-set in the store): an assertion or
//!   registration answered to a spent or unknown challenge is refused;
//! - the relying party is the host of the server's `public_url`, the origin its origin;
//! - registration takes attestation `none` and an ES256 key, with the user verified;
//! - a login's key must be the user's own, verified (PIN or biometrics), its signature counter
//!   growing (compare-and-set): a cloned key or a replayed assertion is refused;
//! - an approval signed in the browser is an assertion whose challenge is the SHA-256 of the
//!   session's grant bytes: the same the agent checks against the key pinned in its agent.toml.

use axum::http::StatusCode;
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use fernwart_proto::{
    approval::ApproverKey,
    webauthn::{self, Assertion, Es256Key, Expect},
};

use crate::{
    api::{account::KeyFactor, ApiError, ApiResult, Authed},
    audit::{Entry, Event, LoginFailure},
    authz::{Action, Object},
    domain::{session::Session, UnixSecs},
    relay::grant_fields,
    store::{ChallengePurpose, Credential},
    util, App,
};

/// How long a challenge may be answered.
pub const CHALLENGE_TTL: i64 = 300;
/// The longest name a user gives a key.
pub const MAX_NAME: usize = 64;

/// Who the browser's authenticator signs for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelyingParty {
    /// The host of `public_url` (what the key is bound to).
    pub id: String,
    /// `https://host[:port]`, as the browser reports it.
    pub origin: String,
}

/// The relying party of this server, from its `public_url`.
pub fn relying_party(app: &App) -> ApiResult<RelyingParty> {
    let url = url::Url::parse(&app.cfg.settings.server.public_url).map_err(|e| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("the server's public_url: {e}"))
    })?;
    let id = url
        .host_str()
        .ok_or_else(|| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the server's public_url has no host")
        })?
        .to_ascii_lowercase();
    Ok(RelyingParty { id, origin: url.origin().ascii_serialization() })
}

/// A fresh challenge for `purpose` (and `user`), stored until it is taken or expires.
pub async fn new_challenge(
    app: &App,
    purpose: ChallengePurpose,
    user: Option<i64>,
) -> ApiResult<Vec<u8>> {
    let bytes: [u8; 32] = rand::random();
    let key = URL_SAFE_NO_PAD.encode(bytes);
    let now = util::now();
    let stored = app
        .store
        .run(move |b| b.webauthn_challenge_new(&key, purpose, user, now, now + CHALLENGE_TTL))
        .await?;
    if !stored {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many security key ceremonies pending; try again later",
        ));
    }
    Ok(bytes.to_vec())
}

/// Takes the challenge that `client_data` answers, once.
async fn take_challenge(
    app: &App,
    client_data: &[u8],
    purpose: ChallengePurpose,
    user: Option<i64>,
    now: UnixSecs,
) -> ApiResult<Option<Vec<u8>>> {
    let Ok(challenge) = webauthn::client_data_challenge(client_data) else { return Ok(None) };
    let key = URL_SAFE_NO_PAD.encode(&challenge);
    let taken = app.store.run(move |b| b.webauthn_challenge_take(&key, purpose, user, now)).await?;
    Ok(taken.then_some(challenge))
}

fn b64(what: &str, s: &str, max: usize) -> ApiResult<Vec<u8>> {
    if s.len() > max * 4 / 3 + 4 {
        return Err(ApiError::bad(format!("the security key's {what} is too long")));
    }
    URL_SAFE_NO_PAD
        .decode(s.trim())
        .map_err(|_| ApiError::bad(format!("the security key's {what} is not base64url")))
}

/// Registers a key for the caller from the browser's answer to `navigator.credentials.create`.
pub async fn register(
    app: &App,
    a: &Authed,
    name: &str,
    attestation: &str,
    client_data: &str,
) -> ApiResult<Credential> {
    a.allow(app, Action::SecurityKeyAdd, Object::None)?;
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(ApiError::bad(format!("a key's name: 1 to {MAX_NAME} characters")));
    }
    let attestation = b64("attestation", attestation, webauthn::MAX_ATTESTATION)?;
    let client_data = b64("client data", client_data, webauthn::MAX_CLIENT_DATA)?;
    let c = &a.caller;
    let now = util::now();
    let rp = relying_party(app)?;
    let Some(challenge) =
        take_challenge(app, &client_data, ChallengePurpose::Register, Some(c.user_id), now).await?
    else {
        return Err(ApiError::bad(
            "the registration answers no pending challenge (expired or used): try again",
        ));
    };
    let expect = Expect {
        rp_id: &rp.id,
        origin: Some(&rp.origin),
        challenge: &challenge,
        user_verified: true,
    };
    let reg = webauthn::verify_registration(&attestation, &client_data, &expect)
        .map_err(|e| ApiError::bad(format!("the security key's registration: {e}")))?;
    let key = ApproverKey::WebAuthn(reg.key);
    let cred_id = URL_SAFE_NO_PAD.encode(&reg.credential_id);
    let entry = Entry::new(
        &c.name,
        &c.source,
        Event::WebauthnAdd {
            user: c.name.clone(),
            name: name.to_owned(),
            fingerprint: key.fingerprint(),
        },
    );
    let (user, n, id, k, count) =
        (c.user_id, name.to_owned(), cred_id.clone(), key.to_string(), reg.sign_count);
    let added =
        app.store.run(move |b| b.webauthn_add(user, &n, &id, &k, count, now, &entry)).await?;
    if !added {
        return Err(ApiError::conflict(
            "this key is registered already, or you have the most keys allowed",
        ));
    }
    app.store.run(move |b| b.webauthn_credential(&cred_id)).await?.ok_or_else(|| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the key just registered is gone")
    })
}

/// The caller's keys.
pub async fn list(app: &App, a: &Authed) -> ApiResult<Vec<Credential>> {
    a.allow(app, Action::SecurityKeyList, Object::None)?;
    let user = a.caller.user_id;
    Ok(app.store.run(move |b| b.webauthn_list(user)).await?)
}

/// Removes one of the caller's keys.
pub async fn remove(app: &App, a: &Authed, id: i64) -> ApiResult<()> {
    a.allow(app, Action::SecurityKeyRemove, Object::None)?;
    let c = &a.caller;
    let user = c.user_id;
    let keys = app.store.run(move |b| b.webauthn_list(user)).await?;
    let Some(k) = keys.into_iter().find(|k| k.id == id) else {
        return Err(ApiError::not_found("no such security key of yours"));
    };
    let entry = Entry::new(
        &c.name,
        &c.source,
        Event::WebauthnRemove {
            user: c.name.clone(),
            name: k.name.clone(),
            fingerprint: fingerprint(&k),
        },
    );
    if !app.store.run(move |b| b.webauthn_remove(user, id, &entry)).await? {
        return Err(ApiError::not_found("no such security key of yours"));
    }
    Ok(())
}

/// The fingerprint of a stored key (its public key as written).
pub fn fingerprint(k: &Credential) -> String {
    k.public_key.parse::<ApproverKey>().map_or_else(|_| "?".to_owned(), |p| p.fingerprint())
}

/// Checks a login's security key for user `user` (the password was right): `None` when it
/// passes, else the failure the login records (and counts toward the lockout).
pub async fn login_factor(
    app: &App,
    user: i64,
    k: &KeyFactor,
    now: UnixSecs,
) -> ApiResult<Option<LoginFailure>> {
    let Ok(assertion) = Assertion::from_compact(&k.assertion) else {
        return Ok(Some(LoginFailure::WrongKey));
    };
    let Some(challenge) =
        take_challenge(app, &assertion.client_data_json, ChallengePurpose::Login, None, now)
            .await?
    else {
        return Ok(Some(LoginFailure::WrongKey));
    };
    let expect = Expect {
        rp_id: &k.rp_id,
        origin: Some(&k.origin),
        challenge: &challenge,
        user_verified: true,
    };
    match check_own_key(app, user, &assertion, &expect, now).await? {
        Ok(_) => Ok(None),
        Err(f) => Ok(Some(f)),
    }
}

/// The user's key that made `assertion`, verified, its counter moved on.
async fn check_own_key(
    app: &App,
    user: i64,
    assertion: &Assertion,
    expect: &Expect<'_>,
    now: UnixSecs,
) -> ApiResult<Result<Credential, LoginFailure>> {
    let cred_id = URL_SAFE_NO_PAD.encode(&assertion.credential_id);
    let Some(cred) = app.store.run(move |b| b.webauthn_credential(&cred_id)).await? else {
        return Ok(Err(LoginFailure::WrongKey));
    };
    if cred.user_id != user {
        return Ok(Err(LoginFailure::WrongKey));
    }
    let Ok(key) = Es256Key::parse(&cred.public_key) else {
        return Ok(Err(LoginFailure::WrongKey));
    };
    let Ok(asserted) = webauthn::verify_assertion(&key, assertion, expect) else {
        return Ok(Err(LoginFailure::WrongKey));
    };
    if !webauthn::counter_ok(cred.sign_count, asserted.sign_count) {
        return Ok(Err(LoginFailure::KeyCounter));
    }
    let (id, old, new) = (cred.id, cred.sign_count, asserted.sign_count);
    if !app.store.run(move |b| b.webauthn_counter(id, old, new, now)).await? {
        return Ok(Err(LoginFailure::KeyCounter));
    }
    Ok(Ok(cred))
}

/// What the approver's key signs for session `s`: the SHA-256 of its grant's bytes.
pub fn approval_challenge(s: &Session) -> [u8; 32] {
    webauthn::grant_challenge(&grant_fields(s).to_bytes())
}

/// An approval signed in the browser: the caller's own key, verified here for this console's
/// origin, the user verified and its counter growing; returns the API's approve body (the
/// key and the assertion), which the API checks over the grant as the agent will.
pub async fn approval_body(
    app: &App,
    a: &Authed,
    s: &Session,
    assertion: &str,
) -> ApiResult<Vec<u8>> {
    let assertion = Assertion::from_compact(assertion)
        .map_err(|e| ApiError::bad(format!("the security key's answer: {e}")))?;
    let rp = relying_party(app)?;
    let challenge = approval_challenge(s);
    let expect = Expect {
        rp_id: &rp.id,
        origin: Some(&rp.origin),
        challenge: &challenge,
        user_verified: true,
    };
    let cred = match check_own_key(app, a.caller.user_id, &assertion, &expect, util::now()).await? {
        Ok(c) => c,
        Err(LoginFailure::KeyCounter) => {
            return Err(ApiError::forbidden("the security key's counter did not grow: a replayed answer, or a cloned key"))
        }
        Err(_) => {
            return Err(ApiError::forbidden(
                "the security key's answer is not valid for this session's grant, or the key is not one of yours",
            ))
        }
    };
    let body = serde_json::json!({ "key": cred.public_key, "signature": assertion.to_compact() });
    Ok(body.to_string().into_bytes())
}
