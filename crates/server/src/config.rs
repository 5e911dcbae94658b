//! `DIR/server.toml`, with `FERNWART_<SECTION>_<KEY>` environment overrides.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

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
    #[serde(default)]
    pub audit: AuditSection,
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

/// Copies of the audit trail kept elsewhere (docs/server.md, "SIEM export"). Paths are relative
/// to the data directory; an empty value turns that copy off.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSection {
    /// RFC 5424 syslog receiver: `tcp://HOST:PORT` (octet counting, RFC 6587) or
    /// `tls://HOST:PORT` (RFC 5425).
    pub syslog: String,
    /// PEM file with the CA certificate(s) the `tls://` receiver's certificate chains to;
    /// empty: the system's root certificates.
    pub syslog_ca: String,
    /// File the trail is appended to as JSON lines, one record per line.
    pub jsonl: String,
    /// Alerts (`alert.*` records) are POSTed here as signed JSON: an `https://` URL.
    pub webhook_url: String,
    /// File holding the webhook's HMAC-SHA256 secret (at least 16 bytes; never in the
    /// settings themselves).
    pub webhook_secret_file: String,
    /// PEM file with the CA certificate(s) of the webhook's server; empty: the system's roots.
    pub webhook_ca: String,
}

/// Where the audit trail is copied to, validated.
#[derive(Debug, Clone, Default)]
pub struct AuditExport {
    pub syslog: Option<SyslogTarget>,
    /// The JSON lines file (absolute after [`Config::load`]).
    pub jsonl: Option<PathBuf>,
    /// The alerts' webhook (set up after [`Config::load`]).
    pub webhook: Option<crate::audit::webhook::Webhook>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyslogTransport {
    /// Plain TCP, octet-counted frames (RFC 6587 3.4.1).
    Tcp,
    /// TLS, octet-counted frames (RFC 5425).
    Tls,
}

/// A syslog receiver, from `tcp://HOST:PORT` or `tls://HOST:PORT`.
#[derive(Debug, Clone)]
pub struct SyslogTarget {
    pub transport: SyslogTransport,
    /// A DNS name or an IP address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// `tls://`: the CA file (absolute after [`Config::load`]); `None`: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// `tls://`: the trust anchors, read by [`Config::load`] (`None` after [`Config::parse`]:
    /// read when the exporter starts).
    pub roots: Option<Arc<rustls::RootCertStore>>,
}

impl SyslogTarget {
    /// Port when the URL gives none: 514 for TCP (the customary one), 6514 for TLS (RFC 5425).
    pub const DEFAULT_TCP_PORT: u16 = 514;
    pub const DEFAULT_TLS_PORT: u16 = 6514;

