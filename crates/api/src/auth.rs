//! Login and the second factor: `/v1/login`, `/v1/mfa/enroll`, `/v1/mfa/confirm`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Redacted, Role};

/// `POST /v1/login`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub user: String,
    pub password: String,
    /// The current TOTP code; required once a second factor is confirmed.
    pub otp: Option<String>,
}

impl fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginRequest")
            .field("user", &self.user)
            .field("password", &Redacted)
            .field("otp", &self.otp.as_ref().map(|_| Redacted))
            .finish()
    }
}

/// The answer to a login: a bearer token for the following requests.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginResponse {
    pub token: String,
    pub user: String,
    pub role: Role,
    pub scope: Scope,
    /// When the token expires (RFC 3339).
    pub expires: String,
}

impl fmt::Debug for LoginResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginResponse")
            .field("token", &Redacted)
            .field("user", &self.user)
            .field("role", &self.role)
            .field("scope", &self.scope)
            .field("expires", &self.expires)
            .finish()
    }
}

/// What a login token permits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    /// Password and second factor: everything the role allows.
    Full,
    /// Password only, no second factor yet: `mfa enroll` and `mfa confirm`, nothing else.
    MfaSetup,
}

impl Scope {
    pub const fn as_str(self) -> &'static str {
        match self {
            Scope::Full => "full",
            Scope::MfaSetup => "mfa-setup",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// `POST /v1/mfa/enroll`: the new TOTP secret, for the authenticator app.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MfaEnrollResponse {
    /// Base32.
    pub secret: String,
    /// `otpauth://totp/...`, which carries the secret too.
    pub uri: String,
}

impl fmt::Debug for MfaEnrollResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MfaEnrollResponse")
            .field("secret", &Redacted)
            .field("uri", &Redacted)
            .finish()
    }
}

/// `POST /v1/mfa/confirm`: one TOTP code.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodeRequest {
    pub code: String,
}

impl fmt::Debug for CodeRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CodeRequest").field("code", &Redacted).finish()
    }
}

/// The answer to `POST /v1/mfa/confirm`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MfaConfirmResponse {
    pub confirmed: bool,
    /// What the user does next, in words.
    pub next: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{hides, parses, refuses_unknown, round_trips};

    const LOGIN: &str = r#"{"otp":"123456","password":"Correct-Horse-9","user":"tech1"}"#;

    #[test]
    fn login_request_is_what_the_cli_sends() {
        let r: LoginRequest = parses(LOGIN);
        assert_eq!(r.otp.as_deref(), Some("123456"));
        round_trips(&r);
        let r: LoginRequest = parses(r#"{"otp":null,"password":"pw","user":"admin"}"#);
        assert_eq!(r.otp, None);
        // `otp` may also be left out.
        let r: LoginRequest = serde_json::from_str(r#"{"user":"a","password":"b"}"#).unwrap();
        assert_eq!(r.otp, None);
        refuses_unknown::<LoginRequest>(LOGIN);
        hides(&serde_json::from_str::<LoginRequest>(LOGIN).unwrap(), &["Correct", "123456"]);
    }

    #[test]
    fn login_response_is_what_the_server_sends() {
        let r: LoginResponse = parses(
            r#"{"expires":"2030-01-01T12:00:00Z","role":"session-admin","scope":"mfa-setup","token":"tok-SECRET","user":"sa1"}"#,
        );
        assert_eq!(r.role, Role::SessionAdmin);
        assert_eq!(r.scope, Scope::MfaSetup);
        round_trips(&r);
        let full = LoginResponse { scope: Scope::Full, ..r.clone() };
        assert_eq!(serde_json::to_value(&full).unwrap()["scope"], "full");
        round_trips(&full);
        hides(&r, &["tok-SECRET"]);
    }

    #[test]
    fn mfa_bodies_are_what_the_server_sends() {
        let e: MfaEnrollResponse = parses(
            r#"{"secret":"JBSWY3DPEHPK3PXP","uri":"otpauth://totp/fernwart:tech1?secret=JBSWY3DPEHPK3PXP&issuer=fernwart"}"#,
        );
        round_trips(&e);
        hides(&e, &["JBSWY3DPEHPK3PXP"]);

        let c: CodeRequest = parses(r#"{"code":"654321"}"#);
        round_trips(&c);
        refuses_unknown::<CodeRequest>(r#"{"code":"654321"}"#);
        hides(&c, &["654321"]);

        let ok: MfaConfirmResponse =
            parses(r#"{"confirmed":true,"next":"log in again with --otp CODE"}"#);
        assert!(ok.confirmed);
        round_trips(&ok);
    }
}

/// `POST /v1/logout`: the login that made the request ends at the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogoutResponse {
    pub logged_out: bool,
}

/// `POST /v1/passwd`: one's own password.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswdRequest {
    pub current: String,
    pub new: String,
}

impl fmt::Debug for PasswdRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswdRequest").field("current", &Redacted).field("new", &Redacted).finish()
    }
}

/// The answer to `POST /v1/passwd`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasswdResponse {
    pub changed: bool,
}

/// `GET /v1/account/keys`: one of the caller's security keys (WebAuthn), registered in the web
/// console; `public_key` is the line for an agent's `[trust] approvers` (`es256:RP:POINT`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityKeyInfo {
    pub id: i64,
    pub name: String,
    pub fingerprint: String,
    pub public_key: String,
    /// RFC 3339.
    pub created: String,
    #[serde(default)]
    pub last_used: Option<String>,
}
