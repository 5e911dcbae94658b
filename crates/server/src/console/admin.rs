//! The console's administration pages: machines (add with a one-time enrolment token, the
//! targets their agents report, revoke), users (add, disable), organizations and service
//! contracts, and the server's settings (those that can change at run time, and the rest of
//! `server.toml`).
//!
//! Every change goes through the JSON API's own handler (authorization, checks, audit), called
//! with the viewer's login; every button is shown only where [`authz::decide`] allows it.

use axum::{
    body::Bytes,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Redirect, Response},
    Json,
};
use std::collections::BTreeMap;

use fernwart_api::{
    ContractAddRequest, MachineAddRequest, MachineAdded, MachineInfo, OrgAddRequest, OrgInfo,
    OrgKind, OrgSetRequest, SettingInfo, SettingsSetRequest, SwitchState, UserAddRequest, UserInfo,
};
use maud::{html, Markup};

use super::{
    i18n::{Lang, Msg},
    pages,
    view::Done,
    Form, Viewer,
};
use crate::{
    api::{self, Authed, Body},
    authz::{self, Action, Object},
    domain::{names, settings::Key, Role},
    util, App,
};

/// The viewer's login, as the API's handlers take it.
fn authed(v: &Viewer) -> Authed {
    Authed { caller: v.a.caller.clone(), token_hash: v.a.token_hash.clone() }
}

fn may(v: &Viewer, action: Action, object: Object<'_>) -> bool {
    authz::decide(&v.a.caller, action, object, util::now()).is_ok()
}

/// What the last change did (`?done=KIND&name=NAME`), from a fixed set.
fn done(v: &Viewer) -> Option<Done> {
    let what = match v.query.get("done")?.as_str() {
        "machine-revoke" => Msg::DoneMachineRevoke,
        "user-add" => Msg::DoneUserAdd,
        "user-disable" => Msg::DoneUserDisable,
        "org-add" => Msg::DoneOrgAdd,
        "org-set" => Msg::DoneOrgSet,
        "contract-add" => Msg::DoneContractAdd,
        _ => return None,
    };
    let name = v.query.get("name").filter(|n| n.len() <= 130)?;
    let ok = name.split('/').all(names::valid);
    ok.then(|| Done { what, session: name.clone() })
}