    /// Parses `tcp://HOST[:PORT]` or `tls://HOST[:PORT]`; the error says what is wrong.
    pub fn parse(raw: &str) -> Result<Self, String> {
        const USE: &str = "use tcp://HOST:PORT (RFC 6587) or tls://HOST:PORT (RFC 5425)";
        let url = url::Url::parse(raw).map_err(|e| format!("not a URL ({e}); {USE}"))?;
        let (transport, default_port) = match url.scheme() {
            "tcp" => (SyslogTransport::Tcp, Self::DEFAULT_TCP_PORT),
            "tls" => (SyslogTransport::Tls, Self::DEFAULT_TLS_PORT),
            other => return Err(format!("{other}:// is not supported; {USE}")),
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(format!("a user or password does not belong in it; {USE}"));
        }
        if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
            return Err(format!("only a host and a port belong in it; {USE}"));
        }
        let host = match url.host() {
            Some(url::Host::Domain(d)) if !d.is_empty() => {
                if !d.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')) {
                    return Err(format!("{d:?} is not a host name"));
                }
                d.to_owned()
            }
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            _ => return Err(format!("no host; {USE}")),
        };
        let port = url.port().unwrap_or(default_port);
        if port == 0 {
            return Err("port 0 cannot be connected to".into());
        }
        if transport == SyslogTransport::Tls {
            rustls_pki_types::ServerName::try_from(host.clone())
                .map_err(|e| format!("{host:?} cannot be checked in a certificate: {e}"))?;
        }
        Ok(Self { transport, host, port, ca_file: None, roots: None })
    }

    /// The URL again, for messages.
    pub fn url(&self) -> String {
        let scheme = match self.transport {
            SyslogTransport::Tcp => "tcp",
            SyslogTransport::Tls => "tls",
        };
        if self.host.contains(':') {
            format!("{scheme}://[{}]:{}", self.host, self.port)
        } else {
            format!("{scheme}://{}:{}", self.host, self.port)
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
    pub audit: AuditExport,
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
        Self::parse_in(&text, env, Some(dir))
            .map_err(|message| ConfigError::Invalid { path: path.display().to_string(), message })
    }

    /// Parses settings, then applies `env`: a `FERNWART_<SECTION>_<KEY>` whose section is one of
    /// the server's must name a setting it knows (a misspelt override cannot go unnoticed);
    /// other `FERNWART_*` variables (the CLI's, the agent's, [`CLIENT_ENV`]) are left alone.
    ///
    /// Files the settings name are not looked at (see [`Config::load`]).
    pub fn parse(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, String> {
        Self::parse_in(text, env, None)
    }

    /// [`Config::parse`]; with `dir`, relative paths are taken relative to it and the files
    /// the settings name are opened (a CA that cannot be read stops the server at start, not
    /// at the first record).
    fn parse_in(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
        dir: Option<&Path>,
    ) -> Result<Self, String> {
        let mut value: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
        // Which setting came from which variable, for messages.
        let mut from_env = BTreeMap::new();
        for (name, raw) in env {
            let Some(rest) = name.strip_prefix("FERNWART_") else { continue };
            if CLIENT_ENV.contains(&name.as_str()) {
                continue;
            }
            let rest = rest.to_ascii_lowercase();
            let (section, key) = rest.split_once('_').unwrap_or((&rest, ""));
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
            from_env.insert(format!("{section}.{key}"), name);
        }
        let settings: Settings =
            toml::Value::Table(value).try_into().map_err(|e: toml::de::Error| e.to_string())?;
        let audit = audit_export(&settings.audit, &from_env, dir)?;
        Self::validate(settings, audit)
    }

    fn validate(settings: Settings, audit: AuditExport) -> Result<Self, String> {
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
            audit,
        })
    }
}

/// Validates the `[audit]` section; with `dir`, resolves its paths and opens its files.
fn audit_export(
    section: &AuditSection,
    from_env: &BTreeMap<String, String>,
    dir: Option<&Path>,
) -> Result<AuditExport, String> {
    // `audit.syslog = "udp://x" (FERNWART_AUDIT_SYSLOG)`: the setting, its value and where it
    // came from.
    let name = |key: &str, value: &str| {
        let setting = format!("audit.{key}");
        match from_env.get(&setting) {
            Some(var) => format!("{setting} = {value:?} ({var})"),
            None => format!("{setting} = {value:?}"),
        }
    };
    let path = |value: &str| match dir {
        Some(dir) => dir.join(value),
        None => PathBuf::from(value),
    };
    let mut export = AuditExport::default();
    if !section.syslog.is_empty() {
        let mut target = SyslogTarget::parse(&section.syslog)
            .map_err(|e| format!("{}: {e}", name("syslog", &section.syslog)))?;
        if !section.syslog_ca.is_empty() {
            if target.transport != SyslogTransport::Tls {
                return Err(format!(
                    "{}: a CA is only used with a tls:// receiver, audit.syslog is {}",
                    name("syslog_ca", &section.syslog_ca),
                    target.url()
                ));
            }
            target.ca_file = Some(path(&section.syslog_ca));
        }
        if target.transport == SyslogTransport::Tls && dir.is_some() {
            let roots = fernwart_transport::tls::roots(target.ca_file.as_deref()).map_err(|e| {
                format!("{}: {}", name("syslog_ca", &section.syslog_ca), error_chain(&e))
            })?;
            target.roots = Some(Arc::new(roots));
        }
        export.syslog = Some(target);
    } else if !section.syslog_ca.is_empty() {
        return Err(format!("{}: audit.syslog is not set", name("syslog_ca", &section.syslog_ca)));
    }
    if !section.jsonl.is_empty() {
        let file = path(&section.jsonl);
        if dir.is_some() {
            open_jsonl(&file).map_err(|e| {
                format!("{}: cannot open {}: {e}", name("jsonl", &section.jsonl), file.display())
            })?;
        }
        export.jsonl = Some(file);
    }
    match (section.webhook_url.is_empty(), section.webhook_secret_file.is_empty()) {
        (true, true) if section.webhook_ca.is_empty() => {}
        (false, false) => {
            if dir.is_some() {
                let ca = (!section.webhook_ca.is_empty()).then(|| path(&section.webhook_ca));
                let hook = crate::audit::webhook::Webhook::new(
                    &section.webhook_url,
                    &path(&section.webhook_secret_file),
                    ca.as_deref(),
                )
                .map_err(|e| format!("{} {e}", name("webhook_url", &section.webhook_url)))?;
                export.webhook = Some(hook);
            } else {
                let url = url::Url::parse(&section.webhook_url)
                    .map_err(|e| format!("{}: {e}", name("webhook_url", &section.webhook_url)))?;
                if url.scheme() != "https" {
                    return Err(format!(
                        "{}: must start with https://",
                        name("webhook_url", &section.webhook_url)
                    ));
                }
            }
        }
        _ => {
            return Err(
                "audit.webhook_url and audit.webhook_secret_file go together (and audit.webhook_ca needs them)"
                    .into(),
            )
        }
    }
    Ok(export)
}

