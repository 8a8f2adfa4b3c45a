//! `RateLimiter` and `Decision`: the Python face of `core::ratelimit::Limiter`.
//!
//! Keys (any hashable, with dict semantics; a lock-free native path for exact builtins,
//! opaque keys compared by Python outside every lock) are turned into the core's query in
//! `ratelimit_key`, which also holds the comparisons the core asks for.
//!
//! # Waits
//! Every decision is O(1) and runs with the GIL held (releasing it would cost more than
//! the decision). `acquire` sleeps with the GIL released in naps of at most
//! `wait::SLICE` and checks for signals between naps; `sweep` releases the GIL for its
//! O(n) pass. `acquire_async` is a coroutine from `ferrule._ratelimit` built on `check()`
//! and `asyncio.sleep`, so no thread is parked per waiter. `limit` checks its arguments
//! here and returns `ferrule._ratelimit.Limit`, whose `with`, `async with` and decorator
//! uses call `acquire` and `acquire_async`.
//!
//! # Events
//! With `bus=` (see `crate::py::events`), denials (a refused `try_acquire` or `check`,
//! an `acquire` or `acquire_async` that gives up) are counted in a [`Tally`] and
//! published as `ratelimit.<name>.denied` by the first decision after `event_interval`
//! that finds denials counted (the clock is read by the first denial of a window and
//! then every `events::STRIDE` denials or decisions: see `events::Tally`), if there
//! were at least `deny_threshold` of them. The
//! first [`SAMPLE_TRIES`] denials of each window offer their key's `repr` (cut to
//! [`SAMPLE_LEN`] characters) as a sample, of which [`SAMPLES`] distinct ones are kept:
//! strings, so no key is kept alive. A decision without a bus pays one test of an
//! `Option`; with one, a refused decision pays a relaxed add (a `repr` for the sampled
//! ones) and an allowed one a relaxed load (and a relaxed add while denials are
//! pending), each with a clock read one time in `STRIDE`. The waits inside `acquire` and `acquire_async` count nothing
//! (they use `_decide`); giving up counts one denial.
//!
//! # Garbage collection
//! The limiter holds opaque keys, so it takes part in GC: `__traverse__` visits every
//! stored key whose side-table shard is free (a held shard is skipped, never waited for),
//! and the bus; `__clear__` takes them all out and drops them after unlocking.

use std::time::{Duration, Instant};

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyString, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use crate::core::clock::{self, nanos_to_secs};
use crate::core::counter::{self, Striped};
use crate::core::ratelimit::{
    self, parse_spec, Gcra, KeyRef, Limiter, Policy, Query, SpecLimit, Windows, MAX_LIMITS,
};
use crate::py::events::{self, Event, Events, Tally, Val};
use crate::py::lookup::lookup;
use crate::py::ratelimit_key::{exact_str, prepare, release, Caller};
use crate::py::wait::{self, SLICE};
use crate::py::{args, fastcall};

/// The outcome of `RateLimiter.check`. Immutable.
#[pyclass(frozen, get_all, module = "ferrule", name = "Decision")]
pub struct Decision {
    /// True if the tokens were granted (and taken).
    allowed: bool,
    /// Whole tokens left in the bucket after this decision.
    remaining: u64,
    /// 0.0 when allowed; else seconds until `cost` tokens are there.
    retry_after: f64,
    /// Seconds until the bucket is full again.
    reset_after: f64,
}

/// Nanoseconds (below 2^63 by the core's bounds; saturating regardless) as seconds.
fn secs(ns: u64) -> f64 {
    nanos_to_secs(i64::try_from(ns).unwrap_or(i64::MAX))
}

impl From<ratelimit::Decision> for Decision {
    fn from(d: ratelimit::Decision) -> Self {
        Self {
            allowed: d.allowed,
            remaining: d.remaining,
            retry_after: secs(d.retry_after),
            reset_after: secs(d.reset_after),
        }
    }
}

#[pymethods]
impl Decision {
    /// Builds a decision, for limiters computed elsewhere (`ferrule.redis`) and for tests.
    /// `remaining` is an int >= 0; the waits are finite numbers of seconds >= 0.
    #[new]
    #[pyo3(signature = (allowed, remaining, retry_after, reset_after))]
    fn new(
        allowed: bool,
        remaining: &Bound<'_, PyAny>,
        retry_after: &Bound<'_, PyAny>,
        reset_after: &Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        Ok(Self {
            allowed,
            // >= 0, so the cast is exact.
            remaining: args::int_at_least(remaining, "remaining", 0)? as u64,
            retry_after: args::finite_seconds(retry_after, "retry_after")?,
            reset_after: args::finite_seconds(reset_after, "reset_after")?,
        })
    }

    fn __repr__(&self) -> String {
        format!(
            "Decision(allowed={}, remaining={}, retry_after={:?}, reset_after={:?})",
            if self.allowed { "True" } else { "False" },
            self.remaining,
            self.retry_after,
            self.reset_after
        )
    }
}

