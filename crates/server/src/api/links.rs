//! The link endpoints: an agent's (mutual TLS) and a technician's (`fernwart connect`), each
//! an HTTPS request upgraded to HTTP/2.

use axum::{
    extract::{Path, Request, State},
    http::{header, StatusCode},
    response::Response,
};
use fernwart_proto::LINK_UPGRADE;
use fernwart_transport::{Mode, Mux};
use hyper_util::rt::TokioIo;

use super::{source, ApiError, ApiResult, Authed, ConnInfo};
use crate::{
    audit::{Entry, Event},
    authz::{Action, Object},
    relay::{agent_link, tech_link, MAX_LINKS_PER_USER},
    sessions, util, App,
};

/// Validates a link upgrade and returns the 101 response; the link starts on `on_upgrade`.
fn link_handshake(req: &mut Request) -> ApiResult<(Response, hyper::upgrade::OnUpgrade)> {
    let h = req.headers();
    let has = |name: header::HeaderName, want: &str| {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case(want)))
    };
    if !has(header::CONNECTION, "upgrade") || !has(header::UPGRADE, LINK_UPGRADE) {
        return Err(ApiError::bad(format!(
            "expected a link upgrade (Connection: upgrade, Upgrade: {LINK_UPGRADE})"
        )));
    }
    let on_upgrade = hyper::upgrade::on(req);
    let resp = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, LINK_UPGRADE)
        .body(axum::body::Body::empty())
        .map_err(|e| ApiError::bad(e.to_string()))?;
    Ok((resp, on_upgrade))
}

/// Runs HTTP/2 on an upgraded connection once the 101 has gone out.
async fn start_mux(
    on_upgrade: hyper::upgrade::OnUpgrade,
    mode: Mode,
) -> Option<(Mux, tokio::sync::mpsc::Receiver<fernwart_transport::MuxStream>)> {
    let upgraded = on_upgrade.await.ok()?;
    match Mux::start(TokioIo::new(upgraded), mode).await {
        Ok(link) => Some(link),
        Err(e) => {
            tracing::debug!(error = %fernwart_transport::error_chain(&e), "link handshake failed");
            None
        }
    }
}

pub async fn agent(State(app): State<App>, mut req: Request) -> ApiResult<Response> {
    let info = req.extensions().get::<ConnInfo>().cloned();
    let src = source(info.as_ref());
    let slots = info.as_ref().map(|i| i.slots.clone());
    let fp = info.and_then(|i| i.client_cert).ok_or_else(|| {
        ApiError::unauthorized("agent link needs the machine's client certificate (enrol first)")
    })?;
    let f = fp.clone();
    let m = app.store.run(move |b| b.machine_by_cert(&f)).await?;
    let Some((id, name, revoked, org)) = m else {
        let reason = "unknown certificate".to_owned();
        let entry = Entry::new(
            "unknown",
            &src,
            Event::AgentRefused { machine: None, reason, fingerprint: Some(fp) },
        );
        app.relay.audit.record_now(entry).await;
        return Err(ApiError::forbidden("machine certificate unknown or replaced"));
    };
    if revoked {
        let entry = Entry::new(
            &name,
            &src,
            Event::AgentRefused {
                machine: Some(name.clone()),
                reason: "revoked".into(),
                fingerprint: None,
            },
        );
        app.relay.audit.record_now(entry).await;
        return Err(ApiError::forbidden(format!("machine {name} is revoked")));
    }
    let (resp, on_upgrade) = link_handshake(&mut req)?;
    if let Some(slots) = &slots {
        slots.proven();
    }
    let relay = app.relay.clone();
    app.relay.tasks.spawn(async move {
        // The link holds the connection's place under the total cap while it runs.
        let _slots = slots;
        // The server opens the streams of an agent link: it is the HTTP/2 client there.
        if let Some((mux, _)) = start_mux(on_upgrade, Mode::Client).await {
            agent_link::serve(relay, mux, id, (name, org), src).await;
        }
    });
    Ok(resp)
}

pub async fn connect(
    State(app): State<App>,
    a: Authed,
    Path(name): Path<String>,
    mut req: Request,
) -> ApiResult<Response> {
    let n = name.clone();
    let s = app
        .store
        .run(move |b| b.session_by_name(&n))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no session {name}")))?;
    let c = &a.caller;
    a.allow(&app, Action::SessionConnect, Object::Session(&s))?;
    if s.is_terminal() {
        let reason = format!("session {name} is {}", s.state);
        let entry = Entry::new(
            &c.name,
            &c.source,
            Event::ConnectRefused { session: name.clone(), reason: reason.clone() },
        );
        app.relay.audit.record(entry);
        return Err(ApiError::conflict(reason));
    }
    let now = util::now();
    if now >= s.until {
        sessions::expire(&app.store, &app.relay.events, s.id, now).await;
        return Err(ApiError::conflict(format!("session {name} is expired")));
    }
    let link_slot = app.relay.hub.technician_link(c.user_id).ok_or_else(|| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("{} has {MAX_LINKS_PER_USER} links open already: close one first", c.name),
        )
    })?;
    let (resp, on_upgrade) = link_handshake(&mut req)?;
    let who = tech_link::Technician {
        user_id: c.user_id,
        name: c.name.clone(),
        source: c.source.clone(),
        token_hash: a.token_hash.clone(),
        valid_until: c.valid_until(),
    };
    let sid = s.id;
    let relay = app.relay.clone();
    let slots = req.extensions().get::<ConnInfo>().map(|i| i.slots.clone());
    app.relay.tasks.spawn(async move {
        // The link holds the connection's place under the caps while it runs.
        let _slots = slots;
        let _link = link_slot;
        if let Some((mux, inbound)) = start_mux(on_upgrade, Mode::Server).await {
            tech_link::serve(relay, mux, inbound, sid, who).await;
        }
    });
    Ok(resp)
}
