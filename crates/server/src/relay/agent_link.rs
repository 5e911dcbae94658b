//! The agent's persistent link: hello, grants, key switch reports, keepalive, and (agent link
//! version 2) the agent's own records ([`super::agent_audit`]), (version 3) why it refused a
//! grant.

use std::time::Duration;

use fernwart_proto::{
    negotiate_agent, AgentToServer, ServerToAgent, AGENT_AUDIT_VERSION,
    AGENT_GRANT_REFUSED_VERSION, HANDSHAKE_TIMEOUT,
};
use fernwart_transport::{
    frame_io::{read_frame_within, write_last_frame},
    read_frame, write_frame, Mux,
};
use tokio::sync::mpsc;

use super::{agent_audit::Collector, grant_for, GrantAnswer, Relay};
use crate::{
    audit::{Entry, Event},
    store::E2eKeySeen,
    util,
};

const PING_EVERY: Duration = Duration::from_secs(15);
/// A link that stays silent this long is dead.
const IDLE_LIMIT: Duration = Duration::from_secs(45);

/// What the server keeps of the trust anchor an agent named: an agent that names no approvers
/// (or predates them) takes the server's word.
fn stored_trust(
    trust: Option<fernwart_proto::AgentTrust>,
) -> Result<crate::store::AgentTrust, String> {
    Ok(match trust {
        Some(t) => {
            check_trust(&t)?;
            crate::store::AgentTrust { level: Some(t.level), approvers: t.approvers }
        }
        None => crate::store::AgentTrust {
            level: Some(fernwart_proto::approval::LEVEL_SERVER.to_owned()),
            approvers: Vec::new(),
        },
    })
}

/// The longest reason for a refused grant that the trail takes from an agent.
const MAX_REASON_CHARS: usize = 512;

/// The most approver keys an agent may name.
const MAX_APPROVERS: usize = 64;

/// An agent's trust anchor as it named it: a known level, well-formed keys, not too many.
fn check_trust(t: &fernwart_proto::AgentTrust) -> Result<(), String> {
    use fernwart_proto::approval::{ApproverKey, LEVEL_SERVER, LEVEL_SIGNED};
    if t.level != LEVEL_SIGNED && t.level != LEVEL_SERVER {
        return Err(format!(
            "unknown trust level {:?}",
            t.level.chars().take(40).collect::<String>()
        ));
    }
    if t.approvers.len() > MAX_APPROVERS {
        return Err(format!("more than {MAX_APPROVERS} approver keys"));
    }
    for k in &t.approvers {
        k.parse::<ApproverKey>().map_err(|e| e.to_string())?;
    }
    Ok(())
}

