//! A circuit breaker whose state lives in one atomic word, so that admitting a call and
//! recording its outcome never take a lock and never serialise the protected calls.
//!
//! # States
//! - closed: every call is admitted; `failure_threshold` consecutive expected failures
//!   trip the breaker open. A success resets the run of failures.
//! - open: calls are rejected (with the time left) until the reset timeout has passed:
//!   opened at `t` with timeout `d`, the breaker stays open while `now < t + d`.
//! - half-open: up to `half_open_max_calls` probe calls are admitted at once, the others
//!   rejected. The first probe to succeed closes the breaker; the first to fail re-opens
//!   it (stamped anew). A probe that ends in an exception that is not expected gives its
//!   slot back without deciding anything.
//!
//! # The word
//! `word` packs `state` (2 bits), `count` (30 bits: consecutive failures when closed,
//! probes in flight when half-open, 0 otherwise) and `gen` (32 bits). Every change of
//! state increments `gen`. A call's [`Permit`] remembers the `gen` it was admitted under,
//! and its outcome is applied only while the word still has that `gen`: a call admitted
//! before the breaker opened cannot re-open it later, a probe's outcome never leaks into
//! the next closed period, and counting failures is one CAS that fails if anything else
//! changed meanwhile. (`gen` wraps after 2^32 transitions; a permit would have to be held
//! across all of them to be mistaken.) Invariants: while half-open, `count <=
//! half_open_max_calls` (a probe is admitted only by a CAS from a smaller count); while
//! closed, `count < failure_threshold`.
//!
//! # The open stamp
//! The stamp of the current open period lives beside the word in `opened_at`. Tripping
//! (closed or half-open -> open) takes three steps, with no lock:
//! 1. claim: a CAS from the word the tripping thread saw to `TRIPPING` with the next
//!    `gen`. Only one thread can win it, and nothing but step 3 moves the word out of
//!    `TRIPPING` (outcomes carry older gens; `reset` waits the instant it takes), so the
//!    claimer is the only writer of `opened_at` until it publishes;
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
//! Word updates are `AcqRel` CASes (failed CASes `Acquire`); the counters are statistics
//! only and use `Relaxed`. Transitions are returned to the caller, which reports them
//! (callbacks, signals) after the fact, with no lock held.
//!
//! The protocol runs on `crate::core::sync` atomics: the loom models at the end of this
//! file (`make loom`) check it under every interleaving, with a manual clock.

use std::fmt;
use std::sync::atomic::AtomicU64 as StatU64;

use crate::core::clock::Clock;
use crate::core::sync::{AtomicI64, AtomicU64, Ordering};

/// Largest `failure_threshold` and `half_open_max_calls` (the word's count field).
pub const MAX_COUNT: u32 = (1 << 30) - 1;

const CLOSED: u64 = 0;
const OPEN: u64 = 1;
const HALF_OPEN: u64 = 2;
/// A trip in flight: open, its stamp not yet published (see the module docs).
const TRIPPING: u64 = 3;

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

/// The state a caller observes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    fn of(w: u64) -> Self {
        match state_of(w) {
            CLOSED => Self::Closed,
            HALF_OPEN => Self::HalfOpen,
            _ => Self::Open,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
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

/// Proof that a call was admitted, and under which period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permit {
    gen: u32,
    probe: bool,
}

impl Permit {
    /// A compact form for callers that must carry the permit through foreign code.
    pub fn to_bits(self) -> u64 {
        (u64::from(self.gen) << 1) | u64::from(self.probe)
    }

