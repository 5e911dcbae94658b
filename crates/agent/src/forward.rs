//! One tunnel at the agent: check, connect to the target, relay until something says stop.

use std::time::Duration;

use fernwart_proto::{OpenReply, OpenRequest, HANDSHAKE_TIMEOUT};
use fernwart_transport::{
    frame_io::{read_frame_within, write_last_frame},
    pipe, write_frame, MuxStream,
};
use tokio::net::TcpStream;

use crate::{policy, Agent};

const TARGET_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn serve(
    agent: Agent,
    mut stream: MuxStream,
    link_closed: tokio_util::sync::CancellationToken,
) {
    let req: OpenRequest = match read_frame_within(&mut stream, HANDSHAKE_TIMEOUT).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e, "bad open request");
            return;
        }
    };
    let now = crate::now();
    let checked = {
        let grants = agent.grants.lock().unwrap_or_else(|p| p.into_inner());
        policy::check(&agent.cfg, &grants, *agent.switch.borrow(), &req.session, &req.target, now)
            .map(|()| grants.get(&req.session).map(|g| g.until).unwrap_or(now))
    };
    let until = match checked {
        Ok(u) => u,
        Err(reason) => {
            agent.audit(
                "tunnel.refused",
                serde_json::json!({"session": req.session, "target": req.target, "reason": reason}),
            );
            write_last_frame(stream, &OpenReply::refused(reason)).await;
            return;
        }
    };
    let Some(target) = agent.cfg.target(&req.target).cloned() else { return };
    let tcp =
        match tokio::time::timeout(TARGET_CONNECT_TIMEOUT, TcpStream::connect(&target.address))
            .await
        {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                let why = format!("cannot reach target {} ({}): {e}", target.name, target.address);
                write_last_frame(stream, &OpenReply::refused(why)).await;
                return;
            }
            Err(_) => {
                let why = format!("target {} ({}) did not answer", target.name, target.address);
                write_last_frame(stream, &OpenReply::refused(why)).await;
                return;
            }
        };
    let _ = tcp.set_nodelay(true);
    if write_frame(&mut stream, &OpenReply::ok()).await.is_err() {
        return;
    }
    agent.audit("tunnel.open", serde_json::json!({"session": req.session, "target": target.name}));
    let switch_off = agent.switch_off_token();
    let revoked = agent.grant_token(&req.session);
    let left = Duration::from_secs(u64::try_from(until - crate::now()).unwrap_or(0));
    let (mut m_rd, mut m_wr) = stream.into_split();
    let (t_rd, mut t_wr) = tcp.into_split();
    let relay = async {
        tokio::try_join!(
            pipe::mux_to_socket(&mut m_rd, &mut t_wr),
            pipe::socket_to_mux(t_rd, &mut m_wr)
        )
    };
    let outcome = tokio::select! {
        r = relay => match r {
            Ok((down, up)) => format!("closed ({down} bytes to target, {up} from)"),
            Err(e) => format!("failed: {e}"),
        },
        _ = switch_off.cancelled() => "key switch off".to_owned(),
        _ = revoked.cancelled() => "session revoked".to_owned(),
        _ = link_closed.cancelled() => "link to server lost".to_owned(),
        _ = tokio::time::sleep(left) => "time window closed".to_owned(),
    };
    agent.audit(
        "tunnel.close",
        serde_json::json!({"session": req.session, "target": target.name, "outcome": outcome}),
    );
}
