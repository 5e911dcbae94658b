//! The one persistent outbound link to the server, with capped exponential backoff and jitter.
//!
//! The agent offers link version [`AGENT_LINK_VERSION`]; a server that refuses it (an older
//! one) is asked again at once with the version below, down to 1, on which the agent's records
//! are not sent. The next link after one that was up offers the newest version again.

use std::time::{Duration, Instant};

use fernwart_proto::{
    AgentToServer, ServerToAgent, AGENT_AUDIT_VERSION, AGENT_GRANT_REFUSED_VERSION,
    AGENT_LINK_VERSION, AUDIT_BATCH_BYTES, AUDIT_BATCH_MAX_RECORDS, HANDSHAKE_TIMEOUT,
    PROTOCOL_VERSION,
};
use fernwart_transport::{
    error_chain, frame_io::read_frame_within, read_frame, tls, write_frame, Dialer, HttpClient, Mux,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{audit, identity, Agent};

const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A link that stays silent this long (the server pings every 15 s) is dead.
const IDLE_LIMIT: Duration = Duration::from_secs(45);
/// How often the agent looks for records the server does not hold yet.
const UPLOAD_EVERY: Duration = Duration::from_secs(1);

/// Why a link did not come up.
enum Failure {
    /// The server answered the hello with `refused`, to the version offered.
    Refused {
        reason: String,
        offered: u16,
    },
    Other(String),
}

impl From<String> for Failure {
    fn from(e: String) -> Self {
        Failure::Other(e)
    }
}

pub async fn run(agent: Agent, shutdown: CancellationToken) {
    let mut backoff = BACKOFF_MIN;
    let mut offer = AGENT_LINK_VERSION;
    loop {
        let started = Instant::now();
        let result = tokio::select! {
            r = connect_once(&agent, offer) => r,
            _ = shutdown.cancelled() => return,
        };
        match result {
            Ok(reason) => {
                tracing::warn!(%reason, "link to server closed");
                agent.audit("link.down", "", serde_json::json!({"reason": reason}));
                offer = AGENT_LINK_VERSION;
            }
            Err(Failure::Refused { reason, offered }) if offered > PROTOCOL_VERSION => {
                offer = offered - 1;
                tracing::warn!(%reason, offered, "the server refused the link version; asking again with version {offer} (below {AGENT_AUDIT_VERSION} the agent's records are not sent to the server)");
                continue;
            }
            Err(Failure::Refused { reason, .. }) => {
                tracing::warn!(error = %reason, "cannot connect to server")
            }
            Err(Failure::Other(e)) => tracing::warn!(error = %e, "cannot connect to server"),
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

async fn connect_once(agent: &Agent, offer: u16) -> Result<String, Failure> {
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
        Ok(None) => return Err(Failure::Other("the server closed the link".into())),
        Err(_) => return Err(Failure::Other("the server opened no control stream in time".into())),
    };
    let mut switch_rx = agent.switch.subscribe();
    // Changes of the trust anchor from here on are told on this link (the hello has it now).
    let mut trust_rx = agent.trust_changes.subscribe();
    trust_rx.borrow_and_update();
    let hello = AgentToServer::Hello {
        version: offer,
        agent: format!("fernwart-agent {}", env!("CARGO_PKG_VERSION")),
        targets: agent.cfg.announced(),
        switch_on: *switch_rx.borrow_and_update(),
        trust: crate::config::announce_trust(&agent.trust()),
        e2e_key: agent.e2e.public().map(|k| k.to_string()),
    };
    write_frame(&mut control, &hello).await.map_err(|e| error_chain(&e))?;
    let version = match read_frame_within::<ServerToAgent, _>(&mut control, HANDSHAKE_TIMEOUT)
        .await
        .map_err(|e| format!("handshake: {e}"))?
    {
        ServerToAgent::Welcome { version, machine, grants } => {
            tracing::info!(%machine, grants = grants.len(), version, "connected to server");
            agent.audit(
                "link.up",
                "",
                serde_json::json!({"server": agent.identity.server, "grants": grants.len()}),
            );
            agent.set_grants(grants);
            version
        }
        ServerToAgent::Refused { reason } => {
            return Err(Failure::Refused {
                reason: format!("server refused the link: {reason}"),
                offered: offer,
            })
        }
        other => return Err(format!("unexpected handshake answer: {other:?}").into()),
    };
    // The agent's records go to servers that agreed on a version with them.
    let mut upload = (version >= AGENT_AUDIT_VERSION).then(audit::Uploader::default);
    let (mut rd, mut wr) = control.into_split();
    let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<AgentToServer>(64);
    let writer = tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            if write_frame(&mut wr, &m).await.is_err() {
                break;
            }
        }
    });
    // Frames are read by a task of their own: a read cut off half-way by another branch of
    // the select below would lose the rest of the frame.
    let (frame_tx, mut frames) = mpsc::channel::<Result<ServerToAgent, String>>(16);
    let reader = tokio::spawn(async move {
        loop {
            let f = match tokio::time::timeout(IDLE_LIMIT, read_frame(&mut rd)).await {
                Err(_) => Err("server silent too long".to_owned()),
                Ok(Err(e)) => Err(format!("control stream: {e}")),
                Ok(Ok(m)) => Ok(m),
            };
            let end = f.is_err();
            if frame_tx.send(f).await.is_err() || end {
                break;
            }
        }
    });
    let mut upload_tick = tokio::time::interval(UPLOAD_EVERY);
    upload_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let reason = loop {
        tokio::select! {
            f = frames.recv() => match f {
                None => break "control stream closed".to_owned(),
                Some(Err(e)) => break e,
                Some(Ok(ServerToAgent::Grant { grant })) => {
                    let session = grant.session.clone();
                    // A refused grant is not acknowledged: the agent does not hold it, and says
                    // why to a server that knows the message.
                    let answer = match agent.add_grant(grant) {
                        Ok(()) => Some(AgentToServer::GrantAck { session }),
                        Err(reason) => (version >= AGENT_GRANT_REFUSED_VERSION)
                            .then_some(AgentToServer::GrantRefused { session, reason }),
                    };
                    if let Some(answer) = answer {
                        let _ = out_tx.send(answer).await;
                    }
                }
                Some(Ok(ServerToAgent::Revoke { session })) => agent.revoke(&session),
                Some(Ok(ServerToAgent::Ping { nonce })) => { let _ = out_tx.send(AgentToServer::Pong { nonce }).await; }
                Some(Ok(ServerToAgent::Refused { reason })) => break format!("server refused: {reason}"),
                Some(Ok(ServerToAgent::Welcome { .. })) => break "unexpected second welcome".to_owned(),
                Some(Ok(msg @ (ServerToAgent::AuditAck { .. } | ServerToAgent::AuditRetry { .. } | ServerToAgent::AuditRefused { .. }))) => {
                    let Some(up) = upload.as_mut() else {
                        break "audit answers on a version 1 link".to_owned();
                    };
                    if on_audit_answer(agent, up, msg) {
                        send_records(agent, up, &out_tx).await;
                    }
                }
            },
            _ = upload_tick.tick(), if upload.is_some() => {
                if let Some(up) = upload.as_mut() {
                    send_records(agent, up, &out_tx).await;
                }
            }
            r = trust_rx.changed() => {
                if r.is_err() { break "trust watcher ended".to_owned() }
                trust_rx.borrow_and_update();
                if version < AGENT_GRANT_REFUSED_VERSION {
                    // An older server hears of it in the next hello.
                    break "the trust anchor changed: linking again to announce it".to_owned();
                }
                let trust = crate::config::announce_trust(&agent.trust());
                let _ = out_tx.send(AgentToServer::Trust { trust }).await;
            }
            r = switch_rx.changed() => {
                if r.is_err() { break "switch watcher ended".to_owned() }
                let on = *switch_rx.borrow_and_update();
                let _ = out_tx.send(AgentToServer::Switch { on }).await;
            }
            s = inbound.recv() => match s {
                Some(stream) => { agent.tunnels.spawn(crate::forward::serve(agent.clone(), stream, link_closed.clone())); }
                None => break "link closed".to_owned(),
            },
            _ = mux.closed() => break "link closed".to_owned(),
        }
    };
    reader.abort();
    writer.abort();
    mux.close();
    Ok(reason)
}