    /// The inverse of [`Permit::to_bits`]; `None` for a value that no permit produces.
    pub fn from_bits(bits: u64) -> Option<Self> {
        if bits >> 33 != 0 {
            return None;
        }
        Some(Self {
            gen: (bits >> 1) as u32, // < 2^32: checked above
            probe: bits & 1 == 1,
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
    /// probe slot is taken (the wait depends on the probes in flight).
    pub retry_after: i64,
    /// The state that refused the call.
    pub state: State,
}

/// Why a configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BreakerError {
    TooSmall(&'static str),
    TooLarge(&'static str),
    Negative(&'static str),
}

impl fmt::Display for BreakerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooSmall(arg) => write!(f, "{arg} must be >= 1"),
            Self::TooLarge(arg) => write!(f, "{arg} must be <= {MAX_COUNT}"),
            Self::Negative(arg) => write!(f, "{arg} must be >= 0"),
        }
    }
}

impl std::error::Error for BreakerError {}

/// The counters reported by [`Breaker::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Calls admitted (the protected function ran or is running).
    pub calls: u64,
    pub successes: u64,
    /// Admitted calls that ended in an expected exception.
    pub failures: u64,
    /// Admitted calls that ended in an exception that is not expected.
    pub ignored: u64,
    /// Calls refused without running.
    pub rejections: u64,
    pub state_changes: u64,
    /// The current run of failures while closed.
    pub consecutive_failures: u32,
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
    ignored: StatU64,
    rejections: StatU64,
    state_changes: StatU64,
}

/// Waits an instant for another thread to finish a short step (a trip in flight).
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

/// A lock-free circuit breaker (see the module documentation).
#[derive(Debug)]
pub struct Breaker {
    word: Padded<AtomicU64>,
    opened_at: AtomicI64,
    failure_threshold: u32,
    half_open_max_calls: u32,
    reset_timeout: i64,
    clock: Clock,
    counters: Padded<Counters>,
}

impl Breaker {
    pub fn new(
        failure_threshold: i64,
        reset_timeout_nanos: i64,
        half_open_max_calls: i64,
        clock: Clock,
    ) -> Result<Self, BreakerError> {
        let count = |v: i64, arg: &'static str| -> Result<u32, BreakerError> {
            if v < 1 {
                Err(BreakerError::TooSmall(arg))
            } else if v > i64::from(MAX_COUNT) {
                Err(BreakerError::TooLarge(arg))
            } else {
                Ok(v as u32)
            }
        };
        let failure_threshold = count(failure_threshold, "failure_threshold")?;
        let half_open_max_calls = count(half_open_max_calls, "half_open_max_calls")?;
        if reset_timeout_nanos < 0 {
            return Err(BreakerError::Negative("reset_timeout"));
        }
        Ok(Self {
            word: Padded(AtomicU64::new(pack(CLOSED, 0, 0))),
            opened_at: AtomicI64::new(0),
            failure_threshold,
            half_open_max_calls,
            reset_timeout: reset_timeout_nanos,
            clock,
            counters: Padded::default(),
        })
    }

