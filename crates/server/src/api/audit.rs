//! `/v1/audit`: the trail, for auditors and admins.

use axum::extract::{Query, State};
use axum::Json;
use fernwart_api::{AuditQuery, AuditRecord};

use super::{ApiError, ApiResult, Authed};
use crate::{
    authz::{Action, Object},
    util, App,
};

pub async fn list(
    State(app): State<App>,
    a: Authed,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<Vec<AuditRecord>>> {
    a.allow(&app, Action::AuditList, Object::None)?;
    let since_ms = match &q.since {
        Some(s) => {
            util::parse_rfc3339(s)
                .ok_or_else(|| ApiError::bad(format!("--since {s:?} is not RFC 3339")))?
                * 1000
        }
        None => 0,
    };
    Ok(Json(app.store.run(move |b| b.audit_list(since_ms)).await?))
}
