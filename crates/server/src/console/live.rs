//! Live pages: server-sent events (`GET /events`) that say which part of the state changed,
//! the script (`/console.js`) that fetches the page again and swaps its live parts, and the
//! live connections with their cut button.
//!
//! An event carries only its kind (`sessions`, `machines`, `connections`): what a page then
//! shows is decided by the same authorization as any page load. A viewer hears only kinds it
//! may list, and of sessions, tunnels and machines only those its organization may see.
//! Without the script, pages read the same; they are just not refreshed.

use std::{collections::HashSet, convert::Infallible, time::Duration};

use axum::{
    body::Bytes,
    extract::{Path, State},
    http::{header, StatusCode},
    response::{
        sse::{Event as SseEvent, KeepAlive, Sse},
        IntoResponse, Redirect, Response,
    },
};
use maud::{html, Markup};
use tokio::sync::broadcast::{self, error::RecvError};

use super::{
    i18n::{Lang, Msg},
    Form, Viewer,
};
use crate::{
    api::ApiError,
    audit::{Entry, Event},
    authz::{self, Action, Object},
    domain::{Caller, Role, UnixSecs},
    relay::live::{Pulse, TunnelView},
    util, App,
};

const SCRIPT: &str = include_str!("console.js");

/// How often byte counts of open tunnels are looked at (an event only when they moved).
const BYTES_EVERY: Duration = Duration::from_secs(2);
/// How often a listening login is checked again (ended, expired, disabled, idle).
const LOGIN_EVERY: Duration = Duration::from_secs(30);

pub async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        SCRIPT,
    )
        .into_response()
}

/// Whether `c` hears of `p`: it may list what changed, on a machine its organization sees.
fn hears(c: &Caller, p: &Pulse, now: UnixSecs) -> bool {
    let action = match p {
        Pulse::Machines { .. } => Action::MachineList,
        Pulse::Sessions { .. } | Pulse::Connections { .. } => Action::SessionList,
    };
    authz::decide(c, action, Object::None, now).is_ok() && p.org().is_none_or(|o| c.sees_org(o))
}

/// Whether `c` is shown tunnel `t` at all (before the session check of the page).
fn sees_tunnel(c: &Caller, t: &TunnelView) -> bool {
    c.sees_org(t.machine_org.as_deref()) && (c.role != Role::Technician || t.user == c.name)
}

struct Listener {
    app: App,
    caller: Caller,
    token_hash: String,
    pulses: broadcast::Receiver<Pulse>,
    bytes: tokio::time::Interval,
    login: tokio::time::Interval,
    /// The stream ends when the login or the account does, or at once when the user is
    /// disabled (between the login checks).
    ends: tokio::time::Instant,
    disabled: tokio_util::sync::CancellationToken,
    /// The bytes of the visible tunnels at the last look.
    seen_bytes: u64,
}

impl Listener {
    fn visible_bytes(&self) -> u64 {
        self.app
            .relay
            .hub
            .open_tunnels()
            .iter()
            .filter(|t| sees_tunnel(&self.caller, t))
            .map(|t| t.bytes_up + t.bytes_down)
            .fold(0, u64::wrapping_add)
    }

    /// The login is still good: not ended, expired, disabled, or idle. (Listening does not
    /// count as use: a page left open does not keep its login alive by itself.)
    async fn still_valid(&self) -> bool {
        let hash = self.token_hash.clone();
        let Ok(Some(c)) = self.app.store.run(move |b| b.caller(&hash)).await else {
            return false;
        };
        let now = util::now();
        if authz::authenticated(&c, now).is_err() {
            return false;
        }
        let idle =
            i64::try_from(self.app.settings.get().idle_timeout.as_secs()).unwrap_or(i64::MAX);
        c.last_used.is_none_or(|last| now - last < idle)
    }

    async fn next(mut self) -> Option<(Result<SseEvent, Infallible>, Self)> {
        let event = |kind: &str| Ok(SseEvent::default().event(kind).data("changed"));
        loop {
            tokio::select! {
                _ = self.app.relay.shutdown.cancelled() => return None,
                r = self.pulses.recv() => match r {
                    Ok(p) if hears(&self.caller, &p, util::now()) => return Some((event(p.kind()), self)),
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => return Some((event("all"), self)),
                    Err(RecvError::Closed) => return None,
                },
                _ = self.bytes.tick() => {
                    let now = self.visible_bytes();
                    if now != self.seen_bytes {
                        self.seen_bytes = now;
                        return Some((event("connections"), self));
                    }
                }
                _ = self.login.tick() => if !self.still_valid().await { return None },
                _ = tokio::time::sleep_until(self.ends) => return None,
                _ = self.disabled.cancelled() => return None,
            }
        }
    }
}

