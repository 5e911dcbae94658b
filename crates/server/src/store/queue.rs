//! Audit records of links and tunnels, written off their hot path in batches (group commit:
//! a burst shares one transaction and one sync). A full queue writes directly rather than
//! lose a record; [`AuditQueue::flush`] waits until everything queued is written (at
//! shutdown).

use tokio::sync::{mpsc, oneshot};

use super::Store;
use crate::audit::Entry;

const CAPACITY: usize = 4096;
const BATCH: usize = 256;
/// How long a write waits for more records after the first: a burst of tunnel events shares
/// one transaction and one sync, and no record waits longer than this to be written.
const GATHER: std::time::Duration = std::time::Duration::from_millis(5);

enum Msg {
    Record(Box<Entry>),
    Flush(oneshot::Sender<()>),
}

#[derive(Clone)]
pub struct AuditQueue {
    tx: mpsc::Sender<Msg>,
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
        match self.tx.try_send(Msg::Record(Box::new(entry))) {
            Ok(()) => {}
            Err(
                mpsc::error::TrySendError::Full(Msg::Record(entry))
                | mpsc::error::TrySendError::Closed(Msg::Record(entry)),
            ) => {
                let store = self.store.clone();
                tokio::spawn(async move { write(&store, vec![*entry]).await });
            }
            Err(_) => {}
        }
    }

    /// Writes one record now and waits for it (refusals the caller is answered about).
    pub async fn record_now(&self, entry: Entry) {
        write(&self.store, vec![entry]).await;
    }

    /// Waits until every record queued before this call is written.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

async fn writer(store: Store, mut rx: mpsc::Receiver<Msg>) {
    while let Some(first) = rx.recv().await {
        let mut batch = Vec::new();
        let mut waiting = Vec::new();
        let until = tokio::time::Instant::now() + GATHER;
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Record(entry) => batch.push(*entry),
                Msg::Flush(done) => waiting.push(done),
            }
            if batch.len() >= BATCH {
                break;
            }
            // Someone waits for the disk: write what is queued now.
            next = if waiting.is_empty() {
                tokio::time::timeout_at(until, rx.recv()).await.ok().flatten()
            } else {
                rx.try_recv().ok()
            };
        }
        if !batch.is_empty() {
            write(&store, batch).await;
        }
        for done in waiting {
            let _ = done.send(());
        }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::audit::Event;

    #[tokio::test]
    async fn queued_records_are_written_together_and_a_flush_waits_for_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let queue = AuditQueue::start(store.clone());
        for n in 0..3 {
            queue.record(Entry::new(
                "tech1",
                "127.0.0.1",
                Event::LoginEnded { user: "tech1".into(), reason: format!("test {n}") },
            ));
        }
        queue.flush().await;
        let rows = store.run(|b| b.audit_chain(0, 100)).await.unwrap();
        let ours = rows.iter().filter(|r| r.body.action == "auth.login_ended").count();
        assert_eq!(ours, 3, "{rows:?}");
    }
}
