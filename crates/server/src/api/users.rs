//! `/v1/users`: add, list, disable.

use axum::{
    extract::{Path, State},
    Json,
};
use fernwart_api::{UserAddRequest, UserAdded, UserDisabled, UserInfo};

use super::{ApiError, ApiResult, Authed, Body};
use crate::{
    audit::{Entry, Event},
    auth,
    authz::{self, Action, Object},
    domain::names,
    events::Change,
    store::NewUser,
    util, App,
};

pub async fn add(
    State(app): State<App>,
    a: Authed,
    Body(req): Body<UserAddRequest>,
) -> ApiResult<Json<UserAdded>> {
    a.allow(&app, Action::UserAdd, Object::Named(&req.name))?;
    if !names::valid(&req.name) {
        return Err(ApiError::bad("user name: 1-64 letters, digits, - _ . @"));
    }
    if req.org.as_ref().is_some_and(|o| !names::valid(o)) {
        return Err(ApiError::bad("organization name: 1-64 letters, digits, - _ . @"));
    }
    let expires_at = match &req.expires {
        Some(e) => Some(
            util::parse_rfc3339(e)
                .ok_or_else(|| ApiError::bad(format!("--expires {e:?} is not RFC 3339")))?,
        ),
        None => None,
    };
    auth::check_policy(&req.password, &app.settings.password(), &req.name)
        .map_err(ApiError::bad)?;
    let pw = req.password.clone();
    let hash = app.limits.hash(move || auth::hash_password(&pw)).await?.map_err(ApiError::bad)?;
    let user = NewUser {
        name: req.name.clone(),
        role: req.role,
        org: req.org.clone(),
        password_hash: hash,
        expires_at,
    };
    let c = &a.caller;
    let entry = Entry::new(
        &c.name,
        &c.source,
        Event::UserAdd {
            name: req.name.clone(),
            role: req.role,
            org: req.org,
            expires: req.expires,
        },
    );
    app.store.run(move |b| b.user_add(&user, util::now(), &entry)).await?;
    Ok(Json(UserAdded { name: req.name, role: req.role }))
}

pub async fn list(State(app): State<App>, a: Authed) -> ApiResult<Json<Vec<UserInfo>>> {
    a.allow(&app, Action::UserList, Object::None)?;
    let users = app.store.run(|b| b.users()).await?;
    Ok(Json(
        users
            .into_iter()
            .filter(|u| authz::sees_org_listed(&a.caller, u.org.as_deref()))
            .map(|u| UserInfo {
                name: u.name,
                role: u.role,
                org: u.org,
                disabled: u.disabled,
                mfa: u.mfa,
                expires: u.expires_at.map(util::rfc3339),
            })
            .collect(),
    ))
}

pub async fn disable(
    State(app): State<App>,
    a: Authed,
    Path(name): Path<String>,
) -> ApiResult<Json<UserDisabled>> {
    a.allow(&app, Action::UserDisable, Object::Named(&name))?;
    let c = &a.caller;
    if names::fold(&name) == names::fold(&c.name) {
        return Err(ApiError::bad("you cannot disable yourself"));
    }
    let entry = Entry::new(&c.name, &c.source, Event::UserDisable { name: name.clone() });
    let n = name.clone();
    let id = app.store.run(move |b| b.user_disable(&n, &entry)).await?;
    app.relay.events.publish(Change::UserDisabled { user: id });
    Ok(Json(UserDisabled { name, disabled: true }))
}
