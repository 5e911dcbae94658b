//! `fernwart connect`: wait for the session's release, then one local port per target.

use std::{net::IpAddr, time::Duration};

use anyhow::{bail, Context as _};
use fernwart_proto::{
    ClientToServer, OpenReply, OpenRequest, ServerToClient, HANDSHAKE_TIMEOUT, PROTOCOL_VERSION,
};
use fernwart_transport::{
    frame_io::read_frame_within,
    pipe::{self, mux_to_socket, socket_to_mux, Halt},
    read_frame, write_frame, Mode, Mux,
};
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};

use super::admin::enc;
use crate::{output, Context};

/// The server pings every 15 s; a link silent for this long is dead (DESIGN: connect notices).
const SERVER_SILENCE: Duration = Duration::from_secs(45);

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
    let client = ctx.client()?;
    let io = client.link(&format!("/v1/connect/{}", enc(session)), Some(&login.token)).await?;
    let (mux, _inbound) = Mux::start(io, Mode::Client).await.context("starting the link")?;
    let mut control = mux.open().await.context("opening the control stream")?;
    write_frame(
        &mut control,
        &ClientToServer::Hello {
            version: PROTOCOL_VERSION,
            client: format!("fernwart {}", env!("CARGO_PKG_VERSION")),
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
    let targets = loop {
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
            ServerToClient::Ready { targets, .. } => break targets,
            ServerToClient::Notice { message } => eprintln!("session {session}: {message}"),
            ServerToClient::Closed { reason, .. } => bail!("{reason}"),
            ServerToClient::Ping { nonce } => {
                let _ = pong_tx.send(nonce).await;
            }
        }
    };
    let mut forwards = Vec::new();
    for t in &targets {
        let listener = TcpListener::bind((bind, 0))
            .await
            .with_context(|| format!("cannot listen on {bind} for target {t}"))?;
        let local = listener.local_addr()?;
        forwards.push(Forward { target: t, local: local.to_string() });
        tokio::spawn(accept_loop(listener, mux.clone(), session.to_owned(), t.clone()));
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

async fn accept_loop(listener: TcpListener, mux: Mux, session: String, target: String) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = mux.closed() => return,
        };
        let Ok((tcp, _)) = accepted else { continue };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(tunnel(tcp, mux.clone(), session.clone(), target.clone()));
    }
}

async fn tunnel(tcp: TcpStream, mux: Mux, session: String, target: String) {
    let Ok(mut stream) = mux.open().await else { return };
    if write_frame(&mut stream, &OpenRequest { session, target: target.clone() }).await.is_err() {
        return;
    }
    // The local side's first bytes go out at once, behind the open request; the far side
    // reads them only once the server and the agent have both said yes.
    let (mut s_rd, mut s_wr) = stream.into_split();
    let (t_rd, mut t_wr) = tcp.into_split();
    let up = socket_to_mux(t_rd, &mut s_wr);
    let down = async {
        match read_frame_within::<OpenReply, _>(&mut s_rd, HANDSHAKE_TIMEOUT * 2).await {
            Ok(r) if r.ok => {}
            Ok(r) => {
                return Err(Halt::Refused(format!("refused: {}", r.error.unwrap_or_default())))
            }
            Err(e) => return Err(Halt::Refused(format!("failed: {e}"))),
        }
        mux_to_socket(&mut s_rd, &mut t_wr).await.map_err(Halt::Io)
    };
    // Once open, an I/O error is one side hanging up, as with copy_bidirectional: no message.
    if let Err(Halt::Refused(why)) = pipe::both(up, down).await {
        eprintln!("connection to {target} {why}");
    }
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
