//! Reading and writing protocol frames on async byte streams.

use std::{io, time::Duration};

use fernwart_proto::{codec, DecodeError, EncodeError, HEADER_LEN};
use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::MuxStream;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("peer closed the stream")]
    Closed,
    #[error("no frame within {0:?}")]
    Timeout(Duration),
    #[error("bad frame from peer")]
    Decode(#[from] DecodeError),
    #[error("cannot encode frame")]
    Encode(#[from] EncodeError),
    #[error("stream I/O failed")]
    Io(#[from] io::Error),
}

impl FrameError {
    /// As an `io::Error`, for code that relays bytes after a frame.
    pub fn into_io(self) -> io::Error {
        match self {
            FrameError::Io(e) => e,
            FrameError::Closed => io::ErrorKind::UnexpectedEof.into(),
            FrameError::Timeout(_) => io::ErrorKind::TimedOut.into(),
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }
}

/// Reads exactly one frame: nothing after it is consumed. The length is checked before any
/// payload buffer is allocated.
pub async fn read_frame<T, R>(r: &mut R) -> Result<T, FrameError>
where
    T: DeserializeOwned,
    R: AsyncRead + Unpin,
{
    let mut header = [0u8; HEADER_LEN];
    if let Err(e) = r.read_exact(&mut header).await {
        return Err(if e.kind() == io::ErrorKind::UnexpectedEof {
            FrameError::Closed
        } else {
            FrameError::Io(e)
        });
    }
    let len = codec::frame_len(&header)?.ok_or(FrameError::Closed)?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await.map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            FrameError::Closed
        } else {
            FrameError::Io(e)
        }
    })?;
    Ok(codec::decode_payload(&payload)?)
}

/// [`read_frame`] bounded by a timeout: a handshake that never completes is an error.
pub async fn read_frame_within<T, R>(r: &mut R, limit: Duration) -> Result<T, FrameError>
where
    T: DeserializeOwned,
    R: AsyncRead + Unpin,
{
    tokio::time::timeout(limit, read_frame(r)).await.map_err(|_| FrameError::Timeout(limit))?
}

pub async fn write_frame<T, W>(w: &mut W, msg: &T) -> Result<(), FrameError>
where
    T: Serialize,
    W: AsyncWrite + Unpin,
{
    let frame = codec::encode(msg)?;
    w.write_all(&frame).await?;
    w.flush().await?;
    Ok(())
}

/// Writes `msg` as the stream's last frame (a refusal, a "closed because ...") and ends the
/// stream so that the frame reaches the peer although the caller is done with the stream
/// (see [`MuxStream::end`]). A stream that cannot take the frame any more is just dropped.
pub async fn write_last_frame<T: Serialize>(mut stream: MuxStream, msg: &T) {
    if write_frame(&mut stream, msg).await.is_ok() {
        stream.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fernwart_proto::OpenRequest;

    #[tokio::test]
    async fn reads_one_frame_and_leaves_the_rest() {
        let msg = OpenRequest { session: "s".into(), target: "t".into(), e2e: None, hold: false };
        let mut bytes = codec::encode(&msg).unwrap();
        bytes.extend_from_slice(b"tunnel bytes");
        let mut r = &bytes[..];
        let got: OpenRequest = read_frame(&mut r).await.unwrap();
        assert_eq!(got, msg);
        assert_eq!(r, b"tunnel bytes");
    }

    #[tokio::test]
    async fn oversized_header_fails_without_reading_payload() {
        let bytes = u32::MAX.to_be_bytes();
        let mut r = &bytes[..];
        let err = read_frame::<OpenRequest, _>(&mut r).await.unwrap_err();
        assert!(matches!(err, FrameError::Decode(DecodeError::TooLarge { .. })));
    }

    #[tokio::test]
    async fn silent_peer_times_out() {
        let (mut a, _b) = tokio::io::duplex(64);
        let err = read_frame_within::<OpenRequest, _>(&mut a, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(matches!(err, FrameError::Timeout(_)));
    }
}
