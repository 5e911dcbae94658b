//! The server's questions about recordings, on a stream it opened: a listing, or one file.
//!
//! The server writes its [`RecordingRequest`] and ends its side; the agent answers with a
//! [`RecordingReply`] frame, then the answer's bytes, and ends its side. Only when the
//! operator allows it (`[recording] export_via_server`, on by default); every fetch is in the
//! agent's audit chain (`recording.fetch`, naming who asked at the server).

use std::time::Duration;

use fernwart_proto::{RecordingAsk, RecordingReply, RecordingRequest};
use fernwart_transport::{write_frame, MuxStream, MuxWriter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Agent;

/// How long the server may take to end its side of the stream after its request.
const REQUEST_END_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one piece of an answer may wait for the link (a stalled reader).
const SEND_TIMEOUT: Duration = Duration::from_secs(60);

pub async fn serve(agent: Agent, stream: MuxStream, req: RecordingRequest) {
    let (mut rd, mut wr) = stream.into_split();
    // The request was all the server sends; its end must follow (both ends closed, the
    // stream is not reset when dropped, and what is queued still goes out).
    let ended = tokio::time::timeout(REQUEST_END_TIMEOUT, async {
        while let Some(chunk) = rd.chunk().await? {
            if !chunk.is_empty() {
                return Err(std::io::Error::other("bytes after the recording request"));
            }
        }
        Ok(())
    })
    .await;
    if !matches!(ended, Ok(Ok(()))) {
        tracing::debug!("recording request not followed by the end of the stream");
        return;
    }
    if !agent.cfg.recording.export_via_server {
        let why = "this machine's operator does not let recordings leave the gateway \
                   (agent.toml: [recording] export_via_server = false)";
        send_refusal(&mut wr, why).await;
        return;
    }
    match req.recording {
        RecordingAsk::List { session } => {
            let list = agent.recordings.list(&agent.identity.machine, session.as_deref());
            let body = match list.map(|l| serde_json::to_vec(&l)) {
                Ok(Ok(b)) => b,
                Ok(Err(e)) => return send_refusal(&mut wr, &format!("listing: {e}")).await,
                Err(e) => {
                    return send_refusal(&mut wr, &format!("cannot read the recordings: {e}")).await
                }
            };
            let reply = RecordingReply {
                ok: true,
                error: None,
                size: Some(body.len() as u64),
                sha256: None,
            };
            if write_frame(&mut wr, &reply).await.is_ok() {
                let _ = send(&mut wr, &body).await;
                let _ = wr.finish();
            }
        }
        RecordingAsk::Fetch { id, by } => {
            let Some(path) = agent.recordings.path_of(&id) else {
                return send_refusal(&mut wr, &format!("no recording {id} on this machine")).await;
            };
            let mut file = match tokio::fs::File::open(&path).await {
                Ok(f) => f,
                Err(e) => {
                    return send_refusal(&mut wr, &format!("cannot open recording {id}: {e}")).await
                }
            };
            let summary = agent.recordings.summary(&id);
            let size = file.metadata().await.map(|m| m.len()).ok();
            let session = fernwart_recording::session_of(&id).unwrap_or("").to_owned();
            agent.audit_as(
                Some(&by),
                "recording.fetch",
                &session,
                serde_json::json!({
                    "id": id,
                    "by": by,
                    "via": "server",
                    "bytes": size,
                    "sha256": summary.as_ref().map(|s| &s.sha256),
                }),
            );
            let reply =
                RecordingReply { ok: true, error: None, size, sha256: summary.map(|s| s.sha256) };
            if write_frame(&mut wr, &reply).await.is_err() {
                return;
            }
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match file.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) => {
                        // The server sees the stream reset: not the whole file.
                        tracing::warn!(%id, error = %e, "reading a recording for the server");
                        return;
                    }
                };
                if send(&mut wr, &buf[..n]).await.is_err() {
                    return;
                }
            }
            let _ = wr.finish();
        }
    }
}

async fn send(wr: &mut MuxWriter, data: &[u8]) -> std::io::Result<()> {
    tokio::time::timeout(SEND_TIMEOUT, wr.write_all(data)).await.map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::TimedOut, "the server stopped reading")
    })?
}

async fn send_refusal(wr: &mut MuxWriter, why: &str) {
    if write_frame(wr, &RecordingReply::refused(why)).await.is_ok() {
        let _ = wr.finish();
    }
}
