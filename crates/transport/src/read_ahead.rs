//! A read buffer under TLS that costs nothing while a connection is idle.
//!
//! rustls asks its transport for at most about 4 KiB at a time, so a TLS connection straight
//! on a socket makes four or more `recv` calls per 16 KiB record. `ReadAhead` reads up to
//! [`READ_AHEAD`] bytes per call and serves rustls from memory. It only buffers while data
//! streams in: reads pass straight through until one fills the caller's buffer (more is
//! waiting), and the buffer is given back as soon as a read brings little (an idle link's
//! keepalive), so that a server holding thousands of idle agent links holds no buffers.

use std::{
    io,
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most bytes one read from the socket takes.
pub const READ_AHEAD: usize = 64 * 1024;
/// A read that brings less than this is traffic of an idle link: the buffer is released
/// once it has been drained, and reads pass through again.
const SMALL_READ: usize = 4 * 1024;

pub struct ReadAhead<S> {
    io: S,
    buf: BytesMut,
    /// Reading ahead (data is streaming in) or passing reads through.
    ahead: bool,
    release: bool,
}

impl<S> ReadAhead<S> {
    pub fn new(io: S) -> Self {
        Self { io, buf: BytesMut::new(), ahead: false, release: false }
    }

    pub fn get_ref(&self) -> &S {
        &self.io
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.buf.is_empty() {
            if !this.ahead || out.remaining() >= READ_AHEAD {
                let want = out.remaining();
                let before = out.filled().len();
                ready!(Pin::new(&mut this.io).poll_read(cx, out))?;
                // A read that fills the caller's buffer means more is waiting: read ahead.
                this.ahead = want > 0 && out.filled().len() - before == want;
                return Poll::Ready(Ok(()));
            }
            this.buf.reserve(READ_AHEAD);
            let n =
                ready!(tokio_util::io::poll_read_buf(Pin::new(&mut this.io), cx, &mut this.buf))?;
            if n == 0 {
                return Poll::Ready(Ok(()));
            }
            this.release = n < SMALL_READ;
        }
        let n = out.remaining().min(this.buf.len());
        out.put_slice(&this.buf[..n]);
        this.buf.advance(n);
        if this.buf.is_empty() && this.release {
            this.buf = BytesMut::new();
            this.ahead = false;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn small_reads_see_every_byte_in_order_and_writes_pass_through() {
        let (a, mut b) = tokio::io::duplex(256 * 1024);
        let mut r = ReadAhead::new(a);
        let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            b.write_all(&sent).await.unwrap();
            let mut echo = [0u8; 3];
            b.read_exact(&mut echo).await.unwrap();
            b.shutdown().await.unwrap();
            echo
        });
        let mut got = vec![0u8; payload.len()];
        for chunk in got.chunks_mut(4096) {
            r.read_exact(chunk).await.unwrap();
        }
        assert_eq!(got, payload);
        r.write_all(b"abc").await.unwrap();
        assert_eq!(&writer.await.unwrap(), b"abc");
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn an_idle_link_holds_no_buffer() {
        let (a, mut b) = tokio::io::duplex(1024);
        let mut r = ReadAhead::new(a);
        b.write_all(b"ping").await.unwrap();
        // rustls reads into a buffer of about 4 KiB.
        let mut buf = [0u8; 4096];
        let n = r.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"ping");
        assert_eq!(r.buf.capacity(), 0);
        assert!(!r.ahead, "a short read must not start reading ahead");
    }
}