pub async fn serve(
    app: Relay,
    mux: Mux,
    machine_id: i64,
    (machine, org): (String, Option<String>),
    source: String,
) {
    // The server opens the control stream; the agent's first frame on it is its hello.
    let mut control = match tokio::time::timeout(HANDSHAKE_TIMEOUT, mux.open()).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::info!(%machine, error = %fernwart_transport::error_chain(&e), "cannot open the control stream");
            mux.close();
            return;
        }
        Err(_) => {
            tracing::info!(%machine, "agent link gave no stream in time");
            mux.close();
            return;
        }
    };
    let hello: AgentToServer = match read_frame_within(&mut control, HANDSHAKE_TIMEOUT).await {
        Ok(h) => h,
        Err(e) => {
            tracing::info!(%machine, error = %e, "agent handshake failed");
            mux.close();
            return;
        }
    };
    let AgentToServer::Hello { version, agent, targets, switch_on, trust, e2e_key } = hello else {
        let refused = ServerToAgent::Refused { reason: "expected hello".into() };
        write_last_frame(control, &refused).await;
        mux.close();
        return;
    };
    // An agent of version 1 never hears of its records (it would close the link on an
    // unknown message type).
    let version = match negotiate_agent(version) {
        Ok(v) => v,
        Err(e) => {
            write_last_frame(control, &ServerToAgent::Refused { reason: e.to_string() }).await;
            mux.close();
            return;
        }
    };
    if let Err(reason) = e2e_key_check(&app, machine_id, e2e_key).await {
        tracing::warn!(%machine, %reason, "agent link refused");
        write_last_frame(control, &ServerToAgent::Refused { reason }).await;
        mux.close();
        return;
    }
    let now = util::now();
    let entry = Entry::new(
        &machine,
        &source,
        Event::AgentConnect {
            machine: machine.clone(),
            agent: agent.clone(),
            switch_on,
            targets: targets.iter().map(|t| t.name.clone()).collect(),
        },
    );
    let announced = targets.clone();
    let trust = match stored_trust(trust) {
        Ok(t) => t,
        Err(reason) => {
            tracing::info!(%machine, %reason, "agent handshake refused");
            write_last_frame(control, &ServerToAgent::Refused { reason }).await;
            mux.close();
            return;
        }
    };
    let grants = app
        .store
        .run(move |b| b.agent_online(machine_id, &announced, switch_on, &trust, now, &entry))
        .await;
    let grants = match grants {
        Ok(g) => g.iter().map(grant_for).collect(),
        Err(e) => {
            tracing::error!(error = %e, "cannot record agent connect");
            mux.close();
            return;
        }
    };
    let welcome = ServerToAgent::Welcome { version, machine: machine.clone(), grants };
    if write_frame(&mut control, &welcome).await.is_err() {
        mux.close();
        return;
    }
    let (ctl_tx, mut ctl_rx) = mpsc::channel::<ServerToAgent>(64);
    let collector_control = ctl_tx.clone();
    // Peer input shown to people: printable, at most 64 characters.
    let software: String = agent.chars().filter(|c| !c.is_control()).take(64).collect();
    let conn_id = app.hub.agent_connected(
        (machine_id, org),
        mux.clone(),
        ctl_tx,
        switch_on,
        targets,
        (software, version),
    );
    tracing::info!(%machine, switch_on, version, "agent online");

    let (mut rd, mut wr) = control.into_split();
    let writer = tokio::spawn(async move {
        let mut ping = tokio::time::interval(PING_EVERY);
        let mut nonce = 0u64;
        loop {
            let msg = tokio::select! {
                m = ctl_rx.recv() => match m { Some(m) => m, None => break },
                _ = ping.tick() => { nonce += 1; ServerToAgent::Ping { nonce } }
            };
            if write_frame(&mut wr, &msg).await.is_err() {
                break;
            }
        }
    });
    let collector = if version >= AGENT_AUDIT_VERSION {
        let (m, src) = (machine.clone(), source.clone());
        Collector::start(app.clone(), machine_id, m, src, collector_control).await
    } else {
        None
    };
    let reason = loop {
        let frame = tokio::select! {
            f = tokio::time::timeout(IDLE_LIMIT, read_frame::<AgentToServer, _>(&mut rd)) => f,
            _ = mux.closed() => break "link closed".to_owned(),
            _ = app.shutdown.cancelled() => break "server shutting down".to_owned(),
        };
        match frame {
            Err(_) => break "agent silent too long".to_owned(),
            Ok(Err(e)) => break format!("control stream: {e}"),
            Ok(Ok(AgentToServer::Switch { on })) => {
                app.hub.set_switch(machine_id, on);
                let entry =
                    Entry::new(&machine, &source, Event::Switch { machine: machine.clone(), on });
                let r = app.store.run(move |b| b.agent_switch(machine_id, on, &entry)).await;
                if let Err(e) = r {
                    tracing::error!(error = %e, "cannot record key switch");
                }
            }
            Ok(Ok(AgentToServer::GrantAck { session })) => {
                app.hub.grant_answered(machine_id, &session, GrantAnswer::Held);
            }
            Ok(Ok(AgentToServer::GrantRefused { session, reason })) => {
                if version < AGENT_GRANT_REFUSED_VERSION {
                    break "grant_refused on a link older than version 3".to_owned();
                }
                // Bounded like any text a machine sends into the trail; only an answer to a
                // grant the server pushed is recorded (an agent cannot fill the trail with
                // refusals of its own making; its own trail has every refusal anyway).
                let reason: String = reason.chars().take(MAX_REASON_CHARS).collect();
                let refused = GrantAnswer::Refused(reason.clone());
                if !app.hub.grant_answered(machine_id, &session, refused) {
                    tracing::debug!(%machine, %session, "grant_refused for no grant pushed");
                    continue;
                }
                tracing::warn!(%machine, %session, %reason, "the agent refused a grant");
                app.audit.record(Entry::new(
                    &machine,
                    &source,
                    Event::GrantRefused {
                        machine: machine.clone(),
                        session: session.clone(),
                        reason,
                    },
                ));
            }
            Ok(Ok(AgentToServer::Trust { trust })) => {
                if version < AGENT_GRANT_REFUSED_VERSION {
                    break "trust on a link older than version 3".to_owned();
                }
                let trust = match stored_trust(trust) {
                    Ok(t) => t,
                    Err(reason) => break format!("bad trust anchor: {reason}"),
                };
                tracing::info!(%machine, level = ?trust.level, approvers = trust.approvers.len(), "the agent's trust anchor changed");
                let entry = Entry::new(
                    &machine,
                    &source,
                    Event::TrustChange {
                        machine: machine.clone(),
                        level: trust.level.clone().unwrap_or_default(),
                        approvers: trust.approvers.clone(),
                    },
                );
                // Recorded only when it differs from what the server holds: repeating it
                // writes nothing.
                let r = app.store.run(move |b| b.agent_trust(machine_id, &trust, &entry)).await;
                if let Err(e) = r {
                    tracing::error!(error = %e, "cannot record the agent's trust anchor");
                }
            }
            Ok(Ok(AgentToServer::Pong { .. })) => {}
            Ok(Ok(AgentToServer::AuditRecords { records })) => match &collector {
                Some(c) => c.offer(records),
                None if version < AGENT_AUDIT_VERSION => {
                    break "audit records on a version 1 link".to_owned()
                }
                // The server could not read what it holds: the agent was never told to send.
                None => {}
            },
            Ok(Ok(AgentToServer::Hello { .. })) => break "second hello".to_owned(),
        }
    };
    drop(collector);
    writer.abort();
    app.hub.agent_disconnected(machine_id, conn_id);
    mux.close();
    tracing::info!(%machine, %reason, "agent offline");
    let entry =
        Entry::new(&machine, &source, Event::AgentDisconnect { machine: machine.clone(), reason });
    let now = util::now();
    if let Err(e) = app.store.run(move |b| b.agent_offline(machine_id, now, &entry)).await {
        tracing::error!(error = %e, "cannot record agent disconnect");
    }
}

