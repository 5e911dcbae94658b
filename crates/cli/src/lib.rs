//! fernwart: the technician and admin command line.

pub mod commands;
pub mod context;
pub mod output;

pub use context::Context;
