//! Streams over one link, multiplexed with HTTP/2 (the `h2` crate).
//!
//! HTTP/2 gives every stream its own flow-control window and the link a shared one, so a slow
//! reader holds back only its own sender and nothing is buffered without bound. Only the
//! HTTP/2 client side of a link opens streams: on a technician link that is `fernwart
//! connect`, on an agent link it is the server (it opens the control stream and one stream per
//! tunnel), so there the agent, although it dialled, is the HTTP/2 server.
//!
//! A stream is one [`MuxStream`]: a tokio byte stream, or split into a [`MuxReader`] and a
//! [`MuxWriter`] that also move [`Bytes`] without copying them (the relay's fast path).

use std::{
    future::Future,
    io,
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::{Buf, Bytes};
use h2::{client::ResponseFuture, Reason, RecvStream, SendStream};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::mpsc,
};
use tokio_util::sync::CancellationToken;

/// Streams a link may carry at once.
pub const MAX_STREAMS: u32 = 512;
/// Receive window per stream: how many bytes a peer may send ahead of our reads. Each end
/// holds up to this much per tunnel and direction while its socket is slower than the link,
/// so it sets the agent's memory under bulk traffic (1 MiB: 18.0-18.8 MiB peak, 512 KiB:
/// 16.9-17.3 MiB, bar 20 MiB; docs/bench.md). One stream then carries at most the window
/// per round trip: 17 MB/s over a 30 ms WAN path, several times what maintenance tools use.
pub const STREAM_WINDOW: u32 = 512 * 1024;
/// Receive window of the whole link, over all its streams.
pub const LINK_WINDOW: u32 = 8 * 1024 * 1024;
/// The largest HTTP/2 frame a peer may send us.
pub const MAX_FRAME: u32 = 256 * 1024;
/// Header block limit: our streams carry no headers worth the name.
const MAX_HEADER_LIST: u32 = 8 * 1024;
/// The most bytes one write hands to HTTP/2 at once.
const WRITE_CHUNK: usize = 256 * 1024;
/// Inbound streams waiting for a handler; more are refused (reset) at once.
const INBOUND_QUEUE: usize = 64;

/// Which HTTP/2 side this end of a link plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// HTTP/2 client: opens streams.
    Client,
    /// HTTP/2 server: accepts streams.
    Server,
}

/// Handle to a running link. Clones share it.
#[derive(Clone)]
pub struct Mux {
    opener: Option<h2::client::SendRequest<Bytes>>,
    closed: CancellationToken,
    shutdown: CancellationToken,
}

