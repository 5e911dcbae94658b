//! `/v1/sessions`: prepare, list, show, approve (with an approver's signature, see
//! `fernwart_proto::approval`), reject, end; the grant an approver signs.

use axum::{
    extract::{Path, State},
    Json,
};
use fernwart_api::{ApproveRequest, SessionCreateRequest, SessionGrant, SessionInfo};
use fernwart_proto::approval::ApproverKey;

use super::{ApiError, ApiResult, Authed, Body};
use crate::{
    audit::{Entry, Event},
    authz::{self, Action, Object, PrepareAsk, PrepareFacts, Signature},
    domain::{
        names,
        session::{Session, SignedApproval},
        SessionEvent,
    },
    relay::grant_fields,
    sessions,
    store::{NewSession, StoreError},
    util, App,
};

/// The longest time window a session may have (windows of years are refused).
const MAX_WINDOW_SECS: i64 = 366 * 24 * 3600;

pub fn info(s: &Session) -> SessionInfo {
    SessionInfo {
        name: s.name.clone(),
        machine: s.machine.clone(),
        targets: s.targets.clone(),
        users: s.user_names(),
        reason: s.reason.clone(),
        state: s.state,
        approval_required: s.approval_required,
        from: util::rfc3339(s.from),
        until: util::rfc3339(s.until),
        created_by: s.created_by.clone(),
        created_at: util::rfc3339(s.created_at),
        decided_by: s.decided_by.clone(),
        ended_by: s.ended_by.clone(),
        record: s.record,
        signed_by: s.approval.as_ref().map(|a| {
            a.key.parse::<ApproverKey>().map_or_else(|_| a.key.clone(), |k| k.fingerprint())
        }),
    }
}

pub async fn create(
    State(app): State<App>,
    a: Authed,
    Body(req): Body<SessionCreateRequest>,
) -> ApiResult<Json<SessionInfo>> {
    prepare(&app, &a, req).await.map(Json)
}

/// Prepares a session for the caller: the one path of the API (`fernwart session create`) and
/// the console's form.
pub async fn prepare(app: &App, a: &Authed, req: SessionCreateRequest) -> ApiResult<SessionInfo> {
    a.allow(app, Action::SessionCreate, Object::Named(&req.name))?;
    if !names::valid(&req.name) {
        return Err(ApiError::bad("session name: 1-64 letters, digits, - _ . @"));
    }
    if req.reason.chars().any(char::is_control) {
        return Err(ApiError::bad("the reason must be one line of printable text"));
    }
    if req.reason.trim().is_empty() || req.reason.len() > 1000 {
        return Err(ApiError::bad(
            "a reason (ticket reference) is required, at most 1000 characters",
        ));
    }
    if req.targets.is_empty() || req.users.is_empty() {
        return Err(ApiError::bad("a session needs at least one --target and one --user"));
    }
    if req.targets.len() > 64 || req.users.len() > 64 {
        return Err(ApiError::bad("at most 64 targets and 64 users per session"));
    }
    if let Some(bad) = req.targets.iter().chain(&req.users).find(|n| !names::valid(n)) {
        return Err(ApiError::bad(format!("{bad:?} is not a valid target or user name")));
    }
    let now = util::now();
    let from = match &req.from {
        Some(f) => util::parse_rfc3339(f)
            .ok_or_else(|| ApiError::bad(format!("--from {f:?} is not RFC 3339")))?,
        None => now,
    };
    let until = match (&req.until, req.duration_secs) {
        (Some(_), Some(_)) => return Err(ApiError::bad("give --until or --duration, not both")),
        (Some(u), None) => util::parse_rfc3339(u)
            .ok_or_else(|| ApiError::bad(format!("--until {u:?} is not RFC 3339")))?,
        (None, Some(d)) => from.saturating_add(i64::try_from(d).unwrap_or(i64::MAX)),
        (None, None) => from + app.settings.get().default_duration.as_secs() as i64,
    };
    if until <= from || until <= now {
        return Err(ApiError::bad("the time window must end after it starts and in the future"));
    }
    if until - from > MAX_WINDOW_SECS {
        return Err(ApiError::bad("the time window may be at most 366 days"));
    }
    let c = &a.caller;
    let name = req.name.clone();
    let new = NewSession {
        name: req.name.clone(),
        machine: req.machine.clone(),
        targets: req.targets.clone(),
        users: req.users.clone(),
        reason: req.reason.clone(),
        approval_required: req.approval,
        from,
        until,
        created_by: c.name.clone(),
        created_at: now,
        record: req.record,
    };
    let mut targets = req.targets.clone();
    targets.sort();
    targets.dedup();
    let entry = Entry::new(
        &c.name,
        &c.source,
        Event::SessionCreate {
            name: req.name,
            machine: req.machine,
            targets,
            users: req.users,
            from: util::rfc3339(from),
            until: util::rfc3339(until),
            reason: req.reason,
            approval_required: req.approval,
            record: req.record,
        },
    );
    let ask = PrepareAsk {
        approval_required: req.approval,
        from,
        until,
        no_approval_default: app.cfg.settings.sessions.allow_no_approval,
    };
    let caller = c.clone();
    let rule = move |facts: &PrepareFacts| authz::prepare(&caller, ask, facts);
    match app.store.run(move |b| b.session_create(&new, &rule, &entry)).await {
        Ok(s) => Ok(info(&s)),
        Err(StoreError::Refused(r)) => Err(a.refused(app, Action::SessionCreate, &name, r)),
        Err(e) => Err(e.into()),
    }
}

