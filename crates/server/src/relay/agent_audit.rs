//! Collecting an agent's own records over its link (agent link version 2).
//!
//! When the link starts the server tells the agent the last of its records it holds
//! (`audit_ack`); the agent then sends what follows, one batch at a time. Each batch is checked
//! and stored (or refused) in one store transaction ([`crate::audit::agent::check`]) by a task
//! of its own, so that the link's reader goes on handling key switch reports meanwhile. The
//! answer is `audit_ack` (stored: the new last place), `audit_retry` (the machine sent more
//! than [`agent::PER_SECOND`] records a second lately, beyond a burst of [`agent::BURST`]:
//! nothing stored, send it again later) or `audit_refused` (does not link or verify: nothing
//! stored, `alert.agent_chain` in the server's trail). After a refusal no more batches are
//! taken on that link: one alert per link, and the agent tries again on its next link.

use std::time::{Duration, Instant};

use fernwart_proto::{chain::Linked, ServerToAgent};
use tokio::{sync::mpsc, task::JoinHandle};

use super::Relay;
use crate::{
    audit::{agent, Entry, Event},
    store::AgentBatch,
    util,
};

/// How long an agent waits before it sends a batch again that arrived while the one before
/// was still being stored (an agent that keeps to the protocol never does).
const BUSY_RETRY: Duration = Duration::from_secs(1);
/// How long an agent waits before it sends a batch again that the store could not take.
const STORE_RETRY: Duration = Duration::from_secs(5);

/// One link's collector: a task storing the batches handed to it, one at a time.
pub struct Collector {
    batches: mpsc::Sender<Vec<Linked>>,
    control: mpsc::Sender<ServerToAgent>,
    task: JoinHandle<()>,
}

impl Collector {
    /// Tells the agent what the server holds and starts taking batches. `None` when that
    /// cannot be read (logged): the agent then sends nothing on this link.
    pub async fn start(
        app: Relay,
        machine_id: i64,
        machine: String,
        source: String,
        control: mpsc::Sender<ServerToAgent>,
    ) -> Option<Self> {
        let held = match app.store.run(move |b| b.agent_audit_last(machine_id)).await {
            Ok(seq) => seq,
            Err(e) => {
                tracing::error!(%machine, error = %fernwart_transport::error_chain(&e), "cannot read the agent's records held; not collecting on this link");
                return None;
            }
        };
        if control.send(ServerToAgent::AuditAck { seq: held }).await.is_err() {
            return None;
        }
        // One batch in flight: the agent waits for each answer.
        let (batches, rx) = mpsc::channel(1);
        let task = tokio::spawn(collect(
            app,
            Link { machine_id, machine, source, control: control.clone() },
            held,
            rx,
        ));
        Some(Self { batches, control, task })
    }

