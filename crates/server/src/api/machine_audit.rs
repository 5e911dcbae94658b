//! `/v1/machines/{name}/audit`: a machine's own records, as the server collected them from
//! its agent (`relay::agent_audit`), for admins and auditors of organizations that see the
//! machine.

use axum::{
    extract::{Path, Query, State},
    Json,
};
use fernwart_api::{AgentAuditQuery, AgentAuditRecord};

use super::{ApiError, ApiResult, Authed};
use crate::{
    authz::{Action, Object},
    domain::names,
    util, App,
};

/// The most records one page holds.
pub const PAGE: u32 = 1000;

pub async fn list(
    State(app): State<App>,
    a: Authed,
    Path(name): Path<String>,
    Query(q): Query<AgentAuditQuery>,
) -> ApiResult<Json<Vec<AgentAuditRecord>>> {
    if !names::valid(&name) {
        return Err(ApiError::bad("machine names: 1-64 letters, digits, - _ . @"));
    }
    let n = name.clone();
    let owner = app.store.run(move |b| b.machine_owner(&n)).await?;
    let owner = owner.ok_or_else(|| ApiError::not_found(format!("no machine {name}")))?;
    a.allow(
        &app,
        Action::MachineAudit,
        Object::Machine { name: &name, org: owner.org.as_deref() },
    )?;
    let after = q.after.unwrap_or(0);
    let limit = q.limit.unwrap_or(PAGE).clamp(1, PAGE) as usize;
    let machine = owner.id;
    let held = app.store.run(move |b| b.agent_audit(machine, after, limit)).await?;
    Ok(Json(
        held.into_iter()
            .map(|r| AgentAuditRecord { record: r.record, received: util::rfc3339(r.received_at) })
            .collect(),
    ))
}
