//! Relaying bytes between a socket and a multiplexed stream, or between two streams, one
//! direction at a time, so that a tunnel can send its first bytes while the answer to its
//! open request is still on the way (one round trip less from a technician's connect to the
//! target's first byte). Bytes read from a socket are handed to the link without another
//! copy, and bytes from one stream go to the next as they arrived.

use std::{
    future::Future,
    io,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::mux::{MuxReader, MuxWriter};

/// Bytes read from a socket at once, at most.
pub const RELAY_BUF: usize = 256 * 1024;
/// Bytes read from a socket at once while the traffic is small.
const SMALL_BUF: usize = 4 * 1024;

/// Copies `rd` (a socket) into the stream until `rd` ends, then ends the stream's direction.
/// Returns the bytes copied. At most [`RELAY_BUF`] bytes are read ahead of the link's window.
pub async fn socket_to_mux<R>(mut rd: R, wr: &mut MuxWriter) -> io::Result<u64>
where
    R: AsyncRead + Unpin,
{
    let mut buf = BytesMut::new();
    let mut size = SMALL_BUF;
    let mut total = 0u64;
    loop {
        // The link still holds the last buffer until it is written out, so this usually takes
        // a fresh one: small while the traffic is small (requests, answers), as large as
        // RELAY_BUF while reads fill it (bulk data).
        buf.reserve(size);
        let n = rd.read_buf(&mut buf).await?;
        if n == 0 {
            break;
        }
        size = if n >= size { (size * 4).min(RELAY_BUF) } else { SMALL_BUF.max(n * 2) };
        total += n as u64;
        wr.send_all(buf.split().freeze()).await?;
    }
    wr.finish()?;
    Ok(total)
}

/// Writes the stream's bytes to `wr` (a socket) until the stream ends, then half-closes `wr`.
pub async fn mux_to_socket<W>(rd: &mut MuxReader, wr: &mut W) -> io::Result<u64>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut total = 0u64;
    while let Some(chunk) = rd.chunk().await? {
        total += chunk.len() as u64;
        wr.write_all(&chunk).await?;
    }
    wr.shutdown().await?;
    Ok(total)
}

/// Forwards one stream into another as the bytes arrive, then ends the second's direction.
/// Each chunk counts as `activity`; `carried` counts its bytes as they pass (so a tunnel cut
/// midway still knows them).
pub async fn mux_to_mux(
    rd: &mut MuxReader,
    wr: &mut MuxWriter,
    activity: &Activity,
    carried: &AtomicU64,
) -> io::Result<u64> {
    let mut total = 0u64;
    while let Some(chunk) = rd.chunk().await? {
        total += chunk.len() as u64;
        activity.tick();
        carried.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        wr.send_all(chunk).await?;
    }
    wr.finish()?;
    Ok(total)
}

/// How many chunks a tunnel carried, both ways: a watcher tells an idle tunnel from a busy
/// one without a clock read per chunk.
#[derive(Debug, Default)]
pub struct Activity(AtomicU64);

impl Activity {
    pub fn tick(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Resolves once nothing moved for `timeout` (between `timeout` and 5/4 of it); never for
    /// a zero `timeout` (idle tunnels allowed).
    pub async fn idle(&self, timeout: Duration) {
        if timeout.is_zero() {
            return std::future::pending().await;
        }
        let step = (timeout / 4).max(Duration::from_millis(100));
        let mut seen = self.count();
        let mut since = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(step).await;
            let now = tokio::time::Instant::now();
            let count = self.count();
            if count != seen {
                seen = count;
                since = now;
            } else if now.duration_since(since) >= timeout {
                return;
            }
        }
    }
}

/// Why a pipelined tunnel stopped.
#[derive(Debug)]
pub enum Halt<E> {
    /// The far side's answer to the open request was no (or never came).
    Refused(E),
    /// A side broke after the open: a reset, a closed link.
    Io(io::Error),
}

