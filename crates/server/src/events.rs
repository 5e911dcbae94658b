//! Committed changes, published once each. The relay subscribes and alone turns them into
//! grants, revokes and cuts; nothing that publishes knows who listens.

use std::sync::Arc;

use crate::store::Applied;

/// A change that has been committed to the store. (Published a few times per user action:
/// its size does not matter.)
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
pub enum Change {
    /// A session moved from one state to another.
    Session(Applied),
    /// A user was disabled: their links and tunnels end.
    UserDisabled { user: i64 },
    /// A machine was revoked: its link ends.
    MachineRevoked { machine: i64 },
}

/// Something that reacts to committed changes. Called on the publishing task: it must not
/// block (spawn what takes time).
pub trait Subscriber: Send + Sync + 'static {
    fn on_change(&self, change: &Change);
}

/// The publishing side, cheap to clone.
#[derive(Clone, Default)]
pub struct Events {
    subscribers: Arc<Vec<Arc<dyn Subscriber>>>,
}

impl Events {
    pub fn new(subscribers: Vec<Arc<dyn Subscriber>>) -> Self {
        Self { subscribers: Arc::new(subscribers) }
    }

    /// Tells every subscriber, in order, after the change has committed.
    pub fn publish(&self, change: Change) {
        for s in self.subscribers.iter() {
            s.on_change(&change);
        }
    }
}
