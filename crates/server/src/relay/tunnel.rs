//! One technician TCP connection: checked at the server, opened at the agent, then relayed.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use fernwart_proto::{OpenReply, OpenRequest, HANDSHAKE_TIMEOUT};
use fernwart_transport::{
    frame_io::{read_frame_within, write_last_frame},
    pipe::{self, mux_to_mux, Activity, Halt},
    write_frame, MuxStream,
};
use tokio_util::sync::CancellationToken;

use super::{tech_link::Technician, Relay};
use crate::{
    audit::{Entry, Event},
    authz::{self, Action, Object},
    util,
};

/// Everything a tunnel must stop for.
pub struct Guards {
    pub session: CancellationToken,
    pub user: CancellationToken,
    pub link: CancellationToken,
}

pub async fn serve(
    app: Relay,
    mut stream: MuxStream,
    session_id: i64,
    who: Technician,
    guards: Guards,
) {
    let user = who.name.clone();
    let req: OpenRequest = match read_frame_within(&mut stream, HANDSHAKE_TIMEOUT).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e, "tunnel open request failed");
            return;
        }
    };
    let target = req.target.clone();
    let (agent_stream, switch, until, session) = match open(&app, session_id, &who, &target).await {
        Ok(opened) => opened,
        Err(reason) => {
            refused(&app, &who, &session_label(&app, session_id).await, &target, &reason);
            write_last_frame(stream, &OpenReply::refused(reason)).await;
            return;
        }
    };
    let left = Duration::from_secs(u64::try_from(until - util::now()).unwrap_or(0));
    let started = std::time::Instant::now();
    // The technician's first bytes follow the request to the agent at once; the agent reads
    // them only after its own checks. Its answer decides whether anything comes back.
    let (mut t_rd, mut t_wr) = stream.into_split();
    let (mut a_rd, mut a_wr) = agent_stream.into_split();
    let activity = Activity::default();
    let (bytes_up, bytes_down) = (AtomicU64::new(0), AtomicU64::new(0));
    let up = mux_to_mux(&mut t_rd, &mut a_wr, &activity, &bytes_up);
    let down = async {
        let reason = match read_frame_within::<OpenReply, _>(&mut a_rd, HANDSHAKE_TIMEOUT).await {
            Ok(r) if r.ok => None,
            Ok(r) => Some(format!("agent refused: {}", r.error.unwrap_or_default())),
            Err(e) => Some(format!("agent did not answer: {e}")),
        };
        if let Some(reason) = reason {
            // Ended, the stream's later drop is a NO_ERROR reset from us (the HTTP/2 server of
            // technician links), which lets the answer out first.
            if write_frame(&mut t_wr, &OpenReply::refused(reason.clone())).await.is_ok() {
                let _ = t_wr.finish();
            }
            return Err(Halt::Refused(reason));
        }
        write_frame(&mut t_wr, &OpenReply::ok()).await.map_err(|e| Halt::Io(e.into_io()))?;
        app.audit.record(Entry::new(
            &user,
            &who.source,
            Event::TunnelOpen { session: session.clone(), target: target.clone() },
        ));
        mux_to_mux(&mut a_rd, &mut t_wr, &activity, &bytes_down).await.map_err(Halt::Io)
    };
    let outcome = tokio::select! {
        r = pipe::both(up, down) => match r {
            Ok((up, down)) => format!("closed ({up} bytes up, {down} down)"),
            Err(Halt::Refused(reason)) => {
                refused(&app, &who, &session, &target, &reason);
                return;
            }
            Err(Halt::Io(e)) => format!("failed: {e}"),
        },
        _ = guards.session.cancelled() => "session ended".to_owned(),
        _ = guards.user.cancelled() => "user disabled".to_owned(),
        _ = guards.link.cancelled() => "technician link closed".to_owned(),
        _ = switch.cancelled() => "key switch off or agent gone".to_owned(),
        _ = tokio::time::sleep(left) => "time window closed or login expired".to_owned(),
        _ = activity.idle(app.tunnel_idle) => {
            format!("idle for {} (sessions.tunnel_idle_timeout)", humantime::format_duration(app.tunnel_idle))
        }
    };
    let took = started.elapsed();
    let secs = took.as_secs();
    tracing::info!(session = %session, %target, %user, %outcome, secs, "tunnel closed");
    app.audit.record(Entry::new(
        &user,
        &who.source,
        Event::TunnelClose {
            session,
            target,
            outcome,
            seconds: secs,
            bytes_up: bytes_up.load(Ordering::Relaxed),
            bytes_down: bytes_down.load(Ordering::Relaxed),
            duration_ms: u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
        },
    ));
}

fn refused(app: &Relay, who: &Technician, session: &str, target: &str, reason: &str) {
    tracing::info!(%target, user = %who.name, %reason, "tunnel refused");
    app.audit.record(Entry::new(
        &who.name,
        &who.source,
        Event::TunnelRefused {
            session: session.into(),
            target: target.into(),
            reason: reason.into(),
        },
    ));
}

/// Checks promise 2 at the server (the login, the account, the session, the target, the
/// machine), then asks the agent, which checks again on its own and answers on the returned
/// stream.
async fn open(
    app: &Relay,
    session_id: i64,
    who: &Technician,
    target: &str,
) -> Result<(MuxStream, CancellationToken, i64, String), String> {
    let token = who.token_hash.clone();
    let (session, caller) = app
        .store
        .run(move |b| b.tunnel_check(session_id, &token))
        .await
        .map_err(|e| format!("server error: {e}"))?;
    let session = session.ok_or("session is gone")?;
    let caller = caller.ok_or("login ended: log in again")?;
    let now = util::now();
    authz::decide(&caller, Action::TunnelOpen, Object::Session(&session), now)
        .map_err(|r| r.reason)?;
    if !session.usable(now) {
        return Err(format!("session {} is {}", session.name, session.state));
    }
    if !session.targets.iter().any(|t| t == target) {
        return Err(format!("target {target:?} is not part of session {}", session.name));
    }
    let agent = app
        .hub
        .agent(session.machine_id)
        .ok_or_else(|| format!("machine {} is offline", session.machine))?;
    if !agent.switch_on {
        return Err(format!("the key switch of machine {} is off", session.machine));
    }
    if !agent.targets.iter().any(|t| t.name == target) {
        return Err(format!("machine {} does not offer target {target:?}", session.machine));
    }
    let mut s = agent.mux.open().await.map_err(|e| format!("cannot reach the agent: {e}"))?;
    let req = OpenRequest { session: session.name.clone(), target: target.to_owned() };
    write_frame(&mut s, &req).await.map_err(|e| format!("agent link failed: {e}"))?;
    Ok((s, agent.switch_token, session.until.min(caller.valid_until()), session.name))
}

/// The session's name for the audit trail, or its id if it is gone.
async fn session_label(app: &Relay, session_id: i64) -> String {
    match app.store.run(move |b| b.session_by_id(session_id)).await {
        Ok(Some(s)) => s.name,
        _ => session_id.to_string(),
    }
}