/// Runs both directions of a pipelined tunnel to the end: `up` carries the near side's bytes
/// from the start; `down` first reads the far side's answer, then carries its bytes. A
/// refusal ends both at once; otherwise both directions run until each has ended, half-close
/// passing through as with `copy_bidirectional`. Returns the bytes (up, down).
pub async fn both<E, U, D>(up: U, down: D) -> Result<(u64, u64), Halt<E>>
where
    U: Future<Output = io::Result<u64>>,
    D: Future<Output = Result<u64, Halt<E>>>,
{
    tokio::pin!(up, down);
    let mut sent = None;
    loop {
        tokio::select! {
            biased;
            d = &mut down => {
                let received = d?;
                let sent = match sent {
                    Some(n) => n,
                    None => (&mut up).await.map_err(Halt::Io)?,
                };
                return Ok((sent, received));
            }
            u = &mut up, if sent.is_none() => match u {
                Ok(n) => sent = Some(n),
                Err(e) => {
                    // Broken on the way out; a refusal may still be on its way back.
                    return match tokio::time::timeout(Duration::from_secs(1), &mut down).await {
                        Ok(Err(Halt::Refused(why))) => Err(Halt::Refused(why)),
                        _ => Err(Halt::Io(e)),
                    };
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    #[tokio::test(start_paused = true)]
    async fn an_idle_tunnel_is_noticed_and_a_busy_one_is_not() {
        use std::{sync::Arc, time::Duration};
        let a = Arc::new(super::Activity::default());
        let t0 = tokio::time::Instant::now();
        a.idle(Duration::from_secs(8)).await;
        let waited = t0.elapsed();
        assert!(
            waited >= Duration::from_secs(8) && waited <= Duration::from_secs(10),
            "{waited:?}"
        );
        // Ticks every second keep it busy for as long as they come.
        let ticker = {
            let a = a.clone();
            tokio::spawn(async move {
                for _ in 0..30 {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    a.tick();
                }
            })
        };
        let t0 = tokio::time::Instant::now();
        a.idle(Duration::from_secs(8)).await;
        assert!(t0.elapsed() >= Duration::from_secs(30 + 8), "{:?}", t0.elapsed());
        ticker.await.unwrap();
        // Zero: never idle.
        let r = tokio::time::timeout(Duration::from_secs(3600), a.idle(Duration::ZERO)).await;
        assert!(r.is_err());
    }

    #[tokio::test]
    async fn socket_to_stream_to_stream_to_socket_keeps_every_byte_and_the_half_close() {
        use crate::mux::test_link as link;
        // socket a|b -> link 1 -> relay -> link 2 -> socket c|d, as technician -> server -> agent.
        let (one, mut one_in) = link().await;
        let (two, mut two_in) = link().await;
        let (mut a, b) = tokio::io::duplex(1024);
        let (mut c, mut d) = tokio::io::duplex(1024);
        let payload: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            tokio::io::AsyncWriteExt::write_all(&mut a, &sent).await.unwrap();
            tokio::io::AsyncWriteExt::shutdown(&mut a).await.unwrap();
        });
        let (_r1, mut w1) = one.open().await.unwrap().into_split();
        let up = tokio::spawn(async move { super::socket_to_mux(b, &mut w1).await });
        let (mut r1_far, _w1_far) = one_in.recv().await.unwrap().into_split();
        let (_r2, mut w2) = two.open().await.unwrap().into_split();
        let relay = tokio::spawn(async move {
            super::mux_to_mux(
                &mut r1_far,
                &mut w2,
                &super::Activity::default(),
                &std::sync::atomic::AtomicU64::new(0),
            )
            .await
        });
        let (mut r2_far, _w2_far) = two_in.recv().await.unwrap().into_split();
        let down = tokio::spawn(async move { super::mux_to_socket(&mut r2_far, &mut c).await });
        let mut got = Vec::new();
        d.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, payload);
        let n = payload.len() as u64;
        assert_eq!(up.await.unwrap().unwrap(), n);
        assert_eq!(relay.await.unwrap().unwrap(), n);
        assert_eq!(down.await.unwrap().unwrap(), n);
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn a_refusal_stops_both_directions() {
        let up = std::future::pending::<std::io::Result<u64>>();
        let down = async { Err::<u64, _>(super::Halt::Refused("no")) };
        match super::both(up, down).await {
            Err(super::Halt::Refused("no")) => {}
            other => panic!("expected the refusal, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn both_directions_finish_before_the_result() {
        let up = async {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            Ok(3)
        };
        let down = async { Ok::<u64, super::Halt<()>>(5) };
        assert_eq!(super::both(up, down).await.unwrap(), (3, 5));
    }
}
