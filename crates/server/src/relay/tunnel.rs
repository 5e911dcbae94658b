//! One technician TCP connection: checked at the server, opened at the agent, then relayed.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use fernwart_proto::{OpenReply, OpenRequest, AGENT_HOLD_VERSION, HANDSHAKE_TIMEOUT};
use fernwart_transport::{
    frame_io::{read_frame_within, write_last_frame},
    pipe::{self, mux_to_mux, Activity, Halt},
    sealed, write_frame, MuxReader, MuxStream, MuxWriter,
};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use super::{
    live::{CutSignal, Opening},
    tech_link::Technician,
    Relay,
};
use crate::{
    audit::{Entry, Event},
    authz::{self, Action, Object},
    domain::{session::Session, Caller},
    util,
};

/// The session a technician link serves, as the link last read it: what lets a tunnel's open
/// go on to the agent while the store confirms it (the store's answer decides).
#[derive(Debug, Clone)]
pub struct SessionRef {
    pub id: i64,
    pub machine_id: i64,
    pub name: String,
    pub targets: Vec<String>,
}

/// Everything a tunnel must stop for.
pub struct Guards {
    pub session: CancellationToken,
    pub user: CancellationToken,
    pub link: CancellationToken,
}

pub async fn serve(
    app: Relay,
    mut stream: MuxStream,
    sref: SessionRef,
    who: Technician,
    guards: Guards,
) {
    let session_id = sref.id;
    let user = who.name.clone();
    let req: OpenRequest = match read_frame_within(&mut stream, HANDSHAKE_TIMEOUT).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e, "tunnel open request failed");
            return;
        }
    };
    let target = req.target.clone();
    // Only a few of a technician's tunnels open at a time: one who stalls its handshakes
    // holds at most MAX_OPENING_PER_USER of the machine's link streams, not all of them.
    let permit = tokio::select! {
        p = app.hub.opening(who.user_id).acquire_owned() => p.ok(),
        _ = tokio::time::sleep(HANDSHAKE_TIMEOUT) => None,
        _ = guards.link.cancelled() => return,
    };
    let Some(permit) = permit else {
        let reason = "too many of your tunnels are opening at once; try again".to_owned();
        refused(&app, &who, &session_label(&app, session_id).await, &target, &reason);
        write_last_frame(stream, &OpenReply::refused(reason)).await;
        return;
    };
    let activity = Activity::default();
    let (bytes_up, bytes_down) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let tap = test_tap::open();
    let ahead = Ahead { tech: &mut stream, carried: &bytes_up, tap: tap.as_ref().map(|t| &t.up) };
    let opened = open(&app, &sref, &who, &guards, &req, ahead).await;
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
    let cut = CutSignal::default();
    // Listed for the console from the agent's yes until the tunnel is done.
    let listed = Mutex::new(None);
    let up = relay(&mut t_rd, &mut a_wr, &activity, &bytes_up, tap.as_ref().map(|t| &t.up));
    let down = async {
        let reason = match read_frame_within::<OpenReply, _>(&mut a_rd, HANDSHAKE_TIMEOUT).await {
            Ok(r) if r.ok => None,
            Ok(r) => Some(format!("agent refused: {}", r.error.unwrap_or_default())),
            Err(e) => Some(format!("agent did not answer: {e}")),
        };
        // Opened or refused: the next of this technician's tunnels may open.
        drop(permit);
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
    // The setting in force when the tunnel opens holds for it.
    let idle = app.settings.get().tunnel_idle;
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
        _ = activity.idle(idle) => {
            format!("idle for {} (sessions.tunnel_idle_timeout)", humantime::format_duration(idle))
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

/// The technician's stream while the tunnel opens, for the first Noise message that goes ahead.
struct Ahead<'a> {
    tech: &'a mut MuxStream,
    carried: &'a AtomicU64,
    tap: Option<&'a test_tap::File>,
}

/// Checks promise 2 at the server (the login, the account, the session, the target, the
/// machine), then asks the agent, which checks again on its own and answers on the returned
/// stream.
///
/// The store's answer takes a thread hand-off; meanwhile the stream to the agent opens, and
/// where the link already knows the tunnel as allowed (session target, agent target, switch
/// on, neither session nor user revoked) and the agent speaks link version 4, the request goes
/// ahead marked `hold` with the technician's first Noise message: the agent checks and computes
/// its part but touches the target only on the `ok` decision sent here after every check has
/// passed. A refused tunnel gets a refused decision (the agent drops it without a trace, as it
/// touched nothing); otherwise the request goes only after the checks.
async fn open(
    app: &Relay,
    sref: &SessionRef,
    who: &Technician,
    guards: &Guards,
    req: &OpenRequest,
    ahead: Ahead<'_>,
) -> Result<Opened, String> {
    let target = req.target.as_str();
    let agent = app.hub.agent(sref.machine_id);
    let held = agent.as_ref().is_some_and(|a| {
        a.link_version >= AGENT_HOLD_VERSION
            && req.e2e.is_some()
            && a.switch_on
            && a.targets.iter().any(|t| t.name == target)
            && sref.targets.iter().any(|t| t == target)
            && !guards.session.is_cancelled()
            && !guards.user.is_cancelled()
    });
    let check = async {
        // The request to the agent (below) leaves first: the check may read on this thread.
        tokio::task::yield_now().await;
        app.store.tunnel_check(sref.id, who.token_hash.clone()).await
    };
    let early = async {
        let Some(a) = &agent else { return Ok::<_, String>(None) };
        // A link whose streams are all taken gets no new one until one ends: not forever.
        let mut s = tokio::time::timeout(HANDSHAKE_TIMEOUT, a.mux.open())
            .await
            .map_err(|_| "the machine's link is busy: try again".to_owned())?
            .map_err(|e| format!("cannot reach the agent: {e}"))?;
        if held {
            let req = OpenRequest {
                session: sref.name.clone(),
                target: target.to_owned(),
                e2e: req.e2e,
                hold: true,
            };
            write_frame(&mut s, &req).await.map_err(|e| format!("agent link failed: {e}"))?;
            let body = sealed::read_record(ahead.tech, HANDSHAKE_TIMEOUT)
                .await
                .map_err(|e| format!("no end-to-end handshake: {e}"))?;
            let mut record = u16::try_from(body.len())
                .map_err(|_| "end-to-end handshake message too long".to_owned())?
                .to_be_bytes()
                .to_vec();
            record.extend_from_slice(&body);
            ahead.carried.fetch_add(record.len() as u64, Ordering::Relaxed);
            if let Some(tap) = ahead.tap {
                tap.write(&record);
            }
            s.write_all(&record).await.map_err(|e| format!("agent link failed: {e}"))?;
        }
        Ok(Some(s))
    };
    let (stream, checked) = tokio::join!(early, check);
    let mut stream = stream?;
    let decided = decide(sref, req, agent.as_ref(), checked);
    if held {
        match &decided {
            Ok(_) => {
                if let Some(s) = &mut stream {
                    write_frame(s, &OpenReply::ok())
                        .await
                        .map_err(|e| format!("agent link failed: {e}"))?;
                }
            }
            // Ended after the decision (not reset): the agent reads why and lets go.
            Err(reason) => {
                if let Some(mut s) = stream.take() {
                    if write_frame(&mut s, &OpenReply::refused(reason.clone())).await.is_ok() {
                        s.end();
                    }
                }
            }
        }
    }
    let (agent, until, session, machine) = decided?;
    let mut s = stream.ok_or_else(|| format!("machine {session} is offline"))?;
    if !held {
        // The end-to-end version goes on unchanged; the Noise message behind the request
        // follows with the stream's other bytes.
        let req = OpenRequest {
            session: session.clone(),
            target: target.to_owned(),
            e2e: req.e2e,
            hold: false,
        };
        write_frame(&mut s, &req).await.map_err(|e| format!("agent link failed: {e}"))?;
    }
    Ok((s, agent.switch_token, until, session, machine))
}

/// An allowed tunnel: the agent to ask, the tunnel's end, the session's name, the machine and
/// its organization.
type Decided = (super::AgentView, i64, String, (String, Option<String>));

/// The server's decision on a tunnel, from the store's fresh reading of the login and the
/// session and the hub's view of the agent: the agent to ask, the tunnel's end, the session.
fn decide(
    sref: &SessionRef,
    req: &OpenRequest,
    agent: Option<&super::AgentView>,
    checked: Result<(Option<Session>, Option<Caller>), crate::store::StoreError>,
) -> Result<Decided, String> {
    let target = req.target.as_str();
    let (session, caller) = checked.map_err(|e| format!("server error: {e}"))?;
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
    let agent = agent.ok_or_else(|| format!("machine {} is offline", session.machine))?;
    if session.machine_id != sref.machine_id || session.name != sref.name {
        return Err(format!("session {} changed: connect again", session.name));
    }
    if !agent.switch_on {
        return Err(format!("the key switch of machine {} is off", session.machine));
    }
    if !agent.targets.iter().any(|t| t.name == target) {
        return Err(format!("machine {} does not offer target {target:?}", session.machine));
    }
    let until = session.until.min(caller.valid_until());
    Ok((agent.clone(), until, session.name, (session.machine, session.machine_org)))
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
