//! A technician's `fernwart connect` link: wait for approval, then carry tunnels.

use std::time::Duration;

use fernwart_proto::{
    negotiate, ClientToServer, ServerToClient, HANDSHAKE_TIMEOUT, PROTOCOL_VERSION,
};
use fernwart_transport::{
    frame_io::{read_frame_within, write_last_frame},
    write_frame, Mux, MuxStream,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    grant_for,
    tunnel::{self, Guards},
    GrantAnswer, Relay,
};
use crate::{
    audit::{Entry, Event},
    domain::{SessionEvent, SessionState, UnixSecs},
    sessions,
    store::TechKey,
    util,
};

const PING_EVERY: Duration = Duration::from_secs(15);
/// How long before a session's window ends its technicians are told (seconds).
const WARN_BEFORE: i64 = 5 * 60;
/// A technician link that answers nothing for this long is dead (promise 3: tunnels close).
const IDLE_LIMIT: Duration = Duration::from_secs(45);

async fn keepalive_reader(
    mut rd: fernwart_transport::MuxReader,
    link: CancellationToken,
    mux: Mux,
) {
    // Anything but a timely pong ends the link.
    while let Ok(Ok(ClientToServer::Pong { .. })) = tokio::time::timeout(
        IDLE_LIMIT,
        fernwart_transport::read_frame::<ClientToServer, _>(&mut rd),
    )
    .await
    {}
    link.cancel();
    mux.close();
}

/// Why a technician link ends.
enum Closing {
    /// The session is over (ended, rejected, expired, revoked).
    Session(SessionState),
    /// The session no longer exists.
    Gone,
    Error,
    /// The technician's side went away: nobody to tell.
    Left,
    LoginExpired,
    UserDisabled,
    ShuttingDown,
    /// The machine's agent refused the grant (its operator's check).
    GrantRefused,
}

impl Closing {
    /// The `state` of the last frame to the technician (none when they left).
    fn wire(&self) -> Option<&'static str> {
        Some(match self {
            Closing::Session(s) => s.as_str(),
            Closing::Gone => "gone",
            Closing::Error => "error",
            Closing::Left => return None,
            Closing::LoginExpired => "expired",
            Closing::UserDisabled => "revoked",
            Closing::ShuttingDown => "unavailable",
            Closing::GrantRefused => "refused",
        })
    }
}

#[derive(Clone)]
pub struct Technician {
    pub user_id: i64,
    pub name: String,
    pub source: String,
    /// The hash of the login token the link was opened with: every tunnel checks it again.
    pub token_hash: String,
    /// The earlier of the login's and the account's end: the link closes then.
    pub valid_until: UnixSecs,
}

