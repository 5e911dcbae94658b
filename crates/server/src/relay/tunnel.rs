//! One technician TCP connection: checked at the server, opened at the agent, then relayed.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use fernwart_proto::{OpenReply, OpenRequest, HANDSHAKE_TIMEOUT};
use fernwart_transport::{
    frame_io::{read_frame_within, write_last_frame},
    pipe::{self, mux_to_mux, Activity, Halt},
    write_frame, MuxReader, MuxStream, MuxWriter,
};
use tokio_util::sync::CancellationToken;

use super::{
    live::{CutSignal, Opening},
    tech_link::Technician,
    Relay,
};
use crate::{
    audit::{Entry, Event},
    authz::{self, Action, Object},
    util,
};

/// Everything a tunnel must stop for.
pub struct Guards {
    pub session: CancellationToken,
    pub user: CancellationToken,
    pub link: CancellationToken,
}

pub async fn serve(
    app: Relay,
    mut stream: MuxStream,
    session_id: i64,
    who: Technician,
    guards: Guards,
) {
    let user = who.name.clone();
    let req: OpenRequest = match read_frame_within(&mut stream, HANDSHAKE_TIMEOUT).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e, "tunnel open request failed");
            return;
        }
    };
    let target = req.target.clone();
    let opened = open(&app, session_id, &who, &target, req.e2e).await;
    let (agent_stream, switch, until, session, (machine, machine_org)) = match opened {
        Ok(opened) => opened,
        Err(reason) => {
            refused(&app, &who, &session_label(&app, session_id).await, &target, &reason);
            write_last_frame(stream, &OpenReply::refused(reason)).await;
            return;
        }
    };
    let left = Duration::from_secs(u64::try_from(until - util::now()).unwrap_or(0));
    let started = std::time::Instant::now();
    // The technician's first bytes follow the request to the agent at once; the agent reads
    // them only after its own checks. Its answer decides whether anything comes back.
    let (mut t_rd, mut t_wr) = stream.into_split();
    let (mut a_rd, mut a_wr) = agent_stream.into_split();
    let activity = Activity::default();
    let (bytes_up, bytes_down) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let cut = CutSignal::default();
    // Listed for the console from the agent's yes until the tunnel is done.
    let listed = Mutex::new(None);
    let tap = test_tap::open();
    let up = relay(&mut t_rd, &mut a_wr, &activity, &bytes_up, tap.as_ref().map(|t| &t.up));
    let down = async {
        let reason = match read_frame_within::<OpenReply, _>(&mut a_rd, HANDSHAKE_TIMEOUT).await {
            Ok(r) if r.ok => None,
            Ok(r) => Some(format!("agent refused: {}", r.error.unwrap_or_default())),
            Err(e) => Some(format!("agent did not answer: {e}")),
        };
        if let Some(reason) = reason {
            // Ended, the stream's later drop is a NO_ERROR reset from us (the HTTP/2 server of
            // technician links), which lets the answer out first.
            if write_frame(&mut t_wr, &OpenReply::refused(reason.clone())).await.is_ok() {
                let _ = t_wr.finish();
            }
            return Err(Halt::Refused(reason));
        }
        write_frame(&mut t_wr, &OpenReply::ok()).await.map_err(|e| Halt::Io(e.into_io()))?;
        app.audit.record(Entry::new(
            &user,
            &who.source,
            Event::TunnelOpen { session: session.clone(), target: target.clone() },
        ));
        let opening = Opening {
            session_id,
            session: session.clone(),
            machine: machine.clone(),
            machine_org: machine_org.clone(),
            user: user.clone(),
            target: target.clone(),
            since: util::now(),
            up: bytes_up.clone(),
            down: bytes_down.clone(),
            cut: cut.clone(),
        };
        *listed.lock().unwrap_or_else(|p| p.into_inner()) = Some(app.hub.tunnel_opened(opening));
        relay(&mut a_rd, &mut t_wr, &activity, &bytes_down, tap.as_ref().map(|t| &t.down))
            .await
            .map_err(Halt::Io)
    };
    let outcome = tokio::select! {
        r = pipe::both(up, down) => match r {
            Ok((up, down)) => format!("closed ({up} bytes up, {down} down)"),
            Err(Halt::Refused(reason)) => {
                refused(&app, &who, &session, &target, &reason);
                return;
            }
            Err(Halt::Io(e)) => format!("failed: {e}"),
        },
        _ = guards.session.cancelled() => "session ended".to_owned(),
        _ = cut.token.cancelled() => format!("cut by {}", cut.by()),
        _ = guards.user.cancelled() => "user disabled".to_owned(),
        _ = guards.link.cancelled() => "technician link closed".to_owned(),
        _ = switch.cancelled() => "key switch off or agent gone".to_owned(),
        _ = tokio::time::sleep(left) => "time window closed or login expired".to_owned(),
        _ = activity.idle(app.tunnel_idle) => {
            format!("idle for {} (sessions.tunnel_idle_timeout)", humantime::format_duration(app.tunnel_idle))
        }
    };
    drop(listed);
    let took = started.elapsed();
    let secs = took.as_secs();
    tracing::info!(session = %session, %target, %user, %outcome, secs, "tunnel closed");
    app.audit.record(Entry::new(
        &user,
        &who.source,
        Event::TunnelClose {
            session,
            target,
            outcome,
            seconds: secs,
            bytes_up: bytes_up.load(Ordering::Relaxed),
            bytes_down: bytes_down.load(Ordering::Relaxed),
            duration_ms: u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
        },
    ));
}