// ---- the limiter -------------------------------------------------------------------------

// The argument rules below are shared with the Redis tier (`py::redis`), which takes the
// same arguments and must refuse the same ones with the same errors.

/// `RateLimiter(rate, per, burst=...)`'s numbers, checked in its order; the core's bounds
/// on them follow in [`RateArgs::gcra`].
pub struct RateArgs {
    pub rate: f64,
    pub per: f64,
    per_ns: u64,
    /// The given burst (None: the default, `rate`'s whole tokens).
    pub burst: Option<u64>,
}

impl RateArgs {
    pub fn from_args(
        rate: &Bound<'_, PyAny>,
        per: f64,
        burst: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let rate = args::number(rate, "rate")?;
        // At least 1 ns and at most 4e18 ns: the cast to u64 is exact.
        let per_ns = clock::positive_nanos(per, "per")? as u64;
        let burst = match burst {
            // >= 1, so the cast is exact.
            Some(b) if !b.is_none() => Some(args::int_at_least(b, "burst", 1)? as u64),
            _ => None,
        };
        Ok(Self {
            rate,
            per,
            per_ns,
            burst,
        })
    }

    pub fn gcra(&self) -> PyResult<Gcra> {
        Ok(Gcra::new(self.rate, self.per_ns, self.burst)?)
    }

    /// One limit of a parsed spec: `amount` per `per_secs` seconds, burst `amount`.
    fn from_spec(l: SpecLimit) -> PyResult<Self> {
        // Both below 2^53 (the parser's bound), so exact as floats.
        let (rate, per) = (l.amount as f64, l.per_secs as f64);
        Ok(Self {
            rate,
            per,
            per_ns: clock::positive_nanos(per, "per")? as u64,
            burst: None,
        })
    }
}

/// An error from checking `limits[i]`, with that position in front of its message (same
/// exception type).
fn at_item(py: Python<'_>, i: usize, e: &PyErr) -> PyErr {
    PyErr::from_type(e.get_type(py), format!("limits[{i}]: {}", e.value(py)))
}

/// The limits a limiter is made of, from either of its forms: `rate` (with `per` and
/// `burst`), or `limits`, a non-empty iterable of `(rate, per)` or `(rate, per, burst)`
/// tuples, at most [`MAX_LIMITS`] of them (a pair's burst is the default, `rate`'s whole
/// tokens). Giving both forms, or neither, is a TypeError. `per` is `Some` when given
/// (see [`per_given`]).
pub fn limit_args(
    rate: Option<&Bound<'_, PyAny>>,
    per: Option<f64>,
    burst: Option<&Bound<'_, PyAny>>,
    limits: Option<&Bound<'_, PyAny>>,
) -> PyResult<Vec<RateArgs>> {
    let given = |o: Option<&Bound<'_, PyAny>>| o.is_some_and(|o| !o.is_none());
    let Some(limits) = limits.filter(|l| !l.is_none()) else {
        let rate = rate
            .filter(|r| !r.is_none())
            .ok_or_else(|| PyTypeError::new_err("give rate (with per and burst) or limits"))?;
        return Ok(vec![RateArgs::from_args(rate, per.unwrap_or(1.0), burst)?]);
    };
    if given(rate) || per.is_some() || given(burst) {
        return Err(PyTypeError::new_err(
            "give rate (with per and burst) or limits, not both",
        ));
    }
    let py = limits.py();
    if limits.is_instance_of::<PyString>() {
        // A spec string is for `parse`.
        return Err(crate::errors::wrong_type(
            "limits",
            "an iterable of (rate, per[, burst]) tuples (use RateLimiter.parse for a spec string)",
            limits,
        ));
    }
    let items = limits
        .try_iter()
        .map_err(|_| crate::errors::wrong_type("limits", "an iterable of tuples", limits))?;
    let mut out = Vec::new();
    for (i, item) in items.enumerate() {
        let item = item?;
        if out.len() == MAX_LIMITS {
            return Err(PyValueError::new_err(format!(
                "limits must hold at most {MAX_LIMITS} limits"
            )));
        }
        let what = "a (rate, per) or (rate, per, burst) tuple";
        let t = item
            .cast::<PyTuple>()
            .map_err(|_| crate::errors::wrong_type(&format!("limits[{i}]"), what, &item))?;
        if !(2..=3).contains(&t.len()) {
            return Err(PyTypeError::new_err(format!(
                "limits[{i}] must be {what}, not a tuple of {}",
                t.len()
            )));
        }
        let one = (|| {
            let per = args::seconds(&t.get_item(1)?, "per")?;
            let burst = if t.len() == 3 {
                Some(t.get_item(2)?)
            } else {
                None
            };
            let r = RateArgs::from_args(&t.get_item(0)?, per, burst.as_ref())?;
            r.gcra()?; // its bounds, reported at its position
            Ok::<_, PyErr>(r)
        })()
        .map_err(|e| at_item(py, i, &e))?;
        out.push(one);
    }
    if out.is_empty() {
        return Err(PyValueError::new_err("limits must hold at least one limit"));
    }
    Ok(out)
}

