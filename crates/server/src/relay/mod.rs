//! Live state and the byte relay: connected agents, waiting technicians, open tunnels.
//!
//! Every tunnel waits on cancellation tokens for each condition of DESIGN §4 promise 2 that
//! can turn false while it runs: the session (ended, rejected, expired), the user (disabled),
//! the machine's key switch and both links. Any one firing closes the tunnel at once.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use fernwart_proto::{
    approval::{Approval, GrantFields},
    Grant, ServerToAgent, TargetInfo,
};
use fernwart_transport::Mux;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::{
    domain::{session::Session, SessionState},
    events::{Change, Events, Subscriber},
    store::{AuditQueue, Store},
};

pub mod agent_audit;
pub mod agent_link;
pub mod live;
pub mod recordings;
pub mod tech_link;
pub mod tunnel;

/// What the links need: live state, the store, the event bus, the audit queue.
#[derive(Clone)]
pub struct Relay(Arc<RelayInner>);

pub struct RelayInner {
    pub hub: Arc<Hub>,
    pub store: Store,
    pub events: Events,
    pub audit: AuditQueue,
    pub shutdown: CancellationToken,
    /// The settings in force; among them how long a tunnel may carry nothing before it is
    /// closed (`sessions.tunnel_idle_timeout`, zero: never).
    pub settings: Arc<crate::settings::Live>,
    /// The links and tunnels running: a stop waits for them to write their last records
    /// (`tunnel.close`, the link's end) before it flushes the audit queue.
    pub tasks: tokio_util::task::TaskTracker,
}

impl std::ops::Deref for Relay {
    type Target = RelayInner;
    fn deref(&self) -> &RelayInner {
        &self.0
    }
}

impl Relay {
    /// A relay whose hub subscribes to the changes published on the returned relay's `events`.
    pub fn new(
        store: Store,
        audit: AuditQueue,
        shutdown: CancellationToken,
        settings: Arc<crate::settings::Live>,
    ) -> Self {
        let hub = Arc::new(Hub::default());
        let events = Events::new(vec![hub.clone() as Arc<dyn Subscriber>]);
        let tasks = tokio_util::task::TaskTracker::new();
        Self(Arc::new(RelayInner { hub, store, events, audit, shutdown, settings, tasks }))
    }
}

/// The grant an agent holds for a session.
pub fn grant_for(s: &Session) -> Grant {
    Grant {
        session: s.name.clone(),
        targets: s.targets.clone(),
        from: s.from,
        until: s.until,
        users: s.user_names(),
        record: s.record,
        tech_keys: s.tech_keys.clone(),
        approval: s.approval.as_ref().map(|a| Approval {
            key: a.key.clone(),
            signature: a.signature.clone(),
            nonce: s.nonce.clone(),
        }),
    }
}

/// What an approver of the session signs: its grant at its machine, with its nonce.
pub fn grant_fields(s: &Session) -> GrantFields {
    GrantFields::of(&grant_for(s), &s.machine, &s.nonce)
}

impl Subscriber for Hub {
    fn on_change(&self, change: &Change) {
        match change {
            Change::Session(applied) => {
                let s = &applied.after;
                self.session_changed(s.id, s.is_terminal());
                self.pulse(live::Pulse::Sessions { org: s.machine_org.clone() });
                if s.is_terminal() {
                    self.revoke(s.machine_id, &s.name);
                } else if s.state == SessionState::Approved {
                    // Released: the agent holds the grant before the technician connects.
                    // (Activation pushes it from the technician's link, which waits for it.)
                    if let Some(push) = self.grant_push(s.machine_id, grant_for(s)) {
                        tokio::spawn(push);
                    }
                }
            }
            Change::UserDisabled { user } => self.user_disabled(*user),
            Change::MachineRevoked { machine } => self.disconnect_agent(*machine),
        }
    }
}

/// The most technician links (`fernwart connect`) one user may hold open at once.
pub const MAX_LINKS_PER_USER: usize = 8;
/// The most tunnels one user may have opening at once (from its open request to the agent's
/// answer), across its links; more wait their turn. Each holds a stream of the machine's link
/// (at most [`fernwart_transport::mux::MAX_STREAMS`]) for up to a handshake timeout: a
/// technician who stalls or trickles its handshakes must not take them all from the others.
pub const MAX_OPENING_PER_USER: usize = 16;

/// How long the server waits for an agent to acknowledge a grant.
const GRANT_ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// What became of a grant pushed to an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantAnswer {
    /// The agent holds it.
    Held,
    /// The agent refused it (its operator's check), and said why.
    Refused(String),
    /// No agent online, or no answer in time (an agent of link version 2 or older does not
    /// say that it refused).
    NoAnswer,
}

pub struct Hub {
    inner: Mutex<Inner>,
    /// What changed in the live state, for the console's live pages ([`live`]).
    pulses: broadcast::Sender<live::Pulse>,
    /// The open tunnels, for the console's live connections ([`live`]).
    tunnels: Mutex<live::Tunnels>,
}

