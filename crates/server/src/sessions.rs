//! Applying an event to a session: decide with the pure transition function, write by
//! compare-and-set, publish the committed change. If the session moved between reading and
//! writing, the event is decided again on the new state (so an `end` racing an `approve` can
//! never bring an ended session back).

use crate::{
    audit::{Entry, Event},
    domain::{session::transition, SessionEvent, TransitionRefused, UnixSecs},
    events::{Change, Events},
    store::{Applied, Store, StoreError},
};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("no session {0}")]
    Gone(String),
    #[error("session {name}: {refused}")]
    Refused { name: String, refused: TransitionRefused },
    #[error("session {0} keeps changing; try again")]
    Busy(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How often an event is decided again when the session moved meanwhile.
const ATTEMPTS: usize = 8;

/// Applies `event` to session `id` on behalf of `by` (a user name or `system`).
pub async fn apply(
    store: &Store,
    events: &Events,
    id: i64,
    event: SessionEvent,
    by: &str,
    source: &str,
    now: UnixSecs,
) -> Result<Applied, ApplyError> {
    let mut name = id.to_string();
    for _ in 0..ATTEMPTS {
        let s = store
            .run(move |b| b.session_by_id(id))
            .await?
            .ok_or_else(|| ApplyError::Gone(name.clone()))?;
        name.clone_from(&s.name);
        let to = transition(s.state, s.approval_required, event)
            .map_err(|refused| ApplyError::Refused { name: s.name.clone(), refused })?;
        let entry = Entry::new(
            by,
            source,
            Event::SessionChange { session: s.name.clone(), event, from: s.state, to },
        );
        let (from, by) = (s.state, by.to_owned());
        let applied =
            store.run(move |b| b.session_transition(id, from, to, &by, now, &entry)).await?;
        if let Some(applied) = applied {
            events.publish(Change::Session(applied.clone()));
            return Ok(applied);
        }
    }
    Err(ApplyError::Busy(name))
}

/// The server expires a session whose window has closed (the sweeper, or a link that noticed
/// first). Losing a race to another change is fine: the session is over either way.
pub async fn expire(store: &Store, events: &Events, id: i64, now: UnixSecs) {
    if let Err(e) = apply(store, events, id, SessionEvent::Expire, "system", "server", now).await {
        tracing::debug!(error = %e, "expiry raced another change");
    }
}