fn back_to(v: &Viewer, page: &str, what: &str, name: &str) -> Response {
    let to = format!("{page}?done={what}&name={}", enc(name));
    v.ui.remember(Redirect::to(&to).into_response())
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn field(f: &Form, k: &str) -> String {
    f.get(k).unwrap_or_default().trim().to_owned()
}

fn optional(f: &Form, k: &str) -> Option<String> {
    Some(field(f, k)).filter(|s| !s.is_empty())
}

// ---------------------------------------------------------------- machines

pub async fn machines_page(State(app): State<App>, v: Viewer) -> Response {
    let list = match api::machines::list(State(app.clone()), authed(&v)).await {
        Ok(Json(list)) => list,
        Err(e) => return v.api_error(&e),
    };
    let may_add = may(&v, Action::MachineAdd, Object::None);
    let revocable: Vec<bool> = list
        .iter()
        .map(|m| !m.revoked && may(&v, Action::MachineRevoke, Object::Named(&m.name)))
        .collect();
    let body = machines_body(v.ui.lang, done(&v).as_ref(), &list, &revocable, may_add, &v.csrf);
    v.page(StatusCode::OK, pages::layout(&v.frame(), Msg::MachinesTitle, body))
}

fn machines_body(
    lang: Lang,
    done: Option<&Done>,
    list: &[MachineInfo],
    revocable: &[bool],
    may_add: bool,
    csrf: &str,
) -> Markup {
    let t = |m: Msg| m.text(lang);
    html! {
        h1 { (t(Msg::MachinesTitle)) }
        (pages::done_note(lang, done))
        div data-live="machines" {
            @if list.is_empty() {
                p.empty { (t(Msg::NoMachines)) }
            } @else {
                div.scroll { table.machines {
                    thead { tr {
                        th scope="col" { (t(Msg::ColMachine)) }
                        th scope="col" { (t(Msg::ColOrg)) }
                        th scope="col" { (t(Msg::ColLink)) }
                        th scope="col" { (t(Msg::ColSwitch)) }
                        th scope="col" { (t(Msg::ColTargetsReported)) }
                        th scope="col" { (t(Msg::ColActions)) }
                    } }
                    tbody {
                        @for (m, revoke) in list.iter().zip(revocable) {
                            tr.machine data-machine=(m.name) {
                                th scope="row" { (m.name) }
                                td { (m.org.as_deref().unwrap_or("–")) }
                                td {
                                    @if m.revoked { span.badge.bad { (t(Msg::Revoked)) } }
                                    @else if !m.enrolled { span.badge { (t(Msg::NotEnrolled)) } }
                                    @else if m.online { span.badge.good { (t(Msg::Online)) } }
                                    @else { span.badge.bad { (t(Msg::Offline)) } }
                                }
                                td { (t(match m.switch {
                                    SwitchState::On => Msg::SwitchOn,
                                    SwitchState::Off => Msg::SwitchOff,
                                    SwitchState::Unknown => Msg::Unknown,
                                })) }
                                td.targets {
                                    @if m.targets.is_empty() { "–" }
                                    ul.plain {
                                        @for tg in &m.targets {
                                            li data-target=(tg.name) { strong { (tg.name) } @if !tg.address.is_empty() { " " code { (tg.address) } } " (" (protocol(&tg.protocol)) ")" }
                                        }
                                    }
                                }
                                td.actions {
                                    @if *revoke {
                                        form.inline method="post" action={ "/machines/" (m.name) "/revoke" } {
                                            input type="hidden" name="csrf" value=(csrf);
                                            button.end type="submit" aria-label={ (t(Msg::RevokeMachine)) " " (m.name) } { (t(Msg::Revoke)) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                } }
            }
        }
        @if may_add {
            section aria-labelledby="add-machine" {
                h2 #add-machine { (t(Msg::AddMachine)) }
                form.stack #machine-add method="post" action="/machines/new" {
                    input type="hidden" name="csrf" value=(csrf);
                    label for="name" { (t(Msg::FieldName)) }
                    input #name name="name" type="text" required maxlength="64" pattern="[A-Za-z0-9_.@-]{1,64}" autocapitalize="none" spellcheck="false";
                    label for="org" { (t(Msg::FieldOrgOptional)) }
                    input #org name="org" type="text" maxlength="64" autocapitalize="none" spellcheck="false";
                    button type="submit" { (t(Msg::AddMachine)) }
                }
            }
        }
    }
}

fn protocol(p: &fernwart_proto::TargetProtocol) -> &'static str {
    match p {
        fernwart_proto::TargetProtocol::Tcp => "tcp",
        fernwart_proto::TargetProtocol::Udp => "udp",
    }
}

pub async fn machine_add(State(app): State<App>, v: Viewer, body: Bytes) -> Response {
    let form = Form::parse(&body);
    let name = field(&form, "name");
    if let Err(res) = v.check_form(&app, &form, Action::MachineAdd.as_str(), &name).await {
        return res;
    }
    let req = MachineAddRequest { name, org: optional(&form, "org") };
    let added = match api::machines::add(State(app.clone()), authed(&v), Body(req)).await {
        Ok(Json(added)) => added,
        Err(e) => return v.api_error(&e),
    };
    let body = enrolment_body(v.ui.lang, &added, &app.cfg.settings.server.public_url);
    v.page(StatusCode::OK, pages::layout(&v.frame(), Msg::AddMachine, body))
}

/// The line an operator runs on the gateway.
pub fn enroll_line(public_url: &str, token: &str) -> String {
    format!(
        "fernwart-agent enroll --server {public_url} --token {token} --data /var/lib/fernwart-agent --ca-cert ca.pem"
    )
}

fn enrolment_body(lang: Lang, added: &MachineAdded, public_url: &str) -> Markup {
    let t = |m: Msg| m.text(lang);
    let line = enroll_line(public_url, &added.token);
    html! {
        h1 { (t(Msg::MachineAdded)) " " (added.name) }
        p.note role="status" { (t(Msg::TokenOnce)) " " time datetime=(added.expires) { (added.expires) } }
        label for="enroll-line" { (t(Msg::EnrollLine)) }
        div.copyline {
            input #enroll-line.command type="text" readonly value=(line) data-token=(added.token);
            button.copy type="button" data-copy="enroll-line" hidden { (t(Msg::Copy)) }
        }
        p.hint { (t(Msg::EnrollCa)) }
        p { a href="/machines" { (t(Msg::BackToMachines)) } }
    }
}

pub async fn machine_revoke(
    State(app): State<App>,
    v: Viewer,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let form = Form::parse(&body);
    if let Err(res) = v.check_form(&app, &form, Action::MachineRevoke.as_str(), &name).await {
        return res;
    }
    match api::machines::revoke(State(app.clone()), authed(&v), Path(name.clone())).await {
        Ok(_) => back_to(&v, "/machines", "machine-revoke", &name),
        Err(e) => v.api_error(&e),
    }
}

// ---------------------------------------------------------------- users

pub async fn users_page(State(app): State<App>, v: Viewer) -> Response {
    let list = match api::users::list(State(app.clone()), authed(&v)).await {
        Ok(Json(list)) => list,
        Err(e) => return v.api_error(&e),
    };
    let may_add = may(&v, Action::UserAdd, Object::None);
    let disable: Vec<bool> = list
        .iter()
        .map(|u| {
            !u.disabled
                && u.name != v.a.caller.name
                && may(&v, Action::UserDisable, Object::Named(&u.name))
        })
        .collect();
    let body = users_body(v.ui.lang, done(&v).as_ref(), &list, &disable, may_add, &v.csrf);
    v.page(StatusCode::OK, pages::layout(&v.frame(), Msg::UsersTitle, body))
}

fn users_body(
    lang: Lang,
    done: Option<&Done>,
    list: &[UserInfo],
    disable: &[bool],
    may_add: bool,
    csrf: &str,
) -> Markup {
    let t = |m: Msg| m.text(lang);
    html! {
        h1 { (t(Msg::UsersTitle)) }
        (pages::done_note(lang, done))
        div.scroll { table.users {
            thead { tr {
                th scope="col" { (t(Msg::FieldName)) }
                th scope="col" { (t(Msg::RoleLabelCol)) }
                th scope="col" { (t(Msg::ColOrg)) }
                th scope="col" { (t(Msg::ColSecondFactor)) }
                th scope="col" { (t(Msg::ColAccountUntil)) }
                th scope="col" { (t(Msg::ColState)) }
                th scope="col" { (t(Msg::ColActions)) }
            } }
            tbody {
                @for (u, may_disable) in list.iter().zip(disable) {
                    tr.user data-user=(u.name) {
                        th scope="row" { (u.name) }
                        td { (t(pages::role_msg(u.role))) }
                        td { (u.org.as_deref().unwrap_or("–")) }
                        td { (t(if u.mfa { Msg::Yes } else { Msg::No })) }
                        td { (u.expires.as_deref().unwrap_or("–")) }
                        td { @if u.disabled { span.badge.bad { (t(Msg::Disabled)) } } @else { span.badge.good { (t(Msg::Active)) } } }
                        td.actions {
                            @if *may_disable {
                                form.inline method="post" action={ "/users/" (u.name) "/disable" } {
                                    input type="hidden" name="csrf" value=(csrf);
                                    button.end type="submit" aria-label={ (t(Msg::DisableUser)) " " (u.name) } { (t(Msg::Disable)) }
                                }
                            }
                        }
                    }
                }
            }
        } }
        @if may_add {
            section aria-labelledby="add-user" {
                h2 #add-user { (t(Msg::AddUser)) }
                form.stack #user-add method="post" action="/users/new" {
                    input type="hidden" name="csrf" value=(csrf);
                    label for="name" { (t(Msg::FieldName)) }
                    input #name name="name" type="text" required maxlength="64" pattern="[A-Za-z0-9_.@-]{1,64}" autocomplete="off" autocapitalize="none" spellcheck="false";
                    label for="role" { (t(Msg::RoleLabelCol)) }
                    select #role name="role" required {
                        @for r in Role::ALL { option value=(r.as_str()) { (t(pages::role_msg(r))) } }
                    }
                    label for="org" { (t(Msg::FieldOrgOptional)) }
                    input #org name="org" type="text" maxlength="64" autocapitalize="none" spellcheck="false";
                    label for="expires" { (t(Msg::FieldExpires)) }
                    input #expires name="expires" type="datetime-local";
                    label for="password" { (t(Msg::FieldInitialPassword)) }
                    input #password name="password" type="password" required autocomplete="new-password" maxlength="1024";
                    button type="submit" { (t(Msg::AddUser)) }
                }
            }
        }
    }
}

pub async fn user_add(State(app): State<App>, v: Viewer, body: Bytes) -> Response {
    let form = Form::parse(&body);
    let name = field(&form, "name");
    if let Err(res) = v.check_form(&app, &form, Action::UserAdd.as_str(), &name).await {
        return res;
    }
    let Some(role) = Role::ALL.into_iter().find(|r| r.as_str() == field(&form, "role")) else {
        return v.error(StatusCode::BAD_REQUEST, Msg::ErrorBadField, None);
    };
    let expires = match optional(&form, "expires").map(|e| local_time(&e)).transpose() {
        Ok(e) => e,
        Err(why) => return v.error(StatusCode::BAD_REQUEST, Msg::ErrorRefused, Some(&why)),
    };
    let req = UserAddRequest {
        name: name.clone(),
        role,
        org: optional(&form, "org"),
        expires,
        password: form.get("password").unwrap_or_default().to_owned(),
    };
    match api::users::add(State(app.clone()), authed(&v), Body(req)).await {
        Ok(_) => back_to(&v, "/users", "user-add", &name),
        Err(e) => v.api_error(&e),
    }
}

/// `2026-05-04T10:30` from a datetime-local field, read as UTC, as RFC 3339.
fn local_time(v: &str) -> Result<String, String> {
    let full = if v.len() == 16 { format!("{v}:00Z") } else { format!("{v}Z") };
    util::parse_rfc3339(&full).map(|_| full).ok_or_else(|| format!("{v:?} is not a date and time"))
}

pub async fn user_disable(
    State(app): State<App>,
    v: Viewer,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let form = Form::parse(&body);
    if let Err(res) = v.check_form(&app, &form, Action::UserDisable.as_str(), &name).await {
        return res;
    }
    match api::users::disable(State(app.clone()), authed(&v), Path(name.clone())).await {
        Ok(_) => back_to(&v, "/users", "user-disable", &name),
        Err(e) => v.api_error(&e),
    }
}

// ---------------------------------------------------------------- organizations

pub async fn orgs_page(State(app): State<App>, v: Viewer) -> Response {
    let list = match api::orgs::list(State(app.clone()), authed(&v)).await {
        Ok(Json(list)) => list,
        Err(e) => return v.api_error(&e),
    };
    let may_add = may(&v, Action::OrgAdd, Object::None);
    let may_contract = may(&v, Action::ContractAdd, Object::None);
    // Only an operator has rules (a provider's are refused by `OrgPolicy::check`).
    let settable: Vec<bool> = list
        .iter()
        .map(|o| o.kind == OrgKind::Operator && may(&v, Action::OrgSet, Object::Named(&o.name)))
        .collect();
    let mays = OrgMays { add: may_add, contract: may_contract, set: &settable };
    let body = orgs_body(v.ui.lang, done(&v).as_ref(), &list, mays, &v.csrf);
    v.page(StatusCode::OK, pages::layout(&v.frame(), Msg::OrgsTitle, body))
}

/// What the viewer may do on the organizations page: add, add a contract, change the rules
/// of each listed organization.
struct OrgMays<'a> {
    add: bool,
    contract: bool,
    set: &'a [bool],
}

/// A session limit as the form shows it: `8h`, empty for none.
fn limit_text(secs: Option<i64>) -> String {
    secs.map(|s| {
        humantime::format_duration(std::time::Duration::from_secs(u64::try_from(s).unwrap_or(0)))
            .to_string()
    })
    .unwrap_or_default()
}

fn orgs_body(
    lang: Lang,
    done: Option<&Done>,
    list: &[OrgInfo],
    mays: OrgMays<'_>,
    csrf: &str,
) -> Markup {
    let (may_add, may_contract) = (mays.add, mays.contract);
    let t = |m: Msg| m.text(lang);
    let kind =
        |k: OrgKind| t(if k == OrgKind::Operator { Msg::KindOperator } else { Msg::KindProvider });
    let of = |k: OrgKind| list.iter().filter(move |o| o.kind == k);
    html! {
        h1 { (t(Msg::OrgsTitle)) }
        (pages::done_note(lang, done))
        @if list.is_empty() { p.empty { (t(Msg::NoOrgs)) } } @else {
            div.scroll { table.orgs {
                thead { tr {
                    th scope="col" { (t(Msg::FieldName)) }
                    th scope="col" { (t(Msg::FieldKind)) }
                    th scope="col" { (t(Msg::ColContracts)) }
                    th scope="col" { (t(Msg::FieldNoApproval)) }
                    th scope="col" { (t(Msg::FieldMaxSession)) }
                    th scope="col" { (t(Msg::FieldRequireSigned)) }
                } }
                tbody {
                    @for o in list {
                        tr.org data-org=(o.name) {
                            th scope="row" { (o.name) }
                            td { (kind(o.kind)) }
                            td.contracts { @if o.contracts.is_empty() { "–" } @else { (o.contracts.join(", ")) } }
                            td { (t(if o.allow_no_approval { Msg::Yes } else { Msg::No })) }
                            td { @match o.max_session_secs {
                                Some(s) => (humantime::format_duration(std::time::Duration::from_secs(u64::try_from(s).unwrap_or(0)))),
                                None => "–",
                            } }
                            td { (t(if o.require_signed { Msg::Yes } else { Msg::No })) }
                        }
                    }
                }
            } }
        }
        @for (o, _) in list.iter().zip(mays.set).filter(|(_, set)| **set) {
            section.org-rules aria-labelledby={ "rules-" (o.name) } {
                h2 id={ "rules-" (o.name) } { (t(Msg::OrgRules)) " " (o.name) }
                form.stack.org-set data-org=(o.name) method="post" action={ "/orgs/" (o.name) "/rules" } {
                    input type="hidden" name="csrf" value=(csrf);
                    label for={ "max-" (o.name) } { (t(Msg::FieldMaxSession)) }
                    p.hint { (t(Msg::OrgRulesHint)) }
                    input id={ "max-" (o.name) } name="max_session" type="text" maxlength="32" value=(limit_text(o.max_session_secs));
                    div.check {
                        input id={ "free-" (o.name) } name="allow_no_approval" type="checkbox" value="yes" checked[o.allow_no_approval];
                        label for={ "free-" (o.name) } { (t(Msg::FieldNoApproval)) }
                    }
                    div.check {
                        input id={ "signed-" (o.name) } name="require_signed" type="checkbox" value="yes" checked[o.require_signed];
                        label for={ "signed-" (o.name) } { (t(Msg::FieldRequireSigned)) }
                    }
                    button type="submit" aria-label={ (t(Msg::SaveRules)) " " (o.name) } { (t(Msg::SaveRules)) }
                }
            }
        }
        @if may_add {
            section aria-labelledby="add-org" {
                h2 #add-org { (t(Msg::AddOrg)) }
                form.stack #org-add method="post" action="/orgs/new" {
                    input type="hidden" name="csrf" value=(csrf);
                    label for="name" { (t(Msg::FieldName)) }
                    input #name name="name" type="text" required maxlength="64" pattern="[A-Za-z0-9_.@-]{1,64}" autocapitalize="none" spellcheck="false";
                    label for="kind" { (t(Msg::FieldKind)) }
                    select #kind name="kind" {
                        option value="operator" { (t(Msg::KindOperator)) }
                        option value="provider" { (t(Msg::KindProvider)) }
                    }
                    label for="max_session" { (t(Msg::FieldMaxSession)) }
                    input #max_session name="max_session" type="text" maxlength="32";
                    div.check {
                        input #allow_no_approval name="allow_no_approval" type="checkbox" value="yes";
                        label for="allow_no_approval" { (t(Msg::FieldNoApproval)) }
                    }
                    div.check {
                        input #require_signed name="require_signed" type="checkbox" value="yes";
                        label for="require_signed" { (t(Msg::FieldRequireSigned)) }
                    }
                    button type="submit" { (t(Msg::AddOrg)) }
                }
            }
        }
        @if may_contract {
            section aria-labelledby="add-contract" {
                h2 #add-contract { (t(Msg::AddContract)) }
                form.stack #contract-add method="post" action="/contracts/new" {
                    input type="hidden" name="csrf" value=(csrf);
                    label for="provider" { (t(Msg::KindProvider)) }
                    select #provider name="provider" required {
                        @for o in of(OrgKind::Provider) { option value=(o.name) { (o.name) } }
                    }
                    label for="operator" { (t(Msg::KindOperator)) }
                    select #operator name="operator" required {
                        @for o in of(OrgKind::Operator) { option value=(o.name) { (o.name) } }
                    }
                    button type="submit" { (t(Msg::AddContract)) }
                }
            }
        }
    }
}