#[derive(Debug, thiserror::Error)]
pub enum MuxError {
    #[error("the link is closed")]
    Closed,
    #[error("link handshake failed")]
    Handshake(#[source] h2::Error),
    #[error("link handshake timed out")]
    HandshakeTimeout,
    #[error("cannot open a stream on the link")]
    Open(#[source] h2::Error),
    #[error("this end of the link does not open streams")]
    NotOpener,
}

impl Mux {
    /// Runs HTTP/2 over `io` as `mode`. Returns the handle and the receiver of streams the peer
    /// opens (always empty for [`Mode::Client`]).
    pub async fn start<T>(io: T, mode: Mode) -> Result<(Mux, mpsc::Receiver<MuxStream>), MuxError>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let closed = CancellationToken::new();
        let shutdown = CancellationToken::new();
        let (in_tx, in_rx) = mpsc::channel(INBOUND_QUEUE);
        let timeout = fernwart_proto::HANDSHAKE_TIMEOUT;
        let opener = match mode {
            Mode::Client => {
                let handshake = h2::client::Builder::new()
                    .initial_window_size(STREAM_WINDOW)
                    .initial_connection_window_size(LINK_WINDOW)
                    .max_frame_size(MAX_FRAME)
                    .max_header_list_size(MAX_HEADER_LIST)
                    .enable_push(false)
                    .handshake::<_, Bytes>(io);
                let (send, conn) = tokio::time::timeout(timeout, handshake)
                    .await
                    .map_err(|_| MuxError::HandshakeTimeout)?
                    .map_err(MuxError::Handshake)?;
                let (closed, shutdown) = (closed.clone(), shutdown.clone());
                tokio::spawn(async move {
                    let mut conn = conn;
                    tokio::select! {
                        r = &mut conn => if let Err(e) = r { tracing::debug!(error = %e, "link ended") },
                        _ = shutdown.cancelled() => {
                            // What is queued (a last "closed because ..." frame) goes out first.
                            poll_once(|cx| Pin::new(&mut conn).poll(cx).map(drop)).await;
                        }
                    }
                    closed.cancel();
                });
                Some(send)
            }
            Mode::Server => {
                let handshake = h2::server::Builder::new()
                    .initial_window_size(STREAM_WINDOW)
                    .initial_connection_window_size(LINK_WINDOW)
                    .max_frame_size(MAX_FRAME)
                    .max_header_list_size(MAX_HEADER_LIST)
                    .max_concurrent_streams(MAX_STREAMS)
                    .handshake::<_, Bytes>(io);
                let conn = tokio::time::timeout(timeout, handshake)
                    .await
                    .map_err(|_| MuxError::HandshakeTimeout)?
                    .map_err(MuxError::Handshake)?;
                tokio::spawn(accept_loop(conn, in_tx, shutdown.clone(), closed.clone()));
                None
            }
        };
        Ok((Mux { opener, closed, shutdown }, in_rx))
    }

    /// Opens a new stream to the peer (HTTP/2 client side only).
    pub async fn open(&self) -> Result<MuxStream, MuxError> {
        let opener = self.opener.clone().ok_or(MuxError::NotOpener)?;
        let mut ready = tokio::select! {
            r = opener.ready() => r.map_err(MuxError::Open)?,
            _ = self.closed.cancelled() => return Err(MuxError::Closed),
        };
        let mut req = http::Request::new(());
        *req.method_mut() = http::Method::POST;
        *req.uri_mut() = http::Uri::from_static("https://fernwart.link/stream");
        let (resp, send) = ready.send_request(req, false).map_err(MuxError::Open)?;
        Ok(MuxStream {
            rd: MuxReader { recv: Recv::Answer(resp), buf: Bytes::new() },
            wr: MuxWriter { send },
        })
    }

    /// Resolves once the link is gone.
    pub fn closed(&self) -> impl Future<Output = ()> + Send + 'static {
        let token = self.closed.clone();
        async move { token.cancelled().await }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Closes the link (an HTTP/2 GOAWAY where this end is the server, then the connection).
    pub fn close(&self) {
        self.shutdown.cancel();
    }
}

async fn accept_loop<T>(
    mut conn: h2::server::Connection<T, Bytes>,
    in_tx: mpsc::Sender<MuxStream>,
    shutdown: CancellationToken,
    closed: CancellationToken,
) where
    T: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let next = tokio::select! {
            a = conn.accept() => a,
            _ = shutdown.cancelled() => {
                // GOAWAY, and what is queued (a last "closed because ..." frame) goes out.
                conn.graceful_shutdown();
                poll_once(|cx| conn.poll_closed(cx).map(drop)).await;
                break;
            }
        };
        match next {
            Some(Ok((req, mut respond))) => {
                match respond.send_response(http::Response::new(()), false) {
                    Ok(send) => {
                        let stream = MuxStream {
                            rd: MuxReader { recv: Recv::Open(req.into_body()), buf: Bytes::new() },
                            wr: MuxWriter { send },
                        };
                        // A full queue means the handler is overwhelmed: the stream is reset.
                        let _ = in_tx.try_send(stream);
                    }
                    Err(e) => tracing::debug!(error = %e, "cannot answer a stream"),
                }
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "link ended");
                break;
            }
            None => break,
        }
    }
    closed.cancel();
}