/// `per` when given (its conversion runs only then; the default is 1.0), so that
/// `per` beside `limits` is refused while None is refused as a period, as ever.
pub fn per_given(obj: &Bound<'_, PyAny>) -> PyResult<Option<f64>> {
    args::seconds(obj, "per").map(Some)
}

/// The limits of a spec string (see `core::ratelimit::parse_spec`); TypeError for a
/// `spec` that is not a str.
pub fn spec_args(spec: &Bound<'_, PyAny>) -> PyResult<Vec<RateArgs>> {
    let text = args::string(spec, "spec")?;
    let text = text.to_str()?;
    parse_spec(text)
        .map_err(|e| PyValueError::new_err(e.to_string()))?
        .into_iter()
        .map(RateArgs::from_spec)
        .collect()
}

/// A request's `cost`, for a bucket of capacity `burst`.
#[inline]
pub fn cost_arg(cost: i64, burst: u64) -> PyResult<u64> {
    // >= 1, so the cast is exact.
    let cost = args::at_least(cost, "cost", 1)? as u64;
    ratelimit::check_cost(cost, burst)?;
    Ok(cost)
}

/// `acquire_async(timeout=...)`'s rule: None, or the timeout in seconds (whole
/// nanoseconds).
pub fn timeout_secs(timeout: Option<&Bound<'_, PyAny>>) -> PyResult<Option<f64>> {
    Ok(args::opt_duration_nanos(timeout, "timeout")?.map(nanos_to_secs))
}

/// The core limiter: one window per key (the lock-free fast path), or several.
enum Inner {
    One(Limiter<Py<PyAny>>),
    Many(Limiter<Py<PyAny>, Windows>),
}

/// Runs `$body` with `$l` bound to the core limiter, whichever kind it is.
macro_rules! with_inner {
    ($inner:expr, $l:ident => $body:expr) => {
        match $inner {
            Inner::One($l) => $body,
            Inner::Many($l) => $body,
        }
    };
}

/// A keyed token-bucket rate limiter: capacity `burst`, refilled at `rate` tokens per
/// `per` seconds, one bucket per key; or several such limits on every key, all of which
/// must allow a request. Implemented as GCRA: with one limit, one atomic word per key,
/// updated by a lock-free compare-and-swap; with several, one word per limit behind a
/// per-key lock held for the arithmetic of one decision.
#[pyclass(frozen, module = "ferrule", name = "RateLimiter")]
pub struct RateLimiter {
    inner: Inner,
    /// Each limit's `(rate, per)`, in the order given.
    limits: Box<[(f64, f64)]>,
    /// The smallest burst: the largest cost.
    burst: u64,
    manual: bool,
    /// Decisions made: (allowed, denied), striped by the deciding thread.
    stats: Striped,
    name: Option<Py<PyString>>,
    events: Option<Box<DenyEvents>>,
}

/// Denials offered as samples per window, at most.
const SAMPLE_TRIES: u64 = 32;
/// Distinct sample keys kept per window, at most.
const SAMPLES: usize = 8;
/// Characters of a sample key's `repr`, at most.
const SAMPLE_LEN: usize = 100;

/// A limiter's bus, its denials and their sample keys.
struct DenyEvents {
    events: Events,
    denials: Tally,
    threshold: u64,
    samples: parking_lot::Mutex<Vec<String>>,
}

/// `repr(key)`, cut to [`SAMPLE_LEN`] characters; a `repr` that raises gives
/// `<TypeName>`. User code, run through `wait::call1`.
fn sample_repr(py: Python<'_>, key: Option<&Bound<'_, PyAny>>) -> String {
    let Some(key) = key else {
        return "None".to_owned();
    };
    let text = lookup!(py, "builtins", "repr")
        .and_then(|r| wait::call1(r, (key,)))
        .and_then(|s| Ok(s.cast_into::<PyString>()?.to_str()?.to_owned()));
    let text = text.unwrap_or_else(|_| {
        let t = key
            .get_type()
            .name()
            .map_or_else(|_| "?".to_owned(), |n| n.to_string());
        format!("<{t}>")
    });
    match text.char_indices().nth(SAMPLE_LEN) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text,
    }
}

impl DenyEvents {
    /// After a decision for a caller (module docs).
    #[inline]
    fn after(&self, py: Python<'_>, key: Option<&Bound<'_, PyAny>>, allowed: bool) {
        if !allowed {
            self.denied(py, key);
        } else if self.denials.tick() {
            self.publish(py);
        }
    }

