//! ferrule's native module: the exported surface on one screen.

pub mod core;
mod errors;
mod py;

use pyo3::prelude::*;

#[pymodule(gil_used = false)]
mod _native {
    #[pymodule_export]
    use crate::py::breaker::{BreakerStats, CircuitBreaker};
    #[pymodule_export]
    use crate::py::budget::{Lease, ResourceManager, Usage};
    #[pymodule_export]
    use crate::py::bus::{
        _run_subscription, BusStats, Signal, SignalBus, Subscription, SubscriptionStats,
    };
    #[pymodule_export]
    use crate::py::cache::{Cache, CacheStats, CachedCall};
    #[pymodule_export]
    use crate::py::clock::ManualClock;
    #[pymodule_export]
    use crate::py::error_store::{ErrorRecord, ErrorStore, ErrorStoreStats};
    #[pymodule_export]
    use crate::py::metrics::{Metrics, OpStats, OpTotals, Timer};
    #[pymodule_export]
    use crate::py::pool::{Pool, PoolCheckout, PoolStats};
    #[pymodule_export]
    use crate::py::queue::{QueueStats, WorkQueue};
    #[pymodule_export]
    use crate::py::ratelimit::{Decision, LimiterStats, RateLimiter};
    #[pymodule_export]
    use crate::py::redis::{
        _agent_id, _already_registered, _changes, _check_cost, _criteria, _gcra_params,
        _gcra_windows, _match_where, _max_batch, _prefix, _redis_key, _registration,
        _registrations, _spec_windows, _timeout, _ttl, ParsedWhere,
    };
    #[pymodule_export]
    use crate::py::registry::{_health_statuses, Agent, Registry};
    #[pymodule_export]
    use crate::py::taskpool::{_run_worker, TaskCounters, TaskPoolStats};
    #[pymodule_export]
    use crate::py::wait::_close_gate;

    #[pymodule_init]
    fn init(m: &pyo3::Bound<'_, pyo3::types::PyModule>) -> pyo3::PyResult<()> {
        use pyo3::types::PyModuleMethods;
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        // The one wait slice, for the Python waits that poll (seconds).
        m.add("_WAIT_SLICE", crate::py::wait::SLICE.as_secs_f64())?;
        crate::errors::register(m)?;
        crate::core::clock::init_monotonic();
        crate::py::wait::register(m)?;
        crate::py::cache::install_fast_methods(m.py())?;
        crate::py::ratelimit::install_fast_methods(m.py())?;
        crate::py::immortal::make_types_immortal(m);
        Ok(())
    }
}