/// Opens the JSON lines copy of the audit trail for appending, created readable by the owner
/// alone.
pub fn open_jsonl(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true).append(true).create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

/// An error and its causes on one line.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
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
        "audit" => known_keys::<AuditSection>(),
        _ => return None,
    })
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
    fn audit_syslog_urls_parse() {
        let t = SyslogTarget::parse("tcp://127.0.0.1:1514").unwrap();
        assert_eq!(
            (t.transport, t.host.as_str(), t.port),
            (SyslogTransport::Tcp, "127.0.0.1", 1514)
        );
        let t = SyslogTarget::parse("tls://siem.example.org").unwrap();
        assert_eq!((t.transport, t.port), (SyslogTransport::Tls, 6514));
        assert_eq!(t.url(), "tls://siem.example.org:6514");
        let t = SyslogTarget::parse("tcp://[::1]:514/").unwrap();
        assert_eq!((t.host.as_str(), t.url().as_str()), ("::1", "tcp://[::1]:514"));
        assert_eq!(SyslogTarget::parse("tcp://siem").unwrap().port, 514);
    }

    #[test]
    fn bad_audit_syslog_urls_say_why() {
        for (raw, why) in [
            ("udp://127.0.0.1:514", "udp:// is not supported"),
            ("siem:514", "siem:// is not supported"),
            ("127.0.0.1:514", "not a URL"),
            ("tcp://", "no host"),
            ("tls://", "no host"),
            ("tcp://u:p@siem:514", "user or password"),
            ("tcp://siem:514/x", "only a host and a port"),
            ("tcp://siem:514?x=1", "only a host and a port"),
            ("tcp://siem:0", "port 0"),
            ("tcp://siem:65536", "not a URL"),
            ("tcp://si%20em:514", "not a host name"),
        ] {
            let err = SyslogTarget::parse(raw).unwrap_err();
            assert!(err.contains(why), "{raw}: {err}");
        }
    }

    #[test]
    fn audit_settings_from_env_name_the_setting_and_the_variable() {
        let err =
            Config::parse(BASE, env(&[("FERNWART_AUDIT_SYSLOG", "udp://x:514")])).unwrap_err();
        assert!(
            err.starts_with(
                "audit.syslog = \"udp://x:514\" (FERNWART_AUDIT_SYSLOG): udp:// is not supported"
            ),
            "{err}"
        );
        let err = Config::parse(BASE, env(&[("FERNWART_AUDIT_RETENTION", "90d")])).unwrap_err();
        assert!(err.starts_with("FERNWART_AUDIT_RETENTION: [audit] has no setting"), "{err}");
        assert!(err.contains("syslog, syslog_ca, jsonl"), "{err}");
    }

    #[test]
    fn audit_section_in_file_is_read() {
        let text = format!(
            "{BASE}[audit]\nsyslog = \"tls://127.0.0.1:6514\"\nsyslog_ca = \"siem-ca.pem\"\n\
             jsonl = \"audit.jsonl\"\n"
        );
        let c = Config::parse(&text, []).unwrap();
        let t = c.audit.syslog.unwrap();
        assert_eq!(t.url(), "tls://127.0.0.1:6514");
        assert_eq!(t.ca_file, Some(PathBuf::from("siem-ca.pem")));
        assert_eq!(c.audit.jsonl, Some(PathBuf::from("audit.jsonl")));
        let err = Config::parse(&format!("{BASE}[audit]\nsyslg = \"x\"\n"), []).unwrap_err();
        assert!(err.contains("syslg"), "{err}");
        // Nothing set: nothing exported; an empty variable turns a file's setting off.
        assert!(Config::parse(BASE, []).unwrap().audit.syslog.is_none());
        let off = Config::parse(&text, env(&[("FERNWART_AUDIT_SYSLOG", "")]));
        assert!(off.unwrap_err().contains("audit.syslog is not set"), "a CA without syslog");
        let off = Config::parse(
            &text,
            env(&[("FERNWART_AUDIT_SYSLOG", ""), ("FERNWART_AUDIT_SYSLOG_CA", "")]),
        )
        .unwrap();
        assert!(off.audit.syslog.is_none());
    }

    #[test]
    fn a_ca_needs_a_tls_receiver() {
        let err = Config::parse(
            BASE,
            env(&[
                ("FERNWART_AUDIT_SYSLOG", "tcp://127.0.0.1:514"),
                ("FERNWART_AUDIT_SYSLOG_CA", "ca.pem"),
            ]),
        )
        .unwrap_err();
        assert!(
            err.starts_with(
                "audit.syslog_ca = \"ca.pem\" (FERNWART_AUDIT_SYSLOG_CA): a CA is only"
            ),
            "{err}"
        );
    }

    #[test]
    fn load_reads_the_files_the_audit_settings_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), BASE).unwrap();
        let tls = ("FERNWART_AUDIT_SYSLOG", "tls://127.0.0.1:6514");
        let err = Config::load(dir.path(), env(&[tls, ("FERNWART_AUDIT_SYSLOG_CA", "nope.pem")]))
            .unwrap_err();
        let text = error_chain(&err);
        assert!(
            text.contains("audit.syslog_ca = \"nope.pem\" (FERNWART_AUDIT_SYSLOG_CA): cannot read"),
            "{text}"
        );
        let ca = rcgen::generate_simple_self_signed(vec!["siem".into()]).unwrap();
        std::fs::write(dir.path().join("siem-ca.pem"), ca.cert.pem()).unwrap();
        std::fs::write(dir.path().join("junk.pem"), "no certificate here").unwrap();
        let err = Config::load(dir.path(), env(&[tls, ("FERNWART_AUDIT_SYSLOG_CA", "junk.pem")]))
            .unwrap_err();
        assert!(error_chain(&err).contains("contains no certificate"), "{}", error_chain(&err));
        let c = Config::load(
            dir.path(),
            env(&[
                tls,
                ("FERNWART_AUDIT_SYSLOG_CA", "siem-ca.pem"),
                ("FERNWART_AUDIT_JSONL", "a.jsonl"),
            ]),
        )
        .unwrap();
        let t = c.audit.syslog.unwrap();
        assert_eq!(t.ca_file, Some(dir.path().join("siem-ca.pem")));
        assert_eq!(t.roots.map(|r| r.len()), Some(1));
        assert_eq!(c.audit.jsonl, Some(dir.path().join("a.jsonl")));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("a.jsonl")).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let err = Config::load(dir.path(), env(&[("FERNWART_AUDIT_JSONL", "no/such/dir/a.jsonl")]))
            .unwrap_err();
        assert!(
            error_chain(&err).contains("audit.jsonl = \"no/such/dir/a.jsonl\""),
            "{}",
            error_chain(&err)
        );
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
            ["server", "auth", "password", "enrolment", "sessions", "audit"]
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
