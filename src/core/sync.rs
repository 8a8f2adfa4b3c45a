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

/// A lock for state too wide for one atomic word (a multi-window bucket): parking_lot's,
/// or loom's under `--cfg loom` (with parking_lot's infallible `lock`).
#[cfg(not(loom))]
pub use parking_lot::Mutex;

#[cfg(loom)]
#[derive(Debug)]
pub struct Mutex<T>(loom::sync::Mutex<T>);

#[cfg(loom)]
impl<T> Mutex<T> {
    pub fn new(t: T) -> Self {
        Self(loom::sync::Mutex::new(t))
    }

    pub fn lock(&self) -> loom::sync::MutexGuard<'_, T> {
        // Loom models only: a poisoned lock there is a failed model anyway.
        self.0.lock().unwrap()
    }
}
