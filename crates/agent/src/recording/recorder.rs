//! Recording one tunnel connection, off the relay's path.
//!
//! The relay hands each chunk it moves to a [`Tap`]. With recording off that is [`NoTap`],
//! which compiles to nothing: the relay is the same code as without recordings (the choice
//! is made once per tunnel, not per chunk). A [`Recorder`]'s tap copies the chunk and its time
//! into a bounded queue and returns at once; a thread of its own compresses and writes the
//! file.
//!
//! **When the writer falls behind** (bulk traffic faster than the compressor, a slow disk),
//! the queue fills: at [`MAX_QUEUED_BYTES`] or [`MAX_QUEUED_CHUNKS`] the relay waits before
//! it moves more bytes ([`Tap::poll_room`]), so the tunnel slows to the recorder's pace and
//! the recording stays whole (back-pressure reaches both ends through TCP and the link's flow
//! control). It waits at most [`STALL_LIMIT`] at a time, never forever: if the writer makes no
//! room in that time (a disk that hangs), the relay goes on, chunks that do not fit are
//! counted instead of recorded, and the next chunk that fits is preceded by a gap entry naming
//! how many bytes that way are missing (the export shows it, Wireshark as "previous segment
//! not captured"). The summary and the `recording.saved` record say how many bytes were
//! missed in all.
//!
//! If the file cannot be written at all (disk full, say), the recorder says so through
//! [`Recorder::failed`] and the tunnel ends: a session that must be recorded does not go on
//! unrecorded. A crash of the agent loses what the compressor still held (up to about
//! [`FLUSH_EVERY`] of traffic); the file stays readable up to there and is listed as `cut`.

