//! fernwart: the technician and admin command line.

pub mod commands;
pub mod context;
pub mod output;
pub mod owner_only;

pub use context::Context;