    pub fn failure_threshold(&self) -> u32 {
        self.failure_threshold
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

    /// Admits a call or refuses it. An open breaker whose timeout has passed becomes
    /// half-open here, and the caller takes the first probe slot.
    pub fn acquire(&self) -> Result<(Permit, Option<Transition>), Rejected> {
        let c = &self.counters.0;
        loop {
            let w = self.load();
            match state_of(w) {
                CLOSED => {
                    c.calls.fetch_add(1, Ordering::Relaxed);
                    let permit = Permit {
                        gen: gen_of(w),
                        probe: false,
                    };
                    return Ok((permit, None));
                }
                HALF_OPEN => {
                    let n = count_of(w);
                    if n >= self.half_open_max_calls {
                        c.rejections.fetch_add(1, Ordering::Relaxed);
                        return Err(Rejected {
                            retry_after: 0,
                            state: State::HalfOpen,
                        });
                    }
                    if self.cas(w, pack(HALF_OPEN, n + 1, gen_of(w))) {
                        c.calls.fetch_add(1, Ordering::Relaxed);
                        let permit = Permit {
                            gen: gen_of(w),
                            probe: true,
                        };
                        return Ok((permit, None));
                    }
                }
                TRIPPING => {
                    // Open an instant ago: the stamp is being written.
                    c.rejections.fetch_add(1, Ordering::Relaxed);
                    return Err(Rejected {
                        retry_after: self.reset_timeout,
                        state: State::Open,
                    });
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
                        let permit = Permit { gen, probe: true };
                        return Ok((permit, Some(self.changed(w, State::HalfOpen))));
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

    /// Records that the call admitted with `permit` returned normally.
    pub fn success(&self, permit: Permit) -> Option<Transition> {
        self.counters.0.successes.fetch_add(1, Ordering::Relaxed);
        loop {
            let w = self.load();
            if gen_of(w) != permit.gen {
                return None;
            }
            match state_of(w) {
                CLOSED if count_of(w) > 0 => {
                    if self.cas(w, pack(CLOSED, 0, permit.gen)) {
                        return None;
                    }
                }
                HALF_OPEN => {
                    if self.cas(w, pack(CLOSED, 0, permit.gen.wrapping_add(1))) {
                        return Some(self.changed(w, State::Closed));
                    }
                }
                _ => return None,
            }
        }
    }

    /// Records that the call admitted with `permit` raised an expected exception.
    pub fn failure(&self, permit: Permit) -> Option<Transition> {
        self.counters.0.failures.fetch_add(1, Ordering::Relaxed);
        loop {
            let w = self.load();
            if gen_of(w) != permit.gen {
                return None;
            }
            let trip = match state_of(w) {
                CLOSED => {
                    let n = count_of(w) + 1;
                    if n < self.failure_threshold {
                        if self.cas(w, pack(CLOSED, n, permit.gen)) {
                            return None;
                        }
                        continue;
                    }
                    true
                }
                HALF_OPEN => true,
                _ => return None,
            };
            if trip {
                if let Some(t) = self.trip(w) {
                    return Some(t);
                }
            }
        }
    }

    /// Moves `w` (closed or half-open) to open, stamped now; `None` if the word changed
    /// first. The three steps of the module docs: claim, stamp, publish.
    fn trip(&self, w: u64) -> Option<Transition> {
        let gen = gen_of(w).wrapping_add(1);
        if !self.cas(w, pack(TRIPPING, 0, gen)) {
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
            if gen_of(w) != permit.gen || state_of(w) != HALF_OPEN || count_of(w) == 0 {
                return;
            }
            if self.cas(w, pack(HALF_OPEN, count_of(w) - 1, permit.gen)) {
                return;
            }
        }
    }

    /// Closes the breaker and clears the run of failures. Calls in flight from before
    /// the reset no longer count.
    pub fn reset(&self) -> Option<Transition> {
        let mut spins = 0;
        loop {
            let w = self.load();
            let gen = gen_of(w).wrapping_add(1);
            if state_of(w) == TRIPPING {
                // Only the claimer may end a trip (module docs); it is two stores away.
                pause(&mut spins);
                continue;
            }
            if state_of(w) == CLOSED {
                if self.cas(w, pack(CLOSED, 0, gen)) {
                    return None;
                }
            } else if self.cas(w, pack(CLOSED, 0, gen)) {
                return Some(self.changed(w, State::Closed));
            }
        }
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

    /// Nanoseconds until an open breaker admits a probe; 0 when it is not open.
    pub fn retry_after(&self) -> i64 {
        loop {
            let w = self.load();
            match state_of(w) {
                OPEN => {
                    if let Some(t) = self.stamp_of(w) {
                        return self.time_left(t).max(0);
                    }
                }
                TRIPPING => return self.reset_timeout,
                _ => return 0,
            }
        }
    }

    /// The counters; `consecutive_failures` is read from the word.
    pub fn stats(&self) -> Stats {
        let c = &self.counters.0;
        let w = self.load();
        Stats {
            calls: c.calls.load(Ordering::Relaxed),
            successes: c.successes.load(Ordering::Relaxed),
            failures: c.failures.load(Ordering::Relaxed),
            ignored: c.ignored.load(Ordering::Relaxed),
            rejections: c.rejections.load(Ordering::Relaxed),
            state_changes: c.state_changes.load(Ordering::Relaxed),
            consecutive_failures: if state_of(w) == CLOSED {
                count_of(w)
            } else {
                0
            },
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
        for p in [
            Permit {
                gen: 0,
                probe: false,
            },
            Permit {
                gen: u32::MAX,
                probe: true,
            },
            Permit {
                gen: 7,
                probe: true,
            },
        ] {
            assert_eq!(Permit::from_bits(p.to_bits()), Some(p));
        }
        assert_eq!(Permit::from_bits(1 << 40), None);
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
}
