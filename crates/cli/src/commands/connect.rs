//! `fernwart connect`: wait for the session's release, then one local port per target.

use std::{net::IpAddr, sync::Arc, time::Duration};

use anyhow::{bail, Context as _};
use bytes::{Bytes, BytesMut};
use fernwart_proto::{
    e2e::{self, Initiator, PublicKey, StaticKey},
    ClientToServer, OpenReply, OpenRequest, ServerToClient, HANDSHAKE_TIMEOUT, PROTOCOL_VERSION,
};
use fernwart_transport::{
    frame_io::read_frame_within,
    pipe::{self, Halt},
    read_frame, sealed, write_frame, Mode, Mux,
};
use serde::Serialize;
use tokio::{
    io::AsyncReadExt,
    net::{TcpListener, TcpStream},
};

use super::admin::enc;
use crate::{output, Context};

/// The server pings every 15 s; a link silent for this long is dead (DESIGN: connect notices).
const SERVER_SILENCE: Duration = Duration::from_secs(45);
/// How long a new tunnel waits for the local tool's first bytes, which then travel inside the
/// end-to-end handshake's first message (no round trip of their own). Tools that wait for the
/// target to speak first (VNC, …) start this much later.
const FIRST_BYTES_WAIT: Duration = Duration::from_millis(2);

/// Both ends' end-to-end keys for the tunnels of one `connect`.
struct Keys {
    tech: StaticKey,
    agent: PublicKey,
}

/// `connect --json`: the one line printed once every forward listens.
#[derive(Serialize)]
struct Opened<'a> {
    session: &'a str,
    forwards: Vec<Forward<'a>>,
}

/// One target and the local address that reaches it.
#[derive(Serialize)]
struct Forward<'a> {
    target: &'a str,
    local: String,
}

pub async fn run(ctx: &Context, session: &str, bind: IpAddr, wait: Duration) -> anyhow::Result<()> {
    let login = ctx.load_login()?;
    let tech_key = super::e2e::tech_key(ctx)?;
    let client = ctx.client()?;
    let io = client.link(&format!("/v1/connect/{}", enc(session)), Some(&login.token)).await?;
    let (mux, _inbound) = Mux::start(io, Mode::Client).await.context("starting the link")?;
    let mut control = mux.open().await.context("opening the control stream")?;
    write_frame(
        &mut control,
        &ClientToServer::Hello {
            version: PROTOCOL_VERSION,
            client: format!("fernwart {}", env!("CARGO_PKG_VERSION")),
            e2e_key: Some(tech_key.public().to_string()),
        },
    )
    .await?;
    let (mut rd, wr) = control.into_split();
    let (pong_tx, mut pong_rx) = tokio::sync::mpsc::channel::<u64>(4);
    tokio::spawn(async move {
        let mut wr = wr;
        while let Some(nonce) = pong_rx.recv().await {
            if write_frame(&mut wr, &ClientToServer::Pong { nonce }).await.is_err() {
                break;
            }
        }
    });
    let deadline = tokio::time::Instant::now() + wait;
    let mut said = String::new();
    let (targets, machine, agent_key) = loop {
        let frame = tokio::select! {
            f = tokio::time::timeout(SERVER_SILENCE, read_frame::<ServerToClient, _>(&mut rd)) => {
                f.map_err(|_| anyhow::anyhow!("connection to the server lost: silent for {}s", SERVER_SILENCE.as_secs()))?
            }
            _ = tokio::time::sleep_until(deadline) => bail!("gave up waiting after {} (--wait)", humantime::format_duration(wait)),
            _ = tokio::signal::ctrl_c() => bail!("interrupted while waiting"),
        };
        match frame.context("connection to the server lost")? {
            ServerToClient::Waiting { state, message } => {
                if message != said {
                    eprintln!("session {session} is {state}: {message}");
                    said = message;
                }
            }
            ServerToClient::Ready { targets, machine, agent_key, .. } => {
                break (targets, machine, agent_key)
            }
            ServerToClient::Notice { message } => eprintln!("session {session}: {message}"),
            ServerToClient::Closed { reason, .. } => bail!("{reason}"),
            ServerToClient::Ping { nonce } => {
                let _ = pong_tx.send(nonce).await;
            }
        }
    };
    let Some(machine) = machine else {
        bail!("the server did not name the session's machine: it is older than this fernwart");
    };
    let agent = super::e2e::check_agent_key(ctx, &login.server, &machine, agent_key.as_deref())?;
    let keys = Arc::new(Keys { tech: tech_key, agent });
    let mut forwards = Vec::new();
    for t in &targets {
        let listener = TcpListener::bind((bind, 0))
            .await
            .with_context(|| format!("cannot listen on {bind} for target {t}"))?;
        let local = listener.local_addr()?;
        forwards.push(Forward { target: t, local: local.to_string() });
        let keys = keys.clone();
        tokio::spawn(accept_loop(listener, mux.clone(), session.to_owned(), t.clone(), keys));
    }
    if ctx.json {
        output::print_json(&Opened { session, forwards });
    } else {
        crate::out!("session {session} is open; point your tools at:");
        for f in &forwards {
            crate::out!("  {:<12} {}", f.target, f.local);
        }
        crate::out!("press Ctrl-C to leave");
    }
    let outcome = loop {
        tokio::select! {
            f = tokio::time::timeout(SERVER_SILENCE, read_frame::<ServerToClient, _>(&mut rd)) => match f {
                Ok(Ok(ServerToClient::Closed { state, reason })) => break Ok((state, reason)),
                Ok(Ok(ServerToClient::Ping { nonce })) => { let _ = pong_tx.send(nonce).await; }
                Ok(Ok(ServerToClient::Notice { message })) => eprintln!("session {session}: {message}"),
                Ok(Ok(other)) => break Err(anyhow::anyhow!("unexpected message from server: {other:?}")),
                Ok(Err(e)) => break Err(anyhow::anyhow!("connection to the server lost: {e}")),
                // The server pings every 15 s: three missed pings, the link is dead.
                Err(_) => break Err(anyhow::anyhow!("connection to the server lost: silent for {}s", SERVER_SILENCE.as_secs())),
            },
            _ = tokio::signal::ctrl_c() => break Ok(("left".into(), "you left the session".into())),
        }
    };
    mux.close();
    let (state, reason) = outcome?;
    match state.as_str() {
        "ended" | "expired" | "left" => {
            eprintln!("{reason}");
            Ok(())
        }
        _ => bail!("{reason}"),
    }
}

