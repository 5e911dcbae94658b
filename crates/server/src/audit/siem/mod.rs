//! SIEM export: copies of the audit trail in RFC 5424 syslog (TCP or TLS) and in a JSON lines
//! file, each delivered in order and at least once.
//!
//! The on-disk queue is the trail itself plus one cursor per sink in the store (the place up
//! to which the sink has delivered): a sink reads the records after its cursor, a batch at a
//! time, writes them, and moves the cursor on only once they are delivered. While a receiver
//! is down nothing moves; when it is back, the sink resumes after the cursor. New records are
//! found by polling the store every [`POLL`] (one indexed query), which is also the export's
//! usual latency.
//!
//! Syslog has no acknowledgement (RFC 6587, RFC 5425), so "delivered" is inferred: a batch
//! counts once the connection it went out on is still open [`CONFIRM_AFTER`] later (a
//! receiver that stops closes it; data its TCP did not acknowledge breaks it after
//! [`transport::UNACKED_TIMEOUT`]), or once the receiver closed its side after our clean
//! close at shutdown. After a broken connection, everything not yet counted is sent again:
//! records may arrive twice, each time identical, with the same `seq` to drop the second by.

pub mod format;
pub mod jsonl;
pub mod transport;

use std::{
    collections::VecDeque,
    path::PathBuf,
    sync::Mutex,
    time::{Duration, Instant},
};

use fernwart_proto::chain::Linked;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{
    config::{error_chain, Config, SyslogTarget},
    store::{Store, StoreError},
};

