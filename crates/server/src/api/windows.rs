//! `/v1/windows`: recurring maintenance windows. An operator's approver pre-approves a
//! provider on one of the operator's machines, e.g. weekdays 06:00-08:00 Europe/Berlin;
//! sessions of that provider's technicians inside one occurrence need no further release.

use axum::{
    extract::{Path, State},
    Json,
};
use fernwart_api::{WindowAddRequest, WindowInfo, WindowRemoved};

use super::{ApiError, ApiResult, Authed, Body};
use crate::{
    audit::{Entry, Event},
    authz::{self, Action, Object},
    domain::{
        names,
        window::{self, Days, Window},
    },
    store::NewWindow,
    util, App,
};

pub fn info(w: &Window, now: i64) -> WindowInfo {
    let next =
        w.next_occurrence(now).map(|(open, close)| (util::rfc3339(open), util::rfc3339(close)));
    WindowInfo {
        id: w.id,
        machine: w.machine.clone(),
        provider: w.provider.clone(),
        days: w.days.to_string(),
        from: window::format_time(w.start),
        to: window::format_time(w.end),
        zone: w.zone.clone(),
        created_by: w.created_by.clone(),
        created_at: util::rfc3339(w.created_at),
        next,
    }
}

pub async fn add(
    State(app): State<App>,
    a: Authed,
    Body(req): Body<WindowAddRequest>,
) -> ApiResult<Json<WindowInfo>> {
    if !names::valid(&req.machine) || !names::valid(&req.provider) {
        return Err(ApiError::bad("machine and provider names: 1-64 letters, digits, - _ . @"));
    }
    let m = req.machine.clone();
    let owner = app.store.run(move |b| b.machine_owner(&m)).await?;
    let owner = owner.ok_or_else(|| ApiError::not_found(format!("no machine {}", req.machine)))?;
    a.allow(
        &app,
        Action::WindowAdd,
        Object::Machine { name: &req.machine, org: owner.org.as_deref() },
    )?;
    authz::window_provider(&req.machine, owner.org.as_deref(), &owner.providers, &req.provider)
        .map_err(|r| a.refused(&app, Action::WindowAdd, &req.machine, r))?;
    let days = Days::parse(&req.days).map_err(ApiError::bad)?;
    let start = window::parse_time(&req.from).map_err(ApiError::bad)?;
    let end = window::parse_time(&req.to).map_err(ApiError::bad)?;
    if start >= 24 * 60 {
        return Err(ApiError::bad("--from must be before 24:00"));
    }
    window::check_zone(&req.zone).map_err(ApiError::bad)?;
    let c = &a.caller;
    let now = util::now();
    let new = NewWindow {
        machine_id: owner.id,
        provider: req.provider.clone(),
        days,
        start,
        end,
        zone: req.zone.clone(),
        created_by: c.name.clone(),
        created_at: now,
    };
    let schedule = Window {
        id: 0,
        machine_id: owner.id,
        machine: req.machine.clone(),
        provider: req.provider.clone(),
        days,
        start,
        end,
        zone: req.zone.clone(),
        created_by: c.name.clone(),
        created_at: now,
    }
    .describe();
    let (actor, src, machine, provider) =
        (c.name.clone(), c.source.clone(), req.machine.clone(), req.provider.clone());
    let w = app
        .store
        .run(move |b| {
            let entry = |id| {
                Entry::new(
                    &actor,
                    &src,
                    Event::WindowAdd {
                        machine: machine.clone(),
                        window: id,
                        provider: provider.clone(),
                        schedule: schedule.clone(),
                    },
                )
            };
            b.window_add(&new, &entry)
        })
        .await?;
    Ok(Json(info(&w, now)))
}

pub async fn list(State(app): State<App>, a: Authed) -> ApiResult<Json<Vec<WindowInfo>>> {
    a.allow(&app, Action::WindowList, Object::None)?;
    let org = authz::machine_scope(&a.caller);
    let list = app.store.run(move |b| b.windows(org.as_deref())).await?;
    let now = util::now();
    Ok(Json(list.iter().map(|w| info(w, now)).collect()))
}

pub async fn remove(
    State(app): State<App>,
    a: Authed,
    Path(id): Path<i64>,
) -> ApiResult<Json<WindowRemoved>> {
    let found = app.store.run(move |b| b.window_by_id(id)).await?;
    let (w, org) = found.ok_or_else(|| ApiError::not_found(format!("no window {id}")))?;
    a.allow(&app, Action::WindowRemove, Object::Machine { name: &w.machine, org: org.as_deref() })?;
    let c = &a.caller;
    let entry = Entry::new(
        &c.name,
        &c.source,
        Event::WindowRemove {
            machine: w.machine.clone(),
            window: id,
            provider: w.provider.clone(),
            schedule: w.describe(),
        },
    );
    let removed = app.store.run(move |b| b.window_remove(id, &entry)).await?;
    if !removed {
        return Err(ApiError::not_found(format!("no window {id}")));
    }
    Ok(Json(WindowRemoved { id, removed }))
}