/// The agent's end-to-end key: recorded with the machine the first time it says one (agents
/// enrolled before end-to-end encryption make theirs at their next start), the same ever after.
/// A different key means another device holds the machine's certificate, or its directory was
/// replaced: the link is refused, and the operator re-enrols the machine.
async fn e2e_key_check(app: &Relay, machine_id: i64, key: Option<String>) -> Result<(), String> {
    let Some(key) = key else {
        // An agent from before end-to-end encryption: it links (the operator sees it online),
        // but technicians' tunnels need its key, so they are refused until it is updated.
        return Ok(());
    };
    if key.parse::<fernwart_proto::e2e::PublicKey>().is_err() {
        return Err("the agent's end-to-end key is malformed".into());
    }
    let k = key.clone();
    match app.store.run(move |b| b.agent_e2e_key(machine_id, &k)).await {
        Ok(E2eKeySeen::Recorded) => {
            tracing::info!(machine_id, e2e_key = %key, "agent end-to-end key recorded");
            Ok(())
        }
        Ok(E2eKeySeen::Same) => Ok(()),
        Ok(E2eKeySeen::Different(held)) => Err(format!(
            "the agent's end-to-end key {key} is not the machine's ({held}): re-enrol the machine \
             if its agent was replaced"
        )),
        Err(e) => Err(format!("server error: {e}")),
    }
}
