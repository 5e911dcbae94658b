//! `settings show | set KEY VALUE`: the server's run-time settings (password policy, lockout,
//! login and session limits). Read by admins and auditors, changed by admins; a change takes
//! effect at once and takes precedence over the server's `server.toml`.

use std::collections::BTreeMap;

use fernwart_api::{SettingInfo, SettingsSetRequest};
use fernwart_transport::http_client::HttpMethod;

use crate::{output, Context};

pub async fn show(ctx: &Context) -> anyhow::Result<()> {
    let list: Vec<SettingInfo> = ctx.get("/v1/settings").await?;
    print(ctx, &list);
    Ok(())
}

pub async fn set(ctx: &Context, key: &str, value: &str) -> anyhow::Result<()> {
    let req = SettingsSetRequest { values: BTreeMap::from([(key.to_owned(), value.to_owned())]) };
    let list: Vec<SettingInfo> = ctx.call(HttpMethod::PATCH, "/v1/settings", Some(&req)).await?;
    if ctx.json {
        output::print_json(&list);
    } else if let Some(s) = list.iter().find(|s| s.key == key) {
        crate::out!("{} = {} (in force now; server.toml: {})", s.key, s.value, s.file_value);
    }
    Ok(())
}

fn print(ctx: &Context, list: &[SettingInfo]) {
    if ctx.json {
        output::print_json(&list);
        return;
    }
    for s in list {
        let from = if s.changed {
            format!("changed; server.toml: {}", s.file_value)
        } else {
            "server.toml".to_owned()
        };
        crate::out!("{:<30} {:<10} ({from}; allowed: {})", s.key, s.value, s.range);
    }
}