    #[cold]
    #[inline(never)]
    fn denied(&self, py: Python<'_>, key: Option<&Bound<'_, PyAny>>) {
        let prev = self.denials.add(1);
        if prev < SAMPLE_TRIES {
            let text = sample_repr(py, key);
            let mut s = self.samples.lock();
            if s.len() < SAMPLES && !s.contains(&text) {
                s.push(text);
            }
        }
        if Tally::crossed(prev, 1) {
            self.publish(py);
        }
    }

    /// Ends the window if `event_interval` has passed: publishes it when it counted
    /// `deny_threshold` denials or more.
    fn publish(&self, py: Python<'_>) {
        let Some(n) = self.denials.take_due() else {
            return;
        };
        let keys = std::mem::take(&mut *self.samples.lock());
        if n == 0 || n < self.threshold {
            return;
        }
        self.events.emit(
            py,
            Event::new(
                "denied",
                vec![
                    ("denied", Val::Int(n)),
                    ("keys", Val::Texts(keys)),
                    ("interval", Val::Float(self.denials.interval_secs())),
                ],
            ),
        );
    }
}

/// The event arguments of `RateLimiter` and `RateLimiter.parse`.
struct EventArgs<'a, 'py> {
    name: Option<&'a Bound<'py, PyAny>>,
    bus: Option<&'a Bound<'py, PyAny>>,
    event_interval: f64,
    deny_threshold: i64,
}

type Core<G> = Limiter<Py<PyAny>, G>;

impl RateLimiter {
    fn build(
        py: Python<'_>,
        limits: &[RateArgs],
        clock: Option<&Bound<'_, PyAny>>,
        ev: &EventArgs<'_, '_>,
    ) -> PyResult<Self> {
        let clock = args::clock(clock)?;
        let name = events::name_arg(py, ev.name)?;
        let interval = events::interval_arg(ev.event_interval)?;
        // >= 1, so the cast is exact.
        let threshold = args::at_least(ev.deny_threshold, "deny_threshold", 1)? as u64;
        let events = Events::from_args(py, "ratelimit", ev.bus, name.as_ref())?.map(|events| {
            Box::new(DenyEvents {
                events,
                denials: Tally::new(interval, clock.clone()),
                threshold,
                samples: parking_lot::Mutex::new(Vec::new()),
            })
        });
        let gcras = limits
            .iter()
            .map(RateArgs::gcra)
            .collect::<PyResult<Vec<_>>>()?;
        let burst = gcras.iter().map(Gcra::burst).min().unwrap_or(1);
        let manual = clock.is_manual();
        let mut inner = match Windows::new(gcras.clone()) {
            Some(w) => Inner::Many(Limiter::new(w, clock)),
            None => match gcras.first() {
                Some(&g) => Inner::One(Limiter::new(g, clock)),
                None => return Err(PyValueError::new_err("limits must hold at least one limit")),
            },
        };
        if cfg!(not(Py_GIL_DISABLED)) {
            // SAFETY: with the GIL every call on the limiter holds it and none releases it
            // while it is inside the limiter (user code -- a key's `__hash__` or `__eq__`,
            // a bus listener -- runs between the limiter's calls, `acquire` sleeps between
            // its decisions), except `sweep`, which announces itself before it releases
            // the GIL. One GIL: PyO3 refuses to load the module into a second interpreter.
            unsafe {
                match &mut inner {
                    Inner::One(l) => l.serialize(),
                    Inner::Many(l) => l.serialize(),
                }
            }
        }
        Ok(Self {
            inner,
            limits: limits.iter().map(|r| (r.rate, r.per)).collect(),
            burst,
            manual,
            stats: Striped::default(),
            name,
            events,
        })
    }

    /// `try_acquire` without events (the body measured for the fast path).
    #[allow(clippy::inline_always)] // the fast path: as `Bucket::take`
    #[inline(always)]
    fn try_acquire_quiet(
        &self,
        py: Python<'_>,
        key: Option<&Bound<'_, PyAny>>,
        cost: u64,
    ) -> PyResult<bool> {
        let l = match &self.inner {
            Inner::One(l) => l,
            // Out of line and first, so that the single-limit fast path below compiles
            // as it did alone (measured: see `try_acquire_many`).
            Inner::Many(l) => return try_acquire_many(l, py, key, cost),
        };
        // Each kind of key in a local of its own (see `exact_str`).
        let (str_q, other_q);
        let q = if let Some((s, h)) = exact_str(key) {
            str_q = Query::with_hash(KeyRef::Str(s), h);
            &str_q
        } else {
            other_q = prepare(py, key)?;
            &other_q
        };
        try_acquire_in(l, py, key, q, cost)
    }

    /// `check` without events.
    #[inline]
    fn decide_quiet(
        &self,
        py: Python<'_>,
        key: Option<&Bound<'_, PyAny>>,
        cost: u64,
    ) -> PyResult<ratelimit::Decision> {
        let (str_q, other_q); // see `try_acquire`
        let q = if let Some((s, h)) = exact_str(key) {
            str_q = Query::with_hash(KeyRef::Str(s), h);
            &str_q
        } else {
            other_q = prepare(py, key)?;
            &other_q
        };
        with_inner!(&self.inner, l => decision(l, py, key, q, cost))
    }

