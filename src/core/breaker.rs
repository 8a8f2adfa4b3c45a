//! A circuit breaker whose state lives in one atomic word, so that admitting a call and
//! recording its outcome never take a lock and never serialise the protected calls.
//!
//! # States
//! - closed: every call is admitted. What opens the breaker is its [`Trip`] rule:
//!   - consecutive (the default): `failure_threshold` consecutive expected failures trip
//!     it; a success resets the run;
//!   - rate: when a failure is recorded and the window (of this closed period) holds at
//!     least `min_calls` calls of which a fraction `failures / calls >= failure_rate`
//!     failed. The window is the last `window` seconds (a [`TimeWindow`]) or the last
//!     `window_calls` calls (a [`CountWindow`]). A success never opens the breaker.
//!
//!   With `slow_call` set, a call that returns `slow_call` or more after it was admitted
//!   counts as a failure (a slow call), in either rule and in half-open.
//! - open: calls are rejected (with the time left) until the reset timeout has passed:
//!   opened at `t` with timeout `d`, the breaker stays open while `now < t + d`.
//! - half-open: up to `half_open_max_calls` probe calls are admitted at once, the others
//!   rejected. A probe that succeeds gives its slot back and counts; the
//!   `success_threshold`-th success closes the breaker. The first probe to fail re-opens
//!   it (stamped anew). A probe that ends in an exception that is not expected gives its
//!   slot back without deciding anything.
//! - forced open / forced closed: set by `force_open` / `force_closed`, left only by
//!   `reset` (to closed) or the other `force_*`. Forced open rejects every call; forced
//!   closed admits every call and lets no outcome change anything.
//!
//! # The word
//! `word` packs `state` (2 bits), `count` (30 bits) and `gen` (32 bits). `count` is the
//! run of consecutive failures when closed (0 under the rate rule), when half-open the
//! probes in flight (low `succ_shift` bits) and the successes so far (the bits above),
//! and 0 when open. State 3 is a family told apart by `count`: `TRIPPING` (0),
//! `FORCED_OPEN` (1), `FORCED_CLOSED` (2). Every change of state increments `gen`. A
//! call's [`Permit`] remembers the `gen` it was admitted under, and its outcome is
//! applied only while the word still has that `gen`: a call admitted before the breaker
//! opened cannot re-open it later, a probe's outcome never leaks into the next closed
//! period, and counting failures is one CAS that fails if anything else changed
//! meanwhile. (`gen` wraps after 2^32 transitions; a permit would have to be held across
//! all of them to be mistaken.) Invariants: while half-open, probes in flight `<=
//! half_open_max_calls` (a probe is admitted only by a CAS from a smaller number) and
//! successes `< success_threshold`; while closed, `count < failure_threshold`.
//!
//! # The windows (rate rule)
//! Beside the word, never inside a CAS with it. Each record is tagged with the `gen` of
//! the closed period it belongs to, and a window counts only the current period's
//! records: closing the breaker starts an empty window without clearing anything.
//! - [`TimeWindow`]: `BUCKETS` buckets of `window / BUCKETS` each (the window moves in
//!   those steps). A bucket is a tag word (`gen`, slot number, a rolling bit) and a
//!   counts word (calls, failures: one `fetch_add` records both). A record for a slot
//!   newer than its bucket's tag rolls the bucket over in three steps, like a trip:
//!   claim (CAS the tag to rolling), store the counts of its own record, publish the new
//!   tag (`Release`). A record that meets a rolling tag waits the instant it takes, so no
//!   record of the current slot is lost; a record older than the tag is dropped; one
//!   that read the old tag just before the claim may land in the old counts (dropped
//!   with them: its slot had expired) or in the new ones (counted a step late). A
//!   reader skips rolling buckets and those of another `gen` or outside the window, so
//!   it never counts an expired step as current.
//! - [`CountWindow`]: a ring of `window_calls` words and a ticket counter. A record takes
//!   the next ticket and stores `(gen, ticket, failed)` in the ring slot of its ticket,
//!   by a CAS that gives way to a newer entry; the window is the ring's entries of the
//!   current `gen`.
//!
//! Window readings are exact when no record is in flight, and cost a scan (the buckets,
//! or the ring) only when a failure is recorded.
//!
//! # The open stamp
//! The stamp of the current open period lives beside the word in `opened_at`. Tripping
//! (closed or half-open -> open) takes three steps, with no lock:
//! 1. claim: a CAS from the word the tripping thread saw to `TRIPPING` with the next
//!    `gen`. Only one thread can win it, and nothing but step 3 moves the word out of
//!    `TRIPPING` (outcomes carry older gens; `reset` and `force_*` wait the instant it
//!    takes), so the claimer is the only writer of `opened_at` until it publishes;
//! 2. `opened_at = now` (`Release`);
//! 3. publish: store `OPEN` with the same `gen` (`Release`).
//!
//! A reader that sees `OPEN` with some `gen` (an `Acquire` load) before and after reading
//! `opened_at` (`Acquire`) has read that period's stamp. The first load synchronises with
//! step 3, so the read sees that period's stamp or a later one. A later stamp is written
//! only by a later claimer, after its claim CAS; reading it synchronises with it, so the
//! second load of the word sees that claim or what followed, and the `gen` differs. The
//! stamps are written in `gen` order: a claim reads (through a chain of RMWs that
//! continue the release sequence of the previous publish) a word published after the
//! previous stamp. While a trip is in flight, callers treat the breaker as open (a call
//! is rejected with `retry_after = reset_timeout`, as it would be an instant later).
//!
//! # Orderings
//! Word updates are `AcqRel` CASes (failed CASes `Acquire`); bucket tags are published
//! with `Release` and read with `Acquire`; window counts are `Relaxed` RMWs (ordered by
//! the tag); the statistics use `Relaxed`. Transitions are returned to the caller, which
//! reports them (callbacks, signals) after the fact, with no lock held.
//!
//! The protocol runs on `crate::core::sync` atomics: the loom models at the end of this
//! file (`make loom`) check it under every interleaving, with a manual clock.

use std::fmt;
use std::sync::atomic::AtomicU64 as StatU64;

use crate::core::clock::Clock;
use crate::core::sync::{AtomicI64, AtomicU64, Ordering};

/// Largest `failure_threshold`, `half_open_max_calls` and `min_calls` (the word's count
/// field).
pub const MAX_COUNT: u32 = (1 << 30) - 1;

/// Largest `window_calls`: the ring is scanned on every recorded failure.
pub const MAX_WINDOW_CALLS: u32 = 10_000;

/// Buckets of a time window.
pub const BUCKETS: usize = 20;

/// `retry_after` of a forced-open breaker: it lets nothing through until told.
pub const FOREVER: i64 = i64::MAX;

const CLOSED: u64 = 0;
const OPEN: u64 = 1;
const HALF_OPEN: u64 = 2;
/// State 3: a family told apart by the count field.
const SPECIAL: u64 = 3;
/// `SPECIAL` counts: a trip in flight (open, its stamp not yet published; see the
/// module docs), and the two forced states.
const TRIPPING: u32 = 0;
const FORCED_OPEN: u32 = 1;
const FORCED_CLOSED: u32 = 2;

const STATE_MASK: u64 = 0b11;
const COUNT_SHIFT: u32 = 2;
const COUNT_MASK: u64 = MAX_COUNT as u64;
const GEN_SHIFT: u32 = 32;

#[inline]
fn pack(state: u64, count: u32, gen: u32) -> u64 {
    state | (u64::from(count) << COUNT_SHIFT) | (u64::from(gen) << GEN_SHIFT)
}

#[inline]
fn state_of(w: u64) -> u64 {
    w & STATE_MASK
}

#[inline]
fn count_of(w: u64) -> u32 {
    ((w >> COUNT_SHIFT) & COUNT_MASK) as u32
}

#[inline]
fn gen_of(w: u64) -> u32 {
    (w >> GEN_SHIFT) as u32
}

#[inline]
fn is_tripping(w: u64) -> bool {
    state_of(w) == SPECIAL && count_of(w) == TRIPPING
}

/// The state a caller observes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
    ForcedOpen,
    ForcedClosed,
}

