//! The operator's `DIR/agent.toml`: targets, the key switch source and the bounds of the
//! audit trail. Never written by us.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use fernwart_proto::{
    approval::{ApproverKey, Trust},
    AgentTrust, TargetInfo, TargetProtocol,
};
use serde::Deserialize;

use crate::{audit::Settings as AuditSettings, recording::Settings as RecordingSettings};

pub const FILE_NAME: &str = "agent.toml";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default = "default_switch")]
    switch: String,
    #[serde(default)]
    proxy: Option<String>,
    #[serde(default, rename = "target")]
    targets: Vec<RawTarget>,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    recording: RawRecording,
    #[serde(default)]
    trust: RawTrust,
}

/// `[trust]`: the operator's approvers, whose signatures the agent requires on grants: Ed25519
/// keys (`fernwart key show`) and security keys registered in the web console
/// (`es256:RP-ID:POINT`, shown on the console's key page).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrust {
    #[serde(default)]
    approvers: Vec<String>,
    require_signed: Option<bool>,
}

/// `[recording]`: session recordings kept on the gateway.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecording {
    keep_days: Option<u32>,
    max_total_bytes: Option<u64>,
    always: Option<bool>,
    export_via_server: Option<bool>,
}

/// `[audit]`: how large the agent's own audit trail may grow.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    max_file_bytes: Option<u64>,
    keep_files: Option<usize>,
}

fn default_switch() -> String {
    "local".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    name: String,
    address: String,
    #[serde(default = "default_protocol")]
    protocol: String,
}

fn default_protocol() -> String {
    "tcp".into()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwitchSource {
    /// `fernwart-agent switch on|off`, state kept in DIR.
    Local,
    /// A file whose content is 1 (on) or 0 (off); missing means off.
    File(PathBuf),
    /// A line of a Linux GPIO chip, read through the character device.
    Gpio { chip: PathBuf, line: u32, active_low: bool },
}

#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub address: String,
    pub protocol: TargetProtocol,
}

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub switch: SwitchSource,
    pub proxy: Option<String>,
    pub targets: Vec<Target>,
    pub audit: AuditSettings,
    pub recording: RecordingSettings,
    /// The operator's approvers (`[trust]`): with them, grants need their signature.
    pub trust: Trust,
}

impl AgentConfig {
    pub fn load(dir: &Path) -> Result<Self, String> {
        let path = dir.join(FILE_NAME);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let raw: Raw = toml::from_str(text).map_err(|e| e.to_string())?;
        let switch = parse_switch(&raw.switch)?;
        let mut targets: Vec<Target> = Vec::new();
        for t in raw.targets {
            if t.name.is_empty()
                || t.name.len() > 64
                || !t.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(format!("target name {:?}: 1-64 letters, digits, - _ .", t.name));
            }
            if targets.iter().any(|o| o.name == t.name) {
                return Err(format!("target {:?} declared twice", t.name));
            }
            let protocol = match t.protocol.as_str() {
                "tcp" => TargetProtocol::Tcp,
                "udp" => {
                    return Err(format!("target {:?}: udp targets are not supported yet", t.name))
                }
                other => return Err(format!("target {:?}: protocol {other:?} is not tcp", t.name)),
            };
            if t.address.parse::<SocketAddr>().is_err() {
                let ok = t
                    .address
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
                if !ok {
                    return Err(format!(
                        "target {:?}: address {:?} is not HOST:PORT",
                        t.name, t.address
                    ));
                }
            }
            targets.push(Target { name: t.name, address: t.address, protocol });
        }
        let defaults = AuditSettings::default();
        let audit = AuditSettings::validated(
            raw.audit.max_file_bytes.unwrap_or(defaults.max_file_bytes),
            raw.audit.keep_files.unwrap_or(defaults.keep_files),
        )?;
        let r = RecordingSettings::default();
        let recording = RecordingSettings::validated(
            raw.recording.keep_days.unwrap_or(r.keep_days),
            raw.recording.max_total_bytes.unwrap_or(r.max_total_bytes),
            raw.recording.always.unwrap_or(r.always),
            raw.recording.export_via_server.unwrap_or(r.export_via_server),
        )?;
        let trust = parse_trust(raw.trust)?;
        Ok(Self { switch, proxy: raw.proxy, targets, audit, recording, trust })
    }

    pub fn target(&self, name: &str) -> Option<&Target> {
        self.targets.iter().find(|t| t.name == name)
    }

    /// The names in the allow-list.
    pub fn target_names(&self) -> Vec<&str> {
        self.targets.iter().map(|t| t.name.as_str()).collect()
    }

    /// What the hello tells the server of `[trust]`: nothing when there are no approvers.
    pub fn announced_trust(&self) -> Option<AgentTrust> {
        announce_trust(&self.trust)
    }

    pub fn announced(&self) -> Vec<TargetInfo> {
        self.targets
            .iter()
            .map(|t| TargetInfo {
                name: t.name.clone(),
                address: t.address.clone(),
                protocol: t.protocol,
            })
            .collect()
    }
}