pub async fn org_add(State(app): State<App>, v: Viewer, body: Bytes) -> Response {
    let form = Form::parse(&body);
    let name = field(&form, "name");
    if let Err(res) = v.check_form(&app, &form, Action::OrgAdd.as_str(), &name).await {
        return res;
    }
    let kind = match form.get("kind") {
        Some("operator") => OrgKind::Operator,
        Some("provider") => OrgKind::Provider,
        _ => return v.error(StatusCode::BAD_REQUEST, Msg::ErrorBadField, None),
    };
    let req = OrgAddRequest {
        name: name.clone(),
        kind,
        allow_no_approval: form.get("allow_no_approval") == Some("yes"),
        max_session: optional(&form, "max_session"),
        require_signed: form.get("require_signed") == Some("yes"),
    };
    match api::orgs::add(State(app.clone()), authed(&v), Body(req)).await {
        Ok(_) => back_to(&v, "/orgs", "org-add", &name),
        Err(e) => v.api_error(&e),
    }
}

/// An operator's rules, all three as the form shows them, through `PATCH /v1/orgs/{name}`'s
/// own handler (authz `org.set`, `OrgChange::apply`, audit `org.set`).
pub async fn org_set(
    State(app): State<App>,
    v: Viewer,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let form = Form::parse(&body);
    if let Err(res) = v.check_form(&app, &form, Action::OrgSet.as_str(), &name).await {
        return res;
    }
    let req = OrgSetRequest {
        allow_no_approval: Some(form.get("allow_no_approval") == Some("yes")),
        max_session: Some(optional(&form, "max_session").unwrap_or_else(|| "none".to_owned())),
        require_signed: Some(form.get("require_signed") == Some("yes")),
    };
    match api::orgs::set(State(app.clone()), authed(&v), Path(name.clone()), Body(req)).await {
        Ok(Json(o)) => back_to(&v, "/orgs", "org-set", &o.name),
        Err(e) => v.api_error(&e),
    }
}

