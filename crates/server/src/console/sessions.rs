//! Preparing a session in the console (the API's own path, as `fernwart session create`), and
//! one session's page: its facts, its buttons, and for its technicians the `fernwart connect`
//! command and the `fernwart://connect/SERVER/SESSION` link that the CLI handles.

use axum::{
    body::Bytes,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Redirect, Response},
};
use fernwart_api::SessionCreateRequest;
use maud::{html, Markup};

use super::{
    i18n::Msg,
    pages::{self, Frame},
    view::{Done, SessionActions, SessionRow},
    Form, Viewer,
};
use crate::{
    api,
    authz::{Action, Object},
    domain::names,
    util, App,
};

/// What the form held (shown again after a refusal).
#[derive(Debug, Clone, Default)]
pub struct Draft {
    pub name: String,
    pub machine: String,
    pub targets: String,
    pub users: String,
    pub from: String,
    pub duration: String,
    pub reason: String,
    pub approval: bool,
    pub record: bool,
}

impl Draft {
    fn fresh() -> Self {
        Self { duration: "2h".into(), approval: true, ..Default::default() }
    }

    fn from_form(f: &Form) -> Self {
        let field = |k: &str| f.get(k).unwrap_or_default().trim().to_owned();
        Self {
            name: field("name"),
            machine: field("machine"),
            targets: field("targets"),
            users: field("users"),
            from: field("from"),
            duration: field("duration"),
            reason: field("reason"),
            approval: f.get("approval") == Some("yes"),
            record: f.get("record") == Some("yes"),
        }
    }

    /// The API's request, or what is wrong with the form (before the API's own checks).
    fn request(&self) -> Result<SessionCreateRequest, String> {
        let list = |s: &str| -> Vec<String> {
            s.split([',', ' '])
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect()
        };
        let duration_secs = if self.duration.is_empty() {
            None
        } else {
            let d = humantime::parse_duration(&self.duration)
                .map_err(|e| format!("duration {:?}: {e}", self.duration))?;
            Some(d.as_secs())
        };
        Ok(SessionCreateRequest {
            name: self.name.clone(),
            machine: self.machine.clone(),
            targets: list(&self.targets),
            users: list(&self.users),
            from: local_to_rfc3339(&self.from)?,
            until: None,
            duration_secs,
            reason: self.reason.clone(),
            approval: self.approval,
            record: self.record,
        })
    }
}

/// An `<input type="datetime-local">` value, read as UTC (`2026-05-04T10:30`), as RFC 3339;
/// empty: none (now).
fn local_to_rfc3339(v: &str) -> Result<Option<String>, String> {
    if v.is_empty() {
        return Ok(None);
    }
    let with_secs = if v.len() == 16 { format!("{v}:00Z") } else { format!("{v}Z") };
    util::parse_rfc3339(&with_secs)
        .map(|_| Some(with_secs.clone()))
        .ok_or_else(|| format!("start {v:?} is not a date and time"))
}

/// A machine the form offers, with the targets its agent reported.
pub struct MachineChoice {
    pub name: String,
    pub targets: Vec<String>,
}

async fn choices(app: &App, v: &Viewer) -> Result<Vec<MachineChoice>, Response> {
    let org = crate::authz::machine_scope(&v.a.caller);
    let machines = app.store.run(move |b| b.machines(org.as_deref())).await;
    match machines {
        Ok(list) => Ok(list
            .into_iter()
            .filter(|m| !m.revoked)
            .map(|m| MachineChoice {
                name: m.name,
                targets: m.targets.into_iter().map(|t| t.name).collect(),
            })
            .collect()),
        Err(e) => Err(v.api_error(&e.into())),
    }
}

/// `GET /sessions/new`: the form, for who may prepare sessions.
pub async fn new_page(State(app): State<App>, v: Viewer) -> Response {
    if let Err(e) = v.a.allow(&app, Action::SessionCreate, Object::None) {
        return v.api_error(&e);
    }
    let machines = match choices(&app, &v).await {
        Ok(m) => m,
        Err(res) => return res,
    };
    v.page(StatusCode::OK, form_page(&v.frame(), &Draft::fresh(), &machines, None, &v.csrf))
}

