//! One tunnel at the agent: check, connect to the target, relay until something says stop.
//! Recorded in the agent's audit trail: `tunnel.refused` with the reason, `tunnel.open`, and
//! `tunnel.close` with the bytes each way, the duration and what ended it. A session with
//! recording on also records the connection's bytes ([`crate::recording`]); a stream that
//! asks about recordings instead of a target goes to [`crate::recording::serve`].

use std::{
    io,
    pin::Pin,
    sync::atomic::{AtomicU64, Ordering},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::BytesMut;
use fernwart_proto::{
    e2e::{self, FirstMessage, Responder, Transport},
    OpenReply, OpenRequest, StreamRequest, HANDSHAKE_TIMEOUT,
};
use fernwart_recording::Direction;
use fernwart_transport::{
    error_chain,
    frame_io::{read_frame_within, write_last_frame},
    sealed, MuxReader, MuxStream, MuxWriter,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::{
        tcp::{OwnedReadHalf, OwnedWriteHalf},
        TcpStream,
    },
};

use crate::{
    policy,
    recording::{NoTap, Recorder, Tap},
    Agent,
};

const TARGET_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn serve(
    agent: Agent,
    mut stream: MuxStream,
    link_closed: tokio_util::sync::CancellationToken,
) {
    let req: OpenRequest = match read_frame_within(&mut stream, HANDSHAKE_TIMEOUT).await {
        Ok(StreamRequest::Open(r)) => r,
        Ok(StreamRequest::Recording(q)) => {
            crate::recording::serve::serve(agent, stream, q).await;
            return;
        }
        Err(e) => {
            tracing::debug!(error = %e, "bad open request");
            return;
        }
    };
    let (mut until, mut record, mut users, tech_keys) = match check(&agent, &req) {
        Ok(u) => u,
        Err(reason) => {
            refuse(&agent, stream, &req, reason).await;
            return;
        }
    };
    // Only end-to-end encrypted tunnels, only from a technician key the grant names: checked
    // before the target is touched.
    let (responder, first) = match handshake(&agent, &mut stream, &req, &tech_keys).await {
        Ok(h) => h,
        Err(reason) => {
            refuse(&agent, stream, &req, reason).await;
            return;
        }
    };
    let Some(target) = agent.cfg.target(&req.target).cloned() else {
        // policy::check accepted it, so the target is in the allow-list.
        refuse(&agent, stream, &req, format!("target {:?} is not configured", req.target)).await;
        return;
    };
    let mut answer = match fernwart_proto::encode(&OpenReply::ok()) {
        Ok(frame) => BytesMut::from(&frame[..]),
        Err(_) => return,
    };
    let (transport, connected) = if req.hold {
        // The server checks while this side computes; the target is touched only once it
        // said yes, and the grant still holds then.
        let transport = responder.reply(&mut answer);
        match read_frame_within::<OpenReply, _>(&mut stream, HANDSHAKE_TIMEOUT).await {
            Ok(r) if r.ok => {}
            Ok(r) => {
                let reason = r.error.unwrap_or_default();
                tracing::debug!(session = %req.session, target = %req.target, %reason, "the server refused a tunnel");
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "no decision from the server on a tunnel");
                return;
            }
        }
        // The grant as it is now decides (it may have been replaced meanwhile): its end, its
        // recording, its technicians, and it must still name the handshake's key.
        match check(&agent, &req) {
            Ok((u, r, us, keys)) if e2e::grant_names(&keys, &first.initiator) => {
                (until, record, users) = (u, r, us);
            }
            Ok(_) => {
                let why = format!(
                    "the technician's end-to-end key {} is not one the session's grant names",
                    first.initiator
                );
                refuse(&agent, stream, &req, why).await;
                return;
            }
            Err(reason) => {
                refuse(&agent, stream, &req, reason).await;
                return;
            }
        }
        (transport, connect(&target).await)
    } else {
        // The connection to the target starts first, and the second Noise message is
        // computed while the target answers (this runtime has one thread).
        let (connected, transport) =
            tokio::join!(connect(&target), async { responder.reply(&mut answer) });
        (transport, connected)
    };
    let tcp = match connected {
        Ok(t) => t,
        Err(why) => {
            refuse(&agent, stream, &req, why).await;
            return;
        }
    };
    let _ = tcp.set_nodelay(true);
    let transport = match transport {
        Ok(t) => t,
        Err(e) => {
            let why = format!("end-to-end handshake failed: {}", error_chain(&e));
            refuse(&agent, stream, &req, why).await;
            return;
        }
    };
    // Decided once per tunnel: without recording the relay below is the same code as before.
    let recorder = if record || agent.cfg.recording.always {
        let r = Recorder::start(
            &agent.recordings,
            &agent.identity.machine,
            &req.session,
            &users,
            &target.name,
            &target.address,
        );
        match r {
            Ok(r) => Some(r),
            Err(e) => {
                // The session is to be recorded: no recording, no tunnel.
                let why = format!("the session is recorded and its recording cannot start: {e}");
                refuse(&agent, stream, &req, why).await;
                return;
            }
        }
    } else {
        None
    };
    // The answer and the second Noise message leave together.
    if stream.write_all(&answer).await.is_err() {
        if let Some(r) = recorder {
            finish_recording(&agent, &req, r, "the server went away before the tunnel opened")
                .await;
        }
        return;
    }
    // This runtime has one thread: the link writes the answer out now, before the audit
    // record, its log line and the target's first bytes (the technician's side needs the
    // answer's keys before it can read anything the target says).
    tokio::task::yield_now().await;
    let opened = Instant::now();
    let recording_id = recorder.as_ref().map(|r| r.id.clone());
    let mut details = serde_json::json!({"session": req.session, "target": target.name, "address": target.address});
    if let Some(id) = &recording_id {
        details["recording"] = serde_json::json!(id);
    }
    agent.audit("tunnel.open", &req.session, details);
    let switch_off = agent.switch_off_token();
    let revoked = agent.grant_token(&req.session);
    let left = Duration::from_secs(u64::try_from(until - crate::now()).unwrap_or(0));
    let (mut m_rd, mut m_wr) = stream.into_split();
    let (t_rd, t_wr) = tcp.into_split();
    // Counted as they pass, so that a tunnel cut in the middle still reports its bytes.
    let to_target = AtomicU64::new(0);
    let from_target = AtomicU64::new(0);
    let recording_failed = recorder.as_ref().map(|r| r.failed()).unwrap_or_default();
    let relay = async {
        let counters = (&to_target, &from_target);
        let t = (t_rd, t_wr);
        let early = &first.early[..];
        match &recorder {
            Some(r) => relay(&mut m_rd, &mut m_wr, t, transport, early, counters, r.tap()).await,
            None => relay(&mut m_rd, &mut m_wr, t, transport, early, counters, &NoTap).await,
        }
    };
    let outcome = tokio::select! {
        r = relay => match r {
            Ok(_) => "closed".to_owned(),
            Err(e) => format!("failed: {e}"),
        },
        _ = switch_off.cancelled() => "key switch off".to_owned(),
        _ = revoked.cancelled() => "session revoked".to_owned(),
        _ = link_closed.cancelled() => "link to server lost".to_owned(),
        _ = tokio::time::sleep(left) => "time window closed".to_owned(),
        _ = recording_failed.cancelled() => "the session's recording failed".to_owned(),
    };
    let mut details = serde_json::json!({
        "session": req.session,
        "target": target.name,
        "outcome": outcome,
        "bytes_to_target": to_target.load(Ordering::Relaxed),
        "bytes_from_target": from_target.load(Ordering::Relaxed),
        "duration_ms": u64::try_from(opened.elapsed().as_millis()).unwrap_or(u64::MAX),
    });
    if let Some(id) = &recording_id {
        details["recording"] = serde_json::json!(id);
    }
    agent.audit("tunnel.close", &req.session, details);
    if let Some(r) = recorder {
        finish_recording(&agent, &req, r, &outcome).await;
    }
}