fn refused(app: &Relay, who: &Technician, session: &str, target: &str, reason: &str) {
    tracing::info!(%target, user = %who.name, %reason, "tunnel refused");
    app.audit.record(Entry::new(
        &who.name,
        &who.source,
        Event::TunnelRefused {
            session: session.into(),
            target: target.into(),
            reason: reason.into(),
        },
    ));
}

/// One direction of a tunnel, stream to stream. The bytes are opaque here: with end-to-end
/// encryption they are the Noise records between CLI and agent.
async fn relay(
    rd: &mut MuxReader,
    wr: &mut MuxWriter,
    activity: &Activity,
    carried: &AtomicU64,
    tap: Option<&test_tap::File>,
) -> std::io::Result<u64> {
    match tap {
        None => mux_to_mux(rd, wr, activity, carried).await,
        Some(tap) => {
            let mut total = 0u64;
            while let Some(chunk) = rd.chunk().await? {
                total += chunk.len() as u64;
                activity.tick();
                carried.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                tap.write(&chunk);
                wr.send_all(chunk).await?;
            }
            wr.finish()?;
            Ok(total)
        }
    }
}

/// Checks promise 2 at the server (the login, the account, the session, the target, the
/// machine), then asks the agent, which checks again on its own and answers on the returned
/// stream.
async fn open(
    app: &Relay,
    session_id: i64,
    who: &Technician,
    target: &str,
    e2e: Option<u8>,
) -> Result<Opened, String> {
    let token = who.token_hash.clone();
    let (session, caller) = app
        .store
        .run(move |b| b.tunnel_check(session_id, &token))
        .await
        .map_err(|e| format!("server error: {e}"))?;
    let session = session.ok_or("session is gone")?;
    let caller = caller.ok_or("login ended: log in again")?;
    let now = util::now();
    authz::decide(&caller, Action::TunnelOpen, Object::Session(&session), now)
        .map_err(|r| r.reason)?;
    if !session.usable(now) {
        return Err(format!("session {} is {}", session.name, session.state));
    }
    if !session.targets.iter().any(|t| t == target) {
        return Err(format!("target {target:?} is not part of session {}", session.name));
    }
    let agent = app
        .hub
        .agent(session.machine_id)
        .ok_or_else(|| format!("machine {} is offline", session.machine))?;
    if !agent.switch_on {
        return Err(format!("the key switch of machine {} is off", session.machine));
    }
    if !agent.targets.iter().any(|t| t.name == target) {
        return Err(format!("machine {} does not offer target {target:?}", session.machine));
    }
    let mut s = agent.mux.open().await.map_err(|e| format!("cannot reach the agent: {e}"))?;
    // The end-to-end version goes on unchanged; the Noise message behind the request follows
    // with the stream's other bytes.
    let req = OpenRequest { session: session.name.clone(), target: target.to_owned(), e2e };
    write_frame(&mut s, &req).await.map_err(|e| format!("agent link failed: {e}"))?;
    let until = session.until.min(caller.valid_until());
    Ok((s, agent.switch_token, until, session.name, (session.machine, session.machine_org)))
}

/// An opened tunnel: the agent's stream, the machine's switch, when it must end, the session's
/// name, the machine and its organization.
type Opened = (MuxStream, CancellationToken, i64, String, (String, Option<String>));

/// The session's name for the audit trail, or its id if it is gone.
async fn session_label(app: &Relay, session_id: i64) -> String {
    match app.store.run(move |b| b.session_by_id(session_id)).await {
        Ok(Some(s)) => s.name,
        _ => session_id.to_string(),
    }
}

/// A test hook: in debug builds, with `FERNWART_TEST_TAP=DIR` in the server's environment,
/// every tunnel's relayed bytes are also appended to `DIR/tunnel-N-up` and `DIR/tunnel-N-down`
/// (what the server sees of each direction after the open request and answer), so that a test
/// can show that plaintext never passes the server. Release builds have no such hook.
mod test_tap {
    use std::{
        io::Write,
        path::PathBuf,
        sync::{atomic::AtomicU64, Mutex, OnceLock},
    };

    pub struct Tap {
        pub up: File,
        pub down: File,
    }

    pub struct File(Mutex<std::fs::File>);

    impl File {
        pub fn write(&self, bytes: &[u8]) {
            let mut f = self.0.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = f.write_all(bytes) {
                tracing::warn!(error = %e, "test tap: cannot write");
            }
        }
    }

    fn dir() -> Option<&'static PathBuf> {
        static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
        DIR.get_or_init(|| {
            if cfg!(debug_assertions) {
                std::env::var_os("FERNWART_TEST_TAP").map(PathBuf::from)
            } else {
                None
            }
        })
        .as_ref()
    }

    pub fn open() -> Option<Tap> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = dir()?;
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let file = |dir_name: &str| {
            let path = dir.join(format!("tunnel-{n}-{dir_name}"));
            std::fs::File::create(&path)
                .map(|f| File(Mutex::new(f)))
                .map_err(|e| tracing::warn!(path = %path.display(), error = %e, "test tap"))
                .ok()
        };
        Some(Tap { up: file("up")?, down: file("down")? })
    }
}