    /// Events after a decision made for a caller.
    #[inline]
    fn after(&self, py: Python<'_>, key: Option<&Bound<'_, PyAny>>, allowed: bool) {
        if cfg!(Py_GIL_DISABLED) {
            self.stats.add(counter::thread_hash(), allowed);
        } else {
            // `py` is held: with the GIL, every update of `stats` is made under it (this
            // is its only writer), so a load and a store count exactly.
            self.stats.add_serialized(allowed);
        }
        if let Some(ev) = &self.events {
            ev.after(py, key, allowed);
        }
    }

    fn cost(&self, cost: i64) -> PyResult<u64> {
        cost_arg(cost, self.burst)
    }

    /// Every limit as `(rate, per, burst)`, in order.
    fn limit_triples(&self) -> Vec<(f64, f64, u64)> {
        self.limits
            .iter()
            .zip(self.bursts())
            .map(|(&(r, p), b)| (r, p, b))
            .collect()
    }

    /// The bursts of every limit, in order.
    fn bursts(&self) -> Vec<u64> {
        match &self.inner {
            Inner::One(l) => vec![l.gcra().burst()],
            Inner::Many(l) => l.policy().windows().iter().map(Gcra::burst).collect(),
        }
    }
}

/// One decision: the native fast path inline, everything else out of line.
#[allow(clippy::inline_always)] // the fast path: as `Bucket::take`
#[inline(always)]
fn decide<G: Policy>(
    l: &Core<G>,
    py: Python<'_>,
    key: Option<&Bound<'_, PyAny>>,
    q: &Query<'_>,
    cost: u64,
) -> PyResult<G::Outcome> {
    if let Some(o) = l.hit(q, cost) {
        if l.due() {
            reclaim_step(l, py)?;
        }
        return Ok(o);
    }
    decide_slow(l, py, key, q, cost)
}

/// The amortised reclaim step of the fast path.
#[cold]
#[inline(never)]
fn reclaim_step<G: Policy>(l: &Core<G>, py: Python<'_>) -> PyResult<()> {
    let mut grave = Vec::new();
    l.periodic_step(&mut grave);
    release(py, grave)
}

#[inline(never)]
fn decide_slow<G: Policy>(
    l: &Core<G>,
    py: Python<'_>,
    key: Option<&Bound<'_, PyAny>>,
    q: &Query<'_>,
    cost: u64,
) -> PyResult<G::Outcome> {
    let mut grave = Vec::new();
    let caller = Caller::new(py, key);
    let o = l.acquire(q, &caller, cost, &mut grave);
    caller.finish(o, grave)
}

/// `decide` with the whole decision.
fn decision<G: Policy>(
    l: &Core<G>,
    py: Python<'_>,
    key: Option<&Bound<'_, PyAny>>,
    q: &Query<'_>,
    cost: u64,
) -> PyResult<ratelimit::Decision> {
    let o = decide(l, py, key, q, cost)?;
    Ok(l.policy().decision(o))
}