/// `POST /sessions/new`: prepares the session through the API's path.
pub async fn create(State(app): State<App>, v: Viewer, body: Bytes) -> Response {
    let form = Form::parse(&body);
    let draft = Draft::from_form(&form);
    if let Err(res) = v.check_form(&app, &form, Action::SessionCreate.as_str(), &draft.name).await {
        return res;
    }
    let refused = |status: StatusCode, reason: &str, machines: &[MachineChoice]| {
        v.page(status, form_page(&v.frame(), &draft, machines, Some(reason), &v.csrf))
    };
    let result = match draft.request() {
        Ok(req) => api::sessions::prepare(&app, &v.a, req).await,
        Err(reason) => {
            let machines = choices(&app, &v).await.unwrap_or_default();
            return refused(StatusCode::BAD_REQUEST, &reason, &machines);
        }
    };
    match result {
        Ok(s) => {
            let to = format!("/sessions/{}?done=prepare&session={}", enc(&s.name), enc(&s.name));
            v.ui.remember(Redirect::to(&to).into_response())
        }
        Err(e) if e.status().is_client_error() && e.status() != StatusCode::UNAUTHORIZED => {
            let machines = choices(&app, &v).await.unwrap_or_default();
            refused(e.status(), e.message(), &machines)
        }
        Err(e) => v.api_error(&e),
    }
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// `GET /sessions/{name}`: one session, its buttons, and how its technicians start it.
pub async fn show(State(app): State<App>, v: Viewer, Path(name): Path<String>) -> Response {
    let not_found = || v.error(StatusCode::NOT_FOUND, Msg::ErrorNotFound, None);
    if !names::valid(&name) {
        return not_found();
    }
    let n = name.clone();
    let loaded = app
        .store
        .run(move |b| {
            let Some(s) = b.session_by_name(&n)? else { return Ok(None) };
            let signed = b.signing_facts(s.machine_id)?.required();
            Ok(Some((s, signed)))
        })
        .await;
    let (s, signed) = match loaded {
        Ok(Some(found)) => found,
        Ok(None) => return not_found(),
        Err(e) => return v.api_error(&e.into()),
    };
    if let Err(e) = v.a.allow(&app, Action::SessionShow, Object::Session(&s)) {
        return v.api_error(&e);
    }
    let now = util::now();
    let row = SessionRow::new(&s, SessionActions::decide(&v.a.caller, &s, signed, now));
    let connects =
        crate::authz::decide(&v.a.caller, Action::SessionConnect, Object::Session(&s), now).is_ok();
    let link = connects.then(|| connect_link(&app.cfg.settings.server.public_url, &s.name));
    let trail = crate::authz::decide(&v.a.caller, Action::AuditList, Object::None, now).is_ok();
    let done = Done::parse(
        v.query.get("done").map(String::as_str),
        v.query.get("session").map(String::as_str),
    );
    let page = session_page(&v.frame(), done.as_ref(), &row, link.as_deref(), trail, &v.csrf);
    v.page(StatusCode::OK, page)
}

/// `fernwart://connect/HOST:PORT/SESSION` for the server at `public_url`; the CLI's
/// `open-url` takes only this shape.
pub fn connect_link(public_url: &str, session: &str) -> String {
    let authority = url::Url::parse(public_url)
        .ok()
        .and_then(|u| {
            let host = u.host_str()?.to_owned();
            Some(match u.port_or_known_default() {
                Some(p) => format!("{host}:{p}"),
                None => host,
            })
        })
        .unwrap_or_default();
    format!("fernwart://connect/{authority}/{session}")
}

fn form_page(
    f: &Frame<'_>,
    d: &Draft,
    machines: &[MachineChoice],
    error: Option<&str>,
    csrf: &str,
) -> Markup {
    let t = |m: Msg| m.text(f.lang);
    let body = html! {
        h1 { (t(Msg::PrepareTitle)) }
        @if let Some(reason) = error {
            p.error role="alert" { (t(Msg::ErrorRefused)) " " samp.reason { (reason) } }
        }
        form.stack #prepare method="post" action="/sessions/new" {
            input type="hidden" name="csrf" value=(csrf);
            label for="name" { (t(Msg::FieldSessionName)) }
            p.hint #name-hint { (t(Msg::HintName)) }
            input #name name="name" type="text" value=(d.name) required maxlength="64"
                pattern="[A-Za-z0-9_.@-]{1,64}" aria-describedby="name-hint" autocapitalize="none" spellcheck="false";
            label for="machine" { (t(Msg::ColMachine)) }
            select #machine name="machine" required aria-describedby="machine-hint" {
                @for m in machines {
                    option value=(m.name) selected[m.name == d.machine] { (m.name) }
                }
            }
            p.hint #machine-hint {
                (t(Msg::HintTargets))
                @for m in machines {
                    " " strong { (m.name) } ": "
                    @if m.targets.is_empty() { "–" } @else { (m.targets.join(", ")) } ";"
                }
            }
            label for="targets" { (t(Msg::ColTargets)) }
            input #targets name="targets" type="text" value=(d.targets) required aria-describedby="machine-hint" autocapitalize="none" spellcheck="false";
            label for="users" { (t(Msg::ColTechnicians)) }
            p.hint #users-hint { (t(Msg::HintList)) }
            input #users name="users" type="text" value=(d.users) required aria-describedby="users-hint" autocapitalize="none" spellcheck="false";
            label for="from" { (t(Msg::FieldFrom)) }
            input #from name="from" type="datetime-local" value=(d.from);
            label for="duration" { (t(Msg::FieldDuration)) }
            p.hint #duration-hint { (t(Msg::HintDuration)) }
            input #duration name="duration" type="text" value=(d.duration) aria-describedby="duration-hint";
            label for="reason" { (t(Msg::ColReason)) }
            input #reason name="reason" type="text" value=(d.reason) required maxlength="1000";
            div.check {
                input #approval name="approval" type="checkbox" value="yes" checked[d.approval];
                label for="approval" { (t(Msg::FieldApproval)) }
            }
            div.check {
                input #record name="record" type="checkbox" value="yes" checked[d.record];
                label for="record" { (t(Msg::FieldRecord)) }
            }
            button type="submit" { (t(Msg::PrepareButton)) }
        }
        p { a href="/sessions" { (t(Msg::BackToSessions)) } }
    };
    pages::layout(f, Msg::PrepareTitle, body)
}