/// The cursor names in the store.
pub const SYSLOG_SINK: &str = "syslog";
pub const JSONL_SINK: &str = "jsonl";
/// How often the store is asked for new records.
pub const POLL: Duration = Duration::from_millis(250);
/// Records read and written at a time.
pub const BATCH: usize = 256;
/// How long a connection must stay open after a batch for the batch to count as delivered.
pub const CONFIRM_AFTER: Duration = Duration::from_secs(10);
/// How long the stop waits for the last batch and the receiver's close.
pub const FINISH_TIMEOUT: Duration = Duration::from_secs(15);
const CLOSE_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Transport(#[from] transport::TransportError),
    #[error("reading or moving the delivery cursor")]
    Store(#[from] StoreError),
    #[error("cannot append to {path}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the file writer stopped")]
    Worker,
}

/// The running export tasks.
pub struct Exporter {
    stop: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Exporter {
    /// Starts a task per configured sink. Must run inside a tokio runtime.
    pub fn start(store: &Store, cfg: &Config) -> Self {
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();
        let host = url::Url::parse(&cfg.settings.server.public_url)
            .ok()
            .and_then(|u| u.host().map(|h| h.to_string()))
            .unwrap_or_default();
        let origin = format::Origin::new(host.trim_start_matches('[').trim_end_matches(']'));
        if let Some(target) = &cfg.audit.syslog {
            tracing::info!(receiver = %target.url(), "audit trail exported to syslog");
            tasks.push(tokio::spawn(syslog_sink(
                store.clone(),
                target.clone(),
                origin,
                stop.clone(),
            )));
        }
        if let Some(path) = &cfg.audit.jsonl {
            tracing::info!(file = %path.display(), "audit trail exported as JSON lines");
            tasks.push(tokio::spawn(jsonl_sink(store.clone(), path.clone(), stop.clone())));
        }
        if let Some(hook) = &cfg.audit.webhook {
            tracing::info!(hook = ?hook, "alerts delivered to a webhook");
            tasks.push(tokio::spawn(crate::audit::webhook::run(
                store.clone(),
                hook.clone(),
                stop.clone(),
            )));
        }
        Self { stop, tasks: Mutex::new(tasks) }
    }

    /// Stops the tasks after their current batch (delivering what the trail holds now) and
    /// waits for them, at most [`FINISH_TIMEOUT`].
    pub async fn finish(&self) {
        self.stop.cancel();
        let tasks = match self.tasks.lock() {
            Ok(mut t) => std::mem::take(&mut *t),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        let all = futures::future::join_all(tasks);
        if tokio::time::timeout(FINISH_TIMEOUT, all).await.is_err() {
            tracing::warn!("the audit export did not finish in time; it resumes at the next start");
        }
    }
}

/// Waits between reconnects: 250 ms, doubling up to 10 s; back to the start once a batch
/// went out and the receiver was still there on the next look.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_millis(250);
    pub const MAX: Duration = Duration::from_secs(10);

    pub fn new() -> Self {
        Self { next: Self::FIRST }
    }

    /// The wait before the next attempt.
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        wait
    }

    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

/// Sleeps `wait` unless `stop` comes first; `true` when stopped.
async fn sleep_or_stop(wait: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(wait) => false,
        _ = stop.cancelled() => true,
    }
}

async fn records_after(store: &Store, after: u64) -> Result<Vec<Linked>, StoreError> {
    store.run(move |b| b.audit_chain(after, BATCH)).await
}

async fn cursor(store: &Store, sink: &'static str) -> Result<u64, StoreError> {
    store.run(move |b| b.delivery_cursor(sink)).await
}

async fn advance(store: &Store, sink: &'static str, seq: u64) -> Result<(), StoreError> {
    store.run(move |b| b.delivery_advance(sink, seq)).await
}

// ---------------------------------------------------------------- syslog

async fn syslog_sink(
    store: Store,
    target: SyslogTarget,
    origin: format::Origin,
    stop: CancellationToken,
) {
    let mut dialer = transport::Dialer::new(target);
    let mut backoff = Backoff::new();
    // Failures in a row: the first is a warning, the rest are repeated at debug level.
    let mut failures = 0u32;
    loop {
        let outcome =
            syslog_connection(&store, &mut dialer, &origin, &stop, &mut backoff, &mut failures)
                .await;
        match outcome {
            Ok(()) => return,
            Err(e) => {
                failures += 1;
                let receiver = dialer.target().url();
                if failures == 1 {
                    tracing::warn!(%receiver, error = %error_chain(&e),
                        "audit export to syslog interrupted; records wait in the trail");
                } else {
                    tracing::debug!(%receiver, failures, error = %error_chain(&e),
                        "audit export to syslog still interrupted");
                }
            }
        }
        if stop.is_cancelled() || sleep_or_stop(backoff.next_wait(), &stop).await {
            return;
        }
    }
}

/// One connection: from the cursor on, until it breaks (`Err`) or the stop (`Ok`).
async fn syslog_connection(
    store: &Store,
    dialer: &mut transport::Dialer,
    origin: &format::Origin,
    stop: &CancellationToken,
    backoff: &mut Backoff,
    failures: &mut u32,
) -> Result<(), SinkError> {
    let confirmed = cursor(store, SYSLOG_SINK).await?;
    let mut conn = tokio::select! {
        c = dialer.connect() => c?,
        _ = stop.cancelled() => return Ok(()),
    };
    if *failures > 0 {
        tracing::info!(receiver = %dialer.target().url(), after = confirmed, failures = *failures,
            "syslog receiver reachable again; resuming the audit export");
        *failures = 0;
    } else {
        tracing::debug!(receiver = %dialer.target().url(), after = confirmed, "connected to syslog");
    }
    let mut window = Unconfirmed::new(confirmed);
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.cancelled() => true,
        };
        conn.check()?;
        if window.sent > confirmed {
            // A batch went out on an earlier tick and the receiver is still there: it works
            // again, so a later break retries quickly.
            backoff.reset();
        }
        if let Some(seq) = window.due(Instant::now()) {
            advance(store, SYSLOG_SINK, seq).await?;
            window.confirmed(seq);
        }
        // Whatever is there, a batch at a time; at the stop, one batch more at most.
        loop {
            let records = records_after(store, window.sent).await?;
            let Some(last) = records.last().map(|r| r.seq) else { break };
            let mut bytes = Vec::new();
            for r in &records {
                format::push_frame(&mut bytes, &format::syslog_message(origin, r));
            }
            conn.send(&bytes).await?;
            window.sent(last, Instant::now());
            if records.len() < BATCH || stop.is_cancelled() {
                break;
            }
        }
        if stopping || stop.is_cancelled() {
            if window.sent > window.confirmed && conn.close(CLOSE_WAIT).await {
                advance(store, SYSLOG_SINK, window.sent).await?;
            }
            return Ok(());
        }
    }
}

