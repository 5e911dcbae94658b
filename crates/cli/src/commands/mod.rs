//! One module per command group.

pub mod account;
pub mod admin;
pub mod audit;
pub mod connect;
pub mod e2e;
pub mod key;
pub mod org;
pub mod recording;
pub mod session;
pub mod settings;
pub mod token;
pub mod url;
pub mod window;