/// Polls once: a connection writes out what it can and returns.
async fn poll_once(mut f: impl FnMut(&mut Context<'_>) -> Poll<()>) {
    std::future::poll_fn(|cx| {
        let _ = f(cx);
        Poll::Ready(())
    })
    .await
}

/// One multiplexed stream. Dropping it before both sides finished resets it.
pub struct MuxStream {
    rd: MuxReader,
    wr: MuxWriter,
}

impl MuxStream {
    /// The two directions, to be driven independently.
    pub fn into_split(self) -> (MuxReader, MuxWriter) {
        (self.rd, self.wr)
    }

    /// Ends this side after what was written, for a last answer ("refused because ..."): see
    /// [`MuxWriter::end`].
    pub fn end(self) {
        let (rd, wr) = self.into_split();
        wr.end_holding(rd);
    }
}

/// How long an ended stream is kept so that its last bytes get out.
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// What a stream's reading side waits for.
enum Recv {
    /// Streams we opened: the peer's answer (the HTTP/2 response head) comes first.
    Answer(ResponseFuture),
    Open(RecvStream),
    Done,
}

/// The reading half of a stream.
pub struct MuxReader {
    recv: Recv,
    buf: Bytes,
}

/// The writing half of a stream.
pub struct MuxWriter {
    send: SendStream<Bytes>,
}

fn h2_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e.into_io().unwrap_or_else(|| io::Error::other("link I/O error"));
    }
    match e.reason() {
        Some(Reason::CANCEL | Reason::NO_ERROR | Reason::STREAM_CLOSED) => {
            io::Error::new(io::ErrorKind::ConnectionReset, "stream reset by the peer")
        }
        _ => io::Error::other(e),
    }
}

impl MuxReader {
    /// The next bytes as they arrived, without a copy; `None` at the end of the stream. The
    /// peer may send again as soon as a chunk has been handed out.
    pub fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        loop {
            if !self.buf.is_empty() {
                return Poll::Ready(Ok(Some(std::mem::take(&mut self.buf))));
            }
            match &mut self.recv {
                Recv::Answer(fut) => {
                    let resp = ready!(Pin::new(fut).poll(cx)).map_err(h2_io)?;
                    if resp.status() != http::StatusCode::OK {
                        self.recv = Recv::Done;
                        return Poll::Ready(Err(io::Error::other(format!(
                            "stream refused by the peer ({})",
                            resp.status()
                        ))));
                    }
                    self.recv = Recv::Open(resp.into_body());
                }
                Recv::Open(body) => match ready!(body.poll_data(cx)) {
                    Some(Ok(data)) => {
                        let _ = body.flow_control().release_capacity(data.len());
                        self.buf = data;
                    }
                    Some(Err(e)) => return Poll::Ready(Err(h2_io(e))),
                    None => {
                        self.recv = Recv::Done;
                        return Poll::Ready(Ok(None));
                    }
                },
                Recv::Done => return Poll::Ready(Ok(None)),
            }
        }
    }

    /// See [`MuxReader::poll_chunk`].
    pub async fn chunk(&mut self) -> io::Result<Option<Bytes>> {
        std::future::poll_fn(|cx| self.poll_chunk(cx)).await
    }
}

impl AsyncRead for MuxReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.buf.is_empty() {
            match ready!(this.poll_chunk(cx))? {
                Some(data) => this.buf = data,
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = out.remaining().min(this.buf.len());
        out.put_slice(&this.buf[..n]);
        this.buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl MuxWriter {
    /// Waits until the peer's windows let at least one byte through; returns how many.
    fn poll_room(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        loop {
            let room = self.send.capacity();
            if room > 0 {
                return Poll::Ready(Ok(room));
            }
            self.send.reserve_capacity(want.clamp(1, WRITE_CHUNK));
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(h2_io(e))),
                None => return Poll::Ready(Err(self.gone(cx))),
            }
        }
    }

    /// Why the stream cannot take data any more.
    fn gone(&mut self, cx: &mut Context<'_>) -> io::Error {
        match self.send.poll_reset(cx) {
            Poll::Ready(Ok(reason)) => io::Error::new(
                io::ErrorKind::ConnectionReset,
                format!("stream reset by the peer ({reason})"),
            ),
            Poll::Ready(Err(e)) => h2_io(e),
            Poll::Pending => io::Error::new(io::ErrorKind::BrokenPipe, "stream closed"),
        }
    }