pub async fn contract_add(State(app): State<App>, v: Viewer, body: Bytes) -> Response {
    let form = Form::parse(&body);
    let (provider, operator) = (field(&form, "provider"), field(&form, "operator"));
    let what = format!("{provider}/{operator}");
    if let Err(res) = v.check_form(&app, &form, Action::ContractAdd.as_str(), &what).await {
        return res;
    }
    let req = ContractAddRequest { provider, operator };
    match api::orgs::contract_add(State(app.clone()), authed(&v), Body(req)).await {
        Ok(_) => back_to(&v, "/orgs", "contract-add", &what),
        Err(e) => v.api_error(&e),
    }
}

// ---------------------------------------------------------------- settings

pub async fn settings_page(State(app): State<App>, v: Viewer) -> Response {
    let list = match api::settings::list(State(app.clone()), authed(&v)).await {
        Ok(Json(list)) => list,
        Err(e) => return v.api_error(&e),
    };
    let note = match v.query.get("done").map(String::as_str) {
        Some("settings-set") => Some(Msg::SettingsSaved),
        Some("settings-unchanged") => Some(Msg::SettingsUnchanged),
        _ => None,
    };
    let may_set = may(&v, Action::SettingsSet, Object::Named("settings"));
    let s = &app.cfg.settings;
    let t = |m: Msg| m.text(v.ui.lang);
    let yes_no = |b: bool| t(if b { Msg::Yes } else { Msg::No });
    let fixed: Vec<(Msg, String)> = vec![
        (Msg::SetRefuseCommon, yes_no(s.password.refuse_common).to_owned()),
        (Msg::SetNoApproval, yes_no(s.sessions.allow_no_approval).to_owned()),
        (Msg::SetLinksPerUser, crate::relay::MAX_LINKS_PER_USER.to_string()),
        (Msg::SetEnrolTtl, s.enrolment.token_ttl.clone()),
        (Msg::SetCertTtl, s.enrolment.cert_ttl.clone()),
    ];
    let body = settings_body(v.ui.lang, note, &list, &fixed, may_set, &v.csrf);
    v.page(StatusCode::OK, pages::layout(&v.frame(), Msg::SettingsTitle, body))
}

