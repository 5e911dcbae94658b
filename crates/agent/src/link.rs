//! The one persistent outbound link to the server, with capped exponential backoff and jitter.

use std::time::{Duration, Instant};

use fernwart_proto::{AgentToServer, ServerToAgent, HANDSHAKE_TIMEOUT, PROTOCOL_VERSION};
use fernwart_transport::{
    error_chain, frame_io::read_frame_within, read_frame, tls, write_frame, Dialer, HttpClient, Mux,
};
use tokio_util::sync::CancellationToken;

use crate::{identity, Agent};

const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A link that stays silent this long (the server pings every 15 s) is dead.
const IDLE_LIMIT: Duration = Duration::from_secs(45);

pub async fn run(agent: Agent, shutdown: CancellationToken) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let started = Instant::now();
        let result = tokio::select! {
            r = connect_once(&agent) => r,
            _ = shutdown.cancelled() => return,
        };
        match result {
            Ok(reason) => {
                tracing::warn!(%reason, "link to server closed");
                agent.audit("link.down", "", serde_json::json!({"reason": reason}));
            }
            Err(e) => tracing::warn!(error = %e, "cannot connect to server"),
        }
        if started.elapsed() > Duration::from_secs(60) {
            backoff = BACKOFF_MIN;
        }
        let jitter = rand::random::<f64>() * 0.5 + 0.75;
        let wait = backoff.mul_f64(jitter);
        tracing::info!(secs = wait.as_secs_f64(), "reconnecting");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

pub fn dialer(agent: &Agent) -> Result<Dialer, String> {
    let dir = &agent.dir;
    let roots = tls::roots(Some(&dir.join(identity::CA_FILE))).map_err(|e| error_chain(&e))?;
    let certs = tls::load_certs(&dir.join(identity::CERT_FILE)).map_err(|e| error_chain(&e))?;
    let key = tls::load_key(&dir.join(identity::KEY_FILE)).map_err(|e| error_chain(&e))?;
    let cfg = tls::client_config(roots, Some((certs, key))).map_err(|e| error_chain(&e))?;
    let url = url::Url::parse(&agent.identity.server).map_err(|e| error_chain(&e))?;
    Dialer::new(url, cfg, agent.proxy.clone()).map_err(|e| error_chain(&e))
}

async fn connect_once(agent: &Agent) -> Result<String, String> {
    let client = HttpClient::new(dialer(agent)?);
    let io = client.link("/v1/agent/link", None).await.map_err(|e| explain(&error_chain(&e)))?;
    // The server opens the streams of this link (the control stream first, then one per
    // tunnel): the agent is its HTTP/2 server.
    let (mux, mut inbound) =
        Mux::start(io, fernwart_transport::Mode::Server).await.map_err(|e| error_chain(&e))?;
    let link_closed = CancellationToken::new();
    let _guard = link_closed.clone().drop_guard();
    let mut control = match tokio::time::timeout(HANDSHAKE_TIMEOUT, inbound.recv()).await {
        Ok(Some(s)) => s,
        Ok(None) => return Err("the server closed the link".into()),
        Err(_) => return Err("the server opened no control stream in time".into()),
    };
    let mut switch_rx = agent.switch.subscribe();
    let hello = AgentToServer::Hello {
        version: PROTOCOL_VERSION,
        agent: format!("fernwart-agent {}", env!("CARGO_PKG_VERSION")),
        targets: agent.cfg.announced(),
        switch_on: *switch_rx.borrow_and_update(),
    };
    write_frame(&mut control, &hello).await.map_err(|e| error_chain(&e))?;
    match read_frame_within::<ServerToAgent, _>(&mut control, HANDSHAKE_TIMEOUT)
        .await
        .map_err(|e| format!("handshake: {e}"))?
    {
        ServerToAgent::Welcome { machine, grants, .. } => {
            tracing::info!(%machine, grants = grants.len(), "connected to server");
            agent.audit(
                "link.up",
                "",
                serde_json::json!({"server": agent.identity.server, "grants": grants.len()}),
            );
            agent.set_grants(grants);
        }
        ServerToAgent::Refused { reason } => {
            return Err(format!("server refused the link: {reason}"))
        }
        other => return Err(format!("unexpected handshake answer: {other:?}")),
    }
    let (mut rd, mut wr) = control.into_split();
    let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<AgentToServer>(64);
    let writer = tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            if write_frame(&mut wr, &m).await.is_err() {
                break;
            }
        }
    });
    let reason = loop {
        tokio::select! {
            f = tokio::time::timeout(IDLE_LIMIT, read_frame::<ServerToAgent, _>(&mut rd)) => match f {
                Err(_) => break "server silent too long".to_owned(),
                Ok(Err(e)) => break format!("control stream: {e}"),
                Ok(Ok(ServerToAgent::Grant { grant })) => {
                    let session = grant.session.clone();
                    agent.add_grant(grant);
                    let _ = out_tx.send(AgentToServer::GrantAck { session }).await;
                }
                Ok(Ok(ServerToAgent::Revoke { session })) => agent.revoke(&session),
                Ok(Ok(ServerToAgent::Ping { nonce })) => { let _ = out_tx.send(AgentToServer::Pong { nonce }).await; }
                Ok(Ok(ServerToAgent::Refused { reason })) => break format!("server refused: {reason}"),
                Ok(Ok(ServerToAgent::Welcome { .. })) => break "unexpected second welcome".to_owned(),
            },
            r = switch_rx.changed() => {
                if r.is_err() { break "switch watcher ended".to_owned() }
                let on = *switch_rx.borrow_and_update();
                let _ = out_tx.send(AgentToServer::Switch { on }).await;
            }
            s = inbound.recv() => match s {
                Some(stream) => { tokio::spawn(crate::forward::serve(agent.clone(), stream, link_closed.clone())); }
                None => break "link closed".to_owned(),
            },
            _ = mux.closed() => break "link closed".to_owned(),
        }
    };
    writer.abort();
    mux.close();
    Ok(reason)
}

/// Adds what to do to the TLS alerts a refused machine certificate produces.
fn explain(error: &str) -> String {
    const CERT_ALERTS: [&str; 5] = [
        "UnknownCA",
        "BadCertificate",
        "CertificateRevoked",
        "CertificateExpired",
        "CertificateRequired",
    ];
    if CERT_ALERTS.iter().any(|a| error.contains(a)) {
        format!("the server does not accept this machine's certificate ({error}); enrol the machine again with a new token")
    } else {
        error.to_owned()
    }
}

#[cfg(test)]
mod explain_tests {
    #[test]
    fn certificate_alerts_say_what_to_do() {
        let e = super::explain(
            "request to the server failed: IO error: received fatal alert: UnknownCA",
        );
        assert!(e.contains("does not accept this machine's certificate"), "{e}");
        assert_eq!(super::explain("connection refused"), "connection refused");
    }
}