impl Default for Hub {
    fn default() -> Self {
        Self {
            inner: Mutex::default(),
            pulses: broadcast::channel(live::PULSE_BACKLOG).0,
            tunnels: Mutex::default(),
        }
    }
}

#[derive(Default)]
struct Inner {
    agents: HashMap<i64, AgentEntry>,
    sessions: HashMap<i64, SessionEntry>,
    users: HashMap<i64, CancellationToken>,
    /// Open technician links per user.
    links: HashMap<i64, usize>,
    /// Tunnels opening per user (while it has links): [`MAX_OPENING_PER_USER`] permits.
    opening: HashMap<i64, Arc<tokio::sync::Semaphore>>,
    /// How many of its own records each machine may still hand in.
    audit_budgets: HashMap<i64, crate::audit::agent::Budget>,
    next_conn: u64,
}

/// One technician link's place under [`MAX_LINKS_PER_USER`]; given back when dropped.
pub struct LinkSlot {
    hub: Arc<Hub>,
    user: i64,
}

impl Drop for LinkSlot {
    fn drop(&mut self) {
        let mut inner = self.hub.lock();
        if let Some(n) = inner.links.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                inner.links.remove(&self.user);
                inner.opening.remove(&self.user);
            }
        }
    }
}

struct AgentEntry {
    conn_id: u64,
    mux: Mux,
    control: mpsc::Sender<ServerToAgent>,
    switch_on: bool,
    switch_token: CancellationToken,
    targets: Vec<TargetInfo>,
    /// What the agent says it is in its hello (`fernwart-agent 0.1.0`), cleaned.
    software: String,
    /// The agent link version agreed on.
    link_version: u16,
    /// The machine's organization: who hears of its changes.
    org: Option<String>,
    acks: HashMap<String, Vec<oneshot::Sender<GrantAnswer>>>,
}

struct SessionEntry {
    changed: watch::Sender<u64>,
    token: CancellationToken,
}

impl SessionEntry {
    fn new() -> Self {
        Self { changed: watch::channel(0).0, token: CancellationToken::new() }
    }
}

/// What a tunnel needs from a connected agent.
#[derive(Clone)]
pub struct AgentView {
    pub mux: Mux,
    pub switch_on: bool,
    pub switch_token: CancellationToken,
    pub targets: Vec<TargetInfo>,
    pub link_version: u16,
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers an agent link; an older link of the same machine is closed.
    pub fn agent_connected(
        &self,
        (machine, org): (i64, Option<String>),
        mux: Mux,
        control: mpsc::Sender<ServerToAgent>,
        switch_on: bool,
        targets: Vec<TargetInfo>,
        (software, link_version): (String, u16),
    ) -> u64 {
        let mut inner = self.lock();
        inner.next_conn += 1;
        let conn_id = inner.next_conn;
        let entry = AgentEntry {
            conn_id,
            mux,
            control,
            switch_on,
            switch_token: CancellationToken::new(),
            targets,
            software,
            link_version,
            org: org.clone(),
            acks: HashMap::new(),
        };
        if let Some(old) = inner.agents.insert(machine, entry) {
            old.switch_token.cancel();
            old.mux.close();
        }
        drop(inner);
        self.pulse(live::Pulse::Machines { org });
        conn_id
    }

    pub fn agent_disconnected(&self, machine: i64, conn_id: u64) {
        let mut inner = self.lock();
        if inner.agents.get(&machine).is_some_and(|a| a.conn_id == conn_id) {
            if let Some(old) = inner.agents.remove(&machine) {
                old.switch_token.cancel();
                drop(inner);
                self.pulse(live::Pulse::Machines { org: old.org });
            }
        }
    }

    pub fn agent(&self, machine: i64) -> Option<AgentView> {
        self.lock().agents.get(&machine).map(|a| AgentView {
            mux: a.mux.clone(),
            switch_on: a.switch_on,
            switch_token: a.switch_token.clone(),
            targets: a.targets.clone(),
            link_version: a.link_version,
        })
    }

    /// Takes `n` records from the machine's budget for its own records, or says how long
    /// until it has that many (kept across its links, so reconnecting does not refill it).
    pub fn audit_budget(
        &self,
        machine: i64,
        n: u64,
        now: std::time::Instant,
    ) -> Result<(), Duration> {
        self.lock()
            .audit_budgets
            .entry(machine)
            .or_insert_with(|| crate::audit::agent::Budget::new(now))
            .take(n, now)
    }

    /// What the machine's linked agent says it is (name and version); none: not linked.
    pub fn software(&self, machine: i64) -> Option<String> {
        self.lock().agents.get(&machine).map(|a| a.software.clone())
    }