/// The label of a setting that can be changed at run time.
fn setting_msg(k: Key) -> Msg {
    match k {
        Key::MinLength => Msg::SetMinLength,
        Key::MinClasses => Msg::SetMinClasses,
        Key::History => Msg::SetHistory,
        Key::LockoutThreshold => Msg::SetLockoutThreshold,
        Key::LockoutDuration => Msg::SetLockoutDuration,
        Key::LoginTtl => Msg::SetLoginTtl,
        Key::IdleTimeout => Msg::SetIdle,
        Key::DefaultDuration => Msg::SetDefaultDuration,
        Key::TunnelIdle => Msg::SetTunnelIdle,
    }
}

/// A form field's id for a setting (`auth.lockout_threshold` -> `set-auth-lockout_threshold`).
fn setting_id(key: &str) -> String {
    format!("set-{}", key.replace('.', "-"))
}

fn settings_body(
    lang: Lang,
    note: Option<Msg>,
    list: &[SettingInfo],
    fixed: &[(Msg, String)],
    may_set: bool,
    csrf: &str,
) -> Markup {
    let t = |m: Msg| m.text(lang);
    let rows = list.iter().filter_map(|s| Key::parse(&s.key).map(|k| (k, s)));
    let table = html! {
        div.scroll { table.settings {
            thead { tr {
                th scope="col" { (t(Msg::SettingsColSetting)) }
                th scope="col" { (t(Msg::SettingsColValue)) }
                th scope="col" { (t(Msg::SettingsColAllowed)) }
                th scope="col" { (t(Msg::SettingsColSource)) }
            } }
            tbody {
                @for (k, s) in rows {
                    tr.setting data-setting=(s.key) {
                        th scope="row" {
                            @if may_set { label for=(setting_id(&s.key)) { (t(setting_msg(k))) } }
                            @else { (t(setting_msg(k))) }
                            br; code.key { (s.key) }
                        }
                        td {
                            @if may_set {
                                input id=(setting_id(&s.key)) name=(s.key) type="text" required maxlength="32" value=(s.value) autocapitalize="none" spellcheck="false";
                            } @else {
                                span.value { (s.value) }
                            }
                        }
                        td { (s.range) }
                        td {
                            @if s.changed { (t(Msg::SettingsChanged)) " (server.toml: " (s.file_value) ")" }
                            @else { code { "server.toml" } }
                        }
                    }
                }
            }
        } }
    };
    html! {
        h1 { (t(Msg::SettingsTitle)) }
        @if let Some(n) = note { p.note role="status" { (t(n)) } }
        p { (t(Msg::SettingsLive)) " " code { "server.toml" } "." }
        @if may_set {
            form #settings-set method="post" action="/settings" {
                input type="hidden" name="csrf" value=(csrf);
                (table)
                button type="submit" { (t(Msg::SettingsSave)) }
            }
        } @else {
            (table)
        }
        h2 { (t(Msg::SettingsReadOnly)) " " code { "server.toml" } }
        dl.facts.settings {
            @for (label, value) in fixed {
                dt { (t(*label)) } dd { (value) }
            }
        }
    }
}

