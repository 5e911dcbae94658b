//! `/v1/settings`: the settings in force, and an admin's change of them at run time
//! (`fernwart settings show | set KEY VALUE`, the console's settings page).

use axum::{extract::State, Json};
use fernwart_api::{SettingInfo, SettingsSetRequest};

use super::{ApiError, ApiResult, Authed, Body};
use crate::{
    audit::{Entry, Event},
    authz::{Action, Object},
    domain::settings::{Key, Policy},
    settings::base,
    store::SettingWrite,
    util, App,
};

/// `GET /v1/settings`.
pub async fn list(State(app): State<App>, a: Authed) -> ApiResult<Json<Vec<SettingInfo>>> {
    a.allow(&app, Action::SettingsRead, Object::None)?;
    let stored = app.store.run(|b| b.settings()).await?;
    Ok(Json(infos(&app, app.settings.get(), &stored)))
}

/// `PATCH /v1/settings`: checked whole by [`Policy::apply`] (a value outside its bounds
/// refuses the change), written in one transaction by compare-and-set with a `settings.set`
/// record of each value before and after, then in force at once.
pub async fn set(
    State(app): State<App>,
    a: Authed,
    Body(req): Body<SettingsSetRequest>,
) -> ApiResult<Json<Vec<SettingInfo>>> {
    a.allow(&app, Action::SettingsSet, Object::Named("settings"))?;
    if req.values.len() > Key::ALL.len() {
        return Err(ApiError::bad("too many settings in one change"));
    }
    let stored = app.store.run(|b| b.settings()).await?;
    // Computed from what the store holds (not from what this node has in force), so the
    // compare-and-set below checks exactly what the change was computed from.
    let (now, _) = base(&app.cfg).with_stored(&stored);
    let (_, changes) = now.apply(&req.values).map_err(|e| ApiError::bad(e.to_string()))?;
    let writes: Vec<SettingWrite> = changes
        .iter()
        .map(|c| SettingWrite {
            key: c.key.as_str().to_owned(),
            expected: stored.iter().find(|(k, _)| k == c.key.as_str()).map(|(_, v)| v.clone()),
            value: c.new.clone(),
        })
        .collect();
    let c = &a.caller;
    let entry = Entry::new(&c.name, &c.source, Event::SettingsSet { changes: changes.clone() });
    let by = c.name.clone();
    let written = app.store.run(move |b| b.settings_set(&writes, &by, util::now(), &entry)).await?;
    if !written {
        return Err(ApiError::conflict("the settings changed meanwhile: look again and retry"));
    }
    app.settings.put(&changes);
    let stored = app.store.run(|b| b.settings()).await?;
    Ok(Json(infos(&app, app.settings.get(), &stored)))
}

fn infos(app: &App, live: Policy, stored: &[(String, String)]) -> Vec<SettingInfo> {
    let file = base(&app.cfg);
    Key::ALL
        .into_iter()
        .map(|k| SettingInfo {
            key: k.as_str().to_owned(),
            value: live.get(k),
            file_value: file.get(k),
            changed: stored.iter().any(|(s, _)| s == k.as_str()),
            range: k.range(),
        })
        .collect()
}