use std::{
    collections::VecDeque,
    fs::{File, OpenOptions},
    future::Future,
    io::{self, BufWriter},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::PathBuf,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, OnceLock,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use fernwart_recording::{Direction, Hashing, Meta, Writer};
use futures::task::AtomicWaker;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::{Recordings, Summary};

/// Bytes queued for the writer at most; beyond, chunks are counted as missed.
pub const MAX_QUEUED_BYTES: usize = 8 * 1024 * 1024;
/// Chunks queued for the writer at most.
pub const MAX_QUEUED_CHUNKS: usize = 4096;
/// The longest the relay waits for room in the queue before it goes on without recording.
pub const STALL_LIMIT: Duration = Duration::from_secs(1);
/// How often the writer takes what the relay queued while traffic flows...
const BATCH_EVERY: Duration = Duration::from_millis(50);
/// ...and at least how often while nothing comes.
const IDLE_EVERY: Duration = Duration::from_millis(800);
/// Queued bytes, or chunks, that wake the writer at once.
const WAKE_BYTES: usize = 256 * 1024;
const WAKE_CHUNKS: usize = MAX_QUEUED_CHUNKS / 4;
/// The writer pushes compressed data to the file at least this often while traffic flows.
pub const FLUSH_EVERY: Duration = Duration::from_secs(2);
/// Compression level: fast (industrial protocols are small and repetitive anyway).
const LEVEL: u32 = 1;
/// How long the end of a tunnel waits for its recording to be on disk.
const FINISH_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the relay hands each chunk it moves.
pub trait Tap: Sync {
    /// Ready when the tap can take another chunk (the relay asks before it moves one).
    fn poll_room(&self, dir: Direction, cx: &mut Context<'_>) -> Poll<()>;
    fn tap(&self, dir: Direction, bytes: &[u8]);
}

/// Recording off: nothing happens.
pub struct NoTap;

impl Tap for NoTap {
    #[inline(always)]
    fn poll_room(&self, _dir: Direction, _cx: &mut Context<'_>) -> Poll<()> {
        Poll::Ready(())
    }

    #[inline(always)]
    fn tap(&self, _dir: Direction, _bytes: &[u8]) {}
}

enum Msg {
    Data { dir: Direction, t_us: u64, bytes: Vec<u8> },
    Gap { dir: Direction, t_us: u64, missed: u64 },
    End { t_us: u64 },
}

/// The queue between the relay and the writer thread. The relay does not wake the writer
/// for each chunk: the writer looks every [`BATCH_EVERY`] (less often while nothing comes),
/// and is woken at once only when [`WAKE_BYTES`] are waiting or the recording ends. So small
/// traffic (a PLC's requests and answers) costs the relay no thread switch per chunk.
struct Queue {
    items: Mutex<VecDeque<Msg>>,
    len: AtomicUsize,
    closed: AtomicBool,
    writer: OnceLock<std::thread::Thread>,
}

impl Queue {
    fn new() -> Self {
        Self {
            items: Mutex::new(VecDeque::new()),
            len: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            writer: OnceLock::new(),
        }
    }

    fn items(&self) -> std::sync::MutexGuard<'_, VecDeque<Msg>> {
        self.items.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `msg` unless the queue holds [`MAX_QUEUED_CHUNKS`] (`force`: in any case);
    /// returns how many are queued now.
    fn push(&self, msg: Msg, force: bool) -> Result<usize, Msg> {
        let mut items = self.items();
        if !force && items.len() >= MAX_QUEUED_CHUNKS {
            return Err(msg);
        }
        items.push_back(msg);
        self.len.store(items.len(), Ordering::Relaxed);
        Ok(items.len())
    }

    fn room(&self) -> usize {
        MAX_QUEUED_CHUNKS.saturating_sub(self.len.load(Ordering::Relaxed))
    }

    fn wake_writer(&self) {
        if let Some(t) = self.writer.get() {
            t.unpark();
        }
    }

    /// No more messages: the writer stops once it has taken what is queued.
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.wake_writer();
    }
}

/// The writer's end of the [`Queue`].
struct Receiver {
    queue: Arc<Queue>,
    batch: VecDeque<Msg>,
    idle: Duration,
}

impl Receiver {
    /// The next message, waiting for it; `None` once the queue is closed and empty.
    fn recv(&mut self) -> Option<Msg> {
        loop {
            if let Some(m) = self.batch.pop_front() {
                return Some(m);
            }
            let closed = self.queue.closed.load(Ordering::Acquire);
            {
                let mut items = self.queue.items();
                std::mem::swap(&mut *items, &mut self.batch);
                self.queue.len.store(0, Ordering::Relaxed);
            }
            if !self.batch.is_empty() {
                self.idle = BATCH_EVERY;
                continue;
            }
            if closed {
                return None;
            }
            std::thread::park_timeout(self.idle);
            self.idle = (self.idle * 2).min(IDLE_EVERY);
        }
    }
}

/// The relay's side of a recording: queues chunks without waiting.
pub struct RecordTap {
    queue: Arc<Queue>,
    start: Instant,
    queued: Arc<AtomicUsize>,
    /// Woken by the writer when it took a chunk off the queue (each way's relay half).
    room: Arc<[AtomicWaker; 2]>,
    /// Since the queue is full: ends the wait after [`STALL_LIMIT`].
    stall: Mutex<Option<Pin<Box<tokio::time::Sleep>>>>,
    /// Bytes each way not queued since the last gap entry, and in all.
    pending_gap: [AtomicU64; 2],
    missed: [AtomicU64; 2],
    seen: [AtomicU64; 2],
}

impl RecordTap {
    fn has_room(&self) -> bool {
        // Two places: a gap entry may go first.
        self.queued.load(Ordering::Relaxed) < MAX_QUEUED_BYTES && self.queue.room() >= 2
    }

    fn now_us(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn miss(&self, d: usize, n: u64) {
        self.pending_gap[d].fetch_add(n, Ordering::Relaxed);
        self.missed[d].fetch_add(n, Ordering::Relaxed);
    }
}

impl Tap for RecordTap {
    fn poll_room(&self, dir: Direction, cx: &mut Context<'_>) -> Poll<()> {
        if self.has_room() {
            return Poll::Ready(());
        }
        let mut stall = self.stall.lock().unwrap_or_else(|p| p.into_inner());
        let sleep = stall.get_or_insert_with(|| Box::pin(tokio::time::sleep(STALL_LIMIT)));
        if sleep.as_mut().poll(cx).is_ready() {
            // The writer made no room in time: go on; what does not fit becomes a gap.
            return Poll::Ready(());
        }
        self.room[dir.index()].register(cx.waker());
        // The writer may have made room between the check and the registration.
        if self.has_room() {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    fn tap(&self, dir: Direction, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let d = dir.index();
        let n = bytes.len() as u64;
        self.seen[d].fetch_add(n, Ordering::Relaxed);
        let t_us = self.now_us();
        if !self.has_room() {
            self.miss(d, n);
            return;
        }
        // The queue has room: the next wait for it starts afresh.
        if let Ok(mut stall) = self.stall.try_lock() {
            *stall = None;
        }
        let gap = self.pending_gap[d].load(Ordering::Relaxed);
        if gap > 0 {
            // The gap goes first; if even it does not fit, this chunk is missed too.
            if self.queue.push(Msg::Gap { dir, t_us, missed: gap }, false).is_err() {
                self.miss(d, n);
                return;
            }
            self.pending_gap[d].fetch_sub(gap, Ordering::Relaxed);
        }
        let before = self.queued.fetch_add(bytes.len(), Ordering::Relaxed);
        match self.queue.push(Msg::Data { dir, t_us, bytes: bytes.to_vec() }, false) {
            Err(_) => {
                self.queued.fetch_sub(bytes.len(), Ordering::Relaxed);
                self.miss(d, n);
            }
            // Many bytes, or many small chunks (a burst after a quiet while): the writer
            // starts at once rather than at its next look.
            Ok(len) => {
                if (before < WAKE_BYTES && before + bytes.len() >= WAKE_BYTES) || len == WAKE_CHUNKS
                {
                    self.queue.wake_writer();
                }
            }
        }
    }
}

impl Drop for RecordTap {
    fn drop(&mut self) {
        // A recorder dropped without `finish` still lets its writer stop (the file is `cut`).
        self.queue.close();
    }
}

/// One connection's recording, from the connect to the target to its close.
pub struct Recorder {
    pub id: String,
    meta: Meta,
    tap: RecordTap,
    done: oneshot::Receiver<Result<(String, u64), String>>,
    failed: CancellationToken,
    path: PathBuf,
}

/// A recording on disk, with what its summary and audit record say.
pub struct Finished {
    pub summary: Summary,
    /// Why the file is not whole, if it is not.
    pub error: Option<String>,
}

impl Recorder {
    /// Creates the file and starts the writer thread for a connection of `session` to
    /// `target` at `address`.
    pub fn start(
        recordings: &Recordings,
        machine: &str,
        session: &str,
        users: &[String],
        target: &str,
        address: &str,
    ) -> io::Result<Self> {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(recordings.dir())?;
        let started_us = now_us();
        let (id, path, file) = create(recordings, session, started_us / 1000)?;
        let meta = Meta {
            id: id.clone(),
            machine: machine.to_owned(),
            session: session.to_owned(),
            users: users.to_vec(),
            target: target.to_owned(),
            address: address.to_owned(),
            started_us,
        };
        let queue = Arc::new(Queue::new());
        let rx = Receiver { queue: queue.clone(), batch: VecDeque::new(), idle: BATCH_EVERY };
        let queued = Arc::new(AtomicUsize::new(0));
        let room: Arc<[AtomicWaker; 2]> = Arc::new([AtomicWaker::new(), AtomicWaker::new()]);
        let (done_tx, done) = oneshot::channel();
        let failed = CancellationToken::new();
        let writer = {
            let (meta, failed) = (meta.clone(), failed.clone());
            let taken = Taken { queued: queued.clone(), room: room.clone() };
            move || {
                let r = write_all(rx, file, &meta, &taken, &failed);
                let _ = done_tx.send(r);
            }
        };
        match std::thread::Builder::new().name("recording".into()).spawn(writer) {
            Ok(handle) => {
                let _ = queue.writer.set(handle.thread().clone());
            }
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                recordings.lock().remove(&id);
                return Err(e);
            }
        }
        let tap = RecordTap {
            queue,
            start: Instant::now(),
            queued,
            room,
            stall: Mutex::new(None),
            pending_gap: Default::default(),
            missed: Default::default(),
            seen: Default::default(),
        };
        Ok(Self { id, meta, tap, done, failed, path })
    }

    pub fn tap(&self) -> &RecordTap {
        &self.tap
    }

    /// Fires when the file cannot be written: the tunnel must end.
    pub fn failed(&self) -> CancellationToken {
        self.failed.clone()
    }

    /// Ends the recording (the connection closed with `outcome`): the end entry, the file
    /// synced, its summary beside it. The caller records it in the audit chain.
    pub async fn finish(self, recordings: &Recordings, outcome: &str) -> Finished {
        let t_us = self.tap.now_us();
        // The end goes in whatever the queue holds; then the writer stops.
        let _ = self.tap.queue.push(Msg::End { t_us }, true);
        self.tap.queue.close();
        let Recorder { id, meta, tap, done, path, .. } = self;
        let written = match tokio::time::timeout(FINISH_TIMEOUT, done).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err("the recording's writer stopped".to_owned()),
            Err(_) => Err(format!("the recording was not on disk within {FINISH_TIMEOUT:?}")),
        };
        let (sha256, file_bytes, error) = match written {
            Ok((sha, len)) => (sha, len, None),
            Err(e) => {
                let (sha, len) = std::fs::File::open(&path)
                    .and_then(fernwart_recording::sha256_of)
                    .unwrap_or_default();
                (sha, len, Some(e))
            }
        };
        let load = |a: &[AtomicU64; 2], d: Direction| a[d.index()].load(Ordering::Relaxed);
        let summary = Summary {
            id,
            session: meta.session,
            target: meta.target,
            address: meta.address,
            users: meta.users,
            started_ms: meta.started_us / 1000,
            ended_ms: (meta.started_us + i64::try_from(t_us).unwrap_or(0)) / 1000,
            bytes_to_target: load(&tap.seen, Direction::ToTarget),
            bytes_from_target: load(&tap.seen, Direction::FromTarget),
            missed_bytes: load(&tap.missed, Direction::ToTarget)
                + load(&tap.missed, Direction::FromTarget),
            file_bytes,
            sha256,
            outcome: outcome.to_owned(),
        };
        let error = match (error, super::write_summary(recordings.dir(), &summary)) {
            (Some(e), _) => Some(e),
            (None, Err(e)) => Some(format!("cannot write the recording's summary: {e}")),
            (None, Ok(())) => None,
        };
        // Only now may retention delete it.
        recordings.lock().remove(&summary.id);
        Finished { summary, error }
    }
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A new file for the recording (a fresh id if the first is taken), marked as being written.
fn create(
    recordings: &Recordings,
    session: &str,
    now_ms: i64,
) -> io::Result<(String, PathBuf, File)> {
    let mut last = None;
    for _ in 0..8 {
        let id = recordings.new_id(session, now_ms);
        if !fernwart_recording::valid_id(&id) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("session name {session:?} cannot name a recording file"),
            ));
        }
        let path = recordings.dir().join(super::rec_name(&id));
        recordings.lock().insert(id.clone());
        match OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path) {
            Ok(f) => return Ok((id, path, f)),
            Err(e) => {
                recordings.lock().remove(&id);
                if e.kind() != io::ErrorKind::AlreadyExists {
                    return Err(e);
                }
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free recording name")))
}

/// The writer's side of the queue: what it took off makes room for the relay.
struct Taken {
    queued: Arc<AtomicUsize>,
    room: Arc<[AtomicWaker; 2]>,
}

impl Taken {
    fn took(&self, bytes: usize) {
        self.queued.fetch_sub(bytes, Ordering::Relaxed);
        for w in self.room.iter() {
            w.wake();
        }
    }
}

/// The writer thread: entries in, compressed file out; the file's SHA-256 and length.
fn write_all(
    mut rx: Receiver,
    file: File,
    meta: &Meta,
    queued: &Taken,
    failed: &CancellationToken,
) -> Result<(String, u64), String> {
    let out = Hashing::new(BufWriter::with_capacity(64 * 1024, file));
    // The header is on disk at once: a listing shows what is being recorded.
    let mut w = match Writer::new(out, meta, LEVEL).and_then(|mut w| w.flush().map(|()| w)) {
        Ok(w) => w,
        Err(e) => return Err(fail(&mut rx, queued, failed, &e)),
    };
    let mut flushed = Instant::now();
    let mut end = None;
    while let Some(msg) = rx.recv() {
        let r = match msg {
            Msg::Data { dir, t_us, bytes } => {
                let r = w.data(dir, t_us, &bytes);
                queued.took(bytes.len());
                r
            }
            Msg::Gap { dir, t_us, missed } => w.gap(dir, t_us, missed),
            Msg::End { t_us } => {
                end = Some(t_us);
                break;
            }
        };
        let r = r.and_then(|()| {
            if flushed.elapsed() >= FLUSH_EVERY {
                flushed = Instant::now();
                w.flush()
            } else {
                Ok(())
            }
        });
        if let Err(e) = r {
            return Err(fail(&mut rx, queued, failed, &e));
        }
    }
    let Some(t_us) = end else {
        return Err("the recording ended without its end".into());
    };
    let finished = w.finish(t_us).and_then(|out| {
        let (sha, len, buf) = out.finish();
        let file = buf.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok((sha, len))
    });
    finished.map_err(|e| format!("cannot write the recording: {e}"))
}

/// The file failed: tell the tunnel, then take what still comes without writing it (so the
/// relay never waits) until the end.
fn fail(rx: &mut Receiver, queued: &Taken, failed: &CancellationToken, e: &io::Error) -> String {
    failed.cancel();
    while let Some(msg) = rx.recv() {
        match msg {
            Msg::Data { bytes, .. } => queued.took(bytes.len()),
            Msg::End { .. } => break,
            Msg::Gap { .. } => {}
        }
    }
    format!("cannot write the recording: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recording::Settings;
    use fernwart_recording::{Entry, Reader, State};

    fn read(path: &std::path::Path) -> (Meta, Vec<Entry>, State) {
        let mut r = Reader::new(std::fs::File::open(path).unwrap()).unwrap();
        let mut entries = Vec::new();
        while let Some(e) = r.next_entry() {
            entries.push(e);
        }
        (r.meta().clone(), entries, r.state().clone())
    }

    #[tokio::test]
    async fn what_the_tap_sees_is_in_the_file_with_its_hash() {
        let data = tempfile::tempdir().unwrap();
        let recs = Recordings::new(data.path(), Settings::default());
        let users = vec!["tech1".to_owned()];
        let r = Recorder::start(&recs, "m1", "s1", &users, "plc", "127.0.0.1:502").unwrap();
        assert_eq!(recs.list("m1", None).unwrap()[0].state, "recording");

        r.tap().tap(Direction::ToTarget, b"request");
        r.tap().tap(Direction::FromTarget, b"answer");
        let id = r.id.clone();
        let done = r.finish(&recs, "closed").await;

        assert_eq!(done.error, None);
        let s = &done.summary;
        assert_eq!((s.bytes_to_target, s.bytes_from_target, s.missed_bytes), (7, 6, 0));
        let path = recs.path_of(&id).unwrap();
        let (sha, len) =
            fernwart_recording::sha256_of(std::fs::File::open(&path).unwrap()).unwrap();
        assert_eq!((sha.as_str(), len), (s.sha256.as_str(), s.file_bytes));
        let (meta, entries, state) = read(&path);
        assert_eq!(state, State::Complete);
        assert_eq!((meta.session.as_str(), meta.target.as_str()), ("s1", "plc"));
        let data: Vec<(Direction, &[u8])> = entries
            .iter()
            .filter_map(|e| match e {
                Entry::Data { dir, bytes, .. } => Some((*dir, bytes.as_slice())),
                _ => None,
            })
            .collect();
        assert_eq!(
            data,
            [(Direction::ToTarget, &b"request"[..]), (Direction::FromTarget, &b"answer"[..])]
        );
        let listed = recs.list("m1", Some("s1")).unwrap();
        assert_eq!(listed[0].state, "complete");
        assert_eq!(listed[0].sha256.as_deref(), Some(s.sha256.as_str()));
    }

    #[tokio::test]
    async fn a_full_queue_holds_the_relay_back_a_while_then_leaves_a_gap() {
        let data = tempfile::tempdir().unwrap();
        let recs = Recordings::new(data.path(), Settings::default());
        let r = Recorder::start(&recs, "m1", "s1", &[], "plc", "127.0.0.1:502").unwrap();
        // As if the writer were far behind: the queue is full. The relay waits for room...
        r.tap.queued.fetch_add(MAX_QUEUED_BYTES, Ordering::Relaxed);
        let t0 = tokio::time::Instant::now();
        std::future::poll_fn(|cx| r.tap().poll_room(Direction::FromTarget, cx)).await;
        // ...at most the stall limit, then goes on without recording what does not fit.
        assert!(t0.elapsed() >= STALL_LIMIT, "{:?}", t0.elapsed());
        r.tap().tap(Direction::FromTarget, &[1u8; 1000]);
        r.tap.queued.fetch_sub(MAX_QUEUED_BYTES, Ordering::Relaxed);
        r.tap().tap(Direction::FromTarget, b"after");
        let id = r.id.clone();

        let done = r.finish(&recs, "closed").await;

        assert_eq!(done.summary.missed_bytes, 1000);
        assert_eq!(done.summary.bytes_from_target, 1005);
        let (_, entries, _) = read(&recs.path_of(&id).unwrap());
        assert!(matches!(
            entries[..],
            [
                Entry::Gap { dir: Direction::FromTarget, missed: 1000, .. },
                Entry::Data { .. },
                Entry::End { .. }
            ]
        ));
    }

    #[tokio::test]
    async fn room_the_writer_makes_wakes_the_relay() {
        let data = tempfile::tempdir().unwrap();
        let recs = Recordings::new(data.path(), Settings::default());
        let r = Recorder::start(&recs, "m1", "s1", &[], "plc", "127.0.0.1:502").unwrap();
        r.tap.queued.fetch_add(MAX_QUEUED_BYTES, Ordering::Relaxed);
        let writer = Taken { queued: r.tap.queued.clone(), room: r.tap.room.clone() };
        let t0 = Instant::now();
        let freer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            writer.took(MAX_QUEUED_BYTES);
        });

        std::future::poll_fn(|cx| r.tap().poll_room(Direction::ToTarget, cx)).await;

        assert!(t0.elapsed() < STALL_LIMIT / 2, "{:?}", t0.elapsed());
        freer.join().unwrap();
        let done = r.finish(&recs, "closed").await;
        assert_eq!(done.error, None);
    }

    #[test]
    fn no_tap_does_nothing() {
        NoTap.tap(Direction::ToTarget, b"x");
    }
}