/// The settings form: the values that differ from those in force, through the API's own
/// `PATCH /v1/settings` (checks, compare-and-set, audit).
pub async fn settings_set(State(app): State<App>, v: Viewer, body: Bytes) -> Response {
    let form = Form::parse(&body);
    if let Err(res) = v.check_form(&app, &form, Action::SettingsSet.as_str(), "settings").await {
        return res;
    }
    let live = app.settings.get();
    let mut values = BTreeMap::new();
    for k in Key::ALL {
        let Some(raw) = form.get(k.as_str()).map(str::trim) else { continue };
        // The same value written differently (`900s` for `15m`) is no change either.
        let same = live.with(k, raw).is_ok_and(|p| p.get(k) == live.get(k));
        if !same {
            values.insert(k.as_str().to_owned(), raw.to_owned());
        }
    }
    if values.is_empty() {
        return v.ui.remember(Redirect::to("/settings?done=settings-unchanged").into_response());
    }
    let req = SettingsSetRequest { values };
    match api::settings::set(State(app.clone()), authed(&v), Body(req)).await {
        Ok(_) => v.ui.remember(Redirect::to("/settings?done=settings-set").into_response()),
        Err(e) => v.api_error(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_enrolment_line_is_the_agents_command() {
        let l = enroll_line("https://fw.example:8443", "tok123");
        assert_eq!(
            l,
            "fernwart-agent enroll --server https://fw.example:8443 --token tok123 --data /var/lib/fernwart-agent --ca-cert ca.pem"
        );
    }

    #[test]
    fn admin_buttons_follow_what_is_allowed() {
        let m = MachineInfo {
            name: "m1".into(),
            org: None,
            online: false,
            switch: SwitchState::Unknown,
            targets: vec![],
            enrolled: true,
            revoked: false,
            last_seen: None,
            signature_required: false,
            trust: "unknown".into(),
            approvers: vec![],
            e2e_key: None,
        };
        let page = machines_body(Lang::En, None, std::slice::from_ref(&m), &[false], false, "tok")
            .into_string();
        assert!(!page.contains("/machines/m1/revoke") && !page.contains("/machines/new"));
        let page = machines_body(Lang::De, None, &[m], &[true], true, "tok").into_string();
        assert!(page.contains(r#"action="/machines/m1/revoke""#));
        assert!(page.contains(r#"action="/machines/new""#));
        assert!(page.contains(r#"for="name""#) && page.contains(r#"for="org""#));
    }
}