/// Batches sent on the current connection and not yet counted as delivered.
#[derive(Debug)]
struct Unconfirmed {
    /// The cursor in the store.
    confirmed: u64,
    /// The last record written.
    sent: u64,
    /// The last record of each batch and when it was written.
    batches: VecDeque<(u64, Instant)>,
}

impl Unconfirmed {
    fn new(confirmed: u64) -> Self {
        Self { confirmed, sent: confirmed, batches: VecDeque::new() }
    }

    fn sent(&mut self, last: u64, at: Instant) {
        self.sent = last;
        self.batches.push_back((last, at));
    }

    /// The last record of the batches written [`CONFIRM_AFTER`] before `now` or earlier (the
    /// connection was checked open just now).
    fn due(&self, now: Instant) -> Option<u64> {
        self.batches
            .iter()
            .take_while(|(_, at)| now.saturating_duration_since(*at) >= CONFIRM_AFTER)
            .last()
            .map(|(seq, _)| *seq)
    }

    fn confirmed(&mut self, seq: u64) {
        self.confirmed = seq;
        while self.batches.front().is_some_and(|(s, _)| *s <= seq) {
            self.batches.pop_front();
        }
    }
}

// ---------------------------------------------------------------- JSON lines

async fn jsonl_sink(store: Store, path: PathBuf, stop: CancellationToken) {
    let mut backoff = Backoff::new();
    let mut failures = 0u32;
    loop {
        match jsonl_run(&store, &path, &stop, &mut failures).await {
            Ok(()) => return,
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(file = %path.display(), error = %error_chain(&e),
                        "audit export to the JSON lines file interrupted; records wait in the trail");
                } else {
                    tracing::debug!(file = %path.display(), failures, error = %error_chain(&e),
                        "audit export to the JSON lines file still interrupted");
                }
            }
        }
        if stop.is_cancelled() || sleep_or_stop(backoff.next_wait(), &stop).await {
            return;
        }
    }
}

async fn jsonl_run(
    store: &Store,
    path: &std::path::Path,
    stop: &CancellationToken,
    failures: &mut u32,
) -> Result<(), SinkError> {
    let mut done = cursor(store, JSONL_SINK).await?;
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.cancelled() => true,
        };
        loop {
            let records = records_after(store, done).await?;
            let Some(last) = records.last().map(|r| r.seq) else { break };
            let lines: String = records.iter().map(format::json_line).collect();
            let file = path.to_owned();
            let cut = tokio::task::spawn_blocking(move || jsonl::append(&file, lines.as_bytes()))
                .await
                .map_err(|_| SinkError::Worker)?
                .map_err(|source| SinkError::File { path: path.display().to_string(), source })?;
            if cut > 0 {
                tracing::warn!(file = %path.display(), bytes = cut,
                    "removed a cut-short last line (written again whole)");
            }
            advance(store, JSONL_SINK, last).await?;
            done = last;
            if *failures > 0 {
                tracing::info!(file = %path.display(), failures = *failures,
                    "JSON lines file writable again; audit export resumed");
                *failures = 0;
            }
            if records.len() < BATCH || stop.is_cancelled() {
                break;
            }
        }
        if stopping || stop.is_cancelled() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn backoff_doubles_to_ten_seconds_and_resets() {
        let mut b = Backoff::new();
        let waits: Vec<u64> = (0..8).map(|_| b.next_wait().as_millis() as u64).collect();
        assert_eq!(waits, [250, 500, 1000, 2000, 4000, 8000, 10_000, 10_000]);
        b.reset();
        assert_eq!(b.next_wait(), Duration::from_millis(250));
    }

    #[test]
    fn batches_count_only_after_the_connection_stayed_open() {
        let t0 = Instant::now();
        let mut w = Unconfirmed::new(4);
        assert_eq!(w.due(t0), None);
        w.sent(10, t0);
        w.sent(20, t0 + Duration::from_secs(3));
        assert_eq!(w.sent, 20);
        assert_eq!(w.due(t0 + Duration::from_secs(9)), None);
        assert_eq!(w.due(t0 + CONFIRM_AFTER), Some(10));
        w.confirmed(10);
        assert_eq!(w.confirmed, 10);
        assert_eq!(w.due(t0 + CONFIRM_AFTER), None);
        assert_eq!(w.due(t0 + Duration::from_secs(60)), Some(20));
        w.confirmed(20);
        assert!(w.batches.is_empty());
    }
}