/// The agent's own checks of a tunnel (key switch, grant, window, allow-list): the grant's end,
/// whether it is recorded, its technicians and their end-to-end keys; or why not.
fn check(
    agent: &Agent,
    req: &OpenRequest,
) -> Result<(i64, bool, Vec<String>, Vec<String>), String> {
    let now = crate::now();
    let grants = agent.grants.lock().unwrap_or_else(|p| p.into_inner());
    policy::check(&agent.cfg, &grants, *agent.switch.borrow(), &req.session, &req.target, now)?;
    Ok(match grants.get(&req.session) {
        Some(g) => (g.until, g.record, g.users.clone(), g.tech_keys.clone()),
        None => (now, false, Vec::new(), Vec::new()),
    })
}

/// Connects to an allow-listed target, or says why not.
async fn connect(target: &crate::config::Target) -> Result<TcpStream, String> {
    match tokio::time::timeout(TARGET_CONNECT_TIMEOUT, TcpStream::connect(&target.address)).await {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(format!("cannot reach target {} ({}): {e}", target.name, target.address)),
        Err(_) => Err(format!("target {} ({}) did not answer", target.name, target.address)),
    }
}

/// Both directions of a tunnel, decrypted towards the target and encrypted from it, each
/// chunk counted and handed to `tap` (monomorphised: with [`NoTap`] this is the plain relay).
/// `early` (the technician's first bytes, from the handshake) reaches the target first.
async fn relay<P: Tap>(
    m_rd: &mut MuxReader,
    m_wr: &mut MuxWriter,
    (t_rd, t_wr): (OwnedReadHalf, OwnedWriteHalf),
    transport: Transport,
    early: &[u8],
    (to_target, from_target): (&AtomicU64, &AtomicU64),
    tap: &P,
) -> io::Result<(u64, u64)> {
    let Transport { mut sealer, mut opener } = transport;
    let mut t_wr = Counted { inner: t_wr, bytes: to_target, tap, dir: Direction::ToTarget };
    let t_rd = Counted { inner: t_rd, bytes: from_target, tap, dir: Direction::FromTarget };
    let down = async {
        t_wr.write_all(early).await?;
        let n = sealed::mux_to_socket(m_rd, &mut opener, &mut t_wr).await?;
        Ok::<_, io::Error>(n + early.len() as u64)
    };
    tokio::try_join!(down, sealed::socket_to_mux(t_rd, m_wr, &mut sealer, &[]))
}

