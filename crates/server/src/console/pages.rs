//! The console's HTML, rendered on the server with maud (escaped by default). Each page takes
//! a view model decided elsewhere (what the caller may see and press); text comes from the
//! catalogue in [`super::i18n`] only. No script, no inline style: the CSP forbids both.

use maud::{html, Markup, DOCTYPE};

use super::{
    i18n::{Lang, Msg},
    live::{self, ConnectionRow},
    view::{Done, MachineRow, SessionActions, SessionRow},
};
use crate::domain::{Role, SessionState};

/// Who is looking: what the page frame shows.
pub struct Frame<'a> {
    pub lang: Lang,
    /// The path the page is at, for the language switch (`/sessions`).
    pub path: &'a str,
    /// The user, their role and the form token for logout; none: not logged in.
    pub user: Option<(&'a str, Role, &'a str)>,
}

/// The pages beyond overview and sessions, each linked for the roles that may open it.
const MORE_PAGES: [(&str, crate::authz::Action, Msg); 5] = [
    ("/machines", crate::authz::Action::MachineList, Msg::NavMachines),
    ("/users", crate::authz::Action::UserList, Msg::NavUsers),
    ("/orgs", crate::authz::Action::OrgList, Msg::NavOrgs),
    ("/audit", crate::authz::Action::AuditList, Msg::NavAudit),
    ("/settings", crate::authz::Action::SettingsRead, Msg::NavSettings),
];

pub(super) fn layout(f: &Frame<'_>, title: Msg, body: Markup) -> Markup {
    let t = |m: Msg| m.text(f.lang);
    html! {
        (DOCTYPE)
        html lang=(f.lang.tag()) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="no-referrer";
                title { (t(title)) " · " (t(Msg::Product)) }
                link rel="stylesheet" href="/console.css";
                @if f.user.is_some() { script src="/console.js" defer {} }
            }
            body {
                a.skip href="#main" { (t(Msg::SkipToContent)) }
                header {
                    span.brand { (t(Msg::Product)) }
                    @if let Some((name, role, csrf)) = f.user {
                        nav aria-label=(t(Msg::MainNav)) {
                            a href="/" aria-current=[(f.path == "/").then_some("page")] { (t(Msg::NavDashboard)) }
                            a href="/sessions" aria-current=[(f.path == "/sessions").then_some("page")] { (t(Msg::NavSessions)) }
                            @for (path, action, label) in MORE_PAGES {
                                @if action.roles().contains(&role) {
                                    a href=(path) aria-current=[(f.path == path).then_some("page")] { (t(label)) }
                                }
                            }
                            a href="/account/keys" aria-current=[(f.path == "/account/keys").then_some("page")] { (t(Msg::NavKeys)) }
                            a href="/account/mfa" aria-current=[(f.path == "/account/mfa").then_some("page")] { (t(Msg::NavMfa)) }
                        }
                        span.who { (t(Msg::SignedInAs)) " " strong { (name) } " (" (t(Msg::RoleLabel)) " " (t(role_msg(role))) ")" }
                        form.inline method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(csrf);
                            button type="submit" { (t(Msg::Logout)) }
                        }
                    }
                    span.langs aria-label=(t(Msg::LanguageLabel)) {
                        @for l in Lang::ALL {
                            @if l == f.lang {
                                span lang=(l.tag()) aria-current="true" { (l.own_name()) }
                            } @else {
                                a lang=(l.tag()) hreflang=(l.tag()) href={ (f.path) "?lang=" (l.tag()) } { (l.own_name()) }
                            }
                        }
                    }
                }
                main #main { (body) }
            }
        }
    }
}

/// What the login page says above the form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginNote {
    None,
    Invalid,
    TooFast,
    /// A second factor was just set up: log in with it.
    MfaSetUp,
    Ended,
    LoggedOut,
}

pub fn login(lang: Lang, csrf: &str, user: &str, note: LoginNote) -> Markup {
    let t = |m: Msg| m.text(lang);
    let body = html! {
        h1 { (t(Msg::LoginTitle)) }
        @match note {
            LoginNote::None => {},
            LoginNote::Invalid => p.error role="alert" { (t(Msg::LoginInvalid)) },
            LoginNote::TooFast => p.error role="alert" { (t(Msg::LoginTooFast)) },
            LoginNote::MfaSetUp => p.note role="status" { (t(Msg::LoginMfaSetUp)) },
            LoginNote::Ended => p.note role="status" { (t(Msg::LoginEnded)) },
            LoginNote::LoggedOut => p.note role="status" { (t(Msg::LoggedOut)) },
        }
        form.login method="post" action="/login" {
            input type="hidden" name="csrf" value=(csrf);
            label for="user" { (t(Msg::LoginUser)) }
            input #user name="user" type="text" value=(user) autocomplete="username" autocapitalize="none" spellcheck="false" required maxlength="64" autofocus[user.is_empty()];
            label for="password" { (t(Msg::LoginPassword)) }
            input #password name="password" type="password" autocomplete="current-password" required maxlength="1024" autofocus[!user.is_empty()];
            label for="otp" { (t(Msg::LoginCode)) }
            input #otp name="otp" type="text" inputmode="numeric" autocomplete="one-time-code" pattern="[0-9]{6}" maxlength="6";
            button type="submit" { (t(Msg::LoginButton)) }
            (super::webauthn::login_button(lang))
        }
    };
    layout(&Frame { lang, path: "/login", user: None }, Msg::LoginTitle, body)
}