    /// Sends the front of `data` as far as the peer's windows allow, without copying;
    /// what is sent is split off `data`.
    pub fn poll_send(&mut self, cx: &mut Context<'_>, data: &mut Bytes) -> Poll<io::Result<()>> {
        if data.is_empty() {
            return Poll::Ready(Ok(()));
        }
        let room = ready!(self.poll_room(cx, data.len()))?;
        let part = data.split_to(room.min(data.len()));
        self.send.send_data(part, false).map_err(h2_io)?;
        Poll::Ready(Ok(()))
    }

    /// Sends all of `data`, waiting for window as needed.
    pub async fn send_all(&mut self, mut data: Bytes) -> io::Result<()> {
        while !data.is_empty() {
            std::future::poll_fn(|cx| self.poll_send(cx, &mut data)).await?;
        }
        Ok(())
    }

    /// Ends this direction (HTTP/2 END_STREAM); the peer reads to its end.
    pub fn finish(&mut self) -> io::Result<()> {
        self.send.send_data(Bytes::new(), true).map_err(h2_io)
    }

    /// Ends this direction and keeps the stream a moment longer, so that what was written
    /// reaches the peer although the caller is done with the stream: dropping a stream resets
    /// it, and a reset discards what is still queued.
    pub fn end(self) {
        self.end_holding(());
    }

    fn end_holding<T: Send + 'static>(mut self, other: T) {
        let _ = self.finish();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                tokio::time::sleep(LINGER).await;
                drop((self, other));
            });
        }
    }
}

impl AsyncWrite for MuxWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let room = ready!(this.poll_room(cx, buf.len()))?;
        let n = room.min(buf.len()).min(WRITE_CHUNK);
        this.send.send_data(Bytes::copy_from_slice(&buf[..n]), false).map_err(h2_io)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Sent data is queued on the link at once; the link's task writes it out.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.get_mut().finish())
    }
}

impl AsyncRead for MuxStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.rd).poll_read(cx, out)
    }
}

impl AsyncWrite for MuxStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.wr).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.wr).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.wr).poll_shutdown(cx)
    }
}