/// The most approver keys an agent pins (the server takes no more in a hello).
const MAX_APPROVERS: usize = 64;

/// Whether two trust anchors pin the same keys (in any order) and require the same.
pub fn same_trust(a: &Trust, b: &Trust) -> bool {
    let sorted = |t: &Trust| {
        let mut k = t.approvers.clone();
        k.sort();
        k
    };
    a.required == b.required && sorted(a) == sorted(b)
}

/// What the agent tells the server of a trust anchor: nothing when there are no approvers.
pub fn announce_trust(trust: &Trust) -> Option<AgentTrust> {
    if trust.approvers.is_empty() && !trust.required {
        return None;
    }
    Some(AgentTrust {
        level: trust.level().to_owned(),
        approvers: trust.approvers.iter().map(ToString::to_string).collect(),
    })
}

fn parse_trust(raw: RawTrust) -> Result<Trust, String> {
    if raw.approvers.len() > MAX_APPROVERS {
        return Err(format!("[trust] approvers: at most {MAX_APPROVERS} keys"));
    }
    let mut approvers: Vec<ApproverKey> = Vec::new();
    for k in &raw.approvers {
        let key: ApproverKey = k.parse().map_err(|e| format!("[trust] approvers: {e}"))?;
        if !approvers.contains(&key) {
            approvers.push(key);
        }
    }
    // Pinning approvers means requiring them, unless the operator says otherwise.
    let required = raw.require_signed.unwrap_or(!approvers.is_empty());
    if required && approvers.is_empty() {
        return Err("[trust] require_signed = true needs at least one key in approvers (`fernwart key show` prints an approver's)".into());
    }
    Ok(Trust { approvers, required })
}