#[pymethods]
impl RateLimiter {
    #[new]
    #[pyo3(
        signature = (rate = None, per = None, *, burst = None, limits = None, clock = None,
                     name = None, bus = None, event_interval = 1.0, deny_threshold = 1),
        // `per`'s default is 1.0; `per_given` tells "not given" apart, to refuse it
        // beside `limits`.
        text_signature = "(rate=None, per=1.0, *, burst=None, limits=None, clock=None, name=None, bus=None, event_interval=1.0, deny_threshold=1)"
    )]
    #[allow(clippy::too_many_arguments)] // the Python signature
    fn new(
        py: Python<'_>,
        rate: Option<&Bound<'_, PyAny>>,
        #[pyo3(from_py_with = per_given)] per: Option<f64>,
        burst: Option<&Bound<'_, PyAny>>,
        limits: Option<&Bound<'_, PyAny>>,
        clock: Option<&Bound<'_, PyAny>>,
        name: Option<&Bound<'_, PyAny>>,
        bus: Option<&Bound<'_, PyAny>>,
        #[pyo3(from_py_with = args::named::event_interval)] event_interval: f64,
        #[pyo3(from_py_with = args::named::deny_threshold)] deny_threshold: i64,
    ) -> PyResult<Self> {
        let limits = limit_args(rate, per, burst, limits)?;
        let ev = EventArgs {
            name,
            bus,
            event_interval,
            deny_threshold,
        };
        Self::build(py, &limits, clock, &ev)
    }

    /// A limiter from a spec in the `limits` library's notation: one or more limits
    /// separated by `;` or `,`, each `"<amount>/<unit>"` or `"<amount> per <unit>"`
    /// with an optional multiplier (`"100/5 minutes"`), unit second, minute, hour or day.
    /// Each limit's burst is its amount.
    #[classmethod]
    #[pyo3(signature = (spec, *, clock = None, name = None, bus = None, event_interval = 1.0, deny_threshold = 1))]
    #[allow(clippy::too_many_arguments)] // the Python signature
    fn parse(
        cls: &Bound<'_, pyo3::types::PyType>,
        spec: &Bound<'_, PyAny>,
        clock: Option<&Bound<'_, PyAny>>,
        name: Option<&Bound<'_, PyAny>>,
        bus: Option<&Bound<'_, PyAny>>,
        #[pyo3(from_py_with = args::named::event_interval)] event_interval: f64,
        #[pyo3(from_py_with = args::named::deny_threshold)] deny_threshold: i64,
    ) -> PyResult<Self> {
        let limits = spec_args(spec)?;
        let ev = EventArgs {
            name,
            bus,
            event_interval,
            deny_threshold,
        };
        Self::build(cls.py(), &limits, clock, &ev)
    }

    /// Take `cost` tokens from `key`'s bucket if they are there; True if taken. `cost` must
    /// be between 1 and `burst` (ValueError otherwise).
    #[pyo3(signature = (key = None, cost = 1))]
    fn try_acquire(
        &self,
        py: Python<'_>,
        key: Option<&Bound<'_, PyAny>>,
        #[pyo3(from_py_with = args::named::cost)] cost: i64,
    ) -> PyResult<bool> {
        let cost = self.cost(cost)?;
        let allowed = self.try_acquire_quiet(py, key, cost)?;
        self.after(py, key, allowed);
        Ok(allowed)
    }

    /// Like `try_acquire`, returning the whole `Decision`.
    #[pyo3(signature = (key = None, cost = 1))]
    fn check(
        &self,
        py: Python<'_>,
        key: Option<&Bound<'_, PyAny>>,
        #[pyo3(from_py_with = args::named::cost)] cost: i64,
    ) -> PyResult<Decision> {
        let cost = self.cost(cost)?;
        let d = self.decide_quiet(py, key, cost)?;
        self.after(py, key, d.allowed);
        Ok(d.into())
    }

    /// `check` for the waits of `acquire_async` and `Limit`: counted neither in `stats()`
    /// nor as a denial event (their outcome is counted once, by `_count`).
    #[pyo3(signature = (key = None, cost = 1))]
    fn _decide(
        &self,
        py: Python<'_>,
        key: Option<&Bound<'_, PyAny>>,
        #[pyo3(from_py_with = args::named::cost)] cost: i64,
    ) -> PyResult<Decision> {
        let cost = self.cost(cost)?;
        Ok(self.decide_quiet(py, key, cost)?.into())
    }

    /// Counts the outcome of a waiting `acquire_async` (in `stats()` and the events).
    #[pyo3(signature = (key, allowed))]
    fn _count(&self, py: Python<'_>, key: Option<&Bound<'_, PyAny>>, allowed: bool) {
        self.after(py, key, allowed);
    }

    /// Decisions made so far and keys tracked now; see `LimiterStats`.
    fn stats(&self) -> LimiterStats {
        let (allowed, denied) = self.stats.totals();
        LimiterStats {
            allowed,
            denied,
            keys: self.__len__(),
        }
    }

    /// Wait until `cost` tokens are granted; True then. Returns False when `timeout`
    /// seconds (real time, also with a ManualClock) pass, and at once when the tokens
    /// cannot be there before the timeout. The wait releases the GIL and raises
    /// KeyboardInterrupt promptly on Ctrl-C.
    #[pyo3(signature = (key = None, cost = 1, *, timeout = None))]
    fn acquire(
        &self,
        py: Python<'_>,
        key: Option<&Bound<'_, PyAny>>,
        #[pyo3(from_py_with = args::named::cost)] cost: i64,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let cost = self.cost(cost)?;
        let timeout = args::opt_timeout(timeout, "timeout")?;
        let q = prepare(py, key)?;
        let start = Instant::now();
        loop {
            let d = with_inner!(&self.inner, l => decision(l, py, key, &q, cost)?);
            if d.allowed {
                self.after(py, key, true);
                return Ok(true);
            }
            let wait = Duration::from_nanos(d.retry_after);
            if let Some(t) = timeout {
                if wait > t.saturating_sub(start.elapsed()) {
                    self.after(py, key, false);
                    return Ok(false);
                }
            }
            let nap = wait.min(SLICE);
            wait::detach(py, || std::thread::sleep(nap));
            py.check_signals()?;
        }
    }
    /// `acquire` for asyncio: `await rl.acquire_async(key)`. Waiting sleeps on the event
    /// loop (no thread per waiter). Bad arguments raise at the call, before the first
    /// await.
    #[pyo3(signature = (key = None, cost = 1, *, timeout = None))]
    fn acquire_async<'py>(
        slf: &Bound<'py, Self>,
        key: Option<&Bound<'py, PyAny>>,
        #[pyo3(from_py_with = args::named::cost)] cost: i64,
        timeout: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let this = slf.get();
        // Refuse bad arguments now, not at the first await.
        let cost = this.cost(cost)?;
        let timeout_s = timeout_secs(timeout)?;
        prepare(py, key)?;
        let nap = if this.manual {
            Some(SLICE.as_secs_f64())
        } else {
            None
        };
        let helper = lookup!(py, "ferrule._ratelimit", "acquire_async")?;
        helper.call1((slf, key, cost, timeout_s, nap))
    }

    /// `acquire` as a `with` / `async with` block or a decorator: `with rl.limit(key):`.
    /// Raises `RateLimited` when the tokens cannot be had within `timeout`. Bad arguments
    /// raise at the call; a callable `key` is only hashed where it is used as the key.
    #[pyo3(signature = (key = None, cost = 1, *, timeout = None))]
    fn limit<'py>(
        slf: &Bound<'py, Self>,
        key: Option<&Bound<'py, PyAny>>,
        #[pyo3(from_py_with = args::named::cost)] cost: i64,
        timeout: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let cost = slf.get().cost(cost)?;
        let timeout_s = timeout_secs(timeout)?;
        // A decorator's callable key is called per call for the key, which may be
        // anything; in a `with` block it is the key itself, hashed at entry.
        if !key.is_some_and(PyAnyMethods::is_callable) {
            prepare(py, key)?;
        }
        lookup!(py, "ferrule._ratelimit", "Limit")?.call1((slf, key, cost, timeout_s))
    }

    /// Whole tokens available on `key` now, taking none.
    #[pyo3(signature = (key = None))]
    fn peek(&self, py: Python<'_>, key: Option<&Bound<'_, PyAny>>) -> PyResult<u64> {
        let q = prepare(py, key)?;
        let caller = Caller::new(py, key);
        let n = with_inner!(&self.inner, l => l.peek(&q, &caller));
        caller.finish(n, Vec::new())
    }

    /// Refill `key`'s bucket (the key is then reclaimed like any idle key).
    #[pyo3(signature = (key = None))]
    fn reset(&self, py: Python<'_>, key: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let q = prepare(py, key)?;
        let caller = Caller::new(py, key);
        let done = with_inner!(&self.inner, l => l.reset(&q, &caller));
        caller.finish(done, Vec::new())
    }

    /// Drop every key whose bucket is full again (kept key objects included); returns how
    /// many. Releases the GIL.
    fn sweep(&self, py: Python<'_>) -> PyResult<usize> {
        let (n, grave) = with_inner!(&self.inner, l => {
            // Made with the GIL held: the limiter's readers take their locks meanwhile.
            let _announced = l.announce_detached();
            wait::detach(py, || {
                let mut grave = Vec::new();
                let n = l.sweep(&mut grave);
                (n, grave)
            })
        });
        release(py, grave)?;
        Ok(n)
    }

    /// The first limit's rate.
    #[getter]
    fn rate(&self) -> f64 {
        self.limits.first().map_or(0.0, |l| l.0)
    }

    /// The first limit's period.
    #[getter]
    fn per(&self) -> f64 {
        self.limits.first().map_or(0.0, |l| l.1)
    }

    /// The first limit's capacity.
    #[getter]
    fn burst(&self) -> u64 {
        self.bursts().first().copied().unwrap_or(self.burst)
    }

    /// The name given (the topics' middle segment), or None.
    #[getter]
    fn name(&self, py: Python<'_>) -> Option<Py<PyString>> {
        self.name.as_ref().map(|n| n.clone_ref(py))
    }

    /// Every limit as `(rate, per, burst)`, in order.
    #[getter]
    fn limits<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.limit_triples())
    }

    fn __len__(&self) -> usize {
        with_inner!(&self.inner, l => l.len())
    }

    fn __repr__(&self) -> String {
        match &self.inner {
            Inner::One(l) => format!(
                "RateLimiter(rate={:?}, per={:?}, burst={})",
                self.rate(),
                self.per(),
                l.gcra().burst()
            ),
            Inner::Many(_) => {
                let items: Vec<String> = self
                    .limit_triples()
                    .into_iter()
                    .map(|(r, p, b)| format!("({r:?}, {p:?}, {b})"))
                    .collect();
                format!("RateLimiter(limits=[{}])", items.join(", "))
            }
        }
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(ev) = &self.events {
            ev.events.visit(&visit)?;
        }
        with_inner!(&self.inner, l => l.try_for_each_stored(|obj| visit.call(obj)))
    }

    fn __clear__(&self, py: Python<'_>) -> PyResult<()> {
        let bus = self.events.as_ref().and_then(|ev| ev.events.clear());
        let mut grave = Vec::new();
        with_inner!(&self.inner, l => l.clear(&mut grave));
        drop(bus);
        release(py, grave) // after unlocking
    }
}

