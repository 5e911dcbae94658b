//! Writes the agent's records off its relaying thread. `fdatasync` takes milliseconds; done
//! inline on the agent's single runtime thread it held up every tunnel (a tunnel's open waited
//! for its record to reach the disk). Here a thread of its own takes the records in order,
//! writes what has queued up and syncs once for all of them (group commit), so a record is on
//! disk a few milliseconds after [`AuditWriter::record`] returns, in the order recorded.

use std::sync::{
    mpsc::{self, Receiver, SyncSender, TrySendError},
    Arc,
};

use fernwart_proto::chain::Body;

use super::AuditLog;

/// Records waiting for the writer, at most; beyond that the caller writes itself (slower, but
/// nothing is dropped).
const QUEUE: usize = 4096;
/// Records written before one sync, at most.
const BATCH: usize = 256;
/// How long a write waits for more records after the first (group commit): records that
/// come in a burst (a tunnel's open, a busy minute of tunnels) share one write and one sync,
/// and none waits longer than this to reach the disk.
const GATHER: std::time::Duration = std::time::Duration::from_millis(5);

enum Msg {
    Record(Body),
    /// Answered when everything queued before it is on disk.
    Flush(mpsc::Sender<()>),
}

pub struct AuditWriter {
    log: Arc<AuditLog>,
    tx: Option<SyncSender<Msg>>,
}

impl AuditWriter {
    /// Starts the writer thread for `log` (if the thread cannot start, records are written by
    /// their callers).
    pub fn start(log: Arc<AuditLog>) -> Self {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let thread_log = log.clone();
        let started = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || run(&thread_log, &rx));
        match started {
            Ok(_) => Self { log, tx: Some(tx) },
            Err(e) => {
                tracing::error!(error = %e, "no audit writer thread; records are written inline");
                Self { log, tx: None }
            }
        }
    }

    /// Queues `body` for the trail; returns at once unless the queue is full.
    pub fn record(&self, body: Body) {
        let body = match &self.tx {
            Some(tx) => match tx.try_send(Msg::Record(body)) {
                Ok(()) => return,
                Err(
                    TrySendError::Full(Msg::Record(b)) | TrySendError::Disconnected(Msg::Record(b)),
                ) => b,
                Err(_) => return,
            },
            None => body,
        };
        // Full or gone: write it here rather than lose it (in order: the queue holds only
        // earlier records, which the writer keeps writing; a full queue is a disk far behind).
        if let Some(tx) = &self.tx {
            if tx.send(Msg::Record(body.clone())).is_ok() {
                return;
            }
        }
        write(&self.log, vec![body]);
    }

    /// Waits until every record queued so far is on disk (tests, shutdown).
    pub fn flush(&self) {
        if let Some(tx) = &self.tx {
            let (done, wait) = mpsc::channel();
            if tx.send(Msg::Flush(done)).is_ok() {
                let _ = wait.recv();
            }
        }
    }
}

fn run(log: &AuditLog, rx: &Receiver<Msg>) {
    while let Ok(first) = rx.recv() {
        let mut batch = Vec::new();
        let mut waiting = Vec::new();
        let mut next = Some(first);
        let until = std::time::Instant::now() + GATHER;
        while let Some(msg) = next.take() {
            let flush = match msg {
                Msg::Record(b) => {
                    batch.push(b);
                    false
                }
                Msg::Flush(done) => {
                    waiting.push(done);
                    true
                }
            };
            if batch.len() < BATCH {
                // Someone waits for the disk: write what is queued now.
                let left = until.saturating_duration_since(std::time::Instant::now());
                next = if flush || !waiting.is_empty() || left.is_zero() {
                    rx.try_recv().ok()
                } else {
                    rx.recv_timeout(left).ok()
                };
            }
        }
        write(log, batch);
        for done in waiting {
            let _ = done.send(());
        }
    }
}

fn write(log: &AuditLog, batch: Vec<Body>) {
    if batch.is_empty() {
        return;
    }
    if let Err(e) = log.append_many(batch) {
        tracing::error!(
            error = %fernwart_transport::error_chain(&e),
            failures = log.failures(),
            "cannot write the agent's audit records"
        );
    }
}