    /// Hands a batch to the collecting task; one sent before the last was answered is
    /// answered `audit_retry`.
    pub fn offer(&self, records: Vec<Linked>) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.batches.try_send(records) {
            let after_ms = u64::try_from(BUSY_RETRY.as_millis()).unwrap_or(u64::MAX);
            let _ = self.control.try_send(ServerToAgent::AuditRetry { after_ms });
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Link {
    machine_id: i64,
    machine: String,
    source: String,
    control: mpsc::Sender<ServerToAgent>,
}

/// The server's records of what became of a batch of places `batch` of `machine`.
fn notes(machine: &str, source: &str, outcome: &AgentBatch, batch: (u64, u64)) -> Vec<Entry> {
    let entry = |event| Entry::new(machine, source, event);
    match outcome {
        AgentBatch::Refused { last, refusal } => vec![entry(Event::AgentChainBroken {
            machine: machine.to_owned(),
            refusal: refusal.clone(),
            batch,
            held: *last,
        })],
        AgentBatch::Stored { starts_at, pruned, .. } => {
            let mut out = Vec::new();
            if let Some(first_seq) = starts_at {
                out.push(entry(Event::AgentAuditStart {
                    machine: machine.to_owned(),
                    first_seq: *first_seq,
                }));
            }
            if let Some((dropped, first_kept)) = pruned {
                out.push(entry(Event::AgentAuditPruned {
                    machine: machine.to_owned(),
                    dropped: *dropped,
                    first_kept: *first_kept,
                }));
            }
            out
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

async fn collect(app: Relay, link: Link, mut held: u64, mut rx: mpsc::Receiver<Vec<Linked>>) {
    let mut refused = false;
    while let Some(records) = rx.recv().await {
        if refused {
            continue;
        }
        let n = records.len() as u64;
        if let Err(wait) = app.hub.audit_budget(link.machine_id, n, Instant::now()) {
            let after_ms = millis(wait);
            tracing::info!(machine = %link.machine, records = n, after_ms, "agent sends records too fast; asked to wait");
            let _ = link.control.send(ServerToAgent::AuditRetry { after_ms }).await;
            continue;
        }
        let batch = (records.first().map_or(0, |r| r.seq), records.last().map_or(0, |r| r.seq));
        let (machine_id, machine, source) =
            (link.machine_id, link.machine.clone(), link.source.clone());
        let now = util::now();
        let outcome = app
            .store
            .run(move |b| {
                let notes = |o: &AgentBatch| notes(&machine, &source, o, batch);
                b.agent_audit_append(machine_id, &records, now, agent::KEEP_PER_MACHINE, &notes)
            })
            .await;
        let answer = match outcome {
            Ok(AgentBatch::Stored { last, added, .. }) => {
                held = last;
                tracing::debug!(machine = %link.machine, added, last, "agent records stored");
                ServerToAgent::AuditAck { seq: last }
            }
            Ok(AgentBatch::Refused { last, refusal }) => {
                refused = true;
                tracing::warn!(machine = %link.machine, reason = %refusal.reason, held = last, "agent records refused: their chain does not link up");
                ServerToAgent::AuditRefused { seq: last, reason: refusal.reason }
            }
            Err(e) => {
                // Nothing stored; the agent sends the batch again later.
                tracing::error!(machine = %link.machine, held, error = %fernwart_transport::error_chain(&e), "cannot store the agent's records");
                ServerToAgent::AuditRetry { after_ms: millis(STORE_RETRY) }
            }
        };
        if link.control.send(answer).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use fernwart_proto::{chain, AgentToServer, AGENT_LINK_VERSION, PROTOCOL_VERSION};
    use fernwart_transport::{frame_io::read_frame_within, write_frame, Mode, Mux, MuxStream};
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::store::{AuditFilter, AuditQueue, Sqlite, Store};

    const WAIT: Duration = Duration::from_secs(5);

    fn trail(n: u64) -> Vec<Linked> {
        let mut out: Vec<Linked> = Vec::new();
        for i in 1..=n {
            let body = chain::Body {
                time_ms: 1_800_000_000_000 + i as i64,
                actor: "agent".into(),
                action: "switch".into(),
                target: String::new(),
                source: "m1".into(),
                details: format!("{{\"n\":{i}}}"),
            };
            let last = out.last().map(|r| (r.seq, r.hash.as_str()));
            out.push(chain::link(last, body));
        }
        out
    }

    /// A server-side link of machine m1 to an agent in memory that says hello with
    /// `version`: the store, and the agent's end of the control stream after the welcome.
    async fn linked(version: u16) -> (Store, i64, MuxStream, Mux, CancellationToken) {
        let store = Store::new(Sqlite::open_in_memory().unwrap());
        let add = Entry::system(Event::MachineAdd {
            name: "m1".into(),
            org: None,
            token_expires: String::new(),
        });
        let now = util::now();
        let m = store.blocking().machine_add("m1", None, "h", now, now + 60, &add).unwrap();
        let shutdown = CancellationToken::new();
        let relay = Relay::new(
            store.clone(),
            AuditQueue::start(store.clone()),
            shutdown.clone(),
            std::sync::Arc::new(crate::settings::Live::from_config(
                &crate::config::Config::parse(
                    "[server]\nlisten = \"127.0.0.1:1\"\npublic_url = \"https://fw.test\"\n",
                    [],
                )
                .unwrap(),
            )),
        );
        let (server_io, agent_io) = tokio::io::duplex(256 * 1024);
        let (server_mux, _) = Mux::start(server_io, Mode::Client).await.unwrap();
        tokio::spawn(super::super::agent_link::serve(
            relay,
            server_mux,
            m,
            ("m1".into(), None),
            "127.0.0.1".into(),
        ));
        let (agent_mux, mut inbound) = Mux::start(agent_io, Mode::Server).await.unwrap();
        let mut control = tokio::time::timeout(WAIT, inbound.recv()).await.unwrap().unwrap();
        let hello = AgentToServer::Hello {
            version,
            agent: "test".into(),
            targets: vec![],
            switch_on: true,
            trust: None,
            e2e_key: None,
        };
        write_frame(&mut control, &hello).await.unwrap();
        let welcome: ServerToAgent = read_frame_within(&mut control, WAIT).await.unwrap();
        assert!(
            matches!(welcome, ServerToAgent::Welcome { version: v, .. } if v == version),
            "{welcome:?}"
        );
        (store, m, control, agent_mux, shutdown)
    }

    /// The next frame that is not a ping.
    async fn next(control: &mut MuxStream) -> ServerToAgent {
        loop {
            match read_frame_within(control, WAIT).await.unwrap() {
                ServerToAgent::Ping { .. } => {}
                other => return other,
            }
        }
    }

    #[tokio::test]
    async fn a_version_2_agent_hands_in_its_records_and_a_break_is_refused_with_an_alert() {
        let (store, m, mut control, _mux, _stop) = linked(AGENT_LINK_VERSION).await;
        assert_eq!(next(&mut control).await, ServerToAgent::AuditAck { seq: 0 });
        let t = trail(5);

        let batch = AgentToServer::AuditRecords { records: t[..3].to_vec() };
        write_frame(&mut control, &batch).await.unwrap();
        assert_eq!(next(&mut control).await, ServerToAgent::AuditAck { seq: 3 });

        let mut changed = t[3..].to_vec();
        changed[1].body.details = "{\"n\":0}".into();
        write_frame(&mut control, &AgentToServer::AuditRecords { records: changed }).await.unwrap();
        let ServerToAgent::AuditRefused { seq, reason } = next(&mut control).await else {
            panic!("not refused")
        };
        assert_eq!(seq, 3);
        assert!(reason.contains("record 5 was changed"), "{reason}");
        // Nothing more taken on this link, not even the genuine records.
        let genuine = AgentToServer::AuditRecords { records: t[3..].to_vec() };
        write_frame(&mut control, &genuine).await.unwrap();
        let ping_or_nothing =
            read_frame_within::<ServerToAgent, _>(&mut control, Duration::from_millis(300)).await;
        assert!(!matches!(ping_or_nothing, Ok(ServerToAgent::AuditAck { .. })));

        let b = store.blocking();
        assert_eq!(b.agent_audit_last(m).unwrap(), 3);
        let trail = b.audit_list(&AuditFilter { limit: 100, ..AuditFilter::default() }).unwrap();
        let alerts: Vec<_> = trail.iter().filter(|r| r.action == "alert.agent_chain").collect();
        assert_eq!(alerts.len(), 1, "{trail:?}");
        assert_eq!(alerts[0].target, "m1");
        assert_eq!(alerts[0].details["break"], "changed");
        assert_eq!(alerts[0].details["batch_first"], 4);
    }

    #[tokio::test]
    async fn a_version_1_agent_never_hears_of_records() {
        let (_store, _m, mut control, _mux, _stop) = linked(PROTOCOL_VERSION).await;
        // Only pings come (the first at once); an audit message would close its link.
        let quiet = read_frame_within::<ServerToAgent, _>(&mut control, Duration::from_millis(500));
        match quiet.await {
            Ok(ServerToAgent::Ping { .. }) | Err(_) => {}
            Ok(other) => panic!("a version 1 agent got {other:?}"),
        }
        // Records on a version 1 link break the protocol: the link closes.
        let batch = AgentToServer::AuditRecords { records: trail(1) };
        write_frame(&mut control, &batch).await.unwrap();
        let closed = async {
            loop {
                match read_frame_within::<ServerToAgent, _>(&mut control, WAIT).await {
                    Ok(ServerToAgent::Ping { .. }) => {}
                    other => return other,
                }
            }
        };
        assert!(closed.await.is_err(), "the link stayed open");
    }
}
