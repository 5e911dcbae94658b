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
    /// Most connections from one IP address that have not shown a machine certificate.
    #[serde(default = "default_max_per_source")]
    pub max_connections_per_source: usize,
    /// Connections only agents (with a machine certificate) may use; default a quarter of
    /// `max_connections`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved_for_agents: Option<usize>,
    /// Deadline for one whole API request (headers, body, answer), e.g. "30s".
    #[serde(default = "default_request_timeout")]
    pub request_timeout: String,
}

impl ServerSection {
    /// Connections kept for agents: those without a machine certificate get the rest.
    pub fn reserved_for_agents(&self) -> usize {
        self.reserved_for_agents.unwrap_or(self.max_connections / 4)
    }
}

fn default_max_connections() -> usize {
    16_384
}

fn default_max_per_source() -> usize {
    64
}

fn default_request_timeout() -> String {
    "30s".into()
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
    /// A login unused for this long ends, e.g. "1h" (a technician link in use keeps its login
    /// alive).
    pub idle_timeout: String,
}

impl Default for AuthSection {
    fn default() -> Self {
        Self {
            lockout_threshold: 10,
            lockout_duration: "15m".into(),
            token_ttl: "12h".into(),
            idle_timeout: "1h".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PasswordSection {
    pub min_length: usize,
    /// Of lower case, upper case, digits, others: how many must appear.
    pub min_classes: usize,
    /// `fernwart passwd` refuses the current password and this many earlier ones (0 to 24).
    pub history: usize,
    /// Refuse common passwords (a built-in list, also as a common word with digits and
    /// symbols around it) and the user name as a password.
    pub refuse_common: bool,
}

impl Default for PasswordSection {
    fn default() -> Self {
        Self { min_length: 12, min_classes: 3, history: 4, refuse_common: true }
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
    /// Whether `session create --no-approval` is allowed on machines of no organization (an
    /// operator allows it for its own machines with `org add --allow-no-approval`).
    pub allow_no_approval: bool,
    /// Time window when neither --until nor --duration is given.
    pub default_duration: String,
    /// A tunnel (one TCP connection) that carried nothing for this long is closed, e.g.
    /// "30m"; "0s" lets idle tunnels stay.
    pub tunnel_idle_timeout: String,
}

impl Default for SessionSection {
    fn default() -> Self {
        Self {
            allow_no_approval: false,
            default_duration: "8h".into(),
            tunnel_idle_timeout: "30m".into(),
        }
    }
}

/// Settings after validation, durations parsed.
#[derive(Debug, Clone)]
pub struct Config {
    pub settings: Settings,
    pub request_timeout: Duration,
    pub lockout_duration: Duration,
    pub login_ttl: Duration,
    pub login_idle: Duration,
    pub enrol_token_ttl: Duration,
    pub cert_ttl: Duration,
    pub default_session: Duration,
    pub tunnel_idle: Duration,
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

    /// Parses settings, then applies `env`: a `FERNWART_<SECTION>_<KEY>` whose section is one of
    /// the server's must name a setting it knows (a misspelt override cannot go unnoticed);
    /// other `FERNWART_*` variables (the CLI's, the agent's, [`CLIENT_ENV`]) are left alone.
    pub fn parse(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, String> {
        let mut value: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
        if let Some(audit) = value.get("audit") {
            let key = audit.as_table().and_then(|t| t.keys().next()).map_or("", String::as_str);
            return Err(audit_refused(key, None));
        }
        for (name, raw) in env {
            let Some(rest) = name.strip_prefix("FERNWART_") else { continue };
            if CLIENT_ENV.contains(&name.as_str()) {
                continue;
            }
            let rest = rest.to_ascii_lowercase();
            let (section, key) = rest.split_once('_').unwrap_or((&rest, ""));
            if section == "audit" {
                return Err(audit_refused(key, Some(&name)));
            }
            // Not one of the server's sections: a variable of the CLI, the agent or a script
            // in the same shell (DESIGN §6), left alone.
            let Some(keys) = section_keys(section) else {
                continue;
            };
            if !keys.contains(&key) {
                return Err(format!(
                    "{name}: [{section}] has no setting {key:?}; it has {}",
                    keys.join(", ")
                ));
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
        let threshold = settings.auth.lockout_threshold;
        if !(3..=20).contains(&threshold) {
            return Err(format!(
                "auth.lockout_threshold = {threshold}: must be 3 to 20 (BSI OPS.2.4 asks 3, \
                 CS-108 advises at most 20)"
            ));
        }
        if !(1..=4).contains(&settings.password.min_classes) {
            return Err("password.min_classes must be 1 to 4".into());
        }
        if settings.password.min_length < 8 {
            return Err("password.min_length must be at least 8".into());
        }
        if settings.password.history > 24 {
            return Err("password.history must be 0 to 24".into());
        }
        url::Url::parse(&settings.server.public_url)
            .map_err(|e| format!("server.public_url: {e}"))?;
        if settings.server.reserved_for_agents() >= settings.server.max_connections {
            return Err("server.reserved_for_agents must be below server.max_connections".into());
        }
        if settings.server.max_connections_per_source == 0 {
            return Err("server.max_connections_per_source must be at least 1".into());
        }
        Ok(Self {
            request_timeout: dur("server.request_timeout", &settings.server.request_timeout)?,
            lockout_duration: dur("auth.lockout_duration", &settings.auth.lockout_duration)?,
            login_ttl: dur("auth.token_ttl", &settings.auth.token_ttl)?,
            login_idle: dur("auth.idle_timeout", &settings.auth.idle_timeout)?,
            enrol_token_ttl: dur("enrolment.token_ttl", &settings.enrolment.token_ttl)?,
            cert_ttl: dur("enrolment.cert_ttl", &settings.enrolment.cert_ttl)?,
            default_session: dur("sessions.default_duration", &settings.sessions.default_duration)?,
            tunnel_idle: dur(
                "sessions.tunnel_idle_timeout",
                &settings.sessions.tunnel_idle_timeout,
            )?,
            settings,
        })
    }
}

/// `FERNWART_*` variables of the CLI, the agent, the tests and scripts: they may be set where the
/// server starts (a shell, the acceptance run) and are not server settings.
pub const CLIENT_ENV: &[&str] = &[
    "FERNWART_HOME",
    "FERNWART_SERVER",
    "FERNWART_CA_CERT",
    "FERNWART_PROXY",
    "FERNWART_ENROLL_TOKEN",
    "FERNWART_TOKEN",
    "FERNWART_BIN_DIR",
];

/// The keys of a settings section, or `None` for a name that is not a section.
fn section_keys(section: &str) -> Option<&'static [&'static str]> {
    Some(match section {
        "server" => known_keys::<ServerSection>(),
        "auth" => known_keys::<AuthSection>(),
        "password" => known_keys::<PasswordSection>(),
        "enrolment" => known_keys::<EnrolmentSection>(),
        "sessions" => known_keys::<SessionSection>(),
        _ => return None,
    })
}

/// Why an `[audit]` setting (planned for a later release) is refused, from the file or `env`.
fn audit_refused(key: &str, env: Option<&str>) -> String {
    let setting = if key.is_empty() { "audit".to_owned() } else { format!("audit.{key}") };
    let source = env.map(|name| format!(" ({name})")).unwrap_or_default();
    let what = match key {
        "syslog" => "audit export to syslog",
        _ => "the [audit] section",
    };
    format!("{setting}{source}: {what} is not implemented yet in this release")
}

/// The field names serde accepts for `T`, taken from its derived `Deserialize` (so a field added
/// to a section needs no second list here): a map with a key no field has makes a
/// `deny_unknown_fields` struct report `unknown_field` with the names it expects.
fn known_keys<T: serde::de::DeserializeOwned>() -> &'static [&'static str] {
    #[derive(Debug)]
    struct Probe(Option<&'static [&'static str]>);
    impl std::fmt::Display for Probe {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("probing the settings keys")
        }
    }
    impl std::error::Error for Probe {}
    impl serde::de::Error for Probe {
        fn custom<M: std::fmt::Display>(_: M) -> Self {
            Probe(None)
        }
        fn unknown_field(_: &str, expected: &'static [&'static str]) -> Self {
            Probe(Some(expected))
        }
    }
    let probe = serde::de::value::MapDeserializer::<_, Probe>::new(std::iter::once(("", ())));
    match T::deserialize(probe) {
        Err(Probe(Some(keys))) => keys,
        _ => &[],
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

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn audit_syslog_env_is_refused_as_not_implemented() {
        let err =
            Config::parse(BASE, env(&[("FERNWART_AUDIT_SYSLOG", "tcp://host:514")])).unwrap_err();
        assert_eq!(
            err,
            "audit.syslog (FERNWART_AUDIT_SYSLOG): audit export to syslog is not implemented yet \
             in this release"
        );
    }

    #[test]
    fn audit_section_in_file_is_refused_as_not_implemented() {
        let err = Config::parse(&format!("{BASE}[audit]\nsyslog = \"tcp://host:514\"\n"), [])
            .unwrap_err();
        assert!(err.contains("audit.syslog: audit export to syslog is not implemented"), "{err}");
        let err = Config::parse(&format!("{BASE}[audit]\n"), []).unwrap_err();
        assert_eq!(err, "audit: the [audit] section is not implemented yet in this release");
    }

    #[test]
    fn other_audit_env_is_refused() {
        let err = Config::parse(BASE, env(&[("FERNWART_AUDIT_RETENTION", "90d")])).unwrap_err();
        assert!(err.starts_with("audit.retention (FERNWART_AUDIT_RETENTION): "), "{err}");
        assert!(err.contains("not implemented yet"), "{err}");
    }

    #[test]
    fn unknown_env_key_of_a_known_section_names_the_variable() {
        let err = Config::parse(BASE, env(&[("FERNWART_AUTH_LOCKOUT", "3")])).unwrap_err();
        assert!(err.starts_with("FERNWART_AUTH_LOCKOUT: "), "{err}");
        assert!(err.contains("lockout_threshold"), "lists the keys: {err}");
        let err = Config::parse(BASE, env(&[("FERNWART_SERVER_LISTEN_ADDR", "x")])).unwrap_err();
        assert!(err.starts_with("FERNWART_SERVER_LISTEN_ADDR: "), "{err}");
    }

    #[test]
    fn env_of_other_sections_is_left_alone() {
        // DESIGN §6: variables whose section is not one of the server's belong to the CLI, the
        // agent or a script in the same shell.
        for name in ["FERNWART_TOKEN", "FERNWART_SOMETHING_ELSE", "FERNWART_X"] {
            assert!(Config::parse(BASE, env(&[(name, "1h")])).is_ok(), "{name}");
        }
    }

    #[test]
    fn client_env_is_ignored() {
        let pairs: Vec<_> = CLIENT_ENV.iter().map(|n| (*n, "/somewhere")).collect();
        let c = Config::parse(BASE, env(&pairs)).unwrap();
        assert_eq!(c.settings.server.public_url, "https://127.0.0.1:8443");
    }

    #[test]
    fn every_section_knows_its_keys() {
        assert_eq!(
            known_keys::<Settings>(),
            ["server", "auth", "password", "enrolment", "sessions"]
        );
        for section in known_keys::<Settings>() {
            assert!(!section_keys(section).unwrap_or_default().is_empty(), "{section}");
        }
        assert!(section_keys("server").unwrap_or_default().contains(&"public_url"));
    }

    #[test]
    fn lockout_threshold_must_be_3_to_20() {
        for bad in ["0", "2", "21"] {
            let err =
                Config::parse(BASE, env(&[("FERNWART_AUTH_LOCKOUT_THRESHOLD", bad)])).unwrap_err();
            assert!(
                err.starts_with(&format!("auth.lockout_threshold = {bad}: must be 3 to 20")),
                "{err}"
            );
        }
        for good in ["3", "20"] {
            assert!(Config::parse(BASE, env(&[("FERNWART_AUTH_LOCKOUT_THRESHOLD", good)])).is_ok());
        }
    }
}
