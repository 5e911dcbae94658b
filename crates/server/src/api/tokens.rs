//! `/v1/tokens`: API tokens for automation (admins create, list and revoke them).
//!
//! A token acts under its own name (`token-ID`) with the role it was given, until it expires
//! or is revoked; it never acts as a person (no approvals, no connects, no passwords, no
//! tokens), so only admin, session-admin and auditor tokens exist.

use axum::{
    extract::{Path, State},
    Json,
};
use fernwart_api::{TokenCreateRequest, TokenCreated, TokenInfo, TokenRevoked};

use super::{ApiError, ApiResult, Authed, Body};
use crate::{
    audit::{Entry, Event},
    authz::{self, Action, Object},
    domain::names,
    store::token_name,
    util, App,
};

/// The longest an API token may live.
const MAX_TOKEN_SECS: i64 = 366 * 24 * 3600;

pub async fn create(
    State(app): State<App>,
    a: Authed,
    Body(req): Body<TokenCreateRequest>,
) -> ApiResult<Json<TokenCreated>> {
    a.allow(&app, Action::TokenCreate, Object::None)?;
    authz::token_role(req.role).map_err(|r| ApiError::bad(r.reason))?;
    if req.org.as_ref().is_some_and(|o| !names::valid(o)) {
        return Err(ApiError::bad("organization name: 1-64 letters, digits, - _ . @"));
    }
    let now = util::now();
    let expires = util::parse_rfc3339(&req.expires)
        .ok_or_else(|| ApiError::bad(format!("--expires {:?} is not RFC 3339", req.expires)))?;
    if expires <= now {
        return Err(ApiError::bad("--expires must be in the future"));
    }
    if expires - now > MAX_TOKEN_SECS {
        return Err(ApiError::bad("an API token may live at most 366 days"));
    }
    let token = util::random_token();
    let hash = util::token_hash(&token);
    let c = &a.caller;
    let (actor, src) = (c.name.clone(), c.source.clone());
    let (role, org) = (req.role, req.org.clone());
    let expires_text = util::rfc3339(expires);
    let e = expires_text.clone();
    let id = app
        .store
        .run(move |b| {
            let entry = |id| {
                Entry::new(
                    &actor,
                    &src,
                    Event::TokenCreate {
                        name: token_name(id),
                        role,
                        org: org.clone(),
                        expires: e.clone(),
                    },
                )
            };
            b.api_token_create(&hash, role, org.as_deref(), &actor, now, expires, &entry)
        })
        .await?;
    Ok(Json(TokenCreated {
        id,
        name: token_name(id),
        token,
        role: req.role,
        org: req.org,
        expires: expires_text,
    }))
}

pub async fn list(State(app): State<App>, a: Authed) -> ApiResult<Json<Vec<TokenInfo>>> {
    a.allow(&app, Action::TokenList, Object::None)?;
    let tokens = app.store.run(|b| b.api_tokens()).await?;
    Ok(Json(
        tokens
            .into_iter()
            .map(|t| TokenInfo {
                id: t.id,
                name: token_name(t.id),
                role: t.role,
                org: t.org,
                created_by: t.created_by,
                created_at: util::rfc3339(t.created_at),
                expires: util::rfc3339(t.expires_at),
                revoked: t.revoked,
            })
            .collect(),
    ))
}

pub async fn revoke(
    State(app): State<App>,
    a: Authed,
    Path(id): Path<String>,
) -> ApiResult<Json<TokenRevoked>> {
    let id: i64 = id
        .trim_start_matches("token-")
        .parse()
        .map_err(|_| ApiError::bad(format!("{id:?} is not a token id")))?;
    a.allow(&app, Action::TokenRevoke, Object::Named(&token_name(id)))?;
    let c = &a.caller;
    let entry = Entry::new(&c.name, &c.source, Event::TokenRevoke { name: token_name(id) });
    app.store.run(move |b| b.api_token_revoke(id, util::now(), &entry)).await?;
    Ok(Json(TokenRevoked { id, revoked: true }))
}