impl State {
    fn of(w: u64) -> Self {
        match (state_of(w), count_of(w)) {
            (CLOSED, _) => Self::Closed,
            (HALF_OPEN, _) => Self::HalfOpen,
            (SPECIAL, FORCED_OPEN) => Self::ForcedOpen,
            (SPECIAL, FORCED_CLOSED) => Self::ForcedClosed,
            _ => Self::Open,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
            Self::ForcedOpen => "forced_open",
            Self::ForcedClosed => "forced_closed",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A change of state, to be reported by the caller once it is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: State,
    pub to: State,
}

/// Proof that a call was admitted, under which period, and (with `slow_call`) when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permit {
    gen: u32,
    probe: bool,
    /// The clock when admitted; 0 without `slow_call` (the clock is not read).
    started: i64,
}

impl Permit {
    /// A compact form for callers that must carry the permit through foreign code
    /// (below 2^33 unless the permit carries a start time).
    pub fn to_bits(self) -> u128 {
        // `started` is a clock reading, >= 0.
        (u128::from(self.started.max(0) as u64) << 33)
            | (u128::from(self.gen) << 1)
            | u128::from(self.probe)
    }

    /// The inverse of [`Permit::to_bits`]; `None` for a value that no permit produces.
    pub fn from_bits(bits: u128) -> Option<Self> {
        let started = i64::try_from(bits >> 33).ok()?;
        Some(Self {
            gen: ((bits >> 1) & u128::from(u32::MAX)) as u32,
            probe: bits & 1 == 1,
            started,
        })
    }

    pub fn is_probe(self) -> bool {
        self.probe
    }
}

/// Why a call was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    /// Nanoseconds until the breaker lets a probe through; 0 when half-open and every
    /// probe slot is taken (the wait depends on the probes in flight); [`FOREVER`] when
    /// forced open.
    pub retry_after: i64,
    /// The state that refused the call.
    pub state: State,
}

/// Why a configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BreakerError {
    TooSmall(&'static str),
    TooLarge(&'static str, u32),
    Negative(&'static str),
    NotPositive(&'static str),
    Rate,
    MinCallsAboveWindow,
    /// `success_threshold` beyond what the count field holds beside the probes.
    SuccessThreshold(u32, u32),
}

impl fmt::Display for BreakerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooSmall(arg) => write!(f, "{arg} must be >= 1"),
            Self::TooLarge(arg, max) => write!(f, "{arg} must be <= {max}"),
            Self::Negative(arg) => write!(f, "{arg} must be >= 0"),
            Self::NotPositive(arg) => write!(f, "{arg} must be > 0"),
            Self::Rate => f.write_str("failure_rate must be > 0 and <= 1"),
            Self::MinCallsAboveWindow => f.write_str("min_calls must be <= window_calls"),
            Self::SuccessThreshold(max, probes) => write!(
                f,
                "success_threshold must be <= {max} with half_open_max_calls={probes}"
            ),
        }
    }
}

impl std::error::Error for BreakerError {}

/// What opens a closed breaker.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Trip {
    /// This many consecutive failures.
    Consecutive(i64),
    /// A failure rate over a window, once it holds `min_calls` calls.
    Rate {
        rate: f64,
        min_calls: i64,
        window: WindowSpec,
    },
}

/// The window of the rate rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowSpec {
    /// The last this many nanoseconds.
    Nanos(i64),
    /// The last this many calls.
    Calls(i64),
}

/// A breaker's configuration (see [`Breaker::with_config`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    pub trip: Trip,
    pub reset_timeout: i64,
    pub half_open_max_calls: i64,
    pub success_threshold: i64,
    /// Nanoseconds from which a successful call counts as a failure.
    pub slow_call: Option<i64>,
}

impl Config {
    /// The consecutive rule, one success to close, no slow calls.
    pub fn consecutive(failure_threshold: i64, reset_timeout: i64, probes: i64) -> Self {
        Self {
            trip: Trip::Consecutive(failure_threshold),
            reset_timeout,
            half_open_max_calls: probes,
            success_threshold: 1,
            slow_call: None,
        }
    }
}

/// The counters reported by [`Breaker::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Calls admitted (the protected function ran or is running).
    pub calls: u64,
    pub successes: u64,
    /// Admitted calls that ended in an expected exception, or were slow.
    pub failures: u64,
    /// Of `failures`: calls that returned but took `slow_call` or longer.
    pub slow_calls: u64,
    /// Admitted calls that ended in an exception that is not expected.
    pub ignored: u64,
    /// Calls refused without running.
    pub rejections: u64,
    pub state_changes: u64,
    /// The current run of failures while closed (consecutive rule).
    pub consecutive_failures: u32,
    /// Calls and failures in the current window while closed (rate rule).
    pub window_calls: u32,
    pub window_failures: u32,
}

/// Keeps a hot atomic on its own cache line, so that the statistics written on every call
/// do not evict the state word that every call reads.
#[repr(align(128))]
#[derive(Debug, Default)]
struct Padded<T>(T);

/// Statistics only (never read to decide anything): plain std atomics, also under loom,
/// so that the models explore the protocol and not the bookkeeping.
#[derive(Debug, Default)]
struct Counters {
    calls: StatU64,
    successes: StatU64,
    failures: StatU64,
    slow_calls: StatU64,
    ignored: StatU64,
    rejections: StatU64,
    state_changes: StatU64,
}