fn parse_switch(s: &str) -> Result<SwitchSource, String> {
    if s == "local" {
        return Ok(SwitchSource::Local);
    }
    if let Some(path) = s.strip_prefix("file:") {
        if path.is_empty() {
            return Err("switch = \"file:PATH\" needs a path".into());
        }
        return Ok(SwitchSource::File(PathBuf::from(path)));
    }
    if let Some(rest) = s.strip_prefix("gpio:") {
        // gpio:CHIP:LINE[:active_low], CHIP a path or a name under /dev
        let mut parts: Vec<&str> = rest.split(':').collect();
        let active_low = parts.last() == Some(&"active_low");
        if active_low {
            parts.pop();
        }
        if let [chip, line] = parts[..] {
            let line = line
                .parse::<u32>()
                .map_err(|_| format!("switch {s:?}: line {line:?} is not a number"))?;
            let chip = if chip.starts_with('/') {
                PathBuf::from(chip)
            } else {
                Path::new("/dev").join(chip)
            };
            return Ok(SwitchSource::Gpio { chip, line, active_low });
        }
        return Err(format!(
            "switch {s:?}: use gpio:CHIP:LINE[:active_low], e.g. gpio:gpiochip0:17"
        ));
    }
    Err(format!("switch {s:?}: use \"local\", \"file:PATH\" or \"gpio:CHIP:LINE\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_design_example() {
        let c = AgentConfig::parse("switch = \"local\"\n[[target]]\nname = \"plc\"\naddress = \"192.168.0.10:102\"\nprotocol = \"tcp\"\n").unwrap();
        assert_eq!(c.switch, SwitchSource::Local);
        assert_eq!(c.targets[0].address, "192.168.0.10:102");
        assert_eq!(c.audit, AuditSettings::default());
    }

    #[test]
    fn audit_bounds() {
        let c = AgentConfig::parse("[audit]\nmax_file_bytes = 65536\nkeep_files = 3\n").unwrap();
        assert_eq!(c.audit, AuditSettings { max_file_bytes: 65536, keep_files: 3 });
        let c = AgentConfig::parse("[audit]\nkeep_files = 2\n").unwrap();
        assert_eq!(c.audit.max_file_bytes, AuditSettings::default().max_file_bytes);
        for bad in [
            "[audit]\nmax_file_bytes = 10\n",
            "[audit]\nkeep_files = 0\n",
            "[audit]\nkeep_files = -1\n",
            "[audit]\nmax_bytes = 65536\n",
        ] {
            assert!(AgentConfig::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn recording_settings() {
        let c = AgentConfig::parse("").unwrap();
        assert_eq!(c.recording, RecordingSettings::default());
        let c = AgentConfig::parse(
            "[recording]\nkeep_days = 7\nmax_total_bytes = 10485760\nalways = true\nexport_via_server = false\n",
        )
        .unwrap();
        assert_eq!(
            c.recording,
            RecordingSettings {
                keep_days: 7,
                max_total_bytes: 10 * 1024 * 1024,
                always: true,
                export_via_server: false
            }
        );
        for bad in [
            "[recording]\nkeep_days = 0\n",
            "[recording]\nmax_total_bytes = 1000\n",
            "[recording]\nkeep = 3\n",
        ] {
            assert!(AgentConfig::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn trust_pins_approvers_and_requires_them() {
        let key = "ed25519:11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";
        let c = AgentConfig::parse("").unwrap();
        assert_eq!(c.trust, Trust::default());
        assert_eq!(c.announced_trust(), None);
        let c =
            AgentConfig::parse(&format!("[trust]\napprovers = [\"{key}\", \"{key}\"]\n")).unwrap();
        assert!(c.trust.required);
        assert_eq!(c.trust.approvers.len(), 1);
        let t = c.announced_trust().unwrap();
        assert_eq!((t.level.as_str(), t.approvers[0].as_str()), ("operator-signed", key));
        let c = AgentConfig::parse(&format!(
            "[trust]\napprovers = [\"{key}\"]\nrequire_signed = false\n"
        ))
        .unwrap();
        assert!(!c.trust.required);
        assert_eq!(c.announced_trust().unwrap().level, "server");
        let many = vec![format!("\"{key}\""); 65].join(", ");
        assert!(AgentConfig::parse(&format!("[trust]\napprovers = [{many}]\n")).is_err());
        for bad in [
            "[trust]\nrequire_signed = true\n",
            "[trust]\napprovers = [\"ssh-ed25519 AAAA\"]\n",
            "[trust]\noperator = []\n",
        ] {
            assert!(AgentConfig::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn trust_pins_security_keys_too() {
        let point = format!("BA{}=", "A".repeat(85));
        let key = format!("es256:console.example:{point}");
        let ed = "ed25519:11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";
        let c =
            AgentConfig::parse(&format!("[trust]\napprovers = [\"{key}\", \"{ed}\"]\n")).unwrap();
        assert!(c.trust.required);
        assert_eq!(c.trust.approvers.len(), 2);
        let t = c.announced_trust().unwrap();
        assert!(t.approvers.contains(&key), "{:?}", t.approvers);
        for bad in [
            // No relying party, an upper-case one, a point too short, not uncompressed.
            format!("es256:{point}"),
            format!("es256:Console.example:{point}"),
            "es256:console.example:BAAA".to_owned(),
            format!("es256:console.example:BQ{}=", "A".repeat(85)),
        ] {
            let toml = format!("[trust]\napprovers = [\"{bad}\"]\n");
            assert!(AgentConfig::parse(&toml).is_err(), "{bad}");
        }
    }

    #[test]
    fn switch_sources() {
        assert_eq!(
            parse_switch("file:/run/keyswitch").unwrap(),
            SwitchSource::File("/run/keyswitch".into())
        );
        assert_eq!(
            parse_switch("gpio:gpiochip0:17").unwrap(),
            SwitchSource::Gpio { chip: "/dev/gpiochip0".into(), line: 17, active_low: false }
        );
        assert!(matches!(
            parse_switch("gpio:/dev/gpiochip1:3:active_low").unwrap(),
            SwitchSource::Gpio { active_low: true, .. }
        ));
        assert!(parse_switch("gpio:x").is_err());
        assert!(parse_switch("always-on").is_err());
    }

    #[test]
    fn bad_targets_are_refused() {
        for bad in [
            "[[target]]\nname = \"a b\"\naddress = \"1.2.3.4:1\"\n",
            "[[target]]\nname = \"a\"\naddress = \"1.2.3.4\"\n",
            "[[target]]\nname = \"a\"\naddress = \"1.2.3.4:1\"\nprotocol = \"sctp\"\n",
            "[[target]]\nname = \"a\"\naddress = \"1.2.3.4:1\"\n[[target]]\nname = \"a\"\naddress = \"1.2.3.4:2\"\n",
            "[[target]]\nname = \"a\"\naddress = \"1.2.3.4:1\"\nport = 5\n",
        ] {
            assert!(AgentConfig::parse(bad).is_err(), "{bad}");
        }
    }
}
