//! The settings an admin may change while the server runs (password policy, lockout, login
//! and session limits), and the bounds no change may leave. `server.toml` gives the starting
//! values; a change made in the console or with `fernwart settings set` is kept in the store
//! and takes precedence.
//!
//! Pure: values in, the next [`Policy`] or a typed refusal out.

use std::{collections::BTreeMap, fmt, time::Duration};

/// A setting that can be changed at run time, named as in `server.toml` (`section.key`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    MinLength,
    MinClasses,
    History,
    LockoutThreshold,
    LockoutDuration,
    LoginTtl,
    IdleTimeout,
    DefaultDuration,
    TunnelIdle,
}

/// What kind of value a key takes, and its bounds (inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bounds {
    Count {
        min: u64,
        max: u64,
    },
    /// Seconds; `off`: zero is allowed too and means "never".
    Duration {
        min: u64,
        max: u64,
        off: bool,
    },
}

impl Key {
    pub const ALL: [Key; 9] = [
        Key::MinLength,
        Key::MinClasses,
        Key::History,
        Key::LockoutThreshold,
        Key::LockoutDuration,
        Key::LoginTtl,
        Key::IdleTimeout,
        Key::DefaultDuration,
        Key::TunnelIdle,
    ];

    /// The name in `server.toml`, the API and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Key::MinLength => "password.min_length",
            Key::MinClasses => "password.min_classes",
            Key::History => "password.history",
            Key::LockoutThreshold => "auth.lockout_threshold",
            Key::LockoutDuration => "auth.lockout_duration",
            Key::LoginTtl => "auth.token_ttl",
            Key::IdleTimeout => "auth.idle_timeout",
            Key::DefaultDuration => "sessions.default_duration",
            Key::TunnelIdle => "sessions.tunnel_idle_timeout",
        }
    }

    pub fn parse(s: &str) -> Option<Key> {
        Key::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The sane range: lockout as BSI OPS.2.4 (3) to CS-108 (20) allow, passwords of at least
    /// 8 characters, durations that neither lock out for days nor end logins in seconds.
    pub fn bounds(self) -> Bounds {
        const MIN: u64 = 60;
        const HOUR: u64 = 3600;
        const DAY: u64 = 24 * HOUR;
        match self {
            Key::MinLength => Bounds::Count { min: 8, max: 128 },
            Key::MinClasses => Bounds::Count { min: 1, max: 4 },
            Key::History => Bounds::Count { min: 0, max: 24 },
            Key::LockoutThreshold => Bounds::Count { min: 3, max: 20 },
            Key::LockoutDuration => Bounds::Duration { min: MIN, max: DAY, off: false },
            Key::LoginTtl => Bounds::Duration { min: 5 * MIN, max: 30 * DAY, off: false },
            Key::IdleTimeout => Bounds::Duration { min: MIN, max: DAY, off: false },
            Key::DefaultDuration => Bounds::Duration { min: MIN, max: 366 * DAY, off: false },
            Key::TunnelIdle => Bounds::Duration { min: MIN, max: DAY, off: true },
        }
    }
}

impl Key {
    /// What a value must be, for messages and forms: `3 to 20`, `0s (off) or 1m to 1day`.
    pub fn range(self) -> String {
        match self.bounds() {
            Bounds::Count { min, max } => format!("{min} to {max}"),
            Bounds::Duration { min, max, off } => {
                let range = format!("{} to {}", format_duration(min), format_duration(max));
                if off {
                    format!("0s (off) or {range}")
                } else {
                    range
                }
            }
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a change is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingError {
    #[error("no setting {0:?} can be changed; these can: {list}", list = Key::ALL.map(Key::as_str).join(", "))]
    UnknownKey(String),
    #[error("{key} = {value:?}: not a whole number")]
    NotANumber { key: Key, value: String },
    #[error("{key} = {value:?}: not a duration (e.g. 15m, 8h, 2d)")]
    NotADuration { key: Key, value: String },
    #[error("{key} = {value}: must be {range}")]
    OutOfRange { key: Key, value: String, range: String },
    #[error("nothing to change: every value given is the current one")]
    Unchanged,
}

/// The values in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub min_length: usize,
    pub min_classes: usize,
    pub history: usize,
    pub lockout_threshold: u32,
    pub lockout_duration: Duration,
    pub login_ttl: Duration,
    pub idle_timeout: Duration,
    pub default_duration: Duration,
    /// Zero: idle tunnels stay.
    pub tunnel_idle: Duration,
}

/// One changed setting, as the audit trail records it (canonical text forms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub key: Key,
    pub old: String,
    pub new: String,
}

impl Policy {
    /// The value of `key`, in its canonical text form (what is stored and shown).
    pub fn get(&self, key: Key) -> String {
        let dur = |d: Duration| format_duration(d.as_secs());
        match key {
            Key::MinLength => self.min_length.to_string(),
            Key::MinClasses => self.min_classes.to_string(),
            Key::History => self.history.to_string(),
            Key::LockoutThreshold => self.lockout_threshold.to_string(),
            Key::LockoutDuration => dur(self.lockout_duration),
            Key::LoginTtl => dur(self.login_ttl),
            Key::IdleTimeout => dur(self.idle_timeout),
            Key::DefaultDuration => dur(self.default_duration),
            Key::TunnelIdle => dur(self.tunnel_idle),
        }
    }