/// `GET /events`: the live pages' event stream, for a full login.
pub async fn events(State(app): State<App>, v: Viewer) -> Response {
    let mut login = tokio::time::interval(LOGIN_EVERY);
    login.reset();
    let left = u64::try_from(v.a.caller.valid_until() - util::now()).unwrap_or(0);
    let mut listener = Listener {
        ends: tokio::time::Instant::now() + Duration::from_secs(left),
        disabled: app.relay.hub.user_token(v.a.caller.user_id),
        pulses: app.relay.hub.pulses(),
        app,
        caller: v.a.caller.clone(),
        token_hash: v.a.token_hash.clone(),
        bytes: tokio::time::interval(BYTES_EVERY),
        login,
        seen_bytes: 0,
    };
    listener.seen_bytes = listener.visible_bytes();
    let stream = futures::stream::unfold(listener, Listener::next);
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}

// ---------------------------------------------------------------- live connections

/// An open tunnel as the dashboard lists it, with the button its viewer may press.
#[derive(Debug, Clone)]
pub struct ConnectionRow {
    pub id: u64,
    pub session: String,
    pub machine: String,
    pub user: String,
    pub target: String,
    pub since: String,
    pub seconds: i64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub cut: bool,
}

/// The open tunnels of sessions the caller may see.
pub async fn connection_rows(app: &App, c: &Caller) -> Result<Vec<ConnectionRow>, ApiError> {
    let open: Vec<TunnelView> =
        app.relay.hub.open_tunnels().into_iter().filter(|t| sees_tunnel(c, t)).collect();
    if open.is_empty() {
        return Ok(Vec::new());
    }
    let wanted: HashSet<i64> = open.iter().map(|t| t.session_id).collect();
    let sessions = app
        .store
        .run(move |b| {
            let mut found = Vec::new();
            for id in wanted {
                if let Some(s) = b.session_by_id(id)? {
                    found.push(s);
                }
            }
            Ok(found)
        })
        .await?;
    let now = util::now();
    Ok(open
        .into_iter()
        .filter_map(|t| {
            let s = sessions.iter().find(|s| s.id == t.session_id)?;
            authz::decide(c, Action::SessionShow, Object::Session(s), now).ok()?;
            let cut = authz::decide(c, Action::TunnelCut, Object::Session(s), now).is_ok();
            Some(ConnectionRow {
                id: t.id,
                session: t.session,
                machine: t.machine,
                user: t.user,
                target: t.target,
                since: util::rfc3339(t.since),
                seconds: (now - t.since).max(0),
                bytes_up: t.bytes_up,
                bytes_down: t.bytes_down,
                cut,
            })
        })
        .collect())
}

/// `12 s`, `3 min 04 s`, `2 h 05 min`.
fn duration(secs: i64) -> String {
    match secs {
        s if s < 60 => format!("{s} s"),
        s if s < 3600 => format!("{} min {:02} s", s / 60, s % 60),
        s => format!("{} h {:02} min", s / 3600, (s % 3600) / 60),
    }
}