    pub fn online(&self, machine: i64) -> Option<bool> {
        self.lock().agents.get(&machine).map(|a| a.switch_on)
    }

    /// The key switch changed: off cancels every tunnel of the machine at once.
    pub fn set_switch(&self, machine: i64, on: bool) {
        let mut inner = self.lock();
        let Some(a) = inner.agents.get_mut(&machine) else { return };
        if !on {
            a.switch_token.cancel();
        } else if a.switch_token.is_cancelled() {
            a.switch_token = CancellationToken::new();
        }
        a.switch_on = on;
        let org = a.org.clone();
        drop(inner);
        self.pulse(live::Pulse::Machines { org });
    }

    /// Closes the machine's link (revocation).
    fn disconnect_agent(&self, machine: i64) {
        let removed = self.lock().agents.remove(&machine);
        // A machine not linked: its revocation is still news to the machines pages, of no
        // organization in particular.
        let org = removed.and_then(|a| {
            a.switch_token.cancel();
            a.mux.close();
            a.org
        });
        self.pulse(live::Pulse::Machines { org });
    }

    /// Sends a grant to the machine's agent and waits for its acknowledgement: the one place
    /// grants are pushed (agents also get theirs with the welcome).
    pub async fn grant(&self, machine: i64, grant: Grant) -> GrantAnswer {
        match self.grant_push(machine, grant) {
            Some(push) => push.await,
            None => GrantAnswer::NoAnswer,
        }
    }

    fn grant_push(
        &self,
        machine: i64,
        grant: Grant,
    ) -> Option<impl std::future::Future<Output = GrantAnswer> + Send + 'static> {
        let (tx, rx) = oneshot::channel();
        let control = {
            let mut inner = self.lock();
            let a = inner.agents.get_mut(&machine)?;
            a.acks.entry(grant.session.clone()).or_default().push(tx);
            a.control.clone()
        };
        Some(async move {
            if control.send(ServerToAgent::Grant { grant }).await.is_err() {
                return GrantAnswer::NoAnswer;
            }
            match tokio::time::timeout(GRANT_ACK_TIMEOUT, rx).await {
                Ok(Ok(answer)) => answer,
                _ => GrantAnswer::NoAnswer,
            }
        })
    }

    /// The agent answered the grant of `session`: everyone waiting for it hears. False when
    /// nobody waited (no grant of that session was pushed, or its answer came too late).
    pub fn grant_answered(&self, machine: i64, session: &str, answer: GrantAnswer) -> bool {
        let waiting = self
            .lock()
            .agents
            .get_mut(&machine)
            .and_then(|a| a.acks.remove(session))
            .unwrap_or_default();
        let answered = !waiting.is_empty();
        for tx in waiting {
            let _ = tx.send(answer.clone());
        }
        answered
    }

    fn revoke(&self, machine: i64, session: &str) {
        let control = self.lock().agents.get(&machine).map(|a| a.control.clone());
        if let Some(control) = control {
            let _ = control.try_send(ServerToAgent::Revoke { session: session.to_owned() });
        }
    }

    pub fn session_watch(&self, session: i64) -> watch::Receiver<u64> {
        self.lock().sessions.entry(session).or_insert_with(SessionEntry::new).changed.subscribe()
    }

    pub fn session_token(&self, session: i64) -> CancellationToken {
        self.lock().sessions.entry(session).or_insert_with(SessionEntry::new).token.clone()
    }

    /// A session changed state; `terminal` closes all its tunnels and links.
    fn session_changed(&self, session: i64, terminal: bool) {
        let mut inner = self.lock();
        let entry = inner.sessions.entry(session).or_insert_with(SessionEntry::new);
        entry.changed.send_modify(|v| *v += 1);
        if terminal {
            entry.token.cancel();
        }
    }

    /// A place for one more technician link of `user`, if they have fewer than
    /// [`MAX_LINKS_PER_USER`] open.
    pub fn technician_link(self: &Arc<Self>, user: i64) -> Option<LinkSlot> {
        let mut inner = self.lock();
        let n = inner.links.entry(user).or_insert(0);
        if *n >= MAX_LINKS_PER_USER {
            return None;
        }
        *n += 1;
        Some(LinkSlot { hub: self.clone(), user })
    }

    /// The permits for `user`'s tunnels opening (see [`MAX_OPENING_PER_USER`]).
    pub fn opening(&self, user: i64) -> Arc<tokio::sync::Semaphore> {
        let mut inner = self.lock();
        let s = inner.opening.entry(user);
        s.or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(MAX_OPENING_PER_USER))).clone()
    }

    pub fn user_token(&self, user: i64) -> CancellationToken {
        self.lock().users.entry(user).or_default().clone()
    }

    /// A user was disabled: every tunnel and link of theirs closes.
    fn user_disabled(&self, user: i64) {
        if let Some(t) = self.lock().users.remove(&user) {
            t.cancel();
        }
    }
}