    /// These values with `key` set to `raw`, if `raw` is a value `key` may take.
    pub fn with(mut self, key: Key, raw: &str) -> Result<Self, SettingError> {
        let raw = raw.trim();
        let n = parse_value(key, raw)?;
        let count = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        match key {
            Key::MinLength => self.min_length = count(n),
            Key::MinClasses => self.min_classes = count(n),
            Key::History => self.history = count(n),
            Key::LockoutThreshold => self.lockout_threshold = u32::try_from(n).unwrap_or(u32::MAX),
            Key::LockoutDuration => self.lockout_duration = Duration::from_secs(n),
            Key::LoginTtl => self.login_ttl = Duration::from_secs(n),
            Key::IdleTimeout => self.idle_timeout = Duration::from_secs(n),
            Key::DefaultDuration => self.default_duration = Duration::from_secs(n),
            Key::TunnelIdle => self.tunnel_idle = Duration::from_secs(n),
        }
        Ok(self)
    }

    /// An admin's change of some settings (name to value): the values after it and what
    /// changed, or the first refusal (then nothing changes). Values equal to the current
    /// ones are no change; a change of nothing is refused.
    pub fn apply(
        &self,
        values: &BTreeMap<String, String>,
    ) -> Result<(Self, Vec<Change>), SettingError> {
        let mut next = *self;
        let mut changes = Vec::new();
        for (name, raw) in values {
            let key =
                Key::parse(name.trim()).ok_or_else(|| SettingError::UnknownKey(name.clone()))?;
            next = next.with(key, raw)?;
            let (old, new) = (self.get(key), next.get(key));
            if old != new {
                changes.push(Change { key, old, new });
            }
        }
        if changes.is_empty() {
            return Err(SettingError::Unchanged);
        }
        Ok((next, changes))
    }

