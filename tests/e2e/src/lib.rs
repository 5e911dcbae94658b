//! End-to-end harness: drives the real `fernwart-server`, `fernwart-agent` and `fernwart`
//! binaries on loopback, the way `shared/acceptance/path.py` does.
//!
//! The binaries must be built first (`cargo build --workspace --bins`); they are taken from
//! `target/debug`, or from the profile or directory named by env `FERNWART_BIN_DIR`.
//! Every world lives in a temp dir of its own (kept when env `FW_KEEP` is set) and stops
//! every process it started when dropped. Every wait polls against a deadline.

pub mod https;
pub mod net;
pub mod process;
pub mod syslog;
pub mod time;
pub mod tinyproxy;
pub mod totp;
pub mod webdriver;
pub mod webhook;
pub mod world;

pub use net::{
    free_port, open_tunnel, poll, random_bytes, roundtrip, tunnel_refuses, wait_closed, wait_eof,
    wait_port, Echo, LOCALHOST,
};
pub use process::{Output, Proc};
pub use time::{hhmm, rfc3339, rfc3339_in, unix_now};
pub use world::{audit_actions, audit_has, default_password, Bins, Connect, Options, Proxy, World};