/// The agent's side of the tunnel's end-to-end handshake: the first Noise message follows the
/// open request; it must come from a technician key the session's grant names. `Err` says
/// why the tunnel is refused.
async fn handshake(
    agent: &Agent,
    stream: &mut MuxStream,
    req: &OpenRequest,
    tech_keys: &[String],
) -> Result<(Responder, FirstMessage), String> {
    if req.e2e != Some(e2e::VERSION) {
        return Err(match req.e2e {
            None => "this machine takes only end-to-end encrypted tunnels: update fernwart".into(),
            Some(v) => format!(
                "end-to-end encryption version {v} is not supported here (this agent: {})",
                e2e::VERSION
            ),
        });
    }
    if agent.e2e.public().is_none() {
        return Err("this machine has no end-to-end key (see the agent's log)".into());
    }
    let msg = sealed::read_record(stream, HANDSHAKE_TIMEOUT)
        .await
        .map_err(|e| format!("no end-to-end handshake: {e}"))?;
    // Only a key the grant names gets as far as the replay memory.
    agent.e2e.accept(&req.session, &req.target, &msg, tech_keys)
}

/// Ends a tunnel's recording and puts it in the audit chain (`recording.saved`, or
/// `recording.failed` with what is on disk), then applies the retention rules.
async fn finish_recording(agent: &Agent, req: &OpenRequest, r: Recorder, outcome: &str) {
    let done = r.finish(&agent.recordings, outcome).await;
    let s = &done.summary;
    let mut details = serde_json::json!({
        "session": s.session,
        "target": s.target,
        "id": s.id,
        "bytes_to_target": s.bytes_to_target,
        "bytes_from_target": s.bytes_from_target,
        "missed_bytes": s.missed_bytes,
        "file_bytes": s.file_bytes,
        "sha256": s.sha256,
    });
    let action = match &done.error {
        None => "recording.saved",
        Some(e) => {
            details["error"] = serde_json::json!(e);
            "recording.failed"
        }
    };
    agent.audit(action, &req.session, details);
    agent.prune_recordings();
}

/// Records the refusal and its reason, then tells the server.
async fn refuse(agent: &Agent, stream: MuxStream, req: &OpenRequest, reason: String) {
    agent.audit(
        "tunnel.refused",
        &req.session,
        serde_json::json!({"session": req.session, "target": req.target, "reason": reason}),
    );
    write_last_frame(stream, &OpenReply::refused(reason)).await;
}

/// A socket half that counts the bytes read from or written to it, and shows them to `tap`.
struct Counted<'a, T, P> {
    inner: T,
    bytes: &'a AtomicU64,
    tap: &'a P,
    dir: Direction,
}

impl<T: AsyncRead + Unpin, P: Tap> AsyncRead for Counted<'_, T, P> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // A recorder that is behind holds the relay back (for a while: see `Tap`).
        std::task::ready!(self.tap.poll_room(self.dir, cx));
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            let got = &buf.filled()[before..];
            self.bytes.fetch_add(got.len() as u64, Ordering::Relaxed);
            self.tap.tap(self.dir, got);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin, P: Tap> AsyncWrite for Counted<'_, T, P> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.tap.poll_room(self.dir, cx));
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.bytes.fetch_add(n as u64, Ordering::Relaxed);
            self.tap.tap(self.dir, &buf[..n]);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.tap.poll_room(self.dir, cx));
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            self.bytes.fetch_add(n as u64, Ordering::Relaxed);
            // What was written is the first `n` bytes across the slices.
            let mut left = n;
            for b in bufs {
                if left == 0 {
                    break;
                }
                let take = left.min(b.len());
                self.tap.tap(self.dir, &b[..take]);
                left -= take;
            }
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn counted_halves_count_what_passed_even_when_dropped_midway() {
        let (a, mut b) = tokio::io::duplex(64);
        let (rd, wr) = tokio::io::split(a);
        let (read, written) = (AtomicU64::new(0), AtomicU64::new(0));
        let mut rd = Counted { inner: rd, bytes: &read, tap: &NoTap, dir: Direction::FromTarget };
        let mut wr = Counted { inner: wr, bytes: &written, tap: &NoTap, dir: Direction::ToTarget };

        wr.write_all(b"hello").await.unwrap();
        b.write_all(b"abc").await.unwrap();
        let mut buf = [0u8; 3];
        rd.read_exact(&mut buf).await.unwrap();
        // A read cut off before anything came counts nothing.
        let pending = tokio::time::timeout(Duration::from_millis(20), rd.read(&mut buf)).await;

        assert!(pending.is_err());
        assert_eq!((written.load(Ordering::Relaxed), read.load(Ordering::Relaxed)), (5, 3));
    }
}
