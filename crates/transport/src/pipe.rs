//! Relaying bytes between two streams, one direction at a time, so that a tunnel can send its
//! first bytes while the answer to its open request is still on the way (one round trip less
//! from a technician's connect to the target's first byte).

use std::{future::Future, io, time::Duration};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

/// Bytes read at once on each direction of a tunnel.
pub const RELAY_BUF: usize = 64 * 1024;

/// Copies `rd` to `wr` until `rd` ends, then half-closes `wr`. Returns the bytes copied.
/// Back-pressure is kept: at most [`RELAY_BUF`] bytes are held between the two.
pub async fn copy_then_shutdown<R, W>(rd: R, wr: &mut W) -> io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut rd = BufReader::with_capacity(RELAY_BUF, rd);
    let n = tokio::io::copy_buf(&mut rd, wr).await?;
    wr.shutdown().await?;
    Ok(n)
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

    #[tokio::test]
    async fn copies_everything_then_half_closes() {
        let (mut a, b) = tokio::io::duplex(1024);
        let (mut c, mut d) = tokio::io::duplex(1024);
        let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            tokio::io::AsyncWriteExt::write_all(&mut a, &sent).await.unwrap();
            tokio::io::AsyncWriteExt::shutdown(&mut a).await.unwrap();
        });
        let copier = tokio::spawn(async move { super::copy_then_shutdown(b, &mut c).await });
        let mut got = Vec::new();
        d.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, payload);
        assert_eq!(copier.await.unwrap().unwrap(), payload.len() as u64);
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
