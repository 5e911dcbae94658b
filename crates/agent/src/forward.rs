//! One tunnel at the agent: check, connect to the target, relay until something says stop.
//! Recorded in the agent's audit trail: `tunnel.refused` with the reason, `tunnel.open`, and
//! `tunnel.close` with the bytes each way, the duration and what ended it.

use std::{
    io,
    pin::Pin,
    sync::atomic::{AtomicU64, Ordering},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use fernwart_proto::{OpenReply, OpenRequest, HANDSHAKE_TIMEOUT};
use fernwart_transport::{
    frame_io::{read_frame_within, write_last_frame},
    pipe, write_frame, MuxStream,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

use crate::{policy, Agent};

const TARGET_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn serve(
    agent: Agent,
    mut stream: MuxStream,
    link_closed: tokio_util::sync::CancellationToken,
) {
    let req: OpenRequest = match read_frame_within(&mut stream, HANDSHAKE_TIMEOUT).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e, "bad open request");
            return;
        }
    };
    let now = crate::now();
    let checked = {
        let grants = agent.grants.lock().unwrap_or_else(|p| p.into_inner());
        policy::check(&agent.cfg, &grants, *agent.switch.borrow(), &req.session, &req.target, now)
            .map(|()| grants.get(&req.session).map(|g| g.until).unwrap_or(now))
    };
    let until = match checked {
        Ok(u) => u,
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
    let tcp =
        match tokio::time::timeout(TARGET_CONNECT_TIMEOUT, TcpStream::connect(&target.address))
            .await
        {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                let why = format!("cannot reach target {} ({}): {e}", target.name, target.address);
                refuse(&agent, stream, &req, why).await;
                return;
            }
            Err(_) => {
                let why = format!("target {} ({}) did not answer", target.name, target.address);
                refuse(&agent, stream, &req, why).await;
                return;
            }
        };
    let _ = tcp.set_nodelay(true);
    if write_frame(&mut stream, &OpenReply::ok()).await.is_err() {
        return;
    }
    let opened = Instant::now();
    agent.audit(
        "tunnel.open",
        &req.session,
        serde_json::json!({"session": req.session, "target": target.name, "address": target.address}),
    );
    let switch_off = agent.switch_off_token();
    let revoked = agent.grant_token(&req.session);
    let left = Duration::from_secs(u64::try_from(until - crate::now()).unwrap_or(0));
    let (mut m_rd, mut m_wr) = stream.into_split();
    let (t_rd, t_wr) = tcp.into_split();
    // Counted as they pass, so that a tunnel cut in the middle still reports its bytes.
    let to_target = AtomicU64::new(0);
    let from_target = AtomicU64::new(0);
    let mut t_wr = Counted { inner: t_wr, bytes: &to_target };
    let t_rd = Counted { inner: t_rd, bytes: &from_target };
    let relay = async {
        tokio::try_join!(
            pipe::mux_to_socket(&mut m_rd, &mut t_wr),
            pipe::socket_to_mux(t_rd, &mut m_wr)
        )
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
    };
    agent.audit(
        "tunnel.close",
        &req.session,
        serde_json::json!({
            "session": req.session,
            "target": target.name,
            "outcome": outcome,
            "bytes_to_target": to_target.load(Ordering::Relaxed),
            "bytes_from_target": from_target.load(Ordering::Relaxed),
            "duration_ms": u64::try_from(opened.elapsed().as_millis()).unwrap_or(u64::MAX),
        }),
    );
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

/// A socket half that counts the bytes read from or written to it.
struct Counted<'a, T> {
    inner: T,
    bytes: &'a AtomicU64,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            self.bytes.fetch_add((buf.filled().len() - before) as u64, Ordering::Relaxed);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            self.bytes.fetch_add(n as u64, Ordering::Relaxed);
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
        let mut rd = Counted { inner: rd, bytes: &read };
        let mut wr = Counted { inner: wr, bytes: &written };

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
