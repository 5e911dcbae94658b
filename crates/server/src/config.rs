//! `DIR/server.toml`, with `FERNWART_<SECTION>_<KEY>` environment overrides.

use std::{net::SocketAddr, path::Path, time::Duration};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid settings in {path}: {message}")]
    Invalid { path: String, message: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSection,
    #[serde(default)]
    pub auth: AuthSection,
    #[serde(default)]
    pub password: PasswordSection,
    #[serde(default)]
    pub enrolment: EnrolmentSection,
    #[serde(default)]
    pub sessions: SessionSection,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Address the one TLS port listens on, e.g. `0.0.0.0:8443` or `[::]:8443`.
    pub listen: SocketAddr,
    /// URL agents and technicians use; its host is in the server certificate.
    pub public_url: String,
    /// Most simultaneous TCP connections (agents, technicians, API calls together).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

fn default_max_connections() -> usize {
    16_384
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// Failed logins in a row that lock an account (BSI CS-108: 20, OPS.2.4: 3).
    pub lockout_threshold: u32,
    /// How long a locked account stays locked, e.g. "15m".
    pub lockout_duration: String,
    /// Lifetime of a CLI login, e.g. "12h".
    pub token_ttl: String,
}

impl Default for AuthSection {
    fn default() -> Self {
        Self { lockout_threshold: 10, lockout_duration: "15m".into(), token_ttl: "12h".into() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PasswordSection {
    pub min_length: usize,
    /// Of lower case, upper case, digits, others: how many must appear.
    pub min_classes: usize,
}

impl Default for PasswordSection {
    fn default() -> Self {
        Self { min_length: 12, min_classes: 3 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnrolmentSection {
    /// Lifetime of a one-time enrolment token, e.g. "24h".
    pub token_ttl: String,
    /// Lifetime of a machine certificate, e.g. "397d".
    pub cert_ttl: String,
}

impl Default for EnrolmentSection {
    fn default() -> Self {
        Self { token_ttl: "24h".into(), cert_ttl: "397d".into() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionSection {
    /// Whether `session create --no-approval` is allowed.
    pub allow_no_approval: bool,
    /// Time window when neither --until nor --duration is given.
    pub default_duration: String,
}

impl Default for SessionSection {
    fn default() -> Self {
        Self { allow_no_approval: true, default_duration: "8h".into() }
    }
}

/// Settings after validation, durations parsed.
#[derive(Debug, Clone)]
pub struct Config {
    pub settings: Settings,
    pub lockout_duration: Duration,
    pub login_ttl: Duration,
    pub enrol_token_ttl: Duration,
    pub cert_ttl: Duration,
    pub default_session: Duration,
}

pub const FILE_NAME: &str = "server.toml";

impl Config {
    /// Reads `DIR/server.toml` and applies `env` overrides (pairs of name and value).
    pub fn load(
        dir: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let path = dir.join(FILE_NAME);
        let text = std::fs::read_to_string(&path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        Self::parse(&text, env)
            .map_err(|message| ConfigError::Invalid { path: path.display().to_string(), message })
    }

    pub fn parse(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, String> {
        let mut value: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
        for (name, raw) in env {
            let Some(rest) = name.strip_prefix("FERNWART_") else { continue };
            let rest = rest.to_ascii_lowercase();
            let Some((section, key)) = rest.split_once('_') else { continue };
            if !matches!(section, "server" | "auth" | "password" | "enrolment" | "sessions") {
                continue;
            }
            let parsed = toml::from_str::<toml::Table>(&format!("v = {raw}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or(toml::Value::String(raw.clone()));
            let table = value
                .entry(section.to_owned())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let toml::Value::Table(t) = table {
                t.insert(key.to_owned(), parsed);
            }
        }
        let settings: Settings =
            toml::Value::Table(value).try_into().map_err(|e: toml::de::Error| e.to_string())?;
        Self::validate(settings)
    }

    fn validate(settings: Settings) -> Result<Self, String> {
        let dur = |what: &str, s: &str| {
            humantime::parse_duration(s).map_err(|e| format!("{what} = {s:?}: {e}"))
        };
        if settings.auth.lockout_threshold == 0 {
            return Err("auth.lockout_threshold must be at least 1".into());
        }
        if !(1..=4).contains(&settings.password.min_classes) {
            return Err("password.min_classes must be 1 to 4".into());
        }
        if settings.password.min_length < 8 {
            return Err("password.min_length must be at least 8".into());
        }
        url::Url::parse(&settings.server.public_url)
            .map_err(|e| format!("server.public_url: {e}"))?;
        Ok(Self {
            lockout_duration: dur("auth.lockout_duration", &settings.auth.lockout_duration)?,
            login_ttl: dur("auth.token_ttl", &settings.auth.token_ttl)?,
            enrol_token_ttl: dur("enrolment.token_ttl", &settings.enrolment.token_ttl)?,
            cert_ttl: dur("enrolment.cert_ttl", &settings.enrolment.cert_ttl)?,
            default_session: dur("sessions.default_duration", &settings.sessions.default_duration)?,
            settings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str =
        "[server]\nlisten = \"127.0.0.1:8443\"\npublic_url = \"https://127.0.0.1:8443\"\n";

    #[test]
    fn defaults_apply() {
        let c = Config::parse(BASE, []).unwrap();
        assert_eq!(c.settings.auth.lockout_threshold, 10);
        assert_eq!(c.enrol_token_ttl, Duration::from_secs(24 * 3600));
    }

    #[test]
    fn env_overrides_win() {
        let env = [
            ("FERNWART_AUTH_LOCKOUT_THRESHOLD".to_string(), "3".to_string()),
            ("FERNWART_ENROLMENT_TOKEN_TTL".to_string(), "2s".to_string()),
            ("HOME".to_string(), "/root".to_string()),
        ];
        let c = Config::parse(BASE, env).unwrap();
        assert_eq!(c.settings.auth.lockout_threshold, 3);
        assert_eq!(c.enrol_token_ttl, Duration::from_secs(2));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = Config::parse(&format!("{BASE}[auth]\nlockout = 3\n"), []).unwrap_err();
        assert!(err.contains("lockout"), "{err}");
    }

    #[test]
    fn bad_durations_are_refused() {
        let err = Config::parse(&format!("{BASE}[auth]\ntoken_ttl = \"soon\"\n"), []).unwrap_err();
        assert!(err.contains("token_ttl"), "{err}");
    }
}