pub async fn serve(
    app: Relay,
    mux: Mux,
    mut inbound: mpsc::Receiver<MuxStream>,
    session_id: i64,
    who: Technician,
) {
    let Ok(Some(mut control)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, inbound.recv()).await
    else {
        mux.close();
        return;
    };
    let e2e_key = match read_frame_within::<ClientToServer, _>(&mut control, HANDSHAKE_TIMEOUT)
        .await
    {
        Ok(ClientToServer::Hello { version, e2e_key, .. }) if negotiate(version).is_ok() => e2e_key,
        Ok(ClientToServer::Pong { .. }) => {
            mux.close();
            return;
        }
        Ok(ClientToServer::Hello { version, .. }) => {
            let reason =
                format!("client protocol {version} unsupported, server speaks {PROTOCOL_VERSION}");
            let refused = ServerToClient::Closed { state: "refused".into(), reason };
            write_last_frame(control, &refused).await;
            mux.close();
            return;
        }
        Err(e) => {
            tracing::info!(error = %e, "technician handshake failed");
            mux.close();
            return;
        }
    };
    // Tunnels are end-to-end encrypted (docs/design-choices.md): the session's grant names the
    // key of each technician who connects, and agents refuse tunnels without it.
    // An approver's signature covers the keys: a key that comes after a signed approval is
    // not added (the agent would refuse the whole grant), and the technician hears why their
    // tunnels will be refused.
    let mut unsigned_key = false;
    let reason = match e2e_key.as_deref().map(str::parse::<fernwart_proto::e2e::PublicKey>) {
        Some(Ok(key)) => {
            let key = key.to_string();
            match app.store.run(move |b| b.session_tech_key(session_id, &key)).await {
                Ok(TechKey::Named | TechKey::Added) => None,
                Ok(TechKey::SignedWithout) => {
                    unsigned_key = true;
                    None
                }
                Err(e) => Some(format!("server error: {e}")),
            }
        }
        Some(Err(_)) => Some("your end-to-end key is malformed".to_owned()),
        None => Some("this server's tunnels are end-to-end encrypted: update fernwart".to_owned()),
    };
    if let Some(reason) = reason {
        let refused = ServerToClient::Closed { state: "refused".into(), reason };
        write_last_frame(control, &refused).await;
        mux.close();
        return;
    }
    if unsigned_key {
        let msg = ServerToClient::Notice {
            message: "its signed approval does not name this fernwart's end-to-end key (it was \
                      approved before you connected from here), so the machine will refuse \
                      its tunnels: the approver signs the keys of the technicians who connected"
                .into(),
        };
        if write_frame(&mut control, &msg).await.is_err() {
            mux.close();
            return;
        }
    }
    let link = CancellationToken::new();
    let (rd, mut control) = control.into_split();
    tokio::spawn(keepalive_reader(rd, link.clone(), mux.clone()));
    let mut ping = tokio::time::interval(PING_EVERY);
    let mut nonce = 0u64;
    let session_token = app.hub.session_token(session_id);
    let user_token = app.hub.user_token(who.user_id);
    let mut changes = app.hub.session_watch(session_id);
    // The user may have been disabled between the login check and `user_token`: read the
    // login again now that a later disable would cancel the token we hold.
    let token = who.token_hash.clone();
    if !matches!(app.store.run(move |b| b.caller(&token)).await, Ok(Some(c)) if !c.disabled) {
        mux.close();
        return;
    }
    let mut ready = false;
    let mut sref: tunnel::SessionRef;
    let mut warned = false;
    let mut session_name = session_id.to_string();
    let login_ends = tokio::time::Instant::now()
        + Duration::from_secs(u64::try_from(who.valid_until - util::now()).unwrap_or(0));
    let closed = loop {
        let s = match app.store.run(move |b| b.session_by_id(session_id)).await {
            Ok(Some(s)) => s,
            Ok(None) => break (Closing::Gone, "session deleted".to_owned()),
            Err(e) => break (Closing::Error, format!("server error: {e}")),
        };
        session_name.clone_from(&s.name);
        sref = tunnel::SessionRef {
            id: session_id,
            machine_id: s.machine_id,
            name: s.name.clone(),
            targets: s.targets.clone(),
        };
        let now = util::now();
        if s.is_terminal() {
            let by = s.ended_by.clone().or(s.decided_by.clone()).unwrap_or_default();
            break (
                Closing::Session(s.state),
                format!(
                    "session {} is {} {}",
                    s.name,
                    s.state,
                    if by.is_empty() { String::new() } else { format!("(by {by})") }
                )
                .trim()
                .to_owned(),
            );
        }
        if now >= s.until {
            sessions::expire(&app.store, &app.events, s.id, now).await;
            continue;
        }
        let mut wait_until = s.until;
        if !ready {
            if now < s.from {
                let msg = ServerToClient::Waiting {
                    state: s.state.to_string(),
                    message: format!("session window opens at {}", util::rfc3339(s.from)),
                };
                if write_frame(&mut control, &msg).await.is_err() {
                    break (Closing::Left, "technician left".into());
                }
                wait_until = s.from;
            } else if s.state == SessionState::Prepared && s.approval_required {
                match sessions::apply(
                    &app.store,
                    &app.events,
                    s.id,
                    SessionEvent::Request,
                    &who.name,
                    &who.source,
                    now,
                )
                .await
                {
                    Ok(_)
                    | Err(sessions::ApplyError::Refused { .. } | sessions::ApplyError::Busy(_)) => {
                    }
                    Err(e) => break (Closing::Error, format!("cannot request session: {e}")),
                }
                continue;
            } else if s.state == SessionState::Requested {
                let msg = ServerToClient::Waiting {
                    state: s.state.to_string(),
                    message: "waiting for the operator's approval".into(),
                };
                if write_frame(&mut control, &msg).await.is_err() {
                    break (Closing::Left, "technician left".into());
                }
            } else if s.usable(now) {
                if s.state != SessionState::Active {
                    match sessions::apply(
                        &app.store,
                        &app.events,
                        s.id,
                        SessionEvent::Activate,
                        &who.name,
                        &who.source,
                        now,
                    )
                    .await
                    {
                        Ok(_)
                        | Err(
                            sessions::ApplyError::Refused { .. } | sessions::ApplyError::Busy(_),
                        ) => {}
                        Err(e) => break (Closing::Error, format!("cannot activate session: {e}")),
                    }
                    continue;
                }
                match app.hub.grant(s.machine_id, grant_for(&s)).await {
                    GrantAnswer::Held => {}
                    GrantAnswer::NoAnswer => {
                        tracing::info!(session = %s.name, "agent did not acknowledge the grant (offline?)");
                    }
                    // The machine's operator did not release this grant (unsigned, changed,
                    // replayed): nothing to wait for; the approver has to sign it.
                    GrantAnswer::Refused(reason) => {
                        break (
                            Closing::GrantRefused,
                            format!("the machine refused the session's grant: {reason}"),
                        );
                    }
                }
                let agent_key = match app.store.run(move |b| b.machine_e2e_key(s.machine_id)).await
                {
                    Ok(k) => k,
                    Err(e) => break (Closing::Error, format!("server error: {e}")),
                };
                let msg = ServerToClient::Ready {
                    version: PROTOCOL_VERSION,
                    session: s.name.clone(),
                    targets: s.targets.clone(),
                    machine: Some(s.machine.clone()),
                    agent_key,
                };
                if write_frame(&mut control, &msg).await.is_err() {
                    break (Closing::Left, "technician left".into());
                }
                app.audit.record(Entry::new(
                    &who.name,
                    &who.source,
                    Event::Connect { session: s.name.clone(), targets: s.targets.clone() },
                ));
                ready = true;
            }
        }
        let left = Duration::from_secs(u64::try_from(wait_until - now).unwrap_or(0).max(1));
        // The technician hears WARN_BEFORE ahead that the window closes.
        let wait_until_end = s.until;
        let warn_in = Duration::from_secs(u64::try_from(s.until - WARN_BEFORE - now).unwrap_or(0));
        tokio::select! {
            r = changes.changed() => if r.is_err() { break (Closing::Gone, "server shutting down".into()) },
            _ = tokio::time::sleep(left) => {},
            s = inbound.recv(), if ready => match s {
                Some(stream) => {
                    let guards = Guards { session: session_token.clone(), user: user_token.clone(), link: link.clone() };
                    app.tasks.spawn(tunnel::serve(app.clone(), stream, sref.clone(), who.clone(), guards));
                }
                None => break (Closing::Left, "technician left".into()),
            },
            _ = mux.closed() => break (Closing::Left, "technician left".into()),
            _ = link.cancelled() => break (Closing::Left, "technician silent too long".into()),
            _ = ping.tick() => {
                nonce += 1;
                // A link in use keeps its login from going idle (once a minute).
                if nonce.is_multiple_of(4) {
                    let (token, now) = (who.token_hash.clone(), util::now());
                    if let Err(e) = app.store.run(move |b| b.login_used(&token, now)).await {
                        tracing::warn!(error = %e, "cannot record the login's use");
                    }
                }
                if write_frame(&mut control, &ServerToClient::Ping { nonce }).await.is_err() {
                    break (Closing::Left, "technician left".into());
                }
            }
            _ = tokio::time::sleep(warn_in), if ready && !warned => {
                warned = true;
                let left = (wait_until_end - util::now()).max(0);
                let msg = ServerToClient::Notice {
                    message: format!("the session's window ends in {} min {} s; its tunnels close then", left / 60, left % 60),
                };
                if write_frame(&mut control, &msg).await.is_err() {
                    break (Closing::Left, "technician left".into());
                }
            }
            _ = tokio::time::sleep_until(login_ends) => break (Closing::LoginExpired, "login or account expired: log in again".into()),
            _ = user_token.cancelled() => break (Closing::UserDisabled, format!("user {} was disabled", who.name)),
            _ = app.shutdown.cancelled() => break (Closing::ShuttingDown, "server shutting down".into()),
        }
    };
    link.cancel();
    let (closing, reason) = closed;
    if matches!(closing, Closing::Left) {
        // DESIGN §4 promise 3: a dropped technician link takes its login with it; resuming
        // needs a fresh authentication with the second factor.
        let entry = Entry::new(
            &who.name,
            &who.source,
            Event::LoginEnded {
                user: who.name.clone(),
                reason: format!("link to {session_name} dropped: {reason}"),
            },
        );
        let token = who.token_hash.clone();
        if let Err(e) = app.store.run(move |b| b.logout(&token, &entry)).await {
            tracing::error!(error = %e, "cannot end the login of a dropped link");
        }
    }
    if let Some(state) = closing.wire() {
        let last = ServerToClient::Closed { state: state.to_owned(), reason: reason.clone() };
        if let Ok(Ok(())) =
            tokio::time::timeout(Duration::from_secs(2), write_frame(&mut control, &last)).await
        {
            control.end();
        }
    }
    app.audit.record(Entry::new(
        &who.name,
        &who.source,
        Event::Disconnect { session: session_name, reason },
    ));
    mux.close();
}
