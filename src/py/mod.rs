//! Thin bindings: convert arguments, call the cores in `crate::core`, map errors.

pub mod args;
pub mod breaker;
pub mod budget;
pub mod bus;
pub mod cache;
pub mod cache_async;
pub mod clock;
pub mod error_store;
pub mod events;
pub mod immortal;
pub mod lookup;
pub mod mailbox;
pub mod metrics;
pub mod pool;
pub mod queue;
pub mod ratelimit;
pub mod ratelimit_key;
pub mod redis;
pub mod registry;
pub mod registry_agent;
pub mod registry_args;
pub mod registry_memo;
pub mod registry_owner;
pub mod registry_query;
pub mod taskpool;
pub mod wait;