/// Waits an instant for another thread to finish a short step (a trip or a rollover in
/// flight).
fn pause(spins: &mut u32) {
    *spins = spins.saturating_add(1);
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    if *spins < 64 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

/// `a` is later than `b` in a space that wraps at `2^bits` (within half of it).
#[inline]
fn later(a: u64, b: u64, bits: u32) -> bool {
    let d = a.wrapping_sub(b) & ((1 << bits) - 1);
    d != 0 && d < 1 << (bits - 1)
}

/// One record's contribution to a pair of (calls, failures) counts.
#[inline]
fn delta(failed: bool) -> u64 {
    (1 << 32) | u64::from(failed)
}

// ---- the time window --------------------------------------------------------------------

/// Tag bits: `gen` (32) | rolling (1) | slot number (31, wrapping).
const SLOT_BITS: u32 = 31;
const SLOT_MASK: u64 = (1 << SLOT_BITS) - 1;
const ROLLING: u64 = 1 << SLOT_BITS;

#[inline]
fn tag(gen: u32, slot: u64) -> u64 {
    (u64::from(gen) << 32) | (slot & SLOT_MASK)
}

#[derive(Debug)]
struct Bucket {
    /// `tag(gen, slot)`, or that with `ROLLING` set while the bucket rolls over.
    tag: AtomicU64,
    /// calls (high 32 bits) | failures (low 32 bits).
    counts: AtomicU64,
}

/// The last `window` nanoseconds, in `BUCKETS` steps (see the module docs).
#[derive(Debug)]
pub struct TimeWindow {
    buckets: Box<[Bucket]>,
    step: i64,
}

impl TimeWindow {
    fn new(window: i64) -> Self {
        let buckets = (0..BUCKETS)
            .map(|_| Bucket {
                // gen 0 is live from the start: an empty bucket of slot 0 of gen 0 holds
                // nothing, which is what it counts.
                tag: AtomicU64::new(tag(0, 0)),
                counts: AtomicU64::new(0),
            })
            .collect();
        Self {
            buckets,
            step: (window / BUCKETS as i64).max(1),
        }
    }

    /// The slot number of clock reading `now`.
    fn slot(&self, now: i64) -> u64 {
        (now.max(0) / self.step) as u64 & SLOT_MASK
    }

    /// Adds one record of period `gen` at slot `slot`.
    fn record(&self, gen: u32, slot: u64, failed: bool) {
        let b = &self.buckets[(slot % BUCKETS as u64) as usize];
        let mine = tag(gen, slot);
        let mut spins = 0;
        loop {
            let t = b.tag.load(Ordering::Acquire);
            if t == mine {
                b.counts.fetch_add(delta(failed), Ordering::Relaxed);
                return;
            }
            if t & ROLLING != 0 {
                // The claimer is two stores away from publishing.
                pause(&mut spins);
                continue;
            }
            let newer = if gen_of(t) == gen {
                later(slot, t & SLOT_MASK, SLOT_BITS)
            } else {
                later(u64::from(gen), u64::from(gen_of(t)), 32)
            };
            if !newer {
                return; // the bucket moved on: this record's step (or period) is over
            }
            if b.tag
                .compare_exchange(t, mine | ROLLING, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                // Only this thread writes the counts wholesale until the tag is published;
                // an add from a recorder that read the old tag lands before (dropped with
                // the expired step) or after (counted a step late). A swap, not a store:
                // as an RMW it is ordered with those adds in every model loom explores.
                b.counts.swap(delta(failed), Ordering::Relaxed);
                b.tag.store(mine, Ordering::Release);
                return;
            }
        }
    }

    /// (calls, failures) of period `gen` in the window ending at slot `slot`.
    fn read(&self, gen: u32, slot: u64) -> (u64, u64) {
        let (mut calls, mut failures) = (0, 0);
        for b in &*self.buckets {
            let t = b.tag.load(Ordering::Acquire);
            if t & ROLLING != 0 || gen_of(t) != gen {
                continue;
            }
            let s = t & SLOT_MASK;
            // In the window: one of the last BUCKETS slots, or a slot a thread with a
            // later clock reading has just opened.
            let age = slot.wrapping_sub(s) & SLOT_MASK;
            let ahead = s.wrapping_sub(slot) & SLOT_MASK;
            if age < BUCKETS as u64 || ahead < BUCKETS as u64 {
                let c = b.counts.load(Ordering::Relaxed);
                calls += c >> 32;
                failures += c & u64::from(u32::MAX);
            }
        }
        (calls, failures.min(calls))
    }
}

// ---- the count window -------------------------------------------------------------------

/// Ring entry bits: `gen` (32) | ticket (30, wrapping) | valid (1) | failed (1).
const TICKET_BITS: u32 = 30;
const TICKET_MASK: u64 = (1 << TICKET_BITS) - 1;
const VALID: u64 = 0b10;

/// The last `n` calls (see the module docs).
#[derive(Debug)]
pub struct CountWindow {
    ring: Box<[AtomicU64]>,
    tickets: AtomicU64,
}

impl CountWindow {
    fn new(n: u32) -> Self {
        Self {
            ring: (0..n).map(|_| AtomicU64::new(0)).collect(),
            tickets: AtomicU64::new(0),
        }
    }

    fn record(&self, gen: u32, failed: bool) {
        let t = self.tickets.fetch_add(1, Ordering::Relaxed);
        let slot = &self.ring[(t % self.ring.len() as u64) as usize];
        let ticket = t & TICKET_MASK;
        let mine = (u64::from(gen) << 32) | (ticket << 2) | VALID | u64::from(failed);
        let mut old = slot.load(Ordering::Relaxed);
        loop {
            if old & VALID != 0 {
                let newer = if gen_of(old) == gen {
                    later(ticket, (old >> 2) & TICKET_MASK, TICKET_BITS)
                } else {
                    later(u64::from(gen), u64::from(gen_of(old)), 32)
                };
                if !newer {
                    return; // a later call of the window already holds this slot
                }
            }
            match slot.compare_exchange_weak(old, mine, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(now) => old = now,
            }
        }
    }

    fn read(&self, gen: u32) -> (u64, u64) {
        let (mut calls, mut failures) = (0, 0);
        for e in &*self.ring {
            let e = e.load(Ordering::Relaxed);
            if e & VALID != 0 && gen_of(e) == gen {
                calls += 1;
                failures += e & 1;
            }
        }
        (calls, failures)
    }
}

/// The closed state's rule, resolved.
#[derive(Debug)]
enum Rule {
    Consecutive(u32),
    Rate {
        rate: f64,
        min_calls: u32,
        window: Window,
    },
}

#[derive(Debug)]
enum Window {
    Time(TimeWindow),
    Count(CountWindow),
}

/// A lock-free circuit breaker (see the module documentation).
#[derive(Debug)]
pub struct Breaker {
    word: Padded<AtomicU64>,
    opened_at: AtomicI64,
    rule: Rule,
    half_open_max_calls: u32,
    success_threshold: u32,
    /// Bits of the half-open count that hold the probes in flight; successes above.
    succ_shift: u32,
    reset_timeout: i64,
    slow_call: Option<i64>,
    config: Config,
    clock: Clock,
    counters: Padded<Counters>,
}

fn count(v: i64, arg: &'static str, max: u32) -> Result<u32, BreakerError> {
    if v < 1 {
        Err(BreakerError::TooSmall(arg))
    } else if v > i64::from(max) {
        Err(BreakerError::TooLarge(arg, max))
    } else {
        Ok(v as u32)
    }
}

impl Breaker {
    /// The consecutive rule (see [`Config::consecutive`]).
    pub fn new(
        failure_threshold: i64,
        reset_timeout_nanos: i64,
        half_open_max_calls: i64,
        clock: Clock,
    ) -> Result<Self, BreakerError> {
        Self::with_config(
            Config::consecutive(failure_threshold, reset_timeout_nanos, half_open_max_calls),
            clock,
        )
    }

    pub fn with_config(config: Config, clock: Clock) -> Result<Self, BreakerError> {
        let rule = match config.trip {
            Trip::Consecutive(n) => Rule::Consecutive(count(n, "failure_threshold", MAX_COUNT)?),
            Trip::Rate {
                rate,
                min_calls,
                window,
            } => {
                // NaN fails both comparisons' negation: refused.
                if !(rate > 0.0 && rate <= 1.0) {
                    return Err(BreakerError::Rate);
                }
                let min_calls = count(min_calls, "min_calls", MAX_COUNT)?;
                let window = match window {
                    WindowSpec::Nanos(ns) if ns <= 0 => {
                        return Err(BreakerError::NotPositive("window"))
                    }
                    WindowSpec::Nanos(ns) => Window::Time(TimeWindow::new(ns)),
                    WindowSpec::Calls(n) => {
                        let n = count(n, "window_calls", MAX_WINDOW_CALLS)?;
                        if min_calls > n {
                            return Err(BreakerError::MinCallsAboveWindow);
                        }
                        Window::Count(CountWindow::new(n))
                    }
                };
                Rule::Rate {
                    rate,
                    min_calls,
                    window,
                }
            }
        };
        let half_open_max_calls =
            count(config.half_open_max_calls, "half_open_max_calls", MAX_COUNT)?;
        let succ_shift = 32 - half_open_max_calls.leading_zeros();
        // Successes are stored up to success_threshold - 1, in 30 - succ_shift bits.
        let succ_max = 1_u32 << (30 - succ_shift);
        let success_threshold = count(config.success_threshold, "success_threshold", MAX_COUNT)?;
        if success_threshold > succ_max {
            return Err(BreakerError::SuccessThreshold(
                succ_max,
                half_open_max_calls,
            ));
        }
        if config.reset_timeout < 0 {
            return Err(BreakerError::Negative("reset_timeout"));
        }
        if config.slow_call.is_some_and(|s| s <= 0) {
            return Err(BreakerError::NotPositive("slow_call"));
        }
        Ok(Self {
            word: Padded(AtomicU64::new(pack(CLOSED, 0, 0))),
            opened_at: AtomicI64::new(0),
            rule,
            half_open_max_calls,
            success_threshold,
            succ_shift,
            reset_timeout: config.reset_timeout,
            slow_call: config.slow_call,
            config,
            clock,
            counters: Padded::default(),
        })
    }

    /// The configuration it was made with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn half_open_max_calls(&self) -> u32 {
        self.half_open_max_calls
    }

    pub fn reset_timeout_nanos(&self) -> i64 {
        self.reset_timeout
    }

    #[inline]
    fn load(&self) -> u64 {
        self.word.0.load(Ordering::Acquire)
    }

    #[inline]
    fn cas(&self, current: u64, new: u64) -> bool {
        self.word
            .0
            .compare_exchange(current, new, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    fn changed(&self, from: u64, to: State) -> Transition {
        self.counters
            .0
            .state_changes
            .fetch_add(1, Ordering::Relaxed);
        Transition {
            from: State::of(from),
            to,
        }
    }

    /// For an `OPEN` word `w`: the stamp of its period, or `None` if the word moved on
    /// while it was read.
    fn stamp_of(&self, w: u64) -> Option<i64> {
        let t = self.opened_at.load(Ordering::Acquire);
        (self.load() == w).then_some(t)
    }

    #[inline]
    fn permit(&self, gen: u32, probe: bool) -> Permit {
        let started = if self.slow_call.is_some() {
            self.clock.now_nanos()
        } else {
            0
        };
        Permit {
            gen,
            probe,
            started,
        }
    }

    #[inline]
    fn inflight(&self, count: u32) -> u32 {
        count & ((1 << self.succ_shift) - 1)
    }

    /// Admits a call or refuses it. An open breaker whose timeout has passed becomes
    /// half-open here, and the caller takes the first probe slot.
    pub fn acquire(&self) -> Result<(Permit, Option<Transition>), Rejected> {
        let c = &self.counters.0;
        loop {
            let w = self.load();
            match state_of(w) {
                CLOSED => {
                    c.calls.fetch_add(1, Ordering::Relaxed);
                    return Ok((self.permit(gen_of(w), false), None));
                }
                HALF_OPEN => {
                    let n = count_of(w);
                    if self.inflight(n) >= self.half_open_max_calls {
                        c.rejections.fetch_add(1, Ordering::Relaxed);
                        return Err(Rejected {
                            retry_after: 0,
                            state: State::HalfOpen,
                        });
                    }
                    if self.cas(w, pack(HALF_OPEN, n + 1, gen_of(w))) {
                        c.calls.fetch_add(1, Ordering::Relaxed);
                        return Ok((self.permit(gen_of(w), true), None));
                    }
                }
                SPECIAL => {
                    let (retry_after, state) = match count_of(w) {
                        FORCED_CLOSED => {
                            c.calls.fetch_add(1, Ordering::Relaxed);
                            return Ok((self.permit(gen_of(w), false), None));
                        }
                        FORCED_OPEN => (FOREVER, State::ForcedOpen),
                        // Open an instant ago: the stamp is being written.
                        _ => (self.reset_timeout, State::Open),
                    };
                    c.rejections.fetch_add(1, Ordering::Relaxed);
                    return Err(Rejected { retry_after, state });
                }
                _ => {
                    let Some(t) = self.stamp_of(w) else { continue };
                    let left = self.time_left(t);
                    if left > 0 {
                        c.rejections.fetch_add(1, Ordering::Relaxed);
                        return Err(Rejected {
                            retry_after: left,
                            state: State::Open,
                        });
                    }
                    let gen = gen_of(w).wrapping_add(1);
                    if self.cas(w, pack(HALF_OPEN, 1, gen)) {
                        c.calls.fetch_add(1, Ordering::Relaxed);
                        let t = self.changed(w, State::HalfOpen);
                        return Ok((self.permit(gen, true), Some(t)));
                    }
                }
            }
        }
    }

    /// Nanoseconds until an open period stamped `t` ends (<= 0: it has ended).
    fn time_left(&self, t: i64) -> i64 {
        t.saturating_add(self.reset_timeout)
            .saturating_sub(self.clock.now_nanos())
    }

    /// Records that the call admitted with `permit` returned normally (a slow call: as
    /// a failure).
    pub fn success(&self, permit: Permit) -> Option<Transition> {
        if let Some(slow) = self.slow_call {
            if self.clock.now_nanos().saturating_sub(permit.started) >= slow {
                self.counters.0.slow_calls.fetch_add(1, Ordering::Relaxed);
                return self.failure(permit);
            }
        }
        self.counters.0.successes.fetch_add(1, Ordering::Relaxed);
        loop {
            let w = self.load();
            if gen_of(w) != permit.gen {
                return None;
            }
            match state_of(w) {
                CLOSED => match &self.rule {
                    Rule::Consecutive(_) if count_of(w) > 0 => {
                        if self.cas(w, pack(CLOSED, 0, permit.gen)) {
                            return None;
                        }
                    }
                    Rule::Consecutive(_) => return None,
                    Rule::Rate { window, .. } => {
                        self.record(window, permit.gen, false);
                        return None;
                    }
                },
                HALF_OPEN => {
                    let n = count_of(w);
                    let successes = (n >> self.succ_shift) + 1;
                    if successes >= self.success_threshold {
                        if self.cas(w, pack(CLOSED, 0, permit.gen.wrapping_add(1))) {
                            return Some(self.changed(w, State::Closed));
                        }
                    } else {
                        // Give the slot back (the probe held one: n's inflight > 0) and
                        // count the success.
                        let next =
                            (successes << self.succ_shift) | self.inflight(n).saturating_sub(1);
                        if self.cas(w, pack(HALF_OPEN, next, permit.gen)) {
                            return None;
                        }
                    }
                }
                _ => return None,
            }
        }
    }

    fn record(&self, window: &Window, gen: u32, failed: bool) {
        match window {
            Window::Time(tw) => tw.record(gen, tw.slot(self.clock.now_nanos()), failed),
            Window::Count(cw) => cw.record(gen, failed),
        }
    }

    fn window_counts(&self, window: &Window, gen: u32) -> (u64, u64) {
        match window {
            Window::Time(tw) => tw.read(gen, tw.slot(self.clock.now_nanos())),
            Window::Count(cw) => cw.read(gen),
        }
    }

    /// Records that the call admitted with `permit` raised an expected exception.
    pub fn failure(&self, permit: Permit) -> Option<Transition> {
        self.counters.0.failures.fetch_add(1, Ordering::Relaxed);
        let mut recorded = false;
        loop {
            let w = self.load();
            if gen_of(w) != permit.gen {
                return None;
            }
            match state_of(w) {
                CLOSED => match &self.rule {
                    Rule::Consecutive(threshold) => {
                        let n = count_of(w) + 1;
                        if n < *threshold {
                            if self.cas(w, pack(CLOSED, n, permit.gen)) {
                                return None;
                            }
                            continue;
                        }
                    }
                    Rule::Rate {
                        rate,
                        min_calls,
                        window,
                    } => {
                        if !recorded {
                            self.record(window, permit.gen, true);
                            recorded = true;
                            let (calls, failures) = self.window_counts(window, permit.gen);
                            // Division, not `rate * calls`: failures / calls rounds to the
                            // very float the user wrote when it is that fraction.
                            let over = calls >= u64::from(*min_calls)
                                && failures as f64 / calls as f64 >= *rate;
                            if !over {
                                return None;
                            }
                        }
                        // Over the threshold: trip below (a failed claim means the word
                        // changed, and the loop sees how).
                    }
                },
                HALF_OPEN => {}
                _ => return None,
            }
            if let Some(t) = self.trip(w) {
                return Some(t);
            }
        }
    }

    /// Moves `w` (closed or half-open) to open, stamped now; `None` if the word changed
    /// first. The three steps of the module docs: claim, stamp, publish.
    fn trip(&self, w: u64) -> Option<Transition> {
        let gen = gen_of(w).wrapping_add(1);
        if !self.cas(w, pack(SPECIAL, TRIPPING, gen)) {
            return None;
        }
        // The claim makes this thread the only writer of `opened_at` until the store
        // below; nobody trusts the stamp before that store publishes it.
        self.opened_at
            .store(self.clock.now_nanos(), Ordering::Release);
        self.word.0.store(pack(OPEN, 0, gen), Ordering::Release);
        Some(self.changed(w, State::Open))
    }

    /// Records that the call admitted with `permit` raised an exception that does not
    /// count: a probe gives its slot back, nothing else changes.
    pub fn release(&self, permit: Permit) {
        self.counters.0.ignored.fetch_add(1, Ordering::Relaxed);
        if !permit.probe {
            return;
        }
        loop {
            let w = self.load();
            if gen_of(w) != permit.gen
                || state_of(w) != HALF_OPEN
                || self.inflight(count_of(w)) == 0
            {
                return;
            }
            if self.cas(w, pack(HALF_OPEN, count_of(w) - 1, permit.gen)) {
                return;
            }
        }
    }

    /// Moves the breaker to `to` (a `CLOSED` or `SPECIAL` word with count `count`) from
    /// whatever state it is in, once no trip is in flight; the transition if the state
    /// changed. Calls in flight from before no longer count.
    fn force(&self, state: u64, count: u32) -> Option<Transition> {
        let mut spins = 0;
        loop {
            let w = self.load();
            if is_tripping(w) {
                // Only the claimer may end a trip (module docs); it is two stores away.
                pause(&mut spins);
                continue;
            }
            let to = pack(state, count, gen_of(w).wrapping_add(1));
            if self.cas(w, to) {
                let (from, to) = (State::of(w), State::of(to));
                return (from != to).then(|| self.changed(w, to));
            }
        }
    }

    /// Closes the breaker (from any state, forced ones included) and clears its run of
    /// failures and its window. Calls in flight from before the reset no longer count.
    pub fn reset(&self) -> Option<Transition> {
        self.force(CLOSED, 0)
    }

    /// Opens the breaker until `reset` or `force_closed`: every call is rejected.
    pub fn force_open(&self) -> Option<Transition> {
        self.force(SPECIAL, FORCED_OPEN)
    }

    /// Closes the breaker until `reset` or `force_open`: every call is admitted and no
    /// outcome changes the state.
    pub fn force_closed(&self) -> Option<Transition> {
        self.force(SPECIAL, FORCED_CLOSED)
    }

    /// The current state. An open breaker whose timeout has passed becomes half-open
    /// here (with every probe slot free), so what is reported is what a call would meet.
    pub fn state(&self) -> (State, Option<Transition>) {
        loop {
            let w = self.load();
            if state_of(w) != OPEN {
                // TRIPPING reads as open (State::of).
                return (State::of(w), None);
            }
            let Some(t) = self.stamp_of(w) else { continue };
            if self.time_left(t) > 0 {
                return (State::Open, None);
            }
            let gen = gen_of(w).wrapping_add(1);
            if self.cas(w, pack(HALF_OPEN, 0, gen)) {
                return (State::HalfOpen, Some(self.changed(w, State::HalfOpen)));
            }
        }
    }

    /// The state a call would meet now, without moving the breaker (for display).
    pub fn peek(&self) -> State {
        let w = self.load();
        if state_of(w) == OPEN && self.stamp_of(w).is_some_and(|t| self.time_left(t) <= 0) {
            State::HalfOpen
        } else {
            State::of(w)
        }
    }

    /// Nanoseconds until an open breaker admits a probe; 0 when it is not open;
    /// [`FOREVER`] when forced open.
    pub fn retry_after(&self) -> i64 {
        loop {
            let w = self.load();
            match (state_of(w), count_of(w)) {
                (OPEN, _) => {
                    if let Some(t) = self.stamp_of(w) {
                        return self.time_left(t).max(0);
                    }
                }
                (SPECIAL, TRIPPING) => return self.reset_timeout,
                (SPECIAL, FORCED_OPEN) => return FOREVER,
                _ => return 0,
            }
        }
    }

    /// The counters; `consecutive_failures` is read from the word, the window counts
    /// from the window.
    pub fn stats(&self) -> Stats {
        let c = &self.counters.0;
        let w = self.load();
        let closed = state_of(w) == CLOSED;
        let (window_calls, window_failures) = match &self.rule {
            Rule::Rate { window, .. } if closed => self.window_counts(window, gen_of(w)),
            _ => (0, 0),
        };
        let small = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        Stats {
            calls: c.calls.load(Ordering::Relaxed),
            successes: c.successes.load(Ordering::Relaxed),
            failures: c.failures.load(Ordering::Relaxed),
            slow_calls: c.slow_calls.load(Ordering::Relaxed),
            ignored: c.ignored.load(Ordering::Relaxed),
            rejections: c.rejections.load(Ordering::Relaxed),
            state_changes: c.state_changes.load(Ordering::Relaxed),
            consecutive_failures: if closed { count_of(w) } else { 0 },
            window_calls: small(window_calls),
            window_failures: small(window_failures),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::clock::ManualClock;
    use std::sync::atomic::AtomicUsize;
    use std::sync::{Arc, Barrier};

    const SEC: i64 = 1_000_000_000;

    fn breaker(threshold: i64, timeout: i64, probes: i64) -> (Breaker, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new(0));
        let b = Breaker::new(threshold, timeout, probes, Clock::Manual(clock.clone())).unwrap();
        (b, clock)
    }

    fn fail(b: &Breaker) -> Option<Transition> {
        let (p, _) = b.acquire().unwrap();
        b.failure(p)
    }

    fn succeed(b: &Breaker) -> Option<Transition> {
        let (p, _) = b.acquire().unwrap();
        b.success(p)
    }

    #[allow(clippy::unnecessary_wraps)] // compared with the core's Option results
    fn tr(from: State, to: State) -> Option<Transition> {
        Some(Transition { from, to })
    }

    #[test]
    fn config_is_checked() {
        let c = Clock::Monotonic;
        let err = |r: Result<Breaker, BreakerError>| r.unwrap_err().to_string();
        assert_eq!(
            err(Breaker::new(0, 1, 1, c.clone())),
            "failure_threshold must be >= 1"
        );
        assert_eq!(
            err(Breaker::new(1, 1, 0, c.clone())),
            "half_open_max_calls must be >= 1"
        );
        assert_eq!(
            err(Breaker::new(1, -1, 1, c.clone())),
            "reset_timeout must be >= 0"
        );
        assert_eq!(
            err(Breaker::new(i64::from(MAX_COUNT) + 1, 1, 1, c.clone())),
            format!("failure_threshold must be <= {MAX_COUNT}")
        );
        assert!(Breaker::new(i64::from(MAX_COUNT), 0, i64::from(MAX_COUNT), c).is_ok());
    }

    #[test]
    fn trips_after_consecutive_failures_only() {
        let (b, _) = breaker(3, 10 * SEC, 1);
        assert_eq!(fail(&b), None);
        assert_eq!(fail(&b), None);
        assert_eq!(succeed(&b), None);
        assert_eq!(b.stats().consecutive_failures, 0);
        assert_eq!(fail(&b), None);
        assert_eq!(fail(&b), None);
        assert_eq!(b.stats().consecutive_failures, 2);
        assert_eq!(fail(&b), tr(State::Closed, State::Open));
        assert_eq!(b.state().0, State::Open);
        let s = b.stats();
        assert_eq!(
            (s.calls, s.successes, s.failures, s.state_changes),
            (6, 1, 5, 1)
        );
    }

    #[test]
    fn open_rejects_until_the_deadline_then_probes() {
        let (b, clock) = breaker(1, 10 * SEC, 1);
        clock.set(5 * SEC).unwrap();
        assert_eq!(fail(&b), tr(State::Closed, State::Open));
        clock.advance(4 * SEC).unwrap();
        let r = b.acquire().unwrap_err();
        assert_eq!(r.retry_after, 6 * SEC);
        assert_eq!(r.state, State::Open);
        assert_eq!(b.retry_after(), 6 * SEC);
        // open at t=5 with d=10: still open at 15 - 1ns, half-open at 15.
        clock.set(15 * SEC - 1).unwrap();
        assert_eq!(b.acquire().unwrap_err().retry_after, 1);
        clock.set(15 * SEC).unwrap();
        let (probe, t) = b.acquire().unwrap();
        assert!(probe.is_probe());
        assert_eq!(t, tr(State::Open, State::HalfOpen));
        // The one probe slot is taken.
        let r = b.acquire().unwrap_err();
        assert_eq!((r.retry_after, r.state), (0, State::HalfOpen));
        assert_eq!(b.success(probe), tr(State::HalfOpen, State::Closed));
        assert_eq!(b.state().0, State::Closed);
        assert_eq!(b.stats().rejections, 3);
    }

    #[test]
    fn failed_probe_reopens_with_a_new_stamp() {
        let (b, clock) = breaker(1, 10 * SEC, 1);
        assert_eq!(fail(&b), tr(State::Closed, State::Open));
        clock.set(10 * SEC).unwrap();
        let (probe, _) = b.acquire().unwrap();
        clock.set(12 * SEC).unwrap();
        assert_eq!(b.failure(probe), tr(State::HalfOpen, State::Open));
        assert_eq!(b.acquire().unwrap_err().retry_after, 10 * SEC);
        clock.set(22 * SEC).unwrap();
        assert_eq!(
            b.state(),
            (State::HalfOpen, tr(State::Open, State::HalfOpen))
        );
        assert_eq!(b.state(), (State::HalfOpen, None));
    }

    #[test]
    fn ignored_probe_frees_its_slot() {
        let (b, _) = breaker(1, 0, 2);
        fail(&b);
        let (p1, t) = b.acquire().unwrap();
        assert_eq!(t, tr(State::Open, State::HalfOpen));
        let (p2, _) = b.acquire().unwrap();
        assert!(b.acquire().is_err());
        b.release(p1);
        let (p3, _) = b.acquire().unwrap();
        assert!(b.acquire().is_err());
        // First success closes; the other probes' outcomes are stale.
        assert_eq!(b.success(p2), tr(State::HalfOpen, State::Closed));
        assert_eq!(b.failure(p3), None);
        assert_eq!(b.state().0, State::Closed);
        assert_eq!(b.stats().consecutive_failures, 0);
    }

    #[test]
    fn stale_outcomes_do_not_count() {
        let (b, clock) = breaker(2, 5 * SEC, 1);
        let (old, _) = b.acquire().unwrap();
        fail(&b);
        fail(&b);
        assert_eq!(b.state().0, State::Open);
        // A call admitted while closed fails after the trip: no new stamp.
        clock.advance(3 * SEC).unwrap();
        assert_eq!(b.failure(old), None);
        assert_eq!(b.retry_after(), 2 * SEC);
        // Reset: calls from before it no longer count.
        b.reset();
        let (before, _) = b.acquire().unwrap();
        b.reset();
        assert_eq!(b.failure(before), None);
        assert_eq!(b.stats().consecutive_failures, 0);
    }

    #[test]
    fn reset_reports_the_state_it_left() {
        let (b, _) = breaker(1, SEC, 1);
        assert_eq!(b.reset(), None);
        fail(&b);
        assert_eq!(b.reset(), tr(State::Open, State::Closed));
        assert_eq!(b.stats().state_changes, 2);
    }

    #[test]
    fn zero_timeout_goes_half_open_at_once() {
        let (b, _) = breaker(1, 0, 1);
        fail(&b);
        assert_eq!(b.retry_after(), 0);
        let (p, t) = b.acquire().unwrap();
        assert!(p.is_probe());
        assert_eq!(t, tr(State::Open, State::HalfOpen));
    }

    #[test]
    fn permit_bits_round_trip() {
        for (gen, probe, started) in [(0, false, 0), (u32::MAX, true, 0), (7, true, i64::MAX)] {
            let p = Permit {
                gen,
                probe,
                started,
            };
            assert_eq!(Permit::from_bits(p.to_bits()), Some(p));
        }
        // Without a start time a permit fits in 33 bits.
        assert!(Permit::from_bits(u128::from(u64::MAX >> 31)).is_some());
        assert_eq!(Permit::from_bits(1 << 100), None);
    }

    #[test]
    fn half_open_admits_at_most_max_probes_under_threads() {
        let threads = 8;
        for probes in [1_i64, 3] {
            let (b, _) = breaker(1, 0, probes);
            fail(&b);
            b.state();
            let b = Arc::new(b);
            let admitted = Arc::new(AtomicUsize::new(0));
            let barrier = Arc::new(Barrier::new(threads));
            let hs: Vec<_> = (0..threads)
                .map(|_| {
                    let (b, admitted, barrier) = (b.clone(), admitted.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        if b.acquire().is_ok() {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    })
                })
                .collect();
            for h in hs {
                h.join().unwrap();
            }
            assert_eq!(admitted.load(Ordering::Relaxed), probes as usize);
        }
    }

    #[test]
    fn concurrent_failures_trip_exactly_once() {
        let threads = 8;
        let (b, _) = breaker(5, 60 * SEC, 1);
        let b = Arc::new(b);
        let trips = Arc::new(AtomicUsize::new(0));
        let hs: Vec<_> = (0..threads)
            .map(|_| {
                let (b, trips) = (b.clone(), trips.clone());
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        if let Ok((p, _)) = b.acquire() {
                            if b.failure(p).is_some() {
                                trips.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(trips.load(Ordering::Relaxed), 1);
        let s = b.stats();
        assert_eq!(s.calls + s.rejections, threads as u64 * 1000);
        assert_eq!(s.failures, s.calls);
        assert_eq!(b.state().0, State::Open);
    }

    #[test]
    fn every_change_is_reported_once_under_trips_and_resets() {
        let threads = 6;
        let (b, clock) = breaker(2, 1_000, 2);
        let b = Arc::new(b);
        let reported = Arc::new(AtomicUsize::new(0));
        let hs: Vec<_> = (0..threads)
            .map(|i| {
                let (b, reported, clock) = (b.clone(), reported.clone(), clock.clone());
                std::thread::spawn(move || {
                    let mut n = 0;
                    for k in 0..2000 {
                        let seen = |t: Option<Transition>| usize::from(t.is_some());
                        n += match (i + k) % 7 {
                            0 => seen(b.reset()),
                            1 => {
                                clock.advance(500).unwrap();
                                seen(b.state().1)
                            }
                            r => match b.acquire() {
                                Ok((p, t)) if r < 4 => seen(t) + seen(b.success(p)),
                                Ok((p, t)) => seen(t) + seen(b.failure(p)),
                                Err(_) => 0,
                            },
                        };
                    }
                    reported.fetch_add(n, Ordering::Relaxed);
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        let s = b.stats();
        assert_eq!(s.state_changes, reported.load(Ordering::Relaxed) as u64);
        assert!(s.state_changes > 0);
    }

    fn with(config: Config) -> (Breaker, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new(0));
        let b = Breaker::with_config(config, Clock::Manual(clock.clone())).unwrap();
        (b, clock)
    }

    fn rate(rate: f64, min_calls: i64, window: WindowSpec) -> Config {
        Config {
            trip: Trip::Rate {
                rate,
                min_calls,
                window,
            },
            ..Config::consecutive(1, 10 * SEC, 1)
        }
    }

    #[test]
    fn new_options_are_checked() {
        let err = |c: Config| {
            Breaker::with_config(c, Clock::Monotonic)
                .unwrap_err()
                .to_string()
        };
        let win = WindowSpec::Nanos(SEC);
        for r in [0.0, -0.5, 1.01, f64::NAN] {
            assert_eq!(err(rate(r, 1, win)), "failure_rate must be > 0 and <= 1");
        }
        assert!(Breaker::with_config(rate(1.0, 1, win), Clock::Monotonic).is_ok());
        assert_eq!(err(rate(0.5, 0, win)), "min_calls must be >= 1");
        assert_eq!(
            err(rate(0.5, 1, WindowSpec::Nanos(0))),
            "window must be > 0"
        );
        assert_eq!(
            err(rate(0.5, 1, WindowSpec::Calls(0))),
            "window_calls must be >= 1"
        );
        assert_eq!(
            err(rate(0.5, 1, WindowSpec::Calls(10_001))),
            "window_calls must be <= 10000"
        );
        assert_eq!(
            err(rate(0.5, 6, WindowSpec::Calls(5))),
            "min_calls must be <= window_calls"
        );
        let base = Config::consecutive(1, 1, 1);
        assert_eq!(
            err(Config {
                success_threshold: 0,
                ..base
            }),
            "success_threshold must be >= 1"
        );
        assert_eq!(
            err(Config {
                slow_call: Some(0),
                ..base
            }),
            "slow_call must be > 0"
        );
        // The probes and the successes share the count field's 30 bits.
        let big = Config {
            half_open_max_calls: i64::from(MAX_COUNT),
            ..base
        };
        assert!(Breaker::with_config(big, Clock::Monotonic).is_ok());
        assert_eq!(
            err(Config {
                success_threshold: 2,
                ..big
            }),
            format!("success_threshold must be <= 1 with half_open_max_calls={MAX_COUNT}")
        );
        let small = Config {
            success_threshold: 1 << 28,
            half_open_max_calls: 3,
            ..base
        };
        assert!(Breaker::with_config(small, Clock::Monotonic).is_ok());
    }

    #[test]
    fn success_threshold_needs_that_many_probe_successes() {
        let (b, _) = with(Config {
            success_threshold: 3,
            ..Config::consecutive(1, 0, 2)
        });
        fail(&b);
        let (p1, _) = b.acquire().unwrap();
        let (p2, _) = b.acquire().unwrap();
        assert!(b.acquire().is_err());
        // A success frees its slot and counts.
        assert_eq!(b.success(p1), None);
        assert_eq!(b.state().0, State::HalfOpen);
        let (p3, _) = b.acquire().unwrap();
        assert!(b.acquire().is_err());
        assert_eq!(b.success(p2), None);
        assert_eq!(b.success(p3), tr(State::HalfOpen, State::Closed));
        // A failure after some successes re-opens.
        fail(&b);
        let (p, _) = b.acquire().unwrap();
        let (q, _) = b.acquire().unwrap();
        assert_eq!(b.success(p), None);
        assert_eq!(b.failure(q), tr(State::HalfOpen, State::Open));
        // The next half-open period counts from zero.
        for i in 0..3 {
            let (p, _) = b.acquire().unwrap();
            let expect = if i == 2 {
                tr(State::HalfOpen, State::Closed)
            } else {
                None
            };
            assert_eq!(b.success(p), expect);
        }
    }

    #[test]
    fn rate_rule_over_a_time_window() {
        let (b, clock) = with(rate(0.5, 4, WindowSpec::Nanos(20 * SEC)));
        // Below min_calls nothing opens, whatever the rate.
        assert_eq!(fail(&b), None);
        assert_eq!(fail(&b), None);
        assert_eq!(succeed(&b), None);
        let s = b.stats();
        assert_eq!((s.window_calls, s.window_failures), (3, 2));
        assert_eq!(s.consecutive_failures, 0);
        // 4 calls, 3 failed: 0.75 >= 0.5 on the failure that gets there.
        assert_eq!(fail(&b), tr(State::Closed, State::Open));
        assert_eq!(b.stats().window_calls, 0);
        // Closing starts an empty window.
        b.reset();
        assert_eq!(fail(&b), None);
        assert_eq!(b.stats().window_calls, 1);
        // Steps of 1 s: records age out of the window 20 steps later.
        for _ in 0..3 {
            succeed(&b);
        }
        clock.advance(19 * SEC).unwrap();
        assert_eq!(b.stats().window_calls, 4);
        clock.advance(SEC).unwrap();
        assert_eq!(b.stats().window_calls, 0);
        // 2 of 4 is the threshold itself: it opens.
        succeed(&b);
        succeed(&b);
        assert_eq!(fail(&b), None);
        assert_eq!(fail(&b), tr(State::Closed, State::Open));
    }

    #[test]
    fn a_success_never_opens_a_rate_breaker() {
        let (b, _) = with(rate(0.5, 3, WindowSpec::Calls(10)));
        fail(&b);
        fail(&b);
        assert_eq!(succeed(&b), None);
        assert_eq!(b.state().0, State::Closed);
        assert_eq!(fail(&b), tr(State::Closed, State::Open));
    }

    #[test]
    fn rate_rule_over_the_last_n_calls() {
        let (b, _) = with(rate(0.5, 4, WindowSpec::Calls(4)));
        for _ in 0..10 {
            succeed(&b);
        }
        fail(&b);
        let s = b.stats();
        assert_eq!((s.window_calls, s.window_failures), (4, 1));
        assert_eq!(fail(&b), tr(State::Closed, State::Open));
        // Stale outcomes of the previous period do not enter the new window.
        let (old, _) = {
            b.reset();
            b.acquire().unwrap()
        };
        b.reset();
        assert_eq!(b.failure(old), None);
        assert_eq!(b.stats().window_calls, 0);
    }

    #[test]
    fn slow_calls_count_as_failures() {
        let (b, clock) = with(Config {
            slow_call: Some(2 * SEC),
            ..Config::consecutive(2, 10 * SEC, 1)
        });
        let (p, _) = b.acquire().unwrap();
        clock.advance(2 * SEC - 1).unwrap();
        assert_eq!(b.success(p), None);
        assert_eq!(b.stats().consecutive_failures, 0);
        let (p, _) = b.acquire().unwrap();
        clock.advance(2 * SEC).unwrap();
        assert_eq!(b.success(p), None);
        assert_eq!(b.stats().consecutive_failures, 1);
        let (p, _) = b.acquire().unwrap();
        clock.advance(3 * SEC).unwrap();
        assert_eq!(b.success(p), tr(State::Closed, State::Open));
        let s = b.stats();
        assert_eq!(
            (s.calls, s.successes, s.failures, s.slow_calls),
            (3, 1, 2, 2)
        );
        // Through the permit's bits too.
        clock.advance(10 * SEC).unwrap();
        let (p, _) = b.acquire().unwrap();
        let p = Permit::from_bits(p.to_bits()).unwrap();
        clock.advance(5 * SEC).unwrap();
        assert_eq!(b.success(p), tr(State::HalfOpen, State::Open));
    }

    #[test]
    fn forced_states_hold_until_reset() {
        let (b, clock) = breaker(1, SEC, 1);
        let (before, _) = b.acquire().unwrap();
        assert_eq!(b.force_open(), tr(State::Closed, State::ForcedOpen));
        assert_eq!(b.force_open(), None);
        assert_eq!(b.failure(before), None);
        clock.advance(100 * SEC).unwrap();
        let r = b.acquire().unwrap_err();
        assert_eq!((r.retry_after, r.state), (FOREVER, State::ForcedOpen));
        assert_eq!(b.state(), (State::ForcedOpen, None));
        assert_eq!(b.retry_after(), FOREVER);
        assert_eq!(b.force_closed(), tr(State::ForcedOpen, State::ForcedClosed));
        for _ in 0..5 {
            assert_eq!(fail(&b), None);
        }
        assert_eq!(b.peek(), State::ForcedClosed);
        assert_eq!(b.retry_after(), 0);
        assert_eq!(b.stats().consecutive_failures, 0);
        assert_eq!(b.reset(), tr(State::ForcedClosed, State::Closed));
        assert_eq!(fail(&b), tr(State::Closed, State::Open));
        assert_eq!(b.force_closed(), tr(State::Open, State::ForcedClosed));
        assert_eq!(b.stats().state_changes, 5);
    }

    #[test]
    fn window_counts_are_exact_under_threads() {
        let threads = 8;
        let per = 500;
        for spec in [WindowSpec::Nanos(60 * SEC), WindowSpec::Calls(10_000)] {
            // A threshold no mix reaches, so the breaker stays closed.
            let (b, _) = with(rate(1.0, 10_000, spec));
            let b = Arc::new(b);
            let barrier = Arc::new(Barrier::new(threads));
            let hs: Vec<_> = (0..threads)
                .map(|i| {
                    let (b, barrier) = (b.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        for k in 0..per {
                            let (p, _) = b.acquire().unwrap();
                            if (i + k) % 4 == 0 {
                                b.failure(p);
                            } else {
                                b.success(p);
                            }
                        }
                    })
                })
                .collect();
            for h in hs {
                h.join().unwrap();
            }
            let s = b.stats();
            let n = (threads * per) as u32;
            assert_eq!((s.window_calls, s.window_failures), (n, n / 4), "{spec:?}");
        }
    }

    #[test]
    fn time_window_rollover_loses_no_current_record_under_threads() {
        let threads = 6;
        let (b, clock) = with(rate(1.0, 1, WindowSpec::Nanos(20)));
        let b = Arc::new(b);
        let hs: Vec<_> = (0..threads)
            .map(|i| {
                let (b, clock) = (b.clone(), clock.clone());
                std::thread::spawn(move || {
                    for k in 0..2000 {
                        if i == 0 && k % 50 == 0 {
                            clock.advance(7).unwrap();
                        }
                        let (p, _) = b.acquire().unwrap();
                        b.success(p);
                        let s = b.stats();
                        // Never more than what a window can hold of these threads.
                        assert!(s.window_calls as usize <= threads * 2000);
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        // The clock stands still now: the next records all land in the current step.
        clock.advance(100).unwrap();
        for _ in 0..10 {
            succeed(&b);
        }
        assert_eq!(b.stats().window_calls, 10);
    }
}

/// The state word under every interleaving (`make loom`): outcomes carry the generation
/// that admitted them, half-open admits at most `half_open_max_calls`, and a trip racing
/// a reset and a reader leaves one chain of reported transitions.
///
/// A thread that only reads (an observer) yields before reading: loom's search backtracks
/// from a pending access to the last conflicting one, so an observer that runs first and
/// then blocks in `join` would never be moved after the writers it races with.
#[cfg(test)] // separate from cfg(loom): clippy sees a plain cfg(test) as test code
#[cfg(loom)]
mod loom_models {
    use super::*;
    use crate::core::clock::ManualClock;
    use loom::thread;
    use std::sync::Arc;

    fn breaker(threshold: i64, timeout: i64, probes: i64) -> (Arc<Breaker>, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new(0));
        let b = Breaker::new(threshold, timeout, probes, Clock::Manual(clock.clone())).unwrap();
        (Arc::new(b), clock)
    }

    /// Transitions reported by one thread, as (from, to) pairs.
    type Seen = Vec<(State, State)>;

    fn note(seen: &mut Seen, t: Option<Transition>) {
        if let Some(t) = t {
            seen.push((t.from, t.to));
        }
    }

    /// The reported transitions, in any order, chain from `Closed` to the final state:
    /// each state is entered as often as it is left (the final one once more).
    fn chain(all: &[(State, State)], last: State) {
        for s in [State::Closed, State::Open, State::HalfOpen] {
            let entered = all.iter().filter(|t| t.1 == s).count() as i64;
            let left = all.iter().filter(|t| t.0 == s).count() as i64;
            let expect = i64::from(s == last) - i64::from(s == State::Closed);
            assert_eq!(entered - left, expect, "{all:?} ending {last:?}");
        }
    }

    /// A probe of the current generation closes the breaker while two outcomes of a call
    /// admitted two generations earlier arrive: they change nothing, in any order.
    #[test]
    fn loom_breaker_late_outcomes_never_touch_a_newer_generation() {
        loom::model(|| {
            let (b, _) = breaker(1, 0, 1);
            let (old, _) = b.acquire().unwrap();
            let (p, _) = b.acquire().unwrap();
            assert_eq!(b.failure(p).map(|t| t.to), Some(State::Open));
            let probe = {
                let b = b.clone();
                thread::spawn(move || {
                    let mut seen = Seen::new();
                    if let Ok((p, t)) = b.acquire() {
                        note(&mut seen, t);
                        assert!(p.is_probe());
                        note(&mut seen, b.success(p));
                    }
                    seen
                })
            };
            let late = {
                let b = b.clone();
                thread::spawn(move || {
                    assert_eq!(b.failure(old), None);
                    assert_eq!(b.success(old), None);
                })
            };
            let mut seen = probe.join().unwrap();
            late.join().unwrap();
            // The probe is the only caller of the new generation: it was admitted (the
            // timeout is 0) and closed the breaker; the stale calls left no trace.
            assert_eq!(
                seen,
                vec![
                    (State::Open, State::HalfOpen),
                    (State::HalfOpen, State::Closed)
                ]
            );
            assert_eq!(b.peek(), State::Closed);
            assert_eq!(b.stats().consecutive_failures, 0);
            seen.insert(0, (State::Closed, State::Open));
            chain(&seen, State::Closed);
        });
    }

    /// Two callers race into an open breaker whose timeout has passed, with one probe
    /// slot, while an admitted probe gives its slot back: never more than one probe in
    /// flight, the move to half-open is reported once, and every slot comes back.
    #[test]
    fn loom_breaker_half_open_admits_at_most_max_probes() {
        loom::model(|| {
            let (b, _) = breaker(1, 0, 1);
            let (p, _) = b.acquire().unwrap();
            b.failure(p);
            let callers: Vec<_> = (0..2)
                .map(|_| {
                    let b = b.clone();
                    thread::spawn(move || match b.acquire() {
                        Ok((p, t)) => {
                            assert!(p.is_probe());
                            let w = b.load();
                            assert!(state_of(w) != HALF_OPEN || count_of(w) <= 1);
                            b.release(p);
                            (1, usize::from(t.is_some()))
                        }
                        Err(r) => {
                            assert_eq!((r.state, r.retry_after), (State::HalfOpen, 0));
                            (0, 0)
                        }
                    })
                })
                .collect();
            let (mut admitted, mut moved) = (0, 0);
            for c in callers {
                let (a, m) = c.join().unwrap();
                admitted += a;
                moved += m;
            }
            // The second caller is admitted only if the first gave its slot back first.
            assert!((1..=2).contains(&admitted), "{admitted}");
            assert_eq!(moved, 1);
            let w = b.load();
            assert_eq!((state_of(w), count_of(w)), (HALF_OPEN, 0));
        });
    }

    /// A trip races a reset and a caller: the caller sees either a closed breaker or an
    /// open one with the whole timeout left (the clock stands still), and the reported
    /// transitions form one chain ending closed.
    #[test]
    fn loom_breaker_trip_races_reset_and_a_caller() {
        loom::model(|| {
            let (b, clock) = breaker(1, 10, 1);
            clock.set(5).unwrap();
            let (p, _) = b.acquire().unwrap();
            let tripper = {
                let b = b.clone();
                thread::spawn(move || {
                    let mut seen = Seen::new();
                    note(&mut seen, b.failure(p));
                    seen
                })
            };
            let resetter = {
                let b = b.clone();
                thread::spawn(move || {
                    let mut seen = Seen::new();
                    note(&mut seen, b.reset());
                    seen
                })
            };
            let mut seen = Seen::new();
            // Let the other threads go first: loom's exploration then also reorders this
            // thread's loads before their writes (it only backtracks from a pending
            // access to the last conflicting one).
            thread::yield_now();
            match b.acquire() {
                Ok((q, t)) => {
                    note(&mut seen, t);
                    assert!(!q.is_probe());
                    note(&mut seen, b.success(q));
                }
                Err(r) => assert_eq!((r.state, r.retry_after), (State::Open, 10)),
            }
            let left = b.retry_after();
            assert!(left == 0 || left == 10, "{left}");
            seen.extend(tripper.join().unwrap());
            seen.extend(resetter.join().unwrap());
            assert_eq!(b.peek(), State::Closed);
            assert_eq!(b.stats().state_changes, seen.len() as u64);
            chain(&seen, State::Closed);
        });
    }

    fn breaker_with(config: Config) -> Arc<Breaker> {
        let clock = Arc::new(ManualClock::new(0));
        Arc::new(Breaker::with_config(config, Clock::Manual(clock)).unwrap())
    }

    /// A bucket of gen 0 holding 3 failures of step 3, one lap (`BUCKETS` steps) later.
    fn expired_bucket() -> (Arc<TimeWindow>, u64, u64) {
        let w = Arc::new(TimeWindow::new(BUCKETS as i64)); // steps of 1 ns
        let old = 3;
        for _ in 0..3 {
            w.record(0, old, true);
        }
        (w, old, old + BUCKETS as u64)
    }

    /// Two records of the current step race to roll a bucket over from an expired step
    /// while a reader sums the window: both records are kept (the loser of the claim
    /// waits for the rollover and adds to it), and the reader never counts the expired
    /// step's records as current.
    #[test]
    fn loom_breaker_window_rollover_vs_record() {
        loom::model(|| {
            let (w, _, now) = expired_bucket();
            let current: Vec<_> = [true, false]
                .into_iter()
                .map(|failed| {
                    let w = w.clone();
                    thread::spawn(move || w.record(0, now, failed))
                })
                .collect();
            thread::yield_now();
            let (calls, failures) = w.read(0, now);
            assert!(calls <= 2 && failures <= 1, "{calls} {failures}");
            for t in current {
                t.join().unwrap();
            }
            assert_eq!(w.read(0, now), (2, 1));
            // Another period's reader sees nothing of it.
            assert_eq!(w.read(1, now), (0, 0));
        });
    }

    /// A record of the expired step arrives late, racing the rollover: it is dropped
    /// (with the expired step, or because the bucket moved on) or counted a step late,
    /// never counted twice, and the expired step's own records are gone.
    #[test]
    fn loom_breaker_window_late_record_vs_rollover() {
        loom::model(|| {
            let (w, old, now) = expired_bucket();
            let roller = {
                let w = w.clone();
                thread::spawn(move || w.record(0, now, false))
            };
            w.record(0, old, true);
            roller.join().unwrap();
            let got = w.read(0, now);
            assert!(got == (1, 0) || got == (2, 1), "{got:?}");
        });
    }

    /// Half-open with 2 probe slots and `success_threshold=2`: a probe's success (which
    /// frees its slot) races the other probe's failure and a third caller. The failure
    /// re-opens the breaker, the success never closes it, the reported transitions form
    /// one chain, and never more than 2 probes are in flight.
    #[test]
    fn loom_breaker_success_threshold_vs_trip() {
        loom::model(|| {
            let b = breaker_with(Config {
                success_threshold: 2,
                ..Config::consecutive(1, 0, 2)
            });
            let (p, _) = b.acquire().unwrap();
            b.failure(p);
            let (p1, t) = b.acquire().unwrap();
            assert_eq!(t.map(|t| t.to), Some(State::HalfOpen));
            let (p2, _) = b.acquire().unwrap();
            let succeeder = {
                let b = b.clone();
                thread::spawn(move || b.success(p1))
            };
            let failer = {
                let b = b.clone();
                thread::spawn(move || b.failure(p2))
            };
            thread::yield_now();
            let mut third = Seen::new();
            if let Ok((q, t)) = b.acquire() {
                note(&mut third, t);
                let w = b.load();
                if state_of(w) == HALF_OPEN {
                    assert!(b.inflight(count_of(w)) <= 2);
                }
                b.release(q);
            }
            let mut seen = third;
            note(&mut seen, succeeder.join().unwrap());
            note(&mut seen, failer.join().unwrap());
            // With timeout 0 the third caller may have moved the re-opened breaker to
            // half-open; it released its probe, so nothing else happened.
            let last = State::of(b.load());
            let mut all = vec![(State::Closed, State::Open), (State::Open, State::HalfOpen)];
            all.extend(seen.iter().copied());
            chain(&all, last);
            assert!(seen.contains(&(State::HalfOpen, State::Open)), "{seen:?}");
            assert!(
                !seen.contains(&(State::HalfOpen, State::Closed)),
                "{seen:?}"
            );
        });
    }

    /// Two probes of a `success_threshold=2` breaker succeed at once while a third caller
    /// tries to get in: exactly one success closes the breaker, and never more than 2
    /// probes are in flight.
    #[test]
    fn loom_breaker_success_threshold_counts_every_success_once() {
        loom::model(|| {
            let b = breaker_with(Config {
                success_threshold: 2,
                ..Config::consecutive(1, 0, 2)
            });
            let (p, _) = b.acquire().unwrap();
            b.failure(p);
            let (p1, _) = b.acquire().unwrap();
            let (p2, _) = b.acquire().unwrap();
            let succeeders: Vec<_> = [p1, p2]
                .into_iter()
                .map(|p| {
                    let b = b.clone();
                    thread::spawn(move || b.success(p))
                })
                .collect();
            thread::yield_now();
            if let Ok((q, _)) = b.acquire() {
                let w = b.load();
                if state_of(w) == HALF_OPEN {
                    assert!(q.is_probe());
                    assert!(b.inflight(count_of(w)) <= 2);
                }
                b.release(q);
            }
            let closed: usize = succeeders
                .into_iter()
                .map(|t| usize::from(t.join().unwrap().is_some()))
                .sum();
            assert_eq!(closed, 1);
            assert_eq!(b.peek(), State::Closed);
        });
    }
}
