//! The settings an admin changes at run time: `/v1/settings`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `PATCH /v1/settings`: settings by their `server.toml` name (`auth.lockout_threshold`), each
/// with its new value as text (`5`, `30m`). All or none are changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsSetRequest {
    pub values: BTreeMap<String, String>,
}

/// One setting in force (`GET /v1/settings`, and the answer to `PATCH`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingInfo {
    /// Its `server.toml` name.
    pub key: String,
    /// The value in force.
    pub value: String,
    /// `server.toml`'s value.
    pub file_value: String,
    /// Changed at run time (the value is not `server.toml`'s).
    pub changed: bool,
    /// What a value must be, e.g. "3 to 20" or "1m to 1day".
    pub range: String,
}
