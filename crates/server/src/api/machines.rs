//! `/v1/machines` and `/v1/enroll`: add, list, revoke; an agent's one-time enrolment.

use axum::{
    extract::{Path, State},
    Json,
};
use fernwart_api::{
    EnrollRequest, EnrollResponse, MachineAddRequest, MachineAdded, MachineInfo, MachineRevoked,
    SwitchState,
};

use super::{source, ApiError, ApiResult, Authed, Body, ConnInfo, LimitError};
use crate::{
    audit::{Entry, Event},
    authz::{self, Action, Object},
    domain::names,
    events::Change,
    store::IssuedCert,
    util, App,
};

pub async fn add(
    State(app): State<App>,
    a: Authed,
    Body(req): Body<MachineAddRequest>,
) -> ApiResult<Json<MachineAdded>> {
    a.allow(&app, Action::MachineAdd, Object::Named(&req.name))?;
    if !names::valid(&req.name) {
        return Err(ApiError::bad("machine name: 1-64 letters, digits, - _ . @"));
    }
    let token = util::random_token();
    let now = util::now();
    let expires = now + app.cfg.enrol_token_ttl.as_secs() as i64;
    let c = &a.caller;
    let entry = Entry::new(
        &c.name,
        &c.source,
        Event::MachineAdd {
            name: req.name.clone(),
            org: req.org.clone(),
            token_expires: util::rfc3339(expires),
        },
    );
    let (name, org, hash) = (req.name.clone(), req.org.clone(), util::token_hash(&token));
    app.store
        .run(move |b| b.machine_add(&name, org.as_deref(), &hash, now, expires, &entry))
        .await?;
    Ok(Json(MachineAdded { name: req.name, token, expires: util::rfc3339(expires) }))
}

pub async fn list(State(app): State<App>, a: Authed) -> ApiResult<Json<Vec<MachineInfo>>> {
    a.allow(&app, Action::MachineList, Object::None)?;
    let hide_addresses = !authz::sees_addresses(&a.caller);
    let org = authz::machine_scope(&a.caller);
    let (machines, keys) =
        app.store.run(move |b| Ok((b.machines(org.as_deref())?, b.machine_e2e_keys()?))).await?;
    let keys: std::collections::HashMap<i64, String> = keys.into_iter().collect();
    Ok(Json(
        machines
            .into_iter()
            .map(|m| {
                let live = app.relay.hub.online(m.id);
                MachineInfo {
                    name: m.name,
                    org: m.org,
                    online: live.is_some(),
                    switch: SwitchState::from_link(live),
                    targets: if hide_addresses {
                        m.targets
                            .into_iter()
                            .map(|t| fernwart_api::TargetInfo { address: String::new(), ..t })
                            .collect()
                    } else {
                        m.targets
                    },
                    enrolled: m.enrolled_at.is_some(),
                    revoked: m.revoked,
                    last_seen: m.last_seen.map(util::rfc3339),
                    signature_required: m.operator_requires_signed
                        || m.trust.as_deref() == Some(fernwart_proto::approval::LEVEL_SIGNED),
                    trust: m.trust.unwrap_or_else(|| "unknown".to_owned()),
                    approvers: m.approvers,
                    e2e_key: keys.get(&m.id).cloned(),
                }
            })
            .collect(),
    ))
}

pub async fn revoke(
    State(app): State<App>,
    a: Authed,
    Path(name): Path<String>,
) -> ApiResult<Json<MachineRevoked>> {
    a.allow(&app, Action::MachineRevoke, Object::Named(&name))?;
    let c = &a.caller;
    let n = name.clone();
    let actor = c.name.clone();
    let src = c.source.clone();
    let (id, revoked) = app
        .store
        .run(move |b| {
            // Each session it revokes gets a record of its own.
            let entry = Entry::new(&actor, &src, Event::MachineRevoke { name: n.clone() });
            b.machine_revoke(&n, util::now(), &entry)
        })
        .await?;
    for applied in revoked {
        app.relay.events.publish(Change::Session(applied));
    }
    app.relay.events.publish(Change::MachineRevoked { machine: id });
    Ok(Json(MachineRevoked { name, revoked: true }))
}

pub async fn enroll(
    State(app): State<App>,
    info: Option<axum::Extension<ConnInfo>>,
    Body(req): Body<EnrollRequest>,
) -> ApiResult<Json<EnrollResponse>> {
    let src = source(info.as_deref());
    let now = util::now();
    let token = req.token.trim();
    if token.is_empty() || token.len() > 128 || req.csr.len() > 16 * 1024 {
        return Err(ApiError::bad("enrolment refused: malformed token or CSR"));
    }
    // Only refusals draw on the source's allowance: a site may enrol many gateways at once.
    let ip = info.as_ref().map(|i| i.remote.ip());
    if app.limits.source_exhausted(ip) {
        return Err(LimitError::TooFast.into());
    }
    let hash = util::token_hash(token);
    let h = hash.clone();
    let found = app.store.run(move |b| b.enrol_token(&h)).await?;
    let refuse = |machine: Option<String>, why: &str| {
        app.limits.source_failed(ip);
        let entry =
            Entry::new("unknown", &src, Event::EnrolRefused { machine, reason: why.into() });
        (entry, ApiError::unauthorized(format!("enrolment refused: {why}")))
    };
    let why = match &found {
        None => Some("unknown token"),
        Some(t) if t.machine_revoked => Some("machine is revoked"),
        Some(t) if t.used => Some("token already used"),
        Some(t) if t.expires_at <= now => Some("token expired"),
        Some(_) => None,
    };
    let token = match (found, why) {
        (Some(t), None) => t,
        (t, why) => {
            let (entry, err) = refuse(t.map(|t| t.machine), why.unwrap_or("unknown token"));
            app.relay.audit.record_now(entry).await;
            return Err(err);
        }
    };
    let e2e_key = match req.e2e_key.as_deref() {
        None => None,
        Some(k) => Some(
            k.parse::<fernwart_proto::e2e::PublicKey>()
                .map_err(|e| ApiError::bad(format!("enrolment refused: end-to-end key: {e}")))?
                .to_string(),
        ),
    };
    let issued = app
        .ca
        .sign_machine_csr(&req.csr, &token.machine, app.cfg.cert_ttl)
        .map_err(|e| ApiError::bad(e.to_string()))?;
    let cert = IssuedCert {
        fingerprint: issued.fingerprint.clone(),
        not_after: issued.not_after,
        e2e_key: e2e_key.clone(),
    };
    let entry = Entry::new(
        &token.machine,
        &src,
        Event::MachineEnrol {
            name: token.machine.clone(),
            fingerprint: issued.fingerprint.clone(),
            not_after: util::rfc3339(issued.not_after),
            e2e_key,
        },
    );
    // Claiming the token and recording the certificate happen together, once, and never for
    // a machine revoked meanwhile.
    if !app.store.run(move |b| b.enrol(&hash, &cert, now, &entry)).await? {
        let (entry, err) = refuse(Some(token.machine), "token already used or machine revoked");
        app.relay.audit.record_now(entry).await;
        return Err(err);
    }
    Ok(Json(EnrollResponse {
        machine: token.machine,
        certificate: issued.pem,
        ca: app.ca.pem().to_owned(),
    }))
}
