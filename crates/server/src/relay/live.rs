//! What the console shows live: the open tunnels (who, where, how many bytes, since when), a
//! way to cut one, and pulses that say which part of the live state changed.
//!
//! A pulse carries no data: a page that hears one fetches its fragment again, through the
//! same authorization as any page. It names the organization that owns the machine where
//! known, so that nobody hears of another organization's traffic.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::Hub;
use crate::domain::UnixSecs;

/// How many pulses a slow listener may fall behind before it misses some (it then refreshes
/// everything once).
pub const PULSE_BACKLOG: usize = 64;

/// Which part of the live state changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pulse {
    /// A session changed state, on a machine of this organization (none: of none).
    Sessions { org: Option<String> },
    /// A machine of this organization (none: of none) went on- or offline, or its key switch
    /// changed. (When and how often another operator's machines go online or have their key
    /// switch turned is that operator's business.)
    Machines { org: Option<String> },
    /// A tunnel opened or closed on a machine of this organization (none: of none).
    Connections { org: Option<String> },
}

impl Pulse {
    /// The SSE event name, which the page's script matches against its live parts.
    pub fn kind(&self) -> &'static str {
        match self {
            Pulse::Sessions { .. } => "sessions",
            Pulse::Machines { .. } => "machines",
            Pulse::Connections { .. } => "connections",
        }
    }

    /// The organization whose machine it concerns, where that matters.
    pub fn org(&self) -> Option<Option<&str>> {
        match self {
            Pulse::Sessions { org } | Pulse::Connections { org } | Pulse::Machines { org } => {
                Some(org.as_deref())
            }
        }
    }
}

/// One open tunnel as the console lists it.
#[derive(Debug, Clone)]
pub struct TunnelView {
    pub id: u64,
    pub session_id: i64,
    pub session: String,
    pub machine: String,
    pub machine_org: Option<String>,
    pub user: String,
    pub target: String,
    /// When it opened (wall clock).
    pub since: UnixSecs,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

/// What a tunnel learns when it is cut.
#[derive(Clone, Default)]
pub struct CutSignal {
    pub token: CancellationToken,
    by: Arc<Mutex<Option<String>>>,
}

impl CutSignal {
    /// Who cut it (once cancelled).
    pub fn by(&self) -> String {
        self.by.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or_default()
    }
}

struct Entry {
    view: TunnelView,
    up: Arc<AtomicU64>,
    down: Arc<AtomicU64>,
    cut: CutSignal,
}

#[derive(Default)]
pub struct Tunnels {
    next: u64,
    open: BTreeMap<u64, Entry>,
}

/// A tunnel's place in the list, given back when dropped.
pub struct Registration {
    hub: Arc<Hub>,
    id: u64,
    org: Option<String>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.tunnels().open.remove(&self.id);
        self.hub.pulse(Pulse::Connections { org: self.org.take() });
    }
}

/// What a tunnel tells about itself when it opens.
pub struct Opening {
    pub session_id: i64,
    pub session: String,
    pub machine: String,
    pub machine_org: Option<String>,
    pub user: String,
    pub target: String,
    pub since: UnixSecs,
    /// Its byte counters, technician to target and back, counted by the tunnel.
    pub up: Arc<AtomicU64>,
    pub down: Arc<AtomicU64>,
    /// How it hears that it is cut.
    pub cut: CutSignal,
}

impl Hub {
    pub(super) fn tunnels(&self) -> std::sync::MutexGuard<'_, Tunnels> {
        self.tunnels.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tells the console's listeners; nobody listening is fine.
    pub fn pulse(&self, p: Pulse) {
        let _ = self.pulses.send(p);
    }

    pub fn pulses(&self) -> broadcast::Receiver<Pulse> {
        self.pulses.subscribe()
    }

    /// A tunnel opened: it is listed until the registration is dropped.
    pub fn tunnel_opened(self: &Arc<Self>, o: Opening) -> Registration {
        let org = o.machine_org.clone();
        let id = {
            let mut t = self.tunnels();
            t.next += 1;
            let id = t.next;
            let view = TunnelView {
                id,
                session_id: o.session_id,
                session: o.session,
                machine: o.machine,
                machine_org: o.machine_org,
                user: o.user,
                target: o.target,
                since: o.since,
                bytes_up: 0,
                bytes_down: 0,
            };
            t.open.insert(id, Entry { view, up: o.up, down: o.down, cut: o.cut });
            id
        };
        self.pulse(Pulse::Connections { org: org.clone() });
        Registration { hub: self.clone(), id, org }
    }

    /// The open tunnels, oldest first, with their byte counts now.
    pub fn open_tunnels(&self) -> Vec<TunnelView> {
        self.tunnels()
            .open
            .values()
            .map(|e| TunnelView {
                bytes_up: e.up.load(Ordering::Relaxed),
                bytes_down: e.down.load(Ordering::Relaxed),
                ..e.view.clone()
            })
            .collect()
    }

    /// One open tunnel.
    pub fn open_tunnel(&self, id: u64) -> Option<TunnelView> {
        self.open_tunnels().into_iter().find(|t| t.id == id)
    }

    /// Cuts tunnel `id` at once (the caller has been allowed to); false when it is gone.
    pub fn cut_tunnel(&self, id: u64, by: &str) -> bool {
        let t = self.tunnels();
        let Some(e) = t.open.get(&id) else { return false };
        *e.cut.by.lock().unwrap_or_else(|p| p.into_inner()) = Some(by.to_owned());
        e.cut.token.cancel();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opening(target: &str) -> Opening {
        Opening {
            up: Arc::default(),
            down: Arc::default(),
            cut: CutSignal::default(),
            session_id: 1,
            session: "s1".into(),
            machine: "m1".into(),
            machine_org: Some("plant".into()),
            user: "tech1".into(),
            target: target.into(),
            since: 100,
        }
    }

    #[test]
    fn tunnels_are_listed_while_open_and_cut_by_name() {
        let hub = Arc::new(Hub::default());
        let mut pulses = hub.pulses();
        let (oa, ob) = (opening("plc"), opening("hmi"));
        let (a_up, a_cut, b_cut) = (oa.up.clone(), oa.cut.clone(), ob.cut.clone());
        let _a = hub.tunnel_opened(oa);
        let b = hub.tunnel_opened(ob);
        a_up.fetch_add(5, Ordering::Relaxed);
        let open = hub.open_tunnels();
        assert_eq!(open.len(), 2);
        assert_eq!((open[0].target.as_str(), open[0].bytes_up), ("plc", 5));
        assert!(hub.cut_tunnel(open[1].id, "op1"));
        assert!(b_cut.token.is_cancelled() && !a_cut.token.is_cancelled());
        assert_eq!(b_cut.by(), "op1");
        let id = open[1].id;
        drop(b);
        assert!(hub.open_tunnel(id).is_none());
        assert!(!hub.cut_tunnel(id, "op1"), "a closed tunnel cannot be cut");
        let mut kinds = vec![];
        while let Ok(p) = pulses.try_recv() {
            kinds.push(p);
        }
        assert_eq!(kinds.len(), 3, "two opened, one closed: {kinds:?}");
        assert_eq!(kinds[0], Pulse::Connections { org: Some("plant".into()) });
    }
}