fn session_page(
    f: &Frame<'_>,
    done: Option<&Done>,
    r: &SessionRow,
    link: Option<&str>,
    trail: bool,
    csrf: &str,
) -> Markup {
    let t = |m: Msg| m.text(f.lang);
    let back = format!("/sessions/{}", r.name);
    let body = html! {
        h1 { (t(Msg::ColSession)) " " (r.name) }
        (pages::done_note(f.lang, done))
        div #session-facts data-live="sessions" {
            dl.facts data-session=(r.name) data-state=(r.state.as_str()) {
                dt { (t(Msg::ColState)) }
                dd.state { (t(pages::state_msg(r.state)))
                    @if !r.approval_required { " (" (t(Msg::NoApprovalNeeded)) ")" } }
                dt { (t(Msg::ColMachine)) } dd { (r.machine) }
                dt { (t(Msg::ColTargets)) } dd { (r.targets.join(", ")) }
                dt { (t(Msg::ColTechnicians)) } dd { (r.users.join(", ")) }
                dt { (t(Msg::ColWindow)) } dd { time datetime=(r.from) { (r.from) } " " (t(Msg::WindowTo)) " " time datetime=(r.until) { (r.until) } }
                dt { (t(Msg::ColReason)) } dd { (r.reason) }
                dt { (t(Msg::ColPreparedBy)) } dd { (r.created_by) }
                dt { (t(Msg::ColDecidedBy)) } dd { (r.decided_by.as_deref().unwrap_or("–")) }
            }
            div.actions { (pages::actions(f.lang, r, csrf, &back)) }
        }
        @if let Some(link) = link {
            section aria-labelledby="start" {
                h2 #start { (t(Msg::StartTitle)) }
                p { (t(Msg::StartCommand)) }
                code.command #connect-command { "fernwart connect " (r.name) }
                p { (t(Msg::StartLink)) }
                p { a.connect-link href=(link) { (link) } }
                p.hint { (t(Msg::StartRegister)) " " code { "fernwart url-handler register" } }
            }
        }
        @if trail {
            p { a.session-trail href={ "/audit?session=" (r.name) } { (t(Msg::SessionTrail)) } }
        }
        p { a href="/sessions" { (t(Msg::BackToSessions)) } }
    };
    pages::layout(f, Msg::SessionsTitle, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::i18n::Lang;

    #[test]
    fn the_connect_link_names_the_public_server() {
        assert_eq!(
            connect_link("https://fw.example:8443", "s1"),
            "fernwart://connect/fw.example:8443/s1"
        );
        assert_eq!(
            connect_link("https://fw.example", "s1"),
            "fernwart://connect/fw.example:443/s1"
        );
        assert_eq!(connect_link("https://[::1]:8443/", "s1"), "fernwart://connect/[::1]:8443/s1");
    }

    #[test]
    fn the_form_becomes_the_apis_request() {
        let d = Draft {
            name: "s9".into(),
            machine: "m1".into(),
            targets: "plc, hmi".into(),
            users: "tech1 tech2".into(),
            from: "2030-01-02T03:04".into(),
            duration: "90m".into(),
            reason: "T-9".into(),
            approval: true,
            record: false,
        };
        let r = d.request().unwrap();
        assert_eq!(r.targets, ["plc", "hmi"]);
        assert_eq!(r.users, ["tech1", "tech2"]);
        assert_eq!(r.from.as_deref(), Some("2030-01-02T03:04:00Z"));
        assert_eq!(r.duration_secs, Some(5400));
        assert!(Draft { duration: "soon".into(), ..d.clone() }.request().is_err());
        assert!(Draft { from: "yesterday".into(), ..d }.request().is_err());
    }

    #[test]
    fn the_form_is_labelled_and_escaped() {
        let f = Frame { lang: Lang::De, path: "/sessions/new", user: None };
        let d = Draft { reason: "<b>x</b>".into(), ..Draft::fresh() };
        let m = [MachineChoice { name: "m1".into(), targets: vec!["plc".into()] }];
        let page = form_page(&f, &d, &m, Some("<i>no</i>"), "tok").into_string();
        assert!(!page.contains("<b>x") && !page.contains("<i>no"));
        for id in ["name", "machine", "targets", "users", "from", "duration", "reason", "approval"]
        {
            assert!(page.contains(&format!(r#"for="{id}""#)), "no label for {id}");
            assert!(page.contains(&format!(r#"id="{id}""#)), "no input {id}");
        }
        assert!(page.contains(Msg::PrepareButton.text(Lang::De)));
    }
}
