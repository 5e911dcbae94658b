//! The server's domain: types and pure rules. No I/O, no SQL, no HTTP; time comes in as `now`.

pub mod caller;
pub mod names;
pub mod org;
pub mod session;
pub mod settings;
pub mod window;

pub use caller::{Caller, Scope};
pub use fernwart_api::Role;
pub use session::{transition, Refused as TransitionRefused, SessionEvent, SessionState};

/// Seconds since the Unix epoch.
pub type UnixSecs = i64;
