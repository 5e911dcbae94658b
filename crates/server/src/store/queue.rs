//! Audit records of links and tunnels, written off their hot path in batches. A full queue
//! writes directly rather than lose a record.

use tokio::sync::mpsc;

use super::Store;
use crate::audit::Entry;

const CAPACITY: usize = 4096;
const BATCH: usize = 256;

#[derive(Clone)]
pub struct AuditQueue {
    tx: mpsc::Sender<Entry>,
    store: Store,
}

impl AuditQueue {
    /// Starts the writer task; it ends when every queue handle is dropped.
    pub fn start(store: Store) -> Self {
        let (tx, rx) = mpsc::channel(CAPACITY);
        tokio::spawn(writer(store.clone(), rx));
        Self { tx, store }
    }

    pub fn record(&self, entry: Entry) {
        match self.tx.try_send(entry) {
            Ok(()) => {}
            Err(
                mpsc::error::TrySendError::Full(entry) | mpsc::error::TrySendError::Closed(entry),
            ) => {
                let store = self.store.clone();
                tokio::spawn(async move { write(&store, vec![entry]).await });
            }
        }
    }

    /// Writes one record now and waits for it (refusals the caller is answered about).
    pub async fn record_now(&self, entry: Entry) {
        write(&self.store, vec![entry]).await;
    }
}

async fn writer(store: Store, mut rx: mpsc::Receiver<Entry>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        write(&store, batch).await;
    }
}

async fn write(store: &Store, batch: Vec<Entry>) {
    let copy = batch.clone();
    if let Err(e) = store.run(move |b| b.record(&copy)).await {
        for entry in &batch {
            tracing::error!(error = %e, actor = %entry.actor, action = %entry.event.action(),
                target = %entry.event.target(), details = %entry.event.details(), "cannot write audit record");
        }
    }
}