/// The dashboard's live connections.
pub fn connections_section(lang: Lang, rows: &[ConnectionRow], csrf: &str) -> Markup {
    let t = |m: Msg| m.text(lang);
    html! {
        section #live-connections data-live="connections" aria-labelledby="connections" aria-live="polite" {
            h2 #connections { (t(Msg::LiveConnections)) }
            @if rows.is_empty() {
                p.empty { (t(Msg::NoConnections)) }
            } @else {
                div.scroll { table.connections {
                    thead { tr {
                        th scope="col" { (t(Msg::ColMachine)) }
                        th scope="col" { (t(Msg::ColTarget)) }
                        th scope="col" { (t(Msg::ColTechnician)) }
                        th scope="col" { (t(Msg::ColSession)) }
                        th scope="col" { (t(Msg::ColSince)) }
                        th scope="col" { (t(Msg::ColBytesUp)) }
                        th scope="col" { (t(Msg::ColBytesDown)) }
                        th scope="col" { (t(Msg::ColActions)) }
                    } }
                    tbody {
                        @for r in rows {
                            tr.connection data-connection=(r.id) data-session=(r.session) data-target=(r.target) {
                                th scope="row" { (r.machine) }
                                td { (r.target) }
                                td { (r.user) }
                                td { (r.session) }
                                td { time datetime=(r.since) { (r.since) } " (" (duration(r.seconds)) ")" }
                                td.num.bytes-up data-bytes=(r.bytes_up) { (r.bytes_up) }
                                td.num.bytes-down data-bytes=(r.bytes_down) { (r.bytes_down) }
                                td.actions {
                                    @if r.cut {
                                        form.inline method="post" action={ "/connections/" (r.id) "/cut" } {
                                            input type="hidden" name="csrf" value=(csrf);
                                            button.cut type="submit"
                                                aria-label={ (t(Msg::CutConnection)) " " (r.target) " (" (r.user) ")" } { (t(Msg::Cut)) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                } }
            }
        }
    }
}

/// `POST /connections/{id}/cut`: cuts one open tunnel at once, if the viewer may.
pub async fn cut(
    State(app): State<App>,
    v: Viewer,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let form = Form::parse(&body);
    if let Err(res) = v.check_form(&app, &form, Action::TunnelCut.as_str(), &id).await {
        return res;
    }
    let gone = || v.error(StatusCode::NOT_FOUND, Msg::ErrorConnectionGone, None);
    let Ok(id) = id.parse::<u64>() else { return gone() };
    let Some(t) = app.relay.hub.open_tunnel(id) else { return gone() };
    let session_id = t.session_id;
    let s = match app.store.run(move |b| b.session_by_id(session_id)).await {
        Ok(Some(s)) => s,
        Ok(None) => return gone(),
        Err(e) => return v.api_error(&e.into()),
    };
    // A tunnel the viewer may not even see is "gone" to them (ids are counted across
    // organizations: a 403 would tell that it exists); the attempt is recorded all the same.
    let visible = sees_tunnel(&v.a.caller, &t)
        && authz::decide(&v.a.caller, Action::SessionShow, Object::Session(&s), util::now())
            .is_ok();
    if let Err(e) = v.a.allow(&app, Action::TunnelCut, Object::Session(&s)) {
        return if visible { v.api_error(&e) } else { gone() };
    }
    let c = &v.a.caller;
    if !app.relay.hub.cut_tunnel(id, &c.name) {
        return gone();
    }
    let entry = Entry::new(
        &c.name,
        &c.source,
        Event::TunnelCut { session: s.name.clone(), target: t.target, user: t.user },
    );
    app.relay.audit.record_now(entry).await;
    let to = format!(
        "/?done=cut&session={}",
        url::form_urlencoded::byte_serialize(s.name.as_bytes()).collect::<String>()
    );
    v.ui.remember(Redirect::to(&to).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Scope;

    fn caller(role: Role, name: &str, org: Option<&str>) -> Caller {
        Caller {
            user_id: 1,
            name: name.into(),
            role,
            scope: Scope::Full,
            login_expires: 10_000,
            account_expires: None,
            disabled: false,
            source: "127.0.0.1".into(),
            api_token: None,
            org: org.map(str::to_owned),
            serves: vec![],
            last_used: None,
        }
    }

    fn tunnel(org: Option<&str>, user: &str) -> TunnelView {
        TunnelView {
            id: 1,
            session_id: 1,
            session: "s1".into(),
            machine: "m1".into(),
            machine_org: org.map(str::to_owned),
            user: user.into(),
            target: "plc".into(),
            since: 0,
            bytes_up: 0,
            bytes_down: 0,
        }
    }

    #[test]
    fn viewers_hear_only_of_what_they_may_see() {
        let now = 100;
        let plant = Pulse::Connections { org: Some("plant".into()) };
        let own = caller(Role::Approver, "apa", Some("plant"));
        let other = caller(Role::Approver, "apb", Some("other"));
        let staff = caller(Role::Admin, "admin", None);
        assert!(hears(&own, &plant, now) && hears(&staff, &plant, now));
        assert!(!hears(&other, &plant, now), "another operator hears of plant's tunnels");
        let sessions = Pulse::Sessions { org: Some("plant".into()) };
        assert!(!hears(&other, &sessions, now));
        assert!(hears(&other, &Pulse::Sessions { org: None }, now));
        let machines = Pulse::Machines { org: Some("plant".into()) };
        assert!(hears(&own, &machines, now) && hears(&staff, &machines, now));
        assert!(!hears(&other, &machines, now), "another operator hears of plant's machines");
        // An expired login hears nothing.
        let mut gone = own.clone();
        gone.login_expires = now - 1;
        assert!(!hears(&gone, &plant, now) && !hears(&gone, &machines, now));
        // Tunnels: a technician sees only its own.
        let tech = caller(Role::Technician, "pt1", Some("plant"));
        assert!(sees_tunnel(&tech, &tunnel(Some("plant"), "pt1")));
        assert!(!sees_tunnel(&tech, &tunnel(Some("plant"), "pt2")));
        assert!(!sees_tunnel(&other, &tunnel(Some("plant"), "pt1")));
        assert!(sees_tunnel(&staff, &tunnel(Some("plant"), "pt1")));
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(duration(0), "0 s");
        assert_eq!(duration(64), "1 min 04 s");
        assert_eq!(duration(7500), "2 h 05 min");
    }

    #[test]
    fn the_cut_button_is_shown_only_when_allowed() {
        let row = ConnectionRow {
            id: 7,
            session: "s1".into(),
            machine: "m1".into(),
            user: "tech1".into(),
            target: "<plc>".into(),
            since: "2026-01-01T00:00:00Z".into(),
            seconds: 5,
            bytes_up: 10,
            bytes_down: 20,
            cut: false,
        };
        let page = connections_section(Lang::En, std::slice::from_ref(&row), "tok").into_string();
        assert!(!page.contains("/connections/7/cut"));
        assert!(page.contains("&lt;plc&gt;"));
        let page = connections_section(Lang::De, &[ConnectionRow { cut: true, ..row }], "tok")
            .into_string();
        assert!(page.contains(r#"action="/connections/7/cut""#));
        assert!(page.contains(Msg::Cut.text(Lang::De)));
    }
}