async fn accept_loop(
    listener: TcpListener,
    mux: Mux,
    session: String,
    target: String,
    keys: Arc<Keys>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = mux.closed() => return,
        };
        let Ok((tcp, _)) = accepted else { continue };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(tunnel(tcp, mux.clone(), session.clone(), target.clone(), keys.clone()));
    }
}

async fn tunnel(tcp: TcpStream, mux: Mux, session: String, target: String, keys: Arc<Keys>) {
    if let Err(why) = tunnel_inner(tcp, mux, &session, &target, &keys).await {
        eprintln!("connection to {target} {why}");
    }
}

/// One tunnel, end-to-end encrypted: the open request leaves at once (the server checks while
/// the local tool says its first bytes), then the first Noise message with those bytes; the
/// answer brings the agent's. `Err` is a refusal or a failed handshake, to tell the user;
/// once open, an I/O error is one side hanging up, as with copy_bidirectional: no message.
async fn tunnel_inner(
    tcp: TcpStream,
    mux: Mux,
    session: &str,
    target: &str,
    keys: &Keys,
) -> Result<(), String> {
    let Ok(stream) = mux.open().await else { return Ok(()) };
    let (mut s_rd, mut s_wr) = stream.into_split();
    let req = OpenRequest {
        session: session.to_owned(),
        target: target.to_owned(),
        e2e: Some(e2e::VERSION),
        hold: false,
    };
    let frame = fernwart_proto::encode(&req).map_err(|e| format!("failed: {e}"))?;
    if s_wr.send_all(Bytes::from(frame)).await.is_err() {
        return Ok(());
    }
    // This runtime has one thread: let the link write the request out now, so that the server
    // checks it while the first Noise message is computed here.
    tokio::task::yield_now().await;
    let (mut t_rd, mut t_wr) = tcp.into_split();
    let mut early = BytesMut::with_capacity(e2e::MAX_EARLY_DATA);
    let _ = tokio::time::timeout(FIRST_BYTES_WAIT, t_rd.read_buf(&mut early)).await;
    let mut msg1 = BytesMut::new();
    let (initiator, took) = Initiator::start(
        &keys.tech,
        &keys.agent,
        session,
        target,
        rand::random(),
        now_ms(),
        &early,
        &mut msg1,
    )
    .map_err(|e| format!("failed: {}", fernwart_transport::error_chain(&e)))?;
    if s_wr.send_all(msg1.freeze()).await.is_err() {
        return Ok(());
    }
    let rest = early.split_off(took);
    // The sending half waits for the keys of the agent's answer.
    let (sealer_tx, sealer_rx) = tokio::sync::oneshot::channel();
    let up = async {
        let Ok(mut sealer) = sealer_rx.await else {
            return Err(std::io::Error::other("no end-to-end handshake"));
        };
        sealed::socket_to_mux(t_rd, &mut s_wr, &mut sealer, &rest).await
    };
    let down = async {
        match read_frame_within::<OpenReply, _>(&mut s_rd, HANDSHAKE_TIMEOUT * 2).await {
            Ok(r) if r.ok => {}
            Ok(r) => {
                return Err(Halt::Refused(format!("refused: {}", r.error.unwrap_or_default())))
            }
            Err(e) => return Err(Halt::Refused(format!("failed: {e}"))),
        }
        let reply = sealed::read_record(&mut s_rd, HANDSHAKE_TIMEOUT)
            .await
            .map_err(|e| Halt::Refused(format!("failed: {e}")))?;
        let e2e::Transport { sealer, mut opener } = initiator.finish(&reply).map_err(|e| {
            Halt::Refused(format!(
                "failed: {} (is this the agent whose key is pinned?)",
                fernwart_transport::error_chain(&e)
            ))
        })?;
        let _ = sealer_tx.send(sealer);
        sealed::mux_to_socket(&mut s_rd, &mut opener, &mut t_wr).await.map_err(Halt::Io)
    };
    match pipe::both(up, down).await {
        Err(Halt::Refused(why)) => Err(why),
        _ => Ok(()),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_json_line_keeps_its_contract() {
        let line = Opened {
            session: "s1",
            forwards: vec![Forward { target: "plc", local: "127.0.0.1:40123".into() }],
        };
        assert_eq!(
            serde_json::to_value(&line).unwrap(),
            serde_json::json!({"session": "s1", "forwards": [{"target": "plc", "local": "127.0.0.1:40123"}]})
        );
    }
}