/// Both ends of a link over an in-memory pipe, for tests: the client's mux and the server's
/// inbound streams.
#[cfg(test)]
pub(crate) async fn test_link() -> (Mux, tokio::sync::mpsc::Receiver<crate::MuxStream>) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(Mux::start(b, Mode::Server));
    let (client, _) = Mux::start(a, Mode::Client).await.expect("client end of a test link");
    let (_server, inbound) =
        server.await.expect("server task of a test link").expect("server end of a test link");
    (client, inbound)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair(buf: usize) -> (Mux, Mux, mpsc::Receiver<MuxStream>) {
        let (a, b) = tokio::io::duplex(buf);
        let server = tokio::spawn(Mux::start(b, Mode::Server));
        let (client, _) = Mux::start(a, Mode::Client).await.unwrap();
        let (server, server_in) = server.await.unwrap().unwrap();
        (client, server, server_in)
    }

    #[tokio::test]
    async fn streams_carry_bytes_both_ways_with_half_close() {
        let (client, _server, mut server_in) = pair(64 * 1024).await;
        let echo = tokio::spawn(async move {
            let mut s = server_in.recv().await.unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            s.write_all(&got).await.unwrap();
            s.shutdown().await.unwrap();
        });
        let mut s = client.open().await.unwrap();
        let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        s.write_all(&payload).await.unwrap();
        s.shutdown().await.unwrap();
        let mut back = Vec::new();
        s.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, payload);
        echo.await.unwrap();
    }

    #[tokio::test]
    async fn a_slow_reader_holds_back_only_its_own_stream() {
        let (client, _server, mut server_in) = pair(64 * 1024).await;
        let mut slow = client.open().await.unwrap();
        let mut fast = client.open().await.unwrap();
        slow.write_all(b"x").await.unwrap();
        fast.write_all(b"y").await.unwrap();
        let _slow_peer = server_in.recv().await.unwrap(); // never read
        let mut fast_peer = server_in.recv().await.unwrap();
        // The slow stream fills its window and then waits ...
        let (mut slow_rd, mut slow_wr) = slow.into_split();
        let big = Bytes::from(vec![1u8; 4 * STREAM_WINDOW as usize]);
        let stuck = tokio::time::timeout(Duration::from_millis(300), slow_wr.send_all(big)).await;
        assert!(stuck.is_err(), "a stream must not send past its window");
        // ... while the other stream still carries bytes.
        let mut one = [0u8; 1];
        fast_peer.read_exact(&mut one).await.unwrap();
        assert_eq!(&one, b"y");
        fast_peer.write_all(b"z").await.unwrap();
        fast.read_exact(&mut one).await.unwrap();
        assert_eq!(&one, b"z");
        drop(slow_rd.chunk());
    }

    #[tokio::test]
    async fn a_dropped_stream_is_a_reset_for_the_peer() {
        let (client, _server, mut server_in) = pair(64 * 1024).await;
        let mut s = client.open().await.unwrap();
        s.write_all(b"hello").await.unwrap();
        let mut peer = server_in.recv().await.unwrap();
        let mut five = [0u8; 5];
        peer.read_exact(&mut five).await.unwrap();
        drop(s);
        let mut rest = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(5), peer.read_to_end(&mut rest))
            .await
            .unwrap();
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::ConnectionReset);
    }

    #[tokio::test]
    async fn close_ends_the_peer() {
        let (client, server, _server_in) = pair(1024).await;
        client.close();
        tokio::time::timeout(Duration::from_secs(5), server.closed()).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), client.closed()).await.unwrap();
        assert!(client.open().await.is_err());
    }

    #[tokio::test]
    async fn only_the_client_side_opens_streams() {
        let (_client, server, _server_in) = pair(1024).await;
        assert!(matches!(server.open().await, Err(MuxError::NotOpener)));
    }

    /// One raw HTTP/2 frame: 24-bit length, type, flags, stream id, payload.
    fn raw_frame(len: u32, kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = len.to_be_bytes()[1..].to_vec();
        f.extend([kind, flags]);
        f.extend(stream.to_be_bytes());
        f.extend(payload);
        f
    }

    #[tokio::test]
    async fn a_frame_above_the_limit_closes_the_link() {
        let (mut peer, b) = tokio::io::duplex(1024 * 1024);
        let server = tokio::spawn(Mux::start(b, Mode::Server));
        peer.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
        peer.write_all(&raw_frame(0, 4, 0, 0, &[])).await.unwrap(); // SETTINGS
        let (server, mut inbound) = server.await.unwrap().unwrap();
        peer.write_all(&raw_frame(0, 4, 1, 0, &[])).await.unwrap(); // SETTINGS ACK
                                                                    // Open stream 1 (HEADERS, HPACK-indexed :method POST, :scheme https, :path /) and
                                                                    // send a DATA frame of an allowed size: it arrives.
        peer.write_all(&raw_frame(3, 1, 0x4, 1, &[0x83, 0x87, 0x84])).await.unwrap();
        peer.write_all(&raw_frame(1000, 0, 0, 1, &[7u8; 1000])).await.unwrap();
        let stream = tokio::time::timeout(Duration::from_secs(5), inbound.recv())
            .await
            .expect("no stream")
            .expect("link closed");
        let (mut rd, _wr) = stream.into_split();
        let chunk = rd.chunk().await.unwrap().unwrap();
        assert_eq!(&chunk[..], &[7u8; 1000][..]);
        assert!(!server.is_closed());
        // On the same stream, a DATA frame header announcing one byte more than MAX_FRAME ends
        // the link at once, before its payload is read or buffered.
        peer.write_all(&raw_frame(MAX_FRAME + 1, 0, 0, 1, &[])).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), server.closed())
            .await
            .expect("the link stayed open after an oversized frame");
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_never_speaks_http2_times_out() {
        let (a, _b) = tokio::io::duplex(1024);
        let r = Mux::start(a, Mode::Server).await;
        assert!(matches!(r, Err(MuxError::HandshakeTimeout)));
    }
}
