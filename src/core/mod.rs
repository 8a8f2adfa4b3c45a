//! Pure Rust cores: no pyo3 here. Each module holds one part's algorithm, its invariants
//! and its `#[cfg(test)]` tests; `src/py/` wraps them for Python.

pub mod cache;
pub mod clock;
pub mod resources;