pub fn dashboard(
    f: &Frame<'_>,
    done: Option<&Done>,
    machines: Option<&[MachineRow]>,
    waiting: Option<&[SessionRow]>,
    connections: Option<&[ConnectionRow]>,
    csrf: &str,
) -> Markup {
    let t = |m: Msg| m.text(f.lang);
    let body = html! {
        h1 { (t(Msg::DashboardTitle)) }
        (done_note(f.lang, done))
        @if let Some(rows) = connections {
            (live::connections_section(f.lang, rows, csrf))
        }
        @if let Some(waiting) = waiting {
            section data-live="sessions" aria-labelledby="waiting" {
                h2 #waiting { (t(Msg::Waiting)) }
                @if waiting.is_empty() {
                    p.empty { (t(Msg::NoneWaiting)) }
                } @else {
                    (sessions_table(f.lang, waiting, csrf, "/"))
                }
            }
        }
        @if let Some(machines) = machines {
            section data-live="machines" aria-labelledby="machines" {
                h2 #machines { (t(Msg::Machines)) }
                @if machines.is_empty() {
                    p.empty { (t(Msg::NoMachines)) }
                } @else {
                    div.scroll { table {
                        thead { tr {
                            th scope="col" { (t(Msg::ColMachine)) }
                            th scope="col" { (t(Msg::ColOrg)) }
                            th scope="col" { (t(Msg::ColLink)) }
                            th scope="col" { (t(Msg::ColSwitch)) }
                            th scope="col" { (t(Msg::ColTrust)) }
                            th scope="col" { (t(Msg::ColCertUntil)) }
                            th scope="col" { (t(Msg::ColAgent)) }
                        } }
                        tbody {
                            @for m in machines {
                                tr.machine data-machine=(m.name) {
                                    th scope="row" { (m.name) }
                                    td { (m.org.as_deref().unwrap_or("–")) }
                                    td {
                                        @if m.revoked {
                                            span.badge.bad { (t(Msg::Revoked)) }
                                        } @else if !m.enrolled {
                                            span.badge { (t(Msg::NotEnrolled)) }
                                        } @else if m.online {
                                            span.badge.good data-online="true" { (t(Msg::Online)) }
                                        } @else {
                                            span.badge.bad data-online="false" { (t(Msg::Offline)) }
                                            @if let Some(seen) = &m.last_seen {
                                                " " small { (t(Msg::LastSeen)) " " time datetime=(seen) { (seen) } }
                                            }
                                        }
                                    }
                                    td data-switch=(m.switch.as_str()) {
                                        (t(match m.switch {
                                            fernwart_api::SwitchState::On => Msg::SwitchOn,
                                            fernwart_api::SwitchState::Off => Msg::SwitchOff,
                                            fernwart_api::SwitchState::Unknown => Msg::Unknown,
                                        }))
                                    }
                                    td {
                                        (t(match m.trust {
                                            Some(true) => Msg::TrustSigned,
                                            Some(false) => Msg::TrustServer,
                                            None => Msg::Unknown,
                                        }))
                                    }
                                    td {
                                        @match &m.cert_until {
                                            Some(c) => time datetime=(c) { (c) },
                                            None => "–",
                                        }
                                    }
                                    td.software { (m.software.as_deref().unwrap_or("–")) }
                                }
                            }
                        }
                    } }
                }
            }
        }
    };
    layout(f, Msg::DashboardTitle, body)
}

