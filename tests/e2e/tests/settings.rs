//! Issue 12: the server's run-time settings from the command line (`fernwart settings show |
//! set KEY VALUE`, `PATCH /v1/settings`): in force at once, over `server.toml`, kept across a
//! restart, on record; changed by admins only, within bounds.

use anyhow::{ensure, Context, Result};
use fernwart_e2e::{default_password, World};
use serde_json::Value;

fn value(list: &Value, key: &str) -> Option<String> {
    list.as_array()?
        .iter()
        .find(|s| s["key"] == key)
        .and_then(|s| s["value"].as_str())
        .map(str::to_owned)
}

#[test]
fn settings_change_at_run_time_from_the_command_line() -> Result<()> {
    let mut w = World::standard()?;
    let admin = w.admin.clone();
    let list = w.fw_json("aud1", &["settings", "show"])?;
    ensure!(value(&list, "password.min_length").as_deref() == Some("12"), "{list}");

    // A longer minimum: a user with a 20-character password is refused at once.
    let set = w.fw_json(&admin, &["settings", "set", "password.min_length", "24"])?;
    ensure!(value(&set, "password.min_length").as_deref() == Some("24"), "{set}");
    let pw = format!("{}\n", default_password("tech9"));
    let out = w.fw_raw(
        &admin,
        &["user", "add", "tech9", "--role", "technician", "--password-stdin"],
        Some(&pw),
    )?;
    let why = out.reason()?;
    ensure!(why.contains("at least 24"), "{why}");

    // Out of bounds, unknown, or not an admin: refused with a reason, nothing changes.
    let why =
        w.fw_raw(&admin, &["settings", "set", "auth.lockout_threshold", "50"], None)?.reason()?;
    ensure!(why.contains("must be 3 to 20"), "{why}");
    let why = w.fw_raw(&admin, &["settings", "set", "server.listen", "1"], None)?.reason()?;
    ensure!(why.contains("no setting"), "{why}");
    let why = w.fw_raw("aud1", &["settings", "set", "password.min_length", "8"], None)?.reason()?;
    ensure!(why.contains("admin"), "{why}");
    ensure!(w.fw_raw("tech1", &["settings", "show"], None)?.reason().is_ok(), "tech1 reads them");

    // Kept across a restart, over server.toml.
    w.stop_server()?;
    w.start_server()?;
    let list = w.fw_json("aud1", &["settings", "show"]).context("after the restart")?;
    ensure!(value(&list, "password.min_length").as_deref() == Some("24"), "{list}");
    let events = w.audit("aud1")?;
    let on_record = events.iter().any(|e| {
        let text = e.to_string();
        e["action"] == "settings.set"
            && ["password.min_length", "12", "24"].iter().all(|w| text.contains(w))
    });
    ensure!(on_record, "the change is not on record with old and new value");
    Ok(())
}
