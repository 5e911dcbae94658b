//! The settings in force while the server runs: `server.toml`'s values with the changes an
//! admin made at run time (kept in the store) laid over them. Every place that enforces one of
//! them (logins, lockout, password changes, new sessions, tunnels) reads it here, at the time
//! it enforces it, so a change takes effect at once without a restart.

use std::sync::RwLock;

use crate::{
    config::{Config, PasswordSection},
    domain::settings::{Change, Policy},
    store::{Store, StoreError},
};

pub struct Live {
    policy: RwLock<Policy>,
    /// `password.refuse_common` stays in `server.toml`: it is not changed at run time.
    refuse_common: bool,
}

impl Live {
    /// `server.toml`'s values alone (tests, and before the store is read).
    pub fn from_config(cfg: &Config) -> Self {
        Self { policy: RwLock::new(base(cfg)), refuse_common: cfg.settings.password.refuse_common }
    }

    /// `server.toml`'s values with the store's changes over them. A stored value the bounds
    /// no longer allow is left out (and logged): `server.toml`'s value holds.
    pub fn load(cfg: &Config, store: &Store) -> Result<Self, StoreError> {
        let stored = store.blocking().settings()?;
        let (policy, skipped) = base(cfg).with_stored(&stored);
        for (key, error) in skipped {
            tracing::warn!(%key, %error, "a stored setting is ignored; server.toml's value holds");
        }
        Ok(Self { policy: RwLock::new(policy), refuse_common: cfg.settings.password.refuse_common })
    }

    /// The values in force now.
    pub fn get(&self) -> Policy {
        *self.policy.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The password policy in force now, as [`crate::auth::check_policy`] takes it.
    pub fn password(&self) -> PasswordSection {
        let p = self.get();
        PasswordSection {
            min_length: p.min_length,
            min_classes: p.min_classes,
            history: p.history,
            refuse_common: self.refuse_common,
        }
    }

    /// Puts changes the store accepted into force. Each is applied to the values in force
    /// now (not to those it was computed from), so concurrent changes of other keys stay.
    pub fn put(&self, changes: &[Change]) {
        let mut p = self.policy.write().unwrap_or_else(|p| p.into_inner());
        for c in changes {
            match p.with(c.key, &c.new) {
                Ok(next) => *p = next,
                // Cannot happen: `new` is a canonical value the bounds allowed.
                Err(error) => {
                    tracing::error!(key = %c.key, %error, "a changed setting is not in force")
                }
            }
        }
    }
}

/// `server.toml`'s values.
pub fn base(cfg: &Config) -> Policy {
    let s = &cfg.settings;
    Policy {
        min_length: s.password.min_length,
        min_classes: s.password.min_classes,
        history: s.password.history,
        lockout_threshold: s.auth.lockout_threshold,
        lockout_duration: cfg.lockout_duration,
        login_ttl: cfg.login_ttl,
        idle_timeout: cfg.login_idle,
        default_duration: cfg.default_session,
        tunnel_idle: cfg.tunnel_idle,
    }
}