/// `try_acquire` on one kind of core limiter: the fast path written out, with no Result
/// to unwrap around the common decision.
#[allow(clippy::inline_always)] // the fast path: as `Bucket::take`
#[inline(always)]
fn try_acquire_in<G: Policy>(
    l: &Core<G>,
    py: Python<'_>,
    key: Option<&Bound<'_, PyAny>>,
    q: &Query<'_>,
    cost: u64,
) -> PyResult<bool> {
    if let Some(o) = l.hit(q, cost) {
        if l.due() {
            reclaim_step(l, py)?;
        }
        return Ok(G::allowed(&o));
    }
    Ok(G::allowed(&decide_slow(l, py, key, q, cost)?))
}

/// `try_acquire` for several limits, kept out of line and entered before the query is
/// built, so that the single-limit path stays as it was alone (measured with callgrind:
/// with both paths inline, a `try_acquire` on one limit ran ~35 more instructions; with
/// this, ~3, the monotonic clock read no longer being inlined).
#[inline(never)]
fn try_acquire_many(
    l: &Core<Windows>,
    py: Python<'_>,
    key: Option<&Bound<'_, PyAny>>,
    cost: u64,
) -> PyResult<bool> {
    let q = prepare(py, key)?;
    try_acquire_in(l, py, key, &q, cost)
}

