//! One technician TCP connection: checked at the server, opened at the agent, then relayed.

use std::time::Duration;

use fernwart_proto::{OpenReply, OpenRequest, HANDSHAKE_TIMEOUT};
use fernwart_transport::{frame_io::read_frame_within, write_frame, MuxStream};
use tokio_util::sync::CancellationToken;

use super::tech_link::Technician;
use crate::{sessions, util, App};

/// Everything a tunnel must stop for.
pub struct Guards {
    pub session: CancellationToken,
    pub user: CancellationToken,
    pub link: CancellationToken,
}

pub async fn serve(
    app: App,
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
    match open(&app, session_id, &target).await {
        Ok((mut agent_stream, switch, until, session)) => {
            if write_frame(&mut stream, &OpenReply::ok()).await.is_err() {
                return;
            }
            let left = Duration::from_secs(u64::try_from(until - util::now()).unwrap_or(0));
            let started = std::time::Instant::now();
            app.audit_async(
                &user,
                "tunnel.open",
                &session,
                &who.source,
                serde_json::json!({"target": target}),
            );
            let outcome = tokio::select! {
                r = tokio::io::copy_bidirectional_with_sizes(&mut stream, &mut agent_stream, 64 * 1024, 64 * 1024) => match r {
                    Ok((up, down)) => format!("closed ({up} bytes up, {down} down)"),
                    Err(e) => format!("failed: {e}"),
                },
                _ = guards.session.cancelled() => "session ended".to_owned(),
                _ = guards.user.cancelled() => "user disabled".to_owned(),
                _ = guards.link.cancelled() => "technician link closed".to_owned(),
                _ = switch.cancelled() => "key switch off or agent gone".to_owned(),
                _ = tokio::time::sleep(left) => "time window closed".to_owned(),
            };
            let secs = started.elapsed().as_secs();
            tracing::info!(session = %session, %target, %user, %outcome, secs, "tunnel closed");
            app.audit_async(
                &user,
                "tunnel.close",
                &session,
                &who.source,
                serde_json::json!({"target": target, "outcome": outcome, "seconds": secs}),
            );
        }
        Err(reason) => {
            tracing::info!(%target, %user, %reason, "tunnel refused");
            app.audit_async(
                &user,
                "tunnel.refused",
                &session_label(&app, session_id),
                &who.source,
                serde_json::json!({"target": target, "reason": reason}),
            );
            let _ = write_frame(&mut stream, &OpenReply::refused(reason)).await;
        }
    }
}

/// Checks promise 2 at the server, then asks the agent, which checks again on its own.
async fn open(
    app: &App,
    session_id: i64,
    target: &str,
) -> Result<(MuxStream, CancellationToken, i64, String), String> {
    let session = app
        .store
        .read(|c| sessions::by_id(c, session_id))
        .map_err(|e| format!("server error: {e}"))?
        .ok_or("session is gone")?;
    if !session.usable(util::now()) {
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
    let reply: OpenReply = read_frame_within(&mut s, HANDSHAKE_TIMEOUT)
        .await
        .map_err(|e| format!("agent did not answer: {e}"))?;
    if !reply.ok {
        return Err(format!("agent refused: {}", reply.error.unwrap_or_default()));
    }
    Ok((s, agent.switch_token, session.until_ts, session.name))
}

/// The session's name for the audit trail, or its id if it is gone.
fn session_label(app: &App, session_id: i64) -> String {
    match app.store.read(|c| sessions::by_id(c, session_id)) {
        Ok(Some(s)) => s.name,
        _ => session_id.to_string(),
    }
}
