//! Atomics for ferrule's lock-free protocols: std's, or loom's when built with
//! `--cfg loom`, so that each protocol's `loom` model (a `#[cfg(loom)]` test module beside
//! the code) explores every interleaving and memory ordering of the real code.
//!
//! `make loom` runs the models: `RUSTFLAGS="--cfg loom" cargo test --lib loom`. Under loom
//! only those models run: loom's atomics work only inside `loom::model`.

#[cfg(loom)]
pub use loom::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize};
#[cfg(not(loom))]
pub use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize};

pub use std::sync::atomic::Ordering;
