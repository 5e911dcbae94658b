//! `/v1/audit`: the trail, filtered and paginated; `/v1/audit/export`: the chain as stored,
//! with the checkpoints and the key to verify it elsewhere.

use axum::extract::{Query, State};
use axum::Json;
use fernwart_api::{AuditExport, AuditQuery, AuditRecord, ExportCheckpoint, EXPORT_FORMAT};
use fernwart_proto::chain;

use super::{ApiError, ApiResult, Authed};
use crate::{
    authz::{self, Action, Object},
    domain::names,
    store::AuditFilter,
    util, App,
};

/// The most records one page holds.
pub const PAGE: u32 = 1000;
/// The most records one export holds (a bigger trail is exported in parts with `--after`).
const EXPORT_MAX: usize = 1_000_000;

pub async fn list(
    State(app): State<App>,
    a: Authed,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<Vec<AuditRecord>>> {
    a.allow(&app, Action::AuditList, Object::None)?;
    let time = |what: &str, v: &Option<String>| -> ApiResult<Option<i64>> {
        v.as_ref()
            .map(|s| {
                util::parse_rfc3339(s)
                    .map(|t| t * 1000)
                    .ok_or_else(|| ApiError::bad(format!("--{what} {s:?} is not RFC 3339")))
            })
            .transpose()
    };
    for (what, v) in
        [("user", &q.user), ("org", &q.org), ("machine", &q.machine), ("session", &q.session)]
    {
        if v.as_ref().is_some_and(|n| !names::valid(n)) {
            return Err(ApiError::bad(format!("--{what}: 1-64 letters, digits, - _ . @")));
        }
    }
    if q.kind.as_ref().is_some_and(|k| {
        k.is_empty()
            || k.len() > 64
            || !k.chars().all(|c| c.is_ascii_lowercase() || c == '.' || c == '_')
    }) {
        return Err(ApiError::bad(
            "--kind: an action such as session.approve, or a family such as session",
        ));
    }
    let (only_actor, only_org) = authz::audit_scope(&a.caller);
    let filter = AuditFilter {
        after: q.after.unwrap_or(0),
        since_ms: time("since", &q.since)?,
        until_ms: time("until", &q.until)?,
        actor: q.user,
        org: q.org,
        machine: q.machine,
        session: q.session,
        kind: q.kind,
        only_actor,
        only_org,
        limit: i64::from(q.limit.unwrap_or(PAGE).clamp(1, PAGE)),
    };
    // What happened before this read is in it: the queued records of links, tunnels and
    // refusals are written first.
    app.relay.audit.flush().await;
    Ok(Json(app.store.run(move |b| b.audit_list(&filter)).await?))
}

pub async fn export(
    State(app): State<App>,
    a: Authed,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<AuditExport>> {
    a.allow(&app, Action::AuditExport, Object::None)?;
    let after = u64::try_from(q.after.unwrap_or(0)).unwrap_or(0);
    app.relay.audit.flush().await;
    let (records, checkpoints) = app
        .store
        .run(move |b| Ok((b.audit_chain(after, EXPORT_MAX)?, b.audit_checkpoints()?)))
        .await?;
    let first_prev = records.first().map_or_else(|| chain::GENESIS.to_owned(), |r| r.prev.clone());
    Ok(Json(AuditExport {
        format: EXPORT_FORMAT.to_owned(),
        server_key: app.audit_key.public_hex(),
        first_seq: after + 1,
        first_prev,
        records,
        checkpoints: checkpoints
            .into_iter()
            .filter(|c| c.seq > after)
            .map(|c| ExportCheckpoint {
                seq: c.seq,
                hash: c.hash,
                time: util::rfc3339_ms(c.time_ms),
                signature: c.signature,
            })
            .collect(),
    }))
}