pub fn sessions(
    f: &Frame<'_>,
    done: Option<&Done>,
    rows: &[SessionRow],
    prepares: bool,
    csrf: &str,
) -> Markup {
    let t = |m: Msg| m.text(f.lang);
    let body = html! {
        h1 { (t(Msg::SessionsTitle)) }
        (done_note(f.lang, done))
        @if prepares { p { a.button #prepare-link href="/sessions/new" { (t(Msg::PrepareTitle)) } } }
        div data-live="sessions" {
            @if rows.is_empty() {
                p.empty { (t(Msg::NoSessions)) }
            } @else {
                (sessions_table(f.lang, rows, csrf, "/sessions"))
            }
        }
    };
    layout(f, Msg::SessionsTitle, body)
}

pub fn error(f: &Frame<'_>, what: Msg, reason: Option<&str>) -> Markup {
    let t = |m: Msg| m.text(f.lang);
    let body = html! {
        h1 { (t(Msg::ErrorTitle)) }
        p.error role="alert" { (t(what)) }
        @if let Some(r) = reason { p { samp.reason { (r) } } }
        p { a href="/" { (t(Msg::Back)) } }
    };
    layout(f, Msg::ErrorTitle, body)
}

pub(super) fn done_note(lang: Lang, done: Option<&Done>) -> Markup {
    html! {
        @if let Some(d) = done {
            p.note role="status" {
                (d.what.text(lang)) " " strong { (d.session) }
            }
        }
    }
}

pub fn role_msg(r: Role) -> Msg {
    match r {
        Role::Admin => Msg::RoleAdmin,
        Role::SessionAdmin => Msg::RoleSessionAdmin,
        Role::Technician => Msg::RoleTechnician,
        Role::Approver => Msg::RoleApprover,
        Role::Auditor => Msg::RoleAuditor,
    }
}

pub fn state_msg(s: SessionState) -> Msg {
    match s {
        SessionState::Prepared => Msg::StatePrepared,
        SessionState::Requested => Msg::StateRequested,
        SessionState::Approved => Msg::StateApproved,
        SessionState::Active => Msg::StateActive,
        SessionState::Ended => Msg::StateEnded,
        SessionState::Rejected => Msg::StateRejected,
        SessionState::Expired => Msg::StateExpired,
        SessionState::Revoked => Msg::StateRevoked,
    }
}

fn sessions_table(lang: Lang, rows: &[SessionRow], csrf: &str, back: &str) -> Markup {
    let t = |m: Msg| m.text(lang);
    html! {
        div.scroll { table.sessions {
            thead { tr {
                th scope="col" { (t(Msg::ColSession)) }
                th scope="col" { (t(Msg::ColState)) }
                th scope="col" { (t(Msg::ColMachine)) }
                th scope="col" { (t(Msg::ColTargets)) }
                th scope="col" { (t(Msg::ColTechnicians)) }
                th scope="col" { (t(Msg::ColWindow)) }
                th scope="col" { (t(Msg::ColReason)) }
                th scope="col" { (t(Msg::ColPreparedBy)) }
                th scope="col" { (t(Msg::ColDecidedBy)) }
                th scope="col" { (t(Msg::ColActions)) }
            } }
            tbody {
                @for r in rows {
                    tr.session data-session=(r.name) data-state=(r.state.as_str()) {
                        th scope="row" { a href={ "/sessions/" (r.name) } { (r.name) } }
                        td { span.state { (t(state_msg(r.state))) }
                            @if !r.approval_required { br; small { (t(Msg::NoApprovalNeeded)) } } }
                        td { (r.machine) }
                        td { (r.targets.join(", ")) }
                        td { (r.users.join(", ")) }
                        td { time datetime=(r.from) { (r.from) } " " (t(Msg::WindowTo)) " " time datetime=(r.until) { (r.until) } }
                        td { (r.reason) }
                        td { (r.created_by) }
                        td { (r.decided_by.as_deref().unwrap_or("–")) }
                        td.actions { (actions(lang, r, csrf, back)) }
                    }
                }
            }
        } }
    }
}

pub(super) fn actions(lang: Lang, r: &SessionRow, csrf: &str, back: &str) -> Markup {
    let t = |m: Msg| m.text(lang);
    let SessionActions { approve, signed_only, reject, end } = r.actions;
    let button = |verb: &str, label: Msg, aria: Msg, class: &str| {
        html! {
            form.inline method="post" action={ "/sessions/" (r.name) "/" (verb) } {
                input type="hidden" name="csrf" value=(csrf);
                input type="hidden" name="back" value=(back);
                button type="submit" class=(class) name="do" value=(verb)
                    aria-label={ (t(aria)) " " (r.name) } { (t(label)) }
            }
        }
    };
    html! {
        @if approve { (button("approve", Msg::Approve, Msg::ApproveSession, "approve")) }
        @if signed_only {
            p.signed { (t(Msg::NeedsSigned)) " " code { "fernwart session approve " (r.name) } }
            a.approve href={ "/sessions/" (r.name) "/sign" } { (t(Msg::SignWithKey)) }
        }
        @if reject { (button("reject", Msg::Reject, Msg::RejectSession, "reject")) }
        @if end { (button("end", Msg::EndNow, Msg::EndSession, "end")) }
    }
}