/// Takes in the server's answer about the agent's records; true when more may be sent now.
fn on_audit_answer(agent: &Agent, up: &mut audit::Uploader, msg: ServerToAgent) -> bool {
    match msg {
        ServerToAgent::AuditAck { seq } => {
            up.on_ack(seq);
            true
        }
        ServerToAgent::AuditRetry { after_ms } => {
            up.on_retry(Duration::from_millis(after_ms.min(600_000)), Instant::now());
            false
        }
        ServerToAgent::AuditRefused { seq, reason } => {
            up.stop();
            tracing::error!(%reason, server_holds = seq, "the server refused the agent's records: they do not link up to its copy (see `fernwart-agent audit verify`); they stay here");
            agent.audit_as(
                None,
                "audit.refused",
                "",
                serde_json::json!({"reason": reason, "server_holds": seq}),
            );
            false
        }
        _ => false,
    }
}

/// Sends the next batch of records the server does not hold, if one is due.
async fn send_records(agent: &Agent, up: &mut audit::Uploader, out: &mpsc::Sender<AgentToServer>) {
    let local = agent.audit_log.last_seq();
    let now = Instant::now();
    let Some(from) = up.due(local, now) else { return };
    let data = agent.dir.clone();
    // File reads off the runtime's one thread: the trail may be megabytes.
    let read = tokio::task::spawn_blocking(move || {
        audit::read_batch(&data, from, AUDIT_BATCH_MAX_RECORDS, AUDIT_BATCH_BYTES)
    })
    .await;
    let records = match read {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::error!(error = %error_chain(&e), "cannot read the audit trail to send it to the server");
            up.nothing_found(local);
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "reading the audit trail to send it stopped");
            up.nothing_found(local);
            return;
        }
    };
    let Some(last) = records.last().map(|r| r.seq) else {
        up.nothing_found(local);
        return;
    };
    let msg = AgentToServer::AuditRecords { records };
    if let Err(e) = fernwart_proto::encode(&msg) {
        // A single record larger than a frame: it cannot be sent, nor anything after it.
        tracing::error!(error = %error_chain(&e), from, "an audit record is too large to send to the server; not sending records on this link");
        up.stop();
        return;
    }
    if out.send(msg).await.is_ok() {
        up.sent(last, now);
    }
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
