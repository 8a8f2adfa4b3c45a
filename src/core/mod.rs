//! Pure Rust cores: no pyo3 here. Each module holds one part's algorithm, its invariants
//! and its `#[cfg(test)]` tests; `src/py/` wraps them for Python.

pub mod breaker;
pub mod budget;
pub mod bus;
pub mod cache;
pub mod clock;
pub mod counter;
pub mod error_store;
pub mod flight;
pub mod metrics;
pub mod pool;
pub mod queue;
pub mod ratelimit;
pub mod readmap;
pub mod registry;
pub mod shardlock;
pub mod sketch;
pub mod sync;
pub mod taskpool;
pub mod topic;
pub mod wait;
