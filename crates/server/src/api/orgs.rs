//! `/v1/orgs` and `/v1/contracts`: operator and provider organizations, service contracts.

use axum::{extract::State, Json};
use fernwart_api::{ContractAddRequest, ContractInfo, OrgAddRequest, OrgInfo};

use super::{ApiError, ApiResult, Authed, Body};
use crate::{
    audit::{Entry, Event},
    authz::{self, Action, Object},
    domain::names,
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
    if (req.allow_no_approval || req.require_signed) && req.kind != fernwart_api::OrgKind::Operator
    {
        return Err(ApiError::bad("only an operator decides about approvals on its machines"));
    }
    if req.allow_no_approval && req.require_signed {
        return Err(ApiError::bad(
            "--allow-no-approval and --require-signed contradict each other: a signed approval is an approval",
        ));
    }
    let max_session_secs = match &req.max_session {
        Some(m) if req.kind == fernwart_api::OrgKind::Operator => Some(
            humantime::parse_duration(m)
                .map_err(|e| ApiError::bad(format!("--max-session {m:?}: {e}")))?
                .as_secs()
                .clamp(60, 366 * 24 * 3600) as i64,
        ),
        Some(_) => return Err(ApiError::bad("only an operator limits sessions on its machines")),
        None => None,
    };
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

pub async fn list(State(app): State<App>, a: Authed) -> ApiResult<Json<Vec<OrgInfo>>> {
    a.allow(&app, Action::OrgList, Object::None)?;
    let orgs = app.store.run(|b| b.orgs()).await?;
    Ok(Json(
        orgs.into_iter()
            .filter(|o| authz::sees_org_listed(&a.caller, Some(&o.name)))
            .map(|o| OrgInfo {
                name: o.name,
                kind: o.kind,
                contracts: o.contracts,
                allow_no_approval: o.allow_no_approval,
                max_session_secs: o.max_session_secs,
                require_signed: o.require_signed,
            })
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
