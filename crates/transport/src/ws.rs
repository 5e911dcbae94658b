//! A WebSocket seen as a byte stream, so that yamux can run over it.
//!
//! Writes are batched: bytes collect in a buffer of at most [`BATCH`] bytes and go out as one
//! binary message on flush (yamux flushes after each frame burst), so small yamux frames do
//! not each cost a WebSocket message. Text messages are a protocol violation.

use std::{
    io,
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::{Buf, Bytes, BytesMut};
use futures::{AsyncRead, AsyncWrite, SinkExt, StreamExt};
use tokio::io::{AsyncRead as TokioRead, AsyncWrite as TokioWrite};
use tokio_tungstenite::{tungstenite::Message, WebSocketStream};

/// The most bytes one outgoing message carries.
const BATCH: usize = 256 * 1024;

pub struct WsIo<S> {
    ws: WebSocketStream<S>,
    read: Bytes,
    write: BytesMut,
    eof: bool,
}

impl<S> WsIo<S> {
    pub fn new(ws: WebSocketStream<S>) -> Self {
        Self { ws, read: Bytes::new(), write: BytesMut::new(), eof: false }
    }
}

fn ws_err(e: tokio_tungstenite::tungstenite::Error) -> io::Error {
    io::Error::other(e)
}

impl<S: TokioRead + TokioWrite + Unpin> WsIo<S> {
    fn poll_send_batch(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.write.is_empty() {
            return Poll::Ready(Ok(()));
        }
        ready!(self.ws.poll_ready_unpin(cx)).map_err(ws_err)?;
        let msg = Message::Binary(self.write.split().freeze());
        self.ws.start_send_unpin(msg).map_err(ws_err)?;
        Poll::Ready(Ok(()))
    }
}

impl<S: TokioRead + TokioWrite + Unpin> AsyncRead for WsIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        loop {
            if !this.read.is_empty() {
                let n = buf.len().min(this.read.len());
                buf[..n].copy_from_slice(&this.read[..n]);
                this.read.advance(n);
                return Poll::Ready(Ok(n));
            }
            if this.eof {
                return Poll::Ready(Ok(0));
            }
            match ready!(this.ws.poll_next_unpin(cx)) {
                Some(Ok(Message::Binary(data))) => this.read = data,
                Some(Ok(Message::Close(_))) | None => this.eof = true,
                // tungstenite answers pings itself; pongs and raw frames carry nothing for us.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text message on a binary fernwart link",
                    )))
                }
                Some(Err(e)) => return Poll::Ready(Err(ws_err(e))),
            }
        }
    }
}

impl<S: TokioRead + TokioWrite + Unpin> AsyncWrite for WsIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.write.len() >= BATCH {
            ready!(this.poll_send_batch(cx))?;
        }
        let n = buf.len().min(BATCH - this.write.len());
        this.write.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_send_batch(cx))?;
        this.ws.poll_flush_unpin(cx).map_err(ws_err)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_send_batch(cx))?;
        this.ws.poll_close_unpin(cx).map_err(ws_err)
    }
}