/// `RateLimiter.try_acquire` in front of PyO3's (see `crate::py::fastcall`):
/// `try_acquire(key)` with an exact str key that the limiter already tracks, on a limiter
/// of one limit without a bus, is decided here (one bucket read and CAS); every other
/// call (another key, cost or shape, an untracked key, several limits, a bus to publish
/// denials on) is PyO3's `try_acquire`.
static TRY_ACQUIRE: fastcall::Method = fastcall::Method::new(c"try_acquire");

/// Installs the fast methods of `RateLimiter` (module initialisation).
pub(crate) fn install_fast_methods(py: Python<'_>) -> PyResult<()> {
    fastcall::install(
        &py.get_type::<RateLimiter>(),
        &TRY_ACQUIRE,
        try_acquire_fastcall,
    )
}

fastcall::entry!(
    try_acquire_fastcall,
    TRY_ACQUIRE,
    RateLimiter,
    1..=1,
    try_acquire_fast_path
);

/// `try_acquire(key)` with a tracked exact str key on a limiter of one limit without a
/// bus. Hands the call on only before it changed anything; runs no Python code; drops
/// Python objects (a reclaim step's) only inside `wait::attach` (PyO3's attach of an
/// attached thread), where PyO3 knows the thread is attached.
#[allow(clippy::inline_always)] // the body of the entry point: measured, as `dispatch`
#[inline(always)]
fn try_acquire_fast_path<'py>(
    py: Python<'py>,
    rl: &RateLimiter,
    args: fastcall::Args<'_, 'py>,
) -> fastcall::Answer<'py> {
    let (Inner::One(l), None) = (&rl.inner, &rl.events) else {
        return None;
    };
    let key = args.get(0)?;
    let (s, h) = exact_str(Some(&key))?;
    let cost = rl.cost(1).ok()?;
    // Borrows only (a `KeyRef::Str`): nothing to drop, and no call to the drop glue of
    // every kind of key.
    let q = std::mem::ManuallyDrop::new(Query::with_hash(KeyRef::Str(s), h));
    let o = l.hit(&q, cost)?;
    if l.due() {
        if let Err(e) = wait::attach(|py| reclaim_step(l, py)) {
            return Some(Err(e));
        }
    }
    let allowed = allowed_by(l, &o);
    rl.after(py, Some(&key), allowed);
    Some(Ok(PyBool::new(py, allowed).to_owned().into_any()))
}

/// Whether `l`'s outcome `o` grants the tokens (names `l`'s policy for the compiler).
#[inline]
fn allowed_by<G: Policy>(_l: &Core<G>, o: &G::Outcome) -> bool {
    G::allowed(o)
}

/// What a `RateLimiter` has decided, from `RateLimiter.stats`. Immutable.
///
/// `allowed` and `denied` count decisions since the limiter was made, each only ever
/// growing: one per `try_acquire` and `check`, and one per `acquire`, `acquire_async` or
/// `limit` entry (its outcome: granted, or given up at the timeout), however long it
/// waited. `keys` is how many keys the limiter tracks now (`len(limiter)`).
#[pyclass(frozen, get_all, module = "ferrule", name = "LimiterStats")]
pub struct LimiterStats {
    /// Decisions that granted the tokens.
    allowed: u64,
    /// Decisions that refused them.
    denied: u64,
    /// Keys tracked now (`len(limiter)`).
    keys: usize,
}

#[pymethods]
impl LimiterStats {
    fn __repr__(&self) -> String {
        format!(
            "LimiterStats(allowed={}, denied={}, keys={})",
            self.allowed, self.denied, self.keys
        )
    }
}
