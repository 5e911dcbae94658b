//! The technician's end-to-end key and the agents' keys pinned per machine, both in
//! FERNWART_HOME (see [`fernwart_proto::e2e`] and docs/design-choices.md).
//!
//! - `e2e-key`: this CLI home's static X25519 key (base64 of the secret, 0600). The server
//!   puts its public half into the grants of the sessions this home connects to.
//! - `known_agents.json`: per server and machine, the agent key seen at the first connection
//!   (trust on first use, as ssh's `known_hosts`). A different key later is refused until the
//!   pin is removed with `fernwart machine forget-key NAME`.

use std::collections::BTreeMap;

use anyhow::{bail, Context as _};
use base64::Engine as _;
use fernwart_proto::e2e::{self, PublicKey, StaticKey};
use serde::{Deserialize, Serialize};

use crate::{context::write_private, output, Context};

pub const KEY_FILE: &str = "e2e-key";
pub const PINS_FILE: &str = "known_agents.json";

/// The technician's key of this CLI home, made at first use.
pub fn tech_key(ctx: &Context) -> anyhow::Result<StaticKey> {
    let path = ctx.home.join(KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let secret = base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .ok()
                .and_then(|s| StaticKey::from_secret(&s).ok());
            secret.with_context(|| format!("{} is not a key", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut secret = zeroize::Zeroizing::new([0u8; e2e::KEY_LEN]);
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut secret[..]);
            let key = StaticKey::from_secret(&secret[..])?;
            ctx.ensure_home()?;
            let text = zeroize::Zeroizing::new(format!(
                "{}\n",
                base64::engine::general_purpose::STANDARD.encode(key.secret())
            ));
            write_private(&path, text.as_bytes())?;
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// `known_agents.json`: server URL → machine → agent key.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Pins {
    version: u32,
    servers: BTreeMap<String, BTreeMap<String, String>>,
}

const PINS_VERSION: u32 = 1;

fn load_pins(ctx: &Context) -> anyhow::Result<Pins> {
    let path = ctx.home.join(PINS_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let pins: Pins = serde_json::from_str(&text)
                .with_context(|| format!("reading {}", path.display()))?;
            if pins.version != PINS_VERSION {
                bail!("{}: version {} is not known to this fernwart", path.display(), pins.version);
            }
            Ok(pins)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok(Pins { version: PINS_VERSION, servers: BTreeMap::new() })
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn save_pins(ctx: &Context, pins: &Pins) -> anyhow::Result<()> {
    ctx.ensure_home()?;
    write_private(&ctx.home.join(PINS_FILE), serde_json::to_string_pretty(pins)?.as_bytes())
}

/// The agent key to use for `machine`: the one the server gives, checked against the pin
/// (pinned now if there is none). A changed key is refused.
pub fn check_agent_key(
    ctx: &Context,
    server: &str,
    machine: &str,
    given: Option<&str>,
) -> anyhow::Result<PublicKey> {
    let Some(given) = given else {
        bail!(
            "machine {machine} has no end-to-end key yet: its agent must be updated and linked \
             once before tunnels can open"
        );
    };
    let key: PublicKey = given
        .parse()
        .with_context(|| format!("machine {machine}'s end-to-end key from the server"))?;
    let mut pins = load_pins(ctx)?;
    let held = pins.servers.get(server).and_then(|m| m.get(machine)).cloned();
    match held {
        Some(old) if old == key.to_string() => Ok(key),
        Some(old) => bail!(
            "machine {machine}'s end-to-end key has changed (pinned {old}, the server now gives \
             {key}): refused. If the machine's agent was really replaced, compare the new key \
             with the one `fernwart-agent e2e-key` shows on the machine, then run `fernwart \
             machine forget-key {machine}` and connect again"
        ),
        None => {
            pins.servers
                .entry(server.to_owned())
                .or_default()
                .insert(machine.to_owned(), key.to_string());
            save_pins(ctx, &pins)?;
            eprintln!("pinned machine {machine}'s end-to-end key {key} (first connection)");
            Ok(key)
        }
    }
}

/// `fernwart machine forget-key NAME`: the next connection pins the key the server gives.
pub fn forget_key(ctx: &Context, machine: &str) -> anyhow::Result<()> {
    let server = ctx.server_url()?;
    let mut pins = load_pins(ctx)?;
    let removed = pins.servers.get_mut(&server).and_then(|m| m.remove(machine));
    if removed.is_some() {
        save_pins(ctx, &pins)?;
    }
    if ctx.json {
        output::print_json(&serde_json::json!({"machine": machine, "forgotten": removed}));
    } else if let Some(k) = removed {
        crate::out!(
            "forgot machine {machine}'s end-to-end key {k}; the next connection pins the server's"
        );
    } else {
        crate::out!("no end-to-end key pinned for machine {machine}");
    }
    Ok(())
}
