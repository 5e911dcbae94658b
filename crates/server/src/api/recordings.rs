//! `/v1/recordings`: session recordings, kept at the machines' agents (the operator's side).
//! The server asks the machine's agent over its link and relays the answer; it stores no
//! recording. Who may: admins and auditors who see the machine (the audit-reading roles),
//! of the machine's own organization or of none; technicians never (they are the ones
//! recorded), nor another organization's staff (a provider's auditor).

use axum::{
    body::Body,
    extract::{Path, Query, State},
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use fernwart_api::{RecordingInfo, RecordingQuery};
use fernwart_proto::RecordingAsk;

use super::{ApiError, ApiResult, Authed};
use crate::{
    audit::{Entry, Event},
    authz::{self, Action, Object},
    domain::names,
    relay::recordings::{self, AskError, ANSWER_TIMEOUT},
    App,
};

/// A machine whose recordings are asked for.
struct Machine {
    id: i64,
    name: String,
    org: Option<String>,
}

pub async fn list(
    State(app): State<App>,
    a: Authed,
    Query(q): Query<RecordingQuery>,
) -> ApiResult<Json<Vec<RecordingInfo>>> {
    for v in [&q.machine, &q.session].into_iter().flatten() {
        if !names::valid(v) {
            return Err(ApiError::bad(format!("{v:?} is not a valid machine or session name")));
        }
    }
    let machines = match (&q.session, &q.machine) {
        (Some(s), _) => {
            let n = s.clone();
            let session = app.store.run(move |b| b.session_by_name(&n)).await?;
            let session = session.ok_or_else(|| ApiError::not_found(format!("no session {s}")))?;
            if q.machine.as_ref().is_some_and(|m| m != &session.machine) {
                return Ok(Json(Vec::new()));
            }
            vec![Machine {
                id: session.machine_id,
                name: session.machine.clone(),
                org: session.machine_org.clone(),
            }]
        }
        (None, Some(m)) => vec![machine(&app, m).await?],
        (None, None) => {
            let org = authz::machine_scope(&a.caller);
            let all = app.store.run(move |b| b.machines(org.as_deref())).await?;
            all.into_iter()
                .filter(|m| !m.revoked)
                .map(|m| Machine { id: m.id, name: m.name, org: m.org })
                .collect()
        }
    };
    let named = q.session.is_some() || q.machine.is_some();
    let mut out = Vec::new();
    for m in machines {
        if named {
            allow(&app, &a, &m)?;
        } else if authz::decide(
            &a.caller,
            Action::RecordingRead,
            Object::Machine { name: &m.name, org: m.org.as_deref() },
            crate::util::now(),
        )
        .is_err()
        {
            continue;
        }
        let Some(agent) = app.relay.hub.agent(m.id) else {
            if named {
                return Err(offline(&m.name));
            }
            continue;
        };
        match recordings::list(&agent, q.session.clone()).await {
            Ok(list) => out.extend(list.into_iter().map(|mut r| {
                // The machine is the server's name for it, whatever the agent says.
                r.machine = m.name.clone();
                r
            })),
            Err(e) if named => return Err(agent_error(&m.name, e)),
            Err(e) => tracing::info!(machine = %m.name, error = %e, "recordings not listed"),
        }
    }
    Ok(Json(out))
}

pub async fn fetch(
    State(app): State<App>,
    a: Authed,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let session = fernwart_recording::session_of(&id)
        .filter(|_| fernwart_recording::valid_id(&id))
        .ok_or_else(|| ApiError::bad(format!("{id:?} is not a recording id (SESSION-MS-N)")))?
        .to_owned();
    let n = session.clone();
    let s = app.store.run(move |b| b.session_by_name(&n)).await?;
    let s = s.ok_or_else(|| ApiError::not_found(format!("no recording {id}")))?;
    let m = Machine { id: s.machine_id, name: s.machine.clone(), org: s.machine_org.clone() };
    allow(&app, &a, &m)?;
    let agent = app.relay.hub.agent(m.id).ok_or_else(|| offline(&m.name))?;
    let ask = RecordingAsk::Fetch { id: id.clone(), by: a.caller.name.clone() };
    let (reply, rd) = recordings::ask(&agent, ask).await.map_err(|e| agent_error(&m.name, e))?;
    let c = &a.caller;
    app.relay.audit.record(Entry::new(
        &c.name,
        &c.source,
        Event::RecordingFetch { machine: m.name.clone(), session, id: id.clone() },
    ));
    // The agent's bytes as they come, each piece within the timeout; a stream cut short
    // ends the body with an error, so the client sees it is not whole.
    let stream = futures::stream::unfold(Some(rd), |state| async move {
        let mut rd = state?;
        match tokio::time::timeout(ANSWER_TIMEOUT, rd.chunk()).await {
            Ok(Ok(Some(chunk))) => Some((Ok(chunk), Some(rd))),
            Ok(Ok(None)) => None,
            Ok(Err(e)) => Some((Err(e), None)),
            Err(_) => Some((
                Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the agent stopped sending")),
                None,
            )),
        }
    });
    let mut resp = Body::from_stream(stream).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/octet-stream"));
    if let Some(size) = reply.size {
        h.insert(header::CONTENT_LENGTH, size.into());
    }
    if let Some(v) = reply.sha256.and_then(|s| header::HeaderValue::from_str(&s).ok()) {
        h.insert("x-fernwart-sha256", v);
    }
    Ok(resp)
}

async fn machine(app: &App, name: &str) -> ApiResult<Machine> {
    let n = name.to_owned();
    let owner = app.store.run(move |b| b.machine_owner(&n)).await?;
    let owner = owner.ok_or_else(|| ApiError::not_found(format!("no machine {name}")))?;
    Ok(Machine { id: owner.id, name: name.to_owned(), org: owner.org })
}

/// Admins and auditors of the machine's operator (or of no organization): `authz`.
fn allow(app: &App, a: &Authed, m: &Machine) -> ApiResult<()> {
    a.allow(app, Action::RecordingRead, Object::Machine { name: &m.name, org: m.org.as_deref() })
}

fn offline(machine: &str) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("machine {machine} is offline: its recordings are on its gateway (`fernwart-agent recording list` there)"),
    )
}

