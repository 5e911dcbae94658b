//! The I/O around [`fernwart_proto::e2e`]: a tunnel's bytes as end-to-end encrypted records,
//! socket to stream and stream to socket, for the CLI and the agent alike (the server relays
//! the records as they are). The crypto runs inline on the relaying task: one copy of the
//! plaintext into the record buffer, sealed or opened in place.

use std::{io, time::Duration};

use bytes::{Bytes, BytesMut};
use fernwart_proto::e2e::{self, E2eError, Opened, Opener, Sealer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::{
    mux::{MuxReader, MuxWriter},
    pipe::RELAY_BUF,
};

/// Bytes read from a socket at once while the traffic is small.
const SMALL_BUF: usize = 4 * 1024;

fn invalid(e: E2eError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Reads one record (a handshake message) from a stream within `limit`: its body.
pub async fn read_record<R>(r: &mut R, limit: Duration) -> io::Result<Vec<u8>>
where
    R: AsyncRead + Unpin,
{
    let read = async {
        let mut header = [0u8; e2e::RECORD_HEADER];
        r.read_exact(&mut header).await?;
        let mut body = vec![0u8; usize::from(u16::from_be_bytes(header))];
        r.read_exact(&mut body).await?;
        Ok(body)
    };
    tokio::time::timeout(limit, read).await.map_err(|_| {
        io::Error::new(io::ErrorKind::TimedOut, "no end-to-end handshake message in time")
    })?
}

/// Seals `first` (bytes read before the handshake completed), then the socket's bytes until
/// it ends, into the stream; then the closing record and the stream's end. Returns the
/// plaintext bytes carried. Reads are sized so that one read's records fill at most one
/// link frame ([`RELAY_BUF`]).
pub async fn socket_to_mux<R>(
    mut rd: R,
    wr: &mut MuxWriter,
    sealer: &mut Sealer,
    first: &[u8],
) -> io::Result<u64>
where
    R: AsyncRead + Unpin,
{
    let max = Sealer::plaintext_for(RELAY_BUF);
    let mut total = first.len() as u64;
    let mut out = BytesMut::new();
    if !first.is_empty() {
        sealer.seal(first, &mut out).map_err(invalid)?;
        wr.send_all(out.split().freeze()).await?;
    }
    // The plaintext buffer is reused (its bytes are copied into the records); it grows while
    // reads fill it (bulk data) and is let go when the traffic turns small again.
    let mut buf = BytesMut::new();
    let mut size = SMALL_BUF;
    loop {
        buf.clear();
        if size == SMALL_BUF && buf.capacity() > 4 * SMALL_BUF {
            buf = BytesMut::new();
        }
        buf.reserve(size);
        let n = (&mut rd).take(size as u64).read_buf(&mut buf).await?;
        if n == 0 {
            break;
        }
        size = if n >= size { (size * 4).min(max) } else { SMALL_BUF.max(n * 2).min(max) };
        total += n as u64;
        sealer.seal(&buf, &mut out).map_err(invalid)?;
        wr.send_all(out.split().freeze()).await?;
    }
    sealer.close(&mut out).map_err(invalid)?;
    wr.send_all(out.split().freeze()).await?;
    wr.finish()?;
    Ok(total)
}

/// Opens the stream's records and writes their plaintext to `wr` (a socket) until the
/// stream ends after the peer's closing record, then half-closes `wr`. A record that fails
/// to open, or an end without the closing record, is an error (the tunnel must close).
/// Returns the plaintext bytes carried.
pub async fn mux_to_socket<W>(
    rd: &mut MuxReader,
    opener: &mut Opener,
    wr: &mut W,
) -> io::Result<u64>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut total = 0u64;
    let mut ready: Vec<Bytes> = Vec::new();
    while let Some(chunk) = rd.chunk().await? {
        opener.push(&chunk);
        while let Some(o) = opener.open_next().map_err(invalid)? {
            if let Opened::Data(b) = o {
                ready.push(b);
            }
        }
        total += write_all(wr, &mut ready).await?;
    }
    opener.end().map_err(invalid)?;
    wr.shutdown().await?;
    Ok(total)
}

/// Writes every buffer, in order, with as few (vectored) writes as the socket takes.
async fn write_all<W>(wr: &mut W, bufs: &mut Vec<Bytes>) -> io::Result<u64>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    let total: usize = bufs.iter().map(Bytes::len).sum();
    let mut at = 0;
    while at < bufs.len() {
        let slices: Vec<io::IoSlice<'_>> = bufs[at..].iter().map(|b| io::IoSlice::new(b)).collect();
        let mut n = wr.write_vectored(&slices).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let first = &mut bufs[at];
            if n >= first.len() {
                n -= first.len();
                at += 1;
            } else {
                let _ = first.split_to(n);
                n = 0;
            }
        }
    }
    bufs.clear();
    Ok(total as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mux::test_link as link;
    use fernwart_proto::e2e::{take_record, Initiator, ReplayGuard, Responder, StaticKey};

    fn transports() -> (e2e::Transport, e2e::Transport) {
        let tech = StaticKey::from_secret(&[1; 32]).unwrap();
        let agent = StaticKey::from_secret(&[2; 32]).unwrap();
        let mut wire = BytesMut::new();
        let (init, _) =
            Initiator::start(&tech, &agent.public(), "s", "t", [3; 32], 0, b"", &mut wire).unwrap();
        let msg1 = take_record(&mut wire).unwrap();
        let mut g = ReplayGuard::default();
        let (resp, _) = Responder::accept(&agent, "s", "t", [4; 32], &msg1, 0, &mut g).unwrap();
        let mut back = BytesMut::new();
        let a = resp.reply(&mut back).unwrap();
        let msg2 = take_record(&mut back).unwrap();
        (init.finish(&msg2).unwrap(), a)
    }

    #[tokio::test]
    async fn a_socket_crosses_a_stream_sealed_with_its_half_close() {
        let (one, mut one_in) = link().await;
        let (cli, agent) = transports();
        let (mut sealer, mut opener) = (cli.sealer, agent.opener);
        let (mut a, b) = tokio::io::duplex(1024);
        let (mut c, mut d) = tokio::io::duplex(1024);
        let payload: Vec<u8> = (0..900_000u32).map(|i| (i % 251) as u8).collect();
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            a.write_all(&sent[10..]).await.unwrap();
            a.shutdown().await.unwrap();
        });
        let (_r, mut w) = one.open().await.unwrap().into_split();
        let first = payload[..10].to_vec();
        let up = tokio::spawn(async move { socket_to_mux(b, &mut w, &mut sealer, &first).await });
        let (mut far, _far_w) = one_in.recv().await.unwrap().into_split();
        let down = tokio::spawn(async move { mux_to_socket(&mut far, &mut opener, &mut c).await });
        let mut got = Vec::new();
        d.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, payload);
        assert_eq!(up.await.unwrap().unwrap(), payload.len() as u64);
        assert_eq!(down.await.unwrap().unwrap(), payload.len() as u64);
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn a_stream_cut_short_is_an_error_not_an_end() {
        let (one, mut one_in) = link().await;
        let (cli, agent) = transports();
        let (mut sealer, mut opener) = (cli.sealer, agent.opener);
        let (_r, mut w) = one.open().await.unwrap().into_split();
        let mut out = BytesMut::new();
        sealer.seal(b"hello", &mut out).unwrap();
        w.send_all(out.freeze()).await.unwrap();
        // The relay ends the stream without the closing record.
        w.finish().unwrap();
        let (mut far, _far_w) = one_in.recv().await.unwrap().into_split();
        let mut sink = Vec::new();
        let e = mux_to_socket(&mut far, &mut opener, &mut sink).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert_eq!(sink, b"hello");
    }
}
