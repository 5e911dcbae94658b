//! A yamux connection driven by its own task.
//!
//! yamux makes progress only while its connection is polled; the driver task owns it, hands
//! inbound streams to a bounded channel and opens outbound streams on request. Streams are
//! tokio byte streams with yamux's per-stream flow control underneath.

use std::{future::Future, pin::pin, task::Poll};

use futures::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio_util::{
    compat::{Compat, FuturesAsyncReadCompatExt},
    sync::CancellationToken,
};
use yamux::{Config, Connection, Mode};

/// One multiplexed stream, as a tokio `AsyncRead + AsyncWrite`.
pub type MuxStream = Compat<yamux::Stream>;

/// Streams a link may carry at once.
pub const MAX_STREAMS: usize = 512;
/// Receive window per stream: how many bytes a peer may send ahead of our reads. It bounds
/// each stream's buffer; yamux's 256 KiB default caps loopback throughput far below TLS speed.
pub const STREAM_WINDOW: u32 = 1024 * 1024;
/// Inbound streams waiting for a handler; more are refused (closed) at once.
const INBOUND_QUEUE: usize = 64;

type OpenReply = oneshot::Sender<Result<MuxStream, yamux::ConnectionError>>;

/// Handle to a running yamux connection. Clones share the connection.
#[derive(Clone)]
pub struct Mux {
    open: mpsc::Sender<OpenReply>,
    closed: CancellationToken,
    shutdown: CancellationToken,
}

#[derive(Debug, thiserror::Error)]
pub enum MuxError {
    #[error("the link is closed")]
    Closed,
    #[error("cannot open a stream on the link")]
    Open(#[source] yamux::ConnectionError),
}

impl Mux {
    /// Starts driving `io`. Returns the handle and the receiver of streams the peer opens.
    pub fn start<T>(io: T, mode: Mode) -> (Mux, mpsc::Receiver<MuxStream>)
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut cfg = Config::default();
        cfg.set_max_num_streams(MAX_STREAMS);
        cfg.set_receive_window(STREAM_WINDOW);
        cfg.set_max_buffer_size(STREAM_WINDOW as usize);
        cfg.set_window_update_mode(yamux::WindowUpdateMode::OnRead);
        cfg.set_split_send_size(64 * 1024);
        let conn = Connection::new(io, cfg, mode);
        let (open_tx, open_rx) = mpsc::channel(16);
        let (in_tx, in_rx) = mpsc::channel(INBOUND_QUEUE);
        let closed = CancellationToken::new();
        let shutdown = CancellationToken::new();
        let mux = Mux { open: open_tx, closed: closed.clone(), shutdown: shutdown.clone() };
        tokio::spawn(async move {
            let result = drive(conn, open_rx, in_tx, shutdown).await;
            if let Err(e) = result {
                tracing::debug!(error = %e, "link ended");
            }
            closed.cancel();
        });
        (mux, in_rx)
    }

    /// Opens a new stream to the peer.
    pub async fn open(&self) -> Result<MuxStream, MuxError> {
        let (tx, rx) = oneshot::channel();
        self.open.send(tx).await.map_err(|_| MuxError::Closed)?;
        rx.await.map_err(|_| MuxError::Closed)?.map_err(MuxError::Open)
    }

    /// Resolves once the link is gone.
    pub fn closed(&self) -> impl Future<Output = ()> + Send + 'static {
        let token = self.closed.clone();
        async move { token.cancelled().await }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Closes the link (a yamux GoAway, then the WebSocket close).
    pub fn close(&self) {
        self.shutdown.cancel();
    }
}

async fn drive<T>(
    mut conn: Connection<T>,
    mut open_rx: mpsc::Receiver<OpenReply>,
    in_tx: mpsc::Sender<MuxStream>,
    shutdown: CancellationToken,
) -> Result<(), yamux::ConnectionError>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut pending: Option<OpenReply> = None;
    let mut openers_gone = false;
    let mut stop = pin!(shutdown.cancelled_owned());
    let outcome = std::future::poll_fn(|cx| loop {
        if stop.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ok(true));
        }
        let mut progressed = false;
        if pending.is_none() && !openers_gone {
            match open_rx.poll_recv(cx) {
                Poll::Ready(Some(tx)) => pending = Some(tx),
                Poll::Ready(None) => openers_gone = true,
                Poll::Pending => {}
            }
        }
        if pending.is_some() {
            if let Poll::Ready(result) = conn.poll_new_outbound(cx) {
                if let Some(tx) = pending.take() {
                    let _ = tx.send(result.map(FuturesAsyncReadCompatExt::compat));
                }
                progressed = true;
            }
        }
        match conn.poll_next_inbound(cx) {
            Poll::Ready(Some(Ok(stream))) => {
                // A full queue means the handler is overwhelmed: the stream is dropped (reset).
                let _ = in_tx.try_send(stream.compat());
                progressed = true;
            }
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
            Poll::Ready(None) => return Poll::Ready(Ok(false)),
            Poll::Pending => {}
        }
        if !progressed {
            return Poll::Pending;
        }
    })
    .await?;
    if outcome {
        std::future::poll_fn(|cx| conn.poll_close(cx)).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_util::compat::TokioAsyncReadCompatExt;

    #[tokio::test]
    async fn streams_carry_bytes_both_ways_with_half_close() {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let (client, _client_in) = Mux::start(a.compat(), Mode::Client);
        let (_server, mut server_in) = Mux::start(b.compat(), Mode::Server);

        let echo = tokio::spawn(async move {
            let mut s = server_in.recv().await.unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            s.write_all(&got).await.unwrap();
            s.shutdown().await.unwrap();
        });
        let mut s = client.open().await.unwrap();
        let payload = vec![7u8; 1_000_000];
        s.write_all(&payload).await.unwrap();
        s.shutdown().await.unwrap();
        let mut back = Vec::new();
        s.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, payload);
        echo.await.unwrap();
    }

    #[tokio::test]
    async fn close_ends_the_peer() {
        let (a, b) = tokio::io::duplex(1024);
        let (client, _) = Mux::start(a.compat(), Mode::Client);
        let (server, _server_in) = Mux::start(b.compat(), Mode::Server);
        client.close();
        tokio::time::timeout(std::time::Duration::from_secs(5), server.closed()).await.unwrap();
        assert!(client.open().await.is_err());
    }
}