fn agent_error(machine: &str, e: AskError) -> ApiError {
    let msg = format!("machine {machine}: {e}");
    match e {
        AskError::Refused(why) if why.starts_with("no recording") => ApiError::not_found(msg),
        AskError::Refused(_) => ApiError::forbidden(msg),
        _ => ApiError::new(StatusCode::BAD_GATEWAY, msg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::{Denial, Refusal};
    use crate::domain::{Caller, Role};

    fn may_read(c: &Caller, m: &Machine) -> Result<(), Refusal> {
        // The same decision the list makes for each machine.
        let machine = Object::Machine { name: &m.name, org: m.org.as_deref() };
        authz::decide(c, Action::RecordingRead, machine, crate::util::now())
    }

    fn caller(role: Role, org: Option<&str>) -> Caller {
        Caller {
            user_id: 1,
            name: "x".into(),
            role,
            scope: crate::domain::Scope::Full,
            login_expires: i64::MAX,
            account_expires: None,
            disabled: false,
            source: "local".into(),
            api_token: None,
            org: org.map(str::to_owned),
            serves: vec!["plant-a".into()],
            last_used: None,
        }
    }

    fn machine(org: Option<&str>) -> Machine {
        Machine { id: 1, name: "m1".into(), org: org.map(str::to_owned) }
    }

    #[test]
    fn admins_and_auditors_of_the_operator_read_recordings_technicians_never() {
        let m = machine(Some("plant-a"));
        assert!(may_read(&caller(Role::Auditor, Some("plant-a")), &m).is_ok());
        assert!(may_read(&caller(Role::Admin, None), &m).is_ok());
        assert!(may_read(&caller(Role::Technician, Some("plant-a")), &m).is_err());
        assert!(may_read(&caller(Role::Approver, Some("plant-a")), &m).is_err());
        // A provider serving the operator sees the machine, not its recordings.
        let provider = may_read(&caller(Role::Auditor, Some("builder")), &m).unwrap_err();
        assert_eq!(provider.denial, Denial::Forbidden);
        let stranger = Caller { serves: vec![], ..caller(Role::Auditor, Some("other")) };
        assert_eq!(may_read(&stranger, &m).unwrap_err().denial, Denial::Hidden);
        assert!(may_read(&caller(Role::Auditor, Some("builder")), &machine(None)).is_ok());
    }
}