pub async fn list(State(app): State<App>, a: Authed) -> ApiResult<Json<Vec<SessionInfo>>> {
    a.allow(&app, Action::SessionList, Object::None)?;
    let scope = authz::session_scope(&a.caller);
    let list = app.store.run(move |b| b.sessions(scope.only_user, scope.org.as_deref())).await?;
    Ok(Json(list.iter().map(info).collect()))
}

async fn load(app: &App, name: &str) -> ApiResult<Session> {
    let n = name.to_owned();
    app.store
        .run(move |b| b.session_by_name(&n))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no session {name}")))
}

pub async fn show(
    State(app): State<App>,
    a: Authed,
    Path(name): Path<String>,
) -> ApiResult<Json<SessionInfo>> {
    let s = load(&app, &name).await?;
    a.allow(&app, Action::SessionShow, Object::Session(&s))?;
    Ok(Json(info(&s)))
}

/// `GET /v1/sessions/NAME/grant`: what an approver signs (whoever may approve the session).
pub async fn grant(
    State(app): State<App>,
    a: Authed,
    Path(name): Path<String>,
) -> ApiResult<Json<SessionGrant>> {
    let s = load(&app, &name).await?;
    a.allow(&app, Action::SessionApprove, Object::Session(&s))?;
    let machine = s.machine_id;
    let facts = app.store.run(move |b| b.signing_facts(machine)).await?;
    Ok(Json(SessionGrant {
        grant: grant_fields(&s),
        signature_required: facts.required(),
        approvers: facts.approvers,
    }))
}

pub async fn action(
    State(app): State<App>,
    a: Authed,
    Path((name, action)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult<Json<SessionInfo>> {
    decide(&app, &a, &name, &action, &body).await.map(Json)
}

/// Applies `action` (`approve`, `reject`, `end`, `revoke`) to session `name` for the caller:
/// the one path of the API and the console (authorization, four eyes, organization rules,
/// an approval's signature). `body`: an approval's JSON (empty: unsigned).
pub async fn decide(
    app: &App,
    a: &Authed,
    name: &str,
    action: &str,
    body: &[u8],
) -> ApiResult<SessionInfo> {
    let (action, event) = match action {
        "approve" => (Action::SessionApprove, SessionEvent::Approve),
        "reject" => (Action::SessionReject, SessionEvent::Reject),
        "end" => (Action::SessionEnd, SessionEvent::End),
        "revoke" => (Action::SessionRevoke, SessionEvent::Revoke),
        other => {
            return Err(ApiError::not_found(format!(
                "unknown session action {other:?}: approve, reject, end or revoke"
            )))
        }
    };
    let s = load(app, name).await?;
    a.allow(app, action, Object::Session(&s))?;
    let c = &a.caller;
    if event == SessionEvent::Approve {
        return approve(app, a, &s, body).await;
    }
    let applied = sessions::apply(
        &app.store,
        &app.relay.events,
        s.id,
        event,
        &c.name,
        &c.source,
        util::now(),
    )
    .await?;
    Ok(info(&applied.after))
}

/// An approval, with the approver's signature if the body carries one: checked over the
/// session's grant here, and against what the machine requires in [`authz`].
async fn approve(app: &App, a: &Authed, s: &Session, body: &[u8]) -> ApiResult<SessionInfo> {
    let req: ApproveRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ApproveRequest::default()
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad(format!("the approval's body: {e}")))?
    };
    let signed = match (req.key, req.signature) {
        (None, None) => None,
        (Some(key), Some(signature)) => Some(SignedApproval { key, signature }),
        _ => return Err(ApiError::bad("an approver's signature needs both key and signature")),
    };
    // The signature is checked over the grant as the server holds it: what the agent will
    // check too.
    let (key, invalid) = match &signed {
        None => (None, None),
        Some(sig) => match sig.key.parse::<ApproverKey>() {
            Err(e) => (None, Some(e.to_string())),
            Ok(k) if k.verifies(&grant_fields(s).to_bytes(), &sig.signature) => (Some(k), None),
            Ok(_) => (None, Some("it was made over other fields (another session, machine, target, user, window or nonce) or by another key".to_owned())),
        },
    };
    let check = match (&key, &invalid) {
        (_, Some(why)) => Signature::Invalid(why),
        (Some(k), None) => Signature::Valid(k),
        (None, None) => Signature::None,
    };
    let machine = s.machine_id;
    let facts = app.store.run(move |b| b.signing_facts(machine)).await?;
    authz::approval_signature(&facts, check)
        .map_err(|r| a.refused(app, Action::SessionApprove, &s.name, r))?;
    let with = signed.zip(key.map(|k| k.fingerprint()));
    let c = &a.caller;
    let applied = sessions::approve(
        &app.store,
        &app.relay.events,
        s.id,
        with,
        &c.name,
        &c.source,
        util::now(),
    )
    .await?;
    Ok(info(&applied.after))
}
