//! Asking a machine's agent about its session recordings, on a stream of its link. The server
//! only relays: it keeps neither listings nor files.

use std::time::Duration;

use fernwart_api::RecordingInfo;
use fernwart_proto::{RecordingAsk, RecordingReply, RecordingRequest, HANDSHAKE_TIMEOUT};
use fernwart_transport::{frame_io::read_frame_within, write_frame, MuxReader};

use super::AgentView;

/// The most bytes of a listing.
const MAX_LISTING: usize = 16 * 1024 * 1024;
/// How long a listing may take to arrive, and how long a file's next piece.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the agent gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    #[error("cannot reach the agent: {0}")]
    Link(String),
    #[error(
        "the agent did not answer ({0}); agents from before session recordings cannot: update it"
    )]
    NoAnswer(String),
    #[error("the agent refused: {0}")]
    Refused(String),
    #[error("the agent's answer is not valid: {0}")]
    Invalid(String),
}

/// Sends `ask` on a fresh stream and reads the agent's reply; on `ok` the returned reader
/// carries the answer's bytes.
pub async fn ask(
    agent: &AgentView,
    ask: RecordingAsk,
) -> Result<(RecordingReply, MuxReader), AskError> {
    let stream = agent.mux.open().await.map_err(|e| AskError::Link(e.to_string()))?;
    let (mut rd, mut wr) = stream.into_split();
    write_frame(&mut wr, &RecordingRequest { recording: ask })
        .await
        .map_err(|e| AskError::Link(e.to_string()))?;
    // Our side is done: the agent answers, then ends its side, and the stream closes cleanly.
    wr.finish().map_err(|e| AskError::Link(e.to_string()))?;
    let reply: RecordingReply = read_frame_within(&mut rd, HANDSHAKE_TIMEOUT)
        .await
        .map_err(|e| AskError::NoAnswer(fernwart_transport::error_chain(&e)))?;
    if !reply.ok {
        return Err(AskError::Refused(reply.error.unwrap_or_default()));
    }
    Ok((reply, rd))
}

/// The recordings the agent holds (of `session`, or all).
pub async fn list(
    agent: &AgentView,
    session: Option<String>,
) -> Result<Vec<RecordingInfo>, AskError> {
    let (_, mut rd) = ask(agent, RecordingAsk::List { session }).await?;
    let body = tokio::time::timeout(ANSWER_TIMEOUT, async {
        let mut body = Vec::new();
        while let Some(chunk) = rd.chunk().await.map_err(|e| AskError::Invalid(e.to_string()))? {
            if body.len() + chunk.len() > MAX_LISTING {
                return Err(AskError::Invalid(format!("a listing over {MAX_LISTING} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    })
    .await
    .map_err(|_| AskError::NoAnswer(format!("no whole listing within {ANSWER_TIMEOUT:?}")))??;
    serde_json::from_slice(&body).map_err(|e| AskError::Invalid(e.to_string()))
}
