//! `/v1/orgs` and `/v1/contracts`: operator and provider organizations, service contracts.

use axum::{
    extract::{Path, State},
    Json,
};
use fernwart_api::{ContractAddRequest, ContractInfo, OrgAddRequest, OrgInfo, OrgSetRequest};

use super::{ApiError, ApiResult, Authed, Body};
use crate::{
    audit::{Entry, Event},
    authz::{self, Action, Object},
    domain::{
        names,
        org::{OrgChange, OrgPolicy, MAX_SESSION_RANGE},
    },
    store::OrgRecord,
    util, App,
};

pub async fn add(
    State(app): State<App>,
    a: Authed,
    Body(req): Body<OrgAddRequest>,
) -> ApiResult<Json<OrgInfo>> {
    a.allow(&app, Action::OrgAdd, Object::Named(&req.name))?;
    if !names::valid(&req.name) {
        return Err(ApiError::bad("organization name: 1-64 letters, digits, - _ . @"));
    }
    let c = &a.caller;
    let entry = Entry::new(
        &c.name,
        &c.source,
        Event::OrgAdd {
            name: req.name.clone(),
            kind: req.kind,
            require_signed: req.require_signed,
        },
    );
    let max_session_secs = req.max_session.as_deref().map(max_session).transpose()?;
    OrgPolicy {
        allow_no_approval: req.allow_no_approval,
        max_session_secs,
        require_signed: req.require_signed,
    }
    .check(req.kind)
    .map_err(ApiError::bad)?;
    let (name, kind, free, signed) =
        (req.name.clone(), req.kind, req.allow_no_approval, req.require_signed);
    app.store
        .run(move |b| b.org_add(&name, kind, free, max_session_secs, signed, util::now(), &entry))
        .await?;
    Ok(Json(OrgInfo {
        name: req.name,
        kind: req.kind,
        contracts: Vec::new(),
        allow_no_approval: req.allow_no_approval,
        max_session_secs,
        require_signed: req.require_signed,
    }))
}

/// `--max-session`: a duration, in seconds within [`MAX_SESSION_RANGE`].
fn max_session(m: &str) -> Result<i64, ApiError> {
    let secs = humantime::parse_duration(m)
        .map_err(|e| ApiError::bad(format!("--max-session {m:?}: {e}")))?
        .as_secs();
    let (lo, hi) = MAX_SESSION_RANGE;
    Ok(i64::try_from(secs).unwrap_or(hi).clamp(lo, hi))
}

/// `PATCH /v1/orgs/{name}` (`fernwart org set`): an admin changes an operator's rules, e.g.
/// requires signed approvals on its machines from now on.
pub async fn set(
    State(app): State<App>,
    a: Authed,
    Path(name): Path<String>,
    Body(req): Body<OrgSetRequest>,
) -> ApiResult<Json<OrgInfo>> {
    a.allow(&app, Action::OrgSet, Object::Named(&name))?;
    let max_session_secs = match req.max_session.as_deref() {
        None => None,
        Some("none") => Some(None),
        Some(m) => Some(Some(max_session(m)?)),
    };
    let change = OrgChange {
        allow_no_approval: req.allow_no_approval,
        max_session_secs,
        require_signed: req.require_signed,
    };
    if change.is_empty() {
        return Err(ApiError::bad(
            "nothing to change: give --require-signed, --allow-no-approval or --max-session",
        ));
    }
    let (actor, source, org) = (a.caller.name.clone(), a.caller.source.clone(), name.clone());
    let entry =
        move |policy| Entry::new(&actor, &source, Event::OrgSet { name: org.clone(), policy });
    let n = name.clone();
    app.store.run(move |b| b.org_set(&n, change, &entry)).await?;
    let orgs = app.store.run(|b| b.orgs()).await?;
    let o = orgs
        .into_iter()
        .find(|o| o.name.eq_ignore_ascii_case(&name))
        .ok_or_else(|| ApiError::not_found(format!("no organization {name}")))?;
    Ok(Json(info(o)))
}

/// A stored organization as the API shows it.
fn info(o: OrgRecord) -> OrgInfo {
    OrgInfo {
        name: o.name,
        kind: o.kind,
        contracts: o.contracts,
        allow_no_approval: o.allow_no_approval,
        max_session_secs: o.max_session_secs,
        require_signed: o.require_signed,
    }
}

pub async fn list(State(app): State<App>, a: Authed) -> ApiResult<Json<Vec<OrgInfo>>> {
    a.allow(&app, Action::OrgList, Object::None)?;
    let orgs = app.store.run(|b| b.orgs()).await?;
    Ok(Json(
        orgs.into_iter()
            .filter(|o| authz::sees_org_listed(&a.caller, Some(&o.name)))
            .map(info)
            .collect(),
    ))
}

pub async fn contract_add(
    State(app): State<App>,
    a: Authed,
    Body(req): Body<ContractAddRequest>,
) -> ApiResult<Json<ContractInfo>> {
    let what = format!("{}/{}", req.provider, req.operator);
    a.allow(&app, Action::ContractAdd, Object::Named(&what))?;
    let c = &a.caller;
    let entry = Entry::new(
        &c.name,
        &c.source,
        Event::ContractAdd { provider: req.provider.clone(), operator: req.operator.clone() },
    );
    let (p, o) = (req.provider.clone(), req.operator.clone());
    app.store.run(move |b| b.contract_add(&p, &o, util::now(), &entry)).await?;
    Ok(Json(ContractInfo { provider: req.provider, operator: req.operator }))
}