    /// These values with the stored changes laid over them. A stored value the bounds no
    /// longer allow is skipped and returned, to be reported.
    pub fn with_stored(self, stored: &[(String, String)]) -> (Self, Vec<(String, SettingError)>) {
        let mut p = self;
        let mut skipped = Vec::new();
        for (name, raw) in stored {
            let applied = Key::parse(name)
                .ok_or_else(|| SettingError::UnknownKey(name.clone()))
                .and_then(|k| p.with(k, raw));
            match applied {
                Ok(next) => p = next,
                Err(e) => skipped.push((name.clone(), e)),
            }
        }
        (p, skipped)
    }
}

/// A duration as a person writes it: `15m`, `8h`, `1h 30m`, `0s`.
pub fn format_duration(secs: u64) -> String {
    if secs == 0 {
        return "0s".into();
    }
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

/// `raw` as the number (count or seconds) `key` takes, within its bounds.
fn parse_value(key: Key, raw: &str) -> Result<u64, SettingError> {
    let out_of_range =
        || SettingError::OutOfRange { key, value: raw.to_owned(), range: key.range() };
    match key.bounds() {
        Bounds::Count { min, max } => {
            let n: u64 =
                raw.parse().map_err(|_| SettingError::NotANumber { key, value: raw.to_owned() })?;
            if !(min..=max).contains(&n) {
                return Err(out_of_range());
            }
            Ok(n)
        }
        Bounds::Duration { min, max, off } => {
            let d = humantime::parse_duration(raw)
                .map_err(|_| SettingError::NotADuration { key, value: raw.to_owned() })?;
            let n = d.as_secs();
            if off && d.is_zero() {
                return Ok(0);
            }
            if d.subsec_nanos() != 0 || !(min..=max).contains(&n) {
                return Err(out_of_range());
            }
            Ok(n)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Policy {
        Policy {
            min_length: 12,
            min_classes: 3,
            history: 4,
            lockout_threshold: 10,
            lockout_duration: Duration::from_secs(900),
            login_ttl: Duration::from_secs(12 * 3600),
            idle_timeout: Duration::from_secs(3600),
            default_duration: Duration::from_secs(8 * 3600),
            tunnel_idle: Duration::from_secs(1800),
        }
    }

    fn set(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn a_change_reports_old_and_new_and_keeps_the_rest() {
        let (next, changes) = base()
            .apply(&set(&[("auth.lockout_threshold", "3"), ("auth.lockout_duration", "1h")]))
            .unwrap();
        assert_eq!(next.lockout_threshold, 3);
        assert_eq!(next.lockout_duration, Duration::from_secs(3600));
        assert_eq!(next.min_length, 12);
        assert_eq!(
            changes,
            vec![
                Change { key: Key::LockoutDuration, old: "15m".into(), new: "1h".into() },
                Change { key: Key::LockoutThreshold, old: "10".into(), new: "3".into() },
            ]
        );
    }

    #[test]
    fn values_outside_the_bounds_are_refused_whole() {
        let refused = |k: &str, v: &str| base().apply(&set(&[(k, v)])).unwrap_err();
        assert!(matches!(refused("auth.lockout_threshold", "2"), SettingError::OutOfRange { .. }));
        assert!(matches!(refused("auth.lockout_threshold", "21"), SettingError::OutOfRange { .. }));
        assert!(matches!(refused("password.min_length", "7"), SettingError::OutOfRange { .. }));
        assert!(matches!(refused("password.min_classes", "5"), SettingError::OutOfRange { .. }));
        assert!(matches!(refused("password.history", "-1"), SettingError::NotANumber { .. }));
        assert!(matches!(refused("auth.lockout_duration", "0s"), SettingError::OutOfRange { .. }));
        assert!(matches!(refused("auth.lockout_duration", "2d"), SettingError::OutOfRange { .. }));
        assert!(matches!(refused("auth.idle_timeout", "soon"), SettingError::NotADuration { .. }));
        assert!(matches!(refused("server.listen", "1"), SettingError::UnknownKey(_)));
        // One bad value among good ones: nothing changes.
        let e = base()
            .apply(&set(&[("auth.lockout_threshold", "5"), ("password.min_length", "4")]))
            .unwrap_err();
        assert!(e.to_string().contains("password.min_length = 4: must be 8 to 128"), "{e}");
    }

    #[test]
    fn the_tunnel_idle_timeout_may_be_off() {
        let (next, _) = base().apply(&set(&[("sessions.tunnel_idle_timeout", "0s")])).unwrap();
        assert!(next.tunnel_idle.is_zero());
        assert_eq!(next.get(Key::TunnelIdle), "0s");
        let e = base().apply(&set(&[("sessions.tunnel_idle_timeout", "10s")])).unwrap_err();
        assert!(e.to_string().contains("0s (off) or 1m to 1day"), "{e}");
    }

    #[test]
    fn the_same_value_is_no_change() {
        assert_eq!(
            base().apply(&set(&[("auth.lockout_duration", "900s")])).unwrap_err(),
            SettingError::Unchanged
        );
        assert_eq!(base().apply(&BTreeMap::new()).unwrap_err(), SettingError::Unchanged);
    }

    #[test]
    fn stored_values_override_and_bad_ones_are_skipped() {
        let stored = vec![
            ("auth.lockout_threshold".to_string(), "4".to_string()),
            ("password.min_length".to_string(), "3".to_string()),
            ("gone.key".to_string(), "1".to_string()),
        ];
        let (p, skipped) = base().with_stored(&stored);
        assert_eq!(p.lockout_threshold, 4);
        assert_eq!(p.min_length, 12);
        assert_eq!(skipped.len(), 2);
    }

    #[test]
    fn every_key_round_trips_its_canonical_form() {
        for k in Key::ALL {
            assert_eq!(Key::parse(k.as_str()), Some(k));
            let p = base();
            assert_eq!(p.with(k, &p.get(k)).unwrap(), p, "{k}");
        }
    }
}
