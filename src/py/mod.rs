//! Thin bindings: convert arguments, call the cores in `crate::core`, map errors.

pub mod args;
pub mod cache;
pub mod clock;
pub mod error_store;
pub mod metrics;
