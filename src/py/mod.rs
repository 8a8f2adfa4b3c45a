//! Thin bindings: convert arguments, call the cores in `crate::core`, map errors.

pub mod args;
pub mod cache;
pub mod clock;
pub mod resources;
