//! Applying an event to a session: decide with the pure transition function, write by
//! compare-and-set, publish the committed change. If the session moved between reading and
//! writing, the event is decided again on the new state (so an `end` racing an `approve` can
//! never bring an ended session back).

use crate::{
    audit::{Entry, Event},
    domain::{
        session::{transition, SignedApproval},
        SessionEvent, TransitionRefused, UnixSecs,
    },
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
    apply_with(store, events, id, event, None, by, source, now).await
}

/// Approves session `id` on behalf of `by` with the approver's signature, stored with it
/// (checked by the caller); without one, as [`apply`] does.
pub async fn approve(
    store: &Store,
    events: &Events,
    id: i64,
    approval: Option<(SignedApproval, String)>,
    by: &str,
    source: &str,
    now: UnixSecs,
) -> Result<Applied, ApplyError> {
    apply_with(store, events, id, SessionEvent::Approve, approval, by, source, now).await
}

/// `approval`: the signature and its key's fingerprint, for an approval.
#[allow(clippy::too_many_arguments)]
async fn apply_with(
    store: &Store,
    events: &Events,
    id: i64,
    event: SessionEvent,
    approval: Option<(SignedApproval, String)>,
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
        let record = match &approval {
            Some((a, fingerprint)) if event == SessionEvent::Approve => {
                Event::SessionApproveSigned {
                    session: s.name.clone(),
                    from: s.state,
                    key: a.key.clone(),
                    fingerprint: fingerprint.clone(),
                }
            }
            _ => Event::SessionChange { session: s.name.clone(), event, from: s.state, to },
        };
        let entry = Entry::new(by, source, record);
        let (from, by) = (s.state, by.to_owned());
        let signed = approval.as_ref().map(|(a, _)| a.clone());
        let applied = if event == SessionEvent::Approve {
            store
                .run(move |b| b.session_approve(id, from, signed.as_ref(), &by, now, &entry))
                .await?
        } else {
            store.run(move |b| b.session_transition(id, from, to, &by, now, &entry)).await?
        };
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
