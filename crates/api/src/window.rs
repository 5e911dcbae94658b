//! `/v1/windows`: recurring maintenance windows in which an operator pre-approves a provider.

use serde::{Deserialize, Serialize};

/// `POST /v1/windows` (`fernwart window add`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowAddRequest {
    pub machine: String,
    /// The provider organization whose technicians it pre-approves.
    pub provider: String,
    /// `mon-fri`, `sat,sun`, `weekdays`, `daily`.
    pub days: String,
    /// Opens at `HH:MM`, local time of `zone`.
    pub from: String,
    /// Closes at `HH:MM` (at or before `from`: the next day).
    pub to: String,
    /// IANA time zone name, e.g. `Europe/Berlin`.
    pub zone: String,
}

/// A window as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowInfo {
    pub id: i64,
    pub machine: String,
    pub provider: String,
    pub days: String,
    pub from: String,
    pub to: String,
    pub zone: String,
    pub created_by: String,
    pub created_at: String,
    /// The current or next occurrence, RFC 3339 (`[opens, closes)`), if there is one within
    /// a week.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<(String, String)>,
}

/// The answer to `POST /v1/windows/{id}/remove`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowRemoved {
    pub id: i64,
    pub removed: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::parses;

    #[test]
    fn wire_format() {
        parses::<WindowAddRequest>(
            r#"{"machine":"m1","provider":"builder","days":"mon-fri","from":"06:00","to":"08:00","zone":"Europe/Berlin"}"#,
        );
        parses::<WindowInfo>(
            r#"{"id":1,"machine":"m1","provider":"builder","days":"mon-fri","from":"06:00","to":"08:00","zone":"UTC","created_by":"op","created_at":"2026-12-02T00:00:00Z","next":["2026-12-02T06:00:00Z","2026-12-02T08:00:00Z"]}"#,
        );
        parses::<WindowRemoved>(r#"{"id":1,"removed":true}"#);
    }
}
